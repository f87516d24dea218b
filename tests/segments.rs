//! Record bytes in segment files (docs/FORMAT.md §2, "Storage"): vaults from before
//! segments keep opening, space comes back after acknowledgement and eviction, a torn
//! write after the last durable flush is trimmed while the same damage before it is
//! refused, bytes the index never took are cut, `status` reports what `du` sees, and a
//! process that dies at any step of a write or a flush loses nothing flushed.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use capvault::{Error, Event, Identity, KeyStoreKind, Suite, Vault};
use common::options;

const USER: &str = "alice";

fn opts() -> capvault::VaultOptions {
    options(KeyStoreKind::Keyutils)
}

/// The children's options: a budget far above what they write, for 1 MiB segments (a
/// sixteenth of it), so they create several.
fn child_opts() -> capvault::VaultOptions {
    let mut o = opts();
    o.policy.budget_bytes = 16 << 20;
    o
}

fn moves(v: &Vault) -> Vec<i64> {
    v.test_read_all()
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, Event::MouseMove { .. }))
        .map(|e| e.event.ts_us())
        .collect()
}

fn shot(len: usize, seed: u64) -> Vec<u8> {
    let mut r = common::Rng(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let d = capvault::testing::segment_dir(dir, USER);
    if !d.exists() {
        return Vec::new();
    }
    common::files_under(d)
}

/// Bytes allocated to the files under `path`, as `du` counts them.
fn du(path: &Path) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Seals and acknowledges bundles until nothing is left to release.
fn ack_everything(v: &Vault) {
    let id = Identity::generate(Suite::X25519);
    while let Some(b) = v.seal_next(&id.recipient(), 64 << 20).unwrap() {
        v.ack(b.id(), None).unwrap();
    }
}

/// The first 8 bytes of a log anchor's body (head: last_seq; synced: last_seq), read
/// raw from a closed vault.
fn anchor_seq(dir: &Path, which: u8) -> u64 {
    let db = capvault::testing::open_raw_db(dir);
    let v = common::user_tree(&db, USER, "log")
        .get([1u8, which])
        .unwrap()
        .expect("anchor present");
    u64::from_be_bytes(v[..8].try_into().unwrap())
}

#[test]
fn records_of_a_vault_from_before_segments_are_read_and_released() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), USER, opts()).unwrap();
    for i in 1..=3000 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    let _ = v
        .append_screenshot(3001, 1, 1, "raw", &shot(300_000, 1))
        .unwrap();
    v.flush().unwrap();
    v.close().unwrap();
    capvault::testing::write_records_inline(d.path(), USER).unwrap();
    assert!(
        segment_files(d.path()).is_empty(),
        "records are in the database"
    );

    // Old records read; new ones go to segments after them.
    let v = Vault::open(d.path(), USER, opts()).unwrap();
    assert_eq!(moves(&v), (1..=3000).collect::<Vec<_>>());
    v.verify().unwrap();
    for i in 3002..=4000 {
        let _ = v.append_mouse_move(i, 2, 2).unwrap();
    }
    v.flush().unwrap();
    assert!(!segment_files(d.path()).is_empty());
    v.close().unwrap();
    let v = Vault::open(d.path(), USER, opts()).unwrap();
    let mut want: Vec<i64> = (1..=3000).collect();
    want.extend(3002..=4000);
    assert_eq!(moves(&v), want);
    v.verify().unwrap();
    // Release crosses from database records to segment records, and then gives the
    // segments back.
    ack_everything(&v);
    assert_eq!(v.status().unwrap().records, 0);
    v.verify().unwrap();
    assert!(
        segment_files(d.path()).is_empty(),
        "{:?}",
        segment_files(d.path())
    );
    let _ = v.append_mouse_move(5000, 3, 3).unwrap();
    v.close().unwrap();
    let v = Vault::open(d.path(), USER, opts()).unwrap();
    assert_eq!(moves(&v), vec![5000]);
    v.verify().unwrap();
    v.close().unwrap();
    Vault::erase(d.path(), USER, opts()).unwrap();
}

#[test]
fn acknowledged_records_give_their_space_back_and_status_counts_real_bytes() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts();
    // 4 MiB segments (a sixteenth of the budget).
    o.policy.budget_bytes = 64 << 20;
    let v = Vault::open(d.path(), USER, o).unwrap();
    // 12 MB of incompressible screenshots: several segments.
    for i in 0..8 {
        let _ = v
            .append_screenshot(i, 1, 1, "raw", &shot(1_500_000, i as u64))
            .unwrap();
        v.flush().unwrap();
    }
    let seg_dir = capvault::testing::segment_dir(d.path(), USER);
    let full = du(&seg_dir);
    assert!(full >= 12_000_000, "{full}");
    assert!(segment_files(d.path()).len() >= 2);
    let st = v.status().unwrap();
    let whole = du(d.path());
    // status counts what du counts, less the directories themselves.
    assert!(
        st.disk_bytes <= whole && st.disk_bytes + (64 << 10) >= whole,
        "status {} du {whole}",
        st.disk_bytes
    );
    // Half released: the first segment goes, the front of the next is punched out.
    let id = Identity::generate(Suite::X25519);
    let b = v.seal_next(&id.recipient(), 6_000_000).unwrap().unwrap();
    v.ack(b.id(), None).unwrap();
    let half = du(&seg_dir);
    assert!(
        half < full * 2 / 3,
        "after half was acknowledged: {half} of {full}"
    );
    ack_everything(&v);
    assert!(du(&seg_dir) <= 4096, "only the directory is left");
    assert!(segment_files(d.path()).is_empty());
    v.close().unwrap();
    Vault::erase(d.path(), USER, opts()).unwrap();
    assert!(
        !d.path().join("segments").exists(),
        "erase removes the segments"
    );
}

#[test]
fn the_byte_budget_holds_on_bytes_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.policy.budget_bytes = 2 << 20;
    let v = Vault::open(d.path(), USER, o).unwrap();
    for i in 0..8 {
        let _ = v
            .append_screenshot(i, 1, 1, "raw", &shot(1_000_000, i as u64))
            .unwrap();
        v.flush().unwrap();
    }
    // The maintenance tick evicts within a second.
    let seg_dir = capvault::testing::segment_dir(d.path(), USER);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while du(&seg_dir) > 2 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let used = du(&seg_dir);
    assert!(used <= 2 << 20, "segments take {used} bytes on disk");
    assert!(used >= 1 << 20, "eviction keeps what fits: {used}");
    v.verify().unwrap();
    v.close().unwrap();
    Vault::erase(d.path(), USER, opts()).unwrap();
}

/// An agent opened with the default policy keeps the one the vault records, budget
/// included, and so the segment size of that budget (a sixteenth of it): with the
/// caller's (no budget, 16 MiB segments) the dead front of one segment could hold more
/// than the whole budget where holes cannot be punched.
#[test]
fn the_default_policy_keeps_the_recorded_budget_s_segment_size() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.policy.budget_bytes = 2 << 20;
    Vault::open(d.path(), USER, o).unwrap().close().unwrap();
    let v = Vault::open(d.path(), USER, opts()).unwrap();
    for i in 0..10 {
        let _ = v
            .append_screenshot(i, 1, 1, "raw", &shot(100_000, i as u64))
            .unwrap();
        v.flush().unwrap();
    }
    v.close().unwrap();
    let segments = common::segments_snapshot(d.path(), USER);
    // 128 KiB segments: a new one at least every second screenshot.
    assert!(
        segments.len() >= 5,
        "{} segments for 1 MB: {:?}",
        segments.len(),
        segments.iter().map(|(_, b)| b.len()).collect::<Vec<_>>()
    );
    Vault::erase(d.path(), USER, opts()).unwrap();
}

/// Promise (docs/PERFORMANCE.md, "Segment size"): the byte budget is read without a
/// lock, so an append under a refusing budget does not wait for a durable flush that is
/// syncing the segments. The sync is held inside its fdatasync step (the segments'
/// lock taken) while another thread appends; the append must come back before the sync
/// is let go. Before the count was kept apart from that lock, the append waited for the
/// lock and so for the release: the bound below only turns that wait into a failure
/// instead of a hang.
#[test]
fn an_append_under_a_refusing_budget_does_not_wait_for_a_segment_sync() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.policy.budget_bytes = 16 << 20;
    o.policy.on_budget = capvault::BudgetAction::Refuse;
    let v = Vault::open(d.path(), USER, o).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    let held = capvault::testing::hold("segments:sync");
    let v = &v;
    let appended = std::thread::scope(|s| {
        let flush = s.spawn(|| v.flush());
        held.reached();
        let (tx, rx) = std::sync::mpsc::channel();
        s.spawn(move || tx.send(v.append_mouse_move(2, 1, 1).map(|_| ())));
        let appended = rx.recv_timeout(Duration::from_secs(60));
        held.release();
        flush.join().unwrap().unwrap();
        appended
    });
    match appended {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("the append waited for the segment sync held in another thread"),
    }
    v.flush().unwrap();
    assert_eq!(moves(v), vec![1, 2]);
}

#[test]
fn bytes_the_index_never_took_are_cut_at_open() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), USER, opts()).unwrap();
    for i in 1..=500 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.close().unwrap();
    let files = segment_files(d.path());
    let last = files.last().unwrap().clone();
    let len = std::fs::metadata(&last).unwrap().len();
    // A write whose index never made it: bytes after the last record, and a later
    // segment.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0x5a; 5000]).unwrap();
    drop(f);
    let stray = last.with_file_name("0000099999");
    std::fs::write(&stray, b"never indexed").unwrap();
    let v = Vault::open(d.path(), USER, opts()).unwrap();
    assert_eq!(std::fs::metadata(&last).unwrap().len(), len);
    assert!(!stray.exists());
    assert_eq!(moves(&v), (1..=500).collect::<Vec<_>>());
    let _ = v.append_mouse_move(501, 1, 1).unwrap();
    v.flush().unwrap();
    v.verify().unwrap();
    v.close().unwrap();
    Vault::erase(d.path(), USER, opts()).unwrap();
}

#[test]
fn a_damaged_segment_is_tampered_with_a_message_that_says_what_to_do() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.frame_max_bytes = 256;
    let v = Vault::open(d.path(), USER, o.clone()).unwrap();
    for i in 1..=2000 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.close().unwrap();
    let (path, offset, bytes) = common::record_entry(d.path(), USER, 1);
    let mut all = std::fs::read(&path).unwrap();
    all[offset as usize + 16 + bytes.len() / 2] ^= 0x04;
    std::fs::write(&path, &all).unwrap();
    // Found by the first read of it (the open's retention check, or verify).
    match Vault::open(d.path(), USER, o.clone()).and_then(|v| v.verify()) {
        Err(Error::Tampered(m)) => {
            assert!(
                m.contains("record 1") && m.contains("segment") && m.contains("restore"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A deleted segment is named too.
    std::fs::remove_file(&path).unwrap();
    match Vault::open(d.path(), USER, o).and_then(|v| v.verify()) {
        Err(Error::Tampered(m)) => assert!(m.contains("missing"), "{m}"),
        other => panic!("{other:?}"),
    }
    Vault::erase(d.path(), USER, opts()).unwrap();
}

// ------------------------------------------------------------------------------------
// Child processes: a torn write, and a death at each step of a write and a flush.

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

#[test]
#[ignore = "helper: run in a child process by the tests of this file"]
fn segments_child() {
    let dir = PathBuf::from(std::env::var("CAPVAULT_SEG_DIR").unwrap());
    let mode = std::env::var("CAPVAULT_SEG_MODE").unwrap();
    let v = Vault::open(&dir, USER, child_opts()).unwrap();
    match mode.as_str() {
        // Records written after the last durable flush, reaching sled's index (the
        // writer writes what nobody flushed within 0.5 s) but never flushed; then killed
        // by the parent.
        "failed-piece" => fail_a_piece(v),
        "torn" => {
            for i in 1..=500 {
                let _ = v.append_mouse_move(i, 1, 1).unwrap();
            }
            v.flush().unwrap();
            say("flushed 500");
            // Past the flush the writer runs 500 ms after this one to make its synced
            // anchor durable: run later, it would sync and name what follows too.
            std::thread::sleep(Duration::from_secs(2));
            for i in 501..=800 {
                let _ = v.append_mouse_move(i, 2, 2).unwrap();
            }
            let _ = v
                .append_screenshot(801, 1, 1, "raw", &shot(200_000, 9))
                .unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            say("written");
            std::thread::sleep(Duration::from_secs(60));
        }
        // 500 moves flushed under the first data key, then the key rotated (a durable
        // flush) and 300 moves under the second never flushed; killed by the parent.
        "torn-rotated" => {
            for i in 1..=500 {
                let _ = v.append_mouse_move(i, 1, 1).unwrap();
            }
            v.flush().unwrap();
            assert_eq!(v.rotate_dek().unwrap(), 2);
            std::thread::sleep(Duration::from_secs(2));
            for i in 501..=800 {
                let _ = v.append_mouse_move(i, 2, 2).unwrap();
            }
            std::thread::sleep(Duration::from_millis(1500));
            say("written");
            std::thread::sleep(Duration::from_secs(60));
        }
        // A flush, then a second with nothing new or two idle seconds, or one flush
        // that finds no thread for the segments' sync; killed by the parent.
        "flushed-twice" | "flushed-then-idle" | "flushed-without-a-thread" => {
            for i in 1..=500 {
                let _ = v.append_mouse_move(i, 1, 1).unwrap();
            }
            if mode == "flushed-without-a-thread" {
                capvault::testing::arm("flush:spawn");
            }
            v.flush().unwrap();
            if mode == "flushed-twice" {
                v.flush().unwrap();
            } else if mode == "flushed-then-idle" {
                // Four times the writer's bound for making the anchor durable.
                std::thread::sleep(Duration::from_secs(2));
            }
            say("flushed");
            std::thread::sleep(Duration::from_secs(60));
        }
        // A flush (its synced anchor named, not yet in sled), then a flush in order whose
        // segment sync fails; killed by the parent once sled's own flush has run.
        "named-then-sync-failed" => {
            for i in 1..=500 {
                let _ = v.append_mouse_move(i, 1, 1).unwrap();
            }
            v.flush().unwrap();
            let head = v.status().unwrap().last_record;
            capvault::testing::arm("segments:fdatasync");
            for i in 501..=600 {
                let _ = v.append_mouse_move(i, 1, 1).unwrap();
            }
            // `verify` flushes in order first.
            assert!(v.verify().is_err());
            std::thread::sleep(Duration::from_secs(1));
            say(&format!("flushed {head}"));
            std::thread::sleep(Duration::from_secs(60));
        }
        // Rounds of writes, flushes, and releases, until CAPVAULT_CRASH_AT aborts us.
        _ => {
            let id = Identity::generate(Suite::X25519);
            let mut ts = moves(&v).last().copied().unwrap_or(0);
            for round in 0..40u64 {
                for _ in 0..200 {
                    ts += 1;
                    let _ = v.append_mouse_move(ts, 1, 1).unwrap();
                }
                if round % 3 == 0 {
                    let _ = v
                        .append_screenshot(ts, 1, 1, "raw", &shot(300_000, round))
                        .unwrap();
                }
                if round % 13 == 1 {
                    // Large enough to be written in pieces by the helper thread.
                    let _ = v
                        .append_screenshot(ts, 2, 2, "raw", &shot(1_100_000, round))
                        .unwrap();
                }
                v.flush().unwrap();
                say(&format!("flushed {ts}"));
                if round % 4 == 3 {
                    if let Some(b) = v.seal_next(&id.recipient(), 400_000).unwrap() {
                        // Said before the acknowledgement, which a death may cut short.
                        let last = capvault::open_bundle(b.bytes(), &id)
                            .unwrap()
                            .events
                            .iter()
                            .filter(|e| matches!(e.event, Event::MouseMove { .. }))
                            .map(|e| e.event.ts_us())
                            .max();
                        if let Some(last) = last {
                            say(&format!("releasing {last}"));
                        }
                        v.ack(b.id(), None).unwrap();
                    }
                }
            }
            say("finished");
        }
    }
}

fn child(dir: &Path, mode: &str, crash_at: Option<&str>) -> std::process::Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "segments_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("CAPVAULT_SEG_DIR", dir)
    .env("CAPVAULT_SEG_MODE", mode)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    // The crash tests' children abort; the others say why they failed.
    .stderr(if mode == "failed-piece" {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    if let Some(p) = crash_at {
        c.env("CAPVAULT_CRASH_AT", p);
    }
    c.spawn().unwrap()
}

/// Lines the child printed, read until `until` or the end.
fn lines_until(c: &mut std::process::Child, until: &str) -> Vec<String> {
    use std::io::BufRead;
    let out = c.stdout.take().unwrap();
    let mut lines = Vec::new();
    let mut r = std::io::BufReader::new(out);
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 0 {
        let l = line.trim().to_string();
        line.clear();
        let done = l.contains(until);
        lines.push(l);
        if done {
            break;
        }
    }
    c.stdout = Some(r.into_inner());
    lines
}

/// Runs the "torn" child in a new directory and kills it: 500 moves flushed, then 300
/// moves and a screenshot never flushed, 1.5 s before the kill (the writer's bound for
/// records nobody flushed: 0.5 s after the first, plus the frame bound). Returns the
/// vault's directory (inside the returned temporary one).
fn killed_after_unflushed_writes() -> (tempfile::TempDir, PathBuf) {
    killed_once_written("torn")
}

/// Runs child `mode` in a new directory and kills it once it says "written".
fn killed_once_written(mode: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    let mut c = child(&dir, mode, None);
    let lines = lines_until(&mut c, "written");
    assert!(lines.iter().any(|l| l.contains("written")), "{lines:?}");
    c.kill().unwrap();
    c.wait().unwrap();
    (d, dir)
}

/// Attack: after a crash, whoever can edit the database points the index locations of
/// the records written since the last durable flush (all under the second data key) at
/// the first key's epoch, and breaks their bytes so that open trims them as a torn
/// write. The trim takes each record's epoch from its location, so the counters say
/// the first epoch has no records left, while the 500 flushed moves are under it. The
/// vault must not destroy that key: the moves stay readable and `verify` reports the
/// counters. (Before, open retired the key and every flushed move was lost for good,
/// also to a backup of the files.)
#[test]
fn a_trim_misled_by_edited_locations_does_not_destroy_a_key_in_use() {
    let (_d, dir) = killed_once_written("torn-rotated");
    let synced = anchor_seq(&dir, b'y');
    let head = anchor_seq(&dir, b'h');
    assert!(
        head > synced,
        "nothing after the flush reached the index: {synced} {head}"
    );
    {
        let db = capvault::testing::open_raw_db(&dir);
        let log = common::user_tree(&db, USER, "log");
        for seq in synced + 1..=head {
            let mut key = vec![0u8];
            key.extend_from_slice(&seq.to_be_bytes());
            let mut loc = log.get(&key).unwrap().unwrap().to_vec();
            assert_eq!(u32::from_be_bytes(loc[22..26].try_into().unwrap()), 2);
            loc[22..26].copy_from_slice(&1u32.to_be_bytes());
            loc[18] ^= 0xff; // the checksum: the bytes no longer match, a torn write
            log.insert(&key, loc).unwrap();
        }
        db.flush().unwrap();
    }
    let v = Vault::open(&dir, USER, opts()).unwrap();
    assert_eq!(v.status().unwrap().last_record, synced, "trimmed");
    assert_eq!(moves(&v), (1..=500).collect::<Vec<_>>());
    match v.verify() {
        Err(Error::Tampered(m)) => assert!(m.contains("counter"), "{m}"),
        other => panic!("the counters were not reported: {:?}", other.map(|_| ())),
    }
    v.close().unwrap();
    // Opened again (a retirement runs at every open): still there.
    let v = Vault::open(&dir, USER, opts()).unwrap();
    assert_eq!(moves(&v), (1..=500).collect::<Vec<_>>());
    // Nor do the counters keep a dead key: the second epoch, counted with the records
    // the trim took from the first, goes once everything before the third is released.
    assert_eq!(v.rotate_dek().unwrap(), 3);
    let id = Identity::generate(Suite::X25519);
    while let Some(b) = v.seal_next(&id.recipient(), 1 << 20).unwrap() {
        v.ack(b.id(), None).unwrap();
    }
    let epochs: Vec<u32> = v.status().unwrap().epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, vec![3]);
    v.close().unwrap();
    // Its counter went with it: the vault opens (a count left for an epoch whose key is
    // gone is refused as damage), writes, and verifies.
    let v = Vault::open(&dir, USER, opts()).unwrap();
    let _ = v.append_mouse_move(900, 1, 1).unwrap();
    v.flush().unwrap();
    v.verify().unwrap();
    v.close().unwrap();
    Vault::erase(&dir, USER, opts()).unwrap();
}

/// Nothing is promised without `flush`, but the writer does not sit on records: a
/// process killed seconds after appending, never having flushed, keeps them all.
#[test]
fn events_nobody_flushed_are_written_soon_and_survive_a_kill() {
    let (_d, dir) = killed_after_unflushed_writes();
    let v = Vault::open(&dir, USER, opts()).unwrap();
    assert_eq!(moves(&v), (1..=800).collect::<Vec<_>>());
    let shots = v
        .test_read_all()
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, Event::Screenshot { .. }))
        .count();
    assert_eq!(shots, 1);
    v.verify().unwrap();
    v.close().unwrap();
}

#[test]
fn a_torn_write_after_the_last_durable_flush_is_trimmed_before_it_is_refused() {
    let (d, dir) = killed_after_unflushed_writes();
    let synced = anchor_seq(&dir, b'y');
    let head = anchor_seq(&dir, b'h');
    assert!(
        head > synced + 2,
        "the index ran ahead of the flush: {synced} {head}"
    );
    // What a power loss leaves: the index of the last writes on disk, their segment
    // bytes not (they were never synced).
    let (path, offset, _) = common::record_entry(&dir, USER, synced + 1);
    let keep = tempfile::tempdir().unwrap();
    let copy = keep.path().join("v");
    common::copy_dir(&dir, &copy);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(offset + 40)
        .unwrap();
    trimmed_back_to_the_synced_anchor(&dir, synced);

    // The same loss before the synced anchor is damage, not a torn write. (The copy is
    // opened as a moved vault: the original goes from its place first.)
    let moved = d.path().join("moved");
    common::move_vault(&dir, &moved);
    cut_back_is_damage(&copy, synced);
    Vault::erase(&moved, USER, opts()).unwrap();
}

/// A power loss can lose the bytes of an earlier unsynced write and keep a later one's:
/// the kernel writes a large record back at once while the small frames before it wait.
/// The first unsynced record reads back as zeros (a hole) while everything after it is
/// intact: the torn tail starts there, not at the first unreadable record from the
/// head, and the later records go with it (their chain runs through the lost one).
#[test]
fn a_lost_write_before_intact_unsynced_ones_is_trimmed_with_them() {
    let (_d, dir) = killed_after_unflushed_writes();
    let synced = anchor_seq(&dir, b'y');
    let head = anchor_seq(&dir, b'h');
    assert!(
        head > synced + 2,
        "the index ran ahead of the flush: {synced} {head}"
    );
    let zero_entry = |dir: &Path, seq: u64| {
        use std::os::unix::fs::FileExt;
        let (path, offset, bytes) = common::record_entry(dir, USER, seq);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&vec![0u8; 16 + bytes.len()], offset)
            .unwrap();
    };
    zero_entry(&dir, synced + 1);
    // The newest record still reads back: only the walk past it finds the loss.
    let (path, offset, bytes) = common::record_entry(&dir, USER, head);
    assert!(
        bytes.iter().any(|&b| b != 0),
        "{} at {offset}",
        path.display()
    );
    trimmed_back_to_the_synced_anchor(&dir, synced);

    // The same hole in a durable record, with everything after it intact, is damage:
    // refused at open (at the log's front) or by the first read of it, with what to do.
    zero_entry(&dir, synced);
    match Vault::open(&dir, USER, opts()).and_then(|v| v.verify()) {
        Err(Error::Tampered(m)) => assert!(m.contains("restore"), "{m}"),
        other => panic!("{other:?}"),
    }
    Vault::erase(&dir, USER, opts()).unwrap();
}

/// A segment that cannot be read at open (an I/O error, no file handle left) says
/// nothing of its bytes: the open fails with Storage and removes nothing, and the next
/// open, reading again, finds every record. Before, any failed read of a record after
/// the synced anchor was taken for a torn write, and the records were removed for good.
#[test]
fn a_read_error_at_open_fails_the_open_and_removes_nothing() {
    let (_d, dir) = killed_after_unflushed_writes();
    // Two failed reads: one taken for a loss would leave the other to the walk that
    // trims. Each fails an open.
    capvault::testing::arm("segments:read");
    capvault::testing::arm("segments:read");
    for _ in 0..2 {
        match Vault::open(&dir, USER, opts()) {
            Err(Error::Storage(m)) => assert!(m.contains("segments:read"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
    let v = Vault::open(&dir, USER, opts()).unwrap();
    assert_eq!(moves(&v), (1..=800).collect::<Vec<_>>());
    assert!(
        !v.audit_log().unwrap().iter().any(|a| a.action == "recover"),
        "nothing was trimmed"
    );
    v.verify().unwrap();
    v.close().unwrap();
}

/// Opens a vault whose records after the synced anchor (`synced`) were torn: they are
/// removed, the open is audited, and the vault takes and keeps new records.
fn trimmed_back_to_the_synced_anchor(dir: &Path, synced: u64) {
    let v = Vault::open(dir, USER, opts()).unwrap();
    assert_eq!(moves(&v), (1..=500).collect::<Vec<_>>());
    assert_eq!(
        v.status().unwrap().last_record,
        synced,
        "trimmed back to the last durable record"
    );
    assert!(
        v.audit_log().unwrap().iter().any(|a| a.action == "recover"),
        "the trim is audited"
    );
    v.verify().unwrap();
    let _ = v.append_mouse_move(10_000, 1, 1).unwrap();
    v.close().unwrap();
    let v = Vault::open(dir, USER, opts()).unwrap();
    assert_eq!(moves(&v).last(), Some(&10_000));
    v.verify().unwrap();
    v.close().unwrap();
}

/// Cuts the segment back into record `seq` (its header and a little more left) and
/// expects the vault refused as damaged, with what to do.
fn cut_back_is_damage(dir: &Path, seq: u64) {
    let (path, offset, _) = common::record_entry(dir, USER, seq);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(offset + 40)
        .unwrap();
    match Vault::open(dir, USER, opts()) {
        Err(Error::Tampered(m)) => {
            assert!(m.contains("durable flush") && m.contains("restore"), "{m}")
        }
        other => panic!("{}: {:?}", dir.display(), other.map(|_| ())),
    }
}

/// A flush that an agent waits for writes the synced anchor beside the index's flush
/// (docs/FORMAT.md §14), so the anchor may reach sled after the flush took its buffers.
/// The next durable flush makes it durable, and the writer runs one soon when no flush
/// comes: a process killed right after a second flush returned, or idle for a while
/// after one, has every flushed record named, so cutting the last one back is damage,
/// not a torn write. A flush that finds no thread for the segments' sync (a process at
/// its limit) syncs in order on the writer, the anchor before the index: it is durable
/// when that one flush returns.
#[test]
fn the_synced_anchor_of_a_flush_is_made_durable_by_the_next_flush_or_soon() {
    let d = tempfile::tempdir().unwrap();
    for mode in [
        "flushed-twice",
        "flushed-then-idle",
        "flushed-without-a-thread",
    ] {
        let dir = d.path().join(mode);
        let mut c = child(&dir, mode, None);
        let lines = lines_until(&mut c, "flushed");
        assert!(lines.iter().any(|l| l.ends_with("flushed")), "{lines:?}");
        c.kill().unwrap();
        c.wait().unwrap();
        let head = anchor_seq(&dir, b'h');
        assert_eq!(
            anchor_seq(&dir, b'y'),
            head,
            "{mode}: the synced anchor names every flushed record"
        );
        cut_back_is_damage(&dir, head);
    }
}

/// A flush whose segment sync fails still puts into sled the anchor an earlier flush
/// named (its bytes are durable): sled's next flush carries it, so that flush's records
/// are not left unnamed, to be cut as a torn tail, by the failure.
#[test]
fn a_failed_sync_does_not_hold_back_the_anchor_an_earlier_flush_named() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    let mut c = child(&dir, "named-then-sync-failed", None);
    let lines = lines_until(&mut c, "flushed");
    c.kill().unwrap();
    c.wait().unwrap();
    let head: u64 = lines
        .iter()
        .find_map(|l| Some(l.rsplit_once("flushed ")?.1))
        .unwrap_or_else(|| panic!("{lines:?}"))
        .parse()
        .unwrap();
    assert!(
        anchor_seq(&dir, b'y') >= head,
        "the synced anchor on disk ({}) is behind the flushed head {head}",
        anchor_seq(&dir, b'y')
    );
}

/// The flush the writer runs to make a synced anchor durable, when no flush came soon
/// after the one that wrote it, has no caller to tell of a failure: the next `flush`
/// reports it (a retried fdatasync may succeed where the failed one lost the bytes),
/// and the one after goes on.
#[test]
fn a_failure_of_the_writer_s_own_flush_is_reported_by_the_next_flush() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), USER, opts()).unwrap();
    for i in 1..=100 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.flush().unwrap();
    capvault::testing::arm("flush:naming");
    // Three times the writer's bound for that flush.
    std::thread::sleep(Duration::from_millis(1500));
    match v.flush() {
        Err(Error::Storage(m)) => assert!(m.contains("flush:naming"), "{m}"),
        other => panic!("the failure was not reported: {other:?}"),
    }
    let _ = v.append_mouse_move(101, 1, 1).unwrap();
    v.flush().unwrap();
    assert_eq!(moves(&v), (1..=101).collect::<Vec<_>>());
    v.close().unwrap();
}

/// Whether `dir` is on tmpfs (`stat -f`).
fn on_tmpfs(dir: &Path) -> bool {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .expect("stat runs");
    String::from_utf8_lossy(&out.stdout).trim() == "tmpfs"
}

/// Pages of `path` in the page cache (`fincore`, util-linux).
fn cached_pages(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--noheadings", "--output", "PAGES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux) runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// When a sync fails, the kernel may have given up the pages it could not write and
/// marked them clean, so a retried sync succeeds without writing them. After a failed
/// sync of the segments or of the database, every later flush (and close) fails too,
/// saying to open the vault again; the vault opened again holds what was flushed, and
/// flushes again.
#[test]
fn after_a_failed_sync_every_flush_fails_until_the_vault_is_opened_again() {
    // Without retention: the maintenance thread reads the first record once records
    // are written (when it leaves retention), and, delayed on a busy machine, could read
    // it back from the disk into the cache after the drop this test looks for.
    let mut o = opts();
    o.policy.retention_secs = 0;
    for point in ["segments:fdatasync", "store:fsync"] {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), USER, o.clone()).unwrap();
        for i in 1..=100 {
            let _ = v.append_mouse_move(i, 1, 1).unwrap();
        }
        v.flush().unwrap();
        for i in 101..=200 {
            let _ = v.append_mouse_move(i, 1, 1).unwrap();
        }
        capvault::testing::arm(point);
        match v.flush() {
            Err(Error::Storage(m)) => assert!(m.contains(point), "{point}: {m}"),
            other => panic!("{point}: the failed sync was not reported: {other:?}"),
        }
        // The file whose sync failed has no page left in the cache: what is read next
        // comes from the disk (here the pages were written, so nothing is lost).
        let failed = if point == "store:fsync" {
            vec![d.path().join("db")]
        } else {
            segment_files(d.path())
        };
        assert!(!failed.is_empty(), "{point}");
        // (tmpfs keeps its pages whatever it is advised.)
        for f in failed.iter().filter(|_| !on_tmpfs(d.path())) {
            assert_eq!(
                cached_pages(f),
                0,
                "{point}: {} is still cached",
                f.display()
            );
        }
        for attempt in 1..=2 {
            let _ = v.append_mouse_move(200 + attempt, 1, 1).unwrap();
            match v.flush() {
                Err(Error::Storage(m)) => {
                    assert!(
                        m.contains(point) && m.contains("opened again"),
                        "{point}: {m}"
                    )
                }
                other => panic!("{point}: flush {attempt} after the failed sync: {other:?}"),
            }
        }
        match v.close() {
            Err(Error::Storage(m)) => assert!(m.contains("opened again"), "{point}: {m}"),
            other => panic!("{point}: close after the failed sync: {other:?}"),
        }
        let v = Vault::open(d.path(), USER, o.clone()).unwrap();
        let kept = moves(&v);
        assert_eq!(kept[..100], (1..=100).collect::<Vec<_>>(), "{point}");
        let _ = v.append_mouse_move(1000, 1, 1).unwrap();
        v.flush().unwrap();
        assert_eq!(moves(&v).last(), Some(&1000), "{point}");
        v.verify().unwrap();
        v.close().unwrap();
    }
}

/// A process that dies at each step of writing records and of a durable flush (the
/// segment created, its bytes written and not indexed, the segments synced and the
/// index not, the index durable and the space not yet given back, a flush answered and
/// its records not yet named) loses nothing it flushed, and its vault opens and
/// verifies.
#[test]
fn a_death_at_each_step_of_a_write_or_flush_loses_nothing_flushed() {
    let points = [
        "segments:after-create:2",
        "segments:before-write:7",
        "segments:after-write:5",
        "segments:after-write:40",
        "segments:piece-written:2",
        "segments:piece-written:5",
        "flush:after-segments:6",
        "flush:before-release:9",
        "flush:before-naming:4",
        "prune:before-batch:1",
    ];
    let d = tempfile::tempdir().unwrap();
    for (i, point) in points.iter().enumerate() {
        let dir = d.path().join(format!("v{i}"));
        // Two lives: the second starts from what the first one left.
        let (mut flushed, mut released) = (0i64, 0i64);
        for life in 0..2 {
            let mut c = child(&dir, "rounds", Some(point));
            let lines = lines_until(&mut c, "finished");
            let status = c.wait().unwrap();
            assert!(
                !status.success() && !lines.iter().any(|l| l == "finished"),
                "{point} (life {life}): the child was not stopped there: {lines:?}"
            );
            // Acknowledged events leave from the front (through `released`).
            for l in &lines {
                if let Some((_, n)) = l.rsplit_once("flushed ") {
                    flushed = n.parse().unwrap();
                }
                if let Some(n) = l.strip_prefix("releasing ") {
                    released = n.parse().unwrap();
                }
            }
            let v = Vault::open(&dir, USER, child_opts())
                .unwrap_or_else(|e| panic!("{point} (life {life}): does not reopen: {e}"));
            v.verify()
                .unwrap_or_else(|e| panic!("{point} (life {life}): verify: {e}"));
            let got = moves(&v);
            // Released events leave from the front; nothing flushed is missing after it.
            assert!(
                got.windows(2).all(|w| w[1] == w[0] + 1),
                "{point} (life {life}): a gap"
            );
            if flushed > released {
                assert!(
                    got.first().is_some_and(|f| *f <= released + 1)
                        && got.last().is_some_and(|l| *l >= flushed),
                    "{point} (life {life}): flushed {released}+1..={flushed}, have {:?}..{:?}",
                    got.first(),
                    got.last()
                );
            }
            v.close().unwrap();
        }
        Vault::erase(&dir, USER, opts()).unwrap();
    }
}

/// A piece of a large append that fails on the helper thread fails its whole write,
/// which is cut back, reported by `flush` with the file it names, and written again: the
/// screenshot reads back whole, before and after reopening. So does one whose write
/// fails after its last piece. (In a child process: the
/// failure point is the process's, and other tests write large screenshots too.)
#[test]
fn a_failed_piece_of_a_large_write_is_reported_cut_back_and_written_again() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    let mut c = child(&dir, "failed-piece", None);
    let lines = lines_until(&mut c, "checked");
    let status = c.wait().unwrap();
    assert!(
        status.success() && lines.iter().any(|l| l.ends_with("checked")),
        "{lines:?} {status}"
    );
    let v = Vault::open(&dir, USER, child_opts()).unwrap();
    v.verify().unwrap();
    assert_eq!(
        screenshots(&v),
        vec![shot(3_000_000, 5), shot(2_000_000, 6)]
    );
    // Nothing of the failed attempts is left past the records the index names: the
    // segments hold one copy of each screenshot, and status counts what du counts.
    let seg = du(&capvault::testing::segment_dir(&dir, USER));
    assert!(seg < 5_000_000 + (64 << 10), "segments take {seg} bytes");
    let (st, whole) = (v.status().unwrap(), du(&dir));
    assert!(
        st.disk_bytes <= whole && st.disk_bytes + (64 << 10) >= whole,
        "status {} du {whole}",
        st.disk_bytes
    );
    v.close().unwrap();
    Vault::erase(&dir, USER, opts()).unwrap();
}

fn screenshots(v: &Vault) -> Vec<Vec<u8>> {
    v.test_read_all()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::Screenshot { data, .. } => Some(data),
            _ => None,
        })
        .collect()
}

/// The child's side of the test above.
fn fail_a_piece(v: Vault) {
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    v.flush().unwrap();
    let big = shot(3_000_000, 5);
    // Twenty failures: the writer may meet the first before `flush` asks (a write for
    // size) and try again on its own (after 50 ms, then pauses doubling), so on a loaded
    // machine several are spent before the flush's own write, which must still meet one.
    for _ in 0..20 {
        capvault::testing::arm("segments:piece-written");
    }
    let _ = v.append_screenshot(2, 1, 1, "raw", &big).unwrap();
    match v.flush() {
        Err(Error::Storage(m)) => assert!(
            m.contains("cannot write the segment file") && m.contains("injected failure"),
            "{m}"
        ),
        other => panic!("the failed piece was not reported: {:?}", other.map(|_| ())),
    }
    // The writer tries the batch again on its own until it is written.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while v.flush().is_err() {
        assert!(std::time::Instant::now() < deadline, "never written again");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(screenshots(&v), vec![big.clone()]);
    assert_eq!(moves(&v), vec![1]);
    // A write that fails once every piece is in the file (its index not written): cut
    // back too, and its chunks, sealed where they lay, are opened again and sealed
    // afresh when tried again.
    let second = shot(2_000_000, 6);
    for _ in 0..20 {
        capvault::testing::arm("segments:after-write");
    }
    let _ = v.append_screenshot(3, 1, 1, "raw", &second).unwrap();
    match v.flush() {
        Err(Error::Storage(m)) => assert!(m.contains("injected failure"), "{m}"),
        other => panic!("the failed write was not reported: {:?}", other.map(|_| ())),
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while v.flush().is_err() {
        assert!(std::time::Instant::now() < deadline, "never written again");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(screenshots(&v), vec![big, second]);
    v.verify().unwrap();
    v.close().unwrap();
    say("checked");
}

/// Attack: whoever can write the vault directory replaces the user's segment directory
/// (or `segments/` itself) with a link to a directory of their choice, so that record
/// bytes, and the deletions that give space back, land there. Open refuses, and nothing
/// is written through the link.
#[test]
fn a_link_in_place_of_a_segment_directory_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    let v = Vault::open(&dir, USER, opts()).unwrap();
    for i in 0..100 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.close().unwrap();
    let user_dir = capvault::testing::segment_dir(&dir, USER);
    let segments = user_dir.parent().unwrap().to_path_buf();
    for replaced in [&user_dir, &segments] {
        let elsewhere = d.path().join("elsewhere");
        std::fs::rename(replaced, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, replaced).unwrap();
        let listing = |p: &Path| {
            let mut files: Vec<_> = common::files_under(p)
                .into_iter()
                .map(|f| (std::fs::metadata(&f).unwrap().len(), f))
                .collect();
            files.sort();
            files
        };
        let before = listing(&elsewhere);
        match Vault::open(&dir, USER, opts()) {
            Err(Error::Tampered(m)) => assert!(m.contains("is a link"), "{m}"),
            other => panic!("{}: {:?}", replaced.display(), other.map(|_| ())),
        }
        assert_eq!(listing(&elsewhere), before, "written through the link");
        std::fs::remove_file(replaced).unwrap();
        std::fs::rename(&elsewhere, replaced).unwrap();
    }
    let v = Vault::open(&dir, USER, opts()).unwrap();
    v.verify().unwrap();
    v.close().unwrap();
    Vault::erase(&dir, USER, opts()).unwrap();
}
