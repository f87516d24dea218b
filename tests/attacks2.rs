//! Attacks on the keychain mark, the owner rule and the hand-off, the outbox file and
//! erase, as they stand: each test fails while its attack works.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use capvault::{Error, KeyStoreKind, Vault, VaultOptions};

fn current_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A process of the second uid, ended when the test ends.
struct Alive(std::process::Child);

impl Drop for Alive {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Promise (src/handoff.rs): root writing a request for a holder of another uid gives
/// the file to that uid inside the vault's `requests/`, and nowhere else.
///
/// `write_atomic_for` checks `requests/` (`holder_uid_for_root`: a real directory of
/// the uid, the vault's `db` locked) and then creates, fchowns and renames by path. The
/// uid owns the vault directory, so between the check and the create it swaps
/// `requests/` for a symlink (renameat2 RENAME_EXCHANGE in a loop): root then creates
/// `<target>/.<id>.req.tmp` in a directory of its choice, hands it to the uid and
/// renames it to `<target>/<id>.req`. The uid owns a file it can rewrite in a root-only
/// directory (say /etc/apt/apt.conf.d, whose files apt reads whatever their owner).
/// The lock only needs `flock db` by the uid: no vault is involved.
#[test]
fn root_never_hands_a_file_to_the_holder_outside_requests() {
    if current_uid() != 0 {
        eprintln!("skipped: needs root to switch to a second uid");
        return;
    }
    let tmp = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let target = tmp.path().join("root-only");
    std::fs::create_dir(&target).unwrap();
    let vault = tmp.path().join("v");
    std::fs::create_dir(&vault).unwrap();
    std::os::unix::fs::chown(&vault, Some(common::other_uid()), Some(common::other_uid())).unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let v = vault.display();
    let t = target.display();
    // One process of the uid: makes `requests/` and the link, locks `db` (as a holder
    // would), then swaps the two for as long as the test runs.
    let racer = format!(
        "import ctypes,fcntl,os\nos.mkdir('{v}/requests',0o700)\nos.symlink('{t}','{v}/swap')\nf=open('{v}/db','w')\nfcntl.flock(f,fcntl.LOCK_EX)\nlibc=ctypes.CDLL(None,use_errno=True)\nwhile True:\n    libc.renameat2(-100,b'{v}/requests',-100,b'{v}/swap',2)\n"
    );
    let _race = Alive(
        Command::new("setpriv")
            .args([
                &format!("--reuid={uid}", uid = common::other_uid()),
                &format!("--regid={uid}", uid = common::other_uid()),
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                &racer,
            ])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut planted = Vec::new();
    // Until a file the uid owns turns up (one root owns shows the race won already).
    while Instant::now() < deadline && !planted.iter().any(|(_, uid)| *uid == common::other_uid()) {
        let dir = vault.clone();
        // Each request may wait for an answer that never comes: left running.
        std::thread::spawn(move || {
            let _ = capvault::handoff::request(
                &dir,
                "someone",
                capvault::handoff::Op::Status,
                Duration::from_millis(5),
            );
        });
        std::thread::sleep(Duration::from_millis(10));
        planted = std::fs::read_dir(&target)
            .unwrap()
            .flatten()
            .map(|e| {
                use std::os::unix::fs::MetadataExt;
                let uid = e.metadata().map(|m| m.uid()).unwrap_or(0);
                (e.file_name(), uid)
            })
            .collect();
    }
    assert!(
        planted.is_empty(),
        "root wrote {planted:?} (name, owner uid) into root-only directory {t}"
    );
}

#[allow(dead_code)]
fn o() -> VaultOptions {
    common::options(KeyStoreKind::Keyutils)
}

#[allow(dead_code)]
fn opens(dir: &Path, user: &str) -> capvault::Result<Vault> {
    Vault::open(dir, user, o())
}

/// Run in a child by `a_crash_at_any_point_around_the_mark_is_never_tampered`: a
/// workload that moves the mark every way (flushes, the deferred write, seal, ack,
/// pause, resume, close, reopen), aborting at `CAPVAULT_CRASH_AT`.
#[test]
#[ignore = "helper: run in a child process"]
fn mark_crash_child() {
    let Ok(dir) = std::env::var("CAPVAULT_A2_DIR") else {
        return;
    };
    let id = capvault::Identity::generate(capvault::Suite::X25519);
    for round in 0..3i64 {
        let v = Vault::open(&dir, "alice", o()).unwrap();
        for i in 0..20 {
            let _ = v.append_mouse_move(round * 100 + i, 1, 1).unwrap();
            if i % 5 == 0 {
                v.flush().unwrap();
            }
        }
        v.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let _ = v.append_mouse_move(round * 100 + 50, 1, 1).unwrap();
        v.flush().unwrap();
        if let Some(b) = v.seal_next(&id.recipient(), 1 << 20).unwrap() {
            v.ack(b.id(), None).unwrap();
        }
        v.pause(Duration::from_secs(5)).unwrap();
        v.resume().unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        v.close().unwrap();
    }
    println!("DONE");
}

/// Promise (docs/SECURITY.md, "What the mark leaves open"): the mark names only what a
/// durable flush covered, so a crash never leaves the directory behind it. A child is
/// aborted at each failure point around flushes, mark writes and state changes (and at
/// later passes of each), then the vault is opened and verified honestly.
#[test]
fn a_crash_at_any_point_around_the_mark_is_never_tampered() {
    let points = [
        "mark:write",
        "flush:after-segments",
        "flush:before-release",
        "flush:before-naming",
        "write:before-batch",
        "seal:after-outbox",
        "outbox:before-rename",
        "ack:after-acking",
        "ack:after-prune",
        "ack:before-ledger-prune",
        "prune:before-batch",
        "retire:before-batch",
        "segments:after-write",
        "segments:before-write",
    ];
    let mut problems = Vec::new();
    for point in points {
        for nth in [1u32, 2, 3, 5, 8] {
            let d = tempfile::tempdir().unwrap();
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "mark_crash_child", "--nocapture"])
                .env("CAPVAULT_A2_DIR", d.path())
                .env("CAPVAULT_CRASH_AT", format!("{point}:{nth}"))
                .output()
                .unwrap();
            let finished = String::from_utf8_lossy(&out.stdout).contains("DONE");
            let reopened = Vault::open(d.path(), "alice", o()).and_then(|v| {
                v.verify()?;
                let _ = v.append_mouse_move(9_999, 1, 1)?;
                v.flush()?;
                v.close()
            });
            if let Err(e) = reopened {
                problems.push(format!("{point}:{nth} (child finished: {finished}): {e}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Promise (docs/SECURITY.md, "Tamper evidence: limits"): the mark refuses a directory
/// rolled back; a check that fires in normal operation is a bug.
///
/// An administrator checks a backup: the vault directory is copied elsewhere (same
/// vault id, same keychain entries) while the agent is stopped, and the copy is only
/// opened and verified, nothing appended. If opening or verifying writes anything the
/// mark counts (an audit entry, the policy record), the keychain mark moves past the
/// original, which is then refused as rolled back though nobody touched it.
#[test]
fn verifying_a_copy_never_makes_the_original_tampered() {
    let d = tempfile::tempdir().unwrap();
    let orig = d.path().join("vault");
    let copy = d.path().join("backup");
    let v = Vault::open(&orig, "alice", o()).unwrap();
    common::flushed_moves(&v, 10, 0);
    v.close().unwrap();
    common::cp_a(&orig, &copy);
    match Vault::open(&copy, "alice", o()) {
        Ok(c) => {
            c.verify().unwrap();
            c.close().unwrap();
        }
        Err(Error::InvalidArgument(m)) => {
            assert!(m.contains("is a copy of the vault at"), "{m}")
        }
        Err(e) => panic!("the copy: {e}"),
    }
    let again = Vault::open(&orig, "alice", o()).and_then(|v| {
        v.verify()?;
        v.close()
    });
    assert!(
        again.is_ok(),
        "the original, untouched, after a copy of it was opened and verified: {:?}",
        again.err().map(|e| e.to_string())
    );
    // Copied, then the original removed (the vault moved to another file system): the
    // copy is the vault.
    let moved = d.path().join("moved");
    common::cp_a(&orig, &moved);
    std::fs::remove_dir_all(&orig).unwrap();
    let c = Vault::open(&moved, "alice", o()).unwrap();
    c.verify().unwrap();
    c.close().unwrap();
}

/// A check that fires in normal operation is a bug: the copy check must not take the
/// vault itself, reached by another path (a bind mount, a link to its directory), for a
/// copy of it.
#[test]
fn the_vault_reached_by_another_path_is_not_taken_for_a_copy() {
    let d = tempfile::tempdir().unwrap();
    let orig = d.path().join("vault");
    let v = Vault::open(&orig, "alice", o()).unwrap();
    common::flushed_moves(&v, 10, 0);
    v.close().unwrap();
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&orig, &link).unwrap();
    let bound = d.path().join("bound");
    std::fs::create_dir(&bound).unwrap();
    let mount = Command::new("mount")
        .arg("--bind")
        .arg(&orig)
        .arg(&bound)
        .output()
        .unwrap();
    assert!(
        mount.status.success(),
        "mount --bind (the tests run as root): {}",
        String::from_utf8_lossy(&mount.stderr)
    );
    let opened = [&link, &bound, &orig].map(|p| {
        Vault::open(p, "alice", o()).and_then(|v| {
            v.verify()?;
            v.close()
        })
    });
    let umount = Command::new("umount").arg(&bound).status().unwrap();
    assert!(umount.success());
    for (path, r) in ["link", "bind mount", "original"].iter().zip(opened) {
        assert!(
            r.is_ok(),
            "through the {path}: {:?}",
            r.err().map(|e| e.to_string())
        );
    }
}

/// Promise (docs/SECURITY.md, "Erasure and crypto-shredding"): erase never reports
/// success while a KEK of the user survives.
///
/// Someone who can write the vault directory (the attacker the database's keychain
/// kind is not trusted against) edits the recorded kind from Secret Service to keyutils
/// and removes `keychain.json`, the only other place naming the kind. The owner runs
/// `capvault erase` without naming a keychain (`Auto`): only keyutils is asked, it
/// holds nothing of the user ("nothing to protect"), and the KEK stays in the Secret
/// Service, so every copy of the directory stays readable.
#[test]
fn erase_with_an_edited_kind_and_no_keychain_file_never_leaves_the_kek() {
    let d = tempfile::tempdir().unwrap();
    let user = format!("attack2-kind-{}", std::process::id());
    let v = Vault::open(
        d.path(),
        &user,
        common::options(KeyStoreKind::SecretService),
    )
    .unwrap();
    for i in 0..10 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.flush().unwrap();
    v.close().unwrap();
    let hex: String = {
        let db = capvault::testing::open_raw_db(d.path());
        let id = db.get(b"vault_id").unwrap().unwrap();
        db.insert(b"keystore", &b"\"keyutils\""[..]).unwrap();
        db.flush().unwrap();
        id.iter().map(|b| format!("{b:02x}")).collect()
    };
    std::fs::remove_file(d.path().join("keychain.json")).unwrap();
    let kek = common::kek_name(&hex, &user, 1);
    assert!(common::keychain_secret(KeyStoreKind::SecretService, &kek).is_some());
    let erased = Vault::erase(d.path(), &user, common::options(KeyStoreKind::Auto));
    let survived = common::keychain_secret(KeyStoreKind::SecretService, &kek).is_some();
    assert!(
        erased.is_err() || !survived,
        "erase reported success ({erased:?}) while the KEK {kek} survives in the Secret Service"
    );
}
