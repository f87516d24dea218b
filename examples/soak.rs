//! Soak harness for SPEC P5-P7: a capture agent at 8 kHz mouse + 1 screenshot/s (1.5 MB,
//! incompressible) with a flush every 100 ms and continuous seal/ack on another thread.
//! Reports append and flush latency percentiles, peak RSS, disk use over time, and the
//! CPU used by a 1 kHz mouse + 10 keys/s load.
//!
//! `cargo run --release --example soak -- [SECONDS]` (default 60; SPEC P6 asks for 600).

use std::time::{Duration, Instant};

use capvault::{Identity, KeyStoreKind, Suite, Vault, VaultOptions};

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of this process, from /proc/self/stat, in seconds.
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn options() -> VaultOptions {
    let mut o = VaultOptions::default();
    o.keystore = KeyStoreKind::Keyutils;
    o
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = std::env::temp_dir().join(format!("capvault-soak-{}", std::process::id()));
    let vault = Vault::open(&dir, "soak", options()).unwrap();
    let id = Identity::generate(Suite::X25519);
    let shot: Vec<u8> = {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..1_500_000 / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut appends: Vec<u64> = Vec::with_capacity(secs as usize * 8_100);
    let mut shots: Vec<u64> = Vec::new();
    let mut flushes: Vec<u64> = Vec::new();
    let mut disk: Vec<(u64, u64)> = Vec::new();
    let mut peak_rss = 0;
    let mut released = 0usize;
    std::thread::scope(|s| {
        // The uploader: seal and acknowledge as fast as bundles come.
        let uploader = s.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match vault.seal_next(&id.recipient(), 16 << 20).unwrap() {
                    Some(b) => {
                        vault.ack(b.id(), None).unwrap();
                        n += 1;
                    }
                    None => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            n
        });
        let start = Instant::now();
        let tick = Duration::from_micros(125); // 8 kHz
        let mut next = start;
        let mut i: u64 = 0;
        let mut last_flush = start;
        let mut last_shot = start;
        let mut last_sample = start;
        while start.elapsed() < Duration::from_secs(secs) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            }
            next += tick;
            i += 1;
            let ts = 1_764_000_000_000_000 + (i as i64) * 125;
            let t = Instant::now();
            let _ = vault
                .append_mouse_move(ts, (i % 1920) as i32, (i % 1080) as i32)
                .unwrap();
            appends.push(t.elapsed().as_nanos() as u64);
            if last_shot.elapsed() >= Duration::from_secs(1) {
                last_shot = Instant::now();
                let t = Instant::now();
                let _ = vault
                    .append_screenshot(ts, 1920, 1080, "png", &shot)
                    .unwrap();
                shots.push(t.elapsed().as_nanos() as u64);
            }
            if last_flush.elapsed() >= Duration::from_millis(100) {
                last_flush = Instant::now();
                let t = Instant::now();
                vault.flush().unwrap();
                flushes.push(t.elapsed().as_nanos() as u64);
            }
            if last_sample.elapsed() >= Duration::from_secs(5) {
                last_sample = Instant::now();
                peak_rss = peak_rss.max(rss_kib());
                disk.push((
                    start.elapsed().as_secs(),
                    vault.status().unwrap().disk_bytes,
                ));
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        released = uploader.join().unwrap();
    });
    appends.sort_unstable();
    shots.sort_unstable();
    flushes.sort_unstable();
    println!("soak: {secs} s at 8 kHz mouse + 1 fps 1.5 MB screenshots, flush every 100 ms, continuous seal/ack");
    println!(
        "  mouse append   p50 {:.2} us  p99 {:.2} us  p99.9 {:.2} us  max {:.0} us  ({} appends)",
        pct(&appends, 0.5) as f64 / 1e3,
        pct(&appends, 0.99) as f64 / 1e3,
        pct(&appends, 0.999) as f64 / 1e3,
        pct(&appends, 1.0) as f64 / 1e3,
        appends.len()
    );
    println!(
        "  screenshot append p50 {:.0} us  p99 {:.0} us",
        pct(&shots, 0.5) as f64 / 1e3,
        pct(&shots, 0.99) as f64 / 1e3
    );
    println!(
        "  flush          p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        pct(&flushes, 0.5) as f64 / 1e6,
        pct(&flushes, 0.99) as f64 / 1e6,
        pct(&flushes, 1.0) as f64 / 1e6
    );
    println!(
        "  peak RSS       {:.1} MiB, bundles released {released}",
        peak_rss as f64 / 1024.0
    );
    println!(
        "  disk (s, MiB)  {}",
        disk.iter()
            .map(|(t, b)| format!("{t}:{:.0}", *b as f64 / 1048576.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    vault.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    // P7: CPU at 1 kHz mouse + 10 keys/s for 10 s.
    let dir = std::env::temp_dir().join(format!("capvault-cpu-{}", std::process::id()));
    let vault = Vault::open(&dir, "cpu", options()).unwrap();
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let mut next = start;
    let mut i: u64 = 0;
    // Events are paced in 10 ms slices (10 moves each), so the pacing loop itself
    // costs little; the figure is the vault's work plus that small overhead.
    while start.elapsed() < Duration::from_secs(10) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += Duration::from_millis(10);
        for _ in 0..10 {
            i += 1;
            let ts = 1_764_000_000_000_000 + (i as i64) * 1000;
            let _ = vault.append_mouse_move(ts, 1, 1).unwrap();
            if i.is_multiple_of(100) {
                let _ = vault.append_key(ts, 0x04, true, Some("a")).unwrap();
            }
        }
    }
    let used = cpu_secs() - cpu0;
    println!(
        "  CPU at 1 kHz mouse + 10 keys/s: {:.2}% of a core",
        used / start.elapsed().as_secs_f64() * 100.0
    );
    vault.close().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
