//! The one place this crate touches the shared, I/O-free capvault formats
//! (`capvault-format`): bundles (inspect, open), enrollment records and pins, the
//! receipt signing key, and JSON Lines.

use std::io::Write;

use zeroize::Zeroizing;

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
    let mut buf = Zeroizing::new(Vec::new());
    capvault_format::write_json_lines(&bundle.events, &mut *buf, None)
        .map_err(std::io::Error::other)?;
    let tail = Zeroizing::new(format!(
        ",\"user\":{},\"device_id\":\"{}\",\"bundle_id\":\"{}\"}}\n",
        serde_json::Value::from(bundle.user.as_str()),
        bundle.header.device_id_hex(),
        bundle.id
    ));
    for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        // Every line is one JSON object: drop its closing brace and append the fields.
        let body = line.strip_suffix(b"}").unwrap_or(line);
        out.write_all(body)?;
        out.write_all(tail.as_bytes())?;
    }
    Ok(())
}
