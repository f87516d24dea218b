//! The one place this crate touches the shared, I/O-free capvault formats
//! (`capvault-format`): bundles (inspect, open), enrollment records and pins, the
//! receipt signing key, and JSON Lines.

use std::io::Write;

pub use capvault_format::{
    inspect_bundle, open_bundle, BundleHeader, DevicePins, EnrollmentRecord, Identity,
    OpenedBundle, PinVerdict, ReceiptSigner,
};

/// The per-user stream a bundle belongs to (all zero for format version 1).
pub fn stream_id(header: &BundleHeader) -> [u8; 16] {
    *header.stream_id()
}

/// Writes the events of an opened bundle as JSON Lines (SPEC 9), each line also
/// carrying `user`, `device_id` and `bundle_id` (SPEC 12.4).
pub fn write_events<W: Write>(bundle: &OpenedBundle, out: &mut W) -> std::io::Result<()> {
    capvault_format::write_bundle_json_lines(bundle, out, None).map_err(std::io::Error::other)
}
