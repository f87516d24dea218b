//! The one place this crate touches the shared, I/O-free capvault formats: bundles
//! (inspect, open), enrollment records, receipts and JSON Lines.
//!
//! Everything else in the crate goes through the names below, so that the format crate
//! can change shape without the service noticing.
//!
//! Interim: the formats are still in the root `capvault` crate, which has no standalone
//! receipt key and no enrollment record yet; both are defined here until they move
//! into `capvault-format`. Bundles of format version 1 carry no stream id; they are
//! filed under the all-zero stream.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

pub use capvault::{inspect_bundle, open_bundle, BundleHeader, Identity, ReceiptKey};

/// The per-user stream a bundle belongs to (all zero for format version 1).
pub fn stream_id(_header: &BundleHeader) -> [u8; 16] {
    [0u8; 16]
}

/// Checks a receipt.
#[cfg(test)]
pub fn verify_receipt(key: &ReceiptKey, digest: &[u8; 32], receipt: &[u8]) -> bool {
    capvault::verify_receipt(key, digest, receipt).is_ok()
}

/// Writes the events of an opened bundle as JSON Lines (SPEC 9), each line carrying
/// `user`, `device_id` and `bundle_id`.
pub fn write_events<W: Write>(bundle: &capvault::OpenedBundle, out: &mut W) -> std::io::Result<()> {
    let mut buf = Zeroizing::new(Vec::new());
    capvault::write_json_lines(&bundle.events, &mut *buf, None).map_err(std::io::Error::other)?;
    let tail = format!(
        ",\"user\":{},\"device_id\":\"{}\",\"bundle_id\":\"{}\"}}\n",
        serde_json::Value::from(bundle.user.as_str()),
        bundle.header.device_id_hex(),
        bundle.id
    );
    for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        // Every line is one JSON object: drop its closing brace and append the fields.
        let body = line.strip_suffix(b"}").unwrap_or(line);
        out.write_all(body)?;
        out.write_all(tail.as_bytes())?;
    }
    Ok(())
}

// ----- receipt signing -----

/// Domain separation of receipts; must match the vault's receipt check.
const RECEIPT_CONTEXT: &[u8] = b"capvault receipt v1\0";
const RECEIPT_KEY_PREFIX: &str = "cvreceipt-ed25519-1";
const SIGNER_PREFIX: &str = "CVRECEIPT-SECRET-ED25519-1";
const CHECKSUM_LEN: usize = 4;

fn checksum(prefix: &str, payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prefix.as_bytes());
    ctx.update(payload);
    let d = ctx.finish();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&d.as_ref()[..CHECKSUM_LEN]);
    out
}

fn lower_base32() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    spec.encoding().expect("a valid base32 specification")
}

/// The collector's receipt signing key: an Ed25519 key of its own, unrelated to the
/// key that opens bundles, so the ingest tier can sign receipts without being able to
/// decrypt anything.
pub struct ReceiptSigner {
    seed: Zeroizing<[u8; 32]>,
    pair: Ed25519KeyPair,
}

impl ReceiptSigner {
    /// A new random signing key.
    pub fn generate() -> ReceiptSigner {
        let mut seed = Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed[..])
            .expect("the system random generator works");
        Self::from_seed(seed)
    }

    fn from_seed(seed: Zeroizing<[u8; 32]>) -> ReceiptSigner {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed[..])
            .expect("any 32-byte seed is an Ed25519 key");
        ReceiptSigner { seed, pair }
    }

    /// The secret as text (`CVRECEIPT-SECRET-ED25519-1…`), zeroized when dropped.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut body = Zeroizing::new(Vec::with_capacity(32 + CHECKSUM_LEN));
        body.extend_from_slice(&self.seed[..]);
        body.extend_from_slice(&checksum(SIGNER_PREFIX, &self.seed[..]));
        let mut out = Zeroizing::new(String::from(SIGNER_PREFIX));
        data_encoding::BASE32_NOPAD.encode_append(&body, &mut out);
        out
    }

    /// The public receipt key that devices are configured with.
    pub fn receipt_key(&self) -> ReceiptKey {
        let public = self.pair.public_key().as_ref();
        let mut body = public.to_vec();
        body.extend_from_slice(&checksum(RECEIPT_KEY_PREFIX, public));
        let text = format!("{RECEIPT_KEY_PREFIX}{}", lower_base32().encode(&body));
        text.parse().expect("a freshly encoded receipt key parses")
    }

    /// The receipt for the bundle with this digest (64 bytes).
    pub fn receipt_for(&self, digest: &[u8; 32]) -> Vec<u8> {
        let mut m = Vec::with_capacity(RECEIPT_CONTEXT.len() + 32);
        m.extend_from_slice(RECEIPT_CONTEXT);
        m.extend_from_slice(digest);
        self.pair.sign(&m).as_ref().to_vec()
    }
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReceiptSigner({}, secret <redacted>)",
            self.receipt_key()
        )
    }
}

impl FromStr for ReceiptSigner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let body = s.trim().strip_prefix(SIGNER_PREFIX).ok_or_else(|| {
            format!("not a receipt signing key: it must start with {SIGNER_PREFIX}")
        })?;
        let mut decoded = data_encoding::BASE32_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| "the receipt signing key is not valid base32".to_string())?;
        let ok = decoded.len() == 32 + CHECKSUM_LEN
            && checksum(SIGNER_PREFIX, &decoded[..32])[..] == decoded[32..];
        if !ok {
            decoded.zeroize();
            return Err("the receipt signing key checksum failed: truncated or edited".into());
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&decoded[..32]);
        decoded.zeroize();
        Ok(Self::from_seed(seed))
    }
}

// ----- enrollment records -----

/// Domain separation of the device's self-signature over its enrollment record.
const ENROLL_CONTEXT: &[u8] = b"capvault enrollment v1\0";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollmentJson {
    version: u32,
    device_id: String,
    device_key: String,
    created_us: u64,
    signature: String,
}

/// A device's enrollment record: its id and Ed25519 key, signed by that key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentRecord {
    device_id: [u8; 16],
    device_key: [u8; 32],
    created_us: u64,
    signature: Vec<u8>,
}

fn enroll_message(device_id: &[u8; 16], device_key: &[u8; 32], created_us: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENROLL_CONTEXT.len() + 56);
    m.extend_from_slice(ENROLL_CONTEXT);
    m.extend_from_slice(device_id);
    m.extend_from_slice(device_key);
    m.extend_from_slice(&created_us.to_be_bytes());
    m
}

impl EnrollmentRecord {
    /// Builds and signs a record with a device's Ed25519 seed.
    #[cfg(test)]
    pub fn sign(device_id: [u8; 16], device_seed: &[u8; 32], created_us: u64) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(device_seed).expect("32-byte seed");
        let device_key: [u8; 32] = pair.public_key().as_ref().try_into().expect("32 bytes");
        let signature = pair
            .sign(&enroll_message(&device_id, &device_key, created_us))
            .as_ref()
            .to_vec();
        EnrollmentRecord {
            device_id,
            device_key,
            created_us,
            signature,
        }
    }

    /// Parses a record and verifies the device's signature over it.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let j: EnrollmentJson =
            serde_json::from_str(text).map_err(|e| format!("not an enrollment record: {e}"))?;
        if j.version != 1 {
            return Err(format!(
                "unsupported enrollment record version {}",
                j.version
            ));
        }
        let hex = |s: &str, n: usize| {
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(s.as_bytes())
                .ok()
                .filter(|b| b.len() == n)
        };
        let device_id: [u8; 16] = hex(&j.device_id, 16)
            .ok_or("device_id must be 32 hex digits")?
            .try_into()
            .expect("16 bytes");
        let device_key: [u8; 32] = hex(&j.device_key, 32)
            .ok_or("device_key must be 64 hex digits")?
            .try_into()
            .expect("32 bytes");
        let signature = data_encoding::BASE64
            .decode(j.signature.as_bytes())
            .map_err(|_| "signature must be base64".to_string())?;
        UnparsedPublicKey::new(&signature::ED25519, &device_key)
            .verify(
                &enroll_message(&device_id, &device_key, j.created_us),
                &signature,
            )
            .map_err(|_| "the enrollment record's signature does not verify".to_string())?;
        Ok(EnrollmentRecord {
            device_id,
            device_key,
            created_us: j.created_us,
            signature,
        })
    }

    /// The record as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&EnrollmentJson {
            version: 1,
            device_id: self.device_id_hex(),
            device_key: data_encoding::HEXLOWER.encode(&self.device_key),
            created_us: self.created_us,
            signature: data_encoding::BASE64.encode(&self.signature),
        })
        .expect("serializable")
    }

    /// The device's Ed25519 public key.
    pub fn device_key(&self) -> [u8; 32] {
        self.device_key
    }

    /// The device id, lower-case hex.
    pub fn device_id_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_signer_text_round_trip_and_receipts_verify() {
        let s = ReceiptSigner::generate();
        let text = s.to_secret_string();
        let back: ReceiptSigner = text.parse().unwrap();
        assert_eq!(back.receipt_key(), s.receipt_key());
        assert!(s
            .receipt_key()
            .to_string()
            .starts_with("cvreceipt-ed25519-1"));
        let d = [7u8; 32];
        assert!(verify_receipt(&s.receipt_key(), &d, &back.receipt_for(&d)));
        assert!(!verify_receipt(
            &s.receipt_key(),
            &[8u8; 32],
            &s.receipt_for(&d)
        ));
        let mut edited = text.to_string();
        edited.pop();
        edited.push(if text.ends_with('A') { 'B' } else { 'A' });
        assert!(edited.parse::<ReceiptSigner>().is_err());
        assert!(!format!("{s:?}").contains(text.as_str()));
    }

    #[test]
    fn enrollment_records_verify_and_reject_edits() {
        let r = EnrollmentRecord::sign([3u8; 16], &[4u8; 32], 42);
        let json = r.to_json();
        assert_eq!(EnrollmentRecord::from_json(&json).unwrap(), r);
        let edited = json.replace("\"created_us\":42", "\"created_us\":43");
        assert_ne!(edited, json);
        assert!(EnrollmentRecord::from_json(&edited).is_err());
        let other = EnrollmentRecord::sign([3u8; 16], &[5u8; 32], 42);
        let swapped = json.replace(
            &data_encoding::HEXLOWER.encode(&r.device_key()),
            &data_encoding::HEXLOWER.encode(&other.device_key()),
        );
        assert!(EnrollmentRecord::from_json(&swapped).is_err());
    }
}
