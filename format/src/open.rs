//! The collector side of one bundle: inspect (framing and device signature, no key
//! needed) and open (with the collector identity).
//!
//! Opening a bundle proves that it is intact and was signed by the device key *in its
//! header*; it does not prove which device that is. That is what enrollment records
//! and [`crate::DevicePins`] are for, applied by [`crate::ChainChecker`].

use zeroize::Zeroize;

use crate::audit::AuditEntry;
use crate::bundle::{bundle_id, parse_and_open, parse_bundle, BundleHeader};
use crate::error::{Error, Result};
use crate::events::SeqEvent;
use crate::recipient::Identity;

/// A bundle opened and verified by [`open_bundle`]. Its event content is zeroized when
/// it is dropped.
pub struct OpenedBundle {
    /// The clear header.
    pub header: BundleHeader,
    /// The data subject (travels only inside the ciphertext).
    pub user: String,
    /// The events, in increasing sequence order, all within the header's event range.
    pub events: Vec<SeqEvent>,
    /// Audit ledger entries released with the events.
    pub audit: Vec<AuditEntry>,
    /// SHA-256 of the bundle bytes (what a receipt signs).
    pub digest: [u8; 32],
    /// The bundle id.
    pub id: String,
}

impl Drop for OpenedBundle {
    fn drop(&mut self) {
        self.user.zeroize();
        for e in &mut self.events {
            e.event.zeroize();
        }
    }
}

impl std::fmt::Debug for OpenedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OpenedBundle({}, device {}, seq {}, {} events)",
            self.id,
            self.header.device_id_hex(),
            self.header.bundle_seq(),
            self.events.len()
        )
    }
}

/// A bundle whose framing and device signature were checked, without decrypting it
/// (no identity needed). Enough for [`crate::ChainChecker`].
#[derive(Clone, Debug)]
pub struct InspectedBundle {
    /// The clear header.
    pub header: BundleHeader,
    /// SHA-256 of the bundle bytes.
    pub digest: [u8; 32],
    /// The bundle id.
    pub id: String,
}

/// Checks a bundle's structure and device signature and decodes its header.
///
/// Errors as for [`open_bundle`] up to and including the signature check.
pub fn inspect_bundle(bytes: &[u8]) -> Result<InspectedBundle> {
    let p = parse_bundle(bytes)?;
    Ok(InspectedBundle {
        id: bundle_id(&p.digest),
        digest: p.digest,
        header: p.header,
    })
}

/// Parses, verifies and decrypts a bundle.
///
/// Checks, in order (the first failure is returned, never partial plaintext):
///
/// | input | error |
/// |---|---|
/// | not a bundle (bad magic) | `InvalidArgument`: "not a capvault bundle" |
/// | unknown format version | `InvalidArgument`: "unsupported bundle format version" |
/// | truncated, lengths that do not add up | `Tampered`: "truncated" |
/// | bytes after the signature | `Tampered`: "trailing bytes" |
/// | any changed byte (header, enc, ciphertext, signature) | `Tampered`: "device signature does not verify" |
/// | unknown HPKE suite | `InvalidArgument`: "unsupported HPKE suite" |
/// | bundle suite differs from the identity's | `InvalidArgument`: "sealed to an … recipient, but the identity is an …" |
/// | sealed to another recipient | `NotFound`: "this bundle is not sealed to this identity" |
/// | header swapped and re-signed by another key | `Tampered`: "the header does not belong to this payload" |
/// | payload that does not decode, events outside the header's range | `Tampered` |
pub fn open_bundle(bytes: &[u8], identity: &Identity) -> Result<OpenedBundle> {
    let (header, digest, payload) = parse_and_open(bytes, identity)?;
    let h = &header;
    let ev = &payload.events;
    let in_range = ev.len() as u64 == h.event_count()
        && ev.windows(2).all(|w| w[0].seq < w[1].seq)
        && match (ev.first(), ev.last()) {
            (Some(f), Some(l)) => f.seq == h.first_event() && l.seq == h.last_event(),
            _ => true,
        };
    if !in_range {
        // `payload` is dropped here; its event content is in the zeroized buffer's
        // decoded copies, which we scrub explicitly.
        let mut payload = payload;
        for e in &mut payload.events {
            e.event.zeroize();
        }
        payload.user.zeroize();
        return Err(Error::tampered(
            "the payload's events do not match the header's event range",
        ));
    }
    let mut payload = payload;
    Ok(OpenedBundle {
        header,
        user: std::mem::take(&mut payload.user),
        events: std::mem::take(&mut payload.events),
        audit: std::mem::take(&mut payload.audit),
        id: bundle_id(&digest),
        digest,
    })
}
