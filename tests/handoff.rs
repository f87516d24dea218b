//! The hand-off serves requests only from the holder's own uid (or root), through the
//! request directory it opened with the vault (docs/SECURITY.md, "Hand-off").
mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capvault::handoff::{request, Op, VERSION};
use capvault::{KeyStoreKind, Vault};
use common::options;

/// The uid the attacker runs as (no account needed: `setpriv` switches to it).
const OTHER_UID: u32 = 4242;

/// A well-formed erase request for `user` with request id `fill` x 32.
fn erase_request(fill: char, user: &str) -> (String, String) {
    let id = fill.to_string().repeat(32);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let json =
        format!(r#"{{"v":{VERSION},"id":"{id}","user":"{user}","created_us":{now},"op":"erase"}}"#);
    (id, json)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
        == Some(0)
}

/// A vault opened in this process for `user`, in a fresh directory `v`.
fn held(user: &str) -> (tempfile::TempDir, PathBuf, Vault) {
    let d = tempfile::tempdir().unwrap();
    let vault = d.path().join("v");
    let agent = Vault::open(&vault, user, options(KeyStoreKind::Keyutils)).unwrap();
    (d, vault, agent)
}

/// The holder's `maintenance_error` once `ready` accepts it (it is set after the
/// request that changed it was answered), at most 10 s.
#[track_caller]
fn maintenance_error_until(
    agent: &Vault,
    ready: impl Fn(&Option<String>) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = agent.status().unwrap().maintenance_error;
        if ready(&e) || Instant::now() > deadline {
            return e;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Answers `status` through the hand-off at `vault`, or fails naming `when`.
#[track_caller]
fn served(vault: &Path, user: &str, when: &str) {
    let resp = request(vault, user, Op::Enroll, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("no answer {when}: {e:?}"));
    assert!(resp.ok, "{when}: {resp:?}");
}

fn as_other_uid(script: &str, env: &[(&str, &Path)]) {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={OTHER_UID}"),
        &format!("--regid={OTHER_UID}"),
        "--clear-groups",
        "sh",
        "-c",
        script,
    ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("setpriv runs (util-linux)");
    assert!(
        out.status.success(),
        "the other uid's script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A user who owns the directory above a root-held vault moves the vault directory
/// away and puts an erase request where the vault used to be. The holder keeps serving
/// the request directory it opened, so the forged request is never seen, and genuine
/// requests still reach it at the vault's new path.
#[test]
fn a_user_owning_the_parent_directory_cannot_erase_a_held_vault() {
    if !is_root() {
        eprintln!("skipped: creating a second uid needs root (scripts/test.sh runs as root in CI)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let parent = d.path().join("home");
    std::fs::create_dir(&parent).unwrap();
    std::os::unix::fs::chown(&parent, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let vault = parent.join("v");
    let user = "alice";
    let agent = Vault::open(&vault, user, options(KeyStoreKind::Keyutils)).unwrap();
    for x in 0..10 {
        let _ = agent.append_mouse_move(x, x as i32, 0).unwrap();
    }
    agent.flush().unwrap();

    let (id, json) = erase_request('a', user);
    let forged = parent.join("v/requests").join(format!("{id}.req"));
    as_other_uid(
        r#"mv "$P/v" "$P/v.moved" && mkdir -p "$P/v/requests" && printf '%s' "$REQ" > "$F""#
            .replace("$REQ", &json.replace('"', "\\\""))
            .as_str(),
        &[("P", &parent), ("F", &forged)],
    );
    // Several maintenance ticks.
    std::thread::sleep(Duration::from_secs(3));
    assert!(forged.exists(), "the forged request was never taken");
    // Not erased: the agent still appends, and every event reads.
    assert!(agent.append_mouse_move(10, 10, 0).is_ok());
    assert_eq!(agent.test_read_all().unwrap().len(), 11);

    // The owner's own requests, at the vault's new path, are still answered.
    let moved = parent.join("v.moved");
    let resp = request(&moved, user, Op::Enroll, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the holder did not answer at the vault's new path: {e:?}"));
    assert!(resp.ok, "{resp:?}");
    agent.close().unwrap();
}

/// Inside the holder's own request directory: a symbolic link, and a file that belongs
/// to another uid, are refused with an answer that says why, and run nothing.
#[test]
fn links_and_other_owners_requests_are_refused_and_answered() {
    let d = tempfile::tempdir().unwrap();
    let vault = d.path().join("v");
    let user = "bob";
    let agent = Vault::open(&vault, user, options(KeyStoreKind::Keyutils)).unwrap();
    let _ = agent.append_mouse_move(1, 1, 1).unwrap();
    agent.flush().unwrap();
    let requests = vault.join("requests");

    // A link to a well-formed erase request elsewhere.
    let (id, json) = erase_request('a', user);
    let target = d.path().join("elsewhere.json");
    std::fs::write(&target, &json).unwrap();
    symlink(&target, requests.join(format!("{id}.req"))).unwrap();
    let resp = wait_for_response(&requests, &id);
    assert!(resp.contains("symbolic link"), "{resp}");

    if is_root() {
        // A regular request file that belongs to another uid.
        // Owned by the other uid before it appears under its request name (the holder
        // wakes as soon as a request appears).
        let (id, json) = erase_request('b', user);
        let tmp = requests.join(format!(".{id}.req.tmp"));
        std::fs::write(&tmp, json).unwrap();
        std::os::unix::fs::chown(&tmp, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
        std::fs::rename(&tmp, requests.join(format!("{id}.req"))).unwrap();
        let resp = wait_for_response(&requests, &id);
        assert!(resp.contains(&format!("uid {OTHER_UID}")), "{resp}");
    }
    assert!(!agent.status().unwrap().erased);
    assert_eq!(agent.test_read_all().unwrap().len(), 1);
    agent.close().unwrap();
}

fn wait_for_response(requests: &Path, id: &str) -> String {
    let path = requests.join(format!("{id}.resp"));
    for _ in 0..100 {
        if let Ok(s) = std::fs::read_to_string(&path) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no answer to request {id}");
}

/// A maintenance duty that keeps failing (here retention, by an injected failure at
/// every attempt) neither stops the hand-off nor goes unnoticed: requests are still
/// answered and `status` names the failing duty.
#[test]
fn a_failing_maintenance_duty_does_not_stop_the_hand_off() {
    let d = tempfile::tempdir().unwrap();
    let vault = d.path().join("v");
    let user = "carol";
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.retention_secs = 1;
    let agent = Vault::open(&vault, user, o).unwrap();
    for x in 0..20 {
        let _ = agent.append_mouse_move(x, 1, 1).unwrap();
    }
    agent.flush().unwrap();
    for _ in 0..10_000 {
        capvault::testing::arm("prune:before-batch");
    }
    std::thread::sleep(Duration::from_millis(1500)); // the records are now due
    let resp = request(
        &vault,
        user,
        Op::Pause { secs: 60 },
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("the hand-off stopped answering: {e:?}"));
    assert!(resp.ok, "{resp:?}");
    let st = agent.status().unwrap();
    let problem = st.maintenance_error.expect("the failure shows in status");
    assert!(
        problem.contains("retention and budget") && problem.contains("injected failure"),
        "{problem}"
    );
    assert!(st.pause.paused_until_us.is_some());
    agent.close().unwrap();
}

/// The client side: an answer written by another uid (who owns the directory the
/// request went to) is never taken for the holder's, so a faked "erased" cannot
/// reassure an admin whose keys were never touched.
#[test]
fn an_answer_from_another_uid_is_not_believed() {
    if !is_root() {
        eprintln!("skipped: creating a second uid needs root (scripts/test.sh runs as root in CI)");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let vault = d.path().join("v");
    let requests = vault.join("requests");
    std::fs::create_dir_all(&requests).unwrap();
    for p in [&vault, &requests] {
        std::os::unix::fs::chown(p, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    // The "responder": answers every request at once, as the other uid would.
    let responder = {
        let requests = requests.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                for e in std::fs::read_dir(&requests).unwrap().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(id) = name.strip_suffix(".req") {
                        let resp = requests.join(format!("{id}.resp"));
                        let body =
                            format!(r#"{{"v":{VERSION},"id":"{id}","ok":true,"result":{{}}}}"#);
                        std::fs::write(&resp, body).unwrap();
                        std::os::unix::fs::chown(&resp, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
                        return true;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        })
    };
    let got = request(&vault, "alice", Op::Erase, Duration::from_secs(2));
    assert!(responder.join().unwrap(), "the responder saw the request");
    assert!(got.is_err(), "a forged answer was believed: {got:?}");
}

/// Removing `<vault>/requests/`, or renaming it away, while an agent holds the vault
/// does not stop the hand-off, and does not go unnoticed: the holder makes no new
/// `requests/` itself, says in `status` that requests are not served, does not poll
/// meanwhile, and serves the `requests/` the next client makes.
#[test]
fn requests_dir_removed_or_renamed_while_held_is_served_again() {
    let user = "dave";
    let (d, vault, agent) = held(user);
    served(&vault, user, "at first");
    let requests = vault.join("requests");
    // A request for another user, falling stale in a second: its deadline must not
    // outlive the directory it was in (a deadline in the past would spin).
    let id = "d".repeat(32);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
        - 299_000_000;
    std::fs::write(
        requests.join(format!("{id}.req")),
        format!(
            r#"{{"v":{VERSION},"id":"{id}","user":"zed","created_us":{created},"op":"status"}}"#
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    std::fs::remove_dir_all(&requests).unwrap();
    let problem = maintenance_error_until(&agent, Option::is_some)
        .expect("status says requests are not served");
    assert!(
        problem.contains("hand-off requests are not served") && problem.contains("removed"),
        "{problem}"
    );
    // Waiting for a client, not polling for one.
    let quiet = common::threads::settle(Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let woke = common::threads::woke(&quiet, &common::threads::switches());
    assert_eq!(woke, vec![], "threads woke up while requests/ was missing");
    assert!(!requests.exists(), "the holder made requests/ itself");
    served(&vault, user, "after rm -rf requests (the client makes it)");
    assert_eq!(maintenance_error_until(&agent, Option::is_none), None);

    std::fs::remove_dir_all(&requests).unwrap();
    served(&vault, user, "right after another rm -rf requests");

    std::fs::rename(&requests, d.path().join("moved")).unwrap();
    served(&vault, user, "after mv requests elsewhere");
    // Renamed away and replaced at once by another directory of the same owner.
    let fresh = d.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::rename(&requests, d.path().join("moved-again")).unwrap();
    std::fs::rename(&fresh, &requests).unwrap();
    served(
        &vault,
        user,
        "after requests/ was replaced by another directory",
    );
    // What was renamed away is not served: a request left there stays untaken.
    let (id, json) = erase_request('c', user);
    let stray = d.path().join("moved-again").join(format!("{id}.req"));
    std::fs::write(&stray, json).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(stray.exists(), "a renamed-away directory was still served");

    assert_eq!(maintenance_error_until(&agent, Option::is_none), None);
    assert!(!agent.status().unwrap().erased);
    agent.close().unwrap();
}

/// A `requests/` put in place of the removed one that belongs to another uid is refused,
/// not served, and the refusal shows in `status`; once it belongs to the holder's uid
/// (or is replaced by the holder's client) the hand-off serves it.
#[test]
fn a_replaced_requests_dir_owned_by_another_uid_is_refused_and_reported() {
    if !is_root() {
        eprintln!("skipped: creating a second uid needs root (scripts/test.sh runs as root in CI)");
        return;
    }
    let user = "erin";
    let (d, vault, agent) = held(user);
    let _ = agent.append_mouse_move(1, 1, 1).unwrap();
    agent.flush().unwrap();
    let requests = vault.join("requests");
    let foreign = d.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::remove_dir_all(&requests).unwrap();
    std::fs::rename(&foreign, &requests).unwrap();
    let got = request(&vault, user, Op::Erase, Duration::from_secs(2));
    assert!(
        matches!(got, Err(capvault::handoff::HandoffError::NoAnswer)),
        "a directory of another uid was served: {got:?}"
    );
    let problem =
        maintenance_error_until(&agent, |e| e.as_deref().is_some_and(|e| e.contains("uid")))
            .expect("the refusal shows in status");
    assert!(problem.contains(&format!("uid {OTHER_UID}")), "{problem}");
    assert!(!agent.status().unwrap().erased);
    assert_eq!(agent.test_read_all().unwrap().len(), 1);

    // Given to the holder's uid: the change of owner wakes the holder.
    std::os::unix::fs::chown(&requests, Some(0), Some(0)).unwrap();
    served(&vault, user, "once requests/ belongs to the holder's uid");
    assert_eq!(maintenance_error_until(&agent, Option::is_none), None);

    // Replaced again, then removed: the client's own directory is served. Made and
    // given away elsewhere, then moved in whole: made in place, the holder could open
    // it in the moment before the chown, while it was still the holder's uid's.
    std::fs::remove_dir_all(&requests).unwrap();
    let foreign = d.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    std::fs::rename(&foreign, &requests).unwrap();
    assert!(request(&vault, user, Op::Status, Duration::from_secs(1)).is_err());
    std::fs::remove_dir_all(&requests).unwrap();
    served(&vault, user, "once the foreign directory left");
    assert_eq!(maintenance_error_until(&agent, Option::is_none), None);
    agent.close().unwrap();
}

/// Once the vault directory itself has been moved, whatever is at its old path is not
/// the vault's: the holder keeps serving the request directory that moved with the vault,
/// and if that is removed it opens none at the old path, even one a client made there,
/// and says so in `status`.
#[test]
fn after_the_vault_directory_moves_its_old_path_is_not_followed() {
    let user = "frank";
    let (d, vault, agent) = held(user);
    let moved = d.path().join("v.moved");
    std::fs::rename(&vault, &moved).unwrap();
    std::fs::create_dir(&vault).unwrap();
    for when in ["first", "second"] {
        served(&moved, user, &format!("at the vault's new path ({when})"));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !vault.join("requests").exists(),
        "the holder followed the old path"
    );
    std::fs::remove_dir_all(moved.join("requests")).unwrap();
    let got = request(&vault, user, Op::Erase, Duration::from_secs(2));
    assert!(
        matches!(got, Err(capvault::handoff::HandoffError::NoAnswer)),
        "a request at the old path was served: {got:?}"
    );
    assert!(!agent.status().is_ok_and(|s| s.erased));
    // `status` reads the vault's files by path, which are gone from there: the error is
    // kept for the handle's status, asked of the maintenance state directly.
    let problem = agent.test_maintenance_error().expect("status says why");
    assert!(problem.contains("no longer at"), "{problem}");
    agent.close().unwrap();
}

/// A program deletes the whole vault directory while the vault is held (say, a test's
/// clean-up, or `rm -rf`): the holder puts nothing back, so the deletion succeeds, and
/// it does not poll for a directory that cannot come back.
#[test]
fn deleting_a_held_vaults_directory_succeeds_and_nothing_comes_back() {
    let user = "gina";
    let (_d, vault, agent) = held(user);
    let _ = agent.append_mouse_move(1, 1, 1).unwrap();
    agent.flush().unwrap();
    // Depth first, as rm -rf and nftw do, with time between the steps for the holder to
    // (wrongly) make `requests/` again.
    std::fs::remove_dir_all(vault.join("requests")).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !vault.join("requests").exists(),
        "the holder made requests/ again"
    );
    std::fs::remove_dir_all(&vault).expect("the held vault's directory is deleted");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!vault.exists(), "something made the vault directory again");
    let problem = agent.test_maintenance_error().expect("status says why");
    assert!(
        problem.contains("hand-off requests are not served") && problem.contains("removed"),
        "{problem}"
    );
    drop(agent);
    assert!(!vault.exists());
}
