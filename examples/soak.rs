//! Soak harness for SPEC P5-P7: a capture agent at 8 kHz mouse + 1 screenshot/s (1.5 MB,
//! incompressible) with a flush every 100 ms, alone and then with continuous seal/ack on
//! another thread.
//! Reports append and flush latency percentiles (with the disk's own write + fdatasync
//! latency beside them), peak RSS, disk use over time, and the CPU the vault uses under
//! a 1 kHz mouse + 10 keys/s load.
//!
//! `cargo run --release --example soak -- [SECONDS] [capture|release|both]`: SECONDS per
//! phase (default 60; SPEC P6 asks for 600). `capture` is the load of SPEC P5 alone,
//! `release` adds continuous seal/ack (SPEC P6), `both` (the default) runs one after
//! the other.

use std::time::{Duration, Instant};

use capvault::{Identity, KeyStoreKind, Suite, Vault, VaultOptions};

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (ns) used so far by each thread of this process, by thread id, with the
/// thread's name (`/proc/self/task/*/schedstat`: nanoseconds, where `/proc/self/stat`
/// counts 10 ms ticks).
fn thread_cpu_ns() -> std::collections::HashMap<u64, (String, u64)> {
    let mut out = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        let Some(tid) = path.file_name().and_then(|n| n.to_str()?.parse().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        out.insert(tid, (name.trim().to_string(), ns));
    }
    out
}

/// Seconds of SPEC P7's load.
const P7_SECS: u64 = 20;

/// This thread's CPU time so far, in nanoseconds (exact: the kernel brings the running
/// thread's count up to date for this clock, where `schedstat` lags until it sleeps).
fn this_thread_cpu_ns() -> u64 {
    cpu_ns(rustix::time::ClockId::ThreadCPUTime)
}

fn cpu_ns(clock: rustix::time::ClockId) -> u64 {
    let t = rustix::time::clock_gettime(clock);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// What the vault used under a load: the process's CPU less the calling thread's, plus
/// that thread's CPU inside the appends (`vault_ns`, which also counts threads that began
/// and ended during the load); and its parts: the appends, and every other thread alive
/// at both ends, by name.
struct Used {
    vault_ns: u64,
    threads: Vec<(String, u64)>,
    appends_ns: u64,
    secs: f64,
}

/// The load of SPEC P7 for `secs`: 1 kHz mouse moves and 10 keys/s through `append`,
/// paced in 10 ms slices of 10 moves. The pacing (sleeping and waking 100 times a
/// second) is the harness's, not the vault's, so of the calling thread only the time
/// inside the appends is counted.
fn paced_load(secs: u64, append: &dyn Fn(i64, bool)) -> Used {
    let me = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse::<u64>().ok());
    let before = thread_cpu_ns();
    let (process_before, me_before) = (
        cpu_ns(rustix::time::ClockId::ProcessCPUTime),
        this_thread_cpu_ns(),
    );
    let start = Instant::now();
    let mut next = start;
    let mut i: u64 = 0;
    let mut appends_ns = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        next += Duration::from_millis(10);
        let cpu = this_thread_cpu_ns();
        for _ in 0..10 {
            i += 1;
            append(
                1_764_000_000_000_000 + (i as i64) * 1000,
                i.is_multiple_of(100),
            );
        }
        appends_ns += this_thread_cpu_ns() - cpu;
    }
    let secs = start.elapsed().as_secs_f64();
    let others_ns = (cpu_ns(rustix::time::ClockId::ProcessCPUTime) - process_before)
        .saturating_sub(this_thread_cpu_ns() - me_before);
    let threads = thread_cpu_ns()
        .into_iter()
        .filter(|(tid, _)| Some(*tid) != me)
        .filter_map(|(tid, (name, ns))| {
            let (_, was) = before.get(&tid)?;
            Some((name, ns.saturating_sub(*was)))
        })
        .collect();
    Used {
        vault_ns: others_ns + appends_ns,
        threads,
        appends_ns,
        secs,
    }
}

/// Latency of `n` writes of 4 KiB, each followed by `fdatasync`, 10 ms apart, to a
/// file in `dir`.
fn raw_sync_latency(dir: &std::path::Path, n: usize) -> Histogram {
    use std::io::Write;
    let path = dir.join(format!("capvault-soak-raw-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    let mut h = Histogram::new();
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&[0x5a; 4096]).unwrap();
        f.sync_data().unwrap();
        h.record(t.elapsed().as_nanos() as u64);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(&path).unwrap();
    h
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

/// What the capture phase runs beside the agent.
#[derive(Clone, Copy, PartialEq)]
enum Release {
    /// Nothing: the load of SPEC P5 (8 kHz mouse + 1 fps screenshots).
    None,
    /// Seal and acknowledge as fast as bundles come: the load of SPEC P6.
    Continuous,
}

/// The agent at 8 kHz mouse + 1 screenshot/s with a flush every 100 ms for `secs`, with
/// `release` beside it; prints latencies, peak RSS and disk use.
fn capture(secs: u64, release: Release) {
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
    // Flushes that carry a screenshot (1.5 MB to sync) apart from the others.
    let mut shot_flushes = Histogram::new();
    let mut light_flushes = Histogram::new();
    let mut shot_pending = false;
    // (seconds, bytes on disk, audit ledger entries recorded): two per bundle released.
    let mut disk: Vec<(u64, u64, u64)> = Vec::new();
    let mut peak_rss = 0;
    let mut released = 0usize;
    std::thread::scope(|s| {
        // The uploader: seal and acknowledge as fast as bundles come.
        let uploader = (release == Release::Continuous).then(|| {
            s.spawn(|| {
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
            })
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
                shot_pending = true;
            }
            if last_flush.elapsed() >= Duration::from_millis(100) {
                last_flush = Instant::now();
                let t = Instant::now();
                vault.flush().unwrap();
                let took = t.elapsed().as_nanos() as u64;
                flushes.record(took);
                if std::mem::take(&mut shot_pending) {
                    shot_flushes.record(took);
                } else {
                    light_flushes.record(took);
                }
            }
            if last_sample.elapsed() >= Duration::from_secs(5) {
                last_sample = Instant::now();
                peak_rss = peak_rss.max(rss_kib());
                let st = vault.status().unwrap();
                disk.push((start.elapsed().as_secs(), st.disk_bytes, st.audit_entries));
            }
        }
        // And once at the end, so that a run shorter than the sampling period has one.
        peak_rss = peak_rss.max(rss_kib());
        let st = vault.status().unwrap();
        disk.push((start.elapsed().as_secs(), st.disk_bytes, st.audit_entries));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(uploader) = uploader {
            released = uploader.join().unwrap();
        }
    });
    let beside = match release {
        Release::None => "nothing released (SPEC P5)",
        Release::Continuous => "continuous seal/ack (SPEC P6)",
    };
    println!(
        "soak: {secs} s at 8 kHz mouse + 1 fps 1.5 MB screenshots, flush every 100 ms, {beside}"
    );
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
    for (what, h) in [
        ("with a screenshot", &shot_flushes),
        ("events only", &light_flushes),
    ] {
        println!(
            "    {what:<17} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} flushes)",
            h.pct(0.5) as f64 / 1e6,
            h.pct(0.99) as f64 / 1e6,
            h.pct(1.0) as f64 / 1e6,
            h.total
        );
    }
    // The disk's own floor for P5, same run: a flush syncs at least a segment, sled's
    // database and the durability mark, each a device flush.
    let raw = raw_sync_latency(&std::env::temp_dir(), 300);
    println!(
        "  raw 4 KiB write + fdatasync (same disk, every 10 ms)  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        raw.pct(0.5) as f64 / 1e6,
        raw.pct(0.99) as f64 / 1e6,
        raw.pct(1.0) as f64 / 1e6
    );
    println!(
        "  peak RSS       {:.1} MiB, bundles released {released}",
        peak_rss as f64 / 1024.0
    );
    println!(
        "  disk (s:MiB/audit entries)  {}",
        disk.iter()
            .map(|(t, b, a)| format!("{t}:{:.1}/{a}", *b as f64 / 1048576.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    // Erased, not just removed: its keys would stay in the kernel keyring, against the
    // user's key quota, until reboot.
    vault.erase_open().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let phases: &[Release] = match args.next().as_deref() {
        None | Some("both") => &[Release::None, Release::Continuous],
        Some("capture") => &[Release::None],
        Some("release") => &[Release::Continuous],
        Some(other) => {
            eprintln!("soak: unknown phase {other:?} (capture, release or both)");
            std::process::exit(2);
        }
    };
    for &release in phases {
        capture(secs, release);
    }

    // P7: CPU at 1 kHz mouse + 10 keys/s: the appends themselves and everything the
    // vault's threads (and sled's) did meanwhile.
    let pct = |ns: u64, secs: f64| ns as f64 / 1e9 / secs * 100.0;
    let dir = std::env::temp_dir().join(format!("capvault-cpu-{}", std::process::id()));
    let vault = Vault::open(&dir, "cpu", options()).unwrap();
    let used = paced_load(P7_SECS, &|ts, key| {
        let _ = vault.append_mouse_move(ts, 1, 1).unwrap();
        if key {
            let _ = vault.append_key(ts, 0x04, true, Some("a")).unwrap();
        }
    });
    let mut by_thread: std::collections::BTreeMap<String, u64> = Default::default();
    by_thread.insert("appends (agent thread)".to_string(), used.appends_ns);
    for (name, ns) in used.threads {
        // sled-io-0..6 and the like under one name.
        let key = name.trim_end_matches(|c: char| c.is_ascii_digit());
        *by_thread.entry(key.to_string()).or_default() += ns;
    }
    let named: u64 = by_thread.values().sum();
    by_thread.insert(
        "threads begun and ended".to_string(),
        used.vault_ns.saturating_sub(named),
    );
    println!(
        "  CPU at 1 kHz mouse + 10 keys/s ({P7_SECS} s): vault {:.2}% of a core",
        pct(used.vault_ns, used.secs)
    );
    for (name, ns) in by_thread {
        println!("    {name:26} {:.3}%", pct(ns, used.secs));
    }
    // Erased, not just removed: its keys would stay in the kernel keyring, against the
    // user's key quota, until reboot.
    vault.erase_open().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
