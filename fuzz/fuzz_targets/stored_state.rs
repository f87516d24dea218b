//! Stored-state decoders of a user's trees: release state, policy entries, audit ledger
//! entries (after authentication), wrapped keys, the KEK rotation marker, stored i64
//! values and the recorded keychain kind. First byte: which decoder. Whatever decodes
//! re-encodes to a fixpoint (encode(decode(encode(x))) == encode(x)).
#![no_main]

use capvault::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            if let Ok(Some(enc)) = fuzzing::release_state(rest) {
                let again = fuzzing::release_state(&enc).expect("re-encoded state decodes");
                assert_eq!(again.as_deref(), Some(&enc[..]));
            }
        }
        1 => {
            // key version (4) || value
            if rest.len() < 4 {
                return;
            }
            let mut key = b"policy/".to_vec();
            key.extend_from_slice(&rest[..4]);
            if let Ok((v, enc)) = fuzzing::policy_record(&key, &rest[4..]) {
                assert_eq!(v, u32::from_be_bytes(rest[..4].try_into().unwrap()));
                let (v2, again) = fuzzing::policy_record(&key, &enc).expect("re-encoded");
                assert_eq!((v2, &again), (v, &enc));
            }
            // A key of another length is refused, not truncated.
            let mut long = key.clone();
            long.push(0);
            assert!(fuzzing::policy_record(&long, &rest[4..]).is_err());
        }
        2 => {
            // seq (8) || plaintext
            if rest.len() < 8 {
                return;
            }
            let seq = u64::from_be_bytes(rest[..8].try_into().unwrap());
            if let Ok(enc) = fuzzing::ledger_entry(seq, &rest[8..]) {
                assert_eq!(fuzzing::ledger_entry(seq, &enc).expect("re-encoded"), enc);
                assert!(fuzzing::ledger_entry(seq.wrapping_add(1), &enc).is_err());
            }
        }
        3 => {
            if let Ok(enc) = fuzzing::wrapped_key(rest) {
                assert_eq!(enc, rest);
            }
        }
        4 => match fuzzing::rotation_marker(rest) {
            Ok((from, to)) => {
                assert_eq!(rest.len(), 8);
                assert_eq!(from.to_be_bytes(), rest[..4]);
                assert_eq!(to.to_be_bytes(), rest[4..]);
            }
            Err(_) => assert_ne!(rest.len(), 8),
        },
        5 => match fuzzing::stored_i64(rest) {
            Ok(v) => assert_eq!(v.to_be_bytes(), rest),
            Err(_) => assert_ne!(rest.len(), 8),
        },
        _ => {
            // The vault's metadata `keystore` entry, decoded as open does.
            if let Ok(kind) = serde_json::from_slice::<capvault::KeyStoreKind>(rest) {
                let enc = serde_json::to_vec(&kind).unwrap();
                assert_eq!(
                    serde_json::from_slice::<capvault::KeyStoreKind>(&enc).unwrap(),
                    kind
                );
            }
        }
    }
});
