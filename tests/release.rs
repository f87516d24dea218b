//! Sealed release from a real vault: seal -> open -> ack -> prune, receipts, retries,
//! key retirement, subject access, erase, retention and the byte budget.
mod common;

use std::time::Duration;

use capvault::{
    open_bundle, Error, Event, Identity, KeyStoreKind, LossReason, Marker, SeqEvent, Suite, Vault,
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

fn captured(events: &[SeqEvent]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| !matches!(e.event, Event::Marker { .. }))
        .map(|e| e.event.clone())
        .collect()
}

fn mixed(n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..n as i64 {
        out.push(Event::MouseMove {
            ts_us: i,
            x: i as i32,
            y: 2,
        });
        if i % 100 == 0 {
            out.push(Event::WindowFocus {
                ts_us: i,
                app: "editor".into(),
                title: format!("doc {i}"),
            });
        }
        if i % 1000 == 500 {
            out.push(Event::Screenshot {
                ts_us: i,
                width: 1920,
                height: 1080,
                format: "png".into(),
                data: noise(2_000_000, i as u64),
            });
        }
    }
    out
}

/// Seals and acks until nothing is left; returns every opened bundle's events.
fn drain(v: &Vault, id: &Identity, max_bytes: usize, with_receipt: bool) -> Vec<SeqEvent> {
    let mut all = Vec::new();
    let mut last_seq = 0;
    while let Some(b) = v.seal_next(&id.recipient(), max_bytes).unwrap() {
        let opened = open_bundle(b.bytes(), id).unwrap();
        assert_eq!(opened.user, "alice");
        assert_eq!(
            opened.header.bundle_seq(),
            last_seq + 1,
            "bundle sequence numbers follow each other"
        );
        last_seq = opened.header.bundle_seq();
        if b.bytes().len() > max_bytes {
            assert_eq!(
                captured(&opened.events).len(),
                1,
                "only a single oversized event may exceed max_bytes"
            );
        }
        all.extend(opened.events.iter().cloned());
        let receipt = with_receipt.then(|| id.receipt_for(b.digest()));
        v.ack(b.id(), receipt.as_ref().map(|r| &r[..])).unwrap();
    }
    all
}

#[test]
fn mixed_events_with_large_screenshots_round_trip_through_bundles() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.keystrokes = capvault::KeystrokeLevel::Text;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let events = mixed(3000);
    for e in &events {
        let _ = v.append(e.clone()).unwrap();
    }
    let id = Identity::generate(Suite::X25519);
    let got = drain(&v, &id, 1_000_000, false);
    assert_eq!(captured(&got), events);
    // Nothing left: the log is empty and only the current epoch's key remains.
    let st = v.status().unwrap();
    assert_eq!(st.records, 0);
    assert!(v.seal_next(&id.recipient(), 1_000_000).unwrap().is_none());
    v.verify().unwrap();
    v.close().unwrap();
}

#[test]
fn a_sealed_bundle_is_offered_byte_for_byte_until_acknowledged_and_appends_during_sealing_survive()
{
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    for i in 0..100 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    let id = Identity::generate(Suite::XWing);
    let a = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    // Appended after sealing: not in this bundle, not lost.
    for i in 100..150 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    // A retry, even with another size limit, is the same bundle.
    let b = v.seal_next(&id.recipient(), 100).unwrap().unwrap();
    assert_eq!(a.id(), b.id());
    assert_eq!(a.bytes(), b.bytes(), "the outbox returns the sealed bytes");
    // Another recipient while it is pending: refused, naming both.
    let other = Identity::generate(Suite::X25519);
    match v.seal_next(&other.recipient(), 1 << 20) {
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains(&id.recipient().to_string()), "{m}");
            assert!(m.contains(&other.recipient().to_string()), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // Rotation, a policy change and reopen change nothing about it.
    v.rotate_dek().unwrap();
    v.rotate_kek().unwrap();
    v.close().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.version = 2;
    o.policy.purpose = "incident review".into();
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let c = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    assert_eq!(c.bytes(), a.bytes());
    v.ack(a.id(), None).unwrap();
    v.ack(a.id(), None).unwrap(); // harmless repeat
    assert!(matches!(
        v.ack("cvb1nosuchbundle", None),
        Err(Error::NotFound(_))
    ));
    let c = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    let (oa, oc) = (
        open_bundle(a.bytes(), &id).unwrap(),
        open_bundle(c.bytes(), &id).unwrap(),
    );
    assert_eq!(oc.header.bundle_seq(), oa.header.bundle_seq() + 1);
    assert_eq!(oc.header.prev_digest(), a.digest());
    assert_eq!(oc.header.stream_id(), oa.header.stream_id());
    assert_eq!(oc.header.first_record(), oa.header.last_record() + 1);
    assert_eq!(oc.header.records_lost(), 0);
    let moves: Vec<i64> = captured(&oc.events).iter().map(|e| e.ts_us()).collect();
    assert_eq!(moves, (100..150).collect::<Vec<_>>());
    v.close().unwrap();
}

#[test]
fn receipts_are_required_when_configured_and_forgeries_do_not_prune() {
    let d = tempfile::tempdir().unwrap();
    let collector = Identity::generate(Suite::X25519);
    let mut o = options(KeyStoreKind::Keyutils);
    o.collector_receipt_key = Some(collector.receipt_key().to_string());
    let v = Vault::open(d.path(), "alice", o).unwrap();
    for i in 0..10 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    let b = v
        .seal_next(&collector.recipient(), 1 << 20)
        .unwrap()
        .unwrap();
    let before = v.status().unwrap().records;
    assert!(matches!(
        v.ack(b.id(), None),
        Err(Error::InvalidArgument(_))
    ));
    let impostor = Identity::generate(Suite::X25519);
    assert!(matches!(
        v.ack(b.id(), Some(&impostor.receipt_for(b.digest()))),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        v.ack(b.id(), Some(&collector.receipt_for(&[7; 32]))),
        Err(Error::Tampered(_))
    ));
    assert!(matches!(
        v.ack(b.id(), Some(b"short")),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(v.status().unwrap().records, before, "nothing pruned");
    v.ack(b.id(), Some(&collector.receipt_for(b.digest())))
        .unwrap();
    assert_eq!(v.status().unwrap().records, 0);
    v.close().unwrap();
}

/// Retirement reads one user's log and destroys that user's keys only: a second user of
/// the same vault, with rotated keys and records under each, keeps every key and record
/// while the first acknowledges everything (and the first's old keys go).
#[test]
fn retiring_one_users_keys_leaves_another_users_alone() {
    let kind = KeyStoreKind::Keyutils;
    let d = tempfile::tempdir().unwrap();
    let moves_of = |v: &Vault| captured(&v.test_read_all().unwrap()).len();
    for user in ["alice", "bob"] {
        let v = Vault::open(d.path(), user, options(kind)).unwrap();
        for i in 0..300 {
            let _ = v.append_mouse_move(i, 1, 1).unwrap();
        }
        v.rotate_dek().unwrap();
        for i in 0..300 {
            let _ = v.append_mouse_move(i, 2, 2).unwrap();
        }
        v.close().unwrap();
    }
    let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
    let _ = drain(&v, &Identity::generate(Suite::X25519), 4000, false);
    let epochs: Vec<u32> = v.status().unwrap().epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, vec![2], "alice's first key went");
    v.close().unwrap();
    let v = Vault::open(d.path(), "bob", options(kind)).unwrap();
    let epochs: Vec<u32> = v.status().unwrap().epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, vec![1, 2], "bob keeps both keys");
    assert_eq!(moves_of(&v), 600);
    v.verify().unwrap();
    v.close().unwrap();
}

#[test]
fn after_everything_is_acknowledged_no_record_and_no_retired_key_remains() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
        for i in 0..1000 {
            let _ = v.append_mouse_move(i, 1, 1).unwrap();
        }
        v.rotate_dek().unwrap();
        for i in 0..1000 {
            let _ = v.append_mouse_move(i, 2, 2).unwrap();
        }
        let id = Identity::generate(Suite::X25519);
        let got = drain(&v, &id, 8000, false);
        assert_eq!(captured(&got).len(), 2000);
        let st = v.status().unwrap();
        assert_eq!(
            st.epochs.len(),
            1,
            "{kind:?}: only the current epoch's key is left: {:?}",
            st.epochs
        );
        assert_eq!(st.epochs[0].epoch, 2);
        v.close().unwrap();
        let db = capvault::testing::open_raw_db(d.path());
        let log = common::user_tree(&db, "alice", "log");
        assert_eq!(
            log.scan_prefix([0u8]).count(),
            0,
            "no record of the acked data is left"
        );
        let keys = common::user_tree(&db, "alice", "keys");
        let deks: Vec<_> = keys
            .scan_prefix(b"dek")
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        assert_eq!(deks.len(), 1, "retired data keys are gone");
    }
}

#[test]
fn a_crash_in_the_middle_of_an_ack_neither_loses_nor_repeats_data() {
    for point in [
        "ack:after-acking",
        "ack:after-prune",
        "ack:before-ledger-prune",
        "prune:before-batch",
    ] {
        let d = tempfile::tempdir().unwrap();
        let o = || options(KeyStoreKind::Keyutils);
        let v = Vault::open(d.path(), "alice", o()).unwrap();
        for i in 0..300 {
            let _ = v.append_mouse_move(i, 1, 1).unwrap();
        }
        let id = Identity::generate(Suite::X25519);
        let b = v.seal_next(&id.recipient(), 2000).unwrap().unwrap();
        let first = open_bundle(b.bytes(), &id).unwrap();
        capvault::testing::arm(point);
        assert!(v.ack(b.id(), None).is_err(), "{point}");
        drop(v);
        let v = Vault::open(d.path(), "alice", o()).unwrap();
        let _ = v.ack(b.id(), None);
        let rest = drain(&v, &id, 1 << 20, false);
        let mut all: Vec<i64> = captured(&first.events)
            .iter()
            .chain(captured(&rest).iter())
            .map(|e| e.ts_us())
            .collect();
        let n = all.len();
        all.dedup();
        assert_eq!(
            all,
            (0..300).collect::<Vec<_>>(),
            "{point}: every event once ({n} seen)"
        );
        v.verify().unwrap();
        v.close().unwrap();
    }
}

#[test]
fn subject_access_is_audited_and_the_ledger_travels_in_bundles() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    v.pause(Duration::from_secs(60)).unwrap();
    v.resume().unwrap();
    let mine = v.subject_access().unwrap();
    assert_eq!(captured(&mine).len(), 1);
    let actions: Vec<String> = v
        .audit_log()
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for a in ["open", "pause", "resume", "subject-access"] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    let id = Identity::generate(Suite::X25519);
    let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    let opened = open_bundle(b.bytes(), &id).unwrap();
    assert!(
        opened.audit.iter().any(|e| e.action == "pause"),
        "the collector sees pauses"
    );
    v.ack(b.id(), None).unwrap();
    let actions: Vec<String> = v
        .audit_log()
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.iter().any(|x| x == "seal") && actions.iter().any(|x| x == "ack"));
    v.close().unwrap();
}

#[test]
fn a_tampered_ledger_is_detected() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    v.pause(Duration::from_secs(5)).unwrap();
    v.resume().unwrap();
    v.close().unwrap();
    {
        let db = capvault::testing::open_raw_db(d.path());
        let t = common::user_tree(&db, "alice", "ledger");
        let mut k = vec![0u8];
        k.extend_from_slice(&2u64.to_be_bytes());
        let mut val = t.get(&k).unwrap().unwrap().to_vec();
        let i = val.len() - 20;
        val[i] ^= 1;
        t.insert(k, val).unwrap();
        db.flush().unwrap();
    }
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    assert!(matches!(v.audit_log(), Err(Error::Tampered(_))));
    assert!(matches!(v.verify(), Err(Error::Tampered(_))));
    v.close().unwrap();
}

#[test]
fn erase_leaves_nothing_readable() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
        let _ = v.append_window_focus(1, "chat", "ERASE-ME-TITLE").unwrap();
        let vault_id = v.status().unwrap().vault_id;
        v.rotate_kek().unwrap();
        v.erase_open().unwrap();
        for ver in 1..=3 {
            assert!(
                common::keychain_secret(kind, &common::kek_name(&vault_id, "alice", ver)).is_none(),
                "{kind:?} KEK v{ver} deleted"
            );
        }
        assert!(matches!(
            Vault::open(d.path(), "alice", options(kind)),
            Err(Error::Erased)
        ));
        // Another user of the same vault is unaffected.
        Vault::open(d.path(), "bob", options(kind))
            .unwrap()
            .close()
            .unwrap();
    }
}

#[test]
fn retention_removes_old_records_and_their_keys_with_a_loss_marker() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.retention_secs = 1;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    for i in 0..100 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.flush().unwrap();
    v.rotate_dek().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = v.status().unwrap();
        if st.epochs.iter().all(|e| e.epoch != 1) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "epoch 1 was never retired: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = v.test_read_all().unwrap();
    assert!(captured(&left).is_empty(), "old events are gone");
    let losses: Vec<_> = left
        .iter()
        .filter_map(|e| match &e.event {
            Event::Marker {
                marker: Marker::Loss {
                    reason, records, ..
                },
                ..
            } => Some((*reason, *records)),
            _ => None,
        })
        .collect();
    assert!(
        losses
            .iter()
            .any(|(r, n)| *r == LossReason::Retention && *n > 0),
        "{losses:?}"
    );
    v.close().unwrap();
}

#[test]
fn the_byte_budget_holds_under_sustained_capture() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.budget_bytes = 4 << 20;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let shot = noise(500_000, 9);
    let mut peak_stored = 0;
    let mut disk = Vec::new();
    for round in 0..60 {
        let _ = v.append_screenshot(round, 100, 100, "png", &shot).unwrap();
        for i in 0..2000 {
            let _ = v.append_mouse_move(i, 1, 1).unwrap();
        }
        v.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
        let st = v.status().unwrap();
        peak_stored = peak_stored.max(st.stored_bytes);
        disk.push(st.disk_bytes);
    }
    // Eviction runs every half second; between runs the log may overshoot by what was
    // appended meanwhile (here at most a few rounds).
    assert!(
        peak_stored < 12 << 20,
        "stored bytes stayed near the budget: {peak_stored}"
    );
    // Disk use in the last quarter is no larger than in the middle of the run (with room
    // for sled's segment granularity): it stopped growing.
    let mid_max = *disk[20..45].iter().max().unwrap();
    let late_max = *disk[45..].iter().max().unwrap();
    assert!(
        late_max <= mid_max + mid_max / 4,
        "disk use levels off: {disk:?}"
    );
    let all = v.test_read_all().unwrap();
    assert!(all.iter().any(|e| matches!(
        e.event,
        Event::Marker {
            marker: Marker::Loss {
                reason: LossReason::Budget,
                ..
            },
            ..
        }
    )));
    v.close().unwrap();
}

#[test]
fn the_refuse_budget_reports_storage_full() {
    let d = tempfile::tempdir().unwrap();
    let v = refusing_vault(d.path(), 1 << 20);
    let shot = noise(300_000, 3);
    let mut full = false;
    for i in 0..10 {
        match v.append_screenshot(i, 1, 1, "png", &shot) {
            Ok(_) => v.flush().unwrap(),
            Err(Error::StorageFull(_)) => {
                full = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full);
    // Releasing data makes room again.
    let id = Identity::generate(Suite::X25519);
    drain(&v, &id, 1 << 22, false);
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    v.close().unwrap();
}

/// A vault whose byte budget of `budget` refuses new data once used up.
fn refusing_vault(dir: &std::path::Path, budget: u64) -> Vault {
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.budget_bytes = budget;
    o.policy.on_budget = capvault::BudgetAction::Refuse;
    Vault::open(dir, "alice", o).unwrap()
}

/// The writer holds records nobody flushed for up to 0.5 s (or 1 MiB); a refusing budget
/// is still kept to within one payload: the append path's check counts the bytes handed
/// to the writer and not yet written as well as those on disk.
#[test]
fn the_refuse_budget_holds_without_flushes() {
    let d = tempfile::tempdir().unwrap();
    let budget = 4u64 << 20;
    let v = refusing_vault(d.path(), budget);
    let shot = noise(200_000, 5);
    let mut refused = None;
    for i in 0..100 {
        match v.append_screenshot(i, 1, 1, "png", &shot) {
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(30)),
            Err(Error::StorageFull(_)) => {
                refused = Some(i);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let stored = v.status().unwrap().stored_bytes;
    assert!(refused.is_some(), "never refused: {stored} bytes stored");
    v.flush().unwrap();
    let stored = v.status().unwrap().stored_bytes;
    assert!(
        stored <= budget + shot.len() as u64 + (64 << 10),
        "{stored} bytes stored against a budget of {budget}"
    );
    v.close().unwrap();
}

#[test]
fn a_policy_change_is_bound_into_later_records_and_marked() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    v.close().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.version = 2;
    o.policy.purpose = "ui-automation-training".into();
    // The same version with different settings is refused.
    let mut same_version = options(KeyStoreKind::Keyutils);
    same_version.policy.screenshots = false;
    assert!(matches!(
        Vault::open(d.path(), "alice", same_version),
        Err(Error::InvalidArgument(_))
    ));
    let v = Vault::open(d.path(), "alice", o.clone()).unwrap();
    let _ = v.append_mouse_move(2, 2, 2).unwrap();
    let all = v.test_read_all().unwrap();
    assert!(all.iter().any(|e| matches!(
        e.event,
        Event::Marker {
            marker: Marker::PolicyChanged { version: 2 },
            ..
        }
    )));
    v.verify().unwrap();
    v.close().unwrap();
    // The record headers name the policy version (it is also in the associated data).
    let seqs: Vec<u64> = {
        let db = capvault::testing::open_raw_db(d.path());
        common::user_tree(&db, "alice", "log")
            .scan_prefix([0u8])
            .keys()
            .map(|k| u64::from_be_bytes(k.unwrap()[1..].try_into().unwrap()))
            .collect()
    };
    let versions: Vec<u32> = seqs
        .iter()
        .map(|s| {
            let (_, _, v) = common::record_entry(d.path(), "alice", *s);
            u32::from_be_bytes(v[7..11].try_into().unwrap())
        })
        .collect();
    assert_eq!(versions.first(), Some(&1));
    assert_eq!(versions.last(), Some(&2));
}

#[test]
fn disk_use_levels_off_with_continuous_seal_and_ack() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.budget_bytes = 8 << 20;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let id = Identity::generate(Suite::X25519);
    let shot = noise(20_000, 5);
    // Each cycle rewrites the release state, its anchor and the heads: what sled keeps of
    // replaced values must come back, not only the records' bytes (the database grew by
    // about 9 KB per cycle without bound while sled's segments were 4 MiB).
    let mut disk = Vec::new();
    for round in 0..600 {
        let _ = v.append_screenshot(round, 100, 100, "png", &shot).unwrap();
        for i in 0..100 {
            let _ = v.append_mouse_move(i, 1, 1).unwrap();
        }
        // An uploader that keeps up: everything sealed is acknowledged.
        while let Some(b) = v.seal_next(&id.recipient(), 2 << 20).unwrap() {
            v.ack(b.id(), None).unwrap();
        }
        disk.push(v.status().unwrap().disk_bytes);
    }
    let st = v.status().unwrap();
    assert_eq!(st.records, 0, "everything was released");
    let mid = *disk[200..400].iter().max().unwrap();
    let late = *disk[400..].iter().max().unwrap();
    assert!(
        late <= mid + mid / 4,
        "disk use levels off with uploads: {:?}",
        disk.iter().step_by(25).collect::<Vec<_>>()
    );
    v.close().unwrap();
}

#[test]
fn a_vault_made_with_larger_database_segments_still_opens_and_keeps_them() {
    let d = tempfile::tempdir().unwrap();
    // The database of a vault from before the segment files (4 MiB sled segments).
    drop(
        sled::Config::new()
            .path(d.path())
            .segment_size(4 << 20)
            .open()
            .unwrap(),
    );
    let o = || options(KeyStoreKind::Keyutils);
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    let _ = v.append_mouse_move(1, 2, 3).unwrap();
    v.close().unwrap();
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    assert_eq!(v.status().unwrap().records, 1);
    v.verify().unwrap();
    v.close().unwrap();
    let conf = String::from_utf8_lossy(&std::fs::read(d.path().join("conf")).unwrap()).to_string();
    assert!(conf.contains("segment_size: 4194304"), "{conf}");

    // A new vault gets small ones.
    let d = tempfile::tempdir().unwrap();
    Vault::open(d.path(), "alice", o())
        .unwrap()
        .close()
        .unwrap();
    let conf = String::from_utf8_lossy(&std::fs::read(d.path().join("conf")).unwrap()).to_string();
    assert!(conf.contains("segment_size: 262144"), "{conf}");
}

#[test]
fn an_erase_interrupted_after_the_keychain_is_finished_by_erasing_again() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
        let _ = v.append_mouse_move(1, 1, 1).unwrap();
        v.rotate_kek().unwrap();
        let vault_id = v.status().unwrap().vault_id;
        capvault::testing::arm("erase:after-keychain");
        assert!(v.erase_open().is_err());
        // The keys went first: the interruption left data, but no key to read it.
        for ver in 1..=3 {
            assert!(
                common::keychain_secret(kind, &common::kek_name(&vault_id, "alice", ver)).is_none(),
                "{kind:?}: KEK v{ver} deleted before anything else"
            );
        }
        assert!(d.path().join("db").exists(), "the data was not removed yet");
        assert!(matches!(
            Vault::open(d.path(), "alice", options(kind)),
            Err(Error::Erased)
        ));
        Vault::erase(d.path(), "alice", options(kind)).unwrap();
        assert!(!d.path().join("db").exists(), "{kind:?}: the data is gone");
        assert!(Vault::erasure(d.path(), "alice").unwrap().verified);
    }
}

#[test]
fn a_crash_before_key_retirement_is_finished_on_open() {
    let d = tempfile::tempdir().unwrap();
    let o = || options(KeyStoreKind::Keyutils);
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    v.rotate_dek().unwrap();
    let id = Identity::generate(Suite::X25519);
    let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    capvault::testing::arm("retire:before-batch");
    assert!(v.ack(b.id(), None).is_err());
    assert!(
        v.status().unwrap().epochs.iter().any(|e| e.epoch == 1),
        "epoch 1's key survived the failure"
    );
    drop(v);
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    let st = v.status().unwrap();
    assert_eq!(
        st.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![2],
        "retired on open"
    );
    assert_eq!(st.records, 0, "everything was released");
    v.verify().unwrap();
    v.close().unwrap();
}

/// The outbox file of `user` (the sealed, unacknowledged bundle), and its temp name.
fn outbox_files(dir: &std::path::Path, user: &str) -> [std::path::PathBuf; 2] {
    let d = capvault::testing::segment_dir(dir, user);
    [d.join("outbox"), d.join("outbox.tmp")]
}

#[test]
fn the_pending_bundle_is_kept_encrypted_in_a_file_that_goes_with_its_ack() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    let shot = noise(200_000, 9);
    let _ = v.append_screenshot(1, 10, 10, "raw", &shot).unwrap();
    let id = Identity::generate(Suite::X25519);
    let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    let [outbox, temp] = outbox_files(d.path(), "alice");
    let kept = std::fs::read(&outbox).unwrap();
    assert!(kept.len() > b.bytes().len(), "the whole bundle is kept");
    assert!(
        !common::contains(&kept, &b.bytes()[b.bytes().len() - 4096..]),
        "the outbox file holds the bundle encrypted, not as sent"
    );
    assert!(!temp.exists());
    v.close().unwrap();
    {
        let db = capvault::testing::open_raw_db(d.path());
        let state = common::user_tree(&db, "alice", "state");
        assert!(
            state.get(b"outbox").unwrap().is_none(),
            "the bundle is not in the database"
        );
    }
    // After a reopen the same bytes come back, and the ack takes the file.
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    let again = v.seal_next(&id.recipient(), 10).unwrap().unwrap();
    assert_eq!(again.bytes(), b.bytes());
    v.ack(b.id(), None).unwrap();
    assert!(!outbox.exists(), "the acknowledged bundle's file is gone");
    assert!(v.seal_next(&id.recipient(), 1 << 20).unwrap().is_none());
    v.verify().unwrap();
    v.close().unwrap();
}

#[test]
fn a_seal_that_dies_before_its_state_is_saved_leaves_no_outbox_and_loses_nothing() {
    for point in ["outbox:before-rename", "seal:after-outbox"] {
        let d = tempfile::tempdir().unwrap();
        let o = || options(KeyStoreKind::Keyutils);
        let v = Vault::open(d.path(), "alice", o()).unwrap();
        for i in 0..500 {
            let _ = v.append_mouse_move(i, 1, 1).unwrap();
        }
        let id = Identity::generate(Suite::X25519);
        capvault::testing::arm(point);
        assert!(v.seal_next(&id.recipient(), 1 << 20).is_err(), "{point}");
        drop(v);
        let [outbox, temp] = outbox_files(d.path(), "alice");
        assert!(
            outbox.exists() || temp.exists(),
            "{point}: the crash left a file behind"
        );
        let v = Vault::open(d.path(), "alice", o()).unwrap();
        assert!(
            !outbox.exists() && !temp.exists(),
            "{point}: a file no state names is removed at open"
        );
        let events = drain(&v, &id, 1 << 20, false);
        let ts: Vec<i64> = captured(&events).iter().map(|e| e.ts_us()).collect();
        assert_eq!(ts, (0..500).collect::<Vec<_>>(), "{point}");
        v.verify().unwrap();
        v.close().unwrap();
    }
}

#[test]
fn a_removed_or_swapped_outbox_file_is_tampering() {
    let d = tempfile::tempdir().unwrap();
    let o = || options(KeyStoreKind::Keyutils);
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    let id = Identity::generate(Suite::X25519);
    let [outbox, _] = outbox_files(d.path(), "alice");
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    let first = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    let old = std::fs::read(&outbox).unwrap();
    v.ack(first.id(), None).unwrap();
    let _ = v.append_mouse_move(2, 1, 1).unwrap();
    let second = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    let current = std::fs::read(&outbox).unwrap();
    v.close().unwrap();

    // An earlier bundle of this very vault put in its place: authentic, but not the
    // bundle the state names.
    std::fs::write(&outbox, &old).unwrap();
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    match v.seal_next(&id.recipient(), 1 << 20) {
        Err(Error::Tampered(m)) => assert!(m.contains("not the pending bundle"), "{m}"),
        other => panic!("an old outbox file was accepted: {other:?}"),
    }
    // A flipped byte.
    let mut flipped = current.clone();
    flipped[40] ^= 1;
    std::fs::write(&outbox, &flipped).unwrap();
    match v.seal_next(&id.recipient(), 1 << 20) {
        Err(Error::Tampered(m)) => assert!(m.contains("does not authenticate"), "{m}"),
        other => panic!("a damaged outbox file was accepted: {other:?}"),
    }
    // Removed.
    std::fs::remove_file(&outbox).unwrap();
    match v.seal_next(&id.recipient(), 1 << 20) {
        Err(Error::Tampered(m)) => assert!(m.contains("missing from the outbox"), "{m}"),
        other => panic!("a missing outbox file went unnoticed: {other:?}"),
    }
    // Put back, the same bundle goes out.
    std::fs::write(&outbox, &current).unwrap();
    let again = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    assert_eq!(again.bytes(), second.bytes());
    v.close().unwrap();
}

#[test]
fn a_bundle_sealed_by_an_earlier_version_into_the_database_is_still_delivered() {
    let d = tempfile::tempdir().unwrap();
    let o = || options(KeyStoreKind::Keyutils);
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    for i in 0..100 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    let id = Identity::generate(Suite::X25519);
    let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    v.close().unwrap();
    // Records and the outbox entry back in the database, as earlier versions kept them.
    capvault::testing::write_records_inline(d.path(), "alice").unwrap();
    let [outbox, _] = outbox_files(d.path(), "alice");
    assert!(!outbox.exists());
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    let again = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    assert_eq!(again.bytes(), b.bytes());
    v.ack(b.id(), None).unwrap();
    v.close().unwrap();
    {
        let db = capvault::testing::open_raw_db(d.path());
        let state = common::user_tree(&db, "alice", "state");
        assert!(state.get(b"outbox").unwrap().is_none(), "acknowledged");
    }
    let v = Vault::open(d.path(), "alice", o()).unwrap();
    assert!(v.seal_next(&id.recipient(), 1 << 20).unwrap().is_none());
    v.verify().unwrap();
    v.close().unwrap();
}
