//! The bundle format: a clear header, an HPKE-sealed payload and the device's
//! signature. Specified in docs/FORMAT.md, "Bundles"; this file is the reference.
//!
//! ```text
//! bundle = header || enc_len:u16 || enc || rcheck[16] || ct_len:u64 || ct || sig[64]
//! ```
//!
//! Version 2 (written) adds a per-user stream id and a count of records lost before
//! the bundle to the header, and uses its own HPKE `info`, recipient-check and
//! signature contexts; version 1 bundles are still read (stream id all zero).
//!
//! * `header` (fixed layout, big-endian, see [`BundleHeader`]) is the HPKE associated data.
//! * `enc` is the HPKE encapsulated key, `ct` the HPKE ciphertext (with its 16-byte tag) of
//!   the postcard-encoded [`BundlePayload`], single-shot base mode, `info` =
//!   [`hpke_info`]`(version)`.
//! * `rcheck` = HPKE `Export(`[`rcheck_context`]`(version), 16)`: it lets the collector tell "not
//!   sealed to this identity" apart from "header swapped" without guessing.
//! * `sig` = Ed25519 by the device key named in the header over
//!   [`sig_context`]`(version) || SHA-256(everything before sig)`.
//! * The bundle digest is SHA-256 of all bundle bytes; the bundle id is text derived
//!   from it ([`bundle_id`]).

use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::inout::InOutBuf;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::audit::AuditEntry;
use crate::device::{verify_ed25519, DeviceKey};
use crate::error::{Error, Result};
use crate::events::{SeqEvent, TimestampUs};

use crate::recipient::{Identity, Recipient, RecipientKey, Suite, X25519Kem, XWingKem};
use crate::secret::PlainBuf;

/// The first 8 bytes of every bundle.
pub(crate) const MAGIC: &[u8; 8] = b"CVBUNDLE";
/// The bundle format version this code writes.
pub(crate) const VERSION: u16 = 2;
/// The oldest version this code reads.
pub(crate) const OLDEST_VERSION: u16 = 1;
/// Length of the recipient check.
pub(crate) const RCHECK_LEN: usize = 16;
/// Version 2 header length without the purpose string.
pub(crate) const FIXED_HEADER_LEN: usize = 178;
/// Version 1 header length without the purpose string.
pub(crate) const FIXED_HEADER_LEN_V1: usize = 154;

/// The HPKE `info` string of a version.
pub(crate) fn hpke_info(version: u16) -> &'static [u8] {
    if version == 1 {
        b"capvault bundle v1"
    } else {
        b"capvault bundle v2"
    }
}

/// The HPKE exporter context of the recipient check of a version.
pub(crate) fn rcheck_context(version: u16) -> &'static [u8] {
    if version == 1 {
        b"capvault bundle recipient check v1"
    } else {
        b"capvault bundle recipient check v2"
    }
}

/// Domain separation for the device signature of a version (ends in a NUL byte).
pub(crate) fn sig_context(version: u16) -> &'static [u8] {
    if version == 1 {
        b"capvault bundle signature v1\0"
    } else {
        b"capvault bundle signature v2\0"
    }
}

fn fixed_header_len(version: u16) -> usize {
    if version == 1 {
        FIXED_HEADER_LEN_V1
    } else {
        FIXED_HEADER_LEN
    }
}
/// Longest purpose string, in bytes.
pub(crate) const MAX_PURPOSE_LEN: usize = 1024;
const TAG_LEN: usize = 16;
/// Length of the device signature that ends every bundle.
pub(crate) const SIG_LEN: usize = 64;

/// The clear header of a bundle. It names no user and carries no event content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleHeader {
    pub(crate) version: u16,
    pub(crate) suite: Suite,
    pub(crate) device_id: [u8; 16],
    pub(crate) device_key: [u8; 32],
    pub(crate) stream_id: [u8; 16],
    pub(crate) bundle_seq: u64,
    pub(crate) first_record: u64,
    pub(crate) last_record: u64,
    pub(crate) records_lost: u64,
    pub(crate) first_event: u64,
    pub(crate) last_event: u64,
    pub(crate) event_count: u64,
    pub(crate) prev_digest: [u8; 32],
    pub(crate) created_us: TimestampUs,
    pub(crate) purpose: String,
}

impl BundleHeader {
    /// The bundle format version (1 or 2).
    pub fn version(&self) -> u16 {
        self.version
    }
    /// The HPKE suite the payload is sealed with.
    pub fn suite(&self) -> Suite {
        self.suite
    }
    /// The random 16-byte id of the vault that made the bundle.
    pub fn device_id(&self) -> &[u8; 16] {
        &self.device_id
    }
    /// The device id as lower-case hex.
    pub fn device_id_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.device_id)
    }
    /// The Ed25519 public key of the device that signed the bundle.
    pub fn device_key(&self) -> &[u8; 32] {
        &self.device_key
    }
    /// The random id of the user stream the bundle belongs to (one per user of a
    /// vault; all zero in version 1 bundles). Derived from nothing: it names no user.
    pub fn stream_id(&self) -> &[u8; 16] {
        &self.stream_id
    }
    /// The stream id as lower-case hex.
    pub fn stream_id_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.stream_id)
    }
    /// Records removed from the log without being released (budget eviction or
    /// retention expiry) after the previous bundle of the stream and before this one.
    /// Each removal is also stated by a loss marker among the events. Always 0 in
    /// version 1 bundles.
    pub fn records_lost(&self) -> u64 {
        self.records_lost
    }
    /// The bundle's sequence number in its (device, stream) chain.
    pub fn bundle_seq(&self) -> u64 {
        self.bundle_seq
    }
    /// The first log record (vault record sequence number) in the bundle.
    pub fn first_record(&self) -> u64 {
        self.first_record
    }
    /// The last log record in the bundle (inclusive).
    pub fn last_record(&self) -> u64 {
        self.last_record
    }
    /// The first event sequence number (0 when the bundle holds no events).
    pub fn first_event(&self) -> u64 {
        self.first_event
    }
    /// The last event sequence number, inclusive (0 when the bundle holds no events).
    pub fn last_event(&self) -> u64 {
        self.last_event
    }
    /// The number of events in the payload.
    pub fn event_count(&self) -> u64 {
        self.event_count
    }
    /// The digest of the device's previous bundle (all zero for its first bundle).
    pub fn prev_digest(&self) -> &[u8; 32] {
        &self.prev_digest
    }
    /// When the bundle was sealed, microseconds since the Unix epoch.
    pub fn created_us(&self) -> TimestampUs {
        self.created_us
    }
    /// Why the data was released (the vault's configured purpose).
    pub fn purpose(&self) -> &str {
        &self.purpose
    }

    /// The header bytes (also the HPKE associated data).
    pub fn to_bytes(&self) -> Vec<u8> {
        let v2 = self.version >= 2;
        let fixed = fixed_header_len(self.version);
        let mut out = Vec::with_capacity(fixed + self.purpose.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.suite.kem_id().to_be_bytes());
        out.extend_from_slice(&self.suite.kdf_id().to_be_bytes());
        out.extend_from_slice(&self.suite.aead_id().to_be_bytes());
        out.extend_from_slice(&self.device_id);
        out.extend_from_slice(&self.device_key);
        if v2 {
            out.extend_from_slice(&self.stream_id);
        }
        out.extend_from_slice(&self.bundle_seq.to_be_bytes());
        out.extend_from_slice(&self.first_record.to_be_bytes());
        out.extend_from_slice(&self.last_record.to_be_bytes());
        if v2 {
            out.extend_from_slice(&self.records_lost.to_be_bytes());
        }
        for n in [self.first_event, self.last_event, self.event_count] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.prev_digest);
        out.extend_from_slice(&self.created_us.to_be_bytes());
        out.extend_from_slice(&(self.purpose.len() as u16).to_be_bytes());
        out.extend_from_slice(self.purpose.as_bytes());
        debug_assert_eq!(out.len(), fixed + self.purpose.len());
        out
    }

    /// Decodes the header fields of `h` (exactly the header bytes). Called only after
    /// the framing has been checked, so `h` is long enough for its version.
    fn decode(h: &[u8]) -> Result<BundleHeader> {
        let u16_at = |o: usize| u16::from_be_bytes([h[o], h[o + 1]]);
        let u64_at = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        let version = u16_at(8);
        let (kem, kdf, aead) = (u16_at(10), u16_at(12), u16_at(14));
        let suite = Suite::from_ids(kem, kdf, aead).ok_or_else(|| {
            Error::invalid(format!(
                "the bundle uses an unsupported HPKE suite (KEM {kem:#06x}, KDF {kdf:#06x}, \
                 AEAD {aead:#06x}); this capvault opens X25519 and X-Wing bundles"
            ))
        })?;
        let fixed = fixed_header_len(version);
        let purpose = std::str::from_utf8(&h[fixed..])
            .map_err(|_| Error::tampered("the bundle header is malformed: purpose is not UTF-8"))?
            .to_owned();
        // Version 2 inserts the stream id after the device key and the lost-record count
        // after the record range; `o` is where the fields after the stream id start.
        let (stream_id, o, lost) = if version >= 2 {
            (h[64..80].try_into().expect("16 bytes"), 80, 8)
        } else {
            ([0u8; 16], 64, 0)
        };
        let header = BundleHeader {
            version,
            suite,
            device_id: h[16..32].try_into().expect("16 bytes"),
            device_key: h[32..64].try_into().expect("32 bytes"),
            stream_id,
            bundle_seq: u64_at(o),
            first_record: u64_at(o + 8),
            last_record: u64_at(o + 16),
            records_lost: if lost > 0 { u64_at(o + 24) } else { 0 },
            first_event: u64_at(o + 24 + lost),
            last_event: u64_at(o + 32 + lost),
            event_count: u64_at(o + 40 + lost),
            prev_digest: h[o + 48 + lost..o + 80 + lost]
                .try_into()
                .expect("32 bytes"),
            created_us: u64_at(o + 80 + lost) as i64,
            purpose,
        };
        header
            .check_ranges()
            .map_err(|why| Error::tampered(format!("the bundle header is malformed: {why}")))?;
        Ok(header)
    }

    fn check_ranges(&self) -> std::result::Result<(), &'static str> {
        if self.first_record > self.last_record {
            return Err("its record range is reversed");
        }
        if self.event_count == 0 {
            if self.first_event != 0 || self.last_event != 0 {
                return Err("an empty event range must be 0..0");
            }
        } else if self.first_event > self.last_event
            || self.last_event - self.first_event < self.event_count - 1
        {
            return Err("its event range cannot hold its event count");
        }
        Ok(())
    }
}

/// The sealed content. The user id travels only here, never in the clear header.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BundlePayload {
    pub(crate) user: String,
    pub(crate) events: Vec<SeqEvent>,
    pub(crate) audit: Vec<AuditEntry>,
}

/// Borrowed form of [`BundlePayload`]; postcard encodes both identically.
#[derive(Serialize)]
struct BundlePayloadRef<'a> {
    user: &'a str,
    events: &'a [SeqEvent],
    audit: &'a [AuditEntry],
}

/// What the vault hands to [`seal_bundle`]: the records to release and their place in
/// the device's chain.
#[derive(Clone, Copy, Debug)]
pub struct BundleInput<'a> {
    /// Random per-vault id (never a user name).
    pub device_id: [u8; 16],
    /// Random per-user stream id (never derived from the user name).
    pub stream_id: [u8; 16],
    /// This bundle's number in the (device, stream) chain.
    pub bundle_seq: u64,
    /// First log record sealed (inclusive).
    pub first_record: u64,
    /// Last log record sealed (inclusive).
    pub last_record: u64,
    /// Records removed unreleased since the previous bundle (see
    /// [`BundleHeader::records_lost`]).
    pub records_lost: u64,
    /// Digest of the previous bundle, zero for the first.
    pub prev_digest: [u8; 32],
    /// Sealing time.
    pub created_us: TimestampUs,
    /// The release purpose.
    pub purpose: &'a str,
    /// The data subject.
    pub user: &'a str,
    /// The events, in increasing sequence order.
    pub events: &'a [SeqEvent],
    /// Audit entries released with them.
    pub audit: &'a [AuditEntry],
}

/// A sealed bundle, ready to ship.
#[derive(Clone)]
pub struct SealedBundle {
    pub(crate) id: String,
    pub(crate) digest: [u8; 32],
    pub(crate) bytes: Vec<u8>,
    pub(crate) header: BundleHeader,
}

impl SealedBundle {
    /// The bundle id (see [`bundle_id`]).
    pub fn id(&self) -> &str {
        &self.id
    }
    /// SHA-256 of the bundle bytes.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
    /// The bundle bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The bundle bytes, by value.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
    /// The clear header.
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// A bundle read back from storage (a device's outbox): the framing and the device
    /// signature are checked and the header decoded; nothing is decrypted.
    ///
    /// Errors as for [`crate::inspect_bundle`].
    pub fn from_bytes(bytes: Vec<u8>) -> Result<SealedBundle> {
        let (header, digest) = {
            let p = parse_bundle(&bytes)?;
            (p.header, p.digest)
        };
        Ok(SealedBundle {
            id: bundle_id(&digest),
            digest,
            bytes,
            header,
        })
    }
}

impl std::fmt::Debug for SealedBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedBundle({}, {} bytes)", self.id, self.bytes.len())
    }
}

/// The text id of a bundle: `cvb1` followed by the lower-case base32 (no padding) of
/// the first 20 bytes of its digest (36 characters in all).
pub fn bundle_id(digest: &[u8; 32]) -> String {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    let enc = spec.encoding().expect("valid base32 specification");
    format!("cvb1{}", enc.encode(&digest[..20]))
}

/// Seals `input` to `recipient` and signs it with `device`.
// Called by the vault's `seal_next`.
#[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
pub fn seal_bundle(
    input: &BundleInput<'_>,
    recipient: &Recipient,
    device: &DeviceKey,
) -> Result<SealedBundle> {
    if input.purpose.len() > MAX_PURPOSE_LEN {
        return Err(Error::invalid(format!(
            "the purpose is longer than {MAX_PURPOSE_LEN} bytes"
        )));
    }
    if input.first_record > input.last_record {
        return Err(Error::invalid("the record range is reversed"));
    }
    if input.events.windows(2).any(|w| w[0].seq >= w[1].seq) {
        return Err(Error::invalid(
            "bundle events must be in strictly increasing sequence order",
        ));
    }
    let (first_event, last_event) = match (input.events.first(), input.events.last()) {
        (Some(f), Some(l)) => (f.seq, l.seq),
        _ => (0, 0),
    };
    let header = BundleHeader {
        version: VERSION,
        suite: recipient.suite(),
        device_id: input.device_id,
        device_key: device.public_key(),
        stream_id: input.stream_id,
        bundle_seq: input.bundle_seq,
        first_record: input.first_record,
        last_record: input.last_record,
        records_lost: input.records_lost,
        first_event,
        last_event,
        event_count: input.events.len() as u64,
        prev_digest: input.prev_digest,
        created_us: input.created_us,
        purpose: input.purpose.to_owned(),
    };
    header.check_ranges().map_err(Error::invalid)?;
    let payload = BundlePayloadRef {
        user: input.user,
        events: input.events,
        audit: input.audit,
    };
    let mut bytes = match &recipient.key {
        RecipientKey::X25519(pk) => seal_with::<X25519Kem>(pk, &header, &payload)?,
        RecipientKey::XWing(pk) => seal_with::<XWingKem>(pk, &header, &payload)?,
    };
    // One SHA-256 pass gives both the signed hash and the digest.
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&bytes);
    let signed_hash = ctx.clone().finish();
    let sig = device.sign(&signature_input(VERSION, signed_hash.as_ref()));
    ctx.update(&sig);
    bytes.extend_from_slice(&sig);
    let digest: [u8; 32] = ctx.finish().as_ref().try_into().expect("32 bytes");
    Ok(SealedBundle {
        id: bundle_id(&digest),
        digest,
        bytes,
        header,
    })
}

fn signature_input(version: u16, hash: &[u8]) -> Vec<u8> {
    let ctx = sig_context(version);
    let mut m = Vec::with_capacity(ctx.len() + hash.len());
    m.extend_from_slice(ctx);
    m.extend_from_slice(hash);
    m
}

fn hpke_err(e: hpke::HpkeError) -> Error {
    Error::invalid(format!("HPKE sealing failed: {e}"))
}

/// Writes `header || enc_len || enc || rcheck || ct_len || ct` (everything but the
/// signature). The plaintext is encoded straight into the output buffer and encrypted
/// there in place, so it never exists in a second buffer; on any error the buffer is
/// zeroized.
fn seal_with<K: Kem>(
    pk: &K::PublicKey,
    header: &BundleHeader,
    payload: &BundlePayloadRef<'_>,
) -> Result<Vec<u8>> {
    let aad = header.to_bytes();
    let (enc, mut ctx) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, K>(
        &OpModeS::Base,
        pk,
        hpke_info(header.version),
    )
    .map_err(hpke_err)?;
    let mut rcheck = [0u8; RCHECK_LEN];
    ctx.export(rcheck_context(header.version), &mut rcheck)
        .map_err(hpke_err)?;
    let enc = enc.to_bytes();
    let pt_len = postcard::experimental::serialized_size(payload)
        .map_err(|e| Error::invalid(format!("the bundle payload does not encode: {e}")))?;
    let ct_len = pt_len + TAG_LEN;
    let total = aad.len() + 2 + enc.len() + RCHECK_LEN + 8 + ct_len + SIG_LEN;
    let mut buf = PlainBuf::new(Vec::with_capacity(total));
    buf.extend_from_slice(&aad);
    buf.extend_from_slice(&(enc.len() as u16).to_be_bytes());
    buf.extend_from_slice(&enc);
    buf.extend_from_slice(&rcheck);
    buf.extend_from_slice(&(ct_len as u64).to_be_bytes());
    let pt_start = buf.len();
    buf.resize(pt_start + pt_len, 0);
    postcard::to_slice(payload, &mut buf[pt_start..])
        .map_err(|e| Error::invalid(format!("the bundle payload does not encode: {e}")))?;
    let tag = ctx
        .seal_inout_detached(InOutBuf::from(&mut buf[pt_start..]), &aad)
        .map_err(hpke_err)?;
    buf.extend_from_slice(&tag.to_bytes());
    // Only ciphertext is left: hand the buffer out without zeroizing it.
    Ok(std::mem::take(&mut *buf))
}

/// A bundle whose framing and device signature have been checked.
pub(crate) struct ParsedBundle<'a> {
    pub(crate) header: BundleHeader,
    pub(crate) aad: &'a [u8],
    pub(crate) enc: &'a [u8],
    pub(crate) rcheck: &'a [u8],
    pub(crate) ct: &'a [u8],
    pub(crate) digest: [u8; 32],
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::tampered(
                "the bundle is truncated (its lengths point past its end)",
            )),
        }
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// The pieces of a bundle whose lengths add up (nothing verified yet).
struct Framed<'a> {
    version: u16,
    bytes: &'a [u8],
    aad: &'a [u8],
    enc: &'a [u8],
    rcheck: &'a [u8],
    ct: &'a [u8],
    signed_end: usize,
}

fn frame(bytes: &[u8]) -> Result<Framed<'_>> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] || bytes.is_empty() {
        return Err(Error::invalid(
            "this is not a capvault bundle (it does not start with CVBUNDLE)",
        ));
    }
    if bytes.len() < 10 {
        return Err(Error::tampered(
            "the bundle is truncated (shorter than its header)",
        ));
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(Error::invalid(format!(
            "unsupported bundle format version {version}; this capvault reads versions \
             {OLDEST_VERSION} to {VERSION}"
        )));
    }
    let fixed = fixed_header_len(version);
    if bytes.len() < fixed {
        return Err(Error::tampered(
            "the bundle is truncated (shorter than its header)",
        ));
    }
    let mut r = Reader { bytes, pos: 0 };
    r.take(fixed - 2)?;
    let purpose_len = r.u16()? as usize;
    if purpose_len > MAX_PURPOSE_LEN {
        return Err(Error::tampered(
            "the bundle header is malformed: purpose too long",
        ));
    }
    r.take(purpose_len)?;
    let aad = &bytes[..r.pos];
    let enc_len = r.u16()? as usize;
    let enc = r.take(enc_len)?;
    let rcheck = r.take(RCHECK_LEN)?;
    let ct_len = usize::try_from(r.u64()?)
        .map_err(|_| Error::tampered("the bundle is truncated (its lengths point past its end)"))?;
    let ct = r.take(ct_len)?;
    let signed_end = r.pos;
    r.take(SIG_LEN)?;
    if r.pos != bytes.len() {
        return Err(Error::tampered(
            "the bundle has trailing bytes after its signature",
        ));
    }
    Ok(Framed {
        version,
        bytes,
        aad,
        enc,
        rcheck,
        ct,
        signed_end,
    })
}

/// SHA-256 over the first `len` bytes of one bundle buffer, kept by its owner as the
/// bytes arrive so that the signed region is not read twice.
pub(crate) struct RunningHash {
    ctx: ring::digest::Context,
    len: usize,
}

impl RunningHash {
    pub(crate) fn new() -> RunningHash {
        RunningHash {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }

    /// How many leading bytes are hashed.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The hash of the bytes covered so far.
    #[cfg(test)]
    pub(crate) fn clone_finish(&self) -> ring::digest::Digest {
        self.ctx.clone().finish()
    }

    /// Makes the hash cover exactly `bytes[..end]`. `bytes` must start with the bytes
    /// hashed so far (the owner of the hash only ever appends to its buffer).
    pub(crate) fn cover(&mut self, bytes: &[u8], end: usize) {
        // Never the case: a buffer's hash stops 64 bytes short of its end, where the
        // signature of a bundle that frames starts. Were it so, starting over keeps the
        // result right.
        debug_assert!(self.len <= end, "hashed {} bytes, past {end}", self.len);
        if self.len > end {
            *self = RunningHash::new();
        }
        self.ctx.update(&bytes[self.len..end]);
        self.len = end;
    }
}

/// Checks the device signature; returns the bundle digest. `hash` covers a prefix of
/// `f.bytes` (none of it, or all of the signed region when it was hashed as it
/// arrived); the rest of the signed region is hashed here.
fn verify_signature(f: &Framed<'_>, mut hash: RunningHash) -> Result<[u8; 32]> {
    let device_key: [u8; 32] = f.bytes[32..64].try_into().expect("32 bytes");
    let sig = &f.bytes[f.signed_end..];
    hash.cover(f.bytes, f.signed_end);
    let mut ctx = hash.ctx;
    let signed_hash = ctx.clone().finish();
    let msg = signature_input(f.version, signed_hash.as_ref());
    verify_ed25519(&device_key, &msg, sig).map_err(|_| {
        Error::tampered(
            "the device signature does not verify: the bundle was modified or corrupted",
        )
    })?;
    ctx.update(sig);
    Ok(ctx.finish().as_ref().try_into().expect("32 bytes"))
}

fn decode_header(f: &Framed<'_>) -> Result<BundleHeader> {
    let header = BundleHeader::decode(f.aad)?;
    if f.ct.len() < TAG_LEN {
        return Err(Error::tampered(
            "the bundle is malformed: its ciphertext is shorter than a tag",
        ));
    }
    Ok(header)
}

/// Checks the framing and the device signature and decodes the header; does not
/// decrypt. Errors: not a bundle / unknown version / unknown suite -> InvalidArgument;
/// truncated, trailing bytes, bad signature, malformed header -> Tampered.
pub(crate) fn parse_bundle(bytes: &[u8]) -> Result<ParsedBundle<'_>> {
    parse_hashed_bundle(bytes, RunningHash::new())
}

/// [`parse_bundle`] of bytes of which `hash` already covers a prefix.
pub(crate) fn parse_hashed_bundle(bytes: &[u8], hash: RunningHash) -> Result<ParsedBundle<'_>> {
    let f = frame(bytes)?;
    let digest = verify_signature(&f, hash)?;
    let header = decode_header(&f)?;
    Ok(ParsedBundle {
        header,
        aad: f.aad,
        enc: f.enc,
        rcheck: f.rcheck,
        ct: f.ct,
        digest,
    })
}

/// Parses, verifies and opens a bundle. The signature is checked before anything
/// else: anyone holding the recipient can make a ciphertext that decrypts, so nothing
/// of an unsigned bundle is decrypted or decoded (docs/FORMAT.md).
pub(crate) fn parse_and_open(
    bytes: &[u8],
    identity: &Identity,
) -> Result<(BundleHeader, [u8; 32], BundlePayload)> {
    let parsed = parse_bundle(bytes)?;
    let payload = open_payload(&parsed, identity)?;
    Ok((parsed.header, parsed.digest, payload))
}

/// Opens the HPKE layer of a parsed bundle and decodes the payload.
pub(crate) fn open_payload(
    parsed: &ParsedBundle<'_>,
    identity: &Identity,
) -> Result<BundlePayload> {
    let suite = parsed.header.suite;
    if suite != identity.suite() {
        return Err(Error::invalid(format!(
            "this bundle is sealed to an {} recipient, but the identity is an {} identity",
            suite,
            identity.suite()
        )));
    }
    let plain = match suite {
        Suite::X25519 => open_with::<X25519Kem>(&identity.x25519_secret(), parsed)?,
        Suite::XWing => open_with::<XWingKem>(&identity.xwing_secret(), parsed)?,
    };
    postcard::from_bytes::<BundlePayload>(&plain)
        .map_err(|_| Error::tampered("the bundle payload does not decode"))
}

fn open_with<K: Kem>(sk: &K::PrivateKey, p: &ParsedBundle<'_>) -> Result<PlainBuf> {
    let enc = K::EncappedKey::from_bytes(p.enc)
        .map_err(|_| Error::tampered("the bundle's encapsulated key is malformed"))?;
    let mut ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, K>(
        &OpModeR::Base,
        sk,
        &enc,
        hpke_info(p.header.version),
    )
    .map_err(|_| Error::tampered("the bundle's encapsulated key is invalid"))?;
    let mut check = [0u8; RCHECK_LEN];
    ctx.export(rcheck_context(p.header.version), &mut check)
        .map_err(|_| Error::tampered("HPKE export failed"))?;
    let diff = check
        .iter()
        .zip(p.rcheck)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(Error::NotFound(
            "this bundle is not sealed to this identity (no key here opens it)".into(),
        ));
    }
    let (body, tag) = p.ct.split_at(p.ct.len() - TAG_LEN);
    let tag = AeadTag::<ChaCha20Poly1305>::from_bytes(tag)
        .map_err(|_| Error::tampered("the bundle's tag is malformed"))?;
    let mut buf = PlainBuf::new(body.to_vec());
    ctx.open_inout_detached(InOutBuf::from(&mut buf[..]), p.aad, &tag)
        .map_err(|_| {
            Error::tampered(
                "the header does not belong to this payload: the header was swapped or the \
                 bundle was re-signed by another key",
            )
        })?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Event;
    use crate::secret::Key32;

    fn input<'a>(events: &'a [SeqEvent]) -> BundleInput<'a> {
        BundleInput {
            device_id: [7; 16],
            stream_id: [0x22; 16],
            records_lost: 0,
            bundle_seq: 1,
            first_record: 10,
            last_record: 12,
            prev_digest: [0; 32],
            created_us: 1_700_000_000_000_000,
            purpose: "training",
            user: "alice",
            events,
            audit: &[],
        }
    }

    #[test]
    fn header_layout_is_fixed() {
        let events = [SeqEvent {
            seq: 5,
            event: Event::MouseMove {
                ts_us: 1,
                x: 2,
                y: 3,
            },
        }];
        let id = Identity::generate(Suite::X25519);
        let dev = DeviceKey::from_seed(&Key32::generate()).unwrap();
        let b = seal_bundle(&input(&events), &id.recipient(), &dev).unwrap();
        let h = b.header().to_bytes();
        assert_eq!(h.len(), FIXED_HEADER_LEN + "training".len());
        assert_eq!(&b.bytes()[..h.len()], &h[..]);
        assert_eq!(&h[..8], b"CVBUNDLE");
        assert_eq!(&h[10..16], &[0x00, 0x20, 0x00, 0x01, 0x00, 0x03]);
        assert_eq!(BundleHeader::decode(&h).unwrap(), *b.header());
        let p = parse_bundle(b.bytes()).unwrap();
        assert_eq!(p.enc.len(), 32);
        assert_eq!(p.digest, *b.digest());
        assert!(b.id().starts_with("cvb1") && b.id().len() == 36);
        let payload = open_payload(&p, &id).unwrap();
        assert_eq!(payload.user, "alice");
        assert_eq!(payload.events, events);
        // The user name is not in the clear.
        assert!(!b.bytes().windows(5).any(|w| w == b"alice"));
    }

    #[test]
    fn seal_rejects_bad_input() {
        let id = Identity::generate(Suite::X25519);
        let dev = DeviceKey::from_seed(&Key32::generate()).unwrap();
        let ev = |seq| SeqEvent {
            seq,
            event: Event::Scroll {
                ts_us: 1,
                dx: 0,
                dy: 1,
            },
        };
        let unordered = [ev(3), ev(2)];
        assert!(seal_bundle(&input(&unordered), &id.recipient(), &dev).is_err());
        let long = "x".repeat(MAX_PURPOSE_LEN + 1);
        let mut i = input(&[]);
        i.purpose = &long;
        assert!(seal_bundle(&i, &id.recipient(), &dev).is_err());
        let mut i = input(&[]);
        i.first_record = 20;
        assert!(seal_bundle(&i, &id.recipient(), &dev).is_err());
    }
}
