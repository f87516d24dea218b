//! Audit ledger entries as they travel in bundles. The ledger itself lives in the vault.

use serde::{Deserialize, Serialize};

/// One ledger entry. It says what was done and when, never captured content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Ledger sequence number (increases by one per entry).
    pub seq: u64,
    /// When it happened, microseconds since the Unix epoch.
    pub ts_us: i64,
    /// What happened, for example "open", "seal", "ack", "rotate-dek", "pause".
    pub action: String,
    /// Details without captured content, for example "epoch 3" or "bundle 7".
    pub detail: String,
}
