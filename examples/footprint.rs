//! Measures bytes on disk against the serialized plaintext (SPEC P2), for small events
//! and for screenshots, each in a fresh vault: after one flush, and after 10 rounds of
//! append, flush, seal and acknowledge (a collector keeping up). Screenshot ingest is
//! compared with writing the same bytes to a file and one fdatasync (SPEC P3).
//!
//! `cargo run --release --example footprint [mouse|screenshots]` (both when not named;
//! kernel keyutils holds the keys).

use std::io::Write;
use std::time::Instant;

use capvault::{Event, Identity, KeyStoreKind, Suite, Vault, VaultOptions};

/// Bytes allocated to the files under `path` (what `du` counts).
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(path).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            allocated(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

fn options() -> VaultOptions {
    let mut o = VaultOptions::default();
    o.keystore = KeyStoreKind::Keyutils;
    o
}

fn open(name: &str, round: &str) -> (std::path::PathBuf, Vault) {
    let tmp = std::env::temp_dir().join(format!(
        "capvault-footprint-{}-{name}-{round}",
        std::process::id()
    ));
    let v = Vault::open(&tmp, "footprint", options()).unwrap();
    (tmp, v)
}

/// Erases the vault (its keys would stay in the kernel keyring, against the user's key
/// quota, until reboot), then removes what is left of the directory.
fn discard(dir: &std::path::Path) {
    Vault::erase(dir, "footprint", options()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

fn run(name: &str, events: &[Event]) {
    let plain: u64 = events
        .iter()
        .map(|e| {
            let mut buf = Vec::new();
            e.encode_into(&mut buf);
            buf.len() as u64
        })
        .sum();
    // One flush, nothing released. The events are the agent's before the clock starts,
    // as the raw write's buffer is: an agent hands over what it captured.
    let (dir, v) = open(name, "flush");
    let owned = events.to_vec();
    let start = Instant::now();
    for e in owned {
        let _ = v.append(e).unwrap();
    }
    v.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let st = v.status().unwrap();
    v.close().unwrap();
    let disk = allocated(&dir);
    println!(
        "{name}: plaintext {plain} B; after flush: records {} B ({:.3}x), on disk {disk} B ({:.3}x), status {} B; ingest {:.1} MB/s",
        st.stored_bytes,
        st.stored_bytes as f64 / plain as f64,
        disk as f64 / plain as f64,
        st.disk_bytes,
        plain as f64 / secs / 1e6
    );
    discard(&dir);

    // Ten rounds, each acknowledged before the next (the collector keeps up).
    let (dir, v) = open(name, "cycles");
    let id = Identity::generate(Suite::X25519);
    let mut peak = 0u64;
    for part in events.chunks(events.len().div_ceil(10)) {
        for e in part {
            let _ = v.append(e.clone()).unwrap();
        }
        v.flush().unwrap();
        peak = peak.max(allocated(&dir));
        while let Some(b) = v.seal_next(&id.recipient(), 64 << 20).unwrap() {
            v.ack(b.id(), None).unwrap();
        }
    }
    let st = v.status().unwrap();
    v.close().unwrap();
    let disk = allocated(&dir);
    println!(
        "{name}: after 10 append/flush/seal/ack rounds: {} records left, on disk {disk} B ({:.3}x of all plaintext), peak {peak} B ({:.3}x)",
        st.records,
        disk as f64 / plain as f64,
        peak as f64 / plain as f64,
    );
    discard(&dir);
}

/// The machine's raw sequential write + fdatasync throughput for `bytes` bytes, in the
/// same temporary directory.
fn raw_write(bytes: &[u8]) -> f64 {
    let path = std::env::temp_dir().join(format!("capvault-footprint-raw-{}", std::process::id()));
    let start = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_data().unwrap();
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path).unwrap();
    bytes.len() as f64 / secs / 1e6
}

fn main() {
    let only = std::env::args().nth(1);
    if let Some(w) = only
        .as_deref()
        .filter(|w| !["mouse", "screenshots"].contains(w))
    {
        eprintln!("unknown workload {w:?}: expected mouse or screenshots");
        std::process::exit(2);
    }
    let wanted = |w: &str| only.as_deref().is_none_or(|o| o == w);
    let t0 = 1_764_000_000_000_000i64;
    if wanted("mouse") {
        mouse_moves(t0);
    }
    if wanted("screenshots") {
        screenshots(t0);
    }
}

fn mouse_moves(t0: i64) {
    let moves: Vec<Event> = (0..2_000_000i64)
        .map(|i| Event::MouseMove {
            ts_us: t0 + i * 125,
            x: (i % 1920) as i32,
            y: (i % 1080) as i32,
        })
        .collect();
    run("mouse moves (2,000,000)", &moves);
}

fn screenshots(t0: i64) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let shots: Vec<Event> = (0..100i64)
        .map(|i| {
            let data: Vec<u8> = (0..1_500_000 / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            Event::Screenshot {
                ts_us: t0 + i * 1_000_000,
                width: 1920,
                height: 1080,
                format: "png".into(),
                data,
            }
        })
        .collect();
    let all: Vec<u8> = shots
        .iter()
        .flat_map(|e| match e {
            Event::Screenshot { data, .. } => data.clone(),
            _ => Vec::new(),
        })
        .collect();
    println!(
        "raw write + one fdatasync of the same 150 MB: {:.1} MB/s",
        raw_write(&all)
    );
    run("screenshots (100 x 1.5 MB incompressible)", &shots);
    copied_in(&shots);
    println!(
        "raw write + one fdatasync of the same 150 MB: {:.1} MB/s",
        raw_write(&all)
    );
}

/// The same screenshots through `append_screenshot`, which copies the caller's buffer
/// (as the C library does): the ingest of an agent that keeps its own buffers.
fn copied_in(shots: &[Event]) {
    let (dir, v) = open("copied", "flush");
    let mut bytes = 0usize;
    let start = Instant::now();
    for e in shots {
        if let Event::Screenshot {
            ts_us,
            width,
            height,
            format,
            data,
        } = e
        {
            let _ = v
                .append_screenshot(*ts_us, *width, *height, format, data)
                .unwrap();
            bytes += data.len();
        }
    }
    v.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    v.close().unwrap();
    println!(
        "screenshots copied in by append_screenshot: ingest {:.1} MB/s",
        bytes as f64 / secs / 1e6
    );
    discard(&dir);
}
