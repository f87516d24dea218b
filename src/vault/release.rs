//! Release: sealing the oldest unreleased records into a bundle, acknowledging it, and
//! pruning what was acknowledged (destroying data keys that have nothing left to read).
//! Also the data subject's own read (subject access) and erasure.
//!
//! State in the user's state tree: the next bundle sequence number, the digest of the
//! last acknowledged bundle, the ledger position released so far, and the pending
//! (offered, unacknowledged) bundle. Ack is ordered so a crash at any step is completed
//! on the next seal or open: `acking` is written, records are pruned, then the state
//! advances in one batch.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{now_us, Inner, Vault};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::keys::hierarchy::KeyHierarchy;
use crate::log::assemble::Assembler;
use crate::options::VaultOptions;
use capvault_format::DeviceKey;
use capvault_format::SeqEvent;
use capvault_format::{bundle_id, verify_receipt, ReceiptKey, Recipient, SealedBundle};
use capvault_format::{seal_bundle, BundleInput};

const RELEASE_STATE: &[u8] = b"release";
/// Room kept in a bundle for its header, HPKE encapsulation, tag, signature and ledger.
const BUNDLE_OVERHEAD: usize = 4096;

/// The release cursor of one user.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ReleaseState {
    /// Sequence number of the next new bundle (the first is 1).
    next_bundle_seq: u64,
    /// Digest of the last acknowledged bundle (zeros before the first).
    prev_digest: [u8; 32],
    /// Audit ledger entries up to here were released.
    ledger_released: u64,
    /// The bundle offered and not yet acknowledged.
    pending: Option<Pending>,
    /// Set while an acknowledgement is being applied.
    acking: Option<[u8; 32]>,
    /// Id of the last acknowledged bundle (a repeated ack of it is harmless).
    last_acked_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    bundle_seq: u64,
    first_record: u64,
    last_record: u64,
    ledger_through: u64,
    /// Digests of every sealing of this range (each retry re-seals with fresh HPKE keys).
    digests: Vec<[u8; 32]>,
}

impl Inner {
    /// Crypto-shreds this user while the handle stays open (the hand-off's erase): keys
    /// first, then data; afterwards every call on the handle fails with `Erased`.
    pub(crate) fn erase_in_place(&self) -> Result<()> {
        let p = self.quiesce()?;
        let _g = self.release_lock();
        {
            // Marked erased under the key lock: from here on every use of the keys on this
            // handle fails with `Erased` instead of finding them gone.
            let mut keys = self.keys_mut()?;
            self.mark_erased();
            keys.erase(&|| self.durable_flush())?;
        }
        for tree in [&self.trees.log, &self.trees.state, &self.trees.ledger] {
            tree.clear()?;
        }
        self.durable_flush()?;
        drop(p);
        Ok(())
    }

    fn release_state(&self) -> Result<ReleaseState> {
        match self.trees.state.get(RELEASE_STATE)? {
            None => Ok(ReleaseState {
                next_bundle_seq: 1,
                ..ReleaseState::default()
            }),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|_| Error::tampered("the release state does not parse")),
        }
    }

    fn save_release_state(&self, s: &ReleaseState) -> Result<()> {
        self.trees
            .state
            .insert(RELEASE_STATE, serde_json::to_vec(s).expect("serializes"))?;
        Ok(())
    }

    fn release_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.release.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finishes an acknowledgement interrupted by a crash.
    fn complete_ack(&self, state: &mut ReleaseState) -> Result<()> {
        let (Some(digest), Some(p)) = (state.acking, state.pending.clone()) else {
            if state.acking.is_some() {
                state.acking = None;
                self.save_release_state(state)?;
            }
            return Ok(());
        };
        let emptied = self.log.prune_through(p.last_record)?;
        failpoint::hit("ack:after-prune")?;
        state.pending = None;
        state.acking = None;
        state.next_bundle_seq = p.bundle_seq + 1;
        state.prev_digest = digest;
        state.ledger_released = state.ledger_released.max(p.ledger_through);
        state.last_acked_id = Some(bundle_id(&digest));
        self.save_release_state(state)?;
        self.durable_flush()?;
        if !emptied.is_empty() {
            self.retire_empty_epochs()?;
        }
        Ok(())
    }

    /// Finishes interrupted work found at open.
    pub(crate) fn recover_release(&self) -> Result<()> {
        {
            let _g = self.release_lock();
            let mut state = self.release_state()?;
            self.complete_ack(&mut state)?;
        }
        // A crash between a prune and the retirement of emptied epochs leaves their keys;
        // destroy them now.
        self.retire_empty_epochs().map(|_| ())
    }

    /// Drops a pending bundle whose records were evicted (retention or budget).
    pub(crate) fn invalidate_pending_through(&self, last_evicted: u64) -> Result<()> {
        let mut state = self.release_state()?;
        if let Some(p) = &state.pending {
            if p.first_record <= last_evicted {
                // The collector sees the skipped sequence number as a gap.
                state.next_bundle_seq = p.bundle_seq + 1;
                state.pending = None;
                self.save_release_state(&state)?;
            }
        }
        Ok(())
    }

    pub(crate) fn seal_next(
        &self,
        recipient: &Recipient,
        max_bytes: usize,
    ) -> Result<Option<SealedBundle>> {
        if max_bytes == 0 {
            return Err(Error::invalid("max_bytes must be at least 1"));
        }
        // Everything appended so far is stored first (appends continue meanwhile).
        self.flush()?;
        let _g = self.release_lock();
        let mut state = self.release_state()?;
        self.complete_ack(&mut state)?;
        let keys = self.keys()?;
        let (first, last, events, bundle_seq) = match &state.pending {
            Some(p) => {
                let (events, last) = self.collect(&keys, p.last_record, usize::MAX)?;
                if last != p.last_record {
                    return Err(Error::tampered(
                        "the records of the pending bundle are no longer all there",
                    ));
                }
                (p.first_record, p.last_record, events, p.bundle_seq)
            }
            None => {
                let head = self.log.lock().head.last_seq;
                let (events, last) = self.collect(&keys, head, max_bytes)?;
                if events.is_empty() {
                    return Ok(None);
                }
                (
                    self.log.lock().tail.first_seq,
                    last,
                    events,
                    state.next_bundle_seq,
                )
            }
        };
        drop(keys);
        let ledger_through = match &state.pending {
            Some(p) => p.ledger_through,
            None => self.ledger.last_seq(),
        };
        let audit: Vec<_> = self
            .ledger
            .read_after(state.ledger_released)?
            .into_iter()
            .filter(|e| e.seq <= ledger_through)
            .collect();
        let device = DeviceKey::from_seed(&self.device_seed)?;
        let bundle = seal_bundle(
            &BundleInput {
                device_id: self.device_id,
                stream_id: [0; 16],
                records_lost: 0,
                bundle_seq,
                first_record: first,
                last_record: last,
                prev_digest: state.prev_digest,
                created_us: now_us(),
                purpose: &self.opts.policy.purpose,
                user: &self.user,
                events: &events,
                audit: &audit,
            },
            recipient,
            &device,
        )?;
        let pending = state.pending.get_or_insert_with(|| Pending {
            bundle_seq,
            first_record: first,
            last_record: last,
            ledger_through,
            digests: Vec::new(),
        });
        // Keep the last few sealings of the range: an ack may name any of them.
        pending.digests.push(*bundle.digest());
        if pending.digests.len() > 16 {
            pending.digests.remove(0);
        }
        self.save_release_state(&state)?;
        self.durable_flush()?;
        drop(_g);
        self.audit(
            "seal",
            &format!(
                "bundle {bundle_seq} ({}) records {first}..={last}, {} events",
                bundle.id(),
                events.len()
            ),
        )?;
        Ok(Some(bundle))
    }

    /// Decrypts records from the tail up to `to`, taking whole records while the
    /// encoded events fit in `max_bytes` (less room for the bundle's own overhead), and
    /// always at least one whole event: a screenshot larger than `max_bytes` goes alone.
    /// Returns the events and the last record taken.
    fn collect(
        &self,
        keys: &KeyHierarchy,
        to: u64,
        max_bytes: usize,
    ) -> Result<(Vec<SeqEvent>, u64)> {
        let budget = max_bytes.saturating_sub(BUNDLE_OVERHEAD);
        let mut asm = Assembler::default();
        let mut events = Vec::new();
        let mut total = 0usize;
        let mut last = 0u64;
        let mut run_bytes = 0usize;
        self.log.read(keys, &|v| self.purpose_of(v), to, &mut |r| {
            run_bytes += r.plaintext.len();
            let mut new = Vec::new();
            asm.feed(&r.header, r.plaintext, &mut new)?;
            if !asm.at_boundary() {
                return Ok(true);
            }
            // Frame plaintext is the events' own encoding plus an 8-byte prefix; the
            // bundle adds each event's sequence number (a varint of up to 10 bytes).
            let add = run_bytes.saturating_sub(8) + new.len() * 10;
            run_bytes = 0;
            if !events.is_empty() && total + add > budget {
                return Ok(false);
            }
            total += add;
            events.extend(new);
            last = r.seq;
            Ok(true)
        })?;
        Ok((events, last))
    }

    pub(crate) fn ack(&self, id: &str, receipt: Option<&[u8]>) -> Result<()> {
        self.check_live()?;
        let _g = self.release_lock();
        let mut state = self.release_state()?;
        self.complete_ack(&mut state)?;
        if state.last_acked_id.as_deref() == Some(id) {
            return Ok(());
        }
        let Some(p) = &state.pending else {
            return Err(Error::NotFound(format!(
                "no outstanding bundle has id {id}"
            )));
        };
        let Some(digest) = p.digests.iter().find(|d| bundle_id(d) == id).copied() else {
            return Err(Error::NotFound(format!(
                "no outstanding bundle has id {id}"
            )));
        };
        if let Some(key) = &self.opts.collector_receipt_key {
            let key: ReceiptKey = key.parse()?;
            let receipt = receipt.ok_or_else(|| {
                Error::invalid(
                    "this vault requires the collector's receipt to acknowledge a bundle",
                )
            })?;
            verify_receipt(&key, &digest, receipt)?;
        }
        let (seq, first, last) = (p.bundle_seq, p.first_record, p.last_record);
        state.acking = Some(digest);
        self.save_release_state(&state)?;
        failpoint::hit("ack:after-acking")?;
        self.complete_ack(&mut state)?;
        drop(_g);
        self.audit(
            "ack",
            &format!("bundle {seq} ({id}) records {first}..={last} pruned"),
        )?;
        self.flush()
    }
}

impl Vault {
    /// Seals the oldest unreleased records (about `max_bytes` of events, at least one
    /// whole event) into a bundle for `recipient`, signed by this device. Returns `None`
    /// when nothing is waiting. Until the bundle is acknowledged, the same range is
    /// offered again under the same bundle sequence number.
    pub fn seal_next(
        &self,
        recipient: &Recipient,
        max_bytes: usize,
    ) -> Result<Option<SealedBundle>> {
        self.inner().seal_next(recipient, max_bytes)
    }

    /// Acknowledges the bundle `id`: its records are pruned and data keys with nothing
    /// left to read are destroyed. With a collector receipt key configured, `receipt`
    /// must be the collector's signature over the bundle digest. Acknowledging the last
    /// acknowledged bundle again is harmless; an unknown id is [`Error::NotFound`].
    pub fn ack(&self, id: &str, receipt: Option<&[u8]>) -> Result<()> {
        self.inner().ack(id, receipt)
    }

    /// Subject access: the data subject reads their own stored events. Every call is
    /// recorded in the audit ledger.
    pub fn subject_access(&self) -> Result<Vec<SeqEvent>> {
        let inner = self.inner();
        let events = {
            let _p = inner.quiesce()?;
            inner.read_events(u64::MAX)?
        };
        inner.audit(
            "subject-access",
            &format!("{} events read by the data subject", events.len()),
        )?;
        inner.flush()?;
        Ok(events)
    }

    /// Crypto-shreds `user` in the vault at `dir`: the KEK entries are deleted from the
    /// keychain and the user's records, keys, state and ledger are removed. Afterwards
    /// nothing of that user can be read and opening gives [`Error::Erased`].
    pub fn erase(dir: impl AsRef<Path>, user: &str, options: VaultOptions) -> Result<()> {
        let vault = Vault::open(dir, user, options)?;
        vault.erase_open()
    }

    /// Crypto-shreds the user of this open vault (see [`Vault::erase`]).
    pub fn erase_open(mut self) -> Result<()> {
        self.inner().erase_in_place()?;
        self.shutdown()
    }
}
