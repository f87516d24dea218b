//! Enrollment records: a device (vault) proves possession of its Ed25519 key once, and
//! collectors pin that key to the device id (SPEC 12.3). Specified in docs/FORMAT.md,
//! "Enrollment records".
//!
//! ```text
//! {"format":"capvault-enrollment-1","device_id":HEX16,"device_key":HEX32,
//!  "created_us":INT,"signature":HEX64}
//! signature = Ed25519(device key, ENROLL_CONTEXT || device_id || device_key || created_us:i64be)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bundle::BundleHeader;
use crate::device::{verify_ed25519, DeviceKey};
use crate::error::{Error, Result};
use crate::events::TimestampUs;

/// The `format` field of every enrollment record.
pub(crate) const ENROLLMENT_FORMAT: &str = "capvault-enrollment-1";
/// Domain separation for the enrollment signature (ends in a NUL byte).
pub(crate) const ENROLL_CONTEXT: &[u8] = b"capvault enrollment v1\0";

/// A device's signed statement of its id and public key. Holding one proves nothing
/// about who may enroll (that is the collector's enrollment token); it proves that the
/// holder of the device key made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrollmentRecord {
    device_id: [u8; 16],
    device_key: [u8; 32],
    created_us: TimestampUs,
    signature: [u8; 64],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Json {
    format: String,
    device_id: String,
    device_key: String,
    created_us: i64,
    signature: String,
}

fn signed_message(device_id: &[u8; 16], device_key: &[u8; 32], created_us: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENROLL_CONTEXT.len() + 16 + 32 + 8);
    m.extend_from_slice(ENROLL_CONTEXT);
    m.extend_from_slice(device_id);
    m.extend_from_slice(device_key);
    m.extend_from_slice(&created_us.to_be_bytes());
    m
}

fn hex_field<const N: usize>(name: &str, text: &str) -> Result<[u8; N]> {
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|_| Error::invalid(format!("the enrollment record's {name} is not hex")))?;
    bytes.try_into().map_err(|_| {
        Error::invalid(format!(
            "the enrollment record's {name} is not {N} bytes long"
        ))
    })
}

impl EnrollmentRecord {
    /// The record of the device with this id and key, made now.
    pub fn new(device_id: [u8; 16], device: &DeviceKey, created_us: TimestampUs) -> Self {
        let device_key = device.public_key();
        let signature = device.sign(&signed_message(&device_id, &device_key, created_us));
        EnrollmentRecord {
            device_id,
            device_key,
            created_us,
            signature,
        }
    }

    /// Parses a record and verifies its signature.
    ///
    /// Errors: not JSON, unknown or missing fields, another format, wrong lengths ->
    /// `InvalidArgument`; a signature that does not verify -> `Tampered`.
    pub fn from_json(text: &str) -> Result<Self> {
        let j: Json = serde_json::from_str(text.trim()).map_err(|e| {
            Error::invalid(format!("this is not a capvault enrollment record: {e}"))
        })?;
        if j.format != ENROLLMENT_FORMAT {
            return Err(Error::invalid(format!(
                "unsupported enrollment record format {:?}; this capvault reads {ENROLLMENT_FORMAT}",
                j.format
            )));
        }
        let record = EnrollmentRecord {
            device_id: hex_field("device_id", &j.device_id)?,
            device_key: hex_field("device_key", &j.device_key)?,
            created_us: j.created_us,
            signature: hex_field("signature", &j.signature)?,
        };
        let msg = signed_message(&record.device_id, &record.device_key, record.created_us);
        verify_ed25519(&record.device_key, &msg, &record.signature).map_err(|_| {
            Error::tampered(
                "the enrollment record's signature does not verify: it was modified or forged",
            )
        })?;
        Ok(record)
    }

    /// The record as one line of JSON (fields in the documented order).
    pub fn to_json(&self) -> String {
        let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        serde_json::to_string(&Json {
            format: ENROLLMENT_FORMAT.into(),
            device_id: hex(&self.device_id),
            device_key: hex(&self.device_key),
            created_us: self.created_us,
            signature: hex(&self.signature),
        })
        .expect("serializes")
    }

    /// The device id.
    pub fn device_id(&self) -> [u8; 16] {
        self.device_id
    }
    /// The device id as lower-case hex (as bundle reports print it).
    pub fn device_id_hex(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.device_id)
    }
    /// The device's Ed25519 public key.
    pub fn device_key(&self) -> [u8; 32] {
        self.device_key
    }
    /// When the record was made, microseconds since the Unix epoch.
    pub fn created_us(&self) -> TimestampUs {
        self.created_us
    }
}

/// What [`DevicePins::check`] says of a bundle's signer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinVerdict {
    /// The device id is pinned and the bundle is signed by its key.
    Pinned,
    /// The device id is pinned to another key: the bundle is not from that device.
    WrongKey,
    /// No pin for this device id.
    Unenrolled,
}

/// Device keys pinned from enrollment records: the collector's answer to "which key
/// may sign bundles for this device id". The caller supplies and keeps it (files given
/// to `capvault open --devices`, or the collector service's device table).
#[derive(Clone, Debug, Default)]
pub struct DevicePins {
    keys: BTreeMap<[u8; 16], [u8; 32]>,
}

impl DevicePins {
    /// No pins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins the key of a verified enrollment record. Pinning the same key again is
    /// harmless; another key for an already pinned device id is `InvalidArgument`
    /// (two records disagree: at most one of them is the device's).
    pub fn add(&mut self, record: &EnrollmentRecord) -> Result<()> {
        self.pin(record.device_id, record.device_key)
    }

    /// Pins `key` for `device_id` directly (for callers that keep verified pins in
    /// their own store). Same rule as [`DevicePins::add`].
    pub fn pin(&mut self, device_id: [u8; 16], key: [u8; 32]) -> Result<()> {
        match self.keys.get(&device_id) {
            Some(k) if *k != key => Err(Error::invalid(format!(
                "device {} has two enrollment records with different keys",
                data_encoding::HEXLOWER.encode(&device_id)
            ))),
            _ => {
                self.keys.insert(device_id, key);
                Ok(())
            }
        }
    }

    /// True when nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Number of pinned devices.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The pinned key of a device.
    pub fn key_of(&self, device_id: &[u8; 16]) -> Option<&[u8; 32]> {
        self.keys.get(device_id)
    }

    /// Checks a bundle's device id and signing key against the pins.
    pub fn check(&self, header: &BundleHeader) -> PinVerdict {
        match self.keys.get(header.device_id()) {
            None => PinVerdict::Unenrolled,
            Some(k) if k == header.device_key() => PinVerdict::Pinned,
            Some(_) => PinVerdict::WrongKey,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Key32;

    fn device(seed: u8) -> DeviceKey {
        let mut s = [seed; 32];
        DeviceKey::from_seed(&Key32::from_slice_zeroizing(&mut s).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_and_every_edit_is_rejected() {
        let r = EnrollmentRecord::new([7; 16], &device(1), 1_764_000_000_000_000);
        let json = r.to_json();
        assert_eq!(EnrollmentRecord::from_json(&json).unwrap(), r);
        assert!(json.starts_with(r#"{"format":"capvault-enrollment-1","device_id":"0707"#));
        // Another key claiming the device id: signature made by the other key over the
        // edited record is valid for that key, so the record verifies; pins catch it.
        let other = EnrollmentRecord::new([7; 16], &device(2), 1_764_000_000_000_000);
        let mut pins = DevicePins::new();
        pins.add(&r).unwrap();
        pins.add(&r).unwrap();
        assert!(pins.add(&other).is_err());
        // Swapping the key (or id, or time) without re-signing breaks the signature.
        let tampered = json.replace(
            &data_encoding::HEXLOWER.encode(&r.device_key()),
            &data_encoding::HEXLOWER.encode(&other.device_key()),
        );
        assert!(matches!(
            EnrollmentRecord::from_json(&tampered),
            Err(Error::Tampered(_))
        ));
        let tampered = json.replace("0707", "0807");
        assert!(matches!(
            EnrollmentRecord::from_json(&tampered),
            Err(Error::Tampered(_))
        ));
        let tampered = json.replace("1764000000000000", "1764000000000001");
        assert!(matches!(
            EnrollmentRecord::from_json(&tampered),
            Err(Error::Tampered(_))
        ));
        for bad in [
            "",
            "{}",
            "not json",
            &json.replace("capvault-enrollment-1", "capvault-enrollment-9"),
            &json.replace(r#""signature""#, r#""extra":1,"signature""#),
        ] {
            assert!(
                matches!(
                    EnrollmentRecord::from_json(bad),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
    }
}
