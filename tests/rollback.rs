//! Rollback of the vault directory against the keychain's high-water mark
//! (src/keys/mark.rs, docs/FORMAT.md section 15): what an attacker with write access to
//! the vault directory (not the keychain) finds in sled's own files and puts back is
//! refused on open and by `verify`; the mark itself cannot be planted, removed or left
//! behind by an erase; and it follows flushes and state changes.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use capvault::{Error, KeyStoreKind, Vault, VaultOptions};
use common::{alice_entries as snapshot, alice_value as get, flushed_moves as append, vault_hex};

const HEAD: [u8; 2] = [1, b'h'];
const TAIL: [u8; 2] = [1, b't'];
const COUNTS: [u8; 2] = [1, b'c'];

fn o() -> VaultOptions {
    with(KeyStoreKind::Keyutils)
}

fn with(kind: KeyStoreKind) -> VaultOptions {
    let mut o = common::options(kind);
    o.frame_max_bytes = 256;
    o
}

fn raw(dir: &Path) -> sled::Db {
    capvault::testing::open_raw_db(dir)
}

/// Every byte of every file in the vault directory: sled is log-structured, so values
/// it replaced stay in its files until it reuses the segment. This is what an attacker
/// who can read the directory now has, without any backup.
fn directory_bytes(dir: &Path) -> Vec<u8> {
    common::files_under(dir)
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap_or_default())
        .collect()
}

fn seq_of(head: &[u8]) -> u64 {
    u64::from_be_bytes(head[..8].try_into().unwrap())
}

fn record_key(seq: u64) -> Vec<u8> {
    let mut k = vec![0u8];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Opens the vault and describes what it accepted: `Ok` when open and verify both
/// passed (the attack worked), with `what` filled in.
fn accepted(dir: &Path, what: impl Fn(&Vault) -> String) -> Result<String, Error> {
    let v = Vault::open(dir, "alice", with(KeyStoreKind::Auto))?;
    let verified = v.verify();
    let told = what(&v);
    v.close().unwrap();
    verified.map(|r| format!("{told}; verify passed ({} records)", r.records))
}

fn cli_verify_passes(dir: &Path) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_capvault"))
        .args(["verify", "--user", "alice", "--vault"])
        .arg(dir)
        .output()
        .unwrap();
    out.status.success()
}

/// Promise (docs/SECURITY.md, "Tamper evidence"): truncating the log is detected on
/// open and by `verify`.
///
/// Appends do not change the state generation, so a head anchor written by an earlier
/// append of the same generation still verifies and names the right generation. sled
/// keeps the replaced head (and counters) in its files, so no backup is needed: put them
/// back and drop the records after them, and the last records written since the last
/// state change are gone without a trace.
#[test]
fn truncating_the_log_back_to_an_earlier_head_is_detected() {
    for kind in common::stores() {
        truncate_back_to_an_earlier_head(kind);
    }
}

fn truncate_back_to_an_earlier_head(kind: KeyStoreKind) {
    let o = || with(kind);
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    append(&v, 200, 0);
    v.close().unwrap();
    let head_then = get(d.path(), "log", &HEAD).unwrap();
    let counts_then = get(d.path(), "log", &COUNTS).unwrap();
    let state_then = snapshot(d.path(), "state");

    // More capture in a later session: no state change (no seal, ack, pause, policy).
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    append(&v, 200, 1_000);
    let events_now = v.test_read_all().unwrap().len();
    v.close().unwrap();
    assert_eq!(
        snapshot(d.path(), "state"),
        state_then,
        "no state change in between"
    );
    let head_now = get(d.path(), "log", &HEAD).unwrap();
    assert!(seq_of(&head_now) > seq_of(&head_then));

    // The attacker needs nothing but the directory: the earlier anchors are in it.
    let bytes = directory_bytes(d.path());
    assert!(
        common::contains(&bytes, &head_then) && common::contains(&bytes, &counts_then),
        "the replaced head and counters are still in sled's files"
    );
    {
        let db = raw(d.path());
        let log = common::user_tree(&db, "alice", "log");
        for seq in seq_of(&head_then) + 1..=seq_of(&head_now) {
            log.remove(record_key(seq)).unwrap();
        }
        log.insert(HEAD, head_then.as_slice()).unwrap();
        log.insert(COUNTS, counts_then).unwrap();
        db.flush().unwrap();
    }
    match accepted(d.path(), |v| {
        format!(
            "{} of {events_now} events left",
            v.test_read_all().unwrap().len()
        )
    }) {
        Err(Error::Tampered(m)) => {
            assert!(
                m.contains(&format!(
                    "the log ends at record {}, the keychain recorded {}",
                    seq_of(&head_then),
                    seq_of(&head_now)
                )) && m.contains("erase the user"),
                "{m}"
            );
            assert!(!cli_verify_passes(d.path()), "capvault verify refuses too");
        }
        Ok(told) => panic!(
            "the log was truncated back to an earlier head and accepted: {told}; capvault verify passes: {}",
            cli_verify_passes(d.path())
        ),
        Err(e) => panic!("{kind:?}: {e}"),
    }
}

/// Promise (src/audit.rs, docs/SECURITY.md): every subject-access read is recorded in
/// the audit ledger, and deleting an entry is detected.
///
/// Ledger entries are appended without a state change, so the ledger head written
/// before the read still names the current state generation; sled keeps it in its
/// files. Putting it back and dropping the entries after it hides the read (and the
/// opens around it).
#[test]
fn a_subject_access_cannot_be_removed_from_the_audit_ledger() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    append(&v, 50, 0);
    v.close().unwrap();
    let head_then = get(d.path(), "ledger", &HEAD).unwrap();
    let state_then = snapshot(d.path(), "state");

    // Someone reads the user's data: the ledger records it.
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    assert_eq!(v.subject_access().unwrap().len(), 50);
    assert!(v
        .audit_log()
        .unwrap()
        .iter()
        .any(|e| e.action == "subject-access"));
    v.close().unwrap();
    assert_eq!(snapshot(d.path(), "state"), state_then, "no state change");
    let head_now = get(d.path(), "ledger", &HEAD).unwrap();

    assert!(
        common::contains(&directory_bytes(d.path()), &head_then),
        "the replaced ledger head is still in sled's files"
    );
    {
        let db = raw(d.path());
        let ledger = common::user_tree(&db, "alice", "ledger");
        for seq in seq_of(&head_then) + 1..=seq_of(&head_now) {
            ledger.remove(record_key(seq)).unwrap();
        }
        ledger.insert(HEAD, head_then).unwrap();
        db.flush().unwrap();
    }
    match accepted(d.path(), |v| {
        let log = v.audit_log().unwrap();
        format!(
            "subject-access in the ledger: {}",
            log.iter().any(|e| e.action == "subject-access")
        )
    }) {
        Err(Error::Tampered(_)) => {}
        Ok(told) => panic!("the read was removed from the audit ledger and accepted: {told}"),
        Err(e) => panic!("{e}"),
    }
}

/// Promise (docs/SECURITY.md, "Tamper evidence"): replaying records is detected; and
/// (section "Erasure"/DEK retirement) acknowledged records leave the device.
///
/// An acknowledgement moves the tail anchor in a batch of its own; the counters written
/// by the last append before it (same head, older first record) and the tail before it
/// are still in sled's files, as are the pruned records. Putting them back restores the
/// acknowledged records as live data, as long as nothing was appended since the ack and
/// their epoch's key was not retired (one epoch a day by default).
#[test]
fn acknowledged_records_cannot_be_put_back_at_the_tail() {
    use capvault::{Identity, Suite};
    let d = tempfile::tempdir().unwrap();
    let id = Identity::generate(Suite::X25519);
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    append(&v, 100, 0);
    v.close().unwrap();
    let log_then = snapshot(d.path(), "log");
    // The segment files are given back once the ack is durable: the attacker brings
    // them from an earlier copy of the directory (they hold only sealed records).
    let segments_then = common::segments_snapshot(d.path(), "alice");
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    v.ack(b.id(), None).unwrap();
    assert_eq!(v.test_read_all().unwrap().len(), 0, "all acknowledged");
    v.close().unwrap();
    let counts_then = log_then.iter().find(|(k, _)| k == &COUNTS).unwrap();
    let bytes = directory_bytes(d.path());
    assert!(
        common::contains(&bytes, &counts_then.1),
        "the counters before the ack are still in sled's files"
    );
    {
        let db = raw(d.path());
        let log = common::user_tree(&db, "alice", "log");
        for (k, v) in &log_then {
            if k[0] == 0 || k.as_slice() == TAIL || k.as_slice() == COUNTS {
                log.insert(k.as_slice(), v.as_slice()).unwrap();
            }
        }
        if !log_then.iter().any(|(k, _)| k == &TAIL) {
            log.remove(TAIL).unwrap();
        }
        db.flush().unwrap();
    }
    let seg = capvault::testing::segment_dir(d.path(), "alice");
    std::fs::create_dir_all(&seg).unwrap();
    common::segments_restore(d.path(), "alice", &segments_then);
    match accepted(d.path(), |v| {
        let live = v.test_read_all().unwrap().len();
        let id = Identity::generate(Suite::X25519);
        let next = match v.seal_next(&id.recipient(), 1 << 20) {
            Ok(b) => format!("the next seal gives {:?}", b.map(|b| b.id().to_string())),
            Err(e) => format!("the next seal fails: {e}"),
        };
        format!("{live} acknowledged events are live again; {next}")
    }) {
        Err(Error::Tampered(_)) => {}
        Ok(told) => panic!("the pruned tail was put back and accepted: {told}"),
        Err(e) => panic!("{e}"),
    }
}

/// The keychain name of a user's mark (docs/FORMAT.md section 4).
fn mark_name(vault_hex: &str, user: &str) -> String {
    let user_hex: String = user.bytes().map(|b| format!("{b:02x}")).collect();
    format!("mark/{vault_hex}/{user_hex}")
}

/// The mark as the keychain holds it, read with the platform's own tool: head, tail,
/// ledger, state generation (the MAC is not checked here). Secret Service replaces an
/// item in two steps, so a read racing a write may find none: absence is looked at
/// again for a moment before it counts.
fn read_mark(kind: KeyStoreKind, name: &str) -> Option<[u64; 4]> {
    let mut v = common::keychain_secret(kind, name);
    for _ in 0..10 {
        if v.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        v = common::keychain_secret(kind, name);
    }
    let v = v?;
    assert_eq!(v.len(), 64, "32-byte body and 32-byte MAC");
    let at = |i: usize| u64::from_be_bytes(v[i * 8..i * 8 + 8].try_into().unwrap());
    Some([at(0), at(1), at(2), at(3)])
}

fn delete_mark(kind: KeyStoreKind, name: &str) {
    let ok = match kind {
        KeyStoreKind::SecretService => Command::new("secret-tool")
            .args(["clear", "service", "capvault", "username", name])
            .status()
            .unwrap()
            .success(),
        _ => Command::new("sh")
            .args([
                "-c",
                &format!("id=$(keyctl search @u user 'capvault:{name}') && keyctl invalidate $id"),
            ])
            .status()
            .unwrap()
            .success(),
    };
    assert!(ok, "deleting {name}");
    assert_eq!(common::keychain_secret(kind, name), None);
}

fn tampered_message(dir: &Path, user: &str, kind: KeyStoreKind) -> String {
    match Vault::open(dir, user, with(kind)) {
        Err(Error::Tampered(m)) => m,
        Err(e) => panic!("{kind:?}: expected Tampered, got {e}"),
        Ok(_) => panic!("{kind:?}: the vault opened"),
    }
}

/// A mark belongs to one vault and one user: bound to both under the user's MAC key, so
/// a mark copied from another vault's user of the same name, or from another user of
/// this vault (or left by an erased earlier user: another MAC key), does not verify.
/// It is refused rather than ignored: ignoring it would be the same as deleting the
/// mark, which is refused too (whoever can write the keychain could otherwise switch
/// the check off), and this vault writes nothing but its own marks there.
#[test]
fn a_mark_from_another_vault_or_user_is_refused() {
    for kind in common::stores() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for (dir, user) in [(a.path(), "alice"), (a.path(), "bob"), (b.path(), "alice")] {
            let v = Vault::open(dir, user, with(kind)).unwrap();
            append(&v, 20, 0);
            v.close().unwrap();
        }
        let own_name = mark_name(&vault_hex(a.path()), "alice");
        let own = common::keychain_secret(kind, &own_name).unwrap();
        for (from, user) in [(b.path(), "alice"), (a.path(), "bob")] {
            let planted = common::keychain_secret(kind, &mark_name(&vault_hex(from), user))
                .expect("the other mark exists");
            common::put_keychain_secret(kind, &own_name, &planted);
            let m = tampered_message(a.path(), "alice", kind);
            assert!(m.contains("does not verify"), "{m}");
        }
        // The real mark back: the vault opens and verifies.
        common::put_keychain_secret(kind, &own_name, &own);
        let v = Vault::open(a.path(), "alice", with(kind)).unwrap();
        v.verify().unwrap();
        v.close().unwrap();
    }
}

/// A deleted mark is refused: the keychain's format record says the user has one.
/// `verify` on an open vault reads the keychain again and refuses too.
#[test]
fn a_deleted_mark_is_refused() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        append(&v, 20, 0);
        v.close().unwrap();
        let name = mark_name(&vault_hex(d.path()), "alice");
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        v.flush().unwrap();
        // Once the mark names everything flushed, nothing rewrites it until more is.
        let current = [
            v.status().unwrap().last_record,
            v.audit_log().unwrap().len() as u64,
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_mark(kind, &name).map(|m| [m[0], m[2]]) != Some(current) {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: the mark never caught up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        delete_mark(kind, &name);
        match v.verify() {
            Err(Error::Tampered(m)) => assert!(m.contains("missing"), "{m}"),
            other => panic!("{kind:?}: verify gave {other:?}"),
        }
        drop(v);
        // Had close anything new to name, it wrote the mark again: take it away.
        if read_mark(kind, &name).is_some() {
            delete_mark(kind, &name);
        }
        let m = tampered_message(d.path(), "alice", kind);
        assert!(m.contains("missing from the keychain"), "{m}");
    }
}

/// Erase deletes the mark together with the KEKs, through an open handle and closed;
/// another user's mark stays; a user created again under the name opens cleanly.
#[test]
fn erase_deletes_the_mark_and_a_recreated_user_opens() {
    for kind in common::stores() {
        for open_handle in [true, false] {
            let d = tempfile::tempdir().unwrap();
            for user in ["alice", "bob"] {
                let v = Vault::open(d.path(), user, with(kind)).unwrap();
                append(&v, 20, 0);
                v.close().unwrap();
            }
            let hex = vault_hex(d.path());
            assert!(read_mark(kind, &mark_name(&hex, "alice")).is_some());
            if open_handle {
                let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
                append(&v, 5, 100);
                v.erase_open().unwrap();
            } else {
                Vault::erase(d.path(), "alice", with(kind)).unwrap();
            }
            assert_eq!(
                common::keychain_secret(kind, &mark_name(&hex, "alice")),
                None,
                "{kind:?}: the mark went with the keys"
            );
            let bob = Vault::open(d.path(), "bob", with(kind)).unwrap();
            bob.verify().unwrap();
            bob.close().unwrap();
            Vault::erase(d.path(), "bob", with(kind)).unwrap();
            assert_eq!(common::keychain_secret(kind, &mark_name(&hex, "bob")), None);
            // The erasure record removed by hand: the name can be created again.
            std::fs::remove_file(d.path().join("keychain.json")).unwrap();
            let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
            append(&v, 3, 0);
            v.verify().unwrap();
            v.close().unwrap();
            let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
            assert_eq!(v.test_read_all().unwrap().len(), 3);
            v.close().unwrap();
        }
    }
}

/// A user created where a mark of its name already sits (planted, or left by an
/// interrupted erase) writes its own: it opens cleanly, then and later.
#[test]
fn a_user_created_over_a_planted_mark_opens() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "bob", with(kind)).unwrap();
        append(&v, 50, 0);
        v.close().unwrap();
        let hex = vault_hex(d.path());
        let bobs = common::keychain_secret(kind, &mark_name(&hex, "bob")).unwrap();
        common::put_keychain_secret(kind, &mark_name(&hex, "alice"), &bobs);
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        append(&v, 5, 0);
        v.verify().unwrap();
        v.close().unwrap();
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        v.verify().unwrap();
        v.close().unwrap();
    }
}

/// The mark follows flushes within about a second (not on every flush), state changes
/// at once, and close; it never names more than the directory holds.
#[test]
fn the_mark_follows_flushes_state_changes_and_close() {
    use capvault::{Identity, Suite};
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let opened = Instant::now();
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        let hex = {
            let st = v.status().unwrap();
            st.vault_id.clone()
        };
        let name = mark_name(&hex, "alice");
        let at_open = read_mark(kind, &name).expect("written at creation");
        append(&v, 50, 0);
        let flushed_at = Instant::now();
        let right_after = read_mark(kind, &name).unwrap();
        if flushed_at - opened < Duration::from_millis(800) {
            // The open wrote the mark a moment ago: this flush waits its turn.
            assert_eq!(
                right_after[0], at_open[0],
                "{kind:?}: not written on every flush"
            );
        }
        let head = v.verify().unwrap().last_seq;
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_mark(kind, &name).unwrap()[0] < head {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: the flush never reached the mark"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // A seal is a state change: the mark names its generation when it returns.
        let before = read_mark(kind, &name).unwrap();
        let id = Identity::generate(Suite::X25519);
        let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
        let sealed = read_mark(kind, &name).unwrap();
        assert!(sealed[3] > before[3], "{kind:?}: {before:?} -> {sealed:?}");
        // So is an ack: the tail moves past the acknowledged records at once.
        v.ack(b.id(), None).unwrap();
        let acked = read_mark(kind, &name).unwrap();
        assert!(
            acked[1] > sealed[1] && acked[3] > sealed[3],
            "{kind:?}: {acked:?}"
        );
        append(&v, 10, 1_000);
        v.close().unwrap();
        let closed = read_mark(kind, &name).unwrap();
        let head = get(d.path(), "log", &HEAD).unwrap();
        let ledger = get(d.path(), "ledger", &HEAD).unwrap();
        assert_eq!(
            closed[0],
            seq_of(&head),
            "{kind:?}: close names the last record"
        );
        assert_eq!(
            closed[2],
            seq_of(&ledger),
            "{kind:?}: and the last audit entry"
        );
        // And the vault opens under it.
        Vault::open(d.path(), "alice", with(kind))
            .unwrap()
            .close()
            .unwrap();
    }
}

/// A keychain that refuses a mark write loses nothing and hides nothing: the write is
/// tried again until the mark catches up, and a close that cannot write it says so
/// (the data is closed and safe; the next open writes the mark).
#[test]
fn a_failed_mark_write_is_retried_and_reported() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        let name = mark_name(&v.status().unwrap().vault_id, "alice");
        append(&v, 10, 0);
        capvault::testing::arm("mark:write");
        // A state change: its immediate write (or the deferred one) fails once.
        v.pause(Duration::from_secs(1)).unwrap();
        v.resume().unwrap();
        let head = v.verify().unwrap().last_seq;
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_mark(kind, &name).unwrap()[0] < head {
            assert!(
                Instant::now() < deadline,
                "{kind:?}: the failed write was not retried"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        append(&v, 5, 100);
        capvault::testing::arm("mark:write");
        match v.close() {
            Err(Error::Keychain(m)) => {
                assert!(
                    m.contains("high-water mark") && m.contains("data is safe"),
                    "{m}"
                )
            }
            other => panic!("{kind:?}: close gave {other:?}"),
        }
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        let moves = v
            .test_read_all()
            .unwrap()
            .iter()
            .filter(|e| matches!(e.event, capvault::Event::MouseMove { .. }))
            .count();
        assert_eq!(moves, 15, "{kind:?}: nothing was lost");
        v.close().unwrap();
        let m = read_mark(kind, &name).unwrap();
        assert_eq!(m[0], seq_of(&get(d.path(), "log", &HEAD).unwrap()));
    }
}

/// A vault of the format before the mark (format 3 in the keychain, no mark) is carried
/// over at its first open: the mark is written, then the keychain records format 4, and
/// from then on the mark is required.
#[test]
fn a_vault_from_before_the_mark_gets_one_at_its_first_open() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        append(&v, 30, 0);
        v.close().unwrap();
        let hex = vault_hex(d.path());
        let user_hex: String = "alice".bytes().map(|b| format!("{b:02x}")).collect();
        let format = format!("format/{hex}/{user_hex}");
        let name = mark_name(&hex, "alice");
        assert_eq!(
            common::keychain_secret(kind, &format),
            Some(4u32.to_be_bytes().to_vec())
        );
        delete_mark(kind, &name);
        common::put_keychain_secret(kind, &format, &3u32.to_be_bytes());
        let v = Vault::open(d.path(), "alice", with(kind)).unwrap();
        let head = v.verify().unwrap().last_seq;
        assert_eq!(
            common::keychain_secret(kind, &format),
            Some(4u32.to_be_bytes().to_vec()),
            "{kind:?}: format 4 recorded"
        );
        assert!(
            read_mark(kind, &name).unwrap()[0] >= head,
            "{kind:?}: marked"
        );
        v.close().unwrap();
        delete_mark(kind, &name);
        let m = tampered_message(d.path(), "alice", kind);
        assert!(m.contains("missing from the keychain"), "{m}");
    }
}
