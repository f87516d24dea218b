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
    run("screenshots (100 x 1.5 MB incompressible)", &shots);
    ingest_rounds(&shots, &all);
}

/// P3 in pairs close in time: the disk's rate drifts within minutes (and the first large
/// write of a process can be several times slower than the next), so each vault ingest
/// is set against a raw write just before it, and the ratios are reported per round and
/// over all rounds (`ROUNDS`, 5 when not set). The cipher's rate on one core is printed
/// too: the writer seals a user's records one after the other (each record's associated
/// data holds the tag before it), so it bounds the vault's ingest on any disk.
fn ingest_rounds(shots: &[Event], all: &[u8]) {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(5);
    // Warms the temporary directory's file system up: not counted.
    let _ = raw_write(all);
    println!(
        "ChaCha20-Poly1305 seal on one core (ring, 64 KiB in place): {:.1} MB/s",
        seal_rate(all)
    );
    let (mut handed, mut copied) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let raw = raw_write(all);
        let h = handed_over(shots);
        let c = copied_in(shots);
        println!(
            "round {round}: raw write + one fdatasync {raw:.1} MB/s; vault ingest handed over {h:.1} MB/s ({:.2} of raw), copied in {c:.1} MB/s ({:.2})",
            h / raw,
            c / raw
        );
        handed.push(h / raw);
        copied.push(c / raw);
    }
    println!(
        "P3 over {rounds} rounds: handed over {}, copied in {} (min / median / max of vault / raw)",
        spread(&mut handed),
        spread(&mut copied)
    );
}

/// "min / median / max" of `v`.
fn spread(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "{:.2} / {:.2} / {:.2}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

/// The rate of sealing `bytes` with ChaCha20-Poly1305 in 64 KiB pieces in place, as the
/// writer does (without its copy and its HChaCha20 step per record).
fn seal_rate(bytes: &[u8]) -> f64 {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
    let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).unwrap());
    let mut buf = bytes.to_vec();
    let start = Instant::now();
    for (i, piece) in buf.chunks_mut(64 << 10).enumerate() {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
        let _ = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&[0u8; 80]),
                piece,
            )
            .unwrap();
    }
    bytes.len() as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// The screenshots appended as owned events (an agent hands over what it captured), then
/// one flush, in a fresh vault: the ingest rate in MB/s of payload.
fn handed_over(shots: &[Event]) -> f64 {
    let (dir, v) = open("handed", "flush");
    let owned = shots.to_vec();
    let bytes: usize = shots.iter().map(payload_len).sum();
    let start = Instant::now();
    for e in owned {
        let _ = v.append(e).unwrap();
    }
    v.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    v.close().unwrap();
    discard(&dir);
    bytes as f64 / secs / 1e6
}

fn payload_len(e: &Event) -> usize {
    match e {
        Event::Screenshot { data, .. } => data.len(),
        _ => 0,
    }
}

/// The same screenshots through `append_screenshot`, which copies the caller's buffer
/// (as the C library does): the ingest of an agent that keeps its own buffers.
fn copied_in(shots: &[Event]) -> f64 {
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
    discard(&dir);
    bytes as f64 / secs / 1e6
}
