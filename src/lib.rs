//! capvault: an encrypted, append-only, tamper-evident on-device vault for
//! activity-capture data (mouse, clicks, keystrokes, window focus, screenshots).
//!
//! Events are encrypted the moment they are captured, under per-user keys held in the
//! OS keychain, and leave the device only as bundles sealed (HPKE) to one collector key.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod audit;
mod collector;
mod error;
mod events;
mod keys;
mod seal;
mod secret;

pub use audit::AuditEntry;
pub use collector::{
    inspect_bundle, open_bundle, write_json_lines, ChainChecker, ChainIssue, ChainReport,
    DeviceChain, InspectedBundle, OpenedBundle,
};
pub use error::{Error, Result};
pub use events::{Event, KeyCategory, LossReason, Marker, SeqEvent, TimestampUs};
pub use keys::keystore::KeyStoreKind;
pub use seal::{
    bundle_id, verify_receipt, BundleHeader, Identity, ReceiptKey, Recipient, SealedBundle, Suite,
    RECEIPT_LEN,
};

/// Hooks for tests and benchmarks outside the crate (feature `test-hooks`). Never
/// enable in production builds.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks {
    pub use crate::seal::BundleInput;
    use crate::{Recipient, Result, SealedBundle};

    /// Seals a bundle as the vault does, signing with the Ed25519 key of `device_seed`.
    pub fn seal_bundle(
        input: &BundleInput<'_>,
        recipient: &Recipient,
        device_seed: &[u8; 32],
    ) -> Result<SealedBundle> {
        let mut seed = *device_seed;
        let seed = crate::secret::Key32::from_slice_zeroizing(&mut seed).expect("32 bytes");
        let device = crate::keys::device::DeviceKey::from_seed(&seed)?;
        crate::seal::seal_bundle(input, recipient, &device)
    }
}
