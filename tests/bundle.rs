//! Runs every committed bundle test vector (tests/vectors/bundles/v1 and v2) through
//! every decoder path: `open_bundle`, `inspect_bundle` (parse and verify only), the
//! chain checker (with and without pins from enrollment records), JSON Lines output,
//! receipts, the enrollment record parser and the recipient parser.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capvault_format::{
    inspect_bundle, open_bundle, verify_receipt, write_json_lines, ChainChecker, DevicePins,
    EnrollmentRecord, Error, Identity, Recipient,
};

struct Vector {
    name: String,
    fields: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Vector {
    fn get(&self, k: &str) -> &str {
        self.fields
            .get(k)
            .unwrap_or_else(|| panic!("{}: no {k:?} field", self.name))
    }
}

/// The format versions with committed vectors: version 1 is still read.
const VERSIONS: [&str; 2] = ["v1", "v2"];

fn dir(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/bundles")
        .join(version)
}

fn load(version: &str, name: &str) -> Vector {
    let raw = std::fs::read(dir(version).join(name)).unwrap();
    let split = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or_else(|| panic!("{name}: no blank line after the header"));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("capvault bundle test vector"), "{name}");
    let fields = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").unwrap_or((l.trim_end_matches(':'), ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    Vector {
        name: format!("{version}/{name}"),
        fields,
        body: raw[split + 2..].to_vec(),
    }
}

fn all() -> Vec<Vector> {
    VERSIONS.iter().flat_map(|v| all_of(v)).collect()
}

fn all_of(version: &str) -> Vec<Vector> {
    let mut names: Vec<String> = std::fs::read_dir(dir(version))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() >= 30, "vectors missing: {names:?}");
    names.iter().map(|n| load(version, n)).collect()
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidArgument(_) => "invalid_argument",
        Error::Tampered(_) => "tampered",
        Error::NotFound(_) => "not_found",
        _ => "other",
    }
}

/// `expect` is `ok` or `<kind>: <text the message contains>`.
fn check<T>(v: &Vector, path: &str, expect: &str, r: Result<T, Error>) -> Option<T> {
    match (expect, r) {
        ("ok", Ok(t)) => Some(t),
        ("ok", Err(e)) => panic!("{} ({path}): expected success, got {e}", v.name),
        (exp, Ok(_)) => panic!("{} ({path}): expected {exp}, got success", v.name),
        (exp, Err(e)) => {
            let (k, text) = exp.split_once(": ").unwrap();
            assert_eq!(kind(&e), k, "{} ({path}): {e}", v.name);
            assert!(
                e.to_string().contains(text),
                "{} ({path}): {e:?} lacks {text:?}",
                v.name
            );
            None
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&sha256::digest(b))
}

fn hex(d: &[u8]) -> String {
    use std::fmt::Write;
    d.iter().fold(String::new(), |mut s, x| {
        write!(s, "{x:02x}").unwrap();
        s
    })
}

#[test]
fn bundle_vectors_through_open_and_inspect() {
    let mut n = 0;
    for v in all().iter().filter(|v| v.get("kind") == "bundle") {
        n += 1;
        let id: Identity = v.get("identity").parse().unwrap();
        check(
            v,
            "inspect_bundle",
            v.get("inspect"),
            inspect_bundle(&v.body),
        );
        let opened = check(v, "open_bundle", v.get("expect"), open_bundle(&v.body, &id));
        let Some(o) = opened else { continue };
        assert_eq!(o.header.suite().to_string(), v.get("suite"), "{}", v.name);
        assert_eq!(o.header.bundle_seq().to_string(), v.get("bundle_seq"));
        assert_eq!(o.id, v.get("id"));
        assert_eq!(hex(&o.digest), v.get("digest"));
        assert_eq!(
            sha256_hex(&v.body),
            v.get("digest"),
            "digest = SHA-256 of the bundle"
        );
        assert_eq!(o.user, v.get("user"));
        assert_eq!(o.events.len().to_string(), v.get("events"));
        let mut jsonl = Vec::new();
        write_json_lines(&o.events, &mut jsonl, None).unwrap();
        assert_eq!(sha256_hex(&jsonl), v.get("jsonl_sha256"), "{}", v.name);
        // The collector's receipt verifies for this bundle only.
        let receipt = id.receipt_for(&o.digest);
        verify_receipt(&id.receipt_key(), &o.digest, &receipt).unwrap();
        let mut other = o.digest;
        other[0] ^= 1;
        assert!(matches!(
            verify_receipt(&id.receipt_key(), &other, &receipt),
            Err(Error::Tampered(_))
        ));
    }
    assert!(n >= 20, "{n}");
}

#[test]
fn chain_vectors() {
    let mut n = 0;
    for v in all().iter().filter(|v| v.get("kind") == "chain") {
        n += 1;
        let version = v.name.split('/').next().unwrap();
        let devices = v.fields.get("devices").map(String::as_str).unwrap_or("");
        let mut checker = if devices.is_empty() {
            ChainChecker::new()
        } else {
            let mut pins = DevicePins::new();
            for f in devices.split_whitespace() {
                let rec = EnrollmentRecord::from_json(
                    std::str::from_utf8(&load(version, f).body).unwrap(),
                )
                .unwrap();
                pins.add(&rec).unwrap();
            }
            ChainChecker::with_pins(pins)
        };
        let mut digests = BTreeMap::new();
        for f in v.get("bundles").split_whitespace() {
            let b = load(version, f);
            // Chain checking needs no identity: the parse-only path is enough, and
            // opening must agree.
            let inspected = inspect_bundle(&b.body).unwrap();
            let id: Identity = b.get("identity").parse().unwrap();
            let opened = open_bundle(&b.body, &id).unwrap();
            assert_eq!(opened.digest, inspected.digest);
            checker.add_inspected(&inspected);
            digests.insert(f.to_owned(), inspected.digest);
        }
        let report = checker.report();
        let rejected = v.fields.get("rejected").map(String::as_str).unwrap_or("");
        for (f, d) in &digests {
            let want = !rejected.split_whitespace().any(|r| r == f);
            assert_eq!(report.accepts(d), want, "{}: {f} accepted?", v.name);
        }
        assert_eq!(report.pinned, !devices.is_empty(), "{}", v.name);
        let mut kinds: Vec<String> = report
            .issues()
            .map(|(_, i)| {
                serde_json::to_value(i).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        kinds.sort();
        let mut want: Vec<String> = v
            .get("issues")
            .split_whitespace()
            .map(String::from)
            .collect();
        want.sort();
        assert_eq!(kinds, want, "{}: {report:?}", v.name);
        assert_eq!(report.is_clean().to_string(), v.get("clean"), "{}", v.name);
        for (_, issue) in report.issues() {
            assert!(issue.to_string().len() > 10);
        }
    }
    assert!(n >= 6);
}

#[test]
fn enrollment_vectors() {
    let mut n = 0;
    for v in all().iter().filter(|v| v.get("kind") == "enrollment") {
        n += 1;
        let text = std::str::from_utf8(&v.body).unwrap();
        if let Some(r) = check(
            v,
            "EnrollmentRecord::from_json",
            v.get("expect"),
            EnrollmentRecord::from_json(text),
        ) {
            assert_eq!(
                r.to_json(),
                text,
                "{}: re-encoding changes the record",
                v.name
            );
        }
    }
    assert!(n >= 4, "{n}");
}

#[test]
fn recipient_vectors() {
    let mut n = 0;
    for v in all().iter().filter(|v| v.get("kind") == "recipient") {
        n += 1;
        if let Some(r) = check(
            v,
            "Recipient::from_str",
            v.get("expect"),
            v.get("text").parse::<Recipient>(),
        ) {
            assert_eq!(r.to_string(), v.get("text"));
        }
    }
    assert!(n >= 6);
}

#[test]
fn blobs_go_to_files() {
    let v = load("v2", "x25519_ok.cvb");
    let id: Identity = v.get("identity").parse().unwrap();
    let o = open_bundle(&v.body, &id).unwrap();
    let blobs = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    write_json_lines(&o.events, &mut out, Some(blobs.path())).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains("data_b64"));
    let mut files = 0;
    for line in text.lines() {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            j["seq"].is_u64() && j["ts_us"].is_i64() && j["type"].is_string(),
            "{line}"
        );
        if let Some(f) = j.get("data_file") {
            let data = std::fs::read(f.as_str().unwrap()).unwrap();
            if j["type"] == "screenshot" {
                assert_eq!(data.len(), 3000);
                assert!(f.as_str().unwrap().ends_with(".png"));
            }
            files += 1;
        }
    }
    assert_eq!(files, 2);
}

/// SHA-256 (FIPS 180-4), std only, so the tests check digests independently of the
/// library's own hashing.
mod sha256 {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];

    pub fn digest(data: &[u8]) -> [u8; 32] {
        let mut h: [u32; 8] = [
            0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
            0x5be0cd19,
        ];
        let mut msg = data.to_vec();
        msg.push(0x80);
        while msg.len() % 64 != 56 {
            msg.push(0);
        }
        msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
        for block in msg.chunks(64) {
            let mut w = [0u32; 64];
            for i in 0..16 {
                w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
            }
            for i in 16..64 {
                let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
                let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
                w[i] = w[i - 16]
                    .wrapping_add(s0)
                    .wrapping_add(w[i - 7])
                    .wrapping_add(s1);
            }
            let mut v = h;
            for i in 0..64 {
                let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
                let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
                let t1 = v[7]
                    .wrapping_add(s1)
                    .wrapping_add(ch)
                    .wrapping_add(K[i])
                    .wrapping_add(w[i]);
                let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
                let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
                let t2 = s0.wrapping_add(maj);
                v = [
                    t1.wrapping_add(t2),
                    v[0],
                    v[1],
                    v[2],
                    v[3].wrapping_add(t1),
                    v[4],
                    v[5],
                    v[6],
                ];
            }
            for (a, b) in h.iter_mut().zip(v) {
                *a = a.wrapping_add(b);
            }
        }
        let mut out = [0u8; 32];
        for (i, x) in h.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
        }
        out
    }

    #[test]
    fn known_answer() {
        let d = digest(b"abc");
        assert_eq!(d[..4], [0xba, 0x78, 0x16, 0xbf]);
    }
}
