//! The `capvault` command-line tool, run as a user would: the built binary, spawned with
//! real keychains (`bash scripts/test.sh` provides Secret Service and keyutils), checking
//! output and exit codes (0 ok, 1 operational failure, 2 usage error, 3 integrity).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use capvault::{Event, Identity, KeyStoreKind, SeqEvent, Suite, Vault};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_capvault");

fn store_name(kind: KeyStoreKind) -> &'static str {
    match kind {
        KeyStoreKind::SecretService => "secret-service",
        KeyStoreKind::Keyutils => "keyutils",
        KeyStoreKind::MacosKeychain => "macos-keychain",
        KeyStoreKind::WindowsCredential => "windows-credential",
        _ => "auto",
    }
}

/// A vault directory in a temp dir plus the arguments that name it.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    user: String,
    store: KeyStoreKind,
}

impl Fixture {
    fn new(store: KeyStoreKind) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Fixture {
            dir: root.join("vault"),
            root,
            _tmp: tmp,
            user: "alice".into(),
            store,
        }
    }

    fn vault_args(&self) -> Vec<String> {
        vec![
            "--vault".into(),
            self.dir.display().to_string(),
            "--user".into(),
            self.user.clone(),
            "--keystore".into(),
            store_name(self.store).into(),
        ]
    }

    /// Runs `capvault <args> <vault args>`.
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(self.vault_args());
        run(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        assert_ok(&out, args);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {}", text(&out.stdout)))
    }

    fn init(&self) {
        let out = self.run(&["init"]);
        assert_ok(&out, &["init"]);
    }

    fn options(&self) -> capvault::VaultOptions {
        common::options(self.store)
    }

    /// Spawns `capvault serve` holding the vault; returns once it is ready.
    fn serve(&self) -> Server {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(self.vault_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "serve did not start");
        Server(child)
    }
}

/// A `capvault serve` child process, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CAPVAULT_VAULT")
        .env_remove("CAPVAULT_USER")
        .output()
        .expect("spawn capvault")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn assert_ok(out: &Output, what: &[&str]) {
    assert_eq!(
        code(out),
        0,
        "{what:?} failed\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Asserts the exit code and that stderr is one `error:` line containing `needle`.
fn assert_fails(out: &Output, want: i32, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(
        code(out),
        want,
        "stdout: {}\nstderr: {err}",
        text(&out.stdout)
    );
    assert!(
        err.to_lowercase().contains(&needle.to_lowercase()),
        "stderr lacks {needle:?}: {err}"
    );
}

fn events(n: u64, t0: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            if i % 10 == 0 {
                Event::WindowFocus {
                    ts_us: t0 + i as i64,
                    app: "Excel".into(),
                    title: format!("salary review {i}"),
                }
            } else {
                Event::MouseMove {
                    ts_us: t0 + i as i64,
                    x: i as i32,
                    y: -(i as i32),
                }
            }
        })
        .collect()
}

/// Appends events through the library (as a capture agent would), then closes.
fn capture(f: &Fixture, n: u64) {
    let v = Vault::open(&f.dir, &f.user, f.options()).unwrap();
    for e in events(n, 1_700_000_000_000_000) {
        let _ = v.append(e).unwrap();
    }
    v.flush().unwrap();
    v.close().unwrap();
}

// ----- admin commands -----

#[test]
fn init_status_rotate_list_verify_audit_on_every_keychain() {
    for store in common::stores() {
        let f = Fixture::new(store);
        f.init();
        let st = f.json(&["status"]);
        assert_eq!(st["keystore"], store_name(store));
        assert_eq!(st["kek_version"], 1);
        assert_eq!(st["erased"], false);
        let human = text(&f.run(&["status"]).stdout);
        assert!(human.contains("KEK        version 1"), "{human}");

        capture(&f, 50);
        let r = f.json(&["keys", "rotate"]);
        assert_eq!(r["rotated"], "dek");
        assert_eq!(r["epoch"], 2);
        let r = f.json(&["keys", "rotate", "--kek"]);
        assert_eq!(r["kek_version"], 2);
        let vault_id = st["vault_id"].as_str().unwrap();
        assert!(common::keychain_secret(store, &common::kek_name(vault_id, "alice", 1)).is_none());
        assert!(common::keychain_secret(store, &common::kek_name(vault_id, "alice", 2)).is_some());

        let keys = f.json(&["keys", "list"]);
        assert_eq!(keys["kek_version"], 2);
        assert_eq!(keys["current_epoch"], 2);
        let epochs = keys["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 2);
        assert!(epochs[0]["records"].as_u64().unwrap() >= 1);
        assert!(epochs[0]["created_us"].as_i64().unwrap() > 0);

        let v = f.json(&["verify"]);
        assert_eq!(v["ok"], true);
        assert!(v["events"].as_u64().unwrap() >= 50, "{v}");
        let out = f.run(&["verify"]);
        assert_ok(&out, &["verify"]);
        assert!(text(&out.stdout).starts_with("ok:"));

        let p = f.json(&["pause", "--for", "15m"]);
        assert!(p["paused_until_us"].as_i64().unwrap() > 0);
        assert!(f.json(&["status"])["pause"]["paused_until_us"].is_i64());
        f.json(&["resume"]);
        assert!(f.json(&["status"])["pause"]["paused_until_us"].is_null());

        let audit = f.json(&["audit"]);
        let actions: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        for want in ["rotate-dek", "rotate-kek", "pause", "resume"] {
            assert!(actions.contains(&want), "{actions:?}");
        }
        // Text output of audit is one line per entry (plus this run's own "open").
        let out = f.run(&["audit"]);
        assert_ok(&out, &["audit"]);
        assert_eq!(text(&out.stdout).lines().count(), actions.len() + 1);
    }
}

#[test]
fn usage_errors_exit_2_with_one_line_messages() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    // Missing --vault / --user.
    let out = run(&["status", "--user", "alice"]);
    assert_fails(&out, 2, "--vault DIR is required");
    let out = run(&["status", "--vault", "/tmp/x"]);
    assert_fails(&out, 2, "--user NAME is required");
    // Bad durations.
    let out = f.run(&["pause", "--for", "30x"]);
    assert_fails(&out, 2, "not a duration");
    let out = f.run(&["status", "--wait", "soon"]);
    assert_fails(&out, 2, "not a duration");
    // erase without --yes changes nothing.
    f.init();
    let out = f.run(&["erase"]);
    assert_fails(&out, 2, "--yes");
    assert_eq!(f.json(&["status"])["erased"], false);
    // A recipient with a typo: the checksum catches it.
    let id_file = f.root.join("c.identity");
    let out = run(&["recipient", "new", "--out", id_file.to_str().unwrap()]);
    assert_ok(&out, &["recipient new"]);
    let recipient = text(&out.stdout).trim().to_string();
    let mut typo: Vec<char> = recipient.chars().collect();
    let i = typo.len() - 5;
    typo[i] = if typo[i] == 'q' { 'p' } else { 'q' };
    let typo: String = typo.into_iter().collect();
    let out = f.run(&["seal", "--to", &typo, "--out-dir", "/tmp/unused"]);
    assert_fails(&out, 2, "checksum");
    assert!(!Path::new("/tmp/unused").join("x").exists());
    // Bad ack ids, unknown commands.
    let out = f.run(&["ack", "not-a-bundle"]);
    assert_fails(&out, 2, "not a bundle id");
    let out = run(&["frobnicate"]);
    assert_eq!(code(&out), 2);
}

#[test]
fn help_shows_an_example_for_every_command() {
    for cmd in [
        vec!["demo"],
        vec!["init"],
        vec!["status"],
        vec!["verify"],
        vec!["pause"],
        vec!["resume"],
        vec!["keys", "list"],
        vec!["keys", "rotate"],
        vec!["seal"],
        vec!["ack"],
        vec!["erase"],
        vec!["enroll"],
        vec!["show"],
        vec!["audit"],
        vec!["recipient", "new"],
        vec!["recipient", "show"],
        vec!["open"],
        vec!["receipt"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = run(&args);
        assert_ok(&out, &args);
        let help = text(&out.stdout);
        assert!(help.contains("Example"), "{cmd:?}: {help}");
        assert!(help.contains("capvault "), "{cmd:?}");
    }
    let out = run(&["--help"]);
    assert!(text(&out.stdout).contains("Exit codes"));
}

#[test]
fn wrong_vault_or_user_fails_and_changes_nothing() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    let out = f.run(&["status"]);
    assert_fails(&out, 1, "no vault at");
    assert!(!f.dir.exists(), "status must not create a vault");
    f.init();
    let before = common::files_under(&f.dir).len();
    let mut other = f.vault_args();
    other[3] = "bob".into();
    let mut args = vec!["keys".to_string(), "rotate".to_string()];
    args.extend(other);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_fails(&out, 1, "has no user 'bob'");
    // Still no user bob afterwards.
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_fails(&out, 1, "has no user 'bob'");
    assert_eq!(f.json(&["status"])["kek_version"], 1);
    assert!(common::files_under(&f.dir).len() >= before);
}

// ----- hand-off while another process holds the vault -----

#[test]
fn rotation_and_admin_while_another_process_holds_the_vault() {
    for store in common::stores() {
        let f = Fixture::new(store);
        f.init();
        capture(&f, 20);
        let server = f.serve();
        let r = f.json(&["keys", "rotate", "--kek"]);
        assert_eq!(r["kek_version"], 2);
        let r = f.json(&["keys", "rotate"]);
        assert_eq!(r["epoch"], 2);
        let st = f.json(&["status"]);
        assert_eq!(st["kek_version"], 2);
        assert_eq!(st["current_epoch"], 2);
        assert_eq!(
            f.json(&["keys", "list"])["epochs"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        f.json(&["pause", "--for", "10m"]);
        assert!(f.json(&["status"])["pause"]["paused_until_us"].is_i64());
        f.json(&["resume"]);
        // Commands without a hand-off say what to do.
        let out = f.run(&["verify"]);
        assert_fails(&out, 1, "in use by another process");
        // Nothing is left behind in the request directory.
        let left: Vec<_> = std::fs::read_dir(f.dir.join("requests"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        drop(server);
        // The rotations are durable and everything verifies after the owner is gone.
        let st = f.json(&["status"]);
        assert_eq!(st["kek_version"], 2);
        assert_eq!(f.json(&["verify"])["ok"], true);
    }
}

#[test]
fn vault_held_by_a_process_that_does_not_answer() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    // This test process holds the vault directory's lock (as a hung or foreign process
    // would) and never serves requests.
    let held = capvault::testing::open_raw_db(&f.dir);
    let t = std::time::Instant::now();
    let out = f.run(&["keys", "rotate", "--kek", "--wait", "1s"]);
    assert_fails(
        &out,
        1,
        "held by another process that does not answer requests; stop the capture agent or retry",
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    // The unanswered request was withdrawn, so nothing happens later.
    let left = std::fs::read_dir(f.dir.join("requests")).unwrap().count();
    assert_eq!(left, 0);
    drop(held);
    assert_eq!(f.json(&["status"])["kek_version"], 1);
}

#[test]
fn an_agent_holding_the_vault_answers_admin_requests_by_itself() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    // A capture agent (this process, through the library) holds the vault and keeps
    // appending; it runs no hand-off code of its own.
    let agent = Vault::open(&f.dir, &f.user, f.options()).unwrap();
    let _ = agent.append_mouse_move(1, 1, 1).unwrap();
    let out = f.run(&["keys", "rotate", "--kek", "--wait", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = f.run(&["keys", "rotate", "--wait", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = f.run(&["pause", "--for", "1m", "--wait", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        agent.append_mouse_move(2, 2, 2).unwrap(),
        capvault::Appended::Paused
    );
    let out = f.run(&["resume", "--wait", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let st = agent.status().unwrap();
    assert_eq!(st.kek_version, 2);
    assert_eq!(st.current_epoch, 2);
    let out = f.run(&["erase", "--yes", "--wait", "10s"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(matches!(
        agent.append_mouse_move(3, 3, 3),
        Err(capvault::Error::Erased)
    ));
    drop(agent);
    assert!(matches!(
        Vault::open(&f.dir, &f.user, f.options()),
        Err(capvault::Error::Erased)
    ));
}

// ----- integrity -----

#[test]
fn verify_exits_3_on_a_tampered_vault() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    capture(&f, 200);
    assert_eq!(f.json(&["verify"])["ok"], true);
    {
        let db = capvault::testing::open_raw_db(&f.dir);
        let log = common::user_tree(&db, &f.user, "log");
        let (key, value) = log
            .iter()
            .map(Result::unwrap)
            .find(|(k, _)| k.len() == 9 && k[0] == 0x00)
            .expect("a record");
        let mut bytes = value.to_vec();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x01;
        log.insert(key, bytes).unwrap();
        db.flush().unwrap();
    }
    let out = f.run(&["verify"]);
    assert_fails(&out, 3, "integrity check failed");
    let out = f.run(&["verify", "--json"]);
    assert_eq!(code(&out), 3);
}

// ----- collector side -----

/// Two chained bundles sealed as a vault would, for the collector commands.
fn test_bundles(identity: &Identity) -> Vec<capvault::SealedBundle> {
    use capvault::test_hooks::{seal_bundle, BundleInput};
    let seed = [7u8; 32];
    let evs: Vec<SeqEvent> = events(20, 1_700_000_000_000_000)
        .into_iter()
        .enumerate()
        .map(|(i, event)| SeqEvent {
            seq: i as u64,
            event,
        })
        .collect();
    let mut out: Vec<capvault::SealedBundle> = Vec::new();
    for (n, chunk) in evs.chunks(10).enumerate() {
        let prev = out.last().map(|b| *b.digest()).unwrap_or([0; 32]);
        let input = BundleInput {
            device_id: [0x42; 16],
            stream_id: [0x22; 16],
            records_lost: 0,
            bundle_seq: n as u64 + 1,
            first_record: n as u64 + 1,
            last_record: n as u64 + 1,
            prev_digest: prev,
            created_us: 1_700_000_000_000_000,
            purpose: "activity-capture",
            user: "alice",
            events: chunk,
            audit: &[],
        };
        out.push(seal_bundle(&input, &identity.recipient(), &seed).unwrap());
    }
    out
}

/// `capvault open` writes every event of the bundles in clear: a redirected stdout must
/// be one's own, owner-only already and have one name; anything else is refused before
/// anything is written.
#[test]
fn open_writes_plaintext_only_where_no_one_else_can_read_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let id_file = tmp.path().join("collector.identity");
    assert_ok(
        &run(&["recipient", "new", "--out", id_file.to_str().unwrap()]),
        &[],
    );
    let identity = Identity::read_from_file(&id_file).unwrap();
    let bundle = tmp.path().join("b.cvb");
    std::fs::write(&bundle, test_bundles(&identity)[0].bytes()).unwrap();
    let open_into = |file: &Path| {
        Command::new(BIN)
            .args(["open", "--identity"])
            .args([&id_file, &bundle])
            .stdout(std::fs::OpenOptions::new().write(true).open(file).unwrap())
            .output()
            .unwrap()
    };
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    // Others could open it (and may have already): refused, nothing written.
    let mine = tmp.path().join("events.jsonl");
    std::fs::write(&mine, b"").unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_fails(&open_into(&mine), 1, "umask 077");
    assert_eq!(std::fs::metadata(&mine).unwrap().len(), 0);
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = open_into(&mine);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(mode(&mine), 0o600);
    assert!(std::fs::metadata(&mine).unwrap().len() > 0);
    // The identity is a secret: `recipient new --out -` likewise.
    let id_out = tmp.path().join("identity.out");
    std::fs::write(&id_out, b"").unwrap();
    std::fs::set_permissions(&id_out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .args(["recipient", "new", "--out", "-"])
        .stdout(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&id_out)
                .unwrap(),
        )
        .output()
        .unwrap();
    assert_fails(&out, 1, "umask 077");
    assert_eq!(std::fs::metadata(&id_out).unwrap().len(), 0);

    let linked = tmp.path().join("linked.jsonl");
    std::fs::write(&linked, b"").unwrap();
    std::fs::hard_link(&linked, tmp.path().join("their-name")).unwrap();
    let out = open_into(&linked);
    assert_fails(&out, 1, "other names");
    assert_eq!(std::fs::metadata(&linked).unwrap().len(), 0);

    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        let theirs = tmp.path().join("theirs.jsonl");
        std::fs::write(&theirs, b"").unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let out = open_into(&theirs);
        assert_fails(&out, 1, "another user");
        assert_eq!(std::fs::metadata(&theirs).unwrap().len(), 0);
    }
}

#[test]
fn recipient_open_receipt_as_a_collector_would() {
    let tmp = tempfile::tempdir().unwrap();
    let id_file = tmp.path().join("collector.identity");
    let out = run(&["recipient", "new", "--out", id_file.to_str().unwrap()]);
    assert_ok(&out, &["recipient new"]);
    let recipient = text(&out.stdout).trim().to_string();
    assert!(recipient.starts_with("cvrecip-x25519-1"), "{recipient}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&id_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Never overwrites an identity.
    let out = run(&["recipient", "new", "--out", id_file.to_str().unwrap()]);
    assert_fails(&out, 1, "already exists");
    // --pq and --json.
    let pq_file = tmp.path().join("pq.identity");
    let out = run(&[
        "recipient",
        "new",
        "--pq",
        "--json",
        "--out",
        pq_file.to_str().unwrap(),
    ]);
    assert_ok(&out, &["recipient new --pq"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["recipient"]
        .as_str()
        .unwrap()
        .starts_with("cvrecip-xwing-1"));

    let identity = Identity::read_from_file(&id_file).unwrap();
    let bundles = test_bundles(&identity);
    let mut files = Vec::new();
    for b in &bundles {
        let p = tmp.path().join(format!("{}.cvb", b.id()));
        std::fs::write(&p, b.bytes()).unwrap();
        files.push(p.display().to_string());
    }
    // Given in reverse order: opened in sequence order anyway.
    let mut args = vec!["open", "--identity", id_file.to_str().unwrap()];
    args.extend(files.iter().rev().map(String::as_str));
    let out = run(&args);
    assert_ok(&out, &args);
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    assert_eq!(lines[0]["type"], "window_focus");
    assert_eq!(lines[0]["title"], "salary review 0");
    assert_eq!(lines[1]["type"], "mouse_move");
    assert_eq!(lines[1]["x"], 1);
    let err = text(&out.stderr);
    assert!(err.contains("chain: device"), "{err}");
    assert!(err.contains(": ok"), "{err}");

    // Wrong identity: a clear message, exit 1.
    let other = tmp.path().join("other.identity");
    assert_ok(
        &run(&["recipient", "new", "--out", other.to_str().unwrap()]),
        &[],
    );
    let out = run(&["open", "--identity", other.to_str().unwrap(), &files[0]]);
    assert_fails(&out, 1, "not sealed to this identity");
    assert!(out.stdout.is_empty());
    // Unreadable or missing bundle files: exit 1.
    let missing = tmp.path().join("nope.cvb");
    let out = run(&[
        "open",
        "--identity",
        id_file.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_fails(&out, 1, "cannot read the bundle");
    let junk = tmp.path().join("junk.cvb");
    std::fs::write(&junk, b"hello").unwrap();
    let out = run(&[
        "open",
        "--identity",
        id_file.to_str().unwrap(),
        junk.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    // A modified bundle: integrity failure, exit 3, no events.
    let mut bad = bundles[1].bytes().to_vec();
    let i = bad.len() / 2;
    bad[i] ^= 0x80;
    let bad_file = tmp.path().join("bad.cvb");
    std::fs::write(&bad_file, &bad).unwrap();
    let out = run(&[
        "open",
        "--identity",
        id_file.to_str().unwrap(),
        bad_file.to_str().unwrap(),
    ]);
    assert_fails(&out, 3, "integrity check failed");
    assert!(out.stdout.is_empty());
    // Bundle 2 alone is fine (a set that starts mid-chain is informational).
    let out = run(&["open", "--identity", id_file.to_str().unwrap(), &files[1]]);
    assert_ok(&out, &["open bundle 2"]);
    // A missing identity file.
    let out = run(&["open", "--identity", "/nonexistent/id", &files[0]]);
    assert_fails(&out, 1, "identity file");
    // --blobs-dir is accepted; --json reports the chain on stderr as JSON.
    let out = run(&[
        "open",
        "--json",
        "--identity",
        id_file.to_str().unwrap(),
        &files[0],
        &files[1],
    ]);
    assert_ok(&out, &["open --json"]);
    let report: Value = serde_json::from_str(text(&out.stderr).trim()).unwrap();
    assert_eq!(report["chain_clean"], true);
    assert_eq!(report["events"], 20);

    // Receipts verify against the identity's receipt key.
    let receipts = tmp.path().join("receipts.txt");
    let out = run(&[
        "receipt",
        "--identity",
        id_file.to_str().unwrap(),
        &files[0],
        &files[1],
        "--out",
        receipts.to_str().unwrap(),
    ]);
    assert_ok(&out, &["receipt"]);
    let body = std::fs::read_to_string(&receipts).unwrap();
    assert_eq!(body.lines().count(), 2);
    for (line, b) in body.lines().zip(&bundles) {
        let (id, r) = line.split_once(' ').unwrap();
        assert_eq!(id, b.id());
        let r = data_encoding::BASE64.decode(r.as_bytes()).unwrap();
        capvault::verify_receipt(&identity.receipt_key(), b.digest(), &r).unwrap();
    }
    // No receipt for a bundle that is not ours.
    let out = run(&["receipt", "--identity", other.to_str().unwrap(), &files[0]]);
    assert_fails(&out, 1, "not sealed to this identity");
}

// ----- seal, ack, show, erase, demo (need the sealing and erase calls of the vault) -----

#[test]
fn seal_open_ack_with_receipts_end_to_end() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    let (id_file, recipient, receipt_key) = new_identity(&f.root, "collector.identity");
    f.init();
    // Three captures, three records at least: more than one 2K bundle.
    for _ in 0..3 {
        capture(&f, 100);
    }
    let outbox = f.root.join("outbox");
    let seal = || {
        f.json(&[
            "seal",
            "--to",
            &recipient,
            "--out-dir",
            outbox.to_str().unwrap(),
            "--max-bytes",
            "2K",
        ])["bundles"]
            .as_array()
            .unwrap()
            .clone()
    };
    let open = |files: &[&str]| {
        let mut args = vec!["open", "--identity", id_file.to_str().unwrap()];
        args.extend(files);
        let out = run(&args);
        assert_ok(&out, &args);
        text(&out.stdout)
    };
    let first = seal();
    assert_eq!(first.len(), 1);
    let first_id = first[0]["id"].as_str().unwrap().to_string();
    // Unacknowledged: the same range is offered again.
    let again = seal();
    assert_eq!(again[0]["bundle_seq"], first[0]["bundle_seq"]);
    assert_eq!(again[0]["first_record"], first[0]["first_record"]);
    // A vault that requires receipts refuses an ack without one, and changes nothing.
    let out = f.run(&["ack", &first_id, "--receipt-key", &receipt_key]);
    assert_ne!(code(&out), 0, "{}", text(&out.stdout));
    let records_before = f.json(&["status"])["records"].as_u64().unwrap();
    assert!(records_before > 0);

    let receipts = f.root.join("receipts.txt");
    let mut files: Vec<String> = Vec::new();
    let mut bundle = first;
    let mut rounds = 0;
    while let Some(b) = bundle.first() {
        rounds += 1;
        assert!(rounds < 1000, "sealing does not end");
        let file = b["file"].as_str().unwrap().to_string();
        // The bundle holds no window title or user name in clear.
        let bytes = std::fs::read(&file).unwrap();
        assert!(!common::contains(&bytes, b"salary review"));
        assert!(!common::contains(&bytes, b"alice"));
        let args = [
            "receipt",
            "--identity",
            id_file.to_str().unwrap(),
            &file,
            "--out",
            receipts.to_str().unwrap(),
        ];
        assert_ok(&run(&args), &args);
        let acked = f.json(&[
            "ack",
            "--receipt",
            receipts.to_str().unwrap(),
            "--receipt-key",
            &receipt_key,
        ]);
        assert_eq!(acked["acknowledged"].as_array().unwrap().len(), 1);
        files.push(file);
        bundle = seal();
    }
    assert!(rounds >= 2, "2K bundles should split 300 events");
    // Every bundle that was acknowledged opens, in order, with a clean chain.
    let refs: Vec<&str> = files.iter().map(String::as_str).collect();
    let all = open(&refs);
    let n = all
        .lines()
        .filter(|l| l.contains("\"mouse_move\"") || l.contains("\"window_focus\""))
        .count();
    assert_eq!(n, 300);
    assert_eq!(f.json(&["status"])["records"], 0);
    assert!(f
        .json(&["audit"])
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "ack"));
}

#[test]
fn show_is_audited_and_erase_leaves_nothing_readable() {
    for store in common::stores() {
        let f = Fixture::new(store);
        f.init();
        capture(&f, 30);
        let out = f.run(&["show"]);
        assert_ok(&out, &["show"]);
        let lines: Vec<Value> = text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.iter().any(|l| l["title"] == "salary review 10"));
        let audit = f.json(&["audit"]);
        assert!(audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"].as_str().unwrap().contains("subject")));

        let vault_id = f.json(&["status"])["vault_id"]
            .as_str()
            .unwrap()
            .to_string();
        let out = f.run(&["erase", "--yes"]);
        assert_ok(&out, &["erase"]);
        let st = f.json(&["status"]);
        assert_eq!(st["erased"], true);
        let out = f.run(&["status"]);
        assert_ok(&out, &["status"]);
        assert!(text(&out.stdout).contains("erased"));
        for cmd in [&["show"][..], &["verify"], &["keys", "rotate"]] {
            let out = f.run(cmd);
            assert_fails(&out, 1, "erased");
            assert!(!text(&out.stdout).contains("salary"));
        }
        // The ledger went with the data; audit shows the erasure record.
        let audit = f.json(&["audit"]);
        let entries = audit.as_array().unwrap();
        assert_eq!(entries.len(), 1, "{audit}");
        assert_eq!(entries[0]["action"], "erase");
        assert!(common::keychain_secret(store, &common::kek_name(&vault_id, "alice", 1)).is_none());
        for file in common::files_under(&f.dir) {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !common::contains(&bytes, b"salary review"),
                "{}",
                file.display()
            );
        }
    }
}

/// A ledger pruned after acknowledgements: `status` and `audit` say which entries left
/// the device, `--json` gives the count and the kept entries, `verify` passes.
#[test]
fn status_and_audit_say_which_ledger_entries_were_pruned() {
    use capvault::test_hooks::{record_audit, LEDGER_KEEP};
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    let id = Identity::generate(Suite::X25519);
    let v = Vault::open(&f.dir, &f.user, f.options()).unwrap();
    for i in 0..LEDGER_KEEP + 20 {
        record_audit(&v, "test", &format!("entry {i}")).unwrap();
    }
    for e in events(5, 1_700_000_000_000_000) {
        let _ = v.append(e).unwrap();
    }
    v.flush().unwrap();
    let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
    v.ack(b.id(), None).unwrap();
    let pruned = v.status().unwrap().audit_entries_pruned;
    assert!(pruned > 20, "{pruned}");
    v.close().unwrap();

    let st = f.json(&["status"]);
    assert_eq!(st["audit_entries_pruned"], pruned);
    let out = f.run(&["status"]);
    assert_ok(&out, &["status"]);
    assert!(
        text(&out.stdout).contains(&format!(
            "the oldest {pruned} released and pruned from this device"
        )),
        "{}",
        text(&out.stdout)
    );
    let out = f.run(&["audit"]);
    assert_ok(&out, &["audit"]);
    let shown = text(&out.stdout);
    assert!(
        shown.lines().next().unwrap().contains(&format!(
            "entries 1 to {pruned} were released to the collector and pruned from this device"
        )),
        "{}",
        shown.lines().next().unwrap()
    );
    let audit = f.json(&["audit"]);
    let entries = audit.as_array().unwrap();
    assert_eq!(entries[0]["seq"], pruned + 1);
    assert!(entries.iter().any(|e| e["action"] == "ack"));
    assert_ok(&f.run(&["verify"]), &["verify"]);
    assert_ok(&f.run(&["erase", "--yes"]), &["erase"]);
}

#[test]
fn erase_while_another_process_holds_the_vault() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    capture(&f, 10);
    let mut server = f.serve();
    let out = f.run(&["erase", "--yes"]);
    assert_ok(&out, &["erase"]);
    // The serving process closed the vault, erased it and exited.
    let status = server.0.wait().unwrap();
    assert!(status.success());
    assert_eq!(f.json(&["status"])["erased"], true);
}

/// The demo runs the `capvault-collector` next to `capvault`: make sure it is built
/// (`cargo nextest run --workspace` builds it; a single test binary may not have).
fn ensure_collector_beside_capvault() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = Path::new(BIN).parent().unwrap();
        let bin = dir.join(format!(
            "capvault-collector{}",
            std::env::consts::EXE_SUFFIX
        ));
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["build", "-p", "capvault-collector"])
                .env("CARGO_TARGET_DIR", dir.parent().unwrap());
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            assert!(cmd.status().unwrap().success(), "building the collector");
        }
        assert!(bin.exists(), "no collector at {}", bin.display());
    });
}

#[test]
fn demo_end_to_end() {
    ensure_collector_beside_capvault();
    let tmp = tempfile::tempdir().unwrap();
    let keep = tmp.path().join("kept");
    let out = run(&[
        "demo",
        "--seconds",
        "2",
        "--json",
        "--keep",
        keep.to_str().unwrap(),
    ]);
    assert_ok(&out, &["demo"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["seconds_simulated"], 2);
    assert!(r["events"]["mouse"].as_u64().unwrap() >= 2000);
    assert_eq!(r["events"]["screenshots"], 2);
    assert!(r["events"]["dropped_while_paused"].as_u64().unwrap() > 0);
    assert!(r["epochs"].as_u64().unwrap() >= 2);
    // Uploaded to the real collector over loopback, each bundle acknowledged with a
    // verified receipt, nothing left.
    assert!(
        r["collector"]["url"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:"),
        "{r}"
    );
    let up = &r["upload"];
    assert!(up["bundles"].as_u64().unwrap() >= 1, "{up}");
    assert_eq!(up["receipts_verified"], up["bundles"]);
    assert_eq!(up["pending_bundles"], 0);
    assert_eq!(up["enrolled"], true);
    assert_eq!(r["records_left_after_ack"], 0);
    // What the collector's export released: every stored event, once, attributed.
    let x = &r["export"];
    assert_eq!(x["all_arrived_once"], true, "{x}");
    assert_eq!(x["attributed"], true, "{x}");
    assert_eq!(x["events_captured"], r["events"]["stored"], "{x}");
    for (t, n) in x["by_type"].as_object().unwrap() {
        assert_eq!(n["stored"], n["exported"], "{t}: {n}");
    }
    assert_eq!(x["by_type"]["screenshot"]["exported"], 2, "{x}");
    assert_eq!(x["users"], serde_json::json!(["demo-user"]));
    assert!(x["bundle_ids"].as_u64().unwrap() >= 1);
    assert_eq!(r["chain_clean"], true);
    assert_eq!(
        r["bundles"], up["bundles"],
        "one stored blob per uploaded bundle"
    );
    assert_eq!(r["secrets_found_in_bundles"].as_array().unwrap().len(), 0);
    assert!(keep.join("vault").is_dir());
    assert!(keep.join("collector.identity").is_file());
    assert!(!common::files_under(keep.join("collector/bundles")).is_empty());
    // What the demo and its collector wrote (bundles, identity, state, log) is for its
    // owner only, as `seal` writes bundles. (The vault's own files are the vault's
    // business, checked by its tests.)
    {
        use std::os::unix::fs::PermissionsExt;
        let mut written = common::files_under(keep.join("collector"));
        written.push(keep.join("collector.identity"));
        written.push(keep.join("collector-serve.log"));
        for file in written {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is {:o}", file.display(), mode & 0o777);
        }
    }
    // The text report, with no arguments but the length; the progress bar goes to
    // stderr when it is a terminal, the report to stdout.
    let (code, stdout, tty) = run_on_tty("stderr", &["demo", "--seconds", "1"]);
    assert_eq!(code, 0, "{tty}");
    assert!(tty.contains("capturing"), "no progress bar: {tty:?}");
    let s = text(&stdout);
    assert!(!s.contains("capturing ["), "{s}");
    for want in [
        "events",
        "storage",
        "collector",
        "upload",
        "export",
        "insider",
    ] {
        assert!(s.contains(want), "{s}");
    }
}

/// A copy of `capvault` alone in a directory (with `extra` files beside it), so the
/// demo finds only the collector placed there, or none.
fn lone_capvault(dir: &Path, collector_script: Option<&str>) -> PathBuf {
    let bin = dir.join("capvault");
    std::fs::copy(BIN, &bin).unwrap();
    if let Some(script) = collector_script {
        use std::os::unix::fs::PermissionsExt;
        let c = dir.join("capvault-collector");
        std::fs::write(&c, script).unwrap();
        std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn demo_without_a_collector_says_how_to_build_it() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = lone_capvault(tmp.path(), None);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let keep = tmp.path().join("kept");
    let out = Command::new(&bin)
        .args(["demo", "--seconds", "1", "--keep", keep.to_str().unwrap()])
        .env("PATH", &empty)
        .output()
        .unwrap();
    assert_fails(&out, 1, "cargo build --release --workspace --bins");
    assert!(text(&out.stderr).contains("capvault-collector"));
    assert!(!keep.exists(), "nothing was created");
}

#[test]
fn demo_reports_a_collector_that_fails_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = lone_capvault(
        tmp.path(),
        Some(
            "#!/bin/sh\ncase \"$1\" in\n  init) echo '{\"receipt_key\": \"cvreceipt-ed25519-1x\", \"token\": \"t\"}';;\n  serve) echo 'error: cannot bind 127.0.0.1:0: simulated' >&2; exit 1;;\nesac\n",
        ),
    );
    let out = Command::new(&bin)
        .args(["demo", "--seconds", "1"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "the collector failed to start");
    assert!(
        text(&out.stderr).contains("simulated"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn without_a_usable_keychain_nothing_is_written() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("vault");
    let out = Command::new(BIN)
        .args([
            "init",
            "--vault",
            dir.to_str().unwrap(),
            "--user",
            "alice",
            "--keystore",
            "secret-service",
        ])
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/capvault-test-bus",
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("Secret Service") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        !dir.exists(),
        "no vault directory (and so no data) was created"
    );
}

#[test]
fn seal_retries_are_identical_enroll_works_held_or_not_and_the_receipt_key_sticks() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    let (id_file, recipient, receipt_key) = new_identity(&f.root, "collector.identity");
    let (other_file, other_recipient, other_key) = new_identity(&f.root, "other.identity");
    f.init();
    capture(&f, 50);
    let outbox = f.root.join("outbox");
    let seal = |to: &str| {
        f.run(&[
            "seal",
            "--json",
            "--to",
            to,
            "--out-dir",
            outbox.to_str().unwrap(),
        ])
    };
    let a: Value = serde_json::from_slice(&seal(&recipient).stdout).unwrap();
    let a = a["bundles"][0].clone();
    let file = a["file"].as_str().unwrap().to_string();
    let bytes = std::fs::read(&file).unwrap();
    capture(&f, 10);
    let b: Value = serde_json::from_slice(&seal(&recipient).stdout).unwrap();
    assert_eq!(b["bundles"][0]["id"], a["id"], "a retry is the same bundle");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    // Sealing to another collector while one is pending: refused, both named.
    let out = seal(&other_recipient);
    assert_fails(&out, 1, &recipient);
    assert!(text(&out.stderr).contains(&other_recipient));

    // Enrollment: a record that verifies and names the key that signed the bundle.
    let enroll_file = f.root.join("device.enroll.json");
    let r = f.json(&["enroll", "--out", enroll_file.to_str().unwrap()]);
    let record =
        capvault::EnrollmentRecord::from_json(&std::fs::read_to_string(&enroll_file).unwrap())
            .unwrap();
    assert_eq!(r["device_id"], record.device_id_hex());
    assert_eq!(r["path"], enroll_file.display().to_string());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&enroll_file)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let inspected = capvault::inspect_bundle(&bytes).unwrap();
    assert_eq!(inspected.header.device_key(), &record.device_key());
    let out = f.run(&["enroll", "--out", "-"]);
    assert_ok(&out, &["enroll --out -"]);
    assert_eq!(text(&out.stdout).trim(), record.to_json());
    {
        let _server = f.serve();
        let out = f.run(&["enroll", "--out", "-"]);
        assert_ok(&out, &["enroll through the hand-off"]);
        assert_eq!(text(&out.stdout).trim(), record.to_json());
    }

    // Configure the receipt key once (this ack fails: no receipt) ...
    let id = a["id"].as_str().unwrap();
    let out = f.run(&["ack", id, "--receipt-key", &receipt_key]);
    assert_fails(&out, 1, "receipt");
    // ... and it stays required without --receipt-key.
    let out = f.run(&["ack", id]);
    assert_fails(&out, 1, &receipt_key);
    // A receipt from another collector is a configuration mistake (exit 1), naming both.
    // (`capvault receipt` only signs bundles sealed to its identity: sign directly.)
    let wrong = f.root.join("wrong-receipts.txt");
    let other = Identity::read_from_file(&other_file).unwrap();
    let receipt = other.receipt_for(&inspected.digest);
    std::fs::write(
        &wrong,
        format!(
            "{} {}\n",
            inspected.id,
            data_encoding::BASE64.encode(&receipt)
        ),
    )
    .unwrap();
    let out = f.run(&["ack", "--receipt", wrong.to_str().unwrap()]);
    assert_fails(&out, 1, &other_key);
    assert!(text(&out.stderr).contains(&receipt_key));
    assert!(f.json(&["status"])["records"].as_u64().unwrap() > 0);
    let good = f.root.join("receipts.txt");
    let args = [
        "receipt",
        "--identity",
        id_file.to_str().unwrap(),
        &file,
        "--out",
        good.to_str().unwrap(),
    ];
    assert_ok(&run(&args), &args);
    let acked = f.json(&["ack", "--receipt", good.to_str().unwrap()]);
    assert_eq!(acked["acknowledged"][0], a["id"]);
    // The next bundle follows it in the same stream.
    let c: Value = serde_json::from_slice(&seal(&recipient).stdout).unwrap();
    let next = std::fs::read(c["bundles"][0]["file"].as_str().unwrap()).unwrap();
    let next = capvault::inspect_bundle(&next).unwrap();
    assert_eq!(next.header.bundle_seq(), 2);
    assert_eq!(next.header.prev_digest(), &inspected.digest);
    assert_eq!(next.header.stream_id(), inspected.header.stream_id());
}

// ----- conventions: progress bars, `-`, short flags, secrets, messages, outcomes -----

/// Runs `capvault` from `cwd` with `stdin` piped in (or none).
fn run_with(cwd: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("CAPVAULT_VAULT")
        .env_remove("CAPVAULT_USER")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn capvault");
    if let Some(bytes) = stdin {
        // A command that refuses its arguments exits without reading its input, and may
        // have closed the pipe before this write: its exit code and message are what the
        // caller checks.
        match child.stdin.take().unwrap().write_all(bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("writing capvault's stdin: {e}"),
        }
    }
    child.wait_with_output().unwrap()
}

/// Runs `capvault` with one of its streams on a pseudo-terminal (python3's `pty`): with
/// `tty_side` "stderr", stderr is the terminal and stdout a pipe; with "stdin", stdin is
/// the terminal. Returns the exit code, stdout, and what reached the terminal (plus
/// stderr when stdin is the terminal).
fn run_on_tty(tty_side: &str, args: &[&str]) -> (i32, Vec<u8>, String) {
    const SCRIPT: &str = r#"
import fcntl, os, pty, struct, subprocess, sys, termios, threading
side, out_path, tty_path = sys.argv[1:4]
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
kw = {"stdout": subprocess.PIPE}
if side == "stderr":
    kw.update(stderr=slave, stdin=subprocess.DEVNULL)
else:
    kw.update(stdin=slave, stderr=subprocess.PIPE)
p = subprocess.Popen(sys.argv[4:], **kw)
os.close(slave)
got = {}
def drain(name, f):
    got[name] = f.read()
threads = [threading.Thread(target=drain, args=("out", p.stdout))]
if side != "stderr":
    threads.append(threading.Thread(target=drain, args=("err", p.stderr)))
for t in threads:
    t.start()
tty = b""
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:
        break
    if not chunk:
        break
    tty += chunk
code = p.wait()
for t in threads:
    t.join()
open(out_path, "wb").write(got["out"])
open(tty_path, "wb").write(tty + got.get("err", b""))
sys.exit(code)
"#;
    let tmp = tempfile::tempdir().unwrap();
    let (out, tty) = (tmp.path().join("stdout"), tmp.path().join("tty"));
    let status = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(tty_side)
        .arg(&out)
        .arg(&tty)
        .arg(BIN)
        .args(args)
        .env_remove("CAPVAULT_VAULT")
        .env_remove("CAPVAULT_USER")
        .status()
        .expect("python3 runs (scripts/test.sh installs it)");
    (
        status.code().expect("exited normally"),
        std::fs::read(&out).unwrap(),
        text(&std::fs::read(&tty).unwrap()),
    )
}

/// A collector identity made with the CLI: (file, recipient, receipt key).
fn new_identity(dir: &Path, name: &str) -> (PathBuf, String, String) {
    let file = dir.join(name);
    let out = run(&[
        "recipient",
        "new",
        "--json",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_ok(&out, &["recipient new"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        file,
        v["recipient"].as_str().unwrap().to_string(),
        v["receipt_key"].as_str().unwrap().to_string(),
    )
}

/// Every line of `out` is a JSON object.
fn assert_json_lines(out: &[u8]) -> usize {
    let s = text(out);
    for l in s.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
        assert!(v.is_object(), "{l}");
    }
    s.lines().count()
}

/// A vault with records and one sealed bundle: (fixture, identity file, bundle file).
fn sealed_fixture() -> (Fixture, PathBuf, String) {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    let (id_file, recipient, _) = new_identity(&f.root, "collector.identity");
    f.init();
    capture(&f, 30);
    let outbox = f.root.join("outbox");
    let v = f.json(&[
        "seal",
        "--to",
        &recipient,
        "--out-dir",
        outbox.to_str().unwrap(),
    ]);
    let file = v["bundles"][0]["file"].as_str().unwrap().to_string();
    (f, id_file, file)
}

#[test]
fn progress_bars_go_to_stderr_when_it_is_a_terminal_whatever_stdout_is() {
    let (f, id_file, bundle) = sealed_fixture();
    let id = id_file.to_str().unwrap();
    let mut vault_args = f.vault_args();
    // verify: JSON on stdout (a pipe) stays clean, the bar is drawn on the terminal.
    let mut args: Vec<String> = vec!["verify".into(), "--json".into()];
    args.append(&mut vault_args.clone());
    let (code, out, tty) = run_on_tty(
        "stderr",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{tty}");
    let v: Value = serde_json::from_slice(&out).expect("stdout is only the JSON document");
    assert_eq!(v["ok"], true);
    assert!(
        tty.contains("verifying records"),
        "no bar on the terminal: {tty:?}"
    );
    // seal: the same.
    let outbox = f.root.join("outbox");
    let recipient = Identity::read_from_file(&id_file)
        .unwrap()
        .recipient()
        .to_string();
    let mut args: Vec<String> = ["seal", "-t", &recipient, "-o", outbox.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    args.append(&mut vault_args);
    let (code, out, tty) = run_on_tty(
        "stderr",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{tty}");
    assert!(text(&out).contains(".cvb"));
    assert!(tty.contains("sealing"), "{tty:?}");
    // open > events.jsonl: a bar on the terminal, pure JSON Lines in the file.
    let (code, out, tty) = run_on_tty("stderr", &["open", "--identity", id, &bundle]);
    assert_eq!(code, 0, "{tty}");
    assert!(assert_json_lines(&out) >= 30);
    assert!(tty.contains("opening"), "{tty:?}");
    assert!(tty.contains("1 bundle opened"), "{tty:?}");
    // Not a terminal: no bar, no control characters, stdout still clean.
    let out = run(&["open", "--identity", id, &bundle]);
    assert_ok(&out, &["open"]);
    assert!(assert_json_lines(&out.stdout) >= 30);
    let err = text(&out.stderr);
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}') && !err.contains("opening ["),
        "{err:?}"
    );
    let out = f.run(&["verify"]);
    assert!(
        !text(&out.stderr).contains('\u{1b}'),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dash_is_stdout_for_out_and_stdin_for_identity_bundles_and_receipts() {
    let (f, id_file, bundle) = sealed_fixture();
    let cwd = f.root.join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    // recipient new --out -: the identity on stdout, no file named `-`.
    let out = run_with(&cwd, &["recipient", "new", "--out", "-"], None);
    assert_ok(&out, &["recipient new --out -"]);
    assert!(!cwd.join("-").exists(), "a file named `-` was written");
    let made = Identity::from_file_text(&text(&out.stdout), "stdout").unwrap();
    let err = text(&out.stderr);
    assert!(err.contains(&made.recipient().to_string()), "{err}");
    assert!(
        !err.contains("CVSECRET-"),
        "the secret is on stdout only: {err}"
    );
    // ... and `recipient show -i -` reads it back from stdin.
    let shown = run_with(&cwd, &["recipient", "show", "-i", "-"], Some(&out.stdout));
    assert_ok(&shown, &["recipient show -i -"]);
    assert_eq!(text(&shown.stdout).trim(), made.recipient().to_string());
    // open --identity - with the bundle as a file, and open - with the bundle on stdin.
    let id_text = std::fs::read(&id_file).unwrap();
    let out = run_with(&cwd, &["open", "--identity", "-", &bundle], Some(&id_text));
    assert_ok(&out, &["open --identity -"]);
    let n = assert_json_lines(&out.stdout);
    assert!(n >= 30);
    let bytes = std::fs::read(&bundle).unwrap();
    let out = run_with(
        &cwd,
        &["open", "-i", id_file.to_str().unwrap(), "-"],
        Some(&bytes),
    );
    assert_ok(&out, &["open -"]);
    assert_eq!(assert_json_lines(&out.stdout), n);
    // Both from stdin is refused (exit 2).
    let out = run_with(&cwd, &["open", "-i", "-", "-"], Some(&bytes));
    assert_fails(&out, 2, "one input only");
    // --identity - refuses a terminal on stdin instead of waiting for input.
    let (code, out, tty) = run_on_tty("stdin", &["open", "-i", "-", &bundle]);
    assert_eq!(code, 2, "{tty}");
    assert!(out.is_empty());
    assert!(tty.contains("stdin is a terminal"), "{tty}");
    // receipt --out - to stdout, ack --receipt - from stdin.
    let out = run_with(
        &cwd,
        &[
            "receipt",
            "-i",
            id_file.to_str().unwrap(),
            &bundle,
            "-o",
            "-",
        ],
        None,
    );
    assert_ok(&out, &["receipt -o -"]);
    assert!(!cwd.join("-").exists());
    let receipts = out.stdout;
    assert_eq!(text(&receipts).lines().count(), 1);
    let mut args = vec!["ack".to_string(), "--receipt".into(), "-".into()];
    args.extend(f.vault_args());
    let out = run_with(
        &cwd,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        Some(&receipts),
    );
    assert_ok(&out, &["ack --receipt -"]);
    assert!(text(&out.stdout).contains("acknowledged cvb1"));
    assert!(!cwd.join("-").exists());
}

#[test]
fn recipient_show_prints_the_recipient_of_an_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, recipient, receipt_key) = new_identity(tmp.path(), "c.identity");
    let out = run(&["recipient", "show", "--identity", file.to_str().unwrap()]);
    assert_ok(&out, &["recipient show"]);
    assert_eq!(text(&out.stdout), format!("{recipient}\n"));
    assert!(text(&out.stderr).contains(&receipt_key));
    let out = run(&["recipient", "show", "--json", "-i", file.to_str().unwrap()]);
    assert_ok(&out, &["recipient show --json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["recipient"], recipient.as_str());
    assert_eq!(v["receipt_key"], receipt_key.as_str());
    assert_eq!(v["suite"], "x25519");
    assert!(!text(&out.stdout).contains("CVSECRET"));
    let missing = tmp.path().join("missing.identity");
    let out = run(&["recipient", "show", "-i", missing.to_str().unwrap()]);
    assert_fails(&out, 1, missing.to_str().unwrap());
}

#[test]
fn short_flags_for_the_common_options() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    let dir = f.dir.to_str().unwrap();
    let out = run(&["init", "-v", dir, "-u", "alice", "--keystore", "keyutils"]);
    assert_ok(&out, &["init -v -u"]);
    capture(&f, 10);
    let (id_file, recipient, _) = new_identity(&f.root, "c.identity");
    let outbox = f.root.join("outbox");
    let out = run(&[
        "seal",
        "-t",
        &recipient,
        "-o",
        outbox.to_str().unwrap(),
        "-v",
        dir,
        "-u",
        "alice",
        "--keystore",
        "keyutils",
        "--json",
    ]);
    assert_ok(&out, &["seal -t -o"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bundle = v["bundles"][0]["file"].as_str().unwrap().to_string();
    let receipts = f.root.join("r.txt");
    let out = run(&[
        "receipt",
        "-i",
        id_file.to_str().unwrap(),
        &bundle,
        "-o",
        receipts.to_str().unwrap(),
    ]);
    assert_ok(&out, &["receipt -i -o"]);
    assert!(receipts.is_file());
    let enroll = f.root.join("e.json");
    let out = run(&[
        "enroll",
        "-o",
        enroll.to_str().unwrap(),
        "-v",
        dir,
        "-u",
        "alice",
        "--keystore",
        "keyutils",
    ]);
    assert_ok(&out, &["enroll -o"]);
    assert!(enroll.is_file());
    let id2 = f.root.join("c2.identity");
    assert_ok(
        &run(&["recipient", "new", "-o", id2.to_str().unwrap()]),
        &["recipient new -o"],
    );
    assert!(id2.is_file());
}

#[test]
fn identities_are_never_echoed() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    let (id_file, _, _) = new_identity(&f.root, "c.identity");
    let secret = Identity::read_from_file(&id_file).unwrap().to_string();
    // The part after the prefix is the key material.
    let body = &secret[secret.len() - 40..];
    let check = |out: &Output, code_want: i32, needle: &str| {
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert!(
            !o.contains(body) && !e.contains(body),
            "the identity was echoed: {e}"
        );
        assert_eq!(code(out), code_want, "{e}");
        assert!(e.contains(needle), "{e}");
    };
    // As a recipient: named for what it is, with the command that prints the recipient.
    let out = f.run(&[
        "seal",
        "--to",
        &secret,
        "--out-dir",
        f.root.join("o").to_str().unwrap(),
    ]);
    check(&out, 2, "capvault recipient show");
    assert!(text(&out.stderr).contains("this is an identity"));
    assert!(!f.root.join("o").exists());
    let out = f.run(&[
        "upload",
        "--once",
        "--to",
        "http://127.0.0.1:9",
        "--recipient",
        &secret,
        "--receipt-key",
        "cvreceipt-ed25519-1x",
    ]);
    check(&out, 2, "this is an identity");
    let out = f.run(&[
        "ack",
        "cvb1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "--receipt-key",
        &secret,
    ]);
    check(&out, 2, "this is an identity");
    // Wherever else an argument is echoed: a bundle id, an unknown command, a path.
    let out = f.run(&["ack", &secret]);
    check(&out, 2, "an argument: this is an identity");
    let out = run(&[&secret]);
    check(&out, 2, "CVSECRET-<redacted>");
    let out = run(&["open", "--identity", &secret, "x.cvb"]);
    check(&out, 2, "the identity itself");
    let lower = secret.to_lowercase();
    let out = f.run(&["seal", "--to", &lower, "--out-dir", "/tmp/unused"]);
    assert!(!text(&out.stderr).contains(&lower[lower.len() - 40..]));
}

#[test]
fn errors_name_their_path_and_carry_no_internal_prefixes() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    capture(&f, 10);
    let (id_file, recipient, _) = new_identity(&f.root, "c.identity");
    let clean = |out: &Output| {
        let e = text(&out.stderr);
        for bad in [
            "invalid argument:",
            "storage error:",
            "I/O error:",
            "backtrace",
            "offset None",
        ] {
            assert!(!e.contains(bad), "{bad:?} in {e}");
        }
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    let missing_dir = f.root.join("no/such/dir/x.identity");
    let out = run(&["recipient", "new", "--out", missing_dir.to_str().unwrap()]);
    assert_fails(&out, 1, missing_dir.to_str().unwrap());
    clean(&out);
    let out = run(&["open", "--identity", f.root.to_str().unwrap(), "x.cvb"]);
    assert_fails(&out, 1, f.root.to_str().unwrap());
    clean(&out);
    let file = f.root.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = f.run(&[
        "seal",
        "--to",
        &recipient,
        "--out-dir",
        file.to_str().unwrap(),
    ]);
    assert_fails(&out, 1, &format!("--out-dir {} is a file", file.display()));
    clean(&out);
    let out = f.run(&["enroll", "--out", missing_dir.to_str().unwrap()]);
    assert_fails(&out, 1, missing_dir.to_str().unwrap());
    clean(&out);
    let out = run(&["receipt", "-i", id_file.to_str().unwrap(), "nope.cvb"]);
    assert_fails(
        &out,
        1,
        "cannot read the bundle nope.cvb: it does not exist",
    );
    clean(&out);
    let out = run(&[
        "init",
        "--vault",
        file.to_str().unwrap(),
        "--user",
        "a",
        "--keystore",
        "keyutils",
    ]);
    assert_fails(&out, 1, file.to_str().unwrap());
    clean(&out);
    let out = f.run(&["show", "--blobs-dir", file.to_str().unwrap()]);
    assert_fails(
        &out,
        1,
        &format!("--blobs-dir {} is a file", file.display()),
    );
    clean(&out);
    let out = f.run(&["ack", "cvb1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]);
    assert_fails(&out, 1, "no outstanding bundle has id");
    assert!(!clean(&out).contains("not found:"));
    // A database sled cannot read back: an integrity failure in words, not sled's Debug.
    let db = f.dir.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    for i in (100..bytes.len()).step_by(997) {
        bytes[i] ^= 0xff;
    }
    std::fs::write(&db, &bytes).unwrap();
    let out = f.run(&["verify"]);
    assert_fails(&out, 3, "integrity check failed");
    clean(&out);
}

#[test]
fn seal_into_an_unusable_out_dir_seals_and_audits_nothing() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    capture(&f, 20);
    let (_, recipient, _) = new_identity(&f.root, "c.identity");
    // A directory nobody can create files in, root included.
    let out = f.run(&["seal", "--to", &recipient, "--out-dir", "/proc/self"]);
    assert_fails(&out, 1, "/proc/self");
    assert!(
        text(&out.stderr).contains("nothing was sealed"),
        "{}",
        text(&out.stderr)
    );
    let audit = f.json(&["audit"]);
    assert!(
        !audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "seal"),
        "a seal was recorded for a bundle that was not written: {audit}"
    );
    // The next seal is the first bundle, new, and its file is 0600.
    let outbox = f.root.join("outbox");
    let v = f.json(&[
        "seal",
        "--to",
        &recipient,
        "--out-dir",
        outbox.to_str().unwrap(),
    ]);
    let b = &v["bundles"][0];
    assert_eq!(b["bundle_seq"], 1);
    assert_eq!(b["pending_again"], false);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(b["file"].as_str().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // No staged file is left behind.
    let names: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(
        f.json(&["audit"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "seal")
            .count(),
        1
    );
}

#[test]
fn seal_with_a_pending_bundle_says_it_is_offered_again_and_its_size() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    capture(&f, 200);
    let (_, recipient, _) = new_identity(&f.root, "c.identity");
    let outbox = f.root.join("outbox");
    let first = f.json(&[
        "seal",
        "--to",
        &recipient,
        "--out-dir",
        outbox.to_str().unwrap(),
    ]);
    assert_eq!(first["bundles"][0]["pending_again"], false);
    let out = f.run(&[
        "seal",
        "--to",
        &recipient,
        "--out-dir",
        outbox.to_str().unwrap(),
        "--max-bytes",
        "1K",
    ]);
    assert_ok(&out, &["seal --max-bytes while pending"]);
    let s = text(&out.stdout);
    let size = first["bundles"][0]["bytes"].as_u64().unwrap();
    assert!(s.contains("offered again unchanged"), "{s}");
    assert!(s.contains(&format!("{size} B")) || s.contains("KiB"), "{s}");
    assert!(s.contains("--max-bytes applies to the next bundle"), "{s}");
    let again = f.json(&[
        "seal",
        "--to",
        &recipient,
        "--out-dir",
        outbox.to_str().unwrap(),
        "--max-bytes",
        "1K",
    ]);
    assert_eq!(again["bundles"][0]["pending_again"], true);
    assert_eq!(again["bundles"][0]["id"], first["bundles"][0]["id"]);
}

#[test]
fn open_json_lists_every_bundle_with_its_verdict() {
    let (f, id_file, good) = sealed_fixture();
    let id = id_file.to_str().unwrap();
    let (other, _, _) = new_identity(&f.root, "other.identity");
    let junk = f.root.join("junk.cvb");
    std::fs::write(&junk, b"not a bundle").unwrap();
    let missing = f.root.join("missing.cvb");
    let out = run(&[
        "open",
        "--json",
        "-i",
        id,
        &good,
        junk.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    assert!(
        assert_json_lines(&out.stdout) >= 30,
        "the good bundle's events"
    );
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "stderr is one JSON object: {err}");
    assert!(!err.contains("error: "), "{err}");
    let v: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(v["chain_clean"], false);
    assert_eq!(v["bundles_opened"], 1);
    let list = v["bundles"].as_array().unwrap();
    assert_eq!(list.len(), 3, "{v}");
    assert_eq!(list[0]["file"], good.as_str());
    assert_eq!(list[0]["verdict"], "opened");
    assert!(list[0]["events"].as_u64().unwrap() >= 30);
    for l in &list[1..] {
        assert_eq!(l["verdict"], "rejected", "{l}");
        assert!(!l["reason"].as_str().unwrap().is_empty());
    }
    assert!(list[2]["reason"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    // Nothing opened (not sealed to this identity): chain_clean is false.
    let out = run(&["open", "--json", "-i", other.to_str().unwrap(), &good]);
    assert_eq!(code(&out), 1);
    assert!(out.stdout.is_empty());
    let v: Value = serde_json::from_str(&text(&out.stderr)).unwrap();
    assert_eq!(v["bundles_opened"], 0);
    assert_eq!(v["chain_clean"], false);
    assert_eq!(v["bundles"][0]["verdict"], "rejected");
    assert!(v["bundles"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("not sealed to this identity"));
    // An error before any bundle (no identity file) is in the JSON too, and only there.
    let out = run(&["open", "--json", "-i", "/nonexistent/id", &good]);
    assert_eq!(code(&out), 1);
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    let v: Value = serde_json::from_str(&err).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("/nonexistent/id"),
        "{v}"
    );
    assert_eq!(v["chain_clean"], false);
}

#[test]
fn hints_suggest_init_only_for_a_path_that_does_not_exist() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    let file = f.root.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let empty = f.root.join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (path, want) in [
        (&file, "is a file, not a vault directory"),
        (&empty, "holds no capvault vault"),
    ] {
        let out = run(&[
            "status",
            "--vault",
            path.to_str().unwrap(),
            "--user",
            "alice",
        ]);
        assert_fails(&out, 1, want);
        assert!(!text(&out.stderr).contains("init"), "{}", text(&out.stderr));
    }
    let out = f.run(&["status"]);
    assert_fails(&out, 1, "capvault init");
    f.init();
    let mut args = vec!["verify".to_string()];
    let mut va = f.vault_args();
    va[3] = "Alice".into();
    args.extend(va);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_fails(&out, 1, "has no user 'Alice'");
    assert!(
        text(&out.stderr).contains("check --user"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn resume_says_not_paused_when_nothing_was_paused() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    let out = f.run(&["resume"]);
    assert_ok(&out, &["resume"]);
    assert!(
        text(&out.stdout).contains("not paused"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(f.json(&["resume"])["resumed"], false);
    f.json(&["pause", "--for", "5m"]);
    let out = f.run(&["resume"]);
    assert_eq!(text(&out.stdout).trim(), "capture resumed");
    // The same through the hand-off to a process holding the vault.
    let _server = f.serve();
    assert_eq!(f.json(&["resume"])["resumed"], false);
    f.json(&["pause", "--for", "5m"]);
    assert_eq!(f.json(&["resume"])["resumed"], true);
    assert!(f.json(&["status"])["pause"]["paused_until_us"].is_null());
}

#[test]
fn counts_and_ranges_read_as_english() {
    let (f, id_file, bundle) = sealed_fixture();
    let out = run(&["open", "-i", id_file.to_str().unwrap(), &bundle]);
    assert_ok(&out, &["open"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("1 bundle opened") && err.contains(": 1 bundle, sequence 1 to 1"),
        "{err}"
    );
    assert!(!err.contains("(s)"), "{err}");
    // An empty vault verifies without "records 0..=0".
    let g = Fixture::new(KeyStoreKind::Keyutils);
    g.init();
    let out = g.run(&["verify"]);
    assert_ok(&out, &["verify"]);
    let s = text(&out.stdout);
    assert!(s.contains("no records") && !s.contains("0..=0"), "{s}");
    let out = f.run(&[
        "seal",
        "--to",
        &Identity::read_from_file(&id_file)
            .unwrap()
            .recipient()
            .to_string(),
        "--out-dir",
        f.root.join("outbox").to_str().unwrap(),
    ]);
    let s = text(&out.stdout);
    assert!(s.contains("records 1..=") || s.contains("record 1,"), "{s}");
    assert!(!s.contains("0..=0") && !s.contains("(s)"), "{s}");
}

/// `--options` and `upload --to` errors say what is wrong in the CLI's words (no
/// "invalid argument:", no "options_json:", the flag and not the option key), and
/// system errors read without Rust's "(os error N)".
#[test]
fn option_and_system_errors_read_plainly() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    let plain = |out: &Output| {
        let e = text(&out.stderr);
        for bad in [
            "invalid argument",
            "options_json",
            "os error",
            "storage error",
        ] {
            assert!(!e.contains(bad), "{bad:?} in {e}");
        }
        assert_eq!(e.lines().count(), 1, "{e}");
    };
    let missing = f.root.join("missing.json");
    let out = f.run(&["status", "--options", missing.to_str().unwrap()]);
    assert_fails(
        &out,
        2,
        &format!(
            "cannot read --options {}: it does not exist",
            missing.display()
        ),
    );
    plain(&out);
    let bad = f.root.join("bad.json");
    std::fs::write(&bad, r#"{"frame_max_ms": 0}"#).unwrap();
    let out = f.run(&["status", "--options", bad.to_str().unwrap()]);
    assert_fails(
        &out,
        2,
        &format!("--options {}: frame_max_ms must be between", bad.display()),
    );
    plain(&out);
    std::fs::write(&bad, r#"{"nope": 1}"#).unwrap();
    let out = f.run(&["status", "--options", bad.to_str().unwrap()]);
    assert_fails(&out, 2, "unknown field `nope`");
    plain(&out);
    let (_, recipient, receipt_key) = new_identity(&f.root, "c.identity");
    std::fs::write(
        &bad,
        serde_json::json!({
            "collector_receipt_key": receipt_key,
            "upload": { "url": "ftp://collector.example", "recipient": recipient },
        })
        .to_string(),
    )
    .unwrap();
    let out = f.run(&["status", "--options", bad.to_str().unwrap()]);
    assert_fails(
        &out,
        2,
        "upload.url \"ftp://collector.example\": the scheme",
    );
    plain(&out);
    let out = f.run(&[
        "upload",
        "--once",
        "--to",
        "ftp://collector.example",
        "--recipient",
        &recipient,
        "--receipt-key",
        &receipt_key,
    ]);
    assert_fails(
        &out,
        2,
        "--to \"ftp://collector.example\": the scheme must be https",
    );
    plain(&out);
    assert!(!text(&out.stderr).contains("upload.url"));
    // A path through a file: ENOTDIR from the CLI's own code and from the library's.
    let file = f.root.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let under = file.join("sub");
    let out = f.run(&[
        "seal",
        "--to",
        &recipient,
        "--out-dir",
        under.to_str().unwrap(),
    ]);
    assert_fails(
        &out,
        1,
        &format!("cannot create --out-dir {}", under.display()),
    );
    plain(&out);
    let out = run(&[
        "init",
        "--vault",
        under.to_str().unwrap(),
        "--user",
        "a",
        "--keystore",
        "keyutils",
    ]);
    assert_fails(&out, 1, under.to_str().unwrap());
    plain(&out);
}

/// `open --json` reports one complete object whatever stops it: every bundle with its
/// verdict (`skipped` for those not reached), `stopped: true`, and the chain report
/// once the chain check ran. A bundle that does not decrypt is not counted as accepted
/// in the chain report.
#[test]
fn open_json_is_complete_on_every_error_path() {
    let (f, id_file, good) = sealed_fixture();
    let id = id_file.to_str().unwrap();
    let keys = [
        "bundles_given",
        "bundles_opened",
        "bundles_rejected",
        "bundles_skipped",
        "events",
        "keys_pinned",
        "chain_clean",
        "stopped",
        "bundles",
        "failed",
        "chain",
        "error",
    ];
    let report = |out: &Output| -> Value {
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "stderr is one JSON object: {err}");
        let v: Value = serde_json::from_str(&err).unwrap();
        for k in keys {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert_eq!(v["chain_clean"], false);
        assert_eq!(v["bundles_given"], 1);
        v
    };
    // Stopped before any bundle: an unreadable identity, an unusable --blobs-dir.
    let out = run(&["open", "--json", "-i", "/nonexistent/id", &good]);
    assert_eq!(code(&out), 1);
    let v = report(&out);
    assert_eq!(v["stopped"], true);
    assert_eq!(v["bundles"][0]["verdict"], "skipped", "{v}");
    assert_eq!(v["bundles"][0]["file"], good.as_str());
    assert_eq!(v["bundles_skipped"], 1);
    assert!(v["chain"].is_null());
    let file = f.root.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = run(&[
        "open",
        "--json",
        "-i",
        id,
        "--blobs-dir",
        file.to_str().unwrap(),
        &good,
    ]);
    assert_eq!(code(&out), 1);
    let v = report(&out);
    assert_eq!(v["stopped"], true);
    assert_eq!(v["bundles"][0]["verdict"], "skipped", "{v}");
    assert!(v["error"].as_str().unwrap().contains("--blobs-dir"), "{v}");
    // Stopped while writing: stdout is a full disk. The chain was checked (and is in
    // the report); the bundle is not counted as opened.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(BIN)
        .args(["open", "--json", "-i", id, &good])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    let v = report(&out);
    assert_eq!(v["stopped"], true);
    assert_eq!(v["bundles_opened"], 0);
    assert_eq!(v["events"], 0);
    assert_eq!(v["bundles"][0]["verdict"], "skipped", "{v}");
    assert!(v["bundles"][0]["id"].as_str().unwrap().starts_with("cvb1"));
    assert!(
        v["bundles"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("could not all be written"),
        "{v}"
    );
    assert!(v["chain"]["devices"].is_array(), "{v}");
    assert!(v["error"].as_str().unwrap().contains("stdout"), "{v}");
    // Not sealed to this identity: rejected, and not accepted in the chain report.
    let (other, _, _) = new_identity(&f.root, "other.identity");
    let out = run(&["open", "--json", "-i", other.to_str().unwrap(), &good]);
    assert_eq!(code(&out), 1);
    let v = report(&out);
    assert_eq!(v["stopped"], false);
    assert_eq!(v["bundles"][0]["verdict"], "rejected");
    let dev = &v["chain"]["devices"][0];
    assert_eq!(
        (dev["bundles"].as_u64(), dev["rejected"].as_u64()),
        (Some(0), Some(1)),
        "{v}"
    );
    assert!(
        dev["issues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["kind"] == "not_opened"),
        "{v}"
    );
    // And in text: the chain line does not count it.
    let out = run(&["open", "-i", other.to_str().unwrap(), &good]);
    assert_eq!(code(&out), 1);
    let err = text(&out.stderr);
    assert!(err.contains("no bundles, sequence 0 to 0"), "{err}");
    assert!(err.contains("could not be opened"), "{err}");
    // The complete run still reports opened bundles as before.
    let out = run(&["open", "--json", "-i", id, &good]);
    assert_ok(&out, &["open --json"]);
    let v = report_ok(&out);
    assert_eq!(v["chain"]["devices"][0]["bundles"], 1);
}

fn report_ok(out: &Output) -> Value {
    let v: Value = serde_json::from_str(&text(&out.stderr)).unwrap();
    assert_eq!(v["stopped"], false);
    assert_eq!(v["chain_clean"], true);
    assert!(v.get("error").is_none(), "{v}");
    v
}

/// The library's format hints name the identity prefix and its suite labels; the
/// redaction that keeps identities out of messages leaves them readable, and still
/// hides an identity with a damaged key.
#[test]
fn redaction_keeps_format_hints_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let not_id = tmp.path().join("notes.txt");
    std::fs::write(&not_id, "hello\n").unwrap();
    let out = run(&["recipient", "show", "-i", not_id.to_str().unwrap()]);
    assert_fails(
        &out,
        1,
        "it must start with CVSECRET-X25519-1 or CVSECRET-XWING-1",
    );
    assert!(!text(&out.stderr).contains("<redacted>"));
    // An identity with one symbol changed: the message does not carry its key.
    let (file, _, _) = new_identity(tmp.path(), "c.identity");
    let secret = Identity::read_from_file(&file).unwrap().to_string();
    let mut damaged = secret.clone().into_bytes();
    let at = damaged.len() - 5;
    damaged[at] = if damaged[at] == b'A' { b'B' } else { b'A' };
    let damaged = String::from_utf8(damaged).unwrap();
    let bad = tmp.path().join("damaged.identity");
    std::fs::write(&bad, format!("{damaged}\n")).unwrap();
    let out = run(&["recipient", "show", "-i", bad.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(!err.contains(&damaged[20..]), "{err}");
}

/// No output echoes an identity, on success either: an identity anywhere on the command
/// line (a path, a user name, `--token`) or in CAPVAULT_VAULT, CAPVAULT_USER or the
/// upload token is refused (exit 2) before anything runs, without repeating it.
#[test]
fn identities_are_refused_wherever_they_would_be_echoed() {
    let f = Fixture::new(KeyStoreKind::Keyutils);
    f.init();
    let (id_file, recipient, receipt_key) = new_identity(&f.root, "c.identity");
    let secret = Identity::read_from_file(&id_file).unwrap().to_string();
    let body = &secret[secret.len() - 40..];
    let refused = |out: &Output, needle: &str| {
        let (o, e) = (text(&out.stdout), text(&out.stderr));
        assert!(!o.contains(body) && !e.contains(body), "echoed: {o}{e}");
        assert_eq!(code(out), 2, "{o}{e}");
        assert!(e.contains(needle), "{e}");
        assert!(e.contains("this is an identity"), "{e}");
    };
    // A vault path holding an identity: `init` would print it on success.
    let vault = f.root.join(&secret).join("v");
    let out = run(&[
        "init",
        "--vault",
        vault.to_str().unwrap(),
        "--user",
        "a",
        "--keystore",
        "keyutils",
    ]);
    refused(&out, "--vault:");
    assert!(!f.root.join(&secret).exists(), "nothing is created");
    let out = run(&["init", &format!("--vault={}", vault.display()), "-u", "a"]);
    refused(&out, "--vault:");
    let out = run(&[
        "init",
        "--vault",
        f.root.join("w").to_str().unwrap(),
        "--user",
        &secret.to_lowercase(),
    ]);
    refused(&out, "--user:");
    let out = Command::new(BIN)
        .args(["init", "--user", "a", "--keystore", "keyutils"])
        .env("CAPVAULT_VAULT", &vault)
        .output()
        .unwrap();
    refused(&out, "CAPVAULT_VAULT:");
    // The upload token goes to the collector: never an identity, from any source.
    let upload = |extra: &[&str]| {
        let mut a = vec![
            "upload",
            "--once",
            "--to",
            "http://127.0.0.1:9",
            "--recipient",
            &recipient,
            "--receipt-key",
            &receipt_key,
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let out = f.run(
        &upload(&["--token", &secret])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    refused(&out, "--token:");
    let token_file = f.root.join("token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    let out = f.run(
        &upload(&["--token-file", token_file.to_str().unwrap()])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    refused(&out, "--token-file");
    let mut args: Vec<String> = upload(&[]);
    args.extend(f.vault_args());
    let out = Command::new(BIN)
        .args(&args)
        .env("CAPVAULT_UPLOAD_TOKEN", &secret)
        .output()
        .unwrap();
    refused(&out, "CAPVAULT_UPLOAD_TOKEN:");
    // The file name `--identity` takes is fine when it only mentions the prefix hint.
    let out = f.json(&["status"]);
    assert_eq!(out["user"], "alice");
}
