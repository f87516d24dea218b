//! Receipts: the collector's Ed25519 signature over a domain-separated bundle digest,
//! preceded by the key that made it. A vault configured with the collector's
//! [`ReceiptKey`] prunes a bundle's records only when `ack` brings a receipt that
//! verifies for that bundle's digest under that key.
//!
//! ```text
//! receipt = receipt_key[32] || Ed25519(receipt key, RECEIPT_CONTEXT || digest)[64]   (96 bytes)
//! ```
//!
//! The leading key only lets a vault say "this receipt is from another collector" (a
//! configuration mistake) instead of "forged"; it is never trusted: the signature must
//! verify under the key the vault is configured with. Receipts of 64 bytes (the
//! signature alone, from earlier releases) are still accepted.

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::device::{verify_ed25519, DeviceKey};
use crate::error::{Error, Result};
use crate::recipient::{decode_key, encode_key, Identity, ReceiptKey};
use crate::secret::Key32;

/// Domain separation for receipts (ends in a NUL byte).
pub(crate) const RECEIPT_CONTEXT: &[u8] = b"capvault receipt v1\0";
/// Length of a receipt in bytes.
pub const RECEIPT_LEN: usize = 96;
/// Length of a receipt without its leading key (accepted for compatibility).
const LEGACY_RECEIPT_LEN: usize = 64;
/// Prefix of a receipt signing key as text.
pub(crate) const RECEIPT_SECRET: &str = "CVRSECRET-ED25519-1";

fn receipt_input(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(RECEIPT_CONTEXT.len() + 32);
    m.extend_from_slice(RECEIPT_CONTEXT);
    m.extend_from_slice(digest);
    m
}

/// A key that signs receipts: the collector service's own (kept on the ingest tier,
/// which never holds a key that opens bundles), or the one inside an [`Identity`].
///
/// Text form `CVRSECRET-ED25519-1…` (upper-case, checksummed, like identities). `Debug`
/// shows the public receipt key only.
pub struct ReceiptSigner {
    seed: Key32,
    key: DeviceKey,
}

impl ReceiptSigner {
    /// A new random signing key.
    pub fn generate() -> Self {
        Self::from_seed(Key32::generate())
    }

    pub(crate) fn from_seed(seed: Key32) -> Self {
        let key = DeviceKey::from_seed(&seed).expect("any 32-byte seed is an Ed25519 key");
        ReceiptSigner { seed, key }
    }

    /// The public key vaults are configured with (`collector_receipt_key`).
    pub fn receipt_key(&self) -> ReceiptKey {
        ReceiptKey {
            public: self.key.public_key(),
        }
    }

    /// The receipt for the bundle with this digest ([`RECEIPT_LEN`] bytes).
    pub fn receipt_for(&self, digest: &[u8; 32]) -> [u8; RECEIPT_LEN] {
        let mut out = [0u8; RECEIPT_LEN];
        out[..32].copy_from_slice(&self.key.public_key());
        out[32..].copy_from_slice(&self.key.sign(&receipt_input(digest)));
        out
    }

    /// The secret as text. Keep it secret: it signs receipts that make vaults delete data.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        encode_key(RECEIPT_SECRET, self.seed.expose(), true)
    }
}

impl FromStr for ReceiptSigner {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (_, mut payload) = decode_key("receipt signing key", s, &[RECEIPT_SECRET], true)?;
        let seed = Key32::from_slice_zeroizing(&mut payload[..])
            .ok_or_else(|| Error::invalid("the receipt signing key has the wrong length"))?;
        Ok(Self::from_seed(seed))
    }
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReceiptSigner({}, secret <redacted>)",
            self.receipt_key()
        )
    }
}

impl Identity {
    /// The receipt for the bundle with this digest, signed by this identity's receipt
    /// key ([`RECEIPT_LEN`] bytes).
    pub fn receipt_for(&self, digest: &[u8; 32]) -> [u8; RECEIPT_LEN] {
        self.receipt_signer().receipt_for(digest)
    }
}

/// Checks that `receipt` is the collector's receipt for the bundle with `digest`.
///
/// Errors: a receipt of the wrong length, or one made by another collector's key (a
/// configuration mistake: the message names both keys) is `Error::InvalidArgument`; a
/// receipt that claims the right key but does not verify (forged, or for another
/// bundle) is `Error::Tampered`.
pub fn verify_receipt(key: &ReceiptKey, digest: &[u8; 32], receipt: &[u8]) -> Result<()> {
    let sig = match receipt.len() {
        RECEIPT_LEN => {
            if receipt[..32] != key.as_bytes()[..] {
                let theirs = ReceiptKey {
                    public: receipt[..32].try_into().expect("32 bytes"),
                };
                return Err(Error::invalid(format!(
                    "the receipt was made by collector key {theirs}, but this vault is \
                     configured with {key}: check collector_receipt_key (or the collector \
                     the bundle went to)"
                )));
            }
            &receipt[32..]
        }
        LEGACY_RECEIPT_LEN => receipt,
        n => {
            return Err(Error::invalid(format!(
                "a receipt is {RECEIPT_LEN} bytes, this one is {n}"
            )))
        }
    };
    verify_ed25519(key.as_bytes(), &receipt_input(digest), sig).map_err(|_| {
        Error::tampered("the receipt is not the collector's signature over this bundle")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipient::Suite;

    #[test]
    fn receipts_verify_only_for_their_bundle_and_key() {
        let id = Identity::generate(Suite::X25519);
        let d = [9u8; 32];
        let r = id.receipt_for(&d);
        verify_receipt(&id.receipt_key(), &d, &r).unwrap();
        // The signature alone (earlier receipts) still verifies.
        verify_receipt(&id.receipt_key(), &d, &r[32..]).unwrap();
        let other = [8u8; 32];
        assert!(matches!(
            verify_receipt(&id.receipt_key(), &other, &r),
            Err(Error::Tampered(_))
        ));
        // Another collector's receipt: a configuration mistake, named as such.
        let stranger = Identity::generate(Suite::X25519);
        let e = verify_receipt(&stranger.receipt_key(), &d, &r).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("another") || m.contains(&id.receipt_key().to_string())),
            "{e}"
        );
        // ... and as a bare signature it can only be called forged.
        assert!(matches!(
            verify_receipt(&stranger.receipt_key(), &d, &r[32..]),
            Err(Error::Tampered(_))
        ));
        // The right key with a bad signature is forged, whatever it claims.
        let mut forged = r;
        forged[40] ^= 0x40;
        assert!(matches!(
            verify_receipt(&id.receipt_key(), &d, &forged),
            Err(Error::Tampered(_))
        ));
        for len in [0, 63, 65, 95, 97] {
            assert!(matches!(
                verify_receipt(&id.receipt_key(), &d, &vec![0; len]),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn signer_text_round_trips_and_never_prints_its_secret() {
        let s = ReceiptSigner::generate();
        let text = s.to_secret_string();
        assert!(text.starts_with(RECEIPT_SECRET));
        let back: ReceiptSigner = text.parse().unwrap();
        assert_eq!(back.receipt_key(), s.receipt_key());
        let d = [1u8; 32];
        verify_receipt(&s.receipt_key(), &d, &back.receipt_for(&d)).unwrap();
        assert!(!format!("{s:?}").contains(&text[RECEIPT_SECRET.len()..]));
        assert!("cvreceipt-ed25519-1abc".parse::<ReceiptSigner>().is_err());
    }
}
