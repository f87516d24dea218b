//! The one AEAD used at rest: XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha) with random
//! 192-bit nonces, detached tags. Every failure is the same opaque error, so callers
//! cannot tell which check failed.
//!
//! XChaCha20-Poly1305 is HChaCha20 (from the `chacha20` crate) deriving a one-message
//! subkey from the key and the nonce's first 16 bytes, then IETF ChaCha20-Poly1305 under
//! that subkey with the nonce `0^4 || nonce[16..24]`. The second step runs in `ring`,
//! whose vectorised ChaCha20-Poly1305 seals large payloads about twice as fast as the
//! portable implementation on the same core. The long-lived key never reaches `ring`,
//! only the subkey, which is held here in zeroizing memory (`ring` keeps its own copy on
//! the stack for the call and does not wipe it). The Wycheproof and draft vectors (`vectors.rs`,
//! the tests below) and a comparison with the `chacha20poly1305` crate check that the
//! bytes are exactly XChaCha20-Poly1305.

use chacha20::hchacha;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use zeroize::{Zeroize, Zeroizing};

use capvault_format::secret::{random_array, Key32};

/// Nonce length in bytes.
pub(crate) const NONCE_LEN: usize = 24;
/// Tag length in bytes.
pub(crate) const TAG_LEN: usize = 16;

/// An AEAD check failed (wrong key, modified bytes, or wrong associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unauthentic;

/// A fresh random nonce. With 192 bits, random nonces never collide in practice.
pub(crate) fn new_nonce() -> [u8; NONCE_LEN] {
    random_array()
}

/// The ChaCha20-Poly1305 key and nonce that XChaCha20-Poly1305 uses for one message.
fn one_message_cipher(key: &Key32, nonce: &[u8; NONCE_LEN]) -> (LessSafeKey, Nonce) {
    let (head, tail) = nonce.split_at(16);
    let head: &[u8; 16] = head.try_into().expect("16 of 24 bytes");
    let mut subkey = Zeroizing::new([0u8; 32]);
    let mut derived = hchacha::<chacha20::R20>(key.expose().into(), head.into());
    subkey.copy_from_slice(&derived);
    derived.as_mut_slice().zeroize();
    let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey[..])
        .expect("ChaCha20-Poly1305 takes a 32-byte key");
    let mut inner = [0u8; 12];
    inner[4..].copy_from_slice(tail);
    (LessSafeKey::new(key), Nonce::assume_unique_for_key(inner))
}

/// Encrypts `buf` in place and returns the tag.
pub(crate) fn seal_in_place(
    key: &Key32,
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    buf: &mut [u8],
) -> [u8; TAG_LEN] {
    let (cipher, inner_nonce) = one_message_cipher(key, nonce);
    let tag = cipher
        .seal_in_place_separate_tag(inner_nonce, Aad::from(ad), buf)
        .expect("ChaCha20-Poly1305 accepts any message up to 256 GiB");
    tag.as_ref().try_into().expect("a 16-byte tag")
}

/// Decrypts `buf` in place; on failure `buf` holds no plaintext (`ring` zeroes it).
pub(crate) fn open_in_place(
    key: &Key32,
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    buf: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), Unauthentic> {
    let (cipher, inner_nonce) = one_message_cipher(key, nonce);
    cipher
        .open_in_place_separate_tag(inner_nonce, Aad::from(ad), Tag::from(*tag), buf, 0..)
        .map(|_| ())
        .map_err(|_| Unauthentic)
}

/// Encrypts a small secret (a wrapped key): returns nonce || ciphertext || tag.
pub(crate) fn wrap(key: &Key32, ad: &[u8], secret: &[u8]) -> Vec<u8> {
    let nonce = new_nonce();
    let mut out = Vec::with_capacity(NONCE_LEN + secret.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(secret);
    let tag = seal_in_place(key, &nonce, ad, &mut out[NONCE_LEN..]);
    out.extend_from_slice(&tag);
    out
}

/// Reverses [`wrap`] for a 32-byte key.
pub(crate) fn unwrap_key(key: &Key32, ad: &[u8], wrapped: &[u8]) -> Result<Key32, Unauthentic> {
    if wrapped.len() != NONCE_LEN + 32 + TAG_LEN {
        return Err(Unauthentic);
    }
    let nonce: [u8; NONCE_LEN] = wrapped[..NONCE_LEN].try_into().map_err(|_| Unauthentic)?;
    let tag: [u8; TAG_LEN] = wrapped[NONCE_LEN + 32..]
        .try_into()
        .map_err(|_| Unauthentic)?;
    let mut body = zeroize::Zeroizing::new([0u8; 32]);
    body.copy_from_slice(&wrapped[NONCE_LEN..NONCE_LEN + 32]);
    open_in_place(key, &nonce, ad, &mut body[..], &tag)?;
    Key32::from_slice_zeroizing(&mut body[..]).ok_or(Unauthentic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_tamper_fails() {
        let key = Key32::generate();
        let nonce = new_nonce();
        let mut buf = b"window title: private chat".to_vec();
        let tag = seal_in_place(&key, &nonce, b"ad", &mut buf);
        assert_ne!(&buf[..], b"window title: private chat");
        let mut ok = buf.clone();
        open_in_place(&key, &nonce, b"ad", &mut ok, &tag).unwrap();
        assert_eq!(&ok[..], b"window title: private chat");
        assert!(open_in_place(&key, &nonce, b"other", &mut buf.clone(), &tag).is_err());
        assert!(open_in_place(&Key32::generate(), &nonce, b"ad", &mut buf.clone(), &tag).is_err());
        let mut flipped = buf.clone();
        flipped[3] ^= 1;
        assert!(open_in_place(&key, &nonce, b"ad", &mut flipped, &tag).is_err());
    }

    #[test]
    fn wrapped_keys_unwrap_only_with_the_same_key_and_ad() {
        let kek = Key32::generate();
        let dek = Key32::generate();
        let w = wrap(&kek, b"epoch 1", dek.expose());
        assert_eq!(
            unwrap_key(&kek, b"epoch 1", &w).unwrap().expose(),
            dek.expose()
        );
        assert!(unwrap_key(&kek, b"epoch 2", &w).is_err());
        assert!(unwrap_key(&Key32::generate(), b"epoch 1", &w).is_err());
        assert!(unwrap_key(&kek, b"epoch 1", &w[1..]).is_err());
    }

    /// XChaCha20-Poly1305 test vector from draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    #[test]
    fn xchacha_draft_vector() {
        let hex = |s: &str| data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap();
        let mut k = hex("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let key = Key32::from_slice_zeroizing(&mut k).unwrap();
        let nonce: [u8; 24] = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .unwrap();
        let ad = hex("50515253c0c1c2c3c4c5c6c7");
        let mut pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.".to_vec();
        let tag = seal_in_place(&key, &nonce, &ad, &mut pt);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&tag),
            "c0875924c1c7987947deafd8780acf49"
        );
        assert!(data_encoding::HEXLOWER
            .encode(&pt)
            .starts_with("bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"));
    }

    /// The `chacha20poly1305` crate's XChaCha20-Poly1305, which the bytes must match.
    fn reference_seal(
        key: &Key32,
        nonce: &[u8; NONCE_LEN],
        ad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        use chacha20poly1305::aead::{AeadInOut, KeyInit};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        XChaCha20Poly1305::new(key.expose().into())
            .encrypt_inout_detached(&XNonce::from(*nonce), ad, buf.into())
            .unwrap()
            .into()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Same ciphertext and tag as the reference for every key, nonce, AD and length
        /// (lengths cross the 64-byte block and the vectorised paths' strides), and the
        /// reference's output opens here.
        #[test]
        fn matches_the_reference_implementation(
            key in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            nonce in proptest::array::uniform24(proptest::prelude::any::<u8>()),
            ad in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            len in proptest::prop_oneof![0usize..600, 4000usize..4200, 600_000usize..600_100],
            fill in proptest::prelude::any::<u8>(),
        ) {
            let key = Key32::from_slice_zeroizing(&mut key.clone()).unwrap();
            let msg: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ fill).collect();
            let mut ours = msg.clone();
            let mut theirs = msg.clone();
            let tag = seal_in_place(&key, &nonce, &ad, &mut ours);
            let reference_tag = reference_seal(&key, &nonce, &ad, &mut theirs);
            proptest::prop_assert_eq!(tag, reference_tag);
            proptest::prop_assert!(ours == theirs);
            open_in_place(&key, &nonce, &ad, &mut theirs, &reference_tag).unwrap();
            proptest::prop_assert!(theirs == msg);
        }
    }

    #[test]
    fn a_failed_open_leaves_no_plaintext() {
        let key = Key32::generate();
        let nonce = new_nonce();
        let secret = b"private chat: the salary figures are attached".to_vec();
        let mut buf = secret.clone();
        let mut tag = seal_in_place(&key, &nonce, b"ad", &mut buf);
        tag[0] ^= 1;
        assert!(open_in_place(&key, &nonce, b"ad", &mut buf, &tag).is_err());
        assert!(!buf.windows(8).any(|w| secret.windows(8).any(|s| s == w)));
    }
}
