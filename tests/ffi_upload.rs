//! The C example agent with the built-in uploader (examples/c/upload_agent.c: the
//! `upload` option in options_json, no HTTP code of its own) against a real
//! `capvault-collector serve` on loopback: every event it appends comes out of
//! `capvault-collector export` exactly once, attributed; with a wrong enrollment token
//! its status shows the error and nothing leaves the vault, which uploads everything
//! once given the right token.
//!
//! The collector binary comes from `CAPVAULT_COLLECTOR_BIN`, else from the target
//! directory of this test, built with cargo when missing.

mod common;
#[path = "ffi/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use capvault::{Identity, KeyStoreKind, Suite, UploadOptions, Vault, VaultOptions};
use common::collector::collector_bin;
use serde_json::Value;
use support::*;

const T0: i64 = 1_764_000_000_000_000;
/// What upload_agent.c appends.
const EVENTS: i64 = 205;

/// A collector directory after `init`, serving on a loopback port until dropped, and
/// the identity `export` opens its bundles with.
struct Collector {
    dir: tempfile::TempDir,
    receipt_key: String,
    token: String,
    url: String,
    serve: Child,
    identity_file: PathBuf,
    recipient: String,
}

impl Collector {
    fn start() -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(
            Command::new(collector_bin())
                .args(["init", "--json", "--dir"])
                .arg(dir.path().join("c")),
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut serve = Command::new(collector_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(dir.path().join("c"))
            .env("CAPVAULT_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let _ = BufReader::new(serve.stdout.take().unwrap()).read_line(&mut line);
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = serve.kill();
            panic!("serve did not start: {line:?}");
        };
        let id = Identity::generate(Suite::X25519);
        let identity_file = dir.path().join("collector.identity");
        id.write_to_file(&identity_file).unwrap();
        Collector {
            receipt_key: v["receipt_key"].as_str().unwrap().to_string(),
            token: v["token"].as_str().unwrap().to_string(),
            url: url.to_string(),
            serve,
            identity_file,
            recipient: id.recipient().to_string(),
            dir,
        }
    }

    /// `export --identity`: every stored event as JSON (the chain report must be clean).
    fn export(&self) -> Vec<Value> {
        let out = run_ok(
            Command::new(collector_bin())
                .args(["export", "--dir"])
                .arg(self.dir.path().join("c"))
                .arg("--identity")
                .arg(&self.identity_file),
        );
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.stdout.is_empty() || report.contains("chain ok"),
            "{report}"
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Runs the C agent on `vault` with `token`, returning its output (any exit code).
    fn run_agent(
        &self,
        agent: &Path,
        vault: &Path,
        token: &str,
        wait: u32,
    ) -> std::process::Output {
        Command::new(agent)
            .arg(vault)
            .arg("alice")
            .arg(&self.url)
            .arg(&self.recipient)
            .arg(&self.receipt_key)
            .env("CAPVAULT_KEYSTORE", "keyutils")
            .env("CAPVAULT_UPLOAD_TOKEN", token)
            .env("CAPVAULT_UPLOAD_WAIT", wait.to_string())
            .output()
            .unwrap()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.serve.kill();
        let _ = self.serve.wait();
    }
}

fn build_agent(dir: &Path) -> PathBuf {
    let agent = dir.join("upload_agent");
    compile_c(&[&repo().join("examples/c/upload_agent.c")], &agent, &[]);
    agent
}

/// Every event upload_agent.c appended is in `events` exactly once, with its content,
/// and every exported event carries `user`, `device_id` and `bundle_id`.
fn check_exported(events: &[Value]) {
    let device = events[0]["device_id"].as_str().unwrap().to_string();
    assert!(!device.is_empty());
    let mut bundles = BTreeSet::new();
    let mut seqs = BTreeSet::new();
    for e in events {
        assert_eq!(e["user"], "alice", "{e}");
        assert_eq!(e["device_id"].as_str(), Some(device.as_str()), "{e}");
        let b = e["bundle_id"].as_str().unwrap_or_default();
        assert!(!b.is_empty(), "{e}");
        bundles.insert(b.to_string());
        assert!(seqs.insert(e["seq"].as_u64().unwrap()), "twice: {e}");
    }
    let mut captured: Vec<&Value> = events.iter().filter(|e| e["type"] != "marker").collect();
    captured.sort_by_key(|e| e["ts_us"].as_i64().unwrap());
    let ts: Vec<i64> = captured
        .iter()
        .map(|e| e["ts_us"].as_i64().unwrap() - T0)
        .collect();
    assert_eq!(
        ts,
        (0..EVENTS).collect::<Vec<_>>(),
        "each event exactly once"
    );
    for (i, e) in captured.iter().take(200).enumerate() {
        assert_eq!(e["type"], "mouse_move");
        assert_eq!(
            (e["x"].as_i64(), e["y"].as_i64()),
            (Some(i as i64), Some(2 * i as i64))
        );
    }
    assert_eq!(captured[200]["type"], "mouse_button");
    assert_eq!(captured[201]["type"], "key");
    assert_eq!(captured[202]["title"], "notes.txt");
    assert_eq!(captured[203]["type"], "screenshot");
    assert_eq!(captured[203]["width"], 1920);
    assert_eq!(captured[203]["format"], "png");
    assert_eq!(captured[204]["kind"], "clipboard-meta");
    assert!(
        bundles.len() >= 2,
        "bundles of at most 64 KiB (the 200 kB screenshot goes alone): {bundles:?}"
    );
}

#[test]
fn ffi_c_upload_agent_against_a_real_collector() {
    let c = Collector::start();
    let tmp = tempfile::tempdir().unwrap();
    let agent = build_agent(tmp.path());
    let out = c.run_agent(&agent, &tmp.path().join("vault"), &c.token, 120);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"pending_bundles\":0"), "{stdout}");
    assert!(stdout.contains("\"enrolled\":true"), "{stdout}");
    assert!(
        !stdout.contains(&c.token),
        "the token is never reported: {stdout}"
    );
    check_exported(&c.export());
}

#[test]
fn ffi_c_upload_agent_with_a_wrong_token_loses_nothing() {
    let c = Collector::start();
    let tmp = tempfile::tempdir().unwrap();
    let agent = build_agent(tmp.path());
    let vault = tmp.path().join("vault");
    let out = c.run_agent(&agent, &vault, "not-the-enrollment-token", 3);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stderr.contains("did not finish"), "{stderr}");
    // The collector answered 401: the status says so, nothing was uploaded.
    let status_line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("status: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let status: Value = serde_json::from_str(status_line).unwrap();
    let up = &status["upload"];
    assert!(
        up["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("token was refused")),
        "{up}"
    );
    assert_eq!(up["enrolled"], false, "{up}");
    assert_eq!(up["uploaded_bundles"], 0, "{up}");
    assert!(up["pending_bundles"].as_u64().unwrap() > 0, "{up}");
    assert!(c.export().is_empty(), "nothing was stored");

    // Nothing was lost: the events are still in the vault, and with the right token
    // all of them reach the collector, once.
    let mut opts = VaultOptions::default();
    opts.keystore = KeyStoreKind::Keyutils;
    opts.collector_receipt_key = Some(c.receipt_key.clone());
    let v = Vault::open(&vault, "alice", opts).unwrap();
    assert!(v.status().unwrap().records > 0, "nothing was pruned");
    let mut up = UploadOptions::new(c.url.clone(), c.recipient.clone());
    up.token = Some(c.token.clone().into());
    up.max_bundle_bytes = 64 * 1024;
    let report = v.upload_pending(&up).unwrap();
    assert!(report.bundles >= 2, "{report:?}");
    assert_eq!(v.status().unwrap().records, 0);
    v.close().unwrap();
    check_exported(&c.export());
}
