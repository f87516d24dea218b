//! Release: sealing the oldest unreleased records into a bundle, keeping it in the
//! outbox until it is acknowledged, acknowledging it, and pruning what was acknowledged
//! (destroying data keys that have nothing left to read). Also the data subject's own
//! read (subject access) and erasure.
//!
//! State in the user's state tree (docs/FORMAT.md, "Release state and outbox"):
//! `release` (JSON, [`ReleaseState`]): the user's stream id, the next bundle sequence
//! number, the digest of the last acknowledged bundle, the last sealed record, the
//! records removed unreleased since then, the ledger position released so far and the
//! pending (sealed, unacknowledged) bundle. The pending bundle's bytes are in the outbox
//! file ([`super::outbox`]), written before the state names the bundle and removed
//! after the state stops naming it (vaults of earlier versions kept them in the state
//! tree under `outbox`, which is still read).
//!
//! A sealed bundle is final: every `seal_next` until its acknowledgement returns the
//! same bytes; eviction, retention, rotation and policy changes never touch it. Ack is
//! ordered so a crash at any step is completed on the next seal, ack or open: `acking`
//! is written, records are pruned, then the state advances, and once that is durable the
//! outbox file is removed.

use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{now_us, Inner, Vault};
use crate::aead;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::keys::hierarchy::KeyHierarchy;
use crate::log::assemble::Assembler;
use crate::options::VaultOptions;
use capvault_format::secret::Key32;
use capvault_format::secret::{push_zeroizing, random_array};
use capvault_format::DeviceKey;
use capvault_format::SeqEvent;
use capvault_format::{bundle_id, verify_receipt, ReceiptKey, Recipient, SealedBundle};
use capvault_format::{seal_bundle, BundleInput};

pub(crate) const RELEASE_STATE: &[u8] = b"release";
use super::state::{Put, OUTBOX};

/// The outbox key of a user (see [`Inner::seal_outbox`]).
pub(crate) fn derive_outbox_key(mac_key: &Key32) -> Key32 {
    crate::keys::hierarchy::derive_subkey(mac_key, b"capvault-outbox-key-v1", b"outbox")
}
/// Version of the stored release state (1: before streams and the outbox).
const RELEASE_STATE_VERSION: u32 = 2;
/// Room kept in a bundle for its header, HPKE encapsulation, tag and signature.
pub(crate) const BUNDLE_OVERHEAD: usize = 4096;
/// Most bytes of audit entries one bundle carries (and at most half its size); the
/// entries beyond wait for the next bundle. With [`BUNDLE_OVERHEAD`], what a bundle
/// holds besides its events: a device keeps at most [`crate::audit::LEDGER_KEEP`]
/// released entries, about half of this, so one bundle usually carries every entry due.
pub(crate) const AUDIT_ROOM: usize = 1024 * 1024;

/// An upper bound of an audit entry's encoded size: two varints of at most 10 bytes,
/// two strings with length prefixes of at most 5.
fn audit_entry_size(e: &capvault_format::AuditEntry) -> usize {
    30 + e.action.len() + e.detail.len()
}

/// The release cursor of one user: one chain (stream) per user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReleaseState {
    /// [`RELEASE_STATE_VERSION`].
    v: u32,
    /// The user's random stream id, made at the first seal (never derived from the name).
    stream_id: Option<[u8; 16]>,
    /// Sequence number of the next new bundle of the stream (the first is 1).
    next_bundle_seq: u64,
    /// Digest of the last acknowledged bundle (zeros before the first).
    prev_digest: [u8; 32],
    /// Audit ledger entries up to here were released.
    ledger_released: u64,
    /// Last record of the last sealed bundle (0 before the first).
    pub(crate) last_sealed_record: u64,
    /// Records after `last_sealed_record` removed unreleased (budget, retention) since;
    /// goes into the next bundle's header. Counted when they are removed, in the same
    /// transaction, independently of where the log's tail is.
    pub(crate) records_lost: u64,
    /// The bundle sealed and not yet acknowledged (its bytes are in the outbox).
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
    /// Digest of the bundle in the outbox.
    digest: [u8; 32],
    /// The recipient it is sealed to (text form).
    recipient: String,
}

/// What a version 1 release state held that is still needed.
#[derive(Deserialize)]
struct ReleaseStateV1 {
    #[serde(default)]
    ledger_released: u64,
    #[serde(default)]
    acking: Option<[u8; 32]>,
    #[serde(default)]
    pending: Option<PendingV1>,
}

#[derive(Deserialize)]
struct PendingV1 {
    last_record: u64,
}

/// A stored `release` value, decoded (nothing applied yet).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StoredRelease {
    /// A current (version 2) state.
    Current(Box<ReleaseState>),
    /// A version 1 state: carried over into a fresh stream after finishing an
    /// interrupted acknowledgement (prune through that record).
    V1 {
        ledger_released: u64,
        interrupted_ack_through: Option<u64>,
    },
}

impl StoredRelease {
    /// Decodes the stored bytes. Errors: anything that is not a state -> Tampered.
    pub(crate) fn decode(bytes: &[u8]) -> Result<StoredRelease> {
        let bad = || Error::tampered("the release state does not parse");
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| bad())?;
        if json.get("v").and_then(|v| v.as_u64()) == Some(RELEASE_STATE_VERSION as u64) {
            return Ok(StoredRelease::Current(Box::new(
                serde_json::from_value(json).map_err(|_| bad())?,
            )));
        }
        let old: ReleaseStateV1 = serde_json::from_value(json).map_err(|_| bad())?;
        Ok(StoredRelease::V1 {
            ledger_released: old.ledger_released,
            interrupted_ack_through: match (old.acking, old.pending) {
                (Some(_), Some(p)) => Some(p.last_record),
                _ => None,
            },
        })
    }
}

/// The bytes [`Inner::save_release_state`] stores for `s`.
pub(crate) fn encode_release_state(s: &ReleaseState) -> Vec<u8> {
    serde_json::to_vec(s).expect("serializes")
}

impl Inner {
    /// Crypto-shreds this user while the handle stays open (the hand-off's erase): keys
    /// first, then data (records, state with the outbox, ledger); afterwards every call on
    /// the handle fails with `Erased`.
    pub(crate) fn erase_in_place(&self) -> Result<()> {
        self.check_live()?;
        // Nothing of this user leaves the device from here on: a bundle being sent
        // stops at its next piece, and the erase waits until it has.
        self.send_gate.close_and_wait();
        let mut p = self.producer();
        // What was appended goes to the writer first, so nothing is written after the
        // trees are cleared. A flush that fails (a full disk, a log that refuses after a
        // failed write) does not keep the keys: the shred goes ahead, and from then on
        // the writer's retries fail on the erased keys.
        // Answered after the mark: erase may remove the whole directory next.
        if let Ok(wait) = self.request_flush(&mut p, super::writer::Answer::Marked) {
            let _ = wait.recv();
        }
        let _g = self.release_lock();
        let kek_max = {
            // Marked erased under the key lock: from here on every use of the keys on this
            // handle fails with `Erased` instead of finding them gone.
            let mut keys = self.keys_mut()?;
            self.mark_erased();
            // No mark is written after the shred deletes it, nor a synced anchor after
            // the log's tree is cleared (a flush on the writer may still be under way).
            self.mark.retire();
            self.log.retire();
            keys.shred()?
        };
        super::erase::note_erasing(self, kek_max);
        crate::failpoint::hit("erase:after-keychain")?;
        self.paused_until
            .store(0, std::sync::atomic::Ordering::Relaxed);
        // The keys are gone: what follows removes ciphertext. On a full disk these
        // writes may fail; removing the whole database (last user) still works.
        let removed = (|| -> Result<()> {
            KeyHierarchy::mark_erased(&self.trees.keys, kek_max)?;
            for tree in [&self.trees.log, &self.trees.state, &self.trees.ledger] {
                tree.clear()?;
            }
            self.store.durable_flush()
        })();
        // The record bytes go whatever happened above (they free the most space).
        let removed = removed.and(crate::log::segments::remove_user(&self.dir(), &self.user));
        let finished = super::erase::finish_in_place(self, kek_max);
        drop(p);
        match (removed, finished) {
            (_, Err(e)) => Err(e),
            (Err(e), Ok(whole)) if !whole => Err(e),
            _ => Ok(()),
        }
    }

    /// Before a bundle leaves: the KEK in use must still be in the keychain. Gone, the
    /// user was erased elsewhere (through a copy of the vault, which shares its keys):
    /// the erasure is carried out here too, as a KEK rotation would, and nothing is sent.
    /// A keychain that cannot be asked right now is no proof of an erasure.
    #[cfg_attr(not(feature = "upload"), allow(dead_code))]
    pub(crate) fn check_not_erased_elsewhere(&self) -> Result<()> {
        let present = self.keys()?.kek_in_keychain();
        if matches!(present, Ok(false)) {
            self.erase_in_place()?;
            return Err(Error::Erased);
        }
        Ok(())
    }

    /// The release state. A user without one starts a fresh stream whose records so
    /// far are all unreleased; a version 1 state (no stream, no outbox) is carried over
    /// into a fresh stream after finishing an interrupted acknowledgement.
    pub(crate) fn release_state(&self) -> Result<ReleaseState> {
        let fresh = |ledger_released| ReleaseState {
            v: RELEASE_STATE_VERSION,
            stream_id: None,
            next_bundle_seq: 1,
            prev_digest: [0; 32],
            ledger_released,
            last_sealed_record: self.log.lock().tail.first_seq.saturating_sub(1),
            records_lost: 0,
            pending: None,
            acking: None,
            last_acked_id: None,
        };
        let Some(v) = self.state.get(RELEASE_STATE)? else {
            return Ok(fresh(0));
        };
        match StoredRelease::decode(&v)? {
            StoredRelease::Current(state) => Ok(*state),
            StoredRelease::V1 {
                ledger_released,
                interrupted_ack_through,
            } => {
                if let Some(last) = interrupted_ack_through {
                    self.log.prune_through(last)?;
                }
                Ok(fresh(ledger_released))
            }
        }
    }

    /// Saves the state. With `outbox` `Some(bytes)`, the pending bundle goes into the
    /// outbox file first (durably), so the state never names a bundle that is not kept;
    /// with `Some(None)` the state tree's outbox entry of earlier versions goes with
    /// it (the file is removed by the caller once this state is durable).
    fn save_release_state(&self, s: &ReleaseState, outbox: Option<Option<&[u8]>>) -> Result<()> {
        let body = encode_release_state(s);
        let mut puts = vec![Put::Sealed(RELEASE_STATE, Some(&body))];
        match outbox {
            Some(Some(bytes)) => {
                self.outbox.write(&self.seal_outbox(bytes))?;
                failpoint::hit("seal:after-outbox")?;
            }
            Some(None) => puts.push(Put::Raw(OUTBOX, None)),
            None => {}
        }
        let saved = self.state_put(&puts);
        if saved.is_err() && matches!(outbox, Some(Some(_))) {
            // Not named by the state: it would only be taken for a pending bundle.
            let _ = self.outbox.remove();
        }
        saved
    }

    /// Associated data of the outbox entry: this vault and user.
    fn outbox_ad(&self) -> Vec<u8> {
        let mut ad = b"capvault outbox v1\0".to_vec();
        ad.extend_from_slice(&self.vault_id);
        ad.extend_from_slice(self.user.as_bytes());
        ad
    }

    /// The outbox entry of a bundle: `nonce || ciphertext || tag` under the outbox key.
    /// A sealed bundle is already ciphertext to the collector; this layer makes erase
    /// crypto-shred it too (a deleted sled value can linger in its segment files).
    fn seal_outbox(&self, bundle: &[u8]) -> Vec<u8> {
        let nonce = aead::new_nonce();
        let mut out = Vec::with_capacity(aead::NONCE_LEN + bundle.len() + aead::TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(bundle);
        let tag = aead::seal_in_place(
            &self.outbox_key,
            &nonce,
            &self.outbox_ad(),
            &mut out[aead::NONCE_LEN..],
        );
        out.extend_from_slice(&tag);
        out
    }

    fn open_outbox(&self, stored: &[u8]) -> Result<Vec<u8>> {
        let damaged = || Error::tampered("the outbox entry does not authenticate");
        if stored.len() < aead::NONCE_LEN + aead::TAG_LEN {
            return Err(damaged());
        }
        let nonce: [u8; aead::NONCE_LEN] = stored[..aead::NONCE_LEN].try_into().expect("24");
        let (body, tag) =
            stored[aead::NONCE_LEN..].split_at(stored.len() - aead::NONCE_LEN - aead::TAG_LEN);
        let tag: [u8; aead::TAG_LEN] = tag.try_into().expect("16");
        let mut bytes = body.to_vec();
        aead::open_in_place(
            &self.outbox_key,
            &nonce,
            &self.outbox_ad(),
            &mut bytes,
            &tag,
        )
        .map_err(|_| damaged())?;
        Ok(bytes)
    }

    /// The size of the sealed, unacknowledged bundle in the outbox, if there is one.
    pub(crate) fn outbox_len(&self) -> Result<Option<u64>> {
        match self.outbox.len()? {
            Some(n) => Ok(Some(n)),
            None => Ok(self.state.get_raw(OUTBOX)?.map(|v| v.len() as u64)),
        }
    }

    pub(crate) fn release_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.release.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Finishes an acknowledgement interrupted by a crash. Returns whether one was
    /// finished; the caller retires emptied epochs once its own record of it is written.
    fn complete_ack(&self, state: &mut ReleaseState) -> Result<bool> {
        let (Some(digest), Some(p)) = (state.acking, state.pending.clone()) else {
            if state.acking.is_some() {
                state.acking = None;
                self.save_release_state(state, None)?;
            }
            return Ok(false);
        };
        // Records of the bundle that eviction already removed need no pruning.
        self.log.prune_through(p.last_record)?;
        failpoint::hit("ack:after-prune")?;
        state.pending = None;
        state.acking = None;
        state.next_bundle_seq = p.bundle_seq + 1;
        state.prev_digest = digest;
        state.ledger_released = state.ledger_released.max(p.ledger_through);
        state.last_acked_id = Some(bundle_id(&digest));
        self.save_release_state(state, Some(None))?;
        self.durable_flush()?;
        self.mark_now();
        self.outbox.remove()?;
        Ok(true)
    }

    /// Finishes interrupted work found at open.
    pub(crate) fn recover_release(&self) -> Result<()> {
        {
            let _g = self.release_lock();
            let mut state = self.release_state()?;
            self.complete_ack(&mut state)?;
            if state.pending.is_none() {
                // Written by a seal that crashed before its state named the bundle.
                self.outbox.remove()?;
            }
        }
        // A crash between a prune and the retirement of emptied epochs leaves their keys;
        // destroy them now.
        self.retire_empty_epochs().map(|_| ())
    }

    /// The pending bundle, read back from the outbox and checked: it must be intact,
    /// signed by this device and the one the state names.
    fn outbox_bundle(&self, p: &Pending) -> Result<SealedBundle> {
        let stored = match self.outbox.read()? {
            Some(b) => b,
            None => self
                .state
                .get_raw(OUTBOX)?
                .map(|v| v.to_vec())
                .ok_or_else(|| Error::tampered("the pending bundle is missing from the outbox"))?,
        };
        let bytes = self.open_outbox(&stored)?;
        let bundle = SealedBundle::from_bytes(bytes)
            .map_err(|e| Error::tampered(format!("the bundle in the outbox is damaged: {e}")))?;
        // The digest names the bundle. Its signer may be an earlier key of this device
        // (the keychain was reset after sealing): the bundle is final and still goes out.
        if *bundle.digest() != p.digest {
            return Err(Error::tampered(
                "the bundle in the outbox is not the pending bundle of this device",
            ));
        }
        Ok(bundle)
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
        if self.complete_ack(&mut state)? {
            self.retire_empty_epochs()?;
        }
        if let Some(p) = &state.pending {
            // Final: the same bytes until acknowledged, whatever max_bytes says now.
            let to = recipient.to_string();
            if p.recipient != to {
                return Err(Error::invalid(format!(
                    "bundle {} ({}) is waiting for acknowledgement and is sealed to {}; a sealed bundle is final: deliver and acknowledge it before sealing to {to}",
                    p.bundle_seq,
                    bundle_id(&p.digest),
                    p.recipient
                )));
            }
            return self.outbox_bundle(p).map(Some);
        }
        // The ledger entries since the last released one, as many as fit in their room
        // (the rest go with the next bundle), then the events in what is left.
        let audit_room = AUDIT_ROOM.min(max_bytes / 2);
        let mut audit_bytes = 0;
        let mut audit = Vec::new();
        for e in self.ledger.read_after(state.ledger_released)? {
            let size = audit_entry_size(&e);
            if audit_bytes + size > audit_room {
                break;
            }
            audit_bytes += size;
            audit.push(e);
        }
        let ledger_through = audit.last().map_or(state.ledger_released, |e| e.seq);
        let keys = self.keys()?;
        let head = self.log.lock().head.last_seq;
        let (events, last) = self.collect(&keys, head, max_bytes.saturating_sub(audit_bytes))?;
        drop(keys);
        if events.is_empty() {
            return Ok(None);
        }
        let first = self.log.lock().tail.first_seq;
        // Every record between the last sealed one and this bundle must have been removed
        // by eviction or retention, which count what they remove (and leave a loss
        // marker); anything else is a deletion nobody accounted for.
        let expected = state.last_sealed_record + 1 + state.records_lost;
        if first != expected {
            return Err(Error::tampered(format!(
                "the log resumes at record {first} but the last sealed record is {} and {} records were removed since (expected record {expected}): records were lost without a loss marker",
                state.last_sealed_record, state.records_lost
            )));
        }
        let stream_id = *state.stream_id.get_or_insert_with(random_array);
        let bundle_seq = state.next_bundle_seq;
        let device = DeviceKey::from_seed(&self.device_seed)?;
        let bundle = seal_bundle(
            &BundleInput {
                device_id: self.device_id,
                stream_id,
                bundle_seq,
                first_record: first,
                last_record: last,
                records_lost: state.records_lost,
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
        state.pending = Some(Pending {
            bundle_seq,
            first_record: first,
            last_record: last,
            ledger_through,
            digest: *bundle.digest(),
            recipient: recipient.to_string(),
        });
        state.last_sealed_record = last;
        state.records_lost = 0;
        self.save_release_state(&state, Some(Some(bundle.bytes())))?;
        self.durable_flush()?;
        self.mark_now();
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
    ) -> Result<(Zeroizing<Vec<SeqEvent>>, u64)> {
        let budget = max_bytes.saturating_sub(BUNDLE_OVERHEAD);
        let mut asm = Assembler::default();
        let mut events = Zeroizing::new(Vec::new());
        let mut total = 0usize;
        let mut last = 0u64;
        let mut run_bytes = 0usize;
        self.log.read(keys, &|v| self.purpose_of(v), to, &mut |r| {
            run_bytes += r.plaintext.len();
            let mut new = Zeroizing::new(Vec::new());
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
            for e in new.drain(..) {
                push_zeroizing(&mut events, e);
            }
            last = r.seq;
            Ok(true)
        })?;
        Ok((events, last))
    }

    pub(crate) fn ack(&self, id: &str, receipt: Option<&[u8]>) -> Result<()> {
        self.check_live()?;
        let _g = self.release_lock();
        let mut state = self.release_state()?;
        if self.complete_ack(&mut state)? {
            self.retire_empty_epochs()?;
        }
        if state.last_acked_id.as_deref() == Some(id) {
            return Ok(());
        }
        let Some(p) = state.pending.clone().filter(|p| bundle_id(&p.digest) == id) else {
            return Err(Error::NotFound(format!(
                "no outstanding bundle has id {id}"
            )));
        };
        if let Some(key) = &self.opts.collector_receipt_key {
            let key: ReceiptKey = key.parse()?;
            let receipt = receipt.ok_or_else(|| {
                Error::invalid(format!(
                    "this vault requires a receipt from collector key {key} to acknowledge a bundle (it was configured with collector_receipt_key; open with collector_receipt_key \"none\" to stop requiring receipts)"
                ))
            })?;
            verify_receipt(&key, &p.digest, receipt)?;
        }
        let (seq, first, last) = (p.bundle_seq, p.first_record, p.last_record);
        state.acking = Some(p.digest);
        self.save_release_state(&state, None)?;
        failpoint::hit("ack:after-acking")?;
        self.complete_ack(&mut state)?;
        drop(_g);
        self.audit(
            "ack",
            &format!("bundle {seq} ({id}) records {first}..={last} pruned"),
        )?;
        // The collector holds the released entries now. After the ack's own entry, and
        // not the ack's result: the ack took effect whatever pruning meets.
        failpoint::hit("ack:before-ledger-prune")?;
        self.ledger.prune_released(state.ledger_released);
        // Keys of epochs the front has passed go last: a failure here is reported, after
        // the ack and its record (the next ack, eviction or open tries again).
        self.retire_empty_epochs()?;
        self.flush()
    }
}

impl Vault {
    /// Seals the oldest unreleased records (about `max_bytes` of events, at least one
    /// whole event) into a bundle for `recipient`, signed by this device, and keeps it in
    /// the vault's outbox. Returns `None` when nothing is waiting.
    ///
    /// A sealed bundle is final: until it is acknowledged every call returns the same
    /// bytes and id (also after a crash or a reopen, whatever `max_bytes` is now).
    /// Asking for another recipient meanwhile is [`Error::InvalidArgument`] naming both.
    /// Each user of a vault has a stream (chain) of its own.
    pub fn seal_next(
        &self,
        recipient: &Recipient,
        max_bytes: usize,
    ) -> Result<Option<SealedBundle>> {
        self.inner().seal_next(recipient, max_bytes)
    }

    /// Acknowledges the bundle `id`: its records are pruned and data keys with nothing
    /// left to read are destroyed. With a collector receipt key configured, `receipt`
    /// must be the collector's signature over the bundle digest (a receipt from another
    /// collector key is [`Error::InvalidArgument`] naming both keys; one that does not
    /// verify is [`Error::Tampered`]). The key, once configured, is kept by the vault, so
    /// this holds for later opens without one too. Acknowledging the last
    /// acknowledged bundle again is harmless; an unknown id is [`Error::NotFound`].
    pub fn ack(&self, id: &str, receipt: Option<&[u8]>) -> Result<()> {
        self.inner().ack(id, receipt)
    }

    /// Subject access: the data subject reads their own stored events. Every call is
    /// recorded in the audit ledger.
    pub fn subject_access(&self) -> Result<Zeroizing<Vec<SeqEvent>>> {
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

    /// Crypto-shreds `user` in the vault at `dir`. First every KEK version of the user is
    /// deleted from the keychain; then the user's records, keys, state, outbox and ledger
    /// are removed (for the last user of the vault, the whole database); then the
    /// erasure is recorded in the vault directory, where [`Vault::erasure`] (and
    /// `capvault status` and `audit`) show it. Opening the user afterwards gives
    /// [`Error::Erased`].
    ///
    /// The vault need not open: erase works on a tampered or corrupted database and on a
    /// full disk. A vault held by another process gives [`Error::InUse`] (the CLI then
    /// asks the holder through the hand-off, which erases in place). An unknown user is
    /// [`Error::NotFound`].
    pub fn erase(dir: impl AsRef<Path>, user: &str, options: VaultOptions) -> Result<()> {
        super::check_user(user)?;
        crate::log::store::check_owner(dir.as_ref())?;
        super::erase::erase_closed(dir.as_ref(), user, &options).map(|_| ())
    }

    /// The recorded erasure of `user` in the vault at `dir`, if it was erased.
    pub fn erasure(dir: impl AsRef<Path>, user: &str) -> Option<super::Erasure> {
        super::erase::tombstone(dir.as_ref(), user)
    }

    /// Crypto-shreds the user of this open vault (see [`Vault::erase`]).
    pub fn erase_open(mut self) -> Result<()> {
        self.inner().erase_in_place()?;
        // The keys are shredded and the data removed: what closing may still fail at is
        // storing records of the erased user (writes that had failed, say on a full
        // disk, retried under erased keys), which were to be erased anyway.
        let _ = self.shutdown();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::LEDGER_KEEP;
    use crate::{Identity, KeyStoreKind, Suite, Vault, VaultOptions};

    fn options() -> VaultOptions {
        VaultOptions {
            keystore: KeyStoreKind::Keyutils,
            ..VaultOptions::default()
        }
    }

    /// Seals and acknowledges one bundle; returns the ledger entries released so far.
    fn release_one(v: &Vault, id: &Identity, ts: i64) -> u64 {
        let _ = v.append_mouse_move(ts, 1, 2).unwrap();
        v.flush().unwrap();
        // Room for every entry these tests record (about 45 bytes each).
        let b = v.seal_next(&id.recipient(), 4 << 20).unwrap().unwrap();
        v.ack(b.id(), None).unwrap();
        v.inner().release_state().unwrap().ledger_released
    }

    /// Records `n` ledger entries as the vault records its own actions.
    fn fill(v: &Vault, n: u64) {
        for i in 0..n {
            v.inner().audit("test", &format!("entry {i}")).unwrap();
        }
    }

    /// A new vault on keyutils whose ledger holds [`LEDGER_KEEP`] + `extra` entries
    /// (none released yet), and an identity to seal to.
    fn vault_with_long_ledger(extra: u64) -> (tempfile::TempDir, Identity, Vault) {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", options()).unwrap();
        fill(&v, LEDGER_KEEP + extra);
        (d, Identity::generate(Suite::X25519), v)
    }

    /// Audit entries take at most half a bundle: with more due than that, a bundle
    /// carries what fits, within its size, and the next ones the rest, in order, none
    /// twice and none left out.
    #[test]
    fn audit_entries_beyond_their_room_wait_for_the_next_bundle() {
        let d = tempfile::tempdir().unwrap();
        let v = Vault::open(d.path(), "alice", options()).unwrap();
        fill(&v, 3_000);
        let id = Identity::generate(Suite::X25519);
        let max = 64 * 1024;
        let mut released = v.inner().release_state().unwrap().ledger_released;
        let mut bundles = 0;
        while released < 3_000 {
            let _ = v.append_mouse_move(bundles, 1, 2).unwrap();
            let b = v.seal_next(&id.recipient(), max).unwrap().unwrap();
            assert!(
                b.bytes().len() <= max,
                "bundle of {} bytes",
                b.bytes().len()
            );
            let audit = crate::open_bundle(b.bytes(), &id).unwrap().audit.clone();
            assert_eq!(audit.first().unwrap().seq, released + 1);
            assert!(audit.windows(2).all(|w| w[1].seq == w[0].seq + 1));
            released = audit.last().unwrap().seq;
            v.ack(b.id(), None).unwrap();
            assert_eq!(v.inner().release_state().unwrap().ledger_released, released);
            bundles += 1;
        }
        assert!(bundles >= 3, "{bundles} bundles");
        v.close().unwrap();
    }

    /// The ledger stops growing on the device: acknowledged entries beyond the newest
    /// [`LEDGER_KEEP`] go, a bounded step per acknowledgement, and what stays verifies,
    /// reads and reopens.
    #[test]
    fn acknowledged_ledger_entries_beyond_the_newest_are_pruned() {
        let (d, id, v) = vault_with_long_ledger(1_500);
        assert_eq!(v.status().unwrap().audit_entries_pruned, 0);

        let released = release_one(&v, &id, 1);
        assert!(released > LEDGER_KEEP + 1_000);
        assert_eq!(v.status().unwrap().audit_entries_pruned, 1_000, "one step");
        let released = release_one(&v, &id, 2);
        let st = v.status().unwrap();
        assert!(
            st.audit_entries_pruned <= released,
            "only released entries go"
        );
        let kept = v.audit_log().unwrap();
        // The newest LEDGER_KEEP, the acknowledgement's own entry among them.
        assert_eq!(kept.len() as u64, LEDGER_KEEP);
        assert_eq!(kept[0].seq, st.audit_entries_pruned + 1);
        assert_eq!(kept.last().unwrap().seq, st.audit_entries);
        v.verify().unwrap();
        v.close().unwrap();

        // What is left reopens as it was, and recording goes on after it.
        let v = Vault::open(d.path(), "alice", options()).unwrap();
        assert_eq!(v.audit_log().unwrap()[0], kept[0]);
        v.verify().unwrap();
        release_one(&v, &id, 3);
        v.close().unwrap();

        // The tail anchor removed: the kept entries no longer start where the ledger
        // begins, and the open says so.
        {
            let db = crate::testing::open_raw_db(d.path());
            let hex: String = "alice".bytes().map(|b| format!("{b:02x}")).collect();
            let ledger = db.open_tree(format!("u/{hex}/ledger")).unwrap();
            assert!(ledger
                .remove(crate::log::store::TAIL_KEY)
                .unwrap()
                .is_some());
            db.flush().unwrap();
        }
        match Vault::open(d.path(), "alice", options()) {
            Err(crate::Error::Tampered(m)) => assert!(m.contains("audit ledger"), "{m}"),
            Err(e) => panic!("expected Tampered, got {e:?}"),
            Ok(_) => panic!("a ledger without its tail anchor opened"),
        }
        Vault::erase(d.path(), "alice", options()).unwrap();
    }

    /// A prune that meets an edited entry after an acknowledgement: the ack took effect
    /// and says so, its own entry is in the ledger, `status` shows the failure and
    /// `verify` the edit; with the entry put back the next ack prunes and clears it.
    #[test]
    fn a_prune_that_fails_after_an_ack_leaves_the_ack_done_and_recorded() {
        let (d, id, v) = vault_with_long_ledger(50);
        let _ = v.append_mouse_move(1, 1, 2).unwrap();
        let b = v.seal_next(&id.recipient(), 1 << 20).unwrap().unwrap();
        // A released entry, edited before the ack prunes it.
        let ledger = v.inner().ledger.tree().clone();
        let k = crate::log::store::record_key(5);
        let was = ledger.get(k).unwrap().unwrap();
        let mut edited = was.to_vec();
        edited[20] ^= 1;
        ledger.insert(k, edited).unwrap();

        v.ack(b.id(), None).unwrap();
        let st = v.status().unwrap();
        assert_eq!(st.audit_entries_pruned, 0);
        let problem = st.maintenance_error.unwrap_or_default();
        assert!(
            problem.contains("pruning the audit ledger") && problem.contains("entry 5"),
            "{problem}"
        );
        assert!(matches!(v.verify(), Err(crate::Error::Tampered(_))));

        ledger.insert(k, was).unwrap();
        let acks = |v: &Vault| {
            let log = v.audit_log().unwrap();
            log.iter().filter(|e| e.action == "ack").count()
        };
        assert_eq!(acks(&v), 1, "the ack is recorded");
        release_one(&v, &id, 2);
        let st = v.status().unwrap();
        assert!(st.audit_entries_pruned > 0);
        assert_eq!(st.maintenance_error, None);
        assert_eq!(acks(&v), 2);
        v.verify().unwrap();
        drop(ledger);
        v.close().unwrap();
        Vault::erase(d.path(), "alice", options()).unwrap();
    }

    /// `verify` on an open vault reads the stored tail anchor, not only the one the
    /// handle holds.
    #[test]
    fn verify_finds_a_tail_anchor_removed_under_the_open_vault() {
        let (d, id, v) = vault_with_long_ledger(50);
        release_one(&v, &id, 1);
        assert!(v.status().unwrap().audit_entries_pruned > 0);
        let ledger = v.inner().ledger.tree().clone();
        let tail = ledger.remove(crate::log::store::TAIL_KEY).unwrap().unwrap();
        match v.verify() {
            Err(crate::Error::Tampered(m)) => assert!(m.contains("tail anchor"), "{m}"),
            r => panic!("expected Tampered, got {r:?}"),
        }
        ledger.insert(crate::log::store::TAIL_KEY, tail).unwrap();
        v.verify().unwrap();
        drop(ledger);
        v.close().unwrap();
        Vault::erase(d.path(), "alice", options()).unwrap();
    }

    /// Readers on other threads (`audit`, `status`, `verify`) while bundles are sealed
    /// and acknowledged, the ledger pruned and entries recorded: none of them sees
    /// tampering, and the vault verifies and reopens afterwards.
    #[test]
    fn readers_during_seals_acks_and_prunes_see_no_tampering() {
        let (d, id, v) = vault_with_long_ledger(10);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..10 {
                    release_one(&v, &id, i);
                    fill(&v, 20);
                }
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    v.audit_log().unwrap();
                    v.status().unwrap();
                }
            });
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                v.verify().unwrap();
            }
        });
        assert!(v.status().unwrap().audit_entries_pruned > 150);
        v.verify().unwrap();
        v.close().unwrap();
        Vault::open(d.path(), "alice", options())
            .unwrap()
            .erase_open()
            .unwrap();
    }
}
