//! Anchor decoders (log head, log tail, ledger head) under a fixed MAC key, and the
//! per-epoch counters. First byte: which; the rest: the stored value. An anchor that
//! opens is exactly what sealing its content gives (nothing else passes the MAC).
#![no_main]

use capvault::fuzzing::{self, Anchor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, stored)) = data.split_first() else {
        return;
    };
    let anchor = match which % 4 {
        0 => Anchor::Head,
        1 => Anchor::Tail,
        2 => Anchor::LedgerHead,
        _ => {
            if let Ok(again) = fuzzing::epoch_count(stored) {
                assert_eq!(again, stored);
            } else {
                assert_ne!(stored.len(), 16);
            }
            return;
        }
    };
    if let Ok(again) = fuzzing::open_anchor(anchor, stored) {
        assert_eq!(again, stored, "{anchor:?} opened but seals differently");
        // A head never opens as a tail or another chain's head, and back.
        for other in [Anchor::Head, Anchor::Tail, Anchor::LedgerHead] {
            if std::mem::discriminant(&other) != std::mem::discriminant(&anchor) {
                assert!(fuzzing::open_anchor(other, stored).is_err());
            }
        }
    }
});
