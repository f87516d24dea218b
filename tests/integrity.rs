//! R9: every edit of stored state is detected. Each test edits the raw sled state of a
//! real vault (closed, through the test hook) the way an attacker with write access to
//! the vault directory but not to the keychain would, and checks that open (and verify)
//! refuse it with Tampered and that nothing was removed on the forged word.
mod common;

use std::path::Path;
use std::time::Duration;

use capvault::{Error, Identity, KeyStoreKind, Policy, Suite, Vault, VaultOptions};
use common::{alice_entries as snapshot, alice_value as get};
use serde_json::Value;

fn o() -> VaultOptions {
    let mut o = common::options(KeyStoreKind::Keyutils);
    o.frame_max_bytes = 256;
    o
}

fn raw(dir: &Path) -> sled::Db {
    capvault::testing::open_raw_db(dir)
}

/// Keys of the records in the user's log.
fn record_keys(dir: &Path) -> Vec<Vec<u8>> {
    let db = raw(dir);
    let log = common::user_tree(&db, "alice", "log");
    log.scan_prefix([0u8])
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect()
}

/// A sealed state value: `gen || body || mac`.
fn body(stored: &[u8]) -> &[u8] {
    &stored[8..stored.len() - 32]
}

fn with_body(stored: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = stored[..8].to_vec();
    v.extend_from_slice(body);
    v.extend_from_slice(&stored[stored.len() - 32..]);
    v
}

fn put(dir: &Path, tree: &str, key: &[u8], value: Option<Vec<u8>>) {
    let db = raw(dir);
    let t = common::user_tree(&db, "alice", tree);
    match value {
        Some(v) => t.insert(key, v).unwrap(),
        None => t.remove(key).unwrap(),
    };
    db.flush().unwrap();
}

#[track_caller]
fn assert_tampered(dir: &Path, opts: VaultOptions, what: &str) -> String {
    match Vault::open(dir, "alice", opts) {
        Err(Error::Tampered(m)) => m,
        Ok(v) => {
            let verified = v.verify();
            panic!("{what}: accepted (verify: {verified:?})")
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

fn vault_with_records(dir: &Path, n: i64) -> Vault {
    let v = Vault::open(dir, "alice", o()).unwrap();
    for i in 0..n {
        let _ = v
            .append_mouse_move(1_764_000_000_000_000 + i, 1, 1)
            .unwrap();
    }
    v.flush().unwrap();
    v
}

/// "Why" 1: a forged pending range with `acking` set would make the next open complete
/// an acknowledgement that never happened. Refused, and not one record is pruned.
#[test]
fn a_forged_pending_range_prunes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let v = vault_with_records(d.path(), 300);
    let id = Identity::generate(Suite::X25519);
    let b = v.seal_next(&id.recipient(), 2000).unwrap().unwrap();
    let head = v.status().unwrap().last_record;
    v.close().unwrap();
    let before = record_keys(d.path());
    let stored = get(d.path(), "state", b"release").unwrap();
    let mut json: Value = serde_json::from_slice(body(&stored)).unwrap();
    json["pending"]["last_record"] = head.into();
    json["acking"] = serde_json::to_value(b.digest()).unwrap();
    let forged = serde_json::to_vec(&json).unwrap();
    // The edit with the old generation and MAC, and the JSON on its own (as before
    // stored state was authenticated): both refused.
    for value in [with_body(&stored, &forged), forged.clone()] {
        put(d.path(), "state", b"release", Some(value));
        let m = assert_tampered(d.path(), o(), "forged pending range");
        assert!(m.contains("release"), "{m}");
        assert_eq!(record_keys(d.path()), before, "nothing was pruned");
    }
    put(d.path(), "state", b"release", Some(stored));
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    v.verify().unwrap();
    assert_eq!(
        v.seal_next(&id.recipient(), 2000).unwrap().unwrap().id(),
        b.id()
    );
    v.close().unwrap();
}

/// "Why" 1: wiping the whole audit ledger (entries and head) is detected.
#[test]
fn a_wiped_ledger_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let v = vault_with_records(d.path(), 10);
    v.pause(Duration::from_secs(5)).unwrap();
    v.resume().unwrap();
    v.close().unwrap();
    {
        let db = raw(d.path());
        common::user_tree(&db, "alice", "ledger").clear().unwrap();
        db.flush().unwrap();
    }
    let m = assert_tampered(d.path(), o(), "ledger wiped");
    assert!(m.contains("ledger"), "{m}");
    // Wiping the ledger and the stored state together is detected too.
    {
        let db = raw(d.path());
        common::user_tree(&db, "alice", "state").clear().unwrap();
        db.flush().unwrap();
    }
    assert_tampered(d.path(), o(), "ledger and state wiped");
}

/// "Why" 1: the log wiped to nothing (records, anchors, counters) is detected.
#[test]
fn a_wiped_log_is_detected() {
    let d = tempfile::tempdir().unwrap();
    vault_with_records(d.path(), 10).close().unwrap();
    {
        let db = raw(d.path());
        common::user_tree(&db, "alice", "log").clear().unwrap();
        db.flush().unwrap();
    }
    let m = assert_tampered(d.path(), o(), "log wiped");
    assert!(m.contains("log"), "{m}");
}

/// "Why" 1: every field of a stored policy record is authenticated.
#[test]
fn an_edit_of_any_policy_field_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let mut opts = o();
    opts.policy.deny_apps = vec!["Signal".into()];
    opts.policy.deny_titles = vec!["*salary*".into()];
    opts.policy.budget_bytes = 1 << 30;
    Vault::open(d.path(), "alice", opts)
        .unwrap()
        .close()
        .unwrap();
    let name = [&b"policy/"[..], &1u32.to_be_bytes()].concat();
    let stored = get(d.path(), "state", &name).unwrap();
    let json: Value = serde_json::from_slice(body(&stored)).unwrap();
    let fields: Vec<String> = json.as_object().unwrap().keys().cloned().collect();
    assert_eq!(fields.len(), 10, "{fields:?}");
    for field in &fields {
        let mut edited = json.clone();
        edited[field] = match (field.as_str(), &json[field]) {
            ("keystrokes", _) => "text".into(),
            ("on_budget", _) => "refuse".into(),
            (_, Value::Number(n)) => (n.as_u64().unwrap() + 1).into(),
            (_, Value::Bool(b)) => (!b).into(),
            (_, Value::String(s)) => format!("{s}x").into(),
            (_, Value::Array(_)) => Value::Array(Vec::new()),
            (_, other) => panic!("{field}: {other}"),
        };
        assert_ne!(edited, json);
        // Parses as a policy: only the authentication can refuse it.
        let _: Policy = serde_json::from_value(edited.clone()).unwrap();
        let forged = with_body(&stored, &serde_json::to_vec(&edited).unwrap());
        put(d.path(), "state", &name, Some(forged));
        let m = assert_tampered(d.path(), common::options(KeyStoreKind::Keyutils), field);
        assert!(m.contains("policy"), "{field}: {m}");
    }
    put(d.path(), "state", &name, Some(stored));
    let v = Vault::open(d.path(), "alice", common::options(KeyStoreKind::Keyutils)).unwrap();
    assert_eq!(v.status().unwrap().policy_version, 1);
    v.close().unwrap();
}

/// "Why" 1: a pause deadline beyond the cap. An edited one is refused; one set under a
/// policy with a longer cap is cut to the cap of the policy in force when loaded.
#[test]
fn a_pause_never_outlasts_the_cap() {
    let d = tempfile::tempdir().unwrap();
    let mut long = o();
    long.policy.max_pause_secs = 3600;
    let v = Vault::open(d.path(), "alice", long).unwrap();
    v.pause(Duration::from_secs(3600)).unwrap();
    v.close().unwrap();
    let stored = get(d.path(), "state", b"pause_until").unwrap();
    let far =
        (i64::from_be_bytes(body(&stored).try_into().unwrap()) + 864_000_000_000).to_be_bytes();
    put(
        d.path(),
        "state",
        b"pause_until",
        Some(with_body(&stored, &far)),
    );
    let m = assert_tampered(d.path(), o(), "pause_until edited");
    assert!(m.contains("pause_until"), "{m}");
    put(d.path(), "state", b"pause_until", Some(stored));
    // A new policy version with a cap of one minute.
    let mut short = o();
    short.policy.version = 2;
    short.policy.max_pause_secs = 60;
    let v = Vault::open(d.path(), "alice", short).unwrap();
    let until = v
        .pause_state()
        .unwrap()
        .paused_until_us
        .expect("still paused");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    assert!(
        until <= now + 60_000_000,
        "capped: {} s left",
        (until - now) / 1_000_000
    );
    v.close().unwrap();
}

/// Every state record, put back as an older copy (with its own valid MAC), is refused;
/// so are an older anchor, an older ledger head and older log counters.
#[test]
fn an_older_copy_of_any_state_record_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let id = Identity::generate(Suite::X25519);
    let collector = Identity::generate(Suite::X25519);
    let mut opts = o();
    opts.collector_receipt_key = Some(collector.receipt_key().to_string());
    let v = Vault::open(d.path(), "alice", opts).unwrap();
    for i in 0..100 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    let b1 = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    v.pause(Duration::from_secs(60)).unwrap();
    v.close().unwrap();
    let names: [&[u8]; 5] = [
        b"release",
        b"pause_until",
        b"pause_dropped",
        b"receipt_key",
        b"anchor",
    ];
    let old_state: Vec<_> = names
        .iter()
        .map(|n| get(d.path(), "state", n).expect("present"))
        .collect();
    let old_ledger_head = get(d.path(), "ledger", &[1, b'h']).unwrap();
    let old_counts = get(d.path(), "log", &[1, b'c']).unwrap();
    // Move everything on: ack (state, counters), resume (pause), receipt key removed.
    let mut opts = o();
    opts.collector_receipt_key = Some("none".into());
    let v = Vault::open(d.path(), "alice", opts).unwrap();
    let receipt = collector.receipt_for(b1.digest());
    v.ack(b1.id(), Some(&receipt)).unwrap();
    v.resume().unwrap();
    for i in 0..10 {
        let _ = v.append_mouse_move(200 + i, 1, 1).unwrap();
    }
    v.close().unwrap();
    for (name, old) in names.iter().zip(&old_state) {
        let now = get(d.path(), "state", name).unwrap();
        assert_ne!(&now, old, "{} changed", String::from_utf8_lossy(name));
        put(d.path(), "state", name, Some(old.clone()));
        assert_tampered(
            d.path(),
            o(),
            &format!("old {}", String::from_utf8_lossy(name)),
        );
        put(d.path(), "state", name, Some(now));
    }
    // The whole state tree put back as it was (records and anchor together): the ledger
    // head names a later generation.
    let now_state: Vec<_> = names.iter().map(|n| get(d.path(), "state", n)).collect();
    for (name, old) in names.iter().zip(&old_state) {
        put(d.path(), "state", name, Some(old.clone()));
    }
    let m = assert_tampered(d.path(), o(), "state tree rolled back");
    assert!(m.contains("ledger"), "{m}");
    for (name, now) in names.iter().zip(now_state) {
        put(d.path(), "state", name, now);
    }
    let now = get(d.path(), "ledger", &[1, b'h']).unwrap();
    put(d.path(), "ledger", &[1, b'h'], Some(old_ledger_head));
    assert_tampered(d.path(), o(), "old ledger head");
    put(d.path(), "ledger", &[1, b'h'], Some(now));
    let now = get(d.path(), "log", &[1, b'c']).unwrap();
    put(d.path(), "log", &[1, b'c'], Some(old_counts));
    let m = assert_tampered(d.path(), o(), "old counters");
    assert!(m.contains("counters"), "{m}");
    put(d.path(), "log", &[1, b'c'], Some(now));
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    v.verify().unwrap();
    assert_eq!(v.collector_receipt_key(), None);
    v.close().unwrap();
}

/// Counters decide budget eviction and key retirement: an edit or removal is refused.
#[test]
fn edited_or_removed_counters_are_refused() {
    let d = tempfile::tempdir().unwrap();
    vault_with_records(d.path(), 50).close().unwrap();
    let stored = get(d.path(), "log", &[1, b'c']).unwrap();
    let mut edited = stored.clone();
    let at = edited.len() - 33; // last byte of the byte count
    edited[at] ^= 0x40;
    put(d.path(), "log", &[1, b'c'], Some(edited));
    assert_tampered(d.path(), o(), "counters edited");
    put(d.path(), "log", &[1, b'c'], None);
    assert_tampered(d.path(), o(), "counters removed");
    put(d.path(), "log", &[1, b'c'], Some(stored));
    Vault::open(d.path(), "alice", o())
        .unwrap()
        .close()
        .unwrap();
}

/// A record added to the state tree behind the anchor's back, and one removed.
#[test]
fn added_or_removed_state_records_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let v = vault_with_records(d.path(), 5);
    v.pause(Duration::from_secs(5)).unwrap();
    v.close().unwrap();
    let until = get(d.path(), "state", b"pause_until").unwrap();
    put(d.path(), "state", b"pause_until", None);
    assert_tampered(d.path(), o(), "pause record removed");
    put(d.path(), "state", b"pause_until", Some(until.clone()));
    // A copy under another name (its MAC binds the name).
    put(d.path(), "state", b"pause_dropped", Some(until));
    assert_tampered(d.path(), o(), "record moved to another name");
}

/// "Why" 1: eviction trusted the clear `created_us` of record headers. An edited header
/// no longer authenticates, so retention removes nothing on its word.
#[test]
fn an_edited_record_time_does_not_trigger_retention() {
    let d = tempfile::tempdir().unwrap();
    let mut opts = o();
    opts.policy.retention_secs = 3600;
    let v = Vault::open(d.path(), "alice", opts.clone()).unwrap();
    for i in 0..100 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.close().unwrap();
    let before = record_keys(d.path());
    // The first record's header says it is from 1970.
    common::forge_record(d.path(), "alice", 1, |rec| {
        rec[11..19].copy_from_slice(&0i64.to_be_bytes())
    });
    let m = assert_tampered(d.path(), opts, "created_us edited");
    assert!(m.contains("record 1"), "{m}");
    assert_eq!(record_keys(d.path()), before, "nothing was evicted");
}

/// The same for budget eviction, which walks record headers from the tail.
#[test]
fn an_edited_record_header_does_not_drive_budget_eviction() {
    let d = tempfile::tempdir().unwrap();
    let v = vault_with_records(d.path(), 10);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let shot: Vec<u8> = (0..100_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for i in 0..24 {
        let _ = v.append_screenshot(100 + i, 1, 1, "raw", &shot).unwrap();
    }
    v.close().unwrap();
    let before = record_keys(d.path());
    common::forge_record(d.path(), "alice", 2, |rec| rec[11] ^= 1);
    let mut opts = o();
    opts.policy.version = 2;
    opts.policy.budget_bytes = 1 << 20;
    // Open walks to the budget; the edited record stops it before anything is removed.
    match Vault::open(d.path(), "alice", opts) {
        Err(Error::Tampered(m)) => assert!(m.contains("record 2"), "{m}"),
        other => panic!("{other:?}"),
    }
    // (The open got as far as recording the new policy and its marker record.)
    let after = record_keys(d.path());
    assert!(
        before.iter().all(|k| after.contains(k)),
        "nothing was evicted"
    );
}

/// A vault written before stored state was authenticated is carried over at its user's
/// first open (everything kept: pending bundle, pause, receipt key), after which its state
/// is authenticated; putting back the old keys to make it look unconverted fails.
#[test]
fn an_older_vault_is_carried_over_and_cannot_be_downgraded() {
    let d = tempfile::tempdir().unwrap();
    let collector = Identity::generate(Suite::X25519);
    let id = Identity::generate(Suite::X25519);
    let mut opts = o();
    opts.collector_receipt_key = Some(collector.receipt_key().to_string());
    let v = Vault::open(d.path(), "alice", opts).unwrap();
    for i in 0..100 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    let pending = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    v.pause(Duration::from_secs(600)).unwrap();
    let kek = v.status().unwrap().kek_version;
    v.close().unwrap();
    capvault::testing::write_format1(d.path(), "alice").unwrap();
    let old_mac = get(d.path(), "keys", b"mac").expect("a format-1 MAC entry");
    assert!(get(d.path(), "state", b"anchor").is_none());
    assert!(
        get(d.path(), "state", b"release")
            .unwrap()
            .starts_with(b"{"),
        "plain JSON"
    );

    let v = Vault::open(d.path(), "alice", o()).unwrap();
    assert_eq!(
        v.status().unwrap().kek_version,
        kek + 1,
        "the carry-over rotates the KEK"
    );
    assert!(
        v.pause_state().unwrap().paused_until_us.is_some(),
        "the pause is kept"
    );
    assert_eq!(
        v.collector_receipt_key(),
        Some(collector.receipt_key().to_string().as_str())
    );
    assert_eq!(
        v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap().id(),
        pending.id()
    );
    assert!(v
        .audit_log()
        .unwrap()
        .iter()
        .any(|e| e.action == "state-format"));
    v.verify().unwrap();
    v.close().unwrap();
    assert!(get(d.path(), "keys", b"mac").is_none());
    assert!(get(d.path(), "keys", b"mac2").is_some());
    // Now authenticated: an edit is refused.
    let stored = get(d.path(), "state", b"release").unwrap();
    let mut edited = stored.clone();
    edited[12] ^= 1;
    put(d.path(), "state", b"release", Some(edited));
    assert_tampered(d.path(), o(), "release edited after the carry-over");
    put(d.path(), "state", b"release", Some(stored));
    // Downgrade: the old format-1 key entry put back in place of the new one, with the
    // state as plain JSON again. The old KEK is gone, so nothing unwraps.
    let new_mac = get(d.path(), "keys", b"mac2").unwrap();
    put(d.path(), "keys", b"mac", Some(old_mac));
    put(d.path(), "keys", b"mac2", None);
    match Vault::open(d.path(), "alice", o()) {
        Err(Error::Keychain(_)) | Err(Error::Tampered(_)) => {}
        other => panic!("a downgraded vault opened: {other:?}"),
    }
    put(d.path(), "keys", b"mac", None);
    put(d.path(), "keys", b"mac2", Some(new_mac));
    Vault::open(d.path(), "alice", o())
        .unwrap()
        .close()
        .unwrap();
}

/// sled cuts a damaged log at its first bad message, which can leave an empty database.
/// Opening must not make a new vault over the old one (its keys would be orphaned).
#[test]
fn a_database_that_lost_its_contents_is_not_replaced_by_a_new_vault() {
    let d = tempfile::tempdir().unwrap();
    vault_with_records(d.path(), 10).close().unwrap();
    // The durability mark would refuse this first (tests/corruption.rs); without it,
    // the keychain file still does.
    for f in ["db", "conf", "durable"] {
        std::fs::remove_file(d.path().join(f)).unwrap();
    }
    for entry in std::fs::read_dir(d.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("snap.")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let m = assert_tampered(d.path(), o(), "empty database");
    assert!(m.contains("keychain file"), "{m}");
}

/// Replaces a user's tree by `entries` (the whole tree put back from a copy).
fn restore(dir: &Path, tree: &str, entries: &[(Vec<u8>, Vec<u8>)]) {
    let db = raw(dir);
    let t = common::user_tree(&db, "alice", tree);
    t.clear().unwrap();
    for (k, v) in entries {
        t.insert(k, v.as_slice()).unwrap();
    }
    db.flush().unwrap();
}

/// The state tree and the audit ledger put back together from one earlier moment vouch
/// for each other, but not for the log that moved on since (seal, ack, pause, appends):
/// the log's head names the state generation. Refused, and the reverse too (an older
/// log under the current state and ledger), on open and by `capvault verify`.
#[test]
fn state_and_ledger_from_another_moment_than_the_log_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let id = Identity::generate(Suite::X25519);
    let collector = Identity::generate(Suite::X25519);
    let mut opts = o();
    opts.collector_receipt_key = Some(collector.receipt_key().to_string());
    let v = vault_with_records(d.path(), 100);
    v.close().unwrap();
    let v = Vault::open(d.path(), "alice", opts).unwrap();
    let b1 = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    v.close().unwrap();
    let then: Vec<_> = ["state", "ledger", "log"]
        .iter()
        .map(|t| snapshot(d.path(), t))
        .collect();
    let then_segments = common::segments_snapshot(d.path(), "alice");
    // Progress: an ack (prunes the log), a pause and its end, more records.
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    v.ack(b1.id(), Some(&collector.receipt_for(b1.digest())))
        .unwrap();
    v.pause(Duration::from_secs(60)).unwrap();
    v.resume().unwrap();
    for i in 0..50 {
        let _ = v.append_mouse_move(500 + i, 1, 1).unwrap();
    }
    v.close().unwrap();
    let now: Vec<_> = ["state", "ledger", "log"]
        .iter()
        .map(|t| snapshot(d.path(), t))
        .collect();
    let now_segments = common::segments_snapshot(d.path(), "alice");

    // The older state and ledger over the current log.
    restore(d.path(), "state", &then[0]);
    restore(d.path(), "ledger", &then[1]);
    let m = assert_tampered(d.path(), o(), "older state and ledger");
    assert!(m.contains("generation") && m.contains("log"), "{m}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_capvault"))
        .args([
            "verify",
            "--keystore",
            "keyutils",
            "--user",
            "alice",
            "--vault",
        ])
        .arg(d.path())
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("generation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The reverse: the current state and ledger over the older log.
    restore(d.path(), "state", &now[0]);
    restore(d.path(), "ledger", &now[1]);
    restore(d.path(), "log", &then[2]);
    common::segments_restore(d.path(), "alice", &then_segments);
    let m = assert_tampered(d.path(), o(), "older log");
    assert!(m.contains("generation") && m.contains("log"), "{m}");
    // Without its segments the older log is refused too (its first records' bytes
    // were given back after the acknowledgement), and the refusals cut nothing.
    common::segments_restore(d.path(), "alice", &now_segments);
    assert_tampered(d.path(), o(), "older log without its segments");
    assert_eq!(common::segments_snapshot(d.path(), "alice"), now_segments);
    // All three of the same moment open (a rollback of the whole vault is not visible
    // to the device alone: docs/SECURITY.md), and so does the present.
    restore(d.path(), "log", &now[2]);
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    v.verify().unwrap();
    v.close().unwrap();
}

/// A vault whose log head does not name the state generation yet (format 2) is bound at
/// its first open and recorded in the keychain; the unbound head put back afterwards is
/// refused.
#[test]
fn a_format2_vault_is_bound_and_its_unbound_head_cannot_come_back() {
    let d = tempfile::tempdir().unwrap();
    vault_with_records(d.path(), 100).close().unwrap();
    capvault::testing::write_format2(d.path(), "alice").unwrap();
    let unbound = get(d.path(), "log", &[1, b'h']).unwrap();
    assert_eq!(unbound.len(), 64, "a format-2 head");
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    v.verify().unwrap();
    let events = v.test_read_all().unwrap().len();
    v.close().unwrap();
    let bound = get(d.path(), "log", &[1, b'h']).unwrap();
    assert_eq!(bound.len(), 72, "bound at the first open");
    put(d.path(), "log", &[1, b'h'], Some(unbound));
    let m = assert_tampered(d.path(), o(), "unbound head put back");
    assert!(m.contains("keychain"), "{m}");
    put(d.path(), "log", &[1, b'h'], Some(bound));
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    v.verify().unwrap();
    assert!(v.test_read_all().unwrap().len() >= events);
    v.close().unwrap();
}

/// A carry-over of a format-1 vault that crashed after it rewrapped the keys but before
/// it deleted the old KEK leaves that KEK in the keychain. Putting the keys tree from
/// before the carry-over back, with an edited plain state, must not make the next open
/// carry over (and seal) again: the keychain says the state was already sealed. Without
/// an attacker, the interrupted carry-over finishes.
#[test]
fn an_interrupted_carry_over_cannot_be_run_again_on_restored_keys() {
    for point in ["kek-rotate:after-rewrap", "kek-rotate:after-marker"] {
        let d = tempfile::tempdir().unwrap();
        let v = vault_with_records(d.path(), 100);
        v.pause(Duration::from_secs(600)).unwrap();
        v.close().unwrap();
        capvault::testing::write_format1(d.path(), "alice").unwrap();
        let keys_before = snapshot(d.path(), "keys");
        let state_before = snapshot(d.path(), "state");
        capvault::testing::arm(point);
        match Vault::open(d.path(), "alice", o()) {
            Err(Error::Storage(m)) => assert!(m.contains(point), "{m}"),
            other => panic!("{point}: {other:?}"),
        }
        let keys_crashed = snapshot(d.path(), "keys");
        let state_crashed = snapshot(d.path(), "state");

        // The attacker's edit: the pause lifted, in the plain form of format 1.
        restore(d.path(), "keys", &keys_before);
        let edited: Vec<_> = state_before
            .iter()
            .map(|(k, v)| {
                let v = if k == b"pause_until" {
                    0i64.to_be_bytes().to_vec()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        restore(d.path(), "state", &edited);
        match Vault::open(d.path(), "alice", o()) {
            Err(Error::Tampered(_)) => {}
            Ok(v) => panic!(
                "{point}: carried over again, pause {:?}",
                v.pause_state().unwrap()
            ),
            Err(e) => panic!("{point}: {e}"),
        }

        // Without the attacker the carry-over finishes, the pause kept.
        restore(d.path(), "keys", &keys_crashed);
        restore(d.path(), "state", &state_crashed);
        let v = Vault::open(d.path(), "alice", o()).unwrap();
        assert!(v.pause_state().unwrap().paused_until_us.is_some());
        v.verify().unwrap();
        v.close().unwrap();
        assert!(get(d.path(), "keys", b"mac2").is_some());
    }
}
