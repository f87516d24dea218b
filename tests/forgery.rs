//! Forged bundles (SPEC R10): an attacker who never touches
//! the device, holding only the collector's public recipient and a device id (both
//! visible wherever uploads land), builds bundles with an independent HPKE
//! implementation (pyhpke, tests/interop/forge_bundle.py) and signs them with a key of
//! their own. `capvault open --devices` must release none of their events, whatever
//! order the files arrive in, and keep releasing the genuine device's bundles.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capvault::{inspect_bundle, Identity, KeyStoreKind, Suite, Vault};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_capvault");
/// The y coordinate of every forged mouse move (tests/interop/forge_bundle.py).
const FORGED_Y: i64 = 6666;

struct Genuine {
    _dir: tempfile::TempDir,
    work: PathBuf,
    identity: PathBuf,
    enrollment: PathBuf,
    bundles: Vec<PathBuf>,
    ids: Vec<String>,
    events: usize,
    device_hex: String,
    stream_hex: String,
    last_digest: String,
    last_record: u64,
    recipient: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A real vault (kernel keyutils keychain) that seals two bundles for one collector,
/// and its enrollment record.
fn genuine() -> Genuine {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_path_buf();
    let collector = Identity::generate(Suite::X25519);
    let identity = work.join("collector.identity");
    collector.write_to_file(&identity).unwrap();
    let vault = Vault::open(
        work.join("vault"),
        "alice",
        common::options(KeyStoreKind::Keyutils),
    )
    .unwrap();
    let mut bundles = Vec::new();
    let mut ids = Vec::new();
    let mut events = 0;
    let mut last = None;
    for round in 0..2i64 {
        for i in 0..40 {
            let _ = vault
                .append_mouse_move(1_764_000_000_000_000 + round * 1000 + i, 10, 20)
                .unwrap();
        }
        let b = vault
            .seal_next(&collector.recipient(), 1 << 20)
            .unwrap()
            .expect("a bundle");
        let path = work.join(format!("genuine-{round}.cvb"));
        std::fs::write(&path, b.bytes()).unwrap();
        let opened = capvault::open_bundle(b.bytes(), &collector).unwrap();
        events += opened.events.len();
        ids.push(b.id().to_owned());
        bundles.push(path);
        vault.ack(b.id(), None).unwrap();
        last = Some(b);
    }
    let enrollment = work.join("device.json");
    std::fs::write(&enrollment, vault.enrollment_record().unwrap().to_json()).unwrap();
    vault.close().unwrap();
    let last = last.unwrap();
    let h = inspect_bundle(last.bytes()).unwrap().header;
    Genuine {
        _dir: dir,
        identity,
        enrollment,
        bundles,
        ids,
        events,
        device_hex: h.device_id_hex(),
        stream_hex: h.stream_id_hex(),
        last_digest: hex(last.digest()),
        last_record: h.last_record(),
        recipient: collector.recipient().to_string(),
        work,
    }
}

/// Forges a bundle with pyhpke and an attacker key; returns its path.
#[allow(clippy::too_many_arguments)]
fn forge(
    g: &Genuine,
    name: &str,
    device_hex: &str,
    stream_hex: &str,
    seq: u64,
    prev: &str,
    first_record: u64,
    user: &str,
) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/forge_bundle.py");
    let out_path = g.work.join(name);
    let out = Command::new("python3")
        .arg(script)
        .arg(&out_path)
        .arg(&g.recipient)
        .args([device_hex, stream_hex])
        .arg(seq.to_string())
        .arg(prev)
        .arg(first_record.to_string())
        .arg(user)
        .arg("25")
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "pyhpke is missing (scripts/test.sh installs it): {stderr}"
    );
    assert!(out.status.success(), "forge_bundle.py failed: {stderr}");
    // The forgery is well-formed: it passes every check that does not know the device.
    let bytes = std::fs::read(&out_path).unwrap();
    let ins = inspect_bundle(&bytes).expect("a forged bundle verifies under its own key");
    assert_eq!(ins.header.device_id_hex(), device_hex);
    out_path
}

fn open(g: &Genuine, pinned: bool, bundles: &[&Path]) -> (Output, Vec<Value>, Value) {
    let mut cmd = Command::new(BIN);
    cmd.args(["--json", "open", "--identity"]).arg(&g.identity);
    if pinned {
        // As documented: the flag takes one record; the bundles follow directly.
        cmd.arg("--devices").arg(&g.enrollment);
    }
    let out = cmd.args(bundles).output().unwrap();
    let lines: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    let report: Value = serde_json::from_str(stderr.lines().last().unwrap_or("null"))
        .unwrap_or_else(|e| panic!("report is not JSON ({e}): {stderr}"));
    (out, lines, report)
}

fn assert_only_genuine(g: &Genuine, lines: &[Value]) {
    assert_eq!(lines.len(), g.events, "every genuine event exactly once");
    for l in lines {
        assert_ne!(
            l["y"].as_i64(),
            Some(FORGED_Y),
            "a forged event was released: {l}"
        );
        assert_eq!(l["user"], "alice");
        assert_eq!(l["device_id"], g.device_hex.as_str());
        assert!(
            g.ids.iter().any(|id| l["bundle_id"] == id.as_str()),
            "{l} names a bundle the device did not make"
        );
    }
}

#[test]
fn forged_bundles_are_never_released_with_pins() {
    let g = genuine();
    let zeros = "00".repeat(32);
    // Claims the enrolled device: the next position of its stream, and the first one.
    let next = forge(
        &g,
        "forged-next.cvb",
        &g.device_hex,
        &g.stream_hex,
        3,
        &g.last_digest,
        g.last_record + 1,
        "alice",
    );
    let first = forge(
        &g,
        "forged-first.cvb",
        &g.device_hex,
        &g.stream_hex,
        1,
        &zeros,
        1,
        "mallory",
    );
    // A device nobody enrolled.
    let unknown = forge(
        &g,
        "forged-unknown.cvb",
        &"ab".repeat(16),
        &"cd".repeat(16),
        1,
        &zeros,
        1,
        "mallory",
    );
    let (a, b) = (g.bundles[0].as_path(), g.bundles[1].as_path());
    // Whatever arrives first, the forgeries are rejected and the device's bundles are
    // released in full.
    for order in [
        vec![first.as_path(), next.as_path(), unknown.as_path(), a, b],
        vec![a, b, next.as_path(), first.as_path(), unknown.as_path()],
        vec![unknown.as_path(), b, first.as_path(), a, next.as_path()],
    ] {
        let (out, lines, report) = open(&g, true, &order);
        assert_eq!(out.status.code(), Some(3), "{report}");
        assert_only_genuine(&g, &lines);
        assert_eq!(report["keys_pinned"], true);
        assert_eq!(report["bundles_opened"], 2);
        assert_eq!(report["bundles_rejected"], 3, "{report}");
        assert_eq!(report["chain_clean"], false);
        let text = report["chain"].to_string();
        assert!(text.contains("device_key_changed"), "{text}");
        assert!(text.contains("unenrolled_device"), "{text}");
    }
    // The genuine bundles alone, pinned: clean, exit 0.
    let (out, lines, report) = open(&g, true, &[a, b]);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_only_genuine(&g, &lines);
    assert_eq!(report["chain_clean"], true);
    // An unenrolled device alone, pinned: rejected, nothing written.
    let (out, lines, _) = open(&g, true, &[unknown.as_path()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(lines.is_empty());
}

#[test]
fn without_pins_a_second_key_releases_nothing_of_that_device() {
    let g = genuine();
    let next = forge(
        &g,
        "forged-next.cvb",
        &g.device_hex,
        &g.stream_hex,
        3,
        &g.last_digest,
        g.last_record + 1,
        "alice",
    );
    let (a, b) = (g.bundles[0].as_path(), g.bundles[1].as_path());
    for order in [vec![next.as_path(), a, b], vec![a, b, next.as_path()]] {
        let (out, lines, report) = open(&g, false, &order);
        assert_eq!(out.status.code(), Some(3));
        assert!(
            lines.is_empty(),
            "nothing of an ambiguous device id: {lines:?}"
        );
        assert_eq!(report["keys_pinned"], false);
        assert!(report["chain"].to_string().contains("ambiguous_device_key"));
    }
    // Unpinned, consistent: released, and the human report says keys were not pinned.
    let out = Command::new(BIN)
        .args(["open", "--identity"])
        .arg(&g.identity)
        .args([a, b])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not pinned"), "{stderr}");
}

#[test]
fn a_forged_enrollment_record_is_refused() {
    let g = genuine();
    let text = std::fs::read_to_string(&g.enrollment).unwrap();
    let mut record: Value = serde_json::from_str(&text).unwrap();
    // Swap in another key without the device's signature.
    record["device_key"] = Value::from("11".repeat(32));
    let forged = g.work.join("forged-enrollment.json");
    std::fs::write(&forged, record.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["open", "--identity"])
        .arg(&g.identity)
        .arg("--devices")
        .arg(&forged)
        .args(&g.bundles)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("signature does not verify"), "{stderr}");
}

/// The same kit sent over HTTP to a real `capvault-collector serve`: forged bundles
/// (an enrolled device id under the attacker's key, and an unknown device) are refused
/// with 403 and never stored; the device's genuine bundles are stored and exported.
#[test]
fn the_collector_refuses_forged_bundles_over_http() {
    use common::collector::Collector;
    use std::io::{Read, Write};

    let g = genuine();
    let mut c = Collector::init();
    c.start(&[]);
    let post = |path: &str, ct: &str, body: &[u8]| -> (u16, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", c.port)).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: collector\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, resp)
    };
    let record = std::fs::read_to_string(&g.enrollment).unwrap();
    let enroll = format!(r#"{{"token":"{}","record":{}}}"#, c.token, record.trim());
    let (status, resp) = post("/v1/enroll", "application/json", enroll.as_bytes());
    assert_eq!(status, 201, "{resp}");

    let zeros = "00".repeat(32);
    let forged = [
        forge(
            &g,
            "forged-next.cvb",
            &g.device_hex,
            &g.stream_hex,
            3,
            &g.last_digest,
            g.last_record + 1,
            "alice",
        ),
        forge(
            &g,
            "forged-first.cvb",
            &g.device_hex,
            &g.stream_hex,
            1,
            &zeros,
            1,
            "mallory",
        ),
        forge(
            &g,
            "forged-unknown.cvb",
            &"ab".repeat(16),
            &"cd".repeat(16),
            1,
            &zeros,
            1,
            "mallory",
        ),
    ];
    // Forgeries first: they must not take the genuine bundles' positions.
    for f in &forged {
        let (status, resp) = post(
            "/v1/bundles",
            "application/octet-stream",
            &std::fs::read(f).unwrap(),
        );
        assert_eq!(status, 403, "{}: {resp}", f.display());
    }
    for b in &g.bundles {
        let (status, resp) = post(
            "/v1/bundles",
            "application/octet-stream",
            &std::fs::read(b).unwrap(),
        );
        assert_eq!(status, 200, "{}: {resp}", b.display());
    }
    // Nothing of the forgeries was stored: only the two genuine bundles are, and no
    // store file holds a forgery's bytes.
    let stored = c.stored_bundles();
    assert_eq!(stored.len(), 2);
    for b in &g.bundles {
        assert!(
            stored.contains(&std::fs::read(b).unwrap()),
            "{}",
            b.display()
        );
    }
    for file in common::files_under(c.dir.path().join("bundles")) {
        let bytes = std::fs::read(&file).unwrap();
        for f in &forged {
            let forged_bytes = std::fs::read(f).unwrap();
            assert!(
                !common::contains(&bytes, &forged_bytes[forged_bytes.len() - 64..]),
                "{} holds forgery {}",
                file.display(),
                f.display()
            );
        }
    }
    let events = c.export(&g.identity);
    assert_only_genuine(&g, &events);
}
