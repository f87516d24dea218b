//! Receipts: the collector's Ed25519 signature over a domain-separated bundle digest.
//! A vault configured with the collector's [`ReceiptKey`] prunes a bundle's records
//! only when `ack` brings a receipt that verifies for that bundle's digest.
//!
//! ```text
//! receipt = Ed25519(receipt seed of the identity, RECEIPT_CONTEXT || digest)   (64 bytes)
//! ```

use crate::device::verify_ed25519;
use crate::error::{Error, Result};

use crate::recipient::{Identity, ReceiptKey};

/// Domain separation for receipts (ends in a NUL byte).
pub(crate) const RECEIPT_CONTEXT: &[u8] = b"capvault receipt v1\0";
/// Length of a receipt in bytes.
pub const RECEIPT_LEN: usize = 64;

fn receipt_input(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(RECEIPT_CONTEXT.len() + 32);
    m.extend_from_slice(RECEIPT_CONTEXT);
    m.extend_from_slice(digest);
    m
}

impl Identity {
    /// The receipt for the bundle with this digest (64 bytes).
    pub fn receipt_for(&self, digest: &[u8; 32]) -> [u8; RECEIPT_LEN] {
        self.receipt_signer().sign(&receipt_input(digest))
    }
}

/// Checks that `receipt` is the collector's receipt for the bundle with `digest`.
///
/// Errors: a receipt that is not 64 bytes long is `Error::InvalidArgument`; a receipt
/// of the right length that does not verify (forged, for another bundle, or from another
/// collector) is `Error::Tampered`.
pub fn verify_receipt(key: &ReceiptKey, digest: &[u8; 32], receipt: &[u8]) -> Result<()> {
    if receipt.len() != RECEIPT_LEN {
        return Err(Error::invalid(format!(
            "a receipt is {RECEIPT_LEN} bytes, this one is {}",
            receipt.len()
        )));
    }
    verify_ed25519(key.as_bytes(), &receipt_input(digest), receipt).map_err(|_| {
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
        let other = [8u8; 32];
        assert!(matches!(
            verify_receipt(&id.receipt_key(), &other, &r),
            Err(Error::Tampered(_))
        ));
        let stranger = Identity::generate(Suite::X25519);
        assert!(matches!(
            verify_receipt(&stranger.receipt_key(), &d, &r),
            Err(Error::Tampered(_))
        ));
        let mut forged = r;
        forged[10] ^= 0x40;
        assert!(matches!(
            verify_receipt(&id.receipt_key(), &d, &forged),
            Err(Error::Tampered(_))
        ));
        assert!(matches!(
            verify_receipt(&id.receipt_key(), &d, &r[..63]),
            Err(Error::InvalidArgument(_))
        ));
        // A receipt is not a device signature over the same digest.
        assert!(matches!(
            verify_receipt(&id.receipt_key(), &d, &id.receipt_signer().sign(&d)),
            Err(Error::Tampered(_))
        ));
    }
}
