//! The collector side of one bundle: inspect (framing and device signature, no key
//! needed), also of a bundle hashed as it arrives ([`IncomingBundle`]), and open (with
//! the collector identity).
//!
//! Opening a bundle proves that it is intact and was signed by the device key *in its
//! header*; it does not prove which device that is. That is what enrollment records
//! and [`crate::DevicePins`] are for, applied by [`crate::ChainChecker`].

use zeroize::Zeroize;

use crate::audit::AuditEntry;
use crate::bundle::{
    bundle_id, parse_and_open, parse_bundle, parse_hashed_bundle, BundleHeader, ParsedBundle,
    RunningHash, SIG_LEN,
};
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
    parse_bundle(bytes).map(InspectedBundle::from_parsed)
}

impl InspectedBundle {
    fn from_parsed(p: ParsedBundle<'_>) -> InspectedBundle {
        InspectedBundle {
            id: bundle_id(&p.digest),
            digest: p.digest,
            header: p.header,
        }
    }
}

/// A bundle being received piece by piece (an HTTP body), hashed as it arrives so that
/// [`IncomingBundle::inspect`] does not read it all again.
///
/// Everything but the last 64 bytes received so far is hashed on [`push`](Self::push):
/// those may turn out to be the signature, which the signed hash does not cover. The
/// buffer and its hash are only ever changed together, so the hash always covers
/// exactly the bytes before the last 64.
pub struct IncomingBundle {
    /// A prefix the caller keeps before the bundle (see [`IncomingBundle::after_prefix`]),
    /// then the bundle bytes received so far.
    bytes: Vec<u8>,
    /// Where the bundle starts in `bytes`.
    start: usize,
    hash: RunningHash,
}

impl IncomingBundle {
    /// An empty bundle with room for `capacity` bytes (the declared length of the body,
    /// when it is known and acceptable).
    pub fn with_capacity(capacity: usize) -> IncomingBundle {
        IncomingBundle::after_prefix(Vec::with_capacity(capacity))
    }

    /// An empty bundle received into `buffer`, after the bytes already in it: a prefix
    /// the caller keeps in front of the bundle (room for its own framing, so that it can
    /// store the buffer as it is), neither hashed nor checked. Its capacity is the room
    /// for the bundle.
    pub fn after_prefix(buffer: Vec<u8>) -> IncomingBundle {
        IncomingBundle {
            start: buffer.len(),
            bytes: buffer,
            hash: RunningHash::new(),
        }
    }

    /// Appends the next piece of the bundle.
    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        let bundle = &self.bytes[self.start..];
        self.hash
            .cover(bundle, bundle.len().saturating_sub(SIG_LEN));
    }

    /// The number of bundle bytes received.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the bytes received as [`inspect_bundle`] does (same checks, same errors,
    /// same result) and hands the buffer back with the result: the prefix it was given,
    /// then the bundle as it arrived.
    pub fn inspect(self) -> Result<(InspectedBundle, Vec<u8>)> {
        let IncomingBundle { bytes, start, hash } = self;
        let inspected =
            parse_hashed_bundle(&bytes[start..], hash).map(InspectedBundle::from_parsed)?;
        Ok((inspected, bytes))
    }
}

impl std::fmt::Debug for IncomingBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingBundle")
            .field("len", &self.len())
            .field("hashed", &self.hash.len())
            .finish()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incoming_bundle_hashes_all_but_the_last_64_bytes_as_they_arrive() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        for size in [1, 63, 64, 65, 300, 1000] {
            let mut incoming = IncomingBundle::with_capacity(0);
            for chunk in bytes.chunks(size) {
                incoming.push(chunk);
                let len = incoming.len();
                assert_eq!(incoming.hash.len(), len.saturating_sub(SIG_LEN), "{size}");
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                ctx.update(&bytes[..incoming.hash.len()]);
                assert_eq!(
                    incoming.hash.clone_finish().as_ref(),
                    ctx.finish().as_ref(),
                    "{size}"
                );
            }
        }
    }
}
