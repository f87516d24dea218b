//! Writes the seed corpora under fuzz/corpus/<target>/ from the real code and the
//! committed vectors: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//! Each seed is checked to be accepted by its decoder (so the corpus starts from valid
//! inputs), plus a few edge cases that must be refused.

use std::fs;
use std::path::{Path, PathBuf};

use capvault::fuzzing::{self, Anchor};
use capvault_format::{Event, KeyCategory, Marker, SeqEvent};
use capvault_fuzz::{hex, identity, HANDOFF_ID, X25519_IDENTITY, XWING_IDENTITY};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("corpus").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

/// The body of a vector file of tests/vectors/bundles (after the first empty line).
fn vector_body(path: &Path) -> Vec<u8> {
    let bytes = fs::read(path).unwrap();
    let at = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("vector layout")
        + 2;
    bytes[at..].to_vec()
}

/// The framing `capvault_fuzz::parts` reads.
fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn events() -> Vec<Event> {
    vec![
        Event::MouseMove {
            ts_us: 1_764_000_000_000_000,
            x: 640,
            y: 480,
        },
        Event::MouseButton {
            ts_us: 2,
            button: 1,
            pressed: true,
            x: -3,
            y: 4,
        },
        Event::Scroll {
            ts_us: 3,
            dx: 0,
            dy: -120,
        },
        Event::Key {
            ts_us: 4,
            pressed: true,
            key_code: Some(30),
            text: Some("a".into()),
            category: Some(KeyCategory::Letter),
        },
        Event::WindowFocus {
            ts_us: 5,
            app: "editor".into(),
            title: "notes.txt".into(),
        },
        Event::Screenshot {
            ts_us: 6,
            width: 2,
            height: 1,
            format: "png".into(),
            data: vec![0x89, b'P', b'N', b'G'],
        },
        Event::Custom {
            ts_us: 7,
            kind: "clipboard".into(),
            data: b"x".to_vec(),
        },
        Event::Marker {
            ts_us: 8,
            marker: Marker::PauseStart { until_us: 9 },
        },
        Event::Marker {
            ts_us: 10,
            marker: Marker::PauseEnd { dropped: 3 },
        },
    ]
}

fn main() {
    let vectors = root().join("../tests/vectors");
    // The signing key seed is random: keep the committed one so a rerun changes nothing.
    let signer = fs::read_to_string(root().join("corpus/text_keys/receipt_signer"))
        .ok()
        .filter(|t| t.parse::<capvault_format::ReceiptSigner>().is_ok())
        .unwrap_or_else(|| {
            capvault_format::ReceiptSigner::generate()
                .to_secret_string()
                .to_string()
        });
    let _ = fs::remove_dir_all(root().join("corpus"));

    // bundle: every bundle vector (valid, and the negative kit).
    for v in ["v1", "v2"] {
        for e in fs::read_dir(vectors.join("bundles").join(v)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "cvb") {
                let name = format!("{v}_{}", p.file_stem().unwrap().to_str().unwrap());
                put("bundle", &name, &vector_body(&p));
            }
        }
    }
    let ok = vector_body(&vectors.join("bundles/v2/x25519_ok.cvb"));
    assert!(capvault_format::open_bundle(&ok, &identity(X25519_IDENTITY)).is_ok());

    // events: consecutive event bytes, and the same as frames and chunks.
    let mut all = Vec::new();
    for (i, e) in events().iter().enumerate() {
        let mut b = Vec::new();
        e.encode_into(&mut b);
        put("events", &format!("event_{i}"), &b);
        all.extend_from_slice(&b);
    }
    put("events", "all_events", &all);
    let mut frame = vec![1u8, 0];
    frame.extend_from_slice(&7u64.to_be_bytes());
    frame.extend_from_slice(&all);
    let mut big = 9u64.to_be_bytes().to_vec();
    events()[5].encode_into(&mut big);
    let (a, b) = big.split_at(big.len() / 2);
    let first = [&[2u8, 1][..], a].concat();
    let last = [&[2u8, 2][..], b].concat();
    let records = join(&[&frame, &first, &last]);
    let parsed: Vec<(u8, u8, &[u8])> = capvault_fuzz::parts(&records)
        .into_iter()
        .map(|p| (p[0], p[1], &p[2..]))
        .collect();
    let got = fuzzing::assemble(&parsed).expect("seed records assemble");
    assert_eq!(got.len(), events().len() + 1);
    assert_eq!(
        got[0],
        SeqEvent {
            seq: 7,
            event: events()[0].clone()
        }
    );
    put("events", "frame_and_chunks", &records);
    put("events", "run_without_last", &join(&[&first]));

    // record: seq || prev_tag || value from tests/vectors/records.txt.
    let text = fs::read_to_string(vectors.join("records.txt")).unwrap();
    for (i, block) in text
        .split("\n\n")
        .filter(|b| b.trim_start().starts_with("dek:"))
        .enumerate()
    {
        let field = |n: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{n}: ")))
                .unwrap()
                .to_string()
        };
        let seq: u64 = field("seq").parse().unwrap();
        let mut input = seq.to_be_bytes().to_vec();
        input.extend_from_slice(&hex(&field("prev_tag")));
        input.extend_from_slice(&hex(&field("expect")));
        let prev: [u8; 16] = input[8..24].try_into().unwrap();
        assert!(
            fuzzing::open_record(seq, &prev, &input[24..]).is_some(),
            "vector {i} opens"
        );
        put("record", &format!("vector_{i}"), &input);
        put(
            "record",
            &format!("vector_{i}_truncated"),
            &input[..input.len() - 1],
        );
    }

    // anchor: valid head, tail, ledger head and counters; a counters body to be sealed
    // by the target; a legacy counter.
    for (i, (which, name)) in [
        (Anchor::Head, "head"),
        (Anchor::Tail, "tail"),
        (Anchor::LedgerHead, "ledger_head"),
        (Anchor::Counts, "counts"),
    ]
    .into_iter()
    .enumerate()
    {
        let sealed = fuzzing::seal_anchor(which, 42, [0xab; 16], 30);
        assert_eq!(fuzzing::open_anchor(which, &sealed).unwrap(), sealed);
        put("anchor", name, &[&[i as u8][..], &sealed].concat());
    }
    let counts = fuzzing::seal_anchor(Anchor::Counts, 42, [0; 16], 30);
    put(
        "anchor",
        "counts_body",
        &[&[4u8][..], &counts[..counts.len() - 32]].concat(),
    );
    let mut counter = vec![5u8];
    counter.extend_from_slice(&5u64.to_be_bytes());
    counter.extend_from_slice(&4096u64.to_be_bytes());
    put("anchor", "counter", &counter);

    // stored_state: every state record with a valid body, once as a body the target
    // seals (0) and once as the vault stores it (1); the state anchor both ways; then
    // the other decoders.
    let release = format!(
        r#"{{"v":2,"stream_id":{:?},"next_bundle_seq":3,"prev_digest":{:?},"ledger_released":4,"last_sealed_record":10,"records_lost":1,"pending":{{"bundle_seq":3,"first_record":12,"last_record":20,"ledger_through":6,"digest":{:?},"recipient":"cvrecip-x25519-1cmweik7acd55k7tsmazsrktw44p4zqkqhkxcdezh2fgzzgmt6rzhqtzewe"}},"acking":null,"last_acked_id":"cvb1kzm4glmbbqba2piabvk33gne6tsb343e"}}"#,
        [7u8; 16], [1u8; 32], [2u8; 32]
    );
    let v1 = r#"{"ledger_released":2,"acking":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"pending":{"last_record":5}}"#;
    let policy = serde_json::to_vec(&capvault::Policy::default()).unwrap();
    let receipt_key = identity(X25519_IDENTITY).receipt_key().to_string();
    let gen = 7u64;
    // (file name, index in STATE_NAMES, policy version, body, re-encoded as it is)
    type Seed<'a> = (&'a str, u8, &'a [u8], &'a [u8], bool);
    let records: [Seed; 9] = [
        ("release_v2", 0, b"", release.as_bytes(), false),
        ("release_v1", 0, b"", v1.as_bytes(), false),
        (
            "pause_until",
            1,
            b"",
            &1_764_000_000_000_000i64.to_be_bytes(),
            true,
        ),
        ("pause_dropped", 2, b"", &3i64.to_be_bytes(), true),
        ("deny_gap", 3, b"", &1i64.to_be_bytes(), true),
        ("receipt_key", 4, b"", receipt_key.as_bytes(), true),
        ("receipt_key_none", 4, b"", b"", true),
        ("policy", 5, &[0, 0, 0, 1], &policy, true),
        ("pause_short", 1, b"", &[0, 0, 0, 1], false),
    ];
    let mut anchor_names: Vec<(Vec<u8>, u64)> = Vec::new();
    for (file, sel, version, body, canonical) in records {
        let mut name = fuzzing::STATE_NAMES[sel as usize].to_vec();
        name.extend_from_slice(version);
        let stored = fuzzing::seal_state_record(&name, gen, body);
        let read = fuzzing::state_record(&name, gen, &stored);
        match file {
            "pause_short" => assert!(read.is_err()),
            "release_v1" => assert_eq!(read.unwrap(), None),
            _ => {
                let again = read.unwrap().unwrap();
                assert!(!canonical || again == stored, "{file} is canonical");
                if !anchor_names.iter().any(|(n, _)| *n == name) {
                    anchor_names.push((name.clone(), gen));
                }
            }
        }
        let head = [&[sel][..], &gen.to_be_bytes(), version].concat();
        put(
            "stored_state",
            &format!("sealed_{file}"),
            &[&[0u8][..], &head, body].concat(),
        );
        if canonical {
            put(
                "stored_state",
                &format!("stored_{file}"),
                &[&[1u8][..], &head, &stored].concat(),
            );
        }
    }
    let names: Vec<(&[u8], u64)> = anchor_names.iter().map(|(n, g)| (&n[..], *g)).collect();
    let body = fuzzing::state_anchor_body(&names);
    let anchor = fuzzing::seal_state_anchor(gen, &body);
    let (again, named) = fuzzing::state_anchor(&anchor, gen).unwrap();
    assert_eq!((again, named.len()), (anchor.clone(), names.len()));
    put(
        "stored_state",
        "sealed_anchor",
        &[&[2u8][..], &gen.to_be_bytes(), &body].concat(),
    );
    put(
        "stored_state",
        "stored_anchor",
        &[&[3u8][..], &gen.to_be_bytes(), &anchor].concat(),
    );
    let empty = fuzzing::state_anchor_body(&[]);
    put(
        "stored_state",
        "sealed_anchor_empty",
        &[&[2u8][..], &1u64.to_be_bytes(), &empty].concat(),
    );
    let entry = br#"{"seq":5,"ts_us":1764000000000000,"action":"seal","detail":"bundle 2"}"#;
    assert!(fuzzing::ledger_entry(5, entry).is_ok());
    put(
        "stored_state",
        "ledger_entry",
        &[&[4u8][..], &5u64.to_be_bytes(), entry].concat(),
    );
    let mut wrapped = vec![5u8];
    wrapped.extend_from_slice(&1u32.to_be_bytes());
    wrapped.extend_from_slice(&1_764_000_000_000_000i64.to_be_bytes());
    wrapped.extend_from_slice(&[0x5a; 24 + 32 + 16]);
    assert!(fuzzing::wrapped_key(&wrapped[1..]).is_ok());
    put("stored_state", "wrapped_key", &wrapped);
    put(
        "stored_state",
        "rotation_marker",
        &[6, 0, 0, 0, 1, 0, 0, 0, 2],
    );
    put("stored_state", "rotation_marker_short", &[6, 0, 0, 0, 1]);
    put("stored_state", "keystore_kind", b"\x07\"keyutils\"");
    let keychain = format!(
        r#"{{"format":"capvault-keychain-1","vault_id":"{}","keystore":"keyutils","users":{{"alice":{{"kek_max":2}},"bob":{{"kek_max":1,"erased_us":1764000000000000}}}},"dir":"/var/lib/capvault/team"}}"#,
        "11".repeat(16)
    );
    let read = fuzzing::keychain_file(keychain.as_bytes()).expect("the seed parses");
    assert_eq!(read.vault_id, Some(fuzzing::VAULT_ID));
    assert!(!read.verifies);
    assert!(fuzzing::keychain_file(&read.signed).unwrap().verifies);
    put(
        "stored_state",
        "keychain_unsigned",
        &[&b"\x08"[..], keychain.as_bytes()].concat(),
    );
    put(
        "stored_state",
        "keychain_signed",
        &[&b"\x08"[..], &read.signed].concat(),
    );
    let mark = fuzzing::encode_durable_mark(12);
    assert_eq!(fuzzing::durable_mark(&mark), Some(12));
    put(
        "stored_state",
        "durable_mark",
        &[&[9u8][..], &mark].concat(),
    );

    // options: the defaults in full, an empty object, and an upload configuration.
    put("options", "empty", b"{}");
    put(
        "options",
        "defaults",
        serde_json::to_string(&capvault::VaultOptions::default())
            .unwrap()
            .as_bytes(),
    );
    put("options", "policy", br#"{"keystore":"keyutils","frame_max_ms":50,"policy":{"version":2,"purpose":"research","keystrokes":"timing","deny_apps":["vault"],"deny_titles":["*bank*"],"screenshots":false,"max_pause_secs":60,"retention_secs":0,"budget_bytes":1048576,"on_budget":"refuse"}}"#);
    let id = identity(X25519_IDENTITY);
    let upload = format!(
        r#"{{"collector_receipt_key":"{}","upload":{{"url":"http://127.0.0.1:8080","recipient":"{}","token":"t"}}}}"#,
        id.receipt_key(),
        id.recipient()
    );
    put("options", "upload", upload.as_bytes());

    // text_keys: both identities, their recipients and receipt keys, a typo.
    let xw = identity(XWING_IDENTITY);
    put("text_keys", "identity_x25519", X25519_IDENTITY.as_bytes());
    put("text_keys", "identity_xwing", XWING_IDENTITY.as_bytes());
    put(
        "text_keys",
        "recipient_x25519",
        id.recipient().to_string().as_bytes(),
    );
    put(
        "text_keys",
        "recipient_xwing",
        xw.recipient().to_string().as_bytes(),
    );
    put(
        "text_keys",
        "receipt_key",
        id.receipt_key().to_string().as_bytes(),
    );
    put("text_keys", "receipt_signer", signer.as_bytes());
    put("text_keys", "suite", b"xwing");
    let mut typo = id.recipient().to_string().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    put("text_keys", "recipient_typo", &typo);

    // enrollment: the vector records (valid and refused).
    for e in fs::read_dir(vectors.join("bundles/v2")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("enroll_") {
            put(
                "enrollment",
                name.trim_end_matches(".json"),
                &vector_body(&p),
            );
        }
    }

    // receipt: digest || receipt, current and legacy length, and a wrong digest.
    let digest = [0x42u8; 32];
    let r = id.receipt_for(&digest);
    put("receipt", "receipt", &[&digest[..], &r].concat());
    put("receipt", "legacy", &[&digest[..], &r[32..]].concat());
    put("receipt", "other_digest", &[&[0x43u8; 32][..], &r].concat());

    // handoff: a request of every op.
    for op in [
        r#""op":"status""#,
        r#""op":"keys-list""#,
        r#""op":"rotate-dek""#,
        r#""op":"rotate-kek""#,
        r#""op":"pause","secs":60"#,
        r#""op":"resume""#,
        r#""op":"erase""#,
        r#""op":"enroll""#,
    ] {
        let req = format!(
            r#"{{"v":1,"id":"{HANDOFF_ID}","user":"alice","created_us":1764000000000000,{op}}}"#
        );
        assert!(
            fuzzing::handoff_request(req.as_bytes(), HANDOFF_ID).is_some(),
            "{req}"
        );
        let name = op.split('"').nth(3).unwrap();
        put("handoff", name, req.as_bytes());
    }
    println!(
        "seed corpora written to {}",
        root().join("corpus").display()
    );
}
