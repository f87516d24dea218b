//! Seal-side tests (they need the crate-private `seal_bundle`) and the generator of
//! the committed test vectors in tests/vectors/bundles/.

use proptest::prelude::*;

use crate::bundle::{seal_bundle, BundleInput, FIXED_HEADER_LEN};
use crate::chain::ChainChecker;
use crate::device::DeviceKey;
use crate::error::Error;
use crate::events::{Event, KeyCategory, LossReason, Marker, SeqEvent};
use crate::open::{inspect_bundle, open_bundle, IncomingBundle, InspectedBundle};
use crate::receipt::verify_receipt;
use crate::recipient::{Identity, Suite};
use crate::secret::Key32;
use crate::AuditEntry;

pub(crate) fn device(seed: u8) -> DeviceKey {
    let mut s = [seed; 32];
    DeviceKey::from_seed(&Key32::from_slice_zeroizing(&mut s).unwrap()).unwrap()
}

pub(crate) fn all_events(first_seq: u64, screenshot_len: usize) -> Vec<SeqEvent> {
    let shot: Vec<u8> = (0..screenshot_len).map(|i| (i * 31 % 251) as u8).collect();
    let evs = vec![
        Event::MouseMove {
            ts_us: 1,
            x: 10,
            y: -20,
        },
        Event::MouseButton {
            ts_us: 2,
            button: 1,
            pressed: true,
            x: 3,
            y: 4,
        },
        Event::Scroll {
            ts_us: 3,
            dx: 0,
            dy: -120,
        },
        Event::key(4, 0x04, true, Some("a".into())),
        Event::Key {
            ts_us: 5,
            pressed: false,
            key_code: None,
            text: None,
            category: Some(KeyCategory::Letter),
        },
        Event::WindowFocus {
            ts_us: 6,
            app: "editor".into(),
            title: "notes — ünïcode \"quoted\"".into(),
        },
        Event::Screenshot {
            ts_us: 7,
            width: 1920,
            height: 1080,
            format: "png".into(),
            data: shot,
        },
        Event::Custom {
            ts_us: 8,
            kind: "clipboard-meta".into(),
            data: vec![0, 1, 2, 255],
        },
        Event::Marker {
            ts_us: 9,
            marker: Marker::PauseStart { until_us: 99 },
        },
        Event::Marker {
            ts_us: 10,
            marker: Marker::PauseEnd { dropped: 3 },
        },
        Event::Marker {
            ts_us: 11,
            marker: Marker::DenyListGapStart,
        },
        Event::Marker {
            ts_us: 12,
            marker: Marker::DenyListGapEnd { dropped: 4 },
        },
        Event::Marker {
            ts_us: 13,
            marker: Marker::Loss {
                reason: LossReason::Budget,
                records: 2,
                bytes: 100,
            },
        },
        Event::Marker {
            ts_us: 14,
            marker: Marker::PolicyChanged { version: 2 },
        },
        Event::Marker {
            ts_us: 15,
            marker: Marker::KeyRotated { epoch: 5 },
        },
    ];
    evs.into_iter()
        .enumerate()
        .map(|(i, event)| SeqEvent {
            seq: first_seq + i as u64,
            event,
        })
        .collect()
}

/// A device's first bundle, sealed to `id`.
fn first_bundle(id: &Identity, events: &[SeqEvent], audit: &[AuditEntry]) -> super::SealedBundle {
    seal_bundle(
        &input(1, [0; 32], events, audit),
        &id.recipient(),
        &device(1),
    )
    .unwrap()
}

fn audit() -> Vec<AuditEntry> {
    vec![AuditEntry {
        seq: 1,
        ts_us: 5,
        action: "seal".into(),
        detail: "bundle 1".into(),
    }]
}

pub(crate) fn input<'a>(
    seq: u64,
    prev: [u8; 32],
    events: &'a [SeqEvent],
    audit: &'a [AuditEntry],
) -> BundleInput<'a> {
    BundleInput {
        device_id: [0x11; 16],
        stream_id: [0x22; 16],
        records_lost: 0,
        bundle_seq: seq,
        first_record: seq * 100,
        last_record: seq * 100 + 99,
        prev_digest: prev,
        created_us: 1_764_000_000_000_000 + seq as i64,
        purpose: "model-training",
        user: "alice@example.com",
        events,
        audit,
    }
}

fn err_has(e: Error, variant: fn(&Error) -> bool, text: &str) {
    assert!(variant(&e), "wrong variant: {e:?}");
    assert!(
        e.to_string().contains(text),
        "{e} does not mention {text:?}"
    );
}
fn is_tampered(e: &Error) -> bool {
    matches!(e, Error::Tampered(_))
}
fn is_invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument(_))
}
fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::NotFound(_))
}

#[test]
fn every_event_type_round_trips_with_a_2mb_screenshot() {
    for suite in [Suite::X25519, Suite::XWing] {
        let id = Identity::generate(suite);
        let events = all_events(40, 2 * 1024 * 1024);
        let audit = audit();
        let b = first_bundle(&id, &events, &audit);
        let o = open_bundle(b.bytes(), &id).unwrap();
        assert_eq!(o.events, events);
        assert_eq!(o.audit, audit);
        assert_eq!(o.user, "alice@example.com");
        assert_eq!(o.digest, *b.digest());
        assert_eq!(o.id, b.id());
        assert_eq!(o.header, *b.header());
        assert_eq!(o.header.suite(), suite);
        assert_eq!((o.header.first_event(), o.header.last_event()), (40, 54));
        assert_eq!(o.header.event_count(), 15);
        assert_eq!(o.header.device_key(), &device(1).public_key());
        let i = inspect_bundle(b.bytes()).unwrap();
        assert_eq!(i.digest, *b.digest());
    }
}

#[test]
fn empty_bundle_round_trips() {
    let id = Identity::generate(Suite::X25519);
    let b = first_bundle(&id, &[], &[]);
    let o = open_bundle(b.bytes(), &id).unwrap();
    assert!(o.events.is_empty());
    assert_eq!(
        (
            o.header.first_event(),
            o.header.last_event(),
            o.header.event_count()
        ),
        (0, 0, 0)
    );
}

#[test]
fn every_bad_input_has_its_own_error() {
    let id = Identity::generate(Suite::X25519);
    let events = all_events(1, 1000);
    let audit = audit();
    let b = first_bundle(&id, &events, &audit);
    let bytes = b.bytes();
    let hlen = FIXED_HEADER_LEN + "model-training".len();

    let other = Identity::generate(Suite::X25519);
    err_has(
        open_bundle(bytes, &other).unwrap_err(),
        is_not_found,
        "not sealed to this identity",
    );
    let pq = Identity::generate(Suite::XWing);
    err_has(
        open_bundle(bytes, &pq).unwrap_err(),
        is_invalid,
        "identity is an xwing identity",
    );

    for (what, at) in [
        ("header", 70),
        ("enc", hlen + 5),
        ("ct", hlen + 2 + 32 + 16 + 8 + 3),
        ("sig", bytes.len() - 10),
    ] {
        let mut bad = bytes.to_vec();
        bad[at] ^= 0x01;
        let e = open_bundle(&bad, &id).unwrap_err();
        assert!(
            is_tampered(&e) && e.to_string().contains("signature does not verify"),
            "{what}: {e}"
        );
    }
    err_has(
        open_bundle(&bytes[..bytes.len() - 1], &id).unwrap_err(),
        is_tampered,
        "truncated",
    );
    err_has(
        open_bundle(&bytes[..100], &id).unwrap_err(),
        is_tampered,
        "truncated",
    );
    let mut longer = bytes.to_vec();
    longer.push(0);
    err_has(
        open_bundle(&longer, &id).unwrap_err(),
        is_tampered,
        "trailing bytes",
    );
    err_has(
        open_bundle(b"hello world", &id).unwrap_err(),
        is_invalid,
        "not a capvault bundle",
    );
    err_has(
        open_bundle(b"", &id).unwrap_err(),
        is_invalid,
        "not a capvault bundle",
    );
    let mut v3 = bytes.to_vec();
    v3[9] = 3;
    err_has(
        open_bundle(&v3, &id).unwrap_err(),
        is_invalid,
        "unsupported bundle format version 3",
    );

    // Swapped header: the header of bundle 2 on the body of bundle 1.
    let b2 = seal_bundle(
        &input(2, *b.digest(), &events, &audit),
        &id.recipient(),
        &device(1),
    )
    .unwrap();
    let mut swapped = b2.bytes()[..hlen].to_vec();
    swapped.extend_from_slice(&bytes[hlen..]);
    err_has(
        open_bundle(&swapped, &id).unwrap_err(),
        is_tampered,
        "signature does not verify",
    );
    // ... and re-signed by someone else's key: the signature checks, HPKE does not.
    let resigned = resign(&swapped, &device(9));
    inspect_bundle(&resigned).unwrap();
    err_has(
        open_bundle(&resigned, &id).unwrap_err(),
        is_tampered,
        "header does not belong",
    );
}

/// Replaces the device key in the header and re-signs (what a forger with their own
/// key can do).
pub(crate) fn resign(bytes: &[u8], key: &DeviceKey) -> Vec<u8> {
    let mut out = bytes[..bytes.len() - 64].to_vec();
    out[32..64].copy_from_slice(&key.public_key());
    let hash = ring::digest::digest(&ring::digest::SHA256, &out);
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    let mut msg = crate::bundle::sig_context(version).to_vec();
    msg.extend_from_slice(hash.as_ref());
    out.extend_from_slice(&key.sign(&msg));
    out
}

fn kinds_of(rep: &crate::ChainReport) -> Vec<String> {
    let mut k: Vec<String> = rep
        .issues()
        .map(|(_, i)| {
            serde_json::to_value(i).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    k.sort();
    k
}

#[test]
fn chain_checker_reports_each_kind_of_problem() {
    let id = Identity::generate(Suite::X25519);
    let ev = all_events(1, 10);
    let r = id.recipient();
    let b1 = seal_bundle(&input(1, [0; 32], &ev, &[]), &r, &device(1)).unwrap();
    let b2 = seal_bundle(&input(2, *b1.digest(), &ev, &[]), &r, &device(1)).unwrap();
    let b2alt = seal_bundle(&input(2, *b1.digest(), &ev[..3], &[]), &r, &device(1)).unwrap();
    let b4 = seal_bundle(&input(4, [5; 32], &ev, &[]), &r, &device(1)).unwrap();
    let forged = seal_bundle(&input(3, *b2.digest(), &ev, &[]), &r, &device(2)).unwrap();
    let mut badlink = input(3, [1; 32], &ev, &[]);
    badlink.first_record = 500;
    badlink.last_record = 599;
    let b3 = seal_bundle(&badlink, &r, &device(1)).unwrap();
    let mut gap = input(3, *b2.digest(), &ev, &[]);
    gap.first_record = 305;
    let b3gap = seal_bundle(&gap, &r, &device(1)).unwrap();
    gap.records_lost = 5;
    let b3lost = seal_bundle(&gap, &r, &device(1)).unwrap();

    let kinds = |bundles: &[&super::SealedBundle]| {
        let mut c = ChainChecker::new();
        for b in bundles {
            c.add(b.header(), b.digest());
        }
        let rep = c.report();
        (rep.is_clean(), kinds_of(&rep))
    };
    let none: Vec<String> = vec![];
    assert_eq!(kinds(&[&b1, &b2]), (true, none.clone()));
    assert_eq!(kinds(&[&b2, &b1]), (true, vec!["reordered".to_string()]));
    assert_eq!(
        kinds(&[&b1, &b2, &b1]),
        (true, vec!["duplicate_retry".into(), "reordered".into()])
    );
    assert_eq!(kinds(&[&b1, &b2, &b2alt]).1, vec!["conflict"]);
    assert_eq!(
        kinds(&[&b1, &b2, &b4]),
        (false, vec!["missing_bundles".into()])
    );
    // Without pins, a second key for the device id makes every bundle of it suspect,
    // whichever arrived first.
    assert_eq!(
        kinds(&[&b1, &b2, &forged]),
        (false, vec!["ambiguous_device_key".into()])
    );
    assert_eq!(
        kinds(&[&forged, &b1, &b2]),
        (false, vec!["ambiguous_device_key".into()])
    );
    assert_eq!(
        kinds(&[&b1, &b2, &b3]),
        (false, vec!["prev_digest_mismatch".into()])
    );
    assert_eq!(
        kinds(&[&b1, &b2, &b3gap]),
        (false, vec!["record_gap".into()])
    );
    // The same gap, declared by the device, is explained.
    assert_eq!(
        kinds(&[&b1, &b2, &b3lost]),
        (true, vec!["records_lost".into()])
    );
    assert_eq!(kinds(&[&b2]), (true, vec!["starts_mid_chain".into()]));
}

#[test]
fn chain_checker_releases_only_what_it_accepts() {
    let id = Identity::generate(Suite::X25519);
    let ev = all_events(1, 10);
    let r = id.recipient();
    let b1 = seal_bundle(&input(1, [0; 32], &ev, &[]), &r, &device(1)).unwrap();
    let b2 = seal_bundle(&input(2, *b1.digest(), &ev, &[]), &r, &device(1)).unwrap();
    let b2alt = seal_bundle(&input(2, *b1.digest(), &ev[..3], &[]), &r, &device(1)).unwrap();
    let forged = seal_bundle(&input(3, *b2.digest(), &ev, &[]), &r, &device(2)).unwrap();
    let mut elsewhere = input(1, [0; 32], &ev, &[]);
    elsewhere.device_id = [0x99; 16];
    let stranger = seal_bundle(&elsewhere, &r, &device(3)).unwrap();
    let mut pins = crate::DevicePins::new();
    pins.pin([0x11; 16], device(1).public_key()).unwrap();

    // Pinned: the forger's bundle under the enrolled id and the unenrolled device are
    // rejected, whatever arrives first; the genuine bundles stay accepted.
    let mut c = ChainChecker::with_pins(pins.clone());
    for b in [&forged, &stranger, &b1, &b2] {
        c.add(b.header(), b.digest());
    }
    let rep = c.report();
    assert!(rep.pinned);
    assert!(!rep.is_clean());
    assert!(rep.accepts(b1.digest()) && rep.accepts(b2.digest()));
    assert!(!rep.accepts(forged.digest()) && !rep.accepts(stranger.digest()));
    assert_eq!(
        kinds_of(&rep),
        vec!["device_key_changed".to_string(), "unenrolled_device".into()]
    );
    // A conflict releases neither copy.
    let mut c = ChainChecker::with_pins(pins);
    for b in [&b1, &b2, &b2alt] {
        c.add(b.header(), b.digest());
    }
    let rep = c.report();
    assert!(rep.accepts(b1.digest()));
    assert!(!rep.accepts(b2.digest()) && !rep.accepts(b2alt.digest()));
    // Unpinned and consistent: accepted, and the report says keys were not pinned.
    let mut c = ChainChecker::new();
    c.add(b1.header(), b1.digest());
    let rep = c.report();
    assert!(!rep.pinned && rep.is_clean() && rep.accepts(b1.digest()));
}

#[test]
fn a_bundle_that_does_not_open_is_not_counted_as_accepted() {
    let id = Identity::generate(Suite::X25519);
    let ev = all_events(1, 10);
    let r = id.recipient();
    let b1 = seal_bundle(&input(1, [0; 32], &ev, &[]), &r, &device(1)).unwrap();
    let b2 = seal_bundle(&input(2, *b1.digest(), &ev, &[]), &r, &device(1)).unwrap();
    let b3 = seal_bundle(&input(3, *b2.digest(), &ev, &[]), &r, &device(1)).unwrap();
    let mut c = ChainChecker::new();
    for b in [&b1, &b2, &b3] {
        c.add(b.header(), b.digest());
    }
    let before = c.report();
    assert_eq!(
        (before.devices[0].bundles, before.devices[0].rejected),
        (3, 0)
    );
    c.not_opened(b3.digest());
    let rep = c.report();
    let d = &rep.devices[0];
    assert_eq!((d.bundles, d.rejected), (2, 1));
    assert_eq!((d.first_seq, d.last_seq), (1, 2));
    assert!(!rep.accepts(b3.digest()) && rep.accepts(b2.digest()));
    // Its link still holds: no gap, no broken chain, one finding naming it.
    assert_eq!(kinds_of(&rep), vec!["not_opened".to_string()]);
    assert!(rep.is_clean());
    assert!(d.issues[0].to_string().contains(b3.id()));
}

#[test]
fn streams_of_one_device_are_separate_chains() {
    let id = Identity::generate(Suite::X25519);
    let ev = all_events(1, 10);
    let r = id.recipient();
    let mut chains = Vec::new();
    for stream in [[1u8; 16], [2u8; 16], [3u8; 16]] {
        let mut prev = [0u8; 32];
        let mut bundles = Vec::new();
        for seq in 1..=3 {
            let mut i = input(seq, prev, &ev, &[]);
            i.stream_id = stream;
            let b = seal_bundle(&i, &r, &device(1)).unwrap();
            prev = *b.digest();
            bundles.push(b);
        }
        chains.push(bundles);
    }
    // Interleaved arrival: three clean chains, no conflict between equal numbers.
    let mut c = ChainChecker::new();
    for seq in 0..3 {
        for chain in &chains {
            c.add(chain[seq].header(), chain[seq].digest());
        }
    }
    let rep = c.report();
    assert!(rep.is_clean(), "{:?}", kinds_of(&rep));
    assert_eq!(rep.devices.len(), 3);
    assert!(rep
        .devices
        .iter()
        .all(|d| d.bundles == 3 && d.issues.is_empty()));
}

#[test]
fn receipts_bind_the_bundle() {
    let id = Identity::generate(Suite::X25519);
    let ev = all_events(1, 10);
    let b1 = first_bundle(&id, &ev, &[]);
    let b2 = seal_bundle(
        &input(2, *b1.digest(), &ev, &[]),
        &id.recipient(),
        &device(1),
    )
    .unwrap();
    let o = open_bundle(b1.bytes(), &id).unwrap();
    let receipt = id.receipt_for(&o.digest);
    verify_receipt(&id.receipt_key(), b1.digest(), &receipt).unwrap();
    assert!(matches!(
        verify_receipt(&id.receipt_key(), b2.digest(), &receipt),
        Err(Error::Tampered(_))
    ));
    let mut forged = receipt;
    forged[40] ^= 1;
    assert!(matches!(
        verify_receipt(&id.receipt_key(), b1.digest(), &forged),
        Err(Error::Tampered(_))
    ));
    let impostor = Identity::generate(Suite::X25519).receipt_for(b1.digest());
    assert!(matches!(
        verify_receipt(&id.receipt_key(), b1.digest(), &impostor),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        verify_receipt(&id.receipt_key(), b1.digest(), &impostor[32..]),
        Err(Error::Tampered(_))
    ));
}

fn small_bundle() -> (Identity, Vec<u8>) {
    let mut k = [3u8; 32];
    k[0] = 1;
    let id = Identity::from_raw(Suite::X25519, k, [4; 32]);
    let ev = all_events(1, 64);
    let b = first_bundle(&id, &ev, &[]);
    (id, b.into_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn byte_flips_never_panic_and_never_open(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (id, mut bytes) = small_bundle();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(open_bundle(&bytes, &id).is_err());
        prop_assert!(inspect_bundle(&bytes).is_err());
    }

    #[test]
    fn truncations_never_panic_and_never_open(len in any::<prop::sample::Index>()) {
        let (id, bytes) = small_bundle();
        let n = len.index(bytes.len());
        prop_assert!(open_bundle(&bytes[..n], &id).is_err());
        prop_assert!(inspect_bundle(&bytes[..n]).is_err());
    }

    #[test]
    fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600), keep_magic in any::<bool>()) {
        let (id, _) = small_bundle();
        let mut data = data;
        if keep_magic && data.len() >= 10 {
            data[..8].copy_from_slice(b"CVBUNDLE");
            data[8..10].copy_from_slice(&1u16.to_be_bytes());
        }
        prop_assert!(open_bundle(&data, &id).is_err());
    }
}

// ----- bundles hashed as they arrive -----

/// `bytes` fed to an [`IncomingBundle`] in pieces that end at `cuts` (increasing
/// offsets), then inspected; the bytes it hands back must be the bytes fed. The same
/// pieces received after a caller's prefix must give the same outcome and hand back
/// the prefix untouched.
fn receive(bytes: &[u8], cuts: &[usize], capacity: usize) -> crate::Result<InspectedBundle> {
    let plain = receive_after(&[], bytes, cuts, capacity);
    let prefix: Vec<u8> = (0..100u8).map(|i| i ^ 0xA5).collect();
    let after = receive_after(&prefix, bytes, cuts, capacity);
    match (&plain, &after) {
        (Ok(a), Ok(b)) => assert_eq!((&a.id, &a.digest, &a.header), (&b.id, &b.digest, &b.header)),
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("without a prefix {a:?}, after one {b:?}"),
    }
    plain
}

fn receive_after(
    prefix: &[u8],
    bytes: &[u8],
    cuts: &[usize],
    capacity: usize,
) -> crate::Result<InspectedBundle> {
    let mut buffer = Vec::with_capacity(prefix.len() + capacity);
    buffer.extend_from_slice(prefix);
    let mut incoming = IncomingBundle::after_prefix(buffer);
    assert!(incoming.is_empty());
    let mut at = 0;
    for &cut in cuts.iter().chain([&bytes.len()]) {
        let cut = cut.clamp(at, bytes.len());
        incoming.push(&bytes[at..cut]);
        at = cut;
    }
    assert_eq!(incoming.len(), bytes.len());
    assert_eq!(incoming.is_empty(), bytes.is_empty());
    let (inspected, back) = incoming.inspect()?;
    assert_eq!(&back[..prefix.len()], prefix);
    assert_eq!(&back[prefix.len()..], bytes);
    Ok(inspected)
}

/// Offsets every `size` bytes.
fn every(size: usize, len: usize) -> Vec<usize> {
    (1..=len / size).map(|i| i * size).collect()
}

/// The same outcome, field by field or error by error.
fn assert_same(
    got: crate::Result<InspectedBundle>,
    want: crate::Result<InspectedBundle>,
    what: &str,
) {
    match (got, want) {
        (Ok(g), Ok(w)) => {
            assert_eq!(g.id, w.id, "{what}");
            assert_eq!(g.digest, w.digest, "{what}");
            assert_eq!(g.header, w.header, "{what}");
        }
        (Err(g), Err(w)) => assert_eq!(g, w, "{what}"),
        (g, w) => panic!("{what}: got {g:?}, inspect_bundle gives {w:?}"),
    }
}

/// Every way to cut a body worth trying by hand: single bytes, pieces around the
/// signature's length, network-sized pieces, and cuts at, just before and just after
/// the start of the last 64 bytes.
fn chunkings(len: usize) -> Vec<Vec<usize>> {
    let mut out = vec![vec![], vec![0, 0, len, len]];
    for size in [1, 63, 64, 65, 1000, 16 << 10, 64 << 10] {
        out.push(every(size, len));
    }
    let sig = len.saturating_sub(64);
    for cut in [sig.saturating_sub(1), sig, sig + 1] {
        out.push(vec![cut]);
        out.push(vec![cut / 2, cut]);
    }
    out.push((sig..=len).collect());
    out
}

#[test]
fn an_incoming_bundle_inspects_as_inspect_bundle_however_it_arrives() {
    let id = Identity::generate(Suite::X25519);
    let events = all_events(1, 300_000);
    let audit = audit();
    let b = first_bundle(&id, &events, &audit);
    let bytes = b.bytes();
    let want = inspect_bundle(bytes).unwrap();
    assert_eq!(want.digest, *b.digest());
    for cuts in chunkings(bytes.len()) {
        // Pre-sized to the declared length, and grown from nothing.
        for capacity in [bytes.len(), 0] {
            let what = format!("{} pieces", cuts.len() + 1);
            assert_same(receive(bytes, &cuts, capacity), Ok(want.clone()), &what);
        }
    }
}

#[test]
fn an_incoming_bundle_fails_as_inspect_bundle_does() {
    let (_, bytes) = small_bundle();
    let len = bytes.len();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for at in [0, 9, 40, 200, len / 2, len - 65, len - 64, len - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        cases.push((format!("byte {at} flipped"), bad));
    }
    // Shorter than a signature, shorter than a header, one byte short.
    for n in [0, 1, 8, 10, 63, 64, 65, 100, len - 64, len - 1] {
        cases.push((format!("first {n} bytes"), bytes[..n].to_vec()));
    }
    for extra in [1, 63, 64, 65, 1000] {
        let mut longer = bytes.clone();
        longer.resize(len + extra, 0);
        cases.push((format!("{extra} trailing bytes"), longer));
    }
    cases.push(("63 bytes of garbage".into(), vec![0xAB; 63]));
    cases.push(("64 bytes of garbage".into(), vec![0xAB; 64]));
    let mut magic_only = b"CVBUNDLE\x00\x02".to_vec();
    magic_only.resize(64, 0);
    cases.push(("a 64-byte header start".into(), magic_only));
    for (what, body) in cases {
        let want = inspect_bundle(&body);
        assert!(want.is_err(), "{what}");
        for cuts in chunkings(body.len()) {
            assert_same(receive(&body, &cuts, body.len()), want.clone(), &what);
        }
    }
}

/// Version 1 and 2 bundles as committed, good and bad alike.
#[test]
fn committed_bundle_vectors_inspect_the_same_as_they_arrive() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/bundles");
    let mut n = 0;
    for version in ["v1", "v2"] {
        for entry in std::fs::read_dir(root.join(version)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|x| x != "cvb") {
                continue;
            }
            let raw = std::fs::read(&path).unwrap();
            let split = raw.windows(2).position(|w| w == b"\n\n").unwrap();
            let body = &raw[split + 2..];
            let what = path.display().to_string();
            for cuts in chunkings(body.len()) {
                assert_same(receive(body, &cuts, 0), inspect_bundle(body), &what);
            }
            n += 1;
        }
    }
    assert!(n >= 30, "{n} vectors");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_split_of_an_incoming_bundle_inspects_the_same(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        flip in proptest::option::of((any::<prop::sample::Index>(), 0u8..8)),
        cut_to in proptest::option::of(any::<prop::sample::Index>()),
        extra in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let (_, mut bytes) = small_bundle();
        if let Some((pos, bit)) = flip {
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        if let Some(n) = cut_to {
            bytes.truncate(n.index(bytes.len() + 1));
        }
        bytes.extend_from_slice(&extra);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        assert_same(receive(&bytes, &cuts, 0), inspect_bundle(&bytes), "random split");
    }
}

// ----- test vector generator -----

fn vector(dir: &std::path::Path, name: &str, fields: &[(&str, String)], body: &[u8]) {
    let mut out = b"capvault bundle test vector\n".to_vec();
    for (k, v) in fields {
        out.extend_from_slice(format!("{k}: {v}\n").as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    std::fs::write(dir.join(name), out).unwrap();
}

fn jsonl_sha256(events: &[SeqEvent]) -> String {
    let mut out = Vec::new();
    crate::jsonl::write_json_lines(events, &mut out, None).unwrap();
    data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, &out).as_ref())
}

/// Writes the committed vectors. Keys are fixed; the HPKE ephemeral keys are random,
/// so regenerating changes the files (the tests read whatever is committed).
#[test]
#[ignore = "writes tests/vectors/bundles/; run with --ignored to regenerate"]
fn write_bundle_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/bundles/v2");
    std::fs::create_dir_all(&dir).unwrap();
    let id = Identity::from_raw(Suite::X25519, [0x42; 32], [0x43; 32]);
    let pq = Identity::from_raw(Suite::XWing, [0x44; 32], [0x45; 32]);
    let stranger = Identity::from_raw(Suite::X25519, [0x55; 32], [0x56; 32]);
    let idt = id.to_string();
    let dev = device(1);
    let ev = all_events(1, 3000);
    let au = audit();
    let hlen = FIXED_HEADER_LEN + "model-training".len();
    let r = id.recipient();

    let b1 = seal_bundle(&input(1, [0; 32], &ev, &au), &r, &dev).unwrap();
    let ev2 = all_events(16, 100);
    let b2 = seal_bundle(&input(2, *b1.digest(), &ev2, &[]), &r, &dev).unwrap();
    let b2alt = seal_bundle(&input(2, *b1.digest(), &ev2[..2], &[]), &r, &dev).unwrap();
    let b4 = seal_bundle(&input(4, [9; 32], &ev2, &[]), &r, &dev).unwrap();
    let other_dev = seal_bundle(&input(3, *b2.digest(), &ev2, &[]), &r, &device(2)).unwrap();
    let bpq = seal_bundle(&input(1, [0; 32], &ev, &au), &pq.recipient(), &dev).unwrap();
    let bstranger = seal_bundle(&input(1, [0; 32], &ev, &au), &stranger.recipient(), &dev).unwrap();

    let ok = |name: &str,
              b: &super::SealedBundle,
              ident: &Identity,
              events: &[SeqEvent],
              comment: &str| {
        vector(
            &dir,
            name,
            &[
                ("kind", "bundle".into()),
                ("comment", comment.into()),
                ("expect", "ok".into()),
                ("inspect", "ok".into()),
                ("identity", ident.to_string()),
                ("suite", b.header().suite().to_string()),
                ("bundle_seq", b.header().bundle_seq().to_string()),
                ("digest", data_encoding::HEXLOWER.encode(b.digest())),
                ("id", b.id().into()),
                ("user", open_bundle(b.bytes(), ident).unwrap().user.clone()),
                ("events", events.len().to_string()),
                ("jsonl_sha256", jsonl_sha256(events)),
            ],
            b.bytes(),
        )
    };
    ok(
        "x25519_ok.cvb",
        &b1,
        &id,
        &ev,
        "every event type, X25519 suite",
    );
    ok(
        "x25519_ok_seq2.cvb",
        &b2,
        &id,
        &ev2,
        "the next bundle of the same device",
    );
    ok(
        "x25519_conflict_seq2.cvb",
        &b2alt,
        &id,
        &ev2[..2],
        "another bundle claiming sequence 2",
    );
    ok(
        "x25519_seq4.cvb",
        &b4,
        &id,
        &ev2,
        "sequence 4 (3 is missing)",
    );
    ok(
        "other_device_key.cvb",
        &other_dev,
        &id,
        &ev2,
        "same device id, signed by another key",
    );
    ok(
        "xwing_ok.cvb",
        &bpq,
        &pq,
        &ev,
        "every event type, X-Wing suite",
    );

    let bad =
        |name: &str, body: &[u8], ident: &Identity, expect: &str, inspect: &str, comment: &str| {
            vector(
                &dir,
                name,
                &[
                    ("kind", "bundle".into()),
                    ("comment", comment.into()),
                    ("expect", expect.into()),
                    ("inspect", inspect.into()),
                    ("identity", ident.to_string()),
                ],
                body,
            )
        };
    const SIG: &str = "tampered: device signature does not verify";
    let flip = |at: usize| {
        let mut v = b1.bytes().to_vec();
        v[at] ^= 0x01;
        v
    };
    let bytes = b1.bytes();
    bad(
        "wrong_identity.cvb",
        bstranger.bytes(),
        &id,
        "not_found: not sealed to this identity",
        "ok",
        "sealed to another X25519 recipient",
    );
    bad(
        "wrong_suite.cvb",
        bpq.bytes(),
        &id,
        "invalid_argument: sealed to an xwing recipient",
        "ok",
        "X-Wing bundle, X25519 identity",
    );
    bad(
        "flip_header.cvb",
        &flip(87),
        &id,
        SIG,
        SIG,
        "bundle_seq byte flipped",
    );
    bad(
        "flip_enc.cvb",
        &flip(hlen + 2 + 7),
        &id,
        SIG,
        SIG,
        "encapsulated key byte flipped",
    );
    bad(
        "flip_ciphertext.cvb",
        &flip(hlen + 2 + 32 + 16 + 8 + 100),
        &id,
        SIG,
        SIG,
        "ciphertext byte flipped",
    );
    bad(
        "flip_signature.cvb",
        &flip(bytes.len() - 1),
        &id,
        SIG,
        SIG,
        "signature byte flipped",
    );
    bad(
        "truncated.cvb",
        &bytes[..bytes.len() - 20],
        &id,
        "tampered: truncated",
        "tampered: truncated",
        "last 20 bytes cut",
    );
    bad(
        "truncated_header.cvb",
        &bytes[..60],
        &id,
        "tampered: truncated",
        "tampered: truncated",
        "cut inside the header",
    );
    let mut trailing = bytes.to_vec();
    trailing.extend_from_slice(b"\0\0");
    bad(
        "trailing_bytes.cvb",
        &trailing,
        &id,
        "tampered: trailing bytes",
        "tampered: trailing bytes",
        "two bytes appended",
    );
    let mut swapped = b2.bytes()[..hlen].to_vec();
    swapped.extend_from_slice(&bytes[hlen..]);
    bad(
        "swapped_header.cvb",
        &swapped,
        &id,
        SIG,
        SIG,
        "header of bundle 2 on the body of bundle 1",
    );
    let resigned = resign(&swapped, &device(2));
    bad(
        "swapped_header_resigned.cvb",
        &resigned,
        &id,
        "tampered: header does not belong to this payload",
        "ok",
        "swapped header, re-signed by another device key",
    );
    let mut suite = bytes.to_vec();
    suite[10..12].copy_from_slice(&0x0021u16.to_be_bytes());
    let suite = resign(&suite, &dev);
    bad(
        "unsupported_suite.cvb",
        &suite,
        &id,
        "invalid_argument: unsupported HPKE suite",
        "invalid_argument: unsupported HPKE suite",
        "KEM id 0x0021, validly signed",
    );
    let mut v3 = bytes.to_vec();
    v3[9] = 3;
    bad(
        "unsupported_version.cvb",
        &v3,
        &id,
        "invalid_argument: unsupported bundle format version",
        "invalid_argument: unsupported bundle format version",
        "version 3",
    );
    bad(
        "not_a_bundle.cvb",
        b"PK\x03\x04 this is a zip file",
        &id,
        "invalid_argument: not a capvault bundle",
        "invalid_argument: not a capvault bundle",
        "wrong magic",
    );

    // Version 2: a second user stream of the same device, and a declared and an
    // undeclared gap in the record range before bundle 3.
    let mut s2 = input(1, [0; 32], &ev2, &[]);
    s2.stream_id = [0x33; 16];
    s2.user = "bob@example.com";
    let bstream2 = seal_bundle(&s2, &r, &dev).unwrap();
    ok(
        "x25519_stream2.cvb",
        &bstream2,
        &id,
        &ev2,
        "bundle 1 of another user stream of the same device",
    );
    let mut lost = input(3, *b2.digest(), &ev2, &[]);
    lost.first_record = 305;
    lost.records_lost = 5;
    let blost = seal_bundle(&lost, &r, &dev).unwrap();
    ok(
        "x25519_seq3_lost.cvb",
        &blost,
        &id,
        &ev2,
        "bundle 3 declares 5 records removed unreleased before it",
    );
    lost.records_lost = 0;
    let bgap = seal_bundle(&lost, &r, &dev).unwrap();
    ok(
        "x25519_seq3_gap.cvb",
        &bgap,
        &id,
        &ev2,
        "bundle 3 skips 5 records without declaring them",
    );
    let mut stranger_in = input(1, [0; 32], &ev2, &[]);
    stranger_in.device_id = [0x77; 16];
    let bunknown = seal_bundle(&stranger_in, &r, &device(3)).unwrap();
    ok(
        "unenrolled_device.cvb",
        &bunknown,
        &id,
        &ev2,
        "a well-formed bundle from a device nobody enrolled",
    );

    // Enrollment records.
    let enrollment = |name: &str, body: &str, expect: &str, comment: &str| {
        vector(
            &dir,
            name,
            &[
                ("kind", "enrollment".into()),
                ("comment", comment.into()),
                ("expect", expect.into()),
            ],
            body.as_bytes(),
        )
    };
    let rec1 = crate::EnrollmentRecord::new([0x11; 16], &dev, 1_764_000_000_000_000).to_json();
    enrollment(
        "enroll_device1.json",
        &rec1,
        "ok",
        "device 0x11.. with the key that signs the ok bundles",
    );
    let forged_rec =
        crate::EnrollmentRecord::new([0x11; 16], &device(2), 1_764_000_000_000_000).to_json();
    enrollment(
        "enroll_other_key.json",
        &forged_rec,
        "ok",
        "the same device id, self-signed by another key (valid alone; pins conflict)",
    );
    let key1 = data_encoding::HEXLOWER.encode(&dev.public_key());
    let key2 = data_encoding::HEXLOWER.encode(&device(2).public_key());
    enrollment(
        "enroll_key_swapped.json",
        &rec1.replace(&key1, &key2),
        "tampered: signature does not verify",
        "device key replaced without re-signing",
    );
    enrollment(
        "enroll_bad_format.json",
        &rec1.replace("capvault-enrollment-1", "capvault-enrollment-0"),
        "invalid_argument: unsupported enrollment record format",
        "unknown format string",
    );

    let chain_pinned = |name: &str,
                        files: &[&str],
                        devices: &[&str],
                        issues: &[&str],
                        clean: bool,
                        rejected: &[&str],
                        comment: &str| {
        vector(
            &dir,
            name,
            &[
                ("kind", "chain".into()),
                ("comment", comment.into()),
                ("bundles", files.join(" ")),
                ("devices", devices.join(" ")),
                ("issues", issues.join(" ")),
                ("clean", clean.to_string()),
                ("rejected", rejected.join(" ")),
            ],
            b"",
        )
    };
    let chain = |name: &str, files: &[&str], issues: &[&str], clean: bool, comment: &str| {
        chain_pinned(name, files, &[], issues, clean, &[], comment)
    };
    chain(
        "chain_two_streams.vec",
        &["x25519_ok.cvb", "x25519_stream2.cvb", "x25519_ok_seq2.cvb"],
        &[],
        true,
        "two user streams of one device: two chains, no conflict",
    );
    chain(
        "chain_records_lost.vec",
        &[
            "x25519_ok.cvb",
            "x25519_ok_seq2.cvb",
            "x25519_seq3_lost.cvb",
        ],
        &["records_lost"],
        true,
        "a gap the device declares is explained",
    );
    chain(
        "chain_record_gap.vec",
        &["x25519_ok.cvb", "x25519_ok_seq2.cvb", "x25519_seq3_gap.cvb"],
        &["record_gap"],
        false,
        "a gap the device does not declare",
    );
    chain_pinned(
        "chain_pinned_ok.vec",
        &["x25519_ok.cvb", "x25519_ok_seq2.cvb"],
        &["enroll_device1.json"],
        &[],
        true,
        &[],
        "pinned by the device's enrollment record",
    );
    chain_pinned(
        "chain_pinned_forged_first.vec",
        &[
            "other_device_key.cvb",
            "x25519_ok.cvb",
            "x25519_ok_seq2.cvb",
        ],
        &["enroll_device1.json"],
        &["device_key_changed"],
        false,
        &["other_device_key.cvb"],
        "a forger's bundle under the enrolled device id arrives first: only it is rejected",
    );
    chain_pinned(
        "chain_pinned_unenrolled.vec",
        &["x25519_ok.cvb", "unenrolled_device.cvb"],
        &["enroll_device1.json"],
        &["unenrolled_device"],
        false,
        &["unenrolled_device.cvb"],
        "a device without an enrollment record",
    );
    chain_pinned(
        "chain_pinned_by_forger.vec",
        &["x25519_ok.cvb", "x25519_ok_seq2.cvb"],
        &["enroll_other_key.json"],
        &["device_key_changed", "device_key_changed"],
        false,
        &["x25519_ok.cvb", "x25519_ok_seq2.cvb"],
        "pins from a forged enrollment record reject the device's real bundles",
    );
    chain(
        "chain_ok.vec",
        &["x25519_ok.cvb", "x25519_ok_seq2.cvb"],
        &[],
        true,
        "two linked bundles",
    );
    chain(
        "chain_replayed.vec",
        &["x25519_ok.cvb", "x25519_ok_seq2.cvb", "x25519_ok.cvb"],
        &["duplicate_retry", "reordered"],
        true,
        "bundle 1 delivered again",
    );
    chain_pinned(
        "chain_conflict.vec",
        &[
            "x25519_ok.cvb",
            "x25519_ok_seq2.cvb",
            "x25519_conflict_seq2.cvb",
        ],
        &[],
        &["conflict"],
        false,
        &["x25519_ok_seq2.cvb", "x25519_conflict_seq2.cvb"],
        "two different bundles with sequence 2: neither is released",
    );
    chain(
        "chain_gap.vec",
        &["x25519_ok.cvb", "x25519_ok_seq2.cvb", "x25519_seq4.cvb"],
        &["missing_bundles"],
        false,
        "bundle 3 missing",
    );
    chain_pinned(
        "chain_other_device_key.vec",
        &[
            "x25519_ok.cvb",
            "x25519_ok_seq2.cvb",
            "other_device_key.cvb",
        ],
        &[],
        &["ambiguous_device_key"],
        false,
        &[
            "x25519_ok.cvb",
            "x25519_ok_seq2.cvb",
            "other_device_key.cvb",
        ],
        "bundle 3 from another key under the same device id, no pins: all rejected",
    );
    chain(
        "chain_reordered.vec",
        &["x25519_ok_seq2.cvb", "x25519_ok.cvb"],
        &["reordered"],
        true,
        "arrived out of order",
    );

    let rec = id.recipient().to_string();
    let recipient = |name: &str, text: &str, expect: &str, comment: &str| {
        vector(
            &dir,
            name,
            &[
                ("kind", "recipient".into()),
                ("comment", comment.into()),
                ("text", text.into()),
                ("expect", expect.into()),
            ],
            b"",
        )
    };
    recipient(
        "recipient_ok.vec",
        &rec,
        "ok",
        "the recipient of the X25519 identity",
    );
    recipient(
        "recipient_xwing_ok.vec",
        &pq.recipient().to_string(),
        "ok",
        "the recipient of the X-Wing identity",
    );
    let mut typo = rec.clone().into_bytes();
    let i = rec.len() - 9;
    typo[i] = if typo[i] == b'q' { b'p' } else { b'q' };
    recipient(
        "recipient_typo.vec",
        std::str::from_utf8(&typo).unwrap(),
        "invalid_argument: checksum failed",
        "one character changed",
    );
    recipient(
        "recipient_truncated.vec",
        &rec[..rec.len() - 8],
        "invalid_argument: checksum failed",
        "last 8 characters cut",
    );
    recipient(
        "recipient_bad_prefix.vec",
        &rec.replacen("cvrecip-x25519-1", "age1", 1),
        "invalid_argument: must start with",
        "unknown prefix",
    );
    recipient(
        "recipient_bad_base32.vec",
        &format!("{rec}0"),
        "invalid_argument: base32",
        "0 is not a base32 digit",
    );
    recipient(
        "recipient_is_identity.vec",
        &idt,
        "invalid_argument: must start with",
        "a secret key given as a recipient",
    );
}
