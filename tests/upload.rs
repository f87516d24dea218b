//! The built-in uploader against a real `capvault-collector serve` on loopback: drain
//! and ack with receipts, offline backoff and recovery, a collector killed and
//! restarted mid-upload, a receipt under the wrong key, `Retry-After`, and the URL rules.
//!
//! The collector binary comes from `CAPVAULT_COLLECTOR_BIN` (scripts/test.sh sets it),
//! else from the target directory of this test, built with cargo when missing.
//! Timing assertions are lower bounds the uploader guarantees (read from its status),
//! never upper bounds on how fast something happens.

mod common;

use common::collector::{free_port, Collector};

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use capvault::{Identity, KeyStoreKind, Suite, UploadOptions, UploadStatus, Vault, VaultOptions};

const CAPVAULT: &str = env!("CARGO_BIN_EXE_capvault");

/// A collector identity (decrypts bundles offline, in `export`) in a file.
struct Keys {
    _dir: tempfile::TempDir,
    identity_file: PathBuf,
    recipient: String,
}

fn identity() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate(Suite::X25519);
    let identity_file = dir.path().join("collector.identity");
    id.write_to_file(&identity_file).unwrap();
    Keys {
        _dir: dir,
        identity_file,
        recipient: id.recipient().to_string(),
    }
}

fn upload_options(c: &Collector, keys: &Keys) -> UploadOptions {
    let mut u = UploadOptions::new(c.url(), keys.recipient.clone());
    u.token = Some(c.token.clone().into());
    u.max_bundle_bytes = 64 * 1024;
    u.interval_secs = 1;
    u
}

fn vault_options(upload: Option<UploadOptions>, receipt_key: &str) -> VaultOptions {
    let mut o = common::options(KeyStoreKind::Keyutils);
    o.collector_receipt_key = Some(receipt_key.to_string());
    o.upload = upload;
    o
}

/// Appends `n` custom events of `size` bytes (about `n * size` bytes to upload).
fn fill(v: &Vault, n: usize, size: usize) {
    for i in 0..n {
        let data = vec![(i % 251) as u8; size];
        let _ = v
            .append_custom(1_764_000_000_000_000 + i as i64, "test", &data)
            .unwrap();
    }
    v.flush().unwrap();
}

fn upload_status(v: &Vault) -> UploadStatus {
    v.status().unwrap().upload.expect("upload is configured")
}

/// Polls the status until `done` holds (or fails after `limit`).
fn wait_for(
    v: &Vault,
    limit: Duration,
    what: &str,
    done: impl Fn(&UploadStatus) -> bool,
) -> UploadStatus {
    let deadline = Instant::now() + limit;
    loop {
        let s = upload_status(v);
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The custom events in an export: sequence numbers, each exactly once.
fn exported_custom_seqs(events: &[serde_json::Value]) -> Vec<u64> {
    let mut seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "custom")
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "an event was exported twice");
    seqs
}

/// A vault for `user` that uploads to `c`, in a new temporary directory.
fn uploading_vault_of(c: &Collector, keys: &Keys, user: &str) -> (tempfile::TempDir, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(
        dir.path(),
        user,
        vault_options(Some(upload_options(c, keys)), &c.receipt_key),
    )
    .unwrap();
    (dir, v)
}

/// A running collector, its identity, and a vault for alice that uploads to it.
fn uploading_vault() -> (Collector, Keys, tempfile::TempDir, Vault) {
    let mut c = Collector::init();
    c.start(&[]);
    let keys = identity();
    let (dir, v) = uploading_vault_of(&c, &keys, "alice");
    (c, keys, dir, v)
}

fn drained(s: &UploadStatus) -> bool {
    s.pending_bytes == 0 && s.last_error.is_none() && s.last_success_us.is_some()
}

#[test]
fn uploads_in_the_background_and_acks_only_with_receipts() {
    let (c, keys, _dir, v) = uploading_vault();
    fill(&v, 40, 10_000);
    v.upload_now();
    let s = wait_for(&v, Duration::from_secs(60), "the upload to drain", drained);
    assert!(s.enrolled, "{s:?}");
    assert!(
        s.uploaded_bundles >= 5,
        "several bundles of at most 64 KiB: {s:?}"
    );
    assert_eq!(s.pending_bundles, 0);
    assert_eq!(
        v.status().unwrap().records,
        0,
        "acknowledged records are pruned"
    );
    // The token is never reported.
    let json = serde_json::to_string(&v.status().unwrap()).unwrap();
    assert!(!json.contains(&c.token), "{json}");
    assert!(json.contains("\"upload\""), "{json}");
    v.close().unwrap();
    let seqs = exported_custom_seqs(&c.export(&keys.identity_file));
    assert_eq!(seqs.len(), 40, "every event arrived exactly once");
}

#[test]
fn an_idle_uploader_sleeps_until_data_is_written_then_uploads_it() {
    let (c, keys, _dir, v) = uploading_vault();
    fill(&v, 5, 1_000);
    v.upload_now();
    let first = wait_for(&v, Duration::from_secs(60), "the upload to drain", |s| {
        drained(s) && s.idle
    });
    assert_eq!(first.next_attempt_us, None, "{first:?}");
    // Nothing pending: no thread of the vault wakes up, the uploader included.
    let quiet = common::threads::settle(Duration::from_secs(20));
    assert!(
        quiet.keys().any(|t| t.contains("capvault-upload")),
        "{quiet:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let later = common::threads::switches();
    assert_eq!(common::threads::woke(&quiet, &later), vec![]);
    // New data ends the sleep: uploaded an interval later, without `upload_now`.
    fill(&v, 5, 1_000);
    let second = wait_for(&v, Duration::from_secs(60), "the new data to upload", |s| {
        drained(s) && s.uploaded_bundles > first.uploaded_bundles
    });
    assert!(second.uploaded_bytes > first.uploaded_bytes, "{second:?}");
    v.close().unwrap();
    let seqs = exported_custom_seqs(&c.export(&keys.identity_file));
    assert_eq!(seqs.len(), 10, "every event arrived exactly once");
}

#[test]
fn a_bandwidth_cap_paces_within_bundles_and_still_drains() {
    let mut c = Collector::init();
    c.start(&[]);
    let keys = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), "hana", vault_options(None, &c.receipt_key)).unwrap();
    fill(&v, 8, 30_000);
    // Bundles of up to 256 KiB at 128 KiB/s: each body goes out in paced pieces.
    let mut up = upload_options(&c, &keys);
    up.max_bundle_bytes = 256 * 1024;
    up.max_bytes_per_sec = 128 * 1024;
    let report = v.upload_pending(&up).unwrap();
    assert!(report.enrolled && report.bundles >= 1, "{report:?}");
    assert_eq!(v.status().unwrap().records, 0);
    v.close().unwrap();
    assert_eq!(
        exported_custom_seqs(&c.export(&keys.identity_file)).len(),
        8
    );
}

/// An erase (here through the hand-off, as `capvault erase` does while an agent holds
/// the vault) while a bundle is being sent stops that send at its next piece and returns
/// only then: the collector never gets the erased user's bundle, not even once the
/// time the rest of its body would have taken has passed.
#[test]
fn an_erase_while_a_bundle_is_being_sent_stops_it() {
    let mut c = Collector::init();
    c.start(&[]);
    let keys = identity();
    let dir = tempfile::tempdir().unwrap();
    // One bundle of about 1.5 MB at 128 KiB/s: about 11 s on the wire, time enough for
    // the erase to get through on a loaded machine.
    let mut up = upload_options(&c, &keys);
    up.max_bundle_bytes = 2 << 20;
    up.max_bytes_per_sec = 128 * 1024;
    let v = Vault::open(dir.path(), "ines", vault_options(None, &c.receipt_key)).unwrap();
    fill(&v, 25, 60_000);
    v.close().unwrap();
    let v = Vault::open(dir.path(), "ines", vault_options(Some(up), &c.receipt_key)).unwrap();
    wait_for(&v, Duration::from_secs(30), "a send under way", |s| {
        s.enrolled && s.last_attempt_us.is_some() && s.next_attempt_us.is_none() && !s.idle
    });
    std::thread::sleep(Duration::from_millis(1500));
    let out = Command::new(CAPVAULT)
        .args([
            "erase",
            "--yes",
            "--wait",
            "20s",
            "--keystore",
            "keyutils",
            "--user",
            "ines",
            "--vault",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let erased = Instant::now();
    assert!(c.stored_bundles().is_empty());
    // Past the time the whole body would have taken.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        c.stored_bundles().is_empty(),
        "the erased user's bundle reached the collector {:?} after the erase",
        erased.elapsed()
    );
    // The handle answers nothing for the erased user any more.
    assert!(matches!(v.status(), Err(capvault::Error::Erased)));
    drop(v);
    assert!(exported_custom_seqs(&c.export(&keys.identity_file)).is_empty());
}

#[test]
fn offline_backs_off_loses_nothing_and_recovers() {
    let mut c = Collector::init();
    let keys = identity();
    let (_dir, v) = uploading_vault_of(&c, &keys, "bob");
    fill(&v, 10, 1000);
    // The collector is not running: failures accumulate with growing waits.
    let s = wait_for(&v, Duration::from_secs(60), "two failed attempts", |s| {
        s.consecutive_failures >= 2 && s.next_attempt_us.is_some()
    });
    assert!(
        s.last_error.as_deref().unwrap().contains("collector"),
        "{s:?}"
    );
    let (last, next) = (s.last_attempt_us.unwrap(), s.next_attempt_us.unwrap());
    assert!(next - last >= 1_000_000, "waits at least 1 s: {s:?}");
    assert!(!s.enrolled);
    let before = v.status().unwrap();
    assert!(
        before.records > 0 && s.pending_bytes > 0,
        "nothing was pruned"
    );
    // Back online: the uploader finds it at its next attempt.
    c.start(&[]);
    let s = wait_for(&v, Duration::from_secs(90), "recovery", drained);
    assert!(s.enrolled && s.uploaded_bundles >= 1, "{s:?}");
    v.close().unwrap();
    assert_eq!(
        exported_custom_seqs(&c.export(&keys.identity_file)).len(),
        10
    );
}

#[test]
fn collector_killed_and_restarted_mid_upload_loses_and_duplicates_nothing() {
    let mut c = Collector::init();
    c.start(&[]);
    let keys = identity();
    let (_dir, v) = uploading_vault_of(&c, &keys, "carol");
    fill(&v, 200, 8_000);
    v.upload_now();
    wait_for(&v, Duration::from_secs(60), "the first bundles", |s| {
        s.uploaded_bundles >= 3
    });
    c.kill();
    let s = upload_status(&v);
    assert!(s.pending_bytes > 0, "killed before the end: {s:?}");
    // While it is down the vault keeps what has no receipt.
    let held = v.status().unwrap().records;
    assert!(held > 0);
    c.start(&[]);
    let s = wait_for(
        &v,
        Duration::from_secs(120),
        "the rest after the restart",
        drained,
    );
    assert_eq!(v.status().unwrap().records, 0, "{s:?}");
    v.close().unwrap();
    let seqs = exported_custom_seqs(&c.export(&keys.identity_file));
    assert_eq!(seqs.len(), 200, "nothing lost, nothing duplicated");
}

/// The collector's state is restored from a backup taken before the device enrolled
/// (docs/COLLECTOR.md, "Backup"): its uploads meet `unknown_device`, and with a token
/// configured the vault enrolls again and goes on, instead of retrying for ever while
/// its records pile up.
#[test]
fn a_collector_restored_from_before_the_enrollment_is_enrolled_with_again() {
    let mut c = Collector::init();
    let backup = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success());
    };
    copy(c.dir.path(), backup.path());
    c.start(&[]);
    let keys = identity();
    let (_dir, v) = uploading_vault_of(&c, &keys, "dave");
    fill(&v, 20, 8_000);
    v.upload_now();
    let s = wait_for(&v, Duration::from_secs(60), "the first upload", drained);
    assert!(s.enrolled);
    // Restored: the device, its token use and its bundles are gone from the collector.
    c.kill();
    std::fs::remove_dir_all(c.dir.path()).unwrap();
    std::fs::create_dir(c.dir.path()).unwrap();
    copy(backup.path(), c.dir.path());
    c.start(&[]);
    let before = s.uploaded_bundles;
    for i in 20..40 {
        let _ = v
            .append_custom(1_764_000_000_000_000 + i, "test", &[7u8; 8_000])
            .unwrap();
    }
    v.flush().unwrap();
    v.upload_now();
    let s = wait_for(
        &v,
        Duration::from_secs(60),
        "the upload after the restore",
        |s| drained(s) && s.uploaded_bundles > before,
    );
    assert_eq!(v.status().unwrap().records, 0, "{s:?}");
    v.close().unwrap();
    // What the restore lost is reported missing from the start of the stream (exit
    // 3); what was sent after it is exported.
    let (code, events, report) = c.export_reporting(&keys.identity_file);
    assert_eq!(code, Some(3), "{report}");
    assert!(
        report.contains(r#"{"kind":"missing_bundles","from":1,"#),
        "{report}"
    );
    let seqs = exported_custom_seqs(&events);
    assert_eq!(
        seqs.len(),
        20,
        "what was sent after the restore arrived: {seqs:?}"
    );
}

#[test]
fn a_receipt_under_another_key_is_refused_and_nothing_is_pruned() {
    let mut c = Collector::init();
    c.start(&[]);
    let keys = identity();
    let other_key = Identity::generate(Suite::X25519).receipt_key().to_string();
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(
        dir.path(),
        "dave",
        vault_options(Some(upload_options(&c, &keys)), &other_key),
    )
    .unwrap();
    fill(&v, 5, 1000);
    v.upload_now();
    let s = wait_for(&v, Duration::from_secs(60), "a refused receipt", |s| {
        s.last_error.is_some() && s.next_attempt_us.is_some()
    });
    assert!(
        s.last_error.as_deref().unwrap().contains("receipt"),
        "{s:?}"
    );
    assert_eq!(s.uploaded_bundles, 0);
    // A refused receipt is not retried soon.
    assert!(
        s.next_attempt_us.unwrap() - s.last_attempt_us.unwrap() >= 60_000_000,
        "{s:?}"
    );
    let st = v.status().unwrap();
    assert!(st.records > 0, "nothing pruned without a valid receipt");
    v.close().unwrap();

    // With the right key, the same outbox bundle goes through (the collector answers the
    // retry idempotently).
    let v = Vault::open(dir.path(), "dave", vault_options(None, &c.receipt_key)).unwrap();
    let report = v.upload_pending(&upload_options(&c, &keys)).unwrap();
    assert!(report.bundles >= 1);
    assert_eq!(v.status().unwrap().records, 0);
    v.close().unwrap();
    assert_eq!(
        exported_custom_seqs(&c.export(&keys.identity_file)).len(),
        5
    );
}

#[test]
fn retry_after_is_honoured() {
    let mut c = Collector::init();
    c.start(&[]);
    // Its blob store turns into a file: every bundle gets 503 with Retry-After.
    let store = c.dir.path().join("bundles");
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::write(&store, b"").unwrap();
    let keys = identity();
    let (_dir, v) = uploading_vault_of(&c, &keys, "erin");
    fill(&v, 3, 100);
    v.upload_now();
    let mut attempts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while attempts.len() < 3 {
        let s = upload_status(&v);
        if let (Some(a), Some(e), Some(next)) =
            (s.last_attempt_us, &s.last_error, s.next_attempt_us)
        {
            assert!(e.contains("busy"), "{s:?}");
            assert!(next - a >= 2_000_000, "waits as Retry-After says: {s:?}");
            if attempts.last() != Some(&a) {
                attempts.push(a);
            }
        }
        assert!(Instant::now() < deadline, "{attempts:?} {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in attempts.windows(2) {
        assert!(w[1] - w[0] >= 2_000_000, "attempts {attempts:?}");
    }
    v.close().unwrap();
}

#[test]
fn bad_upload_options_fail_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let keys = identity();
    let key = Identity::generate(Suite::X25519).receipt_key().to_string();
    let open = |o: VaultOptions| Vault::open(dir.path(), "frank", o).unwrap_err().to_string();
    let e = open(vault_options(
        Some(UploadOptions::new(
            "http://10.1.2.3:8080",
            keys.recipient.clone(),
        )),
        &key,
    ));
    assert!(e.contains("upload.url") && e.contains("loopback"), "{e}");
    let e = open(vault_options(
        Some(UploadOptions::new(
            "http://ingest.example.com",
            keys.recipient.clone(),
        )),
        &key,
    ));
    assert!(e.contains("https"), "{e}");
    let mut o = vault_options(
        Some(UploadOptions::new(
            "https://ingest.example.com",
            keys.recipient.clone(),
        )),
        &key,
    );
    o.collector_receipt_key = None;
    assert!(open(o).contains("collector_receipt_key"));
    let e = open(vault_options(
        Some(UploadOptions::new(
            "https://ingest.example.com",
            "cvrecip-nonsense",
        )),
        &key,
    ));
    assert!(e.contains("upload.recipient"), "{e}");
    let mut up = UploadOptions::new("https://ingest.example.com", keys.recipient.clone());
    up.max_bundle_bytes = 64 * 1024 * 1024 + 1;
    let e = open(vault_options(Some(up), &key));
    assert!(
        e.contains("upload.max_bundle_bytes") && e.contains("64 MiB"),
        "{e}"
    );
    // A frame is sealed whole: one larger than a default collector's bundle is refused.
    let mut o = vault_options(
        Some(UploadOptions::new(
            "https://ingest.example.com",
            keys.recipient.clone(),
        )),
        &key,
    );
    o.frame_max_bytes = 16 << 20;
    let e = open(o);
    assert!(e.contains("frame_max_bytes"), "{e}");
    // A cap below the collector's minimum upload rate would never let a bundle land.
    let mut up = UploadOptions::new("https://ingest.example.com", keys.recipient.clone());
    up.max_bytes_per_sec = 16 * 1024;
    let e = open(vault_options(Some(up), &key));
    assert!(
        e.contains("upload.max_bytes_per_sec") && e.contains("--min-upload-rate"),
        "{e}"
    );
    let e = VaultOptions::from_json(r#"{"upload": {"url": "https://x", "recipent": "r"}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("recipent"), "{e}");
    // Nothing was created.
    assert!(common::files_under(dir.path()).is_empty());
}

/// An erase through a copy of the vault (which shares its keys) while another process
/// holds the original and uploads: before its next bundle leaves, the holder finds the
/// KEK gone from the keychain, carries the erasure out and sends nothing more.
#[test]
fn an_erase_through_a_copy_stops_the_holders_uploads() {
    let (c, _keys, dir, v) = uploading_vault();
    fill(&v, 3, 1_000);
    wait_for(&v, Duration::from_secs(30), "the first upload", drained);
    let stored = c.stored_bundles().len();
    assert!(stored >= 1);
    let copy = dir.path().parent().unwrap().join(format!(
        "copy-of-{}",
        dir.path().file_name().unwrap().to_string_lossy()
    ));
    common::cp_a(dir.path(), &copy);
    Vault::erase(&copy, "alice", vault_options(None, &c.receipt_key)).unwrap();
    let _ = std::fs::remove_dir_all(&copy);
    // Appends still go in until the holder notices; none of them may leave.
    for i in 0..5 {
        let _ = v.append_custom(1_764_000_000_100_000 + i, "after", b"x");
    }
    let _ = v.flush();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(v.status(), Err(capvault::Error::Erased)) {
        assert!(
            Instant::now() < deadline,
            "the holder never noticed the erasure"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.stored_bundles().len(),
        stored,
        "a bundle left after the erasure"
    );
    drop(v);
}

/// With `upload` set, an event too large for any bundle a collector takes by default
/// (16 MiB) is refused when it is appended: sealed alone, it would be refused for good
/// and every later bundle would wait behind it. One larger than `max_bundle_bytes` but
/// within that still goes, alone, and so does everything after the refused one.
#[test]
fn an_event_too_large_for_an_upload_bundle_is_refused_and_the_stream_goes_on() {
    let (c, keys, _dir, v) = uploading_vault();
    let e = v
        .append_custom(1_764_000_000_000_000, "screenshot", &vec![7u8; 17 << 20])
        .unwrap_err();
    assert!(matches!(e, capvault::Error::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("upload.max_bundle_bytes"), "{e}");
    // Strings count as much as payloads: a window title, a screenshot's format.
    let huge = "t".repeat(17 << 20);
    let refused = [
        v.append_window_focus(1_764_000_000_000_000, "app", &huge),
        v.append_screenshot(1_764_000_000_000_000, 1, 1, &huge, b"png"),
        v.append_custom(1_764_000_000_000_000, &huge, b"x"),
    ];
    for r in refused {
        let e = r.unwrap_err();
        assert!(matches!(e, capvault::Error::InvalidArgument(_)), "{e}");
    }
    // Bundles of 64 KiB here: this one goes alone.
    let _ = v
        .append_custom(1_764_000_000_000_001, "screenshot", &vec![8u8; 200_000])
        .unwrap();
    fill(&v, 3, 50_000);
    wait_for(&v, Duration::from_secs(30), "the upload", drained);
    v.close().unwrap();
    assert_eq!(
        exported_custom_seqs(&c.export(&keys.identity_file)).len(),
        4
    );
}

/// A bundle larger than the collector takes is answered 413, or, when the collector
/// closes the connection while the body is still going out, reported as a closed
/// connection that names the collector's limits: never a bare "broken pipe".
#[test]
fn a_bundle_over_the_collectors_limit_is_reported_with_the_limit() {
    let mut c = Collector::init();
    c.start(&["--max-bundle-bytes", "1048576"]);
    let keys = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), "jorge", vault_options(None, &c.receipt_key)).unwrap();
    fill(&v, 4, 2_000_000);
    let records = v.status().unwrap().records;
    let mut up = upload_options(&c, &keys);
    up.max_bundle_bytes = 16 << 20;
    let e = v.upload_pending(&up).unwrap_err().to_string();
    assert!(
        e.contains("413") || e.contains("too large") || e.contains("--max-bundle-bytes"),
        "{e}"
    );
    assert_eq!(v.status().unwrap().records, records, "nothing is pruned");
    v.close().unwrap();
}

#[test]
fn cli_upload_once_drains_and_fails_with_exit_1_when_offline() {
    let mut c = Collector::init();
    c.start(&[]);
    let keys = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = Vault::open(dir.path(), "gina", vault_options(None, &c.receipt_key)).unwrap();
    fill(&v, 12, 20_000);
    v.close().unwrap();
    let run = |url: &str| {
        Command::new(CAPVAULT)
            .args(["upload", "--once", "--json", "--keystore", "keyutils"])
            .args(["--vault", dir.path().to_str().unwrap(), "--user", "gina"])
            .args(["--to", url, "--recipient", &keys.recipient])
            .args(["--receipt-key", &c.receipt_key])
            .args(["--max-bundle-bytes", "65536"])
            .env("CAPVAULT_UPLOAD_TOKEN", &c.token)
            .output()
            .unwrap()
    };
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = run(&dead);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("collector") && !err.contains(&c.token),
        "{err}"
    );
    let out = run(&c.url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["drained"], true);
    assert!(
        report["report"]["bundles"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert_eq!(
        exported_custom_seqs(&c.export(&keys.identity_file)).len(),
        12
    );
}
