//! Vault options: everything a caller can set when opening a vault. The same struct is
//! what the C API's `options_json` deserializes into (unknown keys are rejected).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::keystore::KeyStoreKind;
use crate::policy::Policy;
use crate::upload::UploadOptions;

/// Options for [`crate::Vault::open`]. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct VaultOptions {
    /// Which OS keychain holds this vault's keys (`auto`, `secret-service`, `keyutils`,
    /// `macos-keychain`, `windows-credential`).
    pub keystore: KeyStoreKind,
    /// A frame of small events is sealed once it holds this many bytes (default 65536).
    pub frame_max_bytes: usize,
    /// ... or once its oldest event is this old, in milliseconds (default 100).
    pub frame_max_ms: u64,
    /// Large payloads (screenshots, big custom events) are stored in chunks of this
    /// size (default 65536).
    pub chunk_bytes: usize,
    /// Largest accepted screenshot or custom payload, in bytes (default 64 MiB).
    pub max_payload_bytes: usize,
    /// When true (default), `flush` fsyncs the database files and directory, so flushed
    /// data survives power loss. When false it survives a process crash only.
    pub fsync: bool,
    /// Hours after which a new data-key epoch starts automatically (default 24; 0 = only
    /// on demand).
    pub dek_epoch_hours: u64,
    /// Memory the storage engine may use as cache, in bytes (default 16 MiB).
    pub cache_bytes: u64,
    /// Collector receipt key (`cvreceipt-ed25519-1...`). When set, `ack` prunes only with a
    /// valid receipt signed by that collector. The vault keeps the key: later opens
    /// without one still require its receipts; another key replaces it and `"none"`
    /// removes it (both recorded in the audit ledger). After open this holds the key in
    /// force.
    pub collector_receipt_key: Option<String>,
    /// Privacy policy enforced by the vault.
    pub policy: Policy,
    /// The built-in uploader (feature `upload`): when set, the open vault enrolls with the
    /// collector and uploads its bundles in the background. Requires
    /// `collector_receipt_key`.
    pub upload: Option<UploadOptions>,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            keystore: KeyStoreKind::Auto,
            frame_max_bytes: 64 * 1024,
            frame_max_ms: 100,
            chunk_bytes: 64 * 1024,
            max_payload_bytes: 64 * 1024 * 1024,
            fsync: true,
            dek_epoch_hours: 24,
            cache_bytes: 16 * 1024 * 1024,
            collector_receipt_key: None,
            policy: Policy::default(),
            upload: None,
        }
    }
}

impl VaultOptions {
    /// Parses options from JSON (the C API's `options_json`). Unknown keys and wrong
    /// types are errors that name the key.
    pub fn from_json(json: &str) -> Result<Self> {
        let opts: VaultOptions =
            serde_json::from_str(json).map_err(|e| Error::invalid(format!("options_json: {e}")))?;
        opts.validate()?;
        Ok(opts)
    }

    /// Checks ranges that types alone cannot express.
    pub fn validate(&self) -> Result<()> {
        if !(256..=16 * 1024 * 1024).contains(&self.frame_max_bytes) {
            return Err(Error::invalid(
                "frame_max_bytes must be between 256 and 16777216",
            ));
        }
        if !(1..=60_000).contains(&self.frame_max_ms) {
            return Err(Error::invalid("frame_max_ms must be between 1 and 60000"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.chunk_bytes) {
            return Err(Error::invalid(
                "chunk_bytes must be between 1024 and 16777216",
            ));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 1 << 30 {
            return Err(Error::invalid(
                "max_payload_bytes must be between 1 and 1073741824",
            ));
        }
        if self.cache_bytes < 1024 * 1024 {
            return Err(Error::invalid("cache_bytes must be at least 1048576"));
        }
        if let Some(upload) = &self.upload {
            upload.validate()?;
            // "none" removes the vault's key: nothing would verify the receipts.
            if self
                .collector_receipt_key
                .as_deref()
                .is_none_or(|k| k == crate::vault::NO_RECEIPT_KEY)
            {
                return Err(Error::invalid(
                    "upload needs collector_receipt_key: the vault prunes uploaded bundles only against the collector's signed receipt",
                ));
            }
            if cfg!(not(feature = "upload")) {
                return Err(Error::invalid(
                    "this build of capvault has no built-in uploader (feature `upload`); remove `upload` or use seal_next and ack",
                ));
            }
            // A frame is sealed whole: one larger than a bundle a collector takes would
            // make a bundle it refuses for good.
            if self.frame_max_bytes > upload.event_room() {
                return Err(Error::invalid(format!(
                    "frame_max_bytes {} is more than fits in an upload bundle of {} bytes ({} bytes for events; the larger of upload.max_bundle_bytes and a collector's default --max-bundle-bytes)",
                    self.frame_max_bytes,
                    upload.bundle_limit(),
                    upload.event_room()
                )));
            }
        }
        self.policy.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_is_the_defaults() {
        assert_eq!(
            VaultOptions::from_json("{}").unwrap(),
            VaultOptions::default()
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = VaultOptions::from_json(r#"{"frame_max_byte": 10}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame_max_byte"), "{e}");
        let e = VaultOptions::from_json(r#"{"fsync": "yes"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type"), "{e}");
        let e = VaultOptions::from_json(r#"{"keystore": "file"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("file"), "{e}");
        let e = VaultOptions::from_json(r#"{"frame_max_bytes": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame_max_bytes"), "{e}");
    }

    #[test]
    fn keystore_names_parse() {
        let o = VaultOptions::from_json(r#"{"keystore": "keyutils"}"#).unwrap();
        assert_eq!(o.keystore, KeyStoreKind::Keyutils);
        let o = VaultOptions::from_json(r#"{"keystore": "secret-service"}"#).unwrap();
        assert_eq!(o.keystore, KeyStoreKind::SecretService);
    }
}
