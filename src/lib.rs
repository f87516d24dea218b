//! capvault: an encrypted, append-only, tamper-evident on-device vault for
//! activity-capture data (mouse, clicks, keystrokes, window focus, screenshots).
//!
//! Events are encrypted the moment they are captured, under per-user keys held in the
//! OS keychain, and leave the device only as bundles sealed (HPKE) to one collector key.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod audit;
// Parts of these are consumed only by the vault layer, which lands separately; the
// allows go when it does.
#[allow(dead_code)]
mod error;
mod events;
#[allow(dead_code)]
mod keys;
#[allow(dead_code)]
mod secret;

pub use audit::AuditEntry;
pub use error::{Error, Result};
pub use events::{Event, KeyCategory, LossReason, Marker, SeqEvent, TimestampUs};
pub use keys::keystore::KeyStoreKind;
