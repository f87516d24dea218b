//! Interoperability: an independent RFC 9180 implementation (Python pyhpke) opens the
//! HPKE layer of an X25519 bundle using only docs/FORMAT.md.

use std::path::Path;
use std::process::Command;

use capvault::{open_bundle, Identity};

fn vector(version: &str, name: &str) -> (std::path::PathBuf, String, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/bundles")
        .join(version)
        .join(name);
    let raw = std::fs::read(&path).unwrap();
    let split = raw.windows(2).position(|w| w == b"\n\n").unwrap();
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let identity = head
        .lines()
        .find_map(|l| l.strip_prefix("identity: "))
        .unwrap()
        .to_owned();
    (path, identity, raw[split + 2..].to_vec())
}

fn run(path: &Path, identity: &str) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/open_hpke.py");
    Command::new("python3")
        .arg(script)
        .arg(path)
        .arg(identity)
        .output()
        .expect("python3 must be installed to run the interop test")
}

#[test]
fn pyhpke_opens_x25519_bundles_of_both_versions() {
    for version in ["v1", "v2"] {
        pyhpke_opens(version);
    }
}

fn pyhpke_opens(version: &str) {
    let (path, identity, bundle) = vector(version, "x25519_ok.cvb");
    let out = run(&path, &identity);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() != Some(2),
        "pyhpke is missing: pip install pyhpke ({stderr})"
    );
    assert!(out.status.success(), "open_hpke.py failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {stdout}"))
            .trim()
            .to_owned()
    };

    // The payload is the postcard encoding of (user, events, audit): recompute it from
    // what capvault decrypts and compare with what pyhpke decrypted.
    let id: Identity = identity.parse().unwrap();
    let opened = open_bundle(&bundle, &id).unwrap();
    let payload = postcard::to_allocvec(&(&opened.user, &opened.events, &opened.audit)).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &payload);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(field("payload_len"), payload.len().to_string());
    assert_eq!(field("payload_sha256"), hex);
}

#[test]
fn pyhpke_rejects_the_wrong_identity_and_a_swapped_header() {
    let (_, identity, _) = vector("v2", "x25519_ok.cvb");
    for name in ["wrong_identity.cvb", "swapped_header_resigned.cvb"] {
        let (path, _, _) = vector("v2", name);
        let out = run(&path, &identity);
        assert_ne!(
            out.status.code(),
            Some(2),
            "pyhpke is missing: pip install pyhpke"
        );
        assert!(!out.status.success(), "{name} opened");
    }
}
