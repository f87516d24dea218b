//! Third-party test vectors (tests/vectors/README.md) run against the primitives as
//! this crate calls them: RFC 9180 for the x25519 bundle suite, Wycheproof for X25519
//! and Ed25519. Every case is checked and counted, so a truncated file cannot pass.

use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::inout::InOutBuf;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use serde_json::Value;

use crate::device::verify_ed25519;
use crate::recipient::{encode_key, Identity, Recipient, Suite, X25519Kem};

fn hex(v: &Value) -> Vec<u8> {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(v.as_str().expect("a hex string").as_bytes())
        .expect("valid hex")
}

fn arr32(v: &Value) -> [u8; 32] {
    hex(v).try_into().expect("32 bytes")
}

/// Yields the bytes it was made with: the ephemeral key material of a vector.
struct FixedRng(Vec<u8>);

impl rand::TryRng for FixedRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        unreachable!("HPKE draws key material with fill_bytes")
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        unreachable!("HPKE draws key material with fill_bytes")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        assert!(
            dst.len() <= self.0.len(),
            "more randomness than the vector holds"
        );
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}
impl rand::TryCryptoRng for FixedRng {}

/// RFC 9180 Appendix A, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
/// ChaCha20-Poly1305: keys derive as specified, capvault's identity and recipient text
/// forms carry them, sealing reproduces every ciphertext and opening (as `open_with`
/// does: in place, detached tag) returns every plaintext; every changed ciphertext is
/// refused; every export matches.
#[test]
fn rfc9180_x25519_chacha20poly1305_base() {
    let all: Vec<Value> = serde_json::from_str(include_str!(
        "../../tests/vectors/rfc9180/hpke_base_x25519_sha256_chacha20poly1305.json"
    ))
    .unwrap();
    let (mut sealed, mut opened, mut refused, mut exported) = (0, 0, 0, 0);
    for v in &all {
        assert_eq!(
            (&v["mode"], &v["kem_id"], &v["kdf_id"], &v["aead_id"]),
            (&0.into(), &0x20.into(), &1.into(), &3.into())
        );
        assert_eq!(
            Suite::from_ids(0x20, 1, 3),
            Some(Suite::X25519),
            "the vector's suite is capvault's x25519 suite"
        );
        let info = hex(&v["info"]);
        let (sk_r, pk_r) = X25519Kem::derive_keypair(&hex(&v["ikmR"]));
        // hpke keeps X25519 private keys clamped (RFC 9180 7.1.2); the vector's are not.
        let mut clamped = arr32(&v["skRm"]);
        clamped[0] &= 248;
        clamped[31] = (clamped[31] & 127) | 64;
        assert_eq!(sk_r.to_bytes().to_vec(), clamped);
        assert_eq!(pk_r.to_bytes().to_vec(), hex(&v["pkRm"]));

        // The identity capvault stores (raw scalar, clamped on use) names the same
        // recipient, also through the text forms.
        let id = Identity::from_raw(Suite::X25519, arr32(&v["skRm"]), [7; 32]);
        let id: Identity = id.to_secret_string().parse().unwrap();
        assert_eq!(id.recipient().public_key_bytes(), hex(&v["pkRm"]));
        let text = encode_key(crate::recipient::RECIPIENT_X25519, &hex(&v["pkRm"]), false);
        let recipient: Recipient = text.parse().unwrap();
        assert_eq!(recipient, id.recipient());
        let crate::recipient::RecipientKey::X25519(pk) = &recipient.key else {
            panic!("an x25519 recipient");
        };

        // Sender: the ephemeral key from ikmE gives the vector's enc; each seal (in
        // place, detached tag, as `seal_with` does) gives its ciphertext.
        let (enc, mut sender) = hpke::setup_sender_with_rng::<
            ChaCha20Poly1305,
            HkdfSha256,
            X25519Kem,
        >(&OpModeS::Base, pk, &info, &mut FixedRng(hex(&v["ikmE"])))
        .unwrap();
        assert_eq!(enc.to_bytes().to_vec(), hex(&v["enc"]));
        for e in v["encryptions"].as_array().unwrap() {
            let aad = hex(&e["aad"]);
            let mut buf = hex(&e["pt"]);
            let tag = sender
                .seal_inout_detached(InOutBuf::from(&mut buf[..]), &aad)
                .unwrap();
            buf.extend_from_slice(&tag.to_bytes());
            assert_eq!(buf, hex(&e["ct"]));
            sealed += 1;
        }

        // Receiver, as `open_with` does it, with the identity's key.
        let enc = <X25519Kem as Kem>::EncappedKey::from_bytes(&hex(&v["enc"])).unwrap();
        let mut ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, X25519Kem>(
            &OpModeR::Base,
            &id.x25519_secret(),
            &enc,
            &info,
        )
        .unwrap();
        for e in v["encryptions"].as_array().unwrap() {
            let (aad, ct) = (hex(&e["aad"]), hex(&e["ct"]));
            let (body, tag) = ct.split_at(ct.len() - 16);
            let tag = AeadTag::<ChaCha20Poly1305>::from_bytes(tag).unwrap();
            // A changed byte anywhere (body, aad) is refused, and does not advance the
            // context: the real ciphertext still opens afterwards.
            for flip in [0, body.len().saturating_sub(1)] {
                let mut bad = body.to_vec();
                if bad.is_empty() {
                    continue;
                }
                bad[flip] ^= 0x01;
                assert!(ctx
                    .open_inout_detached(InOutBuf::from(&mut bad[..]), &aad, &tag)
                    .is_err());
                refused += 1;
            }
            let mut bad_aad = aad.clone();
            bad_aad.push(0);
            let mut buf = body.to_vec();
            assert!(ctx
                .open_inout_detached(InOutBuf::from(&mut buf[..]), &bad_aad, &tag)
                .is_err());
            refused += 1;
            let mut buf = body.to_vec();
            ctx.open_inout_detached(InOutBuf::from(&mut buf[..]), &aad, &tag)
                .unwrap();
            assert_eq!(buf, hex(&e["pt"]));
            opened += 1;
        }
        for x in v["exports"].as_array().unwrap() {
            let mut out = vec![0u8; x["L"].as_u64().unwrap() as usize];
            ctx.export(&hex(&x["exporter_context"]), &mut out).unwrap();
            assert_eq!(out, hex(&x["exported_value"]));
            exported += 1;
        }
    }
    assert_eq!(all.len(), 1);
    assert!(
        sealed >= 257 && opened >= 257,
        "{sealed} sealed, {opened} opened"
    );
    assert!(refused >= 3 * 257, "{refused} refused");
    assert!(exported >= 3, "{exported} exports");
}

fn wycheproof(text: &str) -> (Vec<Value>, usize) {
    let file: Value = serde_json::from_str(text).unwrap();
    let n = file["numberOfTests"].as_u64().unwrap() as usize;
    (file["testGroups"].as_array().unwrap().clone(), n)
}

/// RFC 9180 section 4.1 ExtractAndExpand for DHKEM(X25519, HKDF-SHA256), computed
/// independently with ring: the KEM shared secret of a DH output.
fn dhkem_shared_secret(dh: &[u8], kem_context: &[u8]) -> Vec<u8> {
    use ring::hkdf;
    let suite: &[u8] = b"KEM\x00\x20";
    let mut ikm = b"HPKE-v1".to_vec();
    ikm.extend_from_slice(suite);
    ikm.extend_from_slice(b"eae_prk");
    ikm.extend_from_slice(dh);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"").extract(&ikm);
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let info = [
        &32u16.to_be_bytes()[..],
        b"HPKE-v1",
        suite,
        b"shared_secret",
        kem_context,
    ];
    let mut out = vec![0u8; 32];
    prk.expand(&info, Len(32)).unwrap().fill(&mut out).unwrap();
    out
}

/// Wycheproof X25519: each private key becomes an identity as capvault stores one, each
/// public key an encapsulated key as bundle opening parses it; decapsulation gives the
/// KEM secret of the vector's DH output, and is refused exactly when that output is
/// all zero (RFC 9180: low-order points).
#[test]
fn wycheproof_x25519() {
    let (groups, total) = wycheproof(include_str!(
        "../../tests/vectors/wycheproof/x25519_test.json"
    ));
    let (mut agreed, mut zero) = (0, 0);
    for g in &groups {
        assert_eq!(g["curve"], "curve25519");
        for t in g["tests"].as_array().unwrap() {
            let (public, shared) = (hex(&t["public"]), hex(&t["shared"]));
            assert_ne!(t["result"], "invalid", "no invalid X25519 case is expected");
            let id = Identity::from_raw(Suite::X25519, arr32(&t["private"]), [7; 32]);
            let enc = <X25519Kem as Kem>::EncappedKey::from_bytes(&public).unwrap();
            let got = X25519Kem::decap(&id.x25519_secret(), None, &enc);
            if shared == [0u8; 32] {
                assert!(got.is_err(), "tcId {}: an all-zero DH output", t["tcId"]);
                zero += 1;
            } else {
                let mut ctx = public.clone();
                ctx.extend_from_slice(&id.recipient().public_key_bytes());
                let got = got.unwrap_or_else(|e| panic!("tcId {}: {e}", t["tcId"]));
                assert_eq!(
                    got.0.to_vec(),
                    dhkem_shared_secret(&shared, &ctx),
                    "tcId {}",
                    t["tcId"]
                );
                agreed += 1;
            }
        }
    }
    assert_eq!(agreed + zero, total);
    assert!(
        total >= 500 && agreed >= 400 && zero >= 10,
        "{agreed} agreed, {zero} zero"
    );
}

/// Wycheproof Ed25519 verification through `verify_ed25519` (device signatures,
/// enrollment records, receipts): every valid signature verifies, every invalid one is
/// refused.
#[test]
fn wycheproof_ed25519() {
    let (groups, total) = wycheproof(include_str!(
        "../../tests/vectors/wycheproof/ed25519_test.json"
    ));
    let (mut valid, mut invalid) = (0, 0);
    for g in &groups {
        let pk = hex(&g["publicKey"]["pk"]);
        for t in g["tests"].as_array().unwrap() {
            let (msg, sig) = (hex(&t["msg"]), hex(&t["sig"]));
            let got = match <[u8; 32]>::try_from(&pk[..]) {
                Ok(pk) => verify_ed25519(&pk, &msg, &sig).is_ok(),
                Err(_) => false, // no 32-byte key: capvault's types refuse it
            };
            match t["result"].as_str().unwrap() {
                "valid" => {
                    assert!(got, "tcId {} must verify", t["tcId"]);
                    valid += 1;
                }
                "invalid" => {
                    assert!(
                        !got,
                        "tcId {} ({}) must be refused",
                        t["tcId"], t["comment"]
                    );
                    invalid += 1;
                }
                other => panic!("tcId {}: unexpected result {other}", t["tcId"]),
            }
        }
    }
    assert_eq!(valid + invalid, total);
    assert!(
        valid >= 80 && invalid >= 60,
        "{valid} valid, {invalid} invalid"
    );
}
