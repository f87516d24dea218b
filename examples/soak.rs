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

/// Latency histogram with ~1.6% resolution (64 sub-buckets per power of two), so the
/// harness's own memory stays small and constant whatever the run length.
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: vec![0; 64 * 64],
            total: 0,
            max: 0,
        }
    }
    fn bucket(v: u64) -> usize {
        if v < 64 {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros() as usize; // >= 6
        let mantissa = ((v >> (exp - 6)) & 63) as usize;
        (exp - 5) * 64 + mantissa
    }
    fn lower_bound(b: usize) -> u64 {
        if b < 64 {
            return b as u64;
        }
        let exp = b / 64 + 5;
        ((64 + (b % 64)) as u64) << (exp - 6)
    }
    fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v).min(64 * 64 - 1)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }
    fn pct(&self, p: f64) -> u64 {
        if p >= 1.0 {
            return self.max;
        }
        let want = ((self.total as f64) * p).ceil() as u64;
        let mut seen = 0;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return Self::lower_bound(b);
            }
        }
        self.max
    }
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
    let mut appends = Histogram::new();
    let mut shots = Histogram::new();
    let mut flushes = Histogram::new();
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
            appends.record(t.elapsed().as_nanos() as u64);
            if last_shot.elapsed() >= Duration::from_secs(1) {
                last_shot = Instant::now();
                let t = Instant::now();
                let _ = vault
                    .append_screenshot(ts, 1920, 1080, "png", &shot)
                    .unwrap();
                shots.record(t.elapsed().as_nanos() as u64);
            }
            if last_flush.elapsed() >= Duration::from_millis(100) {
                last_flush = Instant::now();
                let t = Instant::now();
                vault.flush().unwrap();
                flushes.record(t.elapsed().as_nanos() as u64);
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
    println!("soak: {secs} s at 8 kHz mouse + 1 fps 1.5 MB screenshots, flush every 100 ms, continuous seal/ack");
    println!(
        "  mouse append   p50 {:.2} us  p99 {:.2} us  p99.9 {:.2} us  max {:.0} us  ({} appends)",
        appends.pct(0.5) as f64 / 1e3,
        appends.pct(0.99) as f64 / 1e3,
        appends.pct(0.999) as f64 / 1e3,
        appends.pct(1.0) as f64 / 1e3,
        appends.total
    );
    println!(
        "  screenshot append p50 {:.0} us  p99 {:.0} us",
        shots.pct(0.5) as f64 / 1e3,
        shots.pct(0.99) as f64 / 1e3
    );
    println!(
        "  flush          p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        flushes.pct(0.5) as f64 / 1e6,
        flushes.pct(0.99) as f64 / 1e6,
        flushes.pct(1.0) as f64 / 1e6
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
