//! The audit ledger: every open, seal, ack, rotation, pause/resume, policy change,
//! erase and subject-access read, chained and encrypted like the capture log.
//!
//! Entries are sealed with a key derived from the user's anchor MAC key (so they outlive
//! data-key epochs and die with the KEK at erase), chained by tag, and anchored by a
//! MAC'd head so deleting or editing an entry is detected. The head's third field (the
//! event counter in a log head) carries the generation of the user's stored state, so
//! the state and the ledger vouch for each other (src/vault/state.rs).

use std::sync::Mutex;

use crate::aead::TAG_LEN;
use crate::error::{Error, Result};
use crate::log::anchor::{AnchorKey, Head};
use crate::log::record::{tag_of, RecordBinding, RecordHeader, RecordKind};
use crate::log::store::{record_key, record_keys, seq_of_key, HEAD_KEY};
use capvault_format::secret::Key32;

pub use capvault_format::AuditEntry;

/// Ledger entries reuse the record layout with this purpose string.
const LEDGER_PURPOSE: &str = "capvault-ledger";

pub(crate) struct Ledger {
    tree: sled::Tree,
    binding: RecordBinding,
    anchors: AnchorKey,
    key: Key32,
    head: Mutex<Head>,
}

/// The key of the ledger's head anchor.
pub(crate) fn anchor_key(mac_key: &Key32, vault_id: &[u8; 16], user: &str) -> AnchorKey {
    AnchorKey::with_label(b"capvault-ledger-anchor-v1", mac_key, vault_id, user)
}

fn derive_ledger_key(mac_key: &Key32) -> Key32 {
    crate::keys::hierarchy::derive_subkey(mac_key, b"capvault-ledger-key-v1", b"ledger")
}

/// The authenticated plaintext of ledger entry `seq`, decoded; it must name its own
/// position.
pub(crate) fn decode_entry(seq: u64, plain: &[u8]) -> Result<AuditEntry> {
    let entry: AuditEntry = serde_json::from_slice(plain)
        .map_err(|_| Error::tampered(format!("audit ledger entry {seq} does not decode")))?;
    if entry.seq != seq {
        return Err(Error::tampered(format!(
            "audit ledger entry {seq} names another position"
        )));
    }
    Ok(entry)
}

/// The plaintext [`Ledger::record`] seals for `entry`.
pub(crate) fn encode_entry(entry: &AuditEntry) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(serde_json::to_vec(entry).expect("entry serializes"))
}

impl Ledger {
    /// Opens the ledger. With `require_head` (stored state authenticated) a missing head
    /// means the ledger was wiped.
    pub(crate) fn open(
        tree: sled::Tree,
        mac_key: &Key32,
        vault_id: &[u8; 16],
        user: &str,
        require_head: bool,
    ) -> Result<Ledger> {
        let mut label_user = String::from(user);
        label_user.push_str("\u{0}ledger");
        let binding = RecordBinding::new(vault_id, &label_user);
        let anchors = anchor_key(mac_key, vault_id, user);
        let head = match tree.get(HEAD_KEY)? {
            Some(h) => anchors.open_head(&h)?,
            None if require_head => {
                return Err(Error::tampered(
                    "the audit ledger has no head anchor (the ledger was wiped)",
                ))
            }
            None => Head::default(),
        };
        let last = tree.range(record_keys()).next_back().transpose()?;
        let consistent = match &last {
            None => head.last_seq == 0,
            Some((k, v)) => seq_of_key(k) == Some(head.last_seq) && tag_of(v) == head.last_tag,
        };
        if !consistent {
            return Err(Error::tampered("the audit ledger does not match its head anchor (entries were removed or rolled back)"));
        }
        Ok(Ledger {
            tree,
            binding,
            anchors,
            key: derive_ledger_key(mac_key),
            head: Mutex::new(head),
        })
    }

    /// Appends an entry (durable at the next vault flush).
    pub(crate) fn record(&self, ts_us: i64, action: &str, detail: &str) -> Result<u64> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let seq = head.last_seq + 1;
        let entry = AuditEntry {
            seq,
            ts_us,
            action: action.into(),
            detail: detail.into(),
        };
        let plain = encode_entry(&entry);
        let header = RecordHeader {
            kind: RecordKind::Frame,
            flags: 0,
            epoch: 0,
            policy_version: 0,
            created_us: ts_us,
        };
        let value = self.binding.seal(
            seq,
            &header,
            &head.last_tag,
            LEDGER_PURPOSE,
            &self.key,
            &plain,
        );
        let new_head = Head {
            last_seq: seq,
            last_tag: tag_of(&value),
            next_event_seq: head.next_event_seq,
            state_gen: 0,
        };
        let mut batch = sled::Batch::default();
        batch.insert(&record_key(seq), value);
        batch.insert(HEAD_KEY, self.anchors.seal_head(&new_head));
        self.tree.apply_batch(batch)?;
        *head = new_head;
        Ok(seq)
    }

    /// Entries with `seq > after`, checking the whole chain from the first entry.
    pub(crate) fn read_after(&self, after: u64) -> Result<Vec<AuditEntry>> {
        let head = *self.head.lock().unwrap_or_else(|p| p.into_inner());
        let mut prev = [0u8; TAG_LEN];
        let mut expect = 1;
        let mut out = Vec::new();
        for item in self.tree.range(record_keys()) {
            let (k, v) = item?;
            let seq = seq_of_key(&k).ok_or_else(|| Error::tampered("a ledger key is malformed"))?;
            if seq != expect {
                return Err(Error::tampered(format!(
                    "audit ledger entry {expect} is missing"
                )));
            }
            let plain = self
                .binding
                .open(seq, &v, &prev, LEDGER_PURPOSE, &self.key)
                .map_err(|_| {
                    Error::tampered(format!("audit ledger entry {seq} does not authenticate"))
                })?;
            let entry = decode_entry(seq, &plain)?;
            prev = tag_of(&v);
            expect += 1;
            if seq > after {
                out.push(entry);
            }
        }
        if expect != head.last_seq + 1 || prev != head.last_tag {
            return Err(Error::tampered(
                "the audit ledger does not end at its head anchor",
            ));
        }
        Ok(out)
    }

    /// The generation of the stored state this ledger names (the third field of a
    /// ledger head, `next_event_seq` in a log head; `state_gen` is a log head's own).
    #[allow(clippy::misnamed_getters)]
    pub(crate) fn state_gen(&self) -> u64 {
        self.lock_head().next_event_seq
    }

    /// The generation of the stored state the ledger's stored head names, read from the
    /// tree, for `verify`.
    pub(crate) fn stored_state_gen(&self) -> Result<u64> {
        let stored = self.tree.get(HEAD_KEY)?.ok_or_else(|| {
            Error::tampered("the audit ledger has no head anchor (the ledger was wiped)")
        })?;
        Ok(self.anchors.open_head(&stored)?.next_event_seq)
    }

    /// The last entry the ledger's stored head names, read from the tree, for `verify`.
    pub(crate) fn stored_last_seq(&self) -> Result<u64> {
        let stored = self.tree.get(HEAD_KEY)?.ok_or_else(|| {
            Error::tampered("the audit ledger has no head anchor (the ledger was wiped)")
        })?;
        Ok(self.anchors.open_head(&stored)?.last_seq)
    }

    pub(crate) fn lock_head(&self) -> std::sync::MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn seal_head(&self, head: &Head) -> Vec<u8> {
        self.anchors.seal_head(head)
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).last_seq
    }
}
