//! Byte-flip campaign: one random bit flipped in one file of a closed vault (sled's
//! `conf`, `db`, `blobs/*`, `snap.*`, the record segments `segments/*/*`, the durability
//! mark, the keychain file), then open, verify, read (subject access), the
//! pending bundle, status and the audit ledger, in a child process with a time limit.
//!
//! Every flip must end in one of two ways: an error with a message (detected), or output
//! identical to the unflipped vault's (harmless). A child still running at the time limit
//! (hang), a panic, or different output without an error (an accepted change: an event
//! that differs, a record that appears or vanishes) fails the test.
//!
//! A second campaign does the same over a vault whose audit ledger was pruned (a tail
//! anchor, entries that no longer start at 1), with half the flips.
//!
//! `CAPVAULT_FLIPS` sets the number of flips (default 200), `CAPVAULT_FLIP_SEED` the
//! seed of the flip positions (printed on failure), `CAPVAULT_FLIP_JOBS` the children
//! run at once (default 2), `CAPVAULT_FLIP_TIMEOUT_S` the time limit per child (default
//! 60). The vault itself is new every run (random keys and ids), so a seed reproduces the
//! positions, not the bytes; failing vaults are kept and their paths printed. The long
//! run and its figures are in docs/RELIABILITY.md.
mod common;

use common::Rng;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capvault::{open_bundle, Error, Event, Identity, KeyStoreKind, Recipient, Suite, Vault};
use common::{files_under, options};

const USER: &str = "alice";
const DEFAULT_SEED: u64 = 0xf11b_5eed_0013_0003;
const DEFAULT_FLIPS: u64 = 200;
const DEFAULT_JOBS: usize = 2;
const DEFAULT_TIMEOUT_S: u64 = 60;
const DEFAULT_SCALE: u64 = 3;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{name}: {e}")),
        None => v.parse().unwrap_or_else(|e| panic!("{name}: {e}")),
    })
}

fn vault_options() -> capvault::VaultOptions {
    let mut o = options(KeyStoreKind::Keyutils);
    // The smallest frames: many records, so the log tree has many leaves.
    o.frame_max_bytes = 256;
    // A byte budget well above the data makes segments small (a sixteenth of it), so the
    // records spread over several segment files.
    let k = env_u64("CAPVAULT_FLIP_SCALE")
        .unwrap_or(DEFAULT_SCALE)
        .max(1);
    o.policy.budget_bytes = (1 << 20) * k.div_ceil(DEFAULT_SCALE);
    o
}

/// Incompressible bytes derived from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

// ------------------------------------------------------------------------------------
// The child: everything a caller can read from the vault, as text.

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "INVALID_ARGUMENT",
        Error::Keychain(_) => "KEYCHAIN",
        Error::Storage(_) => "STORAGE",
        Error::StorageFull(_) => "STORAGE_FULL",
        Error::Tampered(_) => "TAMPERED",
        Error::InUse => "IN_USE",
        Error::Erased => "ERASED",
        Error::NotFound(_) => "NOT_FOUND",
        Error::Closed => "CLOSED",
        _ => "OTHER",
    }
}

/// Opens, verifies and reads the vault in `dir`; the text says everything a caller saw,
/// without times that change from run to run.
fn observe(dir: &Path, recipient: &Recipient) -> capvault::Result<String> {
    let mut out = String::new();
    let v = Vault::open(dir, USER, vault_options())?;
    let r = v.verify()?;
    writeln!(
        out,
        "verify records={} events={} first={} last={} bytes={}",
        r.records, r.events, r.first_seq, r.last_seq, r.bytes
    )
    .unwrap();
    for e in v.subject_access()?.iter() {
        writeln!(out, "event {} {:?}", e.seq, e.event).unwrap();
    }
    match v.seal_next(recipient, 1 << 20)? {
        Some(b) => writeln!(out, "pending {}", b.id()).unwrap(),
        None => writeln!(out, "pending none").unwrap(),
    }
    let s = v.status()?;
    writeln!(
        out,
        "status vault={} device={} kek={} epoch={} epochs={:?} records={} stored={} first={} last={} next_event={} policy={} purpose={:?} audit={} pruned={}",
        s.vault_id,
        s.device_id,
        s.kek_version,
        s.current_epoch,
        s.epochs,
        s.records,
        s.stored_bytes,
        s.first_record,
        s.last_record,
        s.next_event_seq,
        s.policy_version,
        s.purpose,
        s.audit_entries,
        s.audit_entries_pruned
    )
    .unwrap();
    for a in v.audit_log()? {
        writeln!(out, "audit {} {} {}", a.seq, a.action, a.detail).unwrap();
    }
    match v.close() {
        // The keychain refuses to move the mark in the children (see `spawn_child`):
        // close says so, after everything else closed.
        Err(Error::Keychain(m)) if m.contains("mark:write") => {}
        other => other?,
    }
    Ok(out)
}

/// Run by the parent in a child process: prints `OUTCOME ok` (and writes what it saw to
/// `CAPVAULT_FLIP_OUT`) or `OUTCOME err <KIND> <message>`.
#[test]
#[ignore = "helper: run by single_bit_flips_are_detected_or_harmless in a child process"]
fn corruption_child() {
    let dir = PathBuf::from(std::env::var("CAPVAULT_FLIP_DIR").expect("set by the parent"));
    let out = PathBuf::from(std::env::var("CAPVAULT_FLIP_OUT").expect("set by the parent"));
    let recipient: Recipient = std::env::var("CAPVAULT_FLIP_RECIPIENT")
        .expect("set by the parent")
        .parse()
        .unwrap();
    match observe(&dir, &recipient) {
        Ok(text) => {
            std::fs::write(&out, text).unwrap();
            println!("OUTCOME ok");
        }
        Err(e) => println!("OUTCOME err {} {}", error_kind(&e), e),
    }
}

// ------------------------------------------------------------------------------------
// The parent.

/// Makes a closed vault with every tree in use: records in two DEK epochs, a KEK
/// rotation, screenshots (chunk records), an acknowledged bundle and a pending one.
/// Returns the identity the bundles are sealed to and every event written.
fn build_vault(dir: &Path) -> (Identity, Vec<Event>) {
    // A larger vault (several sled segments) with CAPVAULT_FLIP_SCALE=<factor>.
    let k = env_u64("CAPVAULT_FLIP_SCALE")
        .unwrap_or(DEFAULT_SCALE)
        .max(1) as i64;
    let identity = Identity::generate(Suite::X25519);
    let recipient = identity.recipient();
    let mut written = Vec::new();
    let v = Vault::open(dir, USER, vault_options()).unwrap();
    let mut put = |v: &Vault, e: Event| {
        assert_eq!(v.append(e.clone()).unwrap(), capvault::Appended::Stored);
        written.push(e);
    };
    for i in 0..600 * k {
        put(
            &v,
            Event::MouseMove {
                ts_us: 1_000_000 + i,
                x: i as i32,
                y: -(i as i32),
            },
        );
    }
    put(
        &v,
        Event::Screenshot {
            ts_us: 5_000_000,
            width: 64,
            height: 64,
            format: "png".into(),
            data: noise(150_000, 1),
        },
    );
    v.flush().unwrap();
    v.rotate_dek().unwrap();
    for i in 0..400 * k {
        put(
            &v,
            Event::Scroll {
                ts_us: 10_000_000 + i,
                dx: i as i32,
                dy: 1,
            },
        );
    }
    v.flush().unwrap();
    // Reopened between steps as an agent would be: each open makes sled write a
    // snapshot (snap.*), after which pages below it are read from the log lazily.
    v.close().unwrap();
    let v = Vault::open(dir, USER, vault_options()).unwrap();
    let first = v
        .seal_next(&recipient, 1 << 20)
        .unwrap()
        .expect("records wait");
    let acked = open_bundle(first.bytes(), &identity).unwrap();
    v.ack(first.id(), None).unwrap();
    v.rotate_kek().unwrap();
    for i in 0..600 * k {
        put(
            &v,
            Event::MouseMove {
                ts_us: 20_000_000 + i,
                x: 7,
                y: i as i32,
            },
        );
    }
    put(
        &v,
        Event::Screenshot {
            ts_us: 30_000_000,
            width: 64,
            height: 64,
            format: "png".into(),
            data: noise(90_000, 2),
        },
    );
    v.flush().unwrap();
    v.close().unwrap();
    let v = Vault::open(dir, USER, vault_options()).unwrap();
    let pending = v
        .seal_next(&recipient, 1 << 14)
        .unwrap()
        .expect("records wait");
    for i in 0..300 * k {
        put(
            &v,
            Event::MouseMove {
                ts_us: 40_000_000 + i,
                x: -7,
                y: i as i32,
            },
        );
    }
    v.flush().unwrap();
    v.close().unwrap();
    Vault::open(dir, USER, vault_options())
        .unwrap()
        .close()
        .unwrap();
    assert!(!acked.events.is_empty());
    assert!(!pending.id().is_empty());
    (identity, written)
}

/// What one flip did.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Detected(String),
    Harmless,
    Hang,
    Panic(String),
    Accepted(String),
}

impl Outcome {
    fn class(&self) -> &'static str {
        match self {
            Outcome::Detected(_) => "detected",
            Outcome::Harmless => "harmless",
            Outcome::Hang => "hang",
            Outcome::Panic(_) => "panic",
            Outcome::Accepted(_) => "accepted change",
        }
    }
    fn passes(&self) -> bool {
        matches!(self, Outcome::Detected(_) | Outcome::Harmless)
    }
}

struct Flip {
    index: u64,
    file: PathBuf,
    bit: u64,
}

struct Running {
    flip: Flip,
    dir: PathBuf,
    out: PathBuf,
    child: Child,
    started: Instant,
}

fn flip_bit(path: &Path, bit: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
    std::fs::write(path, bytes).unwrap();
}

fn spawn_child(dir: &Path, out: &Path, recipient: &Recipient) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "corruption_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CAPVAULT_FLIP_DIR", dir)
        .env("CAPVAULT_FLIP_OUT", out)
        .env("CAPVAULT_FLIP_RECIPIENT", recipient.to_string())
        // Every child opens a copy of one vault (one keychain mark): none may move the
        // mark for the others, so the keychain refuses its writes in the children.
        .env("CAPVAULT_FAIL_ALWAYS", "mark:write")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn read_all(r: Option<impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

/// Threads stuck in a hung child, for the failure report (when gdb is installed).
fn backtrace_of(pid: u32) -> String {
    match Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 25",
        ])
        .output()
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(_) => String::new(),
    }
}

/// Classifies a finished child against the unflipped vault's output.
fn classify(stdout: &str, stderr: &str, out: &Path, baseline: &str) -> Outcome {
    if stderr.contains("panicked") {
        let line = stderr
            .lines()
            .find(|l| l.contains("panicked"))
            .unwrap_or_default();
        return Outcome::Panic(line.to_string());
    }
    // libtest prints the test name on the same line, before the child's output.
    let Some(line) = stdout
        .lines()
        .find_map(|l| l.split_once("OUTCOME ").map(|(_, o)| o))
    else {
        return Outcome::Panic(format!(
            "no outcome; stdout: {}; stderr: {}",
            stdout.trim(),
            stderr.trim()
        ));
    };
    if let Some(err) = line.strip_prefix("err ") {
        let (kind, message) = err.split_once(' ').unwrap_or((err, ""));
        return match kind {
            // A flip must be reported as what it is: damaged storage or tampering,
            // with a message that says what to do.
            "TAMPERED" | "STORAGE" if message.len() > 20 => Outcome::Detected(format!(
                "{kind} {}",
                message.chars().take(90).collect::<String>()
            )),
            _ => Outcome::Accepted(format!("unexpected error {err}")),
        };
    }
    let seen = std::fs::read_to_string(out).unwrap_or_default();
    if seen == baseline {
        return Outcome::Harmless;
    }
    let diff = seen
        .lines()
        .zip(baseline.lines())
        .find(|(a, b)| a != b)
        .map(|(a, b)| format!("saw {a:?}, expected {b:?}"))
        .unwrap_or_else(|| "output has a different length".into());
    Outcome::Accepted(diff)
}

#[test]
fn single_bit_flips_are_detected_or_harmless() {
    let work = tempfile::tempdir().unwrap();
    let made = work.path().join("made");
    let (identity, written) = build_vault(&made);
    let flips = env_u64("CAPVAULT_FLIPS").unwrap_or(DEFAULT_FLIPS);
    campaign(work, &made, &identity.recipient(), flips, |baseline| {
        // It holds what was written: every event after the acknowledged bundle, once.
        let n_events = baseline.lines().filter(|l| l.starts_with("event ")).count();
        assert!(
            n_events > 900 && n_events <= written.len(),
            "{n_events} of {} events",
            written.len()
        );
    });
}

/// The same over a vault whose audit ledger was pruned: a tail anchor, and entries that
/// start past 1. Half the flips by default; most land in the ledger's pages of `db`.
#[test]
fn single_bit_flips_in_a_vault_with_a_pruned_ledger_are_detected_or_harmless() {
    use capvault::test_hooks::{record_audit, LEDGER_KEEP};
    let work = tempfile::tempdir().unwrap();
    let made = work.path().join("made");
    let identity = Identity::generate(Suite::X25519);
    let v = Vault::open(&made, USER, vault_options()).unwrap();
    for i in 0..LEDGER_KEEP + 300 {
        record_audit(&v, "test", &format!("entry {i}")).unwrap();
    }
    for i in 0..500 {
        let _ = v.append_mouse_move(1_000_000 + i, i as i32, 1).unwrap();
    }
    v.flush().unwrap();
    let b = v
        .seal_next(&identity.recipient(), 1 << 20)
        .unwrap()
        .unwrap();
    v.ack(b.id(), None).unwrap();
    for i in 0..300 {
        let _ = v.append_mouse_move(2_000_000 + i, i as i32, 2).unwrap();
    }
    v.flush().unwrap();
    // Pending, so that every observer is offered the same bundle.
    let _ = v
        .seal_next(&identity.recipient(), 1 << 20)
        .unwrap()
        .unwrap();
    assert!(v.status().unwrap().audit_entries_pruned > 300);
    v.close().unwrap();
    Vault::open(&made, USER, vault_options())
        .unwrap()
        .close()
        .unwrap();
    let flips = env_u64("CAPVAULT_FLIPS").unwrap_or(DEFAULT_FLIPS) / 2;
    campaign(
        work,
        &made,
        &identity.recipient(),
        flips.max(1),
        |baseline| {
            let first = baseline
                .lines()
                .find_map(|l| l.strip_prefix("audit "))
                .and_then(|l| l.split(' ').next()?.parse::<u64>().ok());
            assert!(first.is_some_and(|f| f > 300), "{first:?}");
            assert_eq!(
                baseline.lines().filter(|l| l.starts_with("event ")).count(),
                300
            );
        },
    );
}

/// Flips `flips` single bits, one per copy of the closed vault made in `made` (moved
/// into `work` first), each copy observed in a child process; fails on any flip that
/// hangs, panics or changes what is read without an error. `check_baseline` checks what
/// the unflipped vault shows. Erases the vault at the end.
fn campaign(
    work: tempfile::TempDir,
    made: &Path,
    recipient: &Recipient,
    flips: u64,
    check_baseline: impl FnOnce(&str),
) {
    let seed = env_u64("CAPVAULT_FLIP_SEED").unwrap_or(DEFAULT_SEED);
    let jobs = env_u64("CAPVAULT_FLIP_JOBS").map_or(DEFAULT_JOBS, |j| j.max(1) as usize);
    let timeout =
        Duration::from_secs(env_u64("CAPVAULT_FLIP_TIMEOUT_S").unwrap_or(DEFAULT_TIMEOUT_S));
    let pristine = work.path().join("pristine");
    common::move_vault(made, &pristine);

    // The unflipped vault, observed twice the way the children do: the output must be
    // the same every time, or a harmless flip could not be told from a change.
    let mut baseline = None;
    for round in 0..2 {
        let dir = work.path().join(format!("baseline{round}"));
        common::copy_dir(&pristine, &dir);
        let out = work.path().join(format!("baseline{round}.txt"));
        let o = spawn_child(&dir, &out, recipient)
            .wait_with_output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            stdout.contains("OUTCOME ok"),
            "the unflipped vault: {stdout} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = std::fs::read_to_string(&out).unwrap();
        if let Some(b) = &baseline {
            assert_eq!(&text, b, "observing the unflipped vault twice differs");
        }
        baseline = Some(text);
    }
    let baseline = baseline.unwrap();
    check_baseline(&baseline);

    let files: Vec<(PathBuf, u64)> = files_under(&pristine)
        .into_iter()
        .map(|p| {
            // Up to the last non-zero byte: sled's files end in preallocated zeros, where
            // a flip only shows that unused space is unused.
            let bytes = std::fs::read(&p).unwrap();
            let len = bytes
                .iter()
                .rposition(|b| *b != 0)
                .map_or(0, |i| i as u64 + 1);
            (p.strip_prefix(&pristine).unwrap().to_path_buf(), len)
        })
        .filter(|(_, len)| *len > 0)
        .collect();
    assert!(files.iter().any(|(p, _)| p == Path::new("db")), "{files:?}");
    assert!(
        files.iter().any(|(p, _)| p == Path::new("conf")),
        "{files:?}"
    );
    // The record bytes are in segment files; several of them, so flips land in old,
    // middle and active segments alike.
    let segment_files = files
        .iter()
        .filter(|(p, _)| p.starts_with("segments"))
        .count();
    assert!(segment_files >= 2, "{files:?}");

    // Every other flip takes the files in turn (every file is hit); the rest pick a file
    // by size (mostly sled's log, where the data is). A uniform bit within the file.
    let mut rng = Rng(seed);
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    let mut plan: Vec<Flip> = (0..flips)
        .map(|index| {
            let (file, len) = if index % 2 == 0 {
                &files[(index / 2 % files.len() as u64) as usize]
            } else {
                let mut at = rng.below(total);
                files
                    .iter()
                    .find(|(_, len)| {
                        let here = at < *len;
                        at = at.saturating_sub(*len);
                        here
                    })
                    .expect("a file holds every position")
            };
            Flip {
                index,
                file: file.clone(),
                bit: rng.below(len * 8),
            }
        })
        .collect();
    plan.reverse();

    let started = Instant::now();
    let mut running: Vec<Running> = Vec::new();
    let mut results: Vec<(Flip, Outcome)> = Vec::new();
    let mut kept = Vec::new();
    while !plan.is_empty() || !running.is_empty() {
        while running.len() < jobs {
            let Some(flip) = plan.pop() else { break };
            let dir = work.path().join(format!("flip{}", flip.index));
            common::copy_dir(&pristine, &dir);
            flip_bit(&dir.join(&flip.file), flip.bit);
            let out = work.path().join(format!("flip{}.txt", flip.index));
            let child = spawn_child(&dir, &out, recipient);
            running.push(Running {
                flip,
                dir,
                out,
                child,
                started: Instant::now(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            let done = r.child.try_wait().unwrap().is_some();
            let hung = !done && r.started.elapsed() > timeout;
            if !done && !hung {
                i += 1;
                continue;
            }
            let mut r = running.swap_remove(i);
            let outcome = if hung {
                let bt = backtrace_of(r.child.id());
                let _ = r.child.kill();
                let _ = r.child.wait();
                if !bt.is_empty() {
                    eprintln!("flip {} hung; threads:\n{bt}", r.flip.index);
                }
                Outcome::Hang
            } else {
                let stdout = read_all(r.child.stdout.take());
                let stderr = read_all(r.child.stderr.take());
                classify(&stdout, &stderr, &r.out, &baseline)
            };
            if outcome.passes() {
                let _ = std::fs::remove_dir_all(&r.dir);
            } else {
                kept.push(r.dir.clone());
            }
            results.push((r.flip, outcome));
        }
    }
    let elapsed = started.elapsed();

    let mut by_class: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_file: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let mut detected_kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut messages: BTreeMap<String, u64> = BTreeMap::new();
    for (flip, outcome) in &results {
        *by_class.entry(outcome.class()).or_default() += 1;
        let file = flip.file.display().to_string();
        let file = if file.starts_with("snap.") {
            "snap.*".into()
        } else if file.starts_with("blobs") {
            "blobs/*".into()
        } else if file.starts_with("segments") {
            "segments/*".into()
        } else {
            file
        };
        *by_file.entry((file, outcome.class())).or_default() += 1;
        if let Outcome::Detected(what) = outcome {
            *detected_kinds
                .entry(what.split(' ').next().unwrap_or_default().to_string())
                .or_default() += 1;
            *messages.entry(what.clone()).or_default() += 1;
        }
    }
    println!(
        "{} flips (seed {seed:#x}) in {:.1} s over {:?}: {by_class:?}; detected as {detected_kinds:?}; by file {by_file:?}",
        results.len(),
        elapsed.as_secs_f64(),
        files
    );
    for (m, n) in &messages {
        println!("  {n:4} x {m}");
    }
    let failures: Vec<String> = results
        .iter()
        .filter(|(_, o)| !o.passes())
        .map(|(f, o)| {
            format!(
                "flip {}: {} bit {} (byte {}): {o:?}",
                f.index,
                f.file.display(),
                f.bit,
                f.bit / 8
            )
        })
        .collect();
    if !failures.is_empty() {
        // Keep the failing vaults (their KEKs stay in the keychain) for inspection.
        let keep = work.keep();
        panic!(
            "{} of {} flips failed (seed {seed:#x}; reproduce the positions with CAPVAULT_FLIP_SEED={seed:#x} CAPVAULT_FLIPS={flips}); vaults kept under {}:\n{}",
            failures.len(),
            results.len(),
            keep.display(),
            failures.join("\n")
        );
    }
    let _ = kept;
    Vault::erase(&pristine, USER, vault_options()).unwrap();
}

/// sled recovers its log up to the first message that fails its checksum and, in a vault
/// that was never reopened (no snapshot yet), silently drops everything after it. Damage
/// anywhere in such a log must be refused, not opened as an older vault.
#[test]
fn damage_in_a_vault_never_reopened_is_refused_not_rolled_back() {
    let work = tempfile::tempdir().unwrap();
    let pristine = work.path().join("pristine");
    let made = work.path().join("made");
    let v = Vault::open(&made, USER, vault_options()).unwrap();
    for i in 0..2000 {
        let _ = v.append_mouse_move(i, i as i32, 0).unwrap();
        if i % 500 == 499 {
            v.flush().unwrap();
        }
    }
    v.close().unwrap();
    common::move_vault(&made, &pristine);
    let db = std::fs::read(pristine.join("db")).unwrap();
    let used = db.iter().rposition(|b| *b != 0).unwrap() as u64 + 1;
    for percent in [10, 30, 50, 70, 90] {
        let dir = work.path().join(format!("flip{percent}"));
        common::copy_dir(&pristine, &dir);
        flip_bit(&dir.join("db"), used * 8 * percent / 100);
        match Vault::open(&dir, USER, vault_options()) {
            Err(Error::Tampered(m)) => assert!(m.contains("restore"), "{percent}%: {m}"),
            Err(e) => panic!("{percent}%: {e}"),
            Ok(v) => {
                let r = v.verify();
                panic!("{percent}% into the log: opened, verify says {r:?}");
            }
        }
    }
    Vault::erase(&pristine, USER, vault_options()).unwrap();
}
