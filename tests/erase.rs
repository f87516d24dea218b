//! R11: erase always crypto-shreds. A vault that does not open (tampered state,
//! corrupted database files, a full disk) or that another process holds is erased: the
//! user's KEKs leave the real keychain first, the data and its space go, and the erasure
//! stays visible to `capvault status` and `capvault audit`.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use capvault::{Error, Identity, KeyStoreKind, Suite, Vault};
use common::Tmpfs;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_capvault");
const TITLE: &str = "ERASE-ME salary review";

fn store_name(kind: KeyStoreKind) -> &'static str {
    match kind {
        KeyStoreKind::SecretService => "secret-service",
        _ => "keyutils",
    }
}

fn cli(dir: &Path, user: &str, kind: KeyStoreKind, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--vault", dir.to_str().unwrap(), "--user", user])
        .args(["--keystore", store_name(kind)])
        .env_remove("CAPVAULT_VAULT")
        .env_remove("CAPVAULT_USER")
        .output()
        .expect("spawn capvault")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A vault for `user` with captured data and a sealed, unacknowledged bundle (the
/// outbox). Returns the vault id.
fn populated(dir: &Path, user: &str, kind: KeyStoreKind) -> String {
    let v = Vault::open(dir, user, common::options(kind)).unwrap();
    for i in 0..200 {
        let _ = v
            .append_mouse_move(1_764_000_000_000_000 + i, 1, 2)
            .unwrap();
    }
    let _ = v
        .append_window_focus(1_764_000_000_001_000, "chat", TITLE)
        .unwrap();
    v.rotate_kek().unwrap();
    let id = Identity::generate(Suite::X25519);
    v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    let vault_id = v.status().unwrap().vault_id;
    v.close().unwrap();
    vault_id
}

/// A populated vault of alice in a temporary directory: (its guard, dir, vault id).
fn alice(kind: KeyStoreKind) -> (tempfile::TempDir, PathBuf, String) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    let vault_id = populated(&dir, "alice", kind);
    (d, dir, vault_id)
}

#[track_caller]
fn assert_keys_gone(kind: KeyStoreKind, vault_id: &str, user: &str) {
    for ver in 1..=4 {
        assert!(
            common::keychain_secret(kind, &common::kek_name(vault_id, user, ver)).is_none(),
            "{kind:?}: KEK v{ver} of {user} is still in the keychain"
        );
    }
}

fn sled_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            matches!(n, "db" | "conf" | "blobs") || n.starts_with("snap.")
        })
        .collect()
}

/// `status` and `audit` (text and JSON) show the erasure of `user`.
#[track_caller]
fn assert_tombstone_shown(dir: &Path, user: &str, kind: KeyStoreKind, whole: bool) {
    let st: Value =
        serde_json::from_str(&ok(&cli(dir, user, kind, &["status", "--json"]))).unwrap();
    assert_eq!(st["erased"], true, "{st}");
    assert_eq!(st["erasure"]["user"], user, "{st}");
    assert_eq!(st["erasure"]["whole_vault"], whole, "{st}");
    assert_eq!(st["erasure"]["verified"], true, "{st}");
    assert!(st["erasure"]["erased_us"].as_i64().unwrap() > 0);
    let human = ok(&cli(dir, user, kind, &["status"]));
    assert!(
        human.contains(&format!("user '{user}'")) && human.contains("was erased"),
        "{human}"
    );
    let audit: Value =
        serde_json::from_str(&ok(&cli(dir, user, kind, &["audit", "--json"]))).unwrap();
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit}");
    assert_eq!(entries[0]["action"], "erase");
    assert!(
        entries[0]["detail"].as_str().unwrap().contains(user),
        "{audit}"
    );
    let human = ok(&cli(dir, user, kind, &["audit"]));
    assert!(human.contains("erase"), "{human}");
    assert!(matches!(
        Vault::open(dir, user, common::options(kind)),
        Err(Error::Erased)
    ));
}

#[track_caller]
fn assert_no_plaintext(dir: &Path) {
    for file in common::files_under(dir) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !common::contains(&bytes, TITLE.as_bytes()),
            "{}",
            file.display()
        );
    }
}

#[test]
fn erase_works_on_a_vault_whose_state_was_tampered_with() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let vault_id = populated(&dir, "alice", kind);
        {
            let db = capvault::testing::open_raw_db(&dir);
            let state = common::user_tree(&db, "alice", "state");
            let mut v = state.get(b"release").unwrap().unwrap().to_vec();
            v[10] ^= 1;
            state.insert(b"release", v).unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            Vault::open(&dir, "alice", common::options(kind)),
            Err(Error::Tampered(_))
        ));
        let out = ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
        assert!(out.contains("user 'alice' erased"), "{out}");
        assert_keys_gone(kind, &vault_id, "alice");
        assert!(sled_files(&dir).is_empty(), "{:?}", sled_files(&dir));
        assert_no_plaintext(&dir);
        assert_tombstone_shown(&dir, "alice", kind, true);
    }
}

/// Byte flips all over sled's data file: erase needs neither sled nor the vault to open.
#[test]
fn erase_works_on_corrupted_database_files() {
    let kind = KeyStoreKind::Keyutils;
    for heavy in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let vault_id = populated(&dir, "alice", kind);
        let db = dir.join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        if heavy {
            // Nothing of sled's file is left recognisable.
            for b in bytes.iter_mut() {
                *b ^= 0x5a;
            }
        } else {
            for i in (100..bytes.len()).step_by(997) {
                bytes[i] ^= 0x10;
            }
        }
        std::fs::write(&db, &bytes).unwrap();
        // Light damage: sled may recover its log by truncating it, and the vault may open
        // (R9: an error, or no accepted change). Heavy damage: nothing opens.
        let opened = Vault::open(&dir, "alice", common::options(kind));
        if heavy {
            assert!(opened.is_err(), "the scrambled vault opened");
        }
        drop(opened);
        // Whatever sled made of it, opening did not put a new vault in its place.
        let file = std::fs::read_to_string(dir.join("keychain.json")).unwrap();
        assert!(file.contains(&vault_id), "heavy={heavy}: {file}");
        let out = cli(&dir, "alice", kind, &["erase", "--yes"]);
        let stdout = ok(&out);
        assert!(stdout.contains("user 'alice' erased"), "{stdout}");
        assert_keys_gone(kind, &vault_id, "alice");
        assert!(
            sled_files(&dir).is_empty(),
            "heavy={heavy}: {:?}",
            sled_files(&dir)
        );
        assert_tombstone_shown(&dir, "alice", kind, true);
    }
}

/// Stores incompressible screenshots until the vault reports the disk full (as
/// STORAGE_FULL, never as anything else).
fn fill_until_full(v: &Vault) {
    let shot: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let failed = (0..200).find_map(|i| {
        v.append_screenshot(1_764_000_000_100_000 + i, 1, 1, "raw", &shot)
            .and_then(|_| v.flush())
            .err()
    });
    assert!(
        matches!(failed, Some(Error::StorageFull(_))),
        "the disk filled up, reported as storage full: {failed:?}"
    );
}

#[test]
fn erase_works_on_a_full_disk() {
    let kind = KeyStoreKind::Keyutils;
    let fs = Tmpfs::mount("48m");
    let dir = fs.0.join("v");
    let vault_id = populated(&dir, "alice", kind);
    // Fill the disk through the vault until it refuses, then every last byte.
    let v = Vault::open(&dir, "alice", common::options(kind)).unwrap();
    fill_until_full(&v);
    drop(v);
    let mut n = 0;
    while fs.avail() > 0 && n < 10_000 {
        let _ = std::fs::write(fs.0.join(format!("fill{n}")), vec![0u8; 4096]);
        n += 1;
    }
    assert_eq!(fs.avail(), 0, "the disk is full");
    let before: u64 = common::files_under(&dir)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let out = cli(&dir, "alice", kind, &["erase", "--yes"]);
    let stdout = ok(&out);
    assert!(stdout.contains("user 'alice' erased"), "{stdout}");
    assert_keys_gone(kind, &vault_id, "alice");
    assert!(sled_files(&dir).is_empty(), "{:?}", sled_files(&dir));
    assert!(
        fs.avail() >= before / 2,
        "the space came back: {} of {before}",
        fs.avail()
    );
    assert_tombstone_shown(&dir, "alice", kind, true);
}

/// A handle whose writes failed on a full disk (its log refuses everything until it is
/// reopened) still shreds its keys when asked, through the hand-off and through
/// `erase_open`, with no keychain file that would let the CLI delete them itself.
#[test]
fn an_open_handle_shreds_its_keys_after_a_failed_write() {
    let kind = KeyStoreKind::Keyutils;
    for through_handoff in [true, false] {
        let fs = Tmpfs::mount("48m");
        let dir = fs.0.join("v");
        let vault_id = populated(&dir, "alice", kind);
        let v = Vault::open(&dir, "alice", common::options(kind)).unwrap();
        fill_until_full(&v);
        std::fs::remove_file(dir.join("keychain.json")).unwrap();
        if through_handoff {
            let answer = capvault::handoff::request(
                &dir,
                "alice",
                capvault::handoff::Op::Erase,
                std::time::Duration::from_secs(20),
            );
            assert!(answer.is_ok(), "the holder answered: {answer:?}");
            assert!(
                matches!(v.status(), Err(Error::Erased)),
                "the handle is erased"
            );
            drop(v);
        } else {
            v.erase_open().unwrap();
        }
        assert_keys_gone(kind, &vault_id, "alice");
    }
}

/// Another process holds the vault: the erase goes through the hand-off, the holder
/// stops using its handle, and its database is removed (nothing is left behind once the
/// holder has let go).
#[test]
fn erase_through_the_hand_off_leaves_no_database_behind() {
    for kind in common::stores() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let vault_id = populated(&dir, "alice", kind);
        let mut holder = Command::new(BIN)
            .args(["serve", "--vault", dir.to_str().unwrap(), "--user", "alice"])
            .args(["--keystore", store_name(kind)])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        let out = cli(&dir, "alice", kind, &["erase", "--yes", "--wait", "20s"]);
        let stdout = ok(&out);
        assert!(stdout.contains("user 'alice' erased"), "{stdout}");
        // The keys are gone the moment the answer comes back, the holder still running.
        assert_keys_gone(kind, &vault_id, "alice");
        assert!(
            holder.wait().unwrap().success(),
            "the holder noticed and let go"
        );
        assert!(
            sled_files(&dir).is_empty(),
            "{kind:?}: {:?}",
            sled_files(&dir)
        );
        let left: Vec<_> = common::files_under(&dir);
        assert!(
            left.iter().all(|p| p.ends_with("keychain.json")),
            "only the erasure record is left: {left:?}"
        );
        assert_no_plaintext(&dir);
        assert_tombstone_shown(&dir, "alice", kind, true);
    }
}

/// One user of several: only that user goes, the messages name them, and the other
/// user's data and keys stay.
#[test]
fn erasing_one_of_two_users_names_them_and_keeps_the_other() {
    let kind = KeyStoreKind::Keyutils;
    let (_d, dir, vault_id) = alice(kind);
    let bob = Vault::open(&dir, "bob", common::options(kind)).unwrap();
    let _ = bob.append_mouse_move(1, 7, 7).unwrap();
    bob.close().unwrap();
    let out = ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
    assert!(out.contains("user 'alice' erased"), "{out}");
    assert!(out.contains("other users"), "{out}");
    assert!(!out.contains("the vault was erased"), "{out}");
    assert_keys_gone(kind, &vault_id, "alice");
    assert!(
        common::keychain_secret(kind, &common::kek_name(&vault_id, "bob", 1)).is_some(),
        "bob's key stays"
    );
    {
        let db = capvault::testing::open_raw_db(&dir);
        let alice_hex: String = "alice".bytes().map(|b| format!("{b:02x}")).collect();
        for name in db.tree_names() {
            let name = String::from_utf8_lossy(&name).into_owned();
            assert!(
                !name.starts_with(&format!("u/{alice_hex}/")) || name.ends_with("/keys"),
                "alice's tree {name} was dropped"
            );
        }
        let keys = common::user_tree(&db, "alice", "keys");
        assert_eq!(keys.len(), 1, "only the erase marker is left");
    }
    assert_tombstone_shown(&dir, "alice", kind, false);
    let bob = Vault::open(&dir, "bob", common::options(kind)).unwrap();
    assert_eq!(bob.test_read_all().unwrap().len(), 1);
    bob.verify().unwrap();
    bob.close().unwrap();
    // The library's error does not claim the whole vault was erased either.
    let e = Vault::open(&dir, "alice", common::options(kind)).unwrap_err();
    assert!(!e.to_string().contains("vault was erased"), "{e}");
}

/// A holder that never answers the hand-off (here: a raw database handle) does not keep
/// the keys alive: they are deleted from the keychain before the request is even sent.
#[test]
fn a_holder_that_does_not_answer_does_not_keep_the_keys() {
    let kind = KeyStoreKind::Keyutils;
    let (_d, dir, vault_id) = alice(kind);
    let held = capvault::testing::open_raw_db(&dir);
    let out = cli(&dir, "alice", kind, &["erase", "--yes", "--wait", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("keys were deleted"),
        "{}",
        text(&out.stderr)
    );
    assert_keys_gone(kind, &vault_id, "alice");
    drop(held);
    // Once the holder let go, erase finishes the job.
    let stdout = ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
    assert!(stdout.contains("user 'alice' erased"), "{stdout}");
    assert!(sled_files(&dir).is_empty());
    assert_tombstone_shown(&dir, "alice", kind, true);
}

/// A keychain file copied from another vault (a restored backup, a careless `cp`) never
/// points erase or open at that vault's keys: erasing a directory holding only the copy
/// is refused, and a healthy vault next to a foreign copy opens and keeps its own.
#[test]
fn a_keychain_file_copied_from_another_vault_names_no_keys_here() {
    let kind = KeyStoreKind::Keyutils;
    let (_b_guard, b_dir, b_id) = alice(kind);
    let (_a_guard, a_dir, a_id) = alice(kind);
    let keychain_file = |d: &Path| d.join("keychain.json");

    // Only the copy, in a new directory: nothing of B is deleted.
    let x = tempfile::tempdir().unwrap();
    std::fs::copy(keychain_file(&b_dir), keychain_file(x.path())).unwrap();
    let out = cli(x.path(), "alice", kind, &["erase", "--yes"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("copied here"),
        "{}",
        text(&out.stderr)
    );
    ok(&cli(&b_dir, "alice", kind, &["verify"]));

    // The copy over a healthy vault A: A opens, verifies and erases only its own keys.
    std::fs::copy(keychain_file(&b_dir), keychain_file(&a_dir)).unwrap();
    ok(&cli(&a_dir, "alice", kind, &["verify"]));
    ok(&cli(&a_dir, "alice", kind, &["erase", "--yes"]));
    assert_keys_gone(kind, &a_id, "alice");
    ok(&cli(&b_dir, "alice", kind, &["verify"]));
    assert!(
        common::keychain_secret(kind, &common::kek_name(&b_id, "alice", 2)).is_some(),
        "B's current KEK survived"
    );
}

/// keychain.json sits in the vault directory: an edit that names an absurd highest KEK
/// version (the file no longer verifies) made erase overflow one past u32::MAX (a panic
/// with overflow checks; in release a wrap to "delete none") or loop through billions of
/// keychain deletions. Only a file that verifies says how far the versions go; the
/// database says the rest, and the keys go.
#[test]
fn an_edited_keychain_file_cannot_stop_or_stall_the_shred() {
    let kind = KeyStoreKind::Keyutils;
    for absurd in [u32::MAX, 3_000_000_000] {
        let (_guard, dir, vault_id) = alice(kind);
        let path = dir.join("keychain.json");
        let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        file["users"]["alice"]["kek_max"] = absurd.into();
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let started = std::time::Instant::now();
        let out = ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
        assert!(out.contains("user 'alice' erased"), "{out}");
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        assert_keys_gone(kind, &vault_id, "alice");
        assert_no_plaintext(&dir);
    }
}

/// Points the database of the vault in `dir` at vault `id` (the unauthenticated
/// `vault_id` of the default tree), as someone who can write the directory could.
fn set_db_vault_id(dir: &Path, id: &str) {
    let db = capvault::testing::open_raw_db(dir);
    let bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    db.insert(b"vault_id", bytes).unwrap();
    db.flush().unwrap();
}

#[track_caller]
fn assert_keys_kept(kind: KeyStoreKind, dir: &Path, vault_id: &str, user: &str) {
    assert!(
        common::keychain_secret(kind, &common::kek_name(vault_id, user, 2)).is_some(),
        "{kind:?}: the current KEK of {user} in vault {vault_id} was deleted"
    );
    ok(&cli(dir, user, kind, &["verify"]));
}

/// The vault id in the database is not authenticated. Someone who can write vault A's
/// directory (but not vault B's, nor the keychain) points A's database at B, the same
/// user's other vault: erasing A must not delete B's keys. A is still erased, its own
/// vault found through what proves it: its keychain file, or (without one) a KEK of A
/// that unwraps A's keys. With nothing to prove any vault, erase refuses and deletes
/// nothing.
#[test]
fn an_erase_pointed_at_another_vault_deletes_only_its_own_keys() {
    for kind in common::stores() {
        for without_keychain_file in [false, true] {
            let (_b_guard, b_dir, b_id) = alice(kind);
            let (_a_guard, a_dir, a_id) = alice(kind);
            set_db_vault_id(&a_dir, &b_id);
            if without_keychain_file {
                std::fs::remove_file(a_dir.join("keychain.json")).unwrap();
            }
            let out = ok(&cli(&a_dir, "alice", kind, &["erase", "--yes"]));
            assert!(out.contains("user 'alice' erased"), "{out}");
            assert_keys_gone(kind, &a_id, "alice");
            assert_keys_kept(kind, &b_dir, &b_id, "alice");
            assert!(sled_files(&a_dir).is_empty(), "{:?}", sled_files(&a_dir));
        }

        // Nothing proves any vault: no keychain file, and the user's wrapped keys gone.
        let (_b_guard, b_dir, b_id) = alice(kind);
        let (_a_guard, a_dir, a_id) = alice(kind);
        set_db_vault_id(&a_dir, &b_id);
        std::fs::remove_file(a_dir.join("keychain.json")).unwrap();
        {
            let db = capvault::testing::open_raw_db(&a_dir);
            let keys = common::user_tree(&db, "alice", "keys");
            for k in keys.iter().keys() {
                let k = k.unwrap();
                if k.as_ref() != b"kek_version" {
                    keys.remove(k).unwrap();
                }
            }
            db.flush().unwrap();
        }
        let out = cli(&a_dir, "alice", kind, &["erase", "--yes"]);
        assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains("proves") && err.contains(&b_id), "{err}");
        assert_keys_kept(kind, &b_dir, &b_id, "alice");
        assert!(
            common::keychain_secret(kind, &common::kek_name(&a_id, "alice", 2)).is_some(),
            "nothing was deleted"
        );
        assert!(!sled_files(&a_dir).is_empty(), "nothing was removed");
        // Clean up A's keys by hand (what the message tells a person to do).
        ok(&cli(&b_dir, "alice", kind, &["erase", "--yes"]));
        set_db_vault_id(&a_dir, &a_id);
    }
}

/// Erase deletes every KEK version of the user in the vault the keychain holds, also
/// one above any version the vault recorded (a rotation that put its key in the
/// keychain and crashed twice, another tool): the keychain is enumerated.
#[test]
fn erase_deletes_kek_versions_beyond_the_recorded_ones() {
    for kind in common::stores() {
        let (_guard, dir, vault_id) = alice(kind);
        let stray = common::kek_name(&vault_id, "alice", 9);
        common::put_keychain_secret(kind, &stray, &[7u8; 32]);
        assert!(common::keychain_secret(kind, &stray).is_some());
        ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
        assert_keys_gone(kind, &vault_id, "alice");
        assert!(
            common::keychain_secret(kind, &stray).is_none(),
            "{kind:?}: KEK v9 survived the erase"
        );
        assert_tombstone_shown(&dir, "alice", kind, true);
    }
}

/// The erase marker in a keys tree is not authenticated either: a forged one, in a
/// database pointed at another vault of the same user, makes the open report the user
/// erased and deletes no key of that vault (every erase deletes the keys before it
/// writes the marker, so opening has nothing to delete).
#[test]
fn a_forged_erase_marker_deletes_no_keys() {
    let kind = KeyStoreKind::Keyutils;
    let (_b_guard, b_dir, b_id) = alice(kind);
    let (_a_guard, a_dir, a_id) = alice(kind);
    set_db_vault_id(&a_dir, &b_id);
    {
        let db = capvault::testing::open_raw_db(&a_dir);
        let keys = common::user_tree(&db, "alice", "keys");
        keys.clear().unwrap();
        keys.insert(b"erased", &9u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    assert!(matches!(
        Vault::open(&a_dir, "alice", common::options(kind)),
        Err(Error::Erased)
    ));
    assert_keys_kept(kind, &b_dir, &b_id, "alice");
    assert!(common::keychain_secret(kind, &common::kek_name(&a_id, "alice", 2)).is_some());
}

/// A directory can prove more than one vault its own: an old keychain file of an
/// earlier vault in the same directory, put back with the database pointed at that
/// vault, must not make erase spare the current vault's keys.
#[test]
fn an_old_keychain_file_put_back_does_not_spare_the_current_vault() {
    let kind = KeyStoreKind::Keyutils;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    let old_id = populated(&dir, "alice", kind);
    let old_file = std::fs::read(dir.join("keychain.json")).unwrap();
    ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
    std::fs::remove_file(dir.join("keychain.json")).unwrap();
    let new_id = populated(&dir, "alice", kind);
    assert_ne!(old_id, new_id);
    std::fs::write(dir.join("keychain.json"), old_file).unwrap();
    set_db_vault_id(&dir, &old_id);
    ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
    assert_keys_gone(kind, &new_id, "alice");
}

/// Nothing in the directory proves any vault (no keychain file, the user's wrapped keys
/// removed) and the database names a vault id that has no keys at all: erase must not
/// take "nothing to delete" for success while the keychain still holds this user's
/// keys of a vault (here the very one in the directory). It refuses, deletes nothing,
/// and names the entries to delete by hand.
#[test]
fn an_unproven_unknown_vault_id_does_not_report_keys_destroyed() {
    let kind = KeyStoreKind::Keyutils;
    let (_guard, dir, vault_id) = alice(kind);
    std::fs::remove_file(dir.join("keychain.json")).unwrap();
    {
        let db = capvault::testing::open_raw_db(&dir);
        let keys = common::user_tree(&db, "alice", "keys");
        for k in keys.iter().keys() {
            let k = k.unwrap();
            if k.as_ref() != b"kek_version" {
                keys.remove(k).unwrap();
            }
        }
        db.flush().unwrap();
    }
    set_db_vault_id(&dir, "0123456789abcdef0123456789abcdef");
    let out = cli(&dir, "alice", kind, &["erase", "--yes"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        !text(&out.stdout).contains("destroyed"),
        "{}",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(err.contains("proves") && err.contains(&vault_id), "{err}");
    assert!(
        common::keychain_secret(kind, &common::kek_name(&vault_id, "alice", 2)).is_some(),
        "nothing was deleted"
    );
    assert!(!sled_files(&dir).is_empty(), "nothing was removed");
}

/// The keys tree's version counters (`kek_version`, the rotation marker, the erase
/// marker) are not authenticated: set to three billion, erase would try three billion
/// keychain deletions; set to u32::MAX, one past it overflowed. Erase bounds the
/// versions by what is proven and what the keychain lists, and finishes.
#[test]
fn a_huge_kek_version_in_the_database_does_not_stall_erase() {
    for huge in [3_000_000_000u32, u32::MAX] {
        let kind = KeyStoreKind::Keyutils;
        let (_guard, dir, vault_id) = alice(kind);
        {
            let db = capvault::testing::open_raw_db(&dir);
            let keys = common::user_tree(&db, "alice", "keys");
            let mut v = keys.get(b"kek_version").unwrap().unwrap().to_vec();
            v[..4].copy_from_slice(&huge.to_be_bytes());
            keys.insert(b"kek_version", v).unwrap();
            db.flush().unwrap();
        }
        let mut child = Command::new(BIN)
            .args(["erase", "--yes", "--vault", dir.to_str().unwrap()])
            .args(["--user", "alice", "--keystore", "keyutils"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > std::time::Duration::from_secs(30) {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("erase with KEK version {huge} still running after 30 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        ok(&child.wait_with_output().unwrap());
        assert_keys_gone(kind, &vault_id, "alice");
    }
}

/// A keychain file binds its vault to the directory path only, and a path can be
/// reused: vault B created at v, moved to b, vault A created at v, B's keychain file
/// copied into v (also with the database pointed at B). Erasing v deletes A's keys and
/// none of B's, which lives on at b.
#[test]
fn a_moved_vaults_keychain_file_put_back_does_not_erase_it() {
    for point_db_at_b in [false, true] {
        let kind = KeyStoreKind::Keyutils;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let b_id = populated(&dir, "alice", kind);
        let moved = d.path().join("b");
        std::fs::rename(&dir, &moved).unwrap();
        let a_id = populated(&dir, "alice", kind);
        std::fs::copy(moved.join("keychain.json"), dir.join("keychain.json")).unwrap();
        if point_db_at_b {
            set_db_vault_id(&dir, &b_id);
        }
        ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
        assert_keys_gone(kind, &a_id, "alice");
        assert!(
            common::keychain_secret(kind, &common::kek_name(&b_id, "alice", 2)).is_some(),
            "the moved vault B lost its keys"
        );
        ok(&cli(&moved, "alice", kind, &["verify"]));
        ok(&cli(&moved, "alice", kind, &["erase", "--yes"]));
    }
}

/// Scrambles every byte of the database file in `dir`: nothing of sled's is left
/// recognisable and it does not open.
fn destroy_db(dir: &Path) {
    let db = dir.join("db");
    let bytes: Vec<u8> = std::fs::read(&db)
        .unwrap()
        .iter()
        .map(|b| b ^ 0x5a)
        .collect();
    std::fs::write(&db, bytes).unwrap();
}

/// The keychain file of vault B, put over vault A's where A's database cannot be read:
/// erase must not take the file's word for which vault is here. B lived at A's path
/// (moved away, the path reused by A), or in A's very directory (its files moved out,
/// the directory reused by A), and was opened in its new place since. With A's database
/// destroyed or held by a process that does not answer, no key of B goes; A is erased
/// once its database can be read.
#[test]
fn another_vaults_keychain_file_over_a_database_that_does_not_open_deletes_none_of_its_keys() {
    let kind = KeyStoreKind::Keyutils;
    for same_dir in [false, true] {
        for held in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let dir = d.path().join("v");
            let b_id = populated(&dir, "alice", kind);
            let b_file = std::fs::read(dir.join("keychain.json")).unwrap();
            let moved = d.path().join("b");
            if same_dir {
                std::fs::create_dir(&moved).unwrap();
                for e in std::fs::read_dir(&dir).unwrap() {
                    let e = e.unwrap();
                    std::fs::rename(e.path(), moved.join(e.file_name())).unwrap();
                }
            } else {
                std::fs::rename(&dir, &moved).unwrap();
            }
            Vault::open(&moved, "alice", common::options(kind))
                .unwrap()
                .close()
                .unwrap();
            let a_id = populated(&dir, "alice", kind);
            std::fs::write(dir.join("keychain.json"), &b_file).unwrap();
            let case = format!("same directory: {same_dir}, held: {held}");
            let holder = held.then(|| capvault::testing::open_raw_db(&dir));
            if !held {
                destroy_db(&dir);
            }
            let out = cli(&dir, "alice", kind, &["erase", "--yes", "--wait", "1s"]);
            assert_ne!(out.status.code(), Some(0), "{case}: {}", text(&out.stdout));
            assert!(
                common::keychain_secret(kind, &common::kek_name(&b_id, "alice", 2)).is_some(),
                "{case}: vault B lost its keys"
            );
            if !held {
                let err = text(&out.stderr);
                assert!(
                    err.contains("refusing") && err.contains(&b_id),
                    "{case}: {err}"
                );
            }
            drop(holder);
            if held {
                ok(&cli(&dir, "alice", kind, &["erase", "--yes"]));
                assert_keys_gone(kind, &a_id, "alice");
            }
            assert!(
                common::keychain_secret(kind, &common::kek_name(&b_id, "alice", 2)).is_some(),
                "{case}: vault B lost its keys"
            );
            ok(&cli(&moved, "alice", kind, &["verify"]));
            ok(&cli(&moved, "alice", kind, &["erase", "--yes"]));
        }
    }
}

/// A vault moved to another directory and opened there binds its keychain file to the
/// new place, so a database destroyed later is still erased there; a copy of the
/// directory (a restored backup) never opened is not, and erase says what to do.
#[test]
fn a_moved_vault_opened_once_is_erased_after_its_database_is_destroyed() {
    let kind = KeyStoreKind::Keyutils;
    let (d, dir, vault_id) = alice(kind);
    let moved = d.path().join("w");
    std::fs::rename(&dir, &moved).unwrap();
    Vault::open(&moved, "alice", common::options(kind))
        .unwrap()
        .close()
        .unwrap();
    // A copy of the directory, made before the database was destroyed, at a new path.
    let copy = d.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&moved).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    destroy_db(&moved);
    let out = ok(&cli(&moved, "alice", kind, &["erase", "--yes"]));
    assert!(out.contains("user 'alice' erased"), "{out}");
    assert_keys_gone(kind, &vault_id, "alice");
    assert_tombstone_shown(&moved, "alice", kind, true);

    // The copy's file names the old path and another directory: refused, nothing deleted.
    destroy_db(&copy);
    let out = cli(&copy, "alice", kind, &["erase", "--yes"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("refusing"), "{err}");
}
