//! Bundle parser and opener (format crate): inspect, open with each fixed identity.
//! A bundle opens with at most the identity it is sealed to; what opens is consistent
//! with its header, its digest and its inspection.
#![no_main]

use std::sync::LazyLock;

use capvault_format::{bundle_id, inspect_bundle, open_bundle, Identity, SealedBundle};
use capvault_fuzz::{identity, OTHER_IDENTITY, X25519_IDENTITY, XWING_IDENTITY};
use libfuzzer_sys::fuzz_target;

static IDS: LazyLock<[Identity; 3]> = LazyLock::new(|| {
    [
        identity(X25519_IDENTITY),
        identity(XWING_IDENTITY),
        identity(OTHER_IDENTITY),
    ]
});

fuzz_target!(|data: &[u8]| {
    let inspected = inspect_bundle(data);
    assert_eq!(
        inspected.is_ok(),
        SealedBundle::from_bytes(data.to_vec()).is_ok(),
        "the outbox reader and inspect disagree"
    );
    let mut opened_by = Vec::new();
    for (i, id) in IDS.iter().enumerate() {
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
});
