//! The fuzz targets' checks, one function per target, shared by the cargo-fuzz binaries
//! in fuzz_targets/ and by the stable test that replays the committed corpora
//! (tests/fuzz_corpus.rs includes this file). Each check feeds the bytes to the decoders
//! as capvault runs them and asserts more than "no panic"; it returns whether the input
//! got past the first decoder (a parse, a MAC), so the replay can show that every corpus
//! reaches the code behind it.
//!
//! Only unqualified names of this file and the crates capvault itself depends on are
//! used, so the file builds both as the fuzz crate's root and as a module of a test.

use std::sync::LazyLock;

use capvault::fuzzing::{self, Anchor};
use capvault::Error;
use capvault_format::{
    bundle_id, inspect_bundle, open_bundle, verify_ed25519, verify_receipt, EnrollmentRecord,
    Event, Identity, ReceiptKey, ReceiptSigner, Recipient, SealedBundle, Suite, RECEIPT_LEN,
};

/// The X25519 identity of the bundle vectors in tests/vectors/bundles.
pub const X25519_IDENTITY: &str = "CVSECRET-X25519-1IJBEEQSCIJBEEQSCIJBEEQSCIJBEEQSCIJBEEQSCIJBEEQSCIJBEGQ2DINBUGQ2DINBUGQ2DINBUGQ2DINBUGQ2DINBUGQ2DINBUGQ55YQF2E";
/// The X-Wing identity of the bundle vectors.
pub const XWING_IDENTITY: &str = "CVSECRET-XWING-1IRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKRJOWSTIC";
/// An X25519 identity no vector is sealed to.
pub const OTHER_IDENTITY: &str = "CVSECRET-X25519-1O53XO53XO53XO53XO53XO53XO53XO53XO53XO53XO53XO53XO53XQ6DYPB4HQ6DYPB4HQ6DYPB4HQ6DYPB4HQ6DYPB4HQ6DYPB4HQ6D2OKFUA";
/// The request id the hand-off target parses under (the file name's id).
pub const HANDOFF_ID: &str = "0123456789abcdef0123456789abcdef";

/// A target's check: the bytes in, whether they got past the first decoder.
pub type Check = fn(&[u8]) -> bool;

/// Every target, by the name of its binary and corpus directory.
pub const TARGETS: [(&str, Check); 10] = [
    ("anchor", anchor),
    ("bundle", bundle),
    ("enrollment", enrollment),
    ("events", events),
    ("handoff", handoff),
    ("options", options),
    ("receipt", receipt),
    ("record", record),
    ("stored_state", stored_state),
    ("text_keys", text_keys),
];

/// Parses one of the identities above.
pub fn identity(text: &str) -> Identity {
    text.parse().expect("a fixed identity parses")
}

/// Splits `data` into parts framed as `len:u16 BE || bytes` (a short last part takes
/// what is left), so one input can carry several records.
pub fn parts(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let n = u16::from_be_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// Stored bytes are refused as tampering, never as another kind of error.
fn assert_tampered<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(Error::Tampered(_)) => {}
        other => panic!("{what}: {other:?}"),
    }
}

static BUNDLE_IDS: LazyLock<[Identity; 3]> = LazyLock::new(|| {
    [
        identity(X25519_IDENTITY),
        identity(XWING_IDENTITY),
        identity(OTHER_IDENTITY),
    ]
});

/// Bundle parser and opener (format crate): inspect, open with each fixed identity. A
/// bundle opens with at most the identity it is sealed to; what opens is consistent with
/// its header, its digest and its inspection.
pub fn bundle(data: &[u8]) -> bool {
    let inspected = inspect_bundle(data);
    assert_eq!(
        inspected.is_ok(),
        SealedBundle::from_bytes(data.to_vec()).is_ok(),
        "the outbox reader and inspect disagree"
    );
    let mut opened_by = Vec::new();
    for (i, id) in BUNDLE_IDS.iter().enumerate() {
        let Ok(b) = open_bundle(data, id) else {
            continue;
        };
        opened_by.push(i);
        let ins = inspected.as_ref().expect("an opened bundle inspects");
        assert_eq!(ins.header, b.header);
        assert_eq!(ins.digest, b.digest);
        let digest = ring::digest::digest(&ring::digest::SHA256, data);
        assert_eq!(digest.as_ref(), &b.digest[..]);
        assert_eq!(b.id, bundle_id(&b.digest));
        let h = &b.header;
        let aad = h.to_bytes();
        assert_eq!(
            &data[..aad.len()],
            &aad[..],
            "header re-encodes differently"
        );
        assert_eq!(b.events.len() as u64, h.event_count());
        assert!(b.events.windows(2).all(|w| w[0].seq < w[1].seq));
        if let (Some(f), Some(l)) = (b.events.first(), b.events.last()) {
            assert_eq!((f.seq, l.seq), (h.first_event(), h.last_event()));
        }
        assert!(h.first_record() <= h.last_record());
    }
    // The two X25519 identities differ: no bundle opens with both, nor with any
    // identity of the other suite.
    assert!(opened_by.len() <= 1, "opened by identities {opened_by:?}");
    inspected.is_ok()
}

fn event_round_trips(event: &Event) {
    let mut bytes = Vec::new();
    event.encode_into(&mut bytes);
    let (again, rest) = Event::decode_from(&bytes).expect("an encoded event decodes");
    assert!(rest.is_empty());
    assert_eq!(&again, event);
}

/// Event decoder (format crate) and the reader's assembler of frames and chunks.
/// Whatever decodes re-encodes to bytes that decode to the same events.
pub fn events(data: &[u8]) -> bool {
    // The raw input as consecutive event bytes.
    let mut rest = data;
    let mut decoded = false;
    while let Ok((event, r)) = Event::decode_from(rest) {
        assert!(r.len() < rest.len(), "an event decoded from no bytes");
        event_round_trips(&event);
        decoded = true;
        rest = r;
    }
    // The input as decrypted records: each part is kind || flags || plaintext.
    let records: Vec<(u8, u8, &[u8])> = parts(data)
        .into_iter()
        .filter(|p| p.len() >= 2)
        .map(|p| (p[0], p[1], &p[2..]))
        .collect();
    if let Ok(events) = fuzzing::assemble(&records) {
        for e in &events {
            event_round_trips(&e.event);
        }
        decoded |= !events.is_empty();
    }
    decoded
}

/// Record decoder: the clear header and the AEAD opening under the key of
/// tests/vectors/records.txt. Input: seq (8) || prev_tag (16) || stored value. A header
/// that parses re-encodes to the same bytes; a record that opens seals back to exactly
/// the stored value and opens nowhere else in the chain.
pub fn record(data: &[u8]) -> bool {
    if data.len() < 24 {
        return false;
    }
    let seq = u64::from_be_bytes(data[..8].try_into().unwrap());
    let prev: [u8; 16] = data[8..24].try_into().unwrap();
    let value = &data[24..];
    let header = fuzzing::record_header(value);
    if let Ok(h) = &header {
        assert_eq!(
            &value[..h.len()],
            &h[..],
            "record header re-encodes differently"
        );
    }
    let Some(plain) = fuzzing::open_record(seq, &prev, value) else {
        return false;
    };
    assert!(
        header.is_ok(),
        "a record opened with a header that does not parse"
    );
    assert_eq!(fuzzing::reseal_record(seq, &prev, value, &plain), value);
    assert!(fuzzing::open_record(seq.wrapping_add(1), &prev, value).is_none());
    let mut other = prev;
    other[0] ^= 1;
    assert!(fuzzing::open_record(seq, &other, value).is_none());
    // What opened goes to the assembler as the reader does (frame or chunk).
    let _ = fuzzing::assemble(&[(value[1], value[2], &plain)]);
    true
}

/// Anchors (log head, log tail, ledger head, counters) under the fixed MAC key, and the
/// legacy per-epoch counter. First byte: which; the rest: the stored value, or for 4 the
/// counters' body, sealed here so the counters' decoder is reached past the MAC. An
/// anchor that opens is exactly what sealing its content gives, and opens as no other
/// kind.
pub fn anchor(data: &[u8]) -> bool {
    const KINDS: [Anchor; 4] = [
        Anchor::Head,
        Anchor::Tail,
        Anchor::LedgerHead,
        Anchor::Counts,
    ];
    let Some((&which, stored)) = data.split_first() else {
        return false;
    };
    match which % 6 {
        k @ 0..=3 => {
            let kind = KINDS[k as usize];
            let Ok(again) = fuzzing::open_anchor(kind, stored) else {
                return false;
            };
            assert_eq!(again, stored, "{kind:?} opened but seals differently");
            for other in KINDS.into_iter().filter(|&o| o != kind) {
                assert_tampered(fuzzing::open_anchor(other, stored), "another kind");
            }
            true
        }
        4 => {
            let sealed = fuzzing::seal_counts_body(stored);
            match fuzzing::open_anchor(Anchor::Counts, &sealed) {
                Ok(again) => {
                    let twice = fuzzing::open_anchor(Anchor::Counts, &again);
                    assert_eq!(twice.expect("re-sealed counters open"), again);
                    true
                }
                Err(e) => {
                    assert_tampered::<()>(Err(e), "counters");
                    false
                }
            }
        }
        _ => match fuzzing::epoch_count(stored) {
            Ok(again) => {
                assert_eq!(again, stored);
                true
            }
            Err(_) => {
                assert_ne!(stored.len(), 16);
                false
            }
        },
    }
}

/// `sel (1) || gen (8) || [version (4) for policy/] || rest`: a state record's name,
/// a generation and what follows.
fn state_name(data: &[u8]) -> Option<(Vec<u8>, u64, &[u8])> {
    let (&sel, rest) = data.split_first()?;
    let gen = be_u64(rest)?;
    let rest = &rest[8..];
    let mut name = fuzzing::STATE_NAMES[sel as usize % fuzzing::STATE_NAMES.len()].to_vec();
    if name.ends_with(b"/") {
        name.extend_from_slice(rest.get(..4)?);
        return Some((name, gen, &rest[4..]));
    }
    Some((name, gen, rest))
}

/// Stored state of a user's trees, read as the vault reads it. First byte: what.
/// 0: any body sealed here as a state record (the checks past the MAC: generation,
///    name, then the record's own decoder); 1: a stored record as it is (the MAC);
/// 2 and 3: the same for the state anchor; 4: audit ledger entry plaintext (after its
/// AEAD); 5: wrapped keys; 6: the KEK rotation marker; 7: the recorded keychain kind;
/// 8: the keychain file erase reads; 9: the durability mark file.
pub fn stored_state(data: &[u8]) -> bool {
    let Some((&which, rest)) = data.split_first() else {
        return false;
    };
    match which % 10 {
        8 => keychain_file(rest),
        9 => durable_mark(rest),
        0 => sealed_state_record(rest),
        1 => stored_state_record(rest),
        2 => sealed_state_anchor(rest),
        3 => stored_state_anchor(rest),
        4 => ledger_entry(rest),
        5 => match fuzzing::wrapped_key(rest) {
            Ok(enc) => {
                assert_eq!(enc, rest);
                true
            }
            Err(e) => {
                assert_tampered::<()>(Err(e), "wrapped key");
                false
            }
        },
        6 => match fuzzing::rotation_marker(rest) {
            Ok((from, to)) => {
                assert_eq!(rest.len(), 8);
                assert_eq!(from.to_be_bytes(), rest[..4]);
                assert_eq!(to.to_be_bytes(), rest[4..]);
                true
            }
            Err(e) => {
                assert_ne!(rest.len(), 8);
                assert_tampered::<()>(Err(e), "rotation marker");
                false
            }
        },
        _ => {
            // The vault's metadata `keystore` entry, decoded as open does.
            let Ok(kind) = serde_json::from_slice::<capvault::KeyStoreKind>(rest) else {
                return false;
            };
            let enc = serde_json::to_vec(&kind).unwrap();
            assert_eq!(
                serde_json::from_slice::<capvault::KeyStoreKind>(&enc).unwrap(),
                kind
            );
            true
        }
    }
}

fn sealed_state_record(data: &[u8]) -> bool {
    let Some((name, gen, body)) = state_name(data) else {
        return false;
    };
    let stored = fuzzing::seal_state_record(&name, gen, body);
    // Only the generation the anchor names is read: an older copy put back, or a
    // record of another name moved here, is tampering whatever its body.
    for want in [gen.wrapping_sub(1), gen.wrapping_add(1)] {
        assert_tampered(fuzzing::state_record(&name, want, &stored), "other gen");
    }
    let mut moved = name.clone();
    moved.push(b'x');
    assert_tampered(fuzzing::state_record(&moved, gen, &stored), "other name");
    let mut flipped = stored.clone();
    let at = body.first().map_or(0, |&b| b as usize) % flipped.len();
    flipped[at] ^= 0x80;
    assert_tampered(fuzzing::state_record(&name, gen, &flipped), "flipped");
    match fuzzing::state_record(&name, gen, &stored) {
        Ok(Some(again)) => {
            // Decoding what was encoded gives the same bytes again.
            let twice = fuzzing::state_record(&name, gen, &again);
            assert_eq!(twice.expect("a re-encoded record reads"), Some(again));
        }
        Ok(None) => assert_eq!(
            name, b"release",
            "only a v1 release state is not re-encoded"
        ),
        Err(e) => assert_tampered::<()>(Err(e), "body"),
    }
    true
}

fn stored_state_record(data: &[u8]) -> bool {
    let Some((name, want, stored)) = state_name(data) else {
        return false;
    };
    match fuzzing::state_record(&name, want, stored) {
        // Only the vault's own bytes pass the MAC, and it writes each value one way.
        Ok(Some(again)) => assert_eq!(again, stored, "a record read but is not canonical"),
        Ok(None) => {}
        Err(e) => {
            assert_tampered::<()>(Err(e), "stored record");
            return false;
        }
    }
    true
}

fn sealed_state_anchor(data: &[u8]) -> bool {
    let Some(gen) = be_u64(data) else {
        return false;
    };
    let stored = fuzzing::seal_state_anchor(gen, &data[8..]);
    // The ledger head names the generation: any other is a replaced state or ledger.
    for ledger in [gen.wrapping_sub(1), gen.wrapping_add(1)] {
        assert_tampered(fuzzing::state_anchor(&stored, ledger), "other gen");
    }
    match fuzzing::state_anchor(&stored, gen) {
        Ok((again, names)) => {
            let twice = fuzzing::state_anchor(&again, gen).expect("a re-encoded anchor opens");
            assert_eq!(twice, (again, names));
        }
        Err(e) => assert_tampered::<()>(Err(e), "anchor body"),
    }
    true
}

fn stored_state_anchor(data: &[u8]) -> bool {
    let Some(ledger) = be_u64(data) else {
        return false;
    };
    let stored = &data[8..];
    match fuzzing::state_anchor(stored, ledger) {
        Ok((again, _)) => {
            assert_eq!(again, stored, "an anchor opened but is not canonical");
            true
        }
        Err(e) => {
            assert_tampered::<()>(Err(e), "stored anchor");
            false
        }
    }
}

/// A keychain file that parses signs to bytes that parse to the same file, verify, and
/// sign to the same bytes again (the MAC covers what is read back, not how it was
/// spelled).
fn keychain_file(data: &[u8]) -> bool {
    let Some(read) = fuzzing::keychain_file(data) else {
        return false;
    };
    let again = fuzzing::keychain_file(&read.signed).expect("a signed file parses");
    assert!(
        again.verifies,
        "a file signed as erase writes it does not verify"
    );
    assert_eq!(again.vault_id, read.vault_id);
    assert_eq!(again.signed, read.signed);
    true
}

/// A mark decodes to a generation only if one of its two copies is that generation's;
/// a mark as written decodes to its generation even with one copy damaged.
fn durable_mark(data: &[u8]) -> bool {
    let Some(gen) = fuzzing::durable_mark(data) else {
        return false;
    };
    let good = fuzzing::encode_durable_mark(gen);
    assert!(data[..16] == good[..16] || data[16..] == good[16..]);
    let mut damaged = good;
    damaged[gen as usize % 32] ^= 0x01;
    assert_eq!(fuzzing::durable_mark(&damaged), Some(gen));
    true
}

/// seq (8) || plaintext.
fn ledger_entry(data: &[u8]) -> bool {
    let Some(seq) = be_u64(data) else {
        return false;
    };
    let Ok(enc) = fuzzing::ledger_entry(seq, &data[8..]) else {
        return false;
    };
    assert_eq!(fuzzing::ledger_entry(seq, &enc).expect("re-encoded"), enc);
    assert_tampered(
        fuzzing::ledger_entry(seq.wrapping_add(1), &enc),
        "another position",
    );
    true
}

/// Options JSON (the C API's options_json). Accepted options are valid and survive a
/// round trip through their JSON form unchanged.
pub fn options(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(opts) = capvault::VaultOptions::from_json(text) else {
        return false;
    };
    opts.validate().expect("accepted options validate");
    let json = serde_json::to_string(&opts).expect("options serialize");
    let again = capvault::VaultOptions::from_json(&json).expect("serialized options parse");
    assert_eq!(again, opts);
    true
}

/// Text keys: recipients, identities, receipt keys, receipt signing keys and suite
/// names. Whatever parses prints to text that parses to the same key.
pub fn text_keys(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let mut parsed = false;
    if let Ok(r) = text.parse::<Recipient>() {
        let again: Recipient = r.to_string().parse().expect("printed recipient parses");
        assert_eq!(again, r);
        assert_eq!(again.to_string(), r.to_string());
        parsed = true;
    }
    if let Ok(id) = text.parse::<Identity>() {
        let printed = id.to_secret_string();
        let again: Identity = printed.parse().expect("printed identity parses");
        assert_eq!(*again.to_secret_string(), *printed);
        assert_eq!(again.recipient(), id.recipient());
        assert_eq!(again.receipt_key(), id.receipt_key());
        // Debug never prints the secret.
        let body = &printed[printed.len() - 20..];
        assert!(!format!("{id:?}").contains(body));
        parsed = true;
    }
    if let Ok(k) = text.parse::<ReceiptKey>() {
        let again: ReceiptKey = k.to_string().parse().expect("printed receipt key parses");
        assert_eq!(again, k);
        parsed = true;
    }
    if let Ok(s) = text.parse::<ReceiptSigner>() {
        let printed = s.to_secret_string();
        let again: ReceiptSigner = printed.parse().expect("printed signer parses");
        assert_eq!(again.receipt_key(), s.receipt_key());
        parsed = true;
    }
    if let Ok(suite) = text.parse::<Suite>() {
        assert_eq!(suite.name().parse::<Suite>().unwrap(), suite);
        parsed = true;
    }
    parsed
}

/// The bytes of lowercase hex text (fixed inputs only).
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Enrollment records. An accepted record carries a valid signature and prints to the
/// one canonical line, which parses to the same record.
pub fn enrollment(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(rec) = EnrollmentRecord::from_json(text) else {
        return false;
    };
    let line = rec.to_json();
    let again = EnrollmentRecord::from_json(&line).expect("printed record parses");
    assert_eq!(again.to_json(), line);
    assert_eq!(
        (again.device_id(), again.device_key(), again.created_us()),
        (rec.device_id(), rec.device_key(), rec.created_us())
    );
    // The signature in the canonical line verifies over the documented message.
    let j: serde_json::Value = serde_json::from_str(&line).unwrap();
    let sig = hex(j["signature"].as_str().unwrap());
    let mut msg = b"capvault enrollment v1\0".to_vec();
    msg.extend_from_slice(&rec.device_id());
    msg.extend_from_slice(&rec.device_key());
    msg.extend_from_slice(&rec.created_us().to_be_bytes());
    verify_ed25519(&rec.device_key(), &msg, &sig).expect("accepted signature verifies");
    true
}

static RECEIPT_ID: LazyLock<Identity> = LazyLock::new(|| identity(X25519_IDENTITY));

/// Receipt verification under the receipt key of the X25519 vector identity. Input:
/// bundle digest (32) || receipt. Ed25519 signatures are unique under ring's strict
/// checks: a receipt is accepted only if it is the collector's own for that digest.
pub fn receipt(data: &[u8]) -> bool {
    if data.len() < 32 {
        return false;
    }
    let digest: [u8; 32] = data[..32].try_into().unwrap();
    let receipt = &data[32..];
    if verify_receipt(&RECEIPT_ID.receipt_key(), &digest, receipt).is_err() {
        return false;
    }
    let own = RECEIPT_ID.receipt_for(&digest);
    match receipt.len() {
        RECEIPT_LEN => assert_eq!(receipt, &own[..]),
        64 => assert_eq!(receipt, &own[32..]),
        n => panic!("a receipt of {n} bytes was accepted"),
    }
    true
}

/// Hand-off request files, parsed as the serving vault does under a fixed id. An
/// accepted request names that id and the protocol version, and its JSON form parses
/// back to the same request; the same bytes under another id are refused.
pub fn handoff(data: &[u8]) -> bool {
    let Some(req) = fuzzing::handoff_request(data, HANDOFF_ID) else {
        return false;
    };
    assert_eq!(
        (req.v, req.id.as_str()),
        (capvault::handoff::VERSION, HANDOFF_ID)
    );
    let json = serde_json::to_vec(&req).expect("requests serialize");
    let again = fuzzing::handoff_request(&json, HANDOFF_ID).expect("re-parses");
    assert_eq!(format!("{again:?}"), format!("{req:?}"));
    assert!(fuzzing::handoff_request(data, "ffffffffffffffffffffffffffffffff").is_none());
    true
}
