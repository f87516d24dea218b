//! capvault: an encrypted, append-only, tamper-evident on-device vault for
//! activity-capture data (mouse, clicks, keystrokes, window focus, screenshots).
//!
//! Events are encrypted the moment they are captured, under per-user keys held in the
//! OS keychain, and leave the device only as bundles sealed (HPKE) to one collector key.
//!
//! ```no_run
//! use capvault::{Vault, VaultOptions};
//! let vault = Vault::open("/var/lib/capvault/alice", "alice", VaultOptions::default())?;
//! let _ = vault.append_mouse_move(1_764_000_000_000_000, 640, 480)?;
//! vault.flush()?; // durable from here on
//! vault.close()?;
//! # Ok::<(), capvault::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod aead;
mod audit;
mod background;
mod error;
mod failpoint;
mod files;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod handoff;
mod keys;
mod log;
mod options;
mod policy;
mod upload;
mod vault;
#[cfg(test)]
mod vectors;

pub use capvault_format::{
    bundle_id, inspect_bundle, open_bundle, verify_receipt, write_bundle_json_lines,
    write_json_lines, AuditEntry, BundleHeader, ChainChecker, ChainIssue, ChainReport, DeviceChain,
    DevicePins, EnrollmentRecord, Event, Identity, InspectedBundle, KeyCategory, LossReason,
    Marker, OpenedBundle, PinVerdict, ReceiptKey, ReceiptSigner, Recipient, SealedBundle, SeqEvent,
    Suite, TimestampUs, RECEIPT_LEN,
};
pub use error::{Error, Result};
pub use keys::hierarchy::EpochInfo;
pub use keys::keystore::KeyStoreKind;
pub use log::VerifyReport;
pub use options::VaultOptions;
pub use policy::{BudgetAction, KeystrokeLevel, Policy};
#[cfg(feature = "upload")]
pub use upload::{UploadError, UploadReport};
pub use upload::{UploadOptions, UploadStatus};
pub use vault::{Appended, EpochStatus, Erasure, PauseState, Status, Vault};

/// Hooks for crash-safety tests. Never enable the `test-hooks` feature in production.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod testing {
    pub use crate::failpoint::{arm, hold, Hold};

    /// Rewrites a closed vault's user in the format of vaults from before stored state
    /// was authenticated (tests of the carry-over).
    pub fn write_format1(dir: &std::path::Path, user: &str) -> crate::Result<()> {
        crate::vault::write_format1(dir, user)
    }

    /// Rewrites a closed vault's user in the format of vaults from before the log head
    /// named the state generation (format 2: no keychain format record).
    pub fn write_format2(dir: &std::path::Path, user: &str) -> crate::Result<()> {
        crate::vault::write_format2(dir, user)
    }

    /// Moves a closed vault's records back into its database, where vaults kept them
    /// before segment files (tests of reading older vaults).
    pub fn write_records_inline(dir: &std::path::Path, user: &str) -> crate::Result<()> {
        crate::vault::write_records_inline(dir, user)
    }

    /// The segment directory of `user` in a vault directory.
    pub fn segment_dir(dir: &std::path::Path, user: &str) -> std::path::PathBuf {
        crate::log::segments::user_dir(dir, user)
    }

    /// The raw sled database of a closed vault, for tampering tests.
    pub fn open_raw_db(dir: &std::path::Path) -> sled::Db {
        crate::log::store::Store::raw(dir, 1 << 20).expect("the vault's database opens")
    }
}

/// Hooks for tests and benchmarks outside the crate (feature `test-hooks`). Never
/// enable in production builds.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks {
    use crate::{Recipient, Result, SealedBundle, Vault};
    pub use capvault_format::BundleInput;

    /// Ledger entries the device keeps once released (tests that build a pruned ledger).
    pub const LEDGER_KEEP: u64 = crate::audit::LEDGER_KEEP;

    /// Records an audit ledger entry as the vault records its own actions, for tests
    /// that need a long ledger without thousands of real opens or bundles.
    pub fn record_audit(vault: &Vault, action: &str, detail: &str) -> Result<()> {
        vault.inner().audit(action, detail)
    }

    /// Seals a bundle as the vault does, signing with the Ed25519 key of `device_seed`.
    pub fn seal_bundle(
        input: &BundleInput<'_>,
        recipient: &Recipient,
        device_seed: &[u8; 32],
    ) -> Result<SealedBundle> {
        let mut seed = *device_seed;
        let seed =
            capvault_format::secret::Key32::from_slice_zeroizing(&mut seed).expect("32 bytes");
        let device = capvault_format::DeviceKey::from_seed(&seed)?;
        Ok(capvault_format::seal_bundle(input, recipient, &device)?)
    }
}
