//! The release path as a collector sees it (SPEC 12.1-12.3): one chain per user stream,
//! whatever the interleaving of users, seals, acks, budget eviction and retention; the
//! outbox across reopen; erase and re-create; the persisted receipt requirement; the
//! device's enrollment record.
mod common;

use common::Rng;

use std::collections::BTreeMap;
use std::time::Duration;

use capvault::{
    open_bundle, ChainChecker, EnrollmentRecord, Error, Event, Identity, KeyStoreKind, LossReason,
    Marker, OpenedBundle, Suite, Vault, VaultOptions,
};
use common::options;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// What a collector knows of one stream: the bundles it accepted, in order.
#[derive(Default)]
struct Stream {
    user: String,
    /// bundle seq -> (digest, first record, last record)
    bundles: BTreeMap<u64, ([u8; 32], u64, u64)>,
    last_event: Option<u64>,
    records_lost: u64,
    loss_marker_records: u64,
    captured: u64,
}

/// A collector's books over every stream of one device, checking the chain rules of
/// docs/FORMAT.md ("Chains") on every bundle it is given (retries included).
#[derive(Default)]
struct Collector {
    streams: BTreeMap<[u8; 16], Stream>,
    device_key: Option<[u8; 32]>,
    /// The collector's own chain checker, given every bundle (retries included).
    checker: ChainChecker,
}

impl Collector {
    fn accept(&mut self, b: &OpenedBundle) {
        self.checker.add_opened(b);
        let h = &b.header;
        assert_eq!(h.version(), 2);
        assert_ne!(
            h.stream_id(),
            &[0u8; 16],
            "a version 2 bundle names its stream"
        );
        let key = *self.device_key.get_or_insert(*h.device_key());
        assert_eq!(&key, h.device_key(), "one device key for the vault");
        let s = self.streams.entry(*h.stream_id()).or_default();
        if s.user.is_empty() {
            s.user = b.user.clone();
            assert_eq!(h.bundle_seq(), 1, "a stream starts at bundle 1");
            assert_eq!(h.prev_digest(), &[0u8; 32]);
            assert_eq!(h.first_record(), 1 + h.records_lost());
        }
        assert_eq!(s.user, b.user, "a stream carries one user's data only");
        if let Some((d, _, _)) = s.bundles.get(&h.bundle_seq()) {
            assert_eq!(
                d, &b.digest,
                "same (stream, seq) with another digest: a conflict"
            );
            return; // a retry of a bundle already counted
        }
        if h.bundle_seq() > 1 {
            let (pd, _, plast) = s.bundles.get(&(h.bundle_seq() - 1)).unwrap_or_else(|| {
                panic!("bundle {} arrived before its predecessor", h.bundle_seq())
            });
            assert_eq!(
                h.prev_digest(),
                pd,
                "prev_digest links to the previous bundle"
            );
            assert_eq!(
                h.first_record(),
                plast + 1 + h.records_lost(),
                "first_record = previous last_record + 1 + records_lost"
            );
        }
        for e in &b.events {
            assert!(
                s.last_event.is_none_or(|l| e.seq > l),
                "events of a stream only move forward"
            );
            s.last_event = Some(e.seq);
            match &e.event {
                Event::Marker {
                    marker:
                        Marker::Loss {
                            records, reason, ..
                        },
                    ..
                } => {
                    assert!(matches!(reason, LossReason::Budget | LossReason::Retention));
                    s.loss_marker_records += records;
                }
                Event::Marker { .. } => {}
                _ => s.captured += 1,
            }
        }
        s.records_lost += h.records_lost();
        s.bundles.insert(
            h.bundle_seq(),
            (b.digest, h.first_record(), h.last_record()),
        );
    }
}

fn user_options(user: &str) -> VaultOptions {
    let mut o = options(KeyStoreKind::Keyutils);
    o.frame_max_bytes = 2048;
    o.chunk_bytes = 4096;
    match user {
        // Eviction by budget, with chunked screenshots evicted whole.
        "alice" => o.policy.budget_bytes = 1 << 20,
        // Retention.
        "bob" => o.policy.retention_secs = 1,
        // Both.
        _ => {
            o.policy.budget_bytes = 3 << 19;
            o.policy.retention_secs = 2;
        }
    }
    o
}

fn seal(v: &Vault, id: &Identity, c: &mut Collector, max: usize) -> Option<capvault::SealedBundle> {
    let b = v.seal_next(&id.recipient(), max).unwrap()?;
    let o = open_bundle(b.bytes(), id).expect("every bundle opens");
    c.accept(&o);
    Some(b)
}

#[test]
fn users_interleaved_with_eviction_and_retention_keep_one_clean_chain_each() {
    let d = tempfile::tempdir().unwrap();
    let id = Identity::generate(Suite::X25519);
    let users = ["alice", "bob", "carol"];
    let mut c = Collector::default();
    let mut rng = Rng(0xC0FF_EE00_5EED);
    let mut appended: BTreeMap<&str, u64> = BTreeMap::new();
    let mut pending: BTreeMap<&str, Option<capvault::SealedBundle>> = BTreeMap::new();
    let mut ts = 0i64;
    for round in 0..24 {
        let user = users[rng.below(3) as usize];
        let v = Vault::open(d.path(), user, user_options(user)).unwrap();
        // A bundle left pending in an earlier round comes back byte for byte.
        if let Some(Some(b)) = pending.get(user) {
            let again = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
            assert_eq!(
                again.bytes(),
                b.bytes(),
                "{user}: the outbox keeps the bundle"
            );
        }
        let n = 50 + rng.below(400);
        for _ in 0..n {
            ts += 1;
            let _ = v.append_mouse_move(ts, ts as i32, round).unwrap();
        }
        *appended.entry(user).or_default() += n;
        for _ in 0..rng.below(4) {
            ts += 1;
            let _ = v
                .append_screenshot(ts, 64, 64, "raw", &noise(150_000, ts as u64))
                .unwrap();
            *appended.entry(user).or_default() += 1;
        }
        v.flush().unwrap();
        if rng.below(4) == 0 {
            // Long enough for retention and a maintenance pass.
            std::thread::sleep(Duration::from_millis(1200));
        }
        for _ in 0..rng.below(3) {
            let max = 8_192 + rng.below(64 << 10) as usize;
            let Some(b) = seal(&v, &id, &mut c, max) else {
                break;
            };
            // A retry before the ack is the same bundle.
            let retry = seal(&v, &id, &mut c, 100).unwrap();
            assert_eq!(retry.id(), b.id());
            if rng.below(4) == 0 {
                pending.insert(user, Some(b));
                break; // the ack is "lost" for now
            }
            v.ack(b.id(), None).unwrap();
            pending.insert(user, None);
        }
        if rng.below(5) == 0 {
            v.rotate_dek().unwrap();
        }
        v.close().unwrap();
    }
    // Drain every user.
    for user in users {
        let v = Vault::open(d.path(), user, user_options(user)).unwrap();
        while let Some(b) = seal(&v, &id, &mut c, 1 << 20) {
            v.ack(b.id(), None).unwrap();
        }
        v.verify().unwrap();
        v.close().unwrap();
    }
    assert!(c.streams.len() >= 2, "the users have streams of their own");
    let report = c.checker.report();
    assert!(report.is_clean(), "{report:?}");
    let mut lost_somewhere = false;
    for (sid, s) in &c.streams {
        let sid = data_encoding::HEXLOWER.encode(sid);
        assert!(
            !sid.contains(&data_encoding::HEXLOWER.encode(s.user.as_bytes())),
            "the stream id is not derived from the user name"
        );
        // The headers count every record removed unreleased; each removal also left a
        // loss marker, which a later removal may itself take (it is a record too, and
        // that removal counts it), so the markers seen never claim more than the headers.
        assert!(
            s.loss_marker_records <= s.records_lost,
            "{}: loss markers claim {} records, the headers {}",
            s.user,
            s.loss_marker_records,
            s.records_lost
        );
        assert_eq!(s.records_lost > 0, s.loss_marker_records > 0, "{}", s.user);
        lost_somewhere |= s.records_lost > 0;
        assert!(s.captured <= appended[s.user.as_str()]);
    }
    assert!(lost_somewhere, "the schedule exercised eviction");
}

#[test]
fn a_pending_bundle_survives_eviction_of_its_records_and_the_gap_is_explained() {
    let d = tempfile::tempdir().unwrap();
    let id = Identity::generate(Suite::X25519);
    let mut o = options(KeyStoreKind::Keyutils);
    o.frame_max_bytes = 1024;
    o.policy.budget_bytes = 1 << 20;
    let mut c = Collector::default();
    let v = Vault::open(d.path(), "alice", o.clone()).unwrap();
    for i in 0..500 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    let a = seal(&v, &id, &mut c, 4096).unwrap();
    // Far over the budget: eviction removes the pending bundle's records and more.
    for i in 0..6 {
        let _ = v
            .append_screenshot(1000 + i, 64, 64, "raw", &noise(300_000, i as u64))
            .unwrap();
    }
    v.flush().unwrap();
    v.close().unwrap();
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let again = seal(&v, &id, &mut c, 1 << 20).unwrap();
    assert_eq!(again.bytes(), a.bytes(), "the pending bundle is final");
    v.ack(a.id(), None).unwrap();
    let b = seal(&v, &id, &mut c, 1 << 20).unwrap();
    let ob = open_bundle(b.bytes(), &id).unwrap();
    assert_eq!(ob.header.bundle_seq(), 2, "no sequence number skipped");
    assert!(
        ob.header.records_lost() > 0,
        "the evicted records are counted"
    );
    v.ack(b.id(), None).unwrap();
    while let Some(b) = seal(&v, &id, &mut c, 1 << 20) {
        v.ack(b.id(), None).unwrap();
    }
    assert!(c.checker.report().is_clean(), "{:?}", c.checker.report());
    let s = c.streams.values().next().unwrap();
    assert!(s.records_lost > 0);
    assert!(s.loss_marker_records > 0 && s.loss_marker_records <= s.records_lost);
    v.close().unwrap();
}

#[test]
fn erase_and_recreate_starts_a_new_stream() {
    let d = tempfile::tempdir().unwrap();
    let id = Identity::generate(Suite::X25519);
    let mut c = Collector::default();
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    let a = seal(&v, &id, &mut c, 1 << 20).unwrap();
    v.ack(a.id(), None).unwrap();
    let _ = v.append_mouse_move(2, 1, 1).unwrap();
    let pending = seal(&v, &id, &mut c, 1 << 20).unwrap();
    v.erase_open().unwrap();
    // The outbox went with the user's data: alice was the vault's only user, so the
    // whole database is gone, and no file holds the bundle.
    assert!(!d.path().join("db").exists(), "the database was removed");
    for file in common::files_under(d.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !common::contains(&bytes, &pending.bytes()[200..264]),
            "the pending bundle is gone from the vault: {}",
            file.display()
        );
    }
    // The name stays erased; should it ever be created again (here: the erasure
    // record removed by hand), nothing of the old stream is left to continue.
    let ks = KeyStoreKind::Keyutils;
    let e = Vault::open(d.path(), "alice", options(ks)).unwrap_err();
    assert!(matches!(e, Error::Erased), "{e}");
    std::fs::remove_file(d.path().join("keychain.json")).unwrap();
    let v = Vault::open(d.path(), "alice", options(ks)).unwrap();
    let _ = v.append_mouse_move(3, 1, 1).unwrap();
    // The whole database went with its last user: this is a new vault (a new device).
    let mut c = Collector::default();
    let b = seal(&v, &id, &mut c, 1 << 20).unwrap();
    assert_eq!(b.header().bundle_seq(), 1);
    assert_ne!(b.header().device_id(), a.header().device_id());
    assert_ne!(b.header().stream_id(), a.header().stream_id());
    v.close().unwrap();
}

#[test]
fn the_receipt_requirement_persists_until_changed_explicitly() {
    let d = tempfile::tempdir().unwrap();
    let collector = Identity::generate(Suite::X25519);
    let other = Identity::generate(Suite::X25519);
    let mut o = options(KeyStoreKind::Keyutils);
    o.collector_receipt_key = Some(collector.receipt_key().to_string());
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    let b = v
        .seal_next(&collector.recipient(), 1 << 20)
        .unwrap()
        .unwrap();
    v.close().unwrap();
    // Reopened without a key: the stored one is in force.
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    assert!(matches!(
        v.ack(b.id(), None),
        Err(Error::InvalidArgument(_))
    ));
    match v.ack(b.id(), Some(&other.receipt_for(b.digest()))) {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains(&collector.receipt_key().to_string()), "{m}");
            assert!(m.contains(&other.receipt_key().to_string()), "{m}");
        }
        e => panic!("another collector's receipt: {e:?}"),
    }
    assert!(matches!(
        v.ack(b.id(), Some(&collector.receipt_for(&[1; 32]))),
        Err(Error::Tampered(_))
    ));
    assert_eq!(v.status().unwrap().records, 1, "nothing pruned");
    v.ack(b.id(), Some(&collector.receipt_for(b.digest())))
        .unwrap();
    // Another user of the vault is bound too (the key belongs to the vault).
    v.close().unwrap();
    let v = Vault::open(d.path(), "bob", options(KeyStoreKind::Keyutils)).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    let b = v
        .seal_next(&collector.recipient(), 1 << 20)
        .unwrap()
        .unwrap();
    assert!(matches!(
        v.ack(b.id(), None),
        Err(Error::InvalidArgument(_))
    ));
    v.close().unwrap();
    // Replaced by another key: recorded; its receipts count from now on.
    let mut o = options(KeyStoreKind::Keyutils);
    o.collector_receipt_key = Some(other.receipt_key().to_string());
    let v = Vault::open(d.path(), "bob", o).unwrap();
    v.ack(b.id(), Some(&other.receipt_for(b.digest()))).unwrap();
    v.close().unwrap();
    // Removed explicitly: acks by id again.
    let mut o = options(KeyStoreKind::Keyutils);
    o.collector_receipt_key = Some("none".into());
    let v = Vault::open(d.path(), "bob", o).unwrap();
    let _ = v.append_mouse_move(2, 1, 1).unwrap();
    let b = v.seal_next(&other.recipient(), 1 << 20).unwrap().unwrap();
    v.ack(b.id(), None).unwrap();
    let audit: Vec<String> = v
        .audit_log()
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "receipt-key")
        .map(|e| e.detail)
        .collect();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit[0].contains("replaces"), "{audit:?}");
    assert!(audit[1].contains("removed"), "{audit:?}");
    v.close().unwrap();
    // And it stays removed.
    let v = Vault::open(d.path(), "bob", options(KeyStoreKind::Keyutils)).unwrap();
    let _ = v.append_mouse_move(3, 1, 1).unwrap();
    let b = v.seal_next(&other.recipient(), 1 << 20).unwrap().unwrap();
    v.ack(b.id(), None).unwrap();
    v.close().unwrap();
}

#[test]
fn the_enrollment_record_verifies_and_names_the_key_that_signs_bundles() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let id = Identity::generate(Suite::X25519);
        let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
        let r = v.enrollment_record().unwrap();
        let parsed = EnrollmentRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(parsed.to_json(), r.to_json());
        assert_eq!(r.device_id_hex(), v.status().unwrap().device_id);
        let _ = v.append_mouse_move(1, 1, 1).unwrap();
        let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
        assert_eq!(b.header().device_key(), &r.device_key());
        assert_eq!(b.header().device_id(), &r.device_id());
        v.close().unwrap();
        // The same record for another user of the vault and after a reopen.
        let v = Vault::open(d.path(), "bob", options(kind)).unwrap();
        assert_eq!(v.enrollment_record().unwrap().to_json(), r.to_json());
        v.close().unwrap();
    }
}

#[test]
fn a_gap_the_release_state_does_not_account_for_refuses_to_seal() {
    let d = tempfile::tempdir().unwrap();
    let id = Identity::generate(Suite::X25519);
    let o = || {
        let mut o = options(KeyStoreKind::Keyutils);
        o.frame_max_bytes = 256;
        o
    };
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    for i in 0..200 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    let b = v.seal_next(&id.recipient(), 4096).unwrap().unwrap();
    v.ack(b.id(), None).unwrap();
    v.close().unwrap();
    // The release state claims records were removed that the log still holds (as if
    // the count and the log disagreed): the edit itself is refused (the release state
    // is authenticated), so nothing is papered over.
    {
        let db = capvault::testing::open_raw_db(d.path());
        let state = common::user_tree(&db, "alice", "state");
        let mut stored = state.get(b"release").unwrap().unwrap().to_vec();
        let at = common::find(&stored, b"\"records_lost\":0").expect("records_lost in the JSON");
        stored[at + 15] = b'3';
        state.insert(b"release", stored).unwrap();
        db.flush().unwrap();
    }
    match Vault::open(d.path(), "alice", o()) {
        Err(Error::Tampered(m)) => assert!(m.contains("release"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// A device id speaks for one key. When the keychain loses the device key (reset, or
/// the vault directory copied to a machine with another keychain), the vault takes a
/// new device id with its new key instead of signing under the old id with a second
/// key; the bundle already sealed goes out unchanged.
#[test]
fn a_new_device_key_gets_a_new_device_id() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let collector = capvault::Identity::generate(capvault::Suite::X25519);
    let opts = common::options(capvault::KeyStoreKind::Keyutils);
    let v = capvault::Vault::open(dir.path(), "alice", opts.clone()).unwrap();
    for i in 0..10 {
        let _ = v
            .append_mouse_move(1_764_000_000_000_000 + i, 1, 2)
            .unwrap();
    }
    let pending = v
        .seal_next(&collector.recipient(), 1 << 20)
        .unwrap()
        .unwrap();
    let before = v.status().unwrap();
    let record = v.enrollment_record().unwrap();
    v.close().unwrap();

    // Remove the device key from the kernel keyring, as a keychain reset would.
    let name = format!("capvault:device/{}", before.vault_id);
    let id = Command::new("keyctl")
        .args(["search", "@u", "user", &name])
        .output()
        .unwrap();
    assert!(
        id.status.success(),
        "device key {name} not in the user keyring"
    );
    let id = String::from_utf8(id.stdout).unwrap();
    assert!(Command::new("keyctl")
        .args(["unlink", id.trim(), "@u"])
        .status()
        .unwrap()
        .success());

    let v = capvault::Vault::open(dir.path(), "alice", opts).unwrap();
    let after = v.status().unwrap();
    assert_ne!(after.device_id, before.device_id, "one id, two keys");
    let record2 = v.enrollment_record().unwrap();
    assert_ne!(record2.device_key(), record.device_key());
    assert_eq!(record2.device_id_hex(), after.device_id);
    // The pending bundle is final: the same bytes, signed by the earlier key.
    let again = v
        .seal_next(&collector.recipient(), 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(again.bytes(), pending.bytes());
    v.ack(again.id(), None).unwrap();
    // The next bundle is signed by the new key under the new id; pinned with both
    // records, the collector's checker accepts both bundles and sees no ambiguity.
    let _ = v.append_mouse_move(1_764_000_000_100_000, 3, 4).unwrap();
    let next = v
        .seal_next(&collector.recipient(), 1 << 20)
        .unwrap()
        .unwrap();
    assert_eq!(next.header().device_id_hex(), after.device_id);
    let mut pins = capvault::DevicePins::new();
    pins.add(&record).unwrap();
    pins.add(&record2).unwrap();
    let mut checker = capvault::ChainChecker::with_pins(pins);
    checker.add(pending.header(), pending.digest());
    checker.add(next.header(), next.digest());
    let report = checker.report();
    assert!(report.accepts(pending.digest()) && report.accepts(next.digest()));
    v.close().unwrap();
}
