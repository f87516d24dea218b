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
pub use error::{Error, Result};
pub use events::{Event, KeyCategory, LossReason, Marker, SeqEvent, TimestampUs};
pub use keys::keystore::KeyStoreKind;
pub use collector::{
    inspect_bundle, open_bundle, write_json_lines, ChainChecker, ChainIssue, ChainReport,
    DeviceChain, InspectedBundle, OpenedBundle,
};
pub use seal::{
    bundle_id, verify_receipt, BundleHeader, Identity, ReceiptKey, Recipient, SealedBundle, Suite,
    RECEIPT_LEN,
};
