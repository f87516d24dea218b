//! capvault: an encrypted, append-only, tamper-evident on-device vault for
//! activity-capture data (mouse, clicks, keystrokes, window focus, screenshots).
//!
//! Events are encrypted the moment they are captured, under per-user keys held in the
//! OS keychain, and leave the device only as bundles sealed (HPKE) to one collector key.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod audit;
mod error;
mod events;
mod keys;
mod secret;

pub use audit::AuditEntry;
pub use error::{Error, Result};
pub use events::{Event, KeyCategory, LossReason, Marker, SeqEvent, TimestampUs};
pub use keys::keystore::KeyStoreKind;
