//! Where record bytes can live (SPEC P2, P3): the same records stored as sled values
//! under several sled configurations, and as append-only segment files with a small
//! location per record in sled (the vault's layout), side by side in one run.
//!
//! `cargo run --release --manifest-path harness/Cargo.toml --bin record_layouts`
//!
//! Records are incompressible bytes (ciphertext) of the vault's sizes: 64 KiB frames for
//! small events (25.8 MB, the 2,000,000 mouse moves of the main harness), 64 KiB chunks
//! or whole 1.5 MB values for 100 screenshots (150 MB); each record carries 40 bytes of
//! nonce and tag. Every layout ends each step durable: sled's `flush` and then `fsync`
//! of each of its files (sled's own flush does not survive power loss), segment files
//! with `fdatasync` before the index. Two measures per layout and workload:
//!
//! - ingest: all records, then the durable step; MB/s of plaintext, and bytes on disk
//!   (allocated, what `du` counts) against the plaintext;
//! - released: ten rounds of a tenth of the records, durable, then every record of the
//!   round removed and durable again (a collector keeping up); bytes on disk at the end
//!   against all the plaintext, and the peak (after a round's ingest) against one
//!   round's plaintext.

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use capvault_harness::allocated;

const OVERHEAD: usize = 40;
const ROUNDS: usize = 10;

/// `fsync` of every file and directory under `path` (sled removes old snapshots and
/// blobs in the background: a file gone meanwhile needs nothing).
fn sync_tree(path: &Path) {
    for e in std::fs::read_dir(path).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            sync_tree(&e.path());
        } else {
            match File::open(e.path()) {
                Ok(f) => f.sync_all().unwrap(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    File::open(path).unwrap().sync_all().unwrap();
}

struct Rng(u64);

impl Rng {
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            v.extend_from_slice(&self.0.to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// One workload: the plaintext length and the records that hold it.
struct Workload {
    name: &'static str,
    plain: u64,
    records: Vec<Vec<u8>>,
}

fn workload(name: &'static str, payloads: &[usize], record_plain: usize) -> Workload {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut records = Vec::new();
    for &p in payloads {
        let mut left = p;
        while left > 0 {
            let n = left.min(record_plain);
            records.push(rng.bytes(n + OVERHEAD));
            left -= n;
        }
    }
    Workload {
        name,
        plain: payloads.iter().map(|&p| p as u64).sum(),
        records,
    }
}

/// A store of records under sequence numbers.
trait Layout {
    fn put(&mut self, seq: u64, record: &[u8]);
    fn remove(&mut self, seqs: std::ops::Range<u64>);
    fn durable(&mut self);
}

struct SledValues {
    dir: PathBuf,
    db: sled::Db,
}

impl SledValues {
    fn open(dir: &Path, segment: usize, mode: sled::Mode) -> Self {
        let db = sled::Config::new()
            .path(dir)
            .segment_size(segment)
            .mode(mode)
            .flush_every_ms(None)
            .open()
            .unwrap();
        SledValues {
            dir: dir.to_owned(),
            db,
        }
    }
}

impl Layout for SledValues {
    fn put(&mut self, seq: u64, record: &[u8]) {
        self.db.insert(seq.to_be_bytes(), record).unwrap();
    }
    fn remove(&mut self, seqs: std::ops::Range<u64>) {
        for s in seqs {
            self.db.remove(s.to_be_bytes()).unwrap();
        }
    }
    fn durable(&mut self) {
        self.db.flush().unwrap();
        sync_tree(&self.dir);
    }
}

/// Records appended to segment files; sled holds (segment, offset, length) per record.
struct SegmentFiles {
    dir: PathBuf,
    segment_bytes: u64,
    index: SledValues,
    /// (first sequence, file, length) of each live segment, oldest first.
    segments: Vec<(u64, File, u64)>,
    unsynced: Vec<usize>,
    new_file: bool,
    /// Sequence -> (segment first sequence, offset, length), for release.
    live: std::collections::BTreeMap<u64, (u64, u64, u64)>,
}

impl SegmentFiles {
    fn open(dir: &Path, segment_bytes: u64) -> Self {
        std::fs::create_dir_all(dir.join("segments")).unwrap();
        SegmentFiles {
            dir: dir.to_owned(),
            segment_bytes,
            index: SledValues::open(&dir.join("db"), 4 << 20, sled::Mode::LowSpace),
            segments: Vec::new(),
            unsynced: Vec::new(),
            new_file: false,
            live: Default::default(),
        }
    }

    fn path(&self, first: u64) -> PathBuf {
        self.dir.join("segments").join(format!("{first:016x}"))
    }
}

impl Layout for SegmentFiles {
    fn put(&mut self, seq: u64, record: &[u8]) {
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.2 + record.len() as u64 > self.segment_bytes);
        if full {
            let f = File::create(self.path(seq)).unwrap();
            self.segments.push((seq, f, 0));
            self.new_file = true;
        }
        let k = self.segments.len() - 1;
        let seg = &mut self.segments[k];
        seg.1.write_all(record).unwrap();
        let at = seg.2;
        seg.2 += record.len() as u64;
        let first = seg.0;
        if !self.unsynced.contains(&k) {
            self.unsynced.push(k);
        }
        let mut loc = [0u8; 26];
        loc[..8].copy_from_slice(&first.to_be_bytes());
        loc[8..16].copy_from_slice(&at.to_be_bytes());
        loc[16..24].copy_from_slice(&(record.len() as u64).to_be_bytes());
        self.index.put(seq, &loc);
        self.live.insert(seq, (first, at, record.len() as u64));
    }

    fn remove(&mut self, seqs: std::ops::Range<u64>) {
        self.index.remove(seqs.clone());
        for s in seqs {
            self.live.remove(&s);
        }
        // Segments with nothing live go, but the one being appended to; the dead front
        // of the oldest segment kept is punched out (as the vault does).
        let live_in = |first: u64, live: &std::collections::BTreeMap<u64, (u64, u64, u64)>| {
            live.values().any(|l| l.0 == first)
        };
        let last = self.segments.len().saturating_sub(1);
        let mut kept = Vec::new();
        for (k, (first, f, len)) in self.segments.drain(..).enumerate() {
            if k == last || live_in(first, &self.live) {
                kept.push((first, f, len));
            } else {
                std::fs::remove_file(self.dir.join("segments").join(format!("{first:016x}")))
                    .unwrap();
            }
        }
        self.segments = kept;
        self.unsynced.clear();
        if let Some((first, f, len)) = self.segments.first() {
            let upto = match self.live.values().next() {
                Some(l) if l.0 == *first => l.1,
                Some(_) => 0,
                None => *len,
            } & !4095;
            if upto > 0 {
                use rustix::fs::{fallocate, FallocateFlags};
                fallocate(
                    f,
                    FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                    0,
                    upto,
                )
                .expect("punching the released front of a segment");
            }
        }
    }

    fn durable(&mut self) {
        for &k in &self.unsynced {
            if let Some(s) = self.segments.get(k) {
                s.1.sync_data().unwrap();
            }
        }
        self.unsynced.clear();
        if std::mem::take(&mut self.new_file) {
            File::open(self.dir.join("segments"))
                .unwrap()
                .sync_all()
                .unwrap();
        }
        self.index.durable();
    }
}

fn fresh(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "capvault-layouts-{}-{}",
        std::process::id(),
        name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

type Opener = fn(&Path) -> Box<dyn Layout>;

fn layouts() -> Vec<(&'static str, Opener)> {
    vec![
        ("sled values, 512 KiB sled segments (sled's default)", |d| {
            Box::new(SledValues::open(d, 512 << 10, sled::Mode::LowSpace))
        }),
        (
            "sled values, 4 MiB, LowSpace (the vault before segments)",
            |d| Box::new(SledValues::open(d, 4 << 20, sled::Mode::LowSpace)),
        ),
        ("sled values, 4 MiB, HighThroughput", |d| {
            Box::new(SledValues::open(d, 4 << 20, sled::Mode::HighThroughput))
        }),
        ("segment files of 1 MiB + sled index", |d| {
            Box::new(SegmentFiles::open(d, 1 << 20))
        }),
        (
            "segment files of 16 MiB + sled index (the vault now)",
            |d| Box::new(SegmentFiles::open(d, 16 << 20)),
        ),
        ("segment files of 64 MiB + sled index", |d| {
            Box::new(SegmentFiles::open(d, 64 << 20))
        }),
    ]
}

struct Measured {
    mb_s: f64,
    after_ingest: u64,
    after_rounds: u64,
    peak: u64,
}

fn measure(open: Opener, name: &str, w: &Workload) -> Measured {
    let dir = fresh(name);
    let mut store = open(&dir);
    let start = Instant::now();
    for (i, r) in w.records.iter().enumerate() {
        store.put(i as u64, r);
    }
    store.durable();
    let secs = start.elapsed().as_secs_f64();
    drop(store);
    let after_ingest = allocated(&dir);
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = fresh(name);
    let mut store = open(&dir);
    let mut peak = 0;
    let per_round = w.records.len().div_ceil(ROUNDS);
    for (round, part) in w.records.chunks(per_round).enumerate() {
        let base = (round * per_round) as u64;
        for (i, r) in part.iter().enumerate() {
            store.put(base + i as u64, r);
        }
        store.durable();
        peak = peak.max(allocated(&dir));
        store.remove(base..base + part.len() as u64);
        store.durable();
    }
    drop(store);
    let after_rounds = allocated(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    Measured {
        mb_s: w.plain as f64 / secs / 1e6,
        after_ingest,
        after_rounds,
        peak,
    }
}

/// The same plaintext bytes written to one file with one `fdatasync`.
fn raw_disk(w: &Workload) -> f64 {
    let dir = fresh("raw");
    let start = Instant::now();
    let mut f = File::create(dir.join("raw")).unwrap();
    for r in &w.records {
        f.write_all(&r[OVERHEAD..]).unwrap();
    }
    f.sync_data().unwrap();
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&dir).unwrap();
    w.plain as f64 / secs / 1e6
}

fn main() {
    let small = workload(
        "small events (25.8 MB in 64 KiB frames)",
        &[25_800_000],
        64 << 10,
    );
    let shots = [1_500_000usize; 100];
    let chunks = workload(
        "screenshots (100 x 1.5 MB in 64 KiB chunks)",
        &shots,
        64 << 10,
    );
    let whole = workload(
        "screenshots (100 x 1.5 MB, one value each)",
        &shots,
        usize::MAX,
    );
    println!("| workload | layout | ingest MB/s (raw disk before / after) | on disk after ingest | after {ROUNDS} rounds released | peak / one round |");
    println!("|---|---|---|---|---|---|");
    for w in [&small, &chunks, &whole] {
        for (name, open) in layouts() {
            // Whole-screenshot values only for sled (its blob files); the segment layout
            // stores what the vault writes, 64 KiB chunks.
            if std::ptr::eq(w, &whole) && name.starts_with("segment") {
                continue;
            }
            let before = raw_disk(w);
            let m = measure(open, name, w);
            let after = raw_disk(w);
            println!(
                "| {} | {name} | {:.0} ({:.0} / {:.0}) | {:.1} MB ({:.2}×) | {:.1} MB ({:.2}×) | {:.2}× |",
                w.name,
                m.mb_s,
                before,
                after,
                m.after_ingest as f64 / 1e6,
                m.after_ingest as f64 / w.plain as f64,
                m.after_rounds as f64 / 1e6,
                m.after_rounds as f64 / w.plain as f64,
                m.peak as f64 * ROUNDS as f64 / w.plain as f64,
            );
        }
    }
}
