//! The core vault against real keychains and real sled files: round trips, no plaintext
//! at rest, tamper detection, per-user isolation, concurrency, rotation, one owner.
mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use capvault::{Appended, Error, Event, KeyStoreKind, Marker, SeqEvent, Vault};
use common::{contains, files_under, options, stores};

const SECRET_TITLE: &str = "TITLE-7f3a9c-private-chat-with-hr";
const SECRET_TEXT: &str = "TYPED-51be2d";
const SECRET_CUSTOM: &[u8] = b"CUSTOM-PAYLOAD-e4d1b0";

fn screenshot_bytes(len: usize) -> Vec<u8> {
    // Incompressible but recognisable: a marker, pseudo-random bytes, and a marker at the
    // end (in the payload's last chunk, which the writer seals where it lies).
    let mut v = b"SCREENSHOT-MARKER-c0ffee".to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    let tail = SCREENSHOT_TAIL.len();
    if len >= 2 * tail {
        v[len - tail..].copy_from_slice(SCREENSHOT_TAIL);
    }
    v
}

const SCREENSHOT_TAIL: &[u8] = b"SCREENSHOT-TAIL-0ddba11";

fn every_event() -> Vec<Event> {
    vec![
        Event::MouseMove {
            ts_us: 10,
            x: 100,
            y: -5,
        },
        Event::MouseButton {
            ts_us: 11,
            button: 1,
            pressed: true,
            x: 100,
            y: -5,
        },
        Event::Scroll {
            ts_us: 12,
            dx: 0,
            dy: -120,
        },
        Event::key(13, 0x04, true, Some(SECRET_TEXT.into())),
        Event::WindowFocus {
            ts_us: 14,
            app: "chat".into(),
            title: SECRET_TITLE.into(),
        },
        Event::Screenshot {
            ts_us: 15,
            width: 800,
            height: 600,
            format: "png".into(),
            data: screenshot_bytes(300_000),
        },
        Event::Custom {
            ts_us: 16,
            kind: "clipboard-meta".into(),
            data: SECRET_CUSTOM.to_vec(),
        },
        Event::Screenshot {
            ts_us: 17,
            width: 2,
            height: 2,
            format: "raw".into(),
            data: b"SMALL-SHOT-77".to_vec(),
        },
    ]
}

fn text_level(kind: KeyStoreKind) -> capvault::VaultOptions {
    let mut o = options(kind);
    o.policy.keystrokes = capvault::KeystrokeLevel::Text;
    o
}

fn captured(events: &[SeqEvent]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| !matches!(e.event, Event::Marker { .. }))
        .map(|e| e.event.clone())
        .collect()
}

fn all_bytes_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

#[test]
fn every_event_type_round_trips_through_flush_and_reopen() {
    for kind in stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", text_level(kind)).unwrap();
        for e in every_event() {
            assert_eq!(v.append(e).unwrap(), Appended::Stored);
        }
        v.flush().unwrap();
        v.close().unwrap();
        let v = Vault::open(d.path(), "alice", text_level(kind)).unwrap();
        let got = v.test_read_all().unwrap();
        assert_eq!(captured(&got), every_event(), "{kind:?}");
        // Event sequence numbers are consecutive.
        for w in got.windows(2) {
            assert_eq!(w[1].seq, w[0].seq + 1);
        }
        let report = v.verify().unwrap();
        assert_eq!(report.events, got.len() as u64);
        v.close().unwrap();
    }
}

#[test]
fn no_plaintext_or_key_bytes_anywhere_in_the_vault_directory() {
    for kind in stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", text_level(kind)).unwrap();
        for e in every_event() {
            let _ = v.append(e).unwrap();
        }
        v.flush().unwrap();
        let status = v.status().unwrap();
        let kek = common::keychain_secret(kind, &common::kek_name(&status.vault_id, "alice", 1))
            .expect("the KEK is in the keychain");
        assert_eq!(kek.len(), 32);
        let needles: Vec<&[u8]> = vec![
            SECRET_TITLE.as_bytes(),
            SECRET_TEXT.as_bytes(),
            SECRET_CUSTOM,
            b"SCREENSHOT-MARKER-c0ffee",
            SCREENSHOT_TAIL,
            b"SMALL-SHOT-77",
            &kek,
        ];
        let check = |when: &str| {
            for (path, bytes) in all_bytes_under(d.path()) {
                for n in &needles {
                    assert!(
                        !contains(&bytes, n),
                        "{kind:?} {when}: {} contains a secret",
                        path.display()
                    );
                }
            }
        };
        check("after flush");
        v.close().unwrap();
        check("after close");
    }
}

/// Opens the raw sled database of a closed vault for tampering.
fn raw_log(dir: &Path, user: &str) -> (sled::Db, sled::Tree) {
    let db = capvault::testing::open_raw_db(dir);
    let t = common::user_tree(&db, user, "log");
    (db, t)
}

fn rec_key(seq: u64) -> Vec<u8> {
    let mut k = vec![0u8];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A closed vault with several records (small frames so there are many).
fn vault_with_records(kind: KeyStoreKind) -> (tempfile::TempDir, u64) {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(kind);
    o.frame_max_bytes = 256;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    for i in 0..1000 {
        let _ = v.append_mouse_move(i, i as i32, 0).unwrap();
    }
    v.flush().unwrap();
    let last = v.status().unwrap().last_record;
    assert!(last >= 6, "{last}");
    v.close().unwrap();
    (d, last)
}

fn small_frames(kind: KeyStoreKind) -> capvault::VaultOptions {
    let mut o = options(kind);
    o.frame_max_bytes = 256;
    o
}

/// Opening or verifying must report tampering.
fn assert_detected(dir: &Path, kind: KeyStoreKind, what: &str) -> String {
    match Vault::open(dir, "alice", small_frames(kind)) {
        Err(Error::Tampered(m)) => m,
        Err(e) => panic!("{what}: open failed with {e} instead of a tamper error"),
        Ok(v) => match v.verify() {
            Err(Error::Tampered(m)) => m,
            r => panic!("{what}: verify said {r:?}"),
        },
    }
}

#[test]
fn tampering_with_records_is_detected() {
    let kind = KeyStoreKind::Keyutils;
    // Record bytes are edited in their segment with every checksum fixed up (only the
    // AEAD and the chain can tell); the index is edited in the raw database.
    type Forge = fn(&std::path::Path, u64);
    let forgeries: Vec<(&str, Forge)> = vec![
        ("flip a byte inside a record", |d, _| {
            common::forge_record(d, "alice", 3, |v| {
                let i = v.len() / 2;
                v[i] ^= 0x01;
            })
        }),
        ("flip a byte in a record header", |d, _| {
            common::forge_record(d, "alice", 2, |v| v[4] ^= 0x01)
        }),
        ("swap two records' entries", |d, _| {
            let (p2, o2, b2) = common::record_entry(d, "alice", 2);
            let (p4, o4, b4) = common::record_entry(d, "alice", 4);
            common::forge_entry(d, "alice", 2, &p4, o4, &b4);
            common::forge_entry(d, "alice", 4, &p2, o2, &b2);
        }),
        (
            "replay an old record's bytes over a newer one of the same length",
            |d, last| {
                let lens: Vec<usize> = (1..=last)
                    .map(|s| common::record_entry(d, "alice", s).2.len())
                    .collect();
                let (old, new) = (0..lens.len())
                    .flat_map(|a| (a + 1..lens.len()).map(move |b| (a, b)))
                    .find(|(a, b)| lens[*a] == lens[*b])
                    .expect("two records of the same length");
                let (_, _, bytes) = common::record_entry(d, "alice", old as u64 + 1);
                let (p, o, _) = common::record_entry(d, "alice", new as u64 + 1);
                common::forge_entry(d, "alice", new as u64 + 1, &p, o, &bytes);
            },
        ),
    ];
    for (what, forge) in forgeries {
        let (d, last) = vault_with_records(kind);
        forge(d.path(), last);
        let m = assert_detected(d.path(), kind, what);
        assert!(
            !m.contains("damaged"),
            "{what}: caught by authentication, not by a checksum: {m}"
        );
    }
    type Edit = fn(&sled::Tree, u64);
    let edits: Vec<(&str, Edit)> = vec![
        ("delete a middle record", |t, _| {
            t.remove(rec_key(3)).unwrap();
        }),
        ("delete the first record", |t, _| {
            t.remove(rec_key(1)).unwrap();
        }),
        ("delete the last record", |t, last| {
            t.remove(rec_key(last)).unwrap();
        }),
        ("swap two records", |t, _| {
            let a = t.get(rec_key(2)).unwrap().unwrap();
            let b = t.get(rec_key(4)).unwrap().unwrap();
            t.insert(rec_key(2), b).unwrap();
            t.insert(rec_key(4), a).unwrap();
        }),
        ("replay an old record at a new seq", |t, last| {
            let a = t.get(rec_key(2)).unwrap().unwrap();
            t.insert(rec_key(last + 1), a).unwrap();
        }),
        ("replay an old record over a newer one", |t, _| {
            let a = t.get(rec_key(2)).unwrap().unwrap();
            t.insert(rec_key(5), a).unwrap();
        }),
    ];
    for (what, edit) in edits {
        let (d, last) = vault_with_records(kind);
        {
            let (db, t) = raw_log(d.path(), "alice");
            edit(&t, last);
            db.flush().unwrap();
        }
        assert_detected(d.path(), kind, what);
    }
}

#[test]
fn rolling_the_head_back_is_detected() {
    let kind = KeyStoreKind::Keyutils;
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", small_frames(kind)).unwrap();
    for i in 0..50 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.flush().unwrap();
    v.close().unwrap();
    let old_head = {
        let (_db, t) = raw_log(d.path(), "alice");
        t.get([1u8, b'h']).unwrap().unwrap()
    };
    let v = Vault::open(d.path(), "alice", small_frames(kind)).unwrap();
    for i in 0..50 {
        let _ = v.append_mouse_move(100 + i, 2, 2).unwrap();
    }
    v.flush().unwrap();
    v.close().unwrap();
    {
        let (db, t) = raw_log(d.path(), "alice");
        t.insert([1u8, b'h'], old_head).unwrap();
        db.flush().unwrap();
    }
    assert_detected(d.path(), kind, "head rolled back");
}

#[test]
fn another_users_keys_cannot_open_a_users_records() {
    for kind in stores() {
        let d = tempfile::tempdir().unwrap();
        let a = Vault::open(d.path(), "alice", text_level(kind)).unwrap();
        let _ = a.append_window_focus(1, "app", SECRET_TITLE).unwrap();
        a.close().unwrap();
        let b = Vault::open(d.path(), "bob", text_level(kind)).unwrap();
        let _ = b.append_window_focus(2, "app", "bob's window").unwrap();
        b.close().unwrap();
        // Graft alice's log (records and anchors) into bob's tree.
        {
            let (db, ta) = raw_log(d.path(), "alice");
            let tb = common::user_tree(&db, "bob", "log");
            tb.clear().unwrap();
            for item in ta.iter() {
                let (k, v) = item.unwrap();
                tb.insert(k, v).unwrap();
            }
            db.flush().unwrap();
        }
        let r = Vault::open(d.path(), "bob", text_level(kind));
        assert!(
            matches!(r, Err(Error::Tampered(_))),
            "{kind:?}: bob opened alice's log: {r:?}"
        );
        // Records only, under bob's own anchors: they do not authenticate either.
        let a = Vault::open(d.path(), "alice", text_level(kind)).unwrap();
        let got = a.test_read_all().unwrap();
        assert_eq!(captured(&got).len(), 1);
        a.close().unwrap();
    }
}

#[test]
fn eight_threads_appending_lose_nothing_and_duplicate_nothing() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    const PER: i32 = 20_000;
    std::thread::scope(|s| {
        for t in 0..8 {
            let v = &v;
            s.spawn(move || {
                for i in 0..PER {
                    assert_eq!(
                        v.append_mouse_move(i as i64, t, i).unwrap(),
                        Appended::Stored
                    );
                }
            });
        }
    });
    v.flush().unwrap();
    let got = v.test_read_all().unwrap();
    let mut seen = HashSet::new();
    for e in &got {
        if let Event::MouseMove { x, y, .. } = e.event {
            assert!(seen.insert((x, y)), "duplicate ({x},{y})");
        }
    }
    assert_eq!(seen.len(), 8 * PER as usize);
    // Per thread, order is preserved.
    for t in 0..8 {
        let ys: Vec<i32> = got
            .iter()
            .filter_map(|e| match e.event {
                Event::MouseMove { x, y, .. } if x == t => Some(y),
                _ => None,
            })
            .collect();
        assert!(ys.windows(2).all(|w| w[0] < w[1]));
    }
    v.close().unwrap();
}

#[test]
fn dek_and_kek_rotation_keep_everything_readable() {
    for kind in stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
        let _ = v.append_mouse_move(1, 1, 1).unwrap();
        assert_eq!(v.rotate_dek().unwrap(), 2);
        let _ = v.append_mouse_move(2, 2, 2).unwrap();
        assert_eq!(v.rotate_kek().unwrap(), 2);
        let _ = v.append_mouse_move(3, 3, 3).unwrap();
        let status = v.status().unwrap();
        assert_eq!(status.kek_version, 2);
        assert!(
            common::keychain_secret(kind, &common::kek_name(&status.vault_id, "alice", 1))
                .is_none(),
            "old KEK deleted"
        );
        assert!(
            common::keychain_secret(kind, &common::kek_name(&status.vault_id, "alice", 2))
                .is_some()
        );
        v.close().unwrap();
        let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
        let got = captured(&v.test_read_all().unwrap());
        assert_eq!(got.len(), 3, "{kind:?}");
        let markers: Vec<_> = v
            .test_read_all()
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Marker { marker, .. } => Some(marker),
                _ => None,
            })
            .collect();
        assert!(markers.contains(&Marker::KeyRotated { epoch: 2 }));
        v.verify().unwrap();
        v.close().unwrap();
    }
}

#[test]
fn a_failure_between_kek_rotation_steps_leaves_a_readable_vault() {
    for point in [
        "kek-rotate:after-keychain-put",
        "kek-rotate:after-marker",
        "kek-rotate:after-rewrap",
        "kek-rotate:after-keychain-delete",
    ] {
        for kind in stores() {
            let d = tempfile::tempdir().unwrap();
            let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
            let _ = v.append_mouse_move(1, 1, 1).unwrap();
            v.rotate_dek().unwrap();
            let _ = v.append_mouse_move(2, 2, 2).unwrap();
            capvault::testing::arm(point);
            let r = v.rotate_kek();
            assert!(r.is_err(), "{point}: the armed failure fired");
            // The process "dies" here: drop without a clean rotation.
            drop(v);
            let v = Vault::open(d.path(), "alice", options(kind))
                .unwrap_or_else(|e| panic!("{point} {kind:?}: reopen failed: {e}"));
            assert_eq!(
                captured(&v.test_read_all().unwrap()).len(),
                2,
                "{point} {kind:?}"
            );
            v.verify().unwrap();
            // The vault can rotate again afterwards.
            v.rotate_kek().unwrap();
            v.close().unwrap();
        }
    }
}

#[test]
fn pause_drops_and_counts_events_and_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let kind = KeyStoreKind::Keyutils;
    let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    let until = v.pause(Duration::from_secs(3600)).unwrap();
    // Capped at the policy's 30 minutes.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    assert!(until <= now + 30 * 60 * 1_000_000 + 1_000_000);
    assert_eq!(v.append_mouse_move(2, 2, 2).unwrap(), Appended::Paused);
    v.close().unwrap();
    let v = Vault::open(d.path(), "alice", options(kind)).unwrap();
    assert_eq!(v.append_mouse_move(3, 3, 3).unwrap(), Appended::Paused);
    assert_eq!(v.pause_state().unwrap().dropped, 2);
    v.resume().unwrap();
    assert_eq!(v.append_mouse_move(4, 4, 4).unwrap(), Appended::Stored);
    let all = v.test_read_all().unwrap();
    let got = captured(&all);
    assert_eq!(
        got,
        vec![
            Event::MouseMove {
                ts_us: 1,
                x: 1,
                y: 1
            },
            Event::MouseMove {
                ts_us: 4,
                x: 4,
                y: 4
            }
        ]
    );
    let markers: Vec<_> = all
        .iter()
        .filter_map(|e| match &e.event {
            Event::Marker { marker, .. } => Some(marker.clone()),
            _ => None,
        })
        .collect();
    assert!(matches!(markers[0], Marker::PauseStart { .. }));
    assert_eq!(markers[1], Marker::PauseEnd { dropped: 2 });
    v.close().unwrap();
}

#[test]
fn the_time_bound_seals_frames_without_a_flush() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.frame_max_ms = 20;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while v.status().unwrap().records == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the frame was never sealed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    v.close().unwrap();
}

#[test]
fn bad_input_gets_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    assert!(matches!(
        Vault::open(d.path(), "", options(KeyStoreKind::Keyutils)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Vault::open(d.path(), "a\nb", options(KeyStoreKind::Keyutils)),
        Err(Error::InvalidArgument(_))
    ));
    let mut o = options(KeyStoreKind::Keyutils);
    o.max_payload_bytes = 1000;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    assert!(matches!(
        v.append_custom(1, "k", &[0; 1001]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        v.append(Event::Marker {
            ts_us: 1,
            marker: Marker::DenyListGapStart
        }),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        v.pause(Duration::ZERO),
        Err(Error::InvalidArgument(_))
    ));
    v.close().unwrap();
}

/// Run in a child process by `a_second_process_gets_the_in_use_error`.
#[test]
#[ignore = "helper: run by a_second_process_gets_the_in_use_error in a child process"]
fn child_opens_vault() {
    let dir = std::env::var("CAPVAULT_CHILD_DIR").expect("set by the parent test");
    match Vault::open(dir, "alice", options(KeyStoreKind::Keyutils)) {
        Err(Error::InUse) => println!("CHILD-SAW-IN-USE"),
        other => println!("CHILD-SAW-{other:?}"),
    }
}

#[test]
fn a_second_process_gets_the_in_use_error() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils)).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child_opens_vault", "--nocapture"])
        .env("CAPVAULT_CHILD_DIR", d.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CHILD-SAW-IN-USE"), "{stdout}");
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    v.close().unwrap();
    // After close the directory is free again.
    Vault::open(d.path(), "alice", options(KeyStoreKind::Keyutils))
        .unwrap()
        .close()
        .unwrap();
}

#[test]
fn a_vault_remembers_its_keychain_and_policy() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.version = 3;
    o.policy.screenshots = false;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    v.close().unwrap();
    // auto + default policy: the recorded keychain and policy are used.
    let v = Vault::open(d.path(), "alice", capvault::VaultOptions::default()).unwrap();
    let st = v.status().unwrap();
    assert_eq!(st.keystore, KeyStoreKind::Keyutils);
    assert_eq!(st.policy_version, 3);
    assert_eq!(
        v.append_screenshot(2, 1, 1, "png", b"x").unwrap(),
        Appended::Filtered
    );
    v.close().unwrap();
    // Asking for another keychain explicitly is refused with a clear message.
    let e = Vault::open(d.path(), "alice", options(KeyStoreKind::SecretService)).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument(_)) && e.to_string().contains("keyutils"),
        "{e}"
    );
}

#[test]
fn sealing_a_tampered_log_fails_and_releases_nothing() {
    let kind = KeyStoreKind::Keyutils;
    let (d, _) = vault_with_records(kind);
    {
        let (db, t) = raw_log(d.path(), "alice");
        let mut v = t.get(rec_key(3)).unwrap().unwrap().to_vec();
        let i = v.len() / 2;
        v[i] ^= 0x01;
        t.insert(rec_key(3), v).unwrap();
        db.flush().unwrap();
    }
    // The ends still match, so the vault opens; the walk to seal finds the edit.
    let v = Vault::open(d.path(), "alice", small_frames(kind)).unwrap();
    let id = capvault::Identity::generate(capvault::Suite::X25519);
    let r = v.seal_next(&id.recipient(), 1 << 20);
    assert!(matches!(r, Err(Error::Tampered(_))), "{r:?}");
    v.close().unwrap();
}

#[test]
fn a_short_kek_rotation_marker_is_tampering_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let kind = KeyStoreKind::Keyutils;
    Vault::open(d.path(), "alice", options(kind))
        .unwrap()
        .close()
        .unwrap();
    for marker in [
        &b""[..],
        b"\x00\x00\x00",
        b"\x00\x00\x00\x01\x00\x00\x00\x02\x00",
    ] {
        {
            let db = capvault::testing::open_raw_db(d.path());
            common::user_tree(&db, "alice", "keys")
                .insert("kek_rotation", marker)
                .unwrap();
            db.flush().unwrap();
        }
        match Vault::open(d.path(), "alice", options(kind)) {
            Err(Error::Tampered(m)) => assert!(m.contains("rotation marker"), "{m}"),
            other => panic!("a {}-byte marker: {other:?}", marker.len()),
        }
    }
}

/// A vault directory that already exists with a loose mode is closed before sled
/// writes anything into it, so no file is ever reachable by other users.
#[cfg(unix)]
#[test]
fn an_existing_open_directory_is_made_private_before_anything_is_written() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Stop right after sled created its files, before the modes are tightened.
    capvault::testing::arm("store:after-sled-open");
    let r = Vault::open(&dir, "alice", options(KeyStoreKind::Keyutils));
    assert!(r.is_err(), "the armed failure fired");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    // And a later open leaves every file private.
    Vault::open(&dir, "alice", options(KeyStoreKind::Keyutils))
        .unwrap()
        .close()
        .unwrap();
    for f in files_under(&dir) {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", f.display());
    }
}

/// Every file and directory the vault creates is owner-only whatever the process's
/// umask: sled's files at open, `blobs/`, the snapshots and blobs sled writes while
/// open (tightened at each flush), the record segments, the outbox and their
/// directories, and what a probe of a closed vault leaves behind.
/// The umask is process-wide, so the scenario runs in a child process of this test.
#[cfg(unix)]
#[test]
fn every_file_the_vault_creates_is_owner_only_under_umask_000() {
    const CHILD: &str = "CAPVAULT_TEST_UMASK_CHILD";
    let loose = |dir: &Path| {
        fn walk(p: &Path, out: &mut Vec<String>) {
            use std::os::unix::fs::PermissionsExt;
            for e in std::fs::read_dir(p).unwrap() {
                let path = e.unwrap().path();
                let m = std::fs::symlink_metadata(&path).unwrap();
                if m.permissions().mode() & 0o077 != 0 {
                    out.push(format!("{} {:o}", path.display(), m.permissions().mode()));
                }
                if m.is_dir() {
                    walk(&path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, &mut out);
        out
    };
    if let Some(dir) = std::env::var_os(CHILD) {
        rustix::process::umask(rustix::fs::Mode::empty());
        let dir = Path::new(&dir).join("v");
        let mut o = options(KeyStoreKind::Keyutils);
        // Records of 4 MiB go to segment files and the sealed bundle that holds them to
        // the outbox file; moved into the database (as older vaults kept them), they
        // are nodes over a quarter of sled's segment, which sled keeps in blobs/ files.
        o.chunk_bytes = 4 << 20;
        o.max_payload_bytes = 16 << 20;
        let v = Vault::open(&dir, "alice", o.clone()).unwrap();
        assert_eq!(loose(&dir), Vec::<String>::new(), "after open");
        for i in 0..3 {
            let stored = v
                .append_screenshot(i, 10, 10, "png", &screenshot_bytes(3 << 20))
                .unwrap();
            assert_eq!(stored, Appended::Stored);
        }
        let id = capvault::Identity::generate(capvault::Suite::X25519);
        assert!(v.seal_next(&id.recipient(), 16 << 20).unwrap().is_some());
        v.flush().unwrap();
        let segments = files_under(capvault::testing::segment_dir(&dir, "alice"));
        assert!(
            segments.iter().any(|f| f.ends_with("outbox"))
                && segments.iter().any(|f| !f.ends_with("outbox")),
            "no segment or outbox file was written: the check would not see one: {segments:?}"
        );
        assert_eq!(loose(&dir), Vec::<String>::new(), "after a flush");
        v.close().unwrap();
        assert_eq!(loose(&dir), Vec::<String>::new(), "after close");
        capvault::testing::write_records_inline(&dir, "alice").unwrap();
        assert!(
            std::fs::read_dir(dir.join("blobs")).unwrap().count() > 0,
            "no blob file was written: the check would not see one"
        );
        let v = Vault::open(&dir, "alice", o.clone()).unwrap();
        v.flush().unwrap();
        assert_eq!(loose(&dir), Vec::<String>::new(), "records in the database");
        v.close().unwrap();
        assert!(Vault::user_exists(&dir, "alice").unwrap());
        assert_eq!(loose(&dir), Vec::<String>::new(), "after a probe");
        let v = Vault::open(&dir, "alice", o).unwrap();
        v.erase_open().unwrap();
        println!("umask child: ok");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "every_file_the_vault_creates_is_owner_only_under_umask_000",
            "--nocapture",
        ])
        .env(CHILD, d.path())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && all.contains("umask child: ok"),
        "{all}"
    );
}

/// The longest user name the vault accepts works in every keychain, through a KEK
/// rotation (a longer key name) and erase; one byte more is refused before anything
/// is written.
#[test]
fn the_longest_user_name_works_in_every_keychain() {
    let longest = "u".repeat(126) + "é"; // 128 bytes of UTF-8
    assert_eq!(longest.len(), 128);
    for kind in stores() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), &longest, options(kind))
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let _ = v.append_mouse_move(1, 1, 1).unwrap();
        v.rotate_kek().unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        v.flush().unwrap();
        v.close().unwrap();
        let v = Vault::open(d.path(), &longest, options(kind)).unwrap();
        assert_eq!(captured(&v.test_read_all().unwrap()).len(), 1);
        v.erase_open().unwrap_or_else(|e| panic!("{kind:?}: {e}"));

        let too_long = "u".repeat(129);
        let e = Vault::open(d.path(), &too_long, options(kind)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        let db = capvault::testing::open_raw_db(d.path());
        let hex: String = too_long.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(
            !db.tree_names()
                .iter()
                .any(|n| n.windows(hex.len()).any(|w| w == hex.as_bytes())),
            "nothing was written for the refused name"
        );
    }
}

/// Promise (docs/FORMAT.md section 14: a flush answers before the durability mark names
/// it, and a mark that cannot be written fails the next flush): nothing fails silently,
/// and the records of a flush that failed at its mark are durable.
#[test]
fn a_durability_mark_that_cannot_be_written_fails_the_next_flush() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("vault");
    let v = Vault::open(&dir, "alice", options(KeyStoreKind::Keyutils)).unwrap();
    common::flushed_moves(&v, 10, 0);
    let mark = dir.join("durable");
    let good = std::fs::read(&mark).unwrap();
    common::replace_in_open_vault(&mark, |p| std::fs::create_dir(p));
    // The mark of the flush before (written after it returned) or of the first one here
    // fails; the flush after that reports it, and so does every one while it cannot.
    let results: Vec<_> = (1..=3)
        .map(|i| common::try_flushed_moves(&v, 10, i * 100))
        .collect();
    let failed = results.iter().position(|r| r.is_err());
    assert!(
        matches!(failed, Some(0 | 1))
            && results[failed.unwrap()..]
                .iter()
                .all(|r| { matches!(r, Err(Error::Storage(m)) if m.contains("durability mark")) }),
        "{results:?}"
    );
    let why = v.status().unwrap().maintenance_error;
    assert!(
        why.as_deref()
            .is_some_and(|m| m.contains("durability mark")),
        "{why:?}"
    );
    std::fs::remove_dir(&mark).unwrap();
    std::fs::write(&mark, &good).unwrap();
    common::flushed_moves(&v, 10, 400);
    assert_eq!(v.status().unwrap().maintenance_error, None);
    v.close().unwrap();
    let v = Vault::open(&dir, "alice", options(KeyStoreKind::Keyutils)).unwrap();
    // Every appended move is there: the flushes that failed at the mark lost nothing.
    let moves = v
        .test_read_all()
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, Event::MouseMove { .. }))
        .count();
    assert_eq!(moves, 50);
    v.erase_open().unwrap();
}
