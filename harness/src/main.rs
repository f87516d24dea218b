//! Side-by-side ingest of small events (SPEC P1): the vault, raw sled with one insert per
//! event, SQLCipher with batched transactions of 1000 in WAL mode, and the raw disk (the
//! same bytes appended to one file through a 64 KiB buffer, then one fdatasync: the
//! ceiling, with no encryption, framing or index), on the same postcard-encoded mouse
//! moves, one producer, in one run.
//!
//! `cargo run --release --manifest-path harness/Cargo.toml -- [EVENTS]` (default 2,000,000).
//!
//! Each store gets a fresh temporary directory per repetition. The timed part is the
//! ingest loop plus the final durable step (vault `flush`, sled `flush`, SQLCipher last
//! `COMMIT` and `PRAGMA wal_checkpoint(TRUNCATE)`, the raw file's `fdatasync`); opening and closing are not timed.
//! Bytes on disk are counted after the store is closed. The vault keeps its keys in
//! kernel keyutils.

use std::path::PathBuf;
use std::time::Instant;

use capvault::{Event, KeyStoreKind, Vault, VaultOptions};
use capvault_harness::allocated;

const REPEATS: usize = 3;
const BATCH: u64 = 1000;
const T0: i64 = 1_764_000_000_000_000;

fn event(i: u64) -> Event {
    Event::MouseMove {
        ts_us: T0 + i as i64 * 125,
        x: (i % 1920) as i32,
        y: (i % 1080) as i32,
    }
}

fn fresh_dir(name: &str, rep: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "capvault-harness-{}-{name}-{rep}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Run {
    events_per_s: f64,
    disk_bytes: u64,
}

fn run_vault(n: u64, rep: usize) -> Run {
    let dir = fresh_dir("vault", rep);
    let mut o = VaultOptions::default();
    o.keystore = KeyStoreKind::Keyutils;
    let v = Vault::open(dir.join("v"), "harness", o).unwrap();
    let start = Instant::now();
    for i in 0..n {
        let Event::MouseMove { ts_us, x, y } = event(i) else {
            unreachable!()
        };
        let _ = v.append_mouse_move(ts_us, x, y).unwrap();
    }
    v.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    v.close().unwrap();
    let disk_bytes = allocated(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    Run {
        events_per_s: n as f64 / secs,
        disk_bytes,
    }
}

fn run_raw_disk(n: u64, rep: usize) -> Run {
    use std::io::Write;
    let dir = fresh_dir("raw", rep);
    let path = dir.join("events");
    let mut buf = Vec::with_capacity(32);
    let start = Instant::now();
    let mut out =
        std::io::BufWriter::with_capacity(64 << 10, std::fs::File::create(&path).unwrap());
    for i in 0..n {
        buf.clear();
        event(i).encode_into(&mut buf);
        out.write_all(&buf).unwrap();
    }
    let file = out.into_inner().unwrap();
    file.sync_data().unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(file);
    let disk_bytes = allocated(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    Run {
        events_per_s: n as f64 / secs,
        disk_bytes,
    }
}

fn run_sled(n: u64, rep: usize) -> Run {
    let dir = fresh_dir("sled", rep);
    let db = sled::open(dir.join("db")).unwrap();
    let mut buf = Vec::with_capacity(32);
    let start = Instant::now();
    for i in 0..n {
        buf.clear();
        event(i).encode_into(&mut buf);
        db.insert(i.to_be_bytes(), buf.as_slice()).unwrap();
    }
    db.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(db);
    let disk_bytes = allocated(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    Run {
        events_per_s: n as f64 / secs,
        disk_bytes,
    }
}

fn raw_key_hex() -> String {
    // A 256-bit raw key (no passphrase derivation). Its value does not matter for speed.
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    (0..4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect()
}

fn run_sqlcipher(n: u64, rep: usize) -> Run {
    let dir = fresh_dir("sqlcipher", rep);
    let mut conn = rusqlite::Connection::open(dir.join("events.db")).unwrap();
    conn.execute_batch(&format!("PRAGMA key = 'x''{}''';", raw_key_hex()))
        .unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA synchronous=NORMAL;
         CREATE TABLE events(seq INTEGER PRIMARY KEY, data BLOB);",
    )
    .unwrap();
    let mut buf = Vec::with_capacity(32);
    let start = Instant::now();
    let mut i = 0u64;
    while i < n {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO events(seq, data) VALUES (?1, ?2)")
                .unwrap();
            let end = (i + BATCH).min(n);
            while i < end {
                buf.clear();
                event(i).encode_into(&mut buf);
                stmt.execute(rusqlite::params![i as i64, buf.as_slice()])
                    .unwrap();
                i += 1;
            }
        }
        tx.commit().unwrap();
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let count: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count as u64, n);
    conn.close().map_err(|(_, e)| e).unwrap();
    // The file must be encrypted: a plain SQLite file starts with this header.
    let mut head = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open(dir.join("events.db")).unwrap(),
        &mut head,
    )
    .unwrap();
    assert!(
        !head.starts_with(b"SQLite format 3\0"),
        "database is not encrypted"
    );
    let disk_bytes = allocated(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    Run {
        events_per_s: n as f64 / secs,
        disk_bytes,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.0} k/s", r / 1e3)
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| {
            a.replace(['_', ','], "")
                .parse()
                .expect("EVENTS must be a number")
        })
        .unwrap_or(2_000_000);
    let plain: u64 = (0..n)
        .map(|i| {
            let mut buf = Vec::new();
            event(i).encode_into(&mut buf);
            buf.len() as u64
        })
        .sum();
    let version: String = rusqlite::Connection::open_in_memory()
        .unwrap()
        .query_row("PRAGMA cipher_version", [], |r| r.get(0))
        .unwrap_or_else(|_| "unknown".into());
    eprintln!(
        "{n} mouse moves, {plain} bytes serialized ({:.1} bytes/event), {REPEATS} repetitions, SQLCipher {version}",
        plain as f64 / n as f64
    );

    let names = ["vault", "raw sled", "SQLCipher", "raw disk"];
    let mut runs: Vec<Vec<Run>> = (0..names.len()).map(|_| Vec::new()).collect();
    for rep in 0..REPEATS {
        for (k, name) in names.iter().enumerate() {
            let r = match k {
                0 => run_vault(n, rep),
                1 => run_sled(n, rep),
                2 => run_sqlcipher(n, rep),
                _ => run_raw_disk(n, rep),
            };
            eprintln!(
                "run {}: {name:>9}: {:>10.0} events/s, {} bytes on disk",
                rep + 1,
                r.events_per_s,
                r.disk_bytes
            );
            runs[k].push(r);
        }
    }

    let rate: Vec<f64> = runs
        .iter()
        .map(|rs| median(rs.iter().map(|r| r.events_per_s).collect()))
        .collect();
    let disk: Vec<f64> = runs
        .iter()
        .map(|rs| median(rs.iter().map(|r| r.disk_bytes as f64).collect()))
        .collect();

    println!("| store | events/s (median of {REPEATS}) | vault is | bytes on disk | on disk / serialized |");
    println!("|---|---|---|---|---|");
    for k in 0..names.len() {
        let vs = if k == 0 {
            "–".to_string()
        } else {
            format!("{:.1}×", rate[0] / rate[k])
        };
        println!(
            "| {} | {} | {} | {:.1} MB | {:.2}× |",
            names[k],
            fmt_rate(rate[k]),
            vs,
            disk[k] / 1e6,
            disk[k] / plain as f64
        );
    }
    println!();
    println!(
        "{n} events ({:.1} MB serialized); vault/SQLCipher {:.1}×, vault/raw sled {:.1}×, vault/raw disk {:.2}×",
        plain as f64 / 1e6,
        rate[0] / rate[2],
        rate[0] / rate[1],
        rate[0] / rate[3]
    );
}
