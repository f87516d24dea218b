//! Wycheproof vectors (tests/vectors/README.md) for the two AEADs: XChaCha20-Poly1305
//! through `aead.rs` (records, wrapped keys, outbox) and ChaCha20-Poly1305 through the
//! implementation the `hpke` crate seals bundles with. Every case is checked and
//! counted, so a truncated file cannot pass.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use serde_json::Value;

use crate::aead;
use capvault_format::secret::Key32;

fn hex(v: &Value) -> Vec<u8> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(v.as_str().expect("a hex string").as_bytes())
        .expect("valid hex")
}

/// Counts of (valid cases sealed and opened, invalid cases refused, of which refused
/// because the nonce or key size cannot be expressed).
type Counts = (usize, usize, usize);

/// Runs every case of a Wycheproof AEAD file. `run` gets key, nonce, aad, message,
/// ciphertext and tag; it returns `None` when the sizes cannot be expressed, else
/// whether the case opened (after checking that sealing reproduces a valid case).
fn run_file(
    text: &str,
    run: impl Fn(&[u8], &[u8], &[u8], &[u8], &[u8], &[u8], bool) -> Option<bool>,
) -> Counts {
    let file: Value = serde_json::from_str(text).unwrap();
    let total = file["numberOfTests"].as_u64().unwrap() as usize;
    let (mut valid, mut invalid, mut inexpressible) = (0, 0, 0);
    for g in file["testGroups"].as_array().unwrap() {
        assert_eq!(g["tagSize"], 128);
        for t in g["tests"].as_array().unwrap() {
            let is_valid = match t["result"].as_str().unwrap() {
                "valid" => true,
                "invalid" => false,
                other => panic!("tcId {}: unexpected result {other}", t["tcId"]),
            };
            let (key, iv, aad) = (hex(&t["key"]), hex(&t["iv"]), hex(&t["aad"]));
            let (msg, ct, tag) = (hex(&t["msg"]), hex(&t["ct"]), hex(&t["tag"]));
            match run(&key, &iv, &aad, &msg, &ct, &tag, is_valid) {
                None => {
                    assert!(
                        !is_valid,
                        "tcId {}: a valid case capvault cannot express",
                        t["tcId"]
                    );
                    inexpressible += 1;
                    invalid += 1;
                }
                Some(opened) => {
                    assert_eq!(opened, is_valid, "tcId {} ({})", t["tcId"], t["comment"]);
                    if is_valid {
                        valid += 1;
                    } else {
                        invalid += 1;
                    }
                }
            }
        }
    }
    assert_eq!(valid + invalid, total, "every case ran");
    (valid, invalid, inexpressible)
}

#[test]
fn wycheproof_xchacha20_poly1305() {
    let (valid, invalid, inexpressible) = run_file(
        include_str!("../tests/vectors/wycheproof/xchacha20_poly1305_test.json"),
        |key, iv, aad, msg, ct, tag, is_valid| {
            let mut k = <[u8; 32]>::try_from(key).ok()?;
            let key = Key32::from_slice_zeroizing(&mut k)?;
            let nonce = <[u8; aead::NONCE_LEN]>::try_from(iv).ok()?;
            let tag = <[u8; aead::TAG_LEN]>::try_from(tag).ok()?;
            if is_valid {
                let mut buf = msg.to_vec();
                assert_eq!(aead::seal_in_place(&key, &nonce, aad, &mut buf), tag);
                assert_eq!(buf, ct);
            }
            let mut buf = ct.to_vec();
            let opened = aead::open_in_place(&key, &nonce, aad, &mut buf, &tag).is_ok();
            if opened {
                assert_eq!(buf, msg);
            }
            Some(opened)
        },
    );
    assert!(
        valid >= 240 && invalid >= 60,
        "{valid} valid, {invalid} invalid"
    );
    assert!(invalid > inexpressible, "some invalid cases reach the AEAD");
}

#[test]
fn wycheproof_chacha20_poly1305_as_hpke_uses_it() {
    type Impl = <hpke::aead::ChaCha20Poly1305 as hpke::aead::Aead>::AeadImpl;
    let (valid, invalid, inexpressible) = run_file(
        include_str!("../tests/vectors/wycheproof/chacha20_poly1305_test.json"),
        |key, iv, aad, msg, ct, tag, is_valid| {
            let cipher = Impl::new_from_slice(key).ok()?;
            let nonce = <[u8; 12]>::try_from(iv).ok()?;
            let tag = <[u8; 16]>::try_from(tag).ok()?;
            if is_valid {
                let mut buf = msg.to_vec();
                let got = cipher
                    .encrypt_inout_detached(&nonce.into(), aad, buf.as_mut_slice().into())
                    .unwrap();
                assert_eq!((buf.as_slice(), got.as_slice()), (ct, &tag[..]));
            }
            let mut buf = ct.to_vec();
            let opened = cipher
                .decrypt_inout_detached(&nonce.into(), aad, buf.as_mut_slice().into(), &tag.into())
                .is_ok();
            if opened {
                assert_eq!(buf, msg);
            }
            Some(opened)
        },
    );
    assert!(
        valid >= 250 && invalid >= 60,
        "{valid} valid, {invalid} invalid"
    );
    assert!(invalid > inexpressible, "some invalid cases reach the AEAD");
}
