//! capvault's shared formats, used by the device vault (`capvault`) and by the collector
//! service (`capvault-collector`): the event model, sealed bundles (HPKE + device
//! signature), enrollment records, collector keys as text, receipts, and the rules by
//! which a collector checks a device's chains.
//!
//! No storage engine, no keychain and no network: everything here is a pure function of
//! its inputs (identity files and JSON Lines blobs are the only files it touches, and
//! only where the caller names them). The formats are specified in docs/FORMAT.md.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod audit;
mod bundle;
mod chain;
mod device;
mod enrollment;
mod error;
mod events;
mod jsonl;
mod open;
mod private_out;
mod receipt;
mod recipient;
pub mod secret;

/// The largest bundle a collector accepts by default (its `--max-bundle-bytes`), which
/// devices size their bundles and events by.
pub const COLLECTOR_DEFAULT_MAX_BUNDLE_BYTES: usize = 16 << 20;
/// The slowest upload a collector lets finish by default (its `--min-upload-rate`, in
/// bytes per second), below which a device's bandwidth cap would never let a bundle land.
pub const COLLECTOR_DEFAULT_MIN_UPLOAD_RATE: u64 = 64 << 10;

pub use audit::AuditEntry;
pub use bundle::{bundle_id, seal_bundle, BundleHeader, BundleInput, SealedBundle};
pub use chain::{ChainChecker, ChainIssue, ChainReport, DeviceChain};
pub use device::{verify_ed25519, DeviceKey};
pub use enrollment::{DevicePins, EnrollmentRecord, PinVerdict};
pub use error::{Error, Result};
pub use events::{Event, KeyCategory, LossReason, Marker, SeqEvent, TimestampUs};
pub use jsonl::{write_bundle_json_lines, write_json_lines};
pub use open::{inspect_bundle, open_bundle, IncomingBundle, InspectedBundle, OpenedBundle};
pub use private_out::{effective_uid, stdout_not_private};
pub use receipt::{verify_receipt, ReceiptSigner, RECEIPT_LEN};
pub use recipient::{holds_identity, Identity, ReceiptKey, Recipient, Suite};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
