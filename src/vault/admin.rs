//! Administrative operations on an open vault: pause and resume, key rotation, status,
//! verification, the audit ledger, and the test-only reader.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use zeroize::Zeroizing;

use super::state::Put;
use super::{now_us, Inner, Vault, STATE_PAUSE_DROPPED, STATE_PAUSE_UNTIL};
use crate::error::{Error, Result};
use crate::keys::keystore::{KeyStore, KeyStoreKind};
use crate::log::assemble::Assembler;
use crate::log::VerifyReport;
use capvault_format::secret::Key32;
use capvault_format::AuditEntry;
use capvault_format::{DeviceKey, EnrollmentRecord};
use capvault_format::{Marker, SeqEvent, TimestampUs};

/// When the device's enrollment record was made (vault metadata, i64 BE).
const META_ENROLLMENT_US: &[u8] = b"enrollment_created_us";

/// The keychain entry of the device signing seed of a vault.
fn device_key_name(vault_id: &[u8; 16]) -> String {
    format!("device/{}", data_encoding::HEXLOWER.encode(vault_id))
}

/// The device signing seed of a vault, if the keychain holds it.
pub(crate) fn read_device_seed(store: &dyn KeyStore, vault_id: &[u8; 16]) -> Result<Option<Key32>> {
    match store.get(&device_key_name(vault_id))? {
        None => Ok(None),
        Some(mut bytes) => Ok(Key32::from_slice_zeroizing(&mut bytes)),
    }
}

pub(crate) fn load_or_create_device_seed(
    store: &dyn KeyStore,
    vault_id: &[u8; 16],
) -> Result<Key32> {
    let name = device_key_name(vault_id);
    if let Some(mut bytes) = store.get(&name)? {
        return Key32::from_slice_zeroizing(&mut bytes).ok_or_else(|| {
            Error::keychain("the device signing key in the keychain has the wrong size")
        });
    }
    let seed = Key32::generate();
    store.put(&name, seed.expose())?;
    Ok(seed)
}

/// Pause state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PauseState {
    /// When the pause ends (microseconds since the Unix epoch), if paused.
    pub paused_until_us: Option<TimestampUs>,
    /// Events dropped during the current or last pause.
    pub dropped: u64,
}

/// One data-key epoch in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EpochStatus {
    /// Epoch number.
    pub epoch: u32,
    /// Creation time of its key.
    pub created_us: i64,
    /// Records encrypted under it that are still in the log.
    pub records: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

/// What `status` reports. Contains no key material and no captured content.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Vault directory.
    pub dir: String,
    /// Random vault identifier (hex).
    pub vault_id: String,
    /// Random device identifier used in bundle headers (hex).
    pub device_id: String,
    /// The user (data subject) this handle is for.
    pub user: String,
    /// The keychain in use.
    pub keystore: KeyStoreKind,
    /// False when keys are lost at reboot (kernel keyutils).
    pub keystore_persistent: bool,
    /// A warning about the keychain, if any.
    pub keystore_warning: Option<String>,
    /// Current KEK version.
    pub kek_version: u32,
    /// Current DEK epoch.
    pub current_epoch: u32,
    /// Live epochs.
    pub epochs: Vec<EpochStatus>,
    /// Records in the log.
    pub records: u64,
    /// Stored bytes of those records.
    pub stored_bytes: u64,
    /// Bytes the vault directory takes on disk, as allocated (what `du` counts): the
    /// database, the record segments of every user, and the small files beside them.
    pub disk_bytes: u64,
    /// First and last live record (0 when empty).
    pub first_record: u64,
    /// Last record.
    pub last_record: u64,
    /// Next event sequence number.
    pub next_event_seq: u64,
    /// Pause state.
    pub pause: PauseState,
    /// Events dropped by policy since open.
    pub filtered: u64,
    /// Policy version in force.
    pub policy_version: u32,
    /// Purpose in force.
    pub purpose: String,
    /// Audit ledger entries recorded.
    pub audit_entries: u64,
    /// The oldest of them, `1..=audit_entries_pruned`, released in acknowledged bundles
    /// and removed from this device (the collector holds them); the device keeps the
    /// newest 10,000 entries and every one not yet released.
    pub audit_entries_pruned: u64,
    /// The last failure of background maintenance (retention, budget, scheduled
    /// rotation), if the most recent run failed; a prune of the audit ledger after an
    /// acknowledgement that failed (tried again at the next one); a durability mark that
    /// could not be written after a flush returned (the next flush tries again and fails
    /// while it cannot). Several are joined with "; ".
    pub maintenance_error: Option<String>,
    /// Always false for an open vault (an erased vault does not open).
    pub erased: bool,
    /// The built-in uploader's state, when the vault was opened with `upload` options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload: Option<crate::upload::UploadStatus>,
}

impl Inner {
    pub(crate) fn audit(&self, action: &str, detail: &str) -> Result<()> {
        self.ledger.record(now_us(), action, detail).map(|_| ())
    }

    /// True when paused now. Ends an expired pause (writing its end marker).
    pub(crate) fn check_pause(&self) -> Result<bool> {
        let until = self.paused_until.load(Ordering::Relaxed);
        if until == 0 {
            return Ok(false);
        }
        if now_us() < until {
            return Ok(true);
        }
        self.end_pause("expired")?;
        Ok(false)
    }

    fn end_pause(&self, why: &str) -> Result<()> {
        let mut p = self.producer();
        // Another thread may have ended it while we waited for the lock.
        if self.paused_until.swap(0, Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let dropped = self.dropped_paused.load(Ordering::Relaxed);
        self.state_put(&[
            Put::Sealed(STATE_PAUSE_UNTIL, Some(&0i64.to_be_bytes())),
            Put::Sealed(STATE_PAUSE_DROPPED, Some(&(dropped as i64).to_be_bytes())),
        ])?;
        self.push_markers(&mut p, &[Marker::PauseEnd { dropped }])?;
        drop(p);
        self.audit(
            "resume",
            &format!("{why}; {dropped} events dropped during the pause"),
        )
    }

    /// Pauses capture for `duration`, capped at the policy's `max_pause_secs`. Events
    /// appended during the pause are dropped and counted. Returns the pause deadline.
    /// The deadline survives restarts.
    pub(crate) fn pause(&self, duration: Duration) -> Result<TimestampUs> {
        let inner = self;
        inner.check_live()?;
        if duration.is_zero() {
            return Err(Error::invalid("a pause must last at least one second"));
        }
        let secs = duration
            .as_secs()
            .clamp(1, inner.opts.policy.max_pause_secs);
        let until = now_us() + (secs as i64) * 1_000_000;
        {
            let mut p = inner.producer();
            let was = inner.paused_until.load(Ordering::Relaxed);
            if was == 0 {
                inner.dropped_paused.store(0, Ordering::Relaxed);
                inner.push_markers(&mut p, &[Marker::PauseStart { until_us: until }])?;
            }
            let dropped = inner.dropped_paused.load(Ordering::Relaxed) as i64;
            inner.state_put(&[
                Put::Sealed(STATE_PAUSE_UNTIL, Some(&until.to_be_bytes())),
                Put::Sealed(STATE_PAUSE_DROPPED, Some(&dropped.to_be_bytes())),
            ])?;
            inner.paused_until.store(until, Ordering::Relaxed);
        }
        inner.flush()?;
        inner.mark_now();
        inner.audit("pause", &format!("{secs} s"))?;
        Ok(until)
    }

    pub(crate) fn resume(&self) -> Result<()> {
        self.check_live()?;
        self.end_pause("resumed")?;
        self.flush()?;
        self.mark_now();
        Ok(())
    }

    pub(crate) fn pause_state(&self) -> Result<PauseState> {
        let inner = self;
        let paused = inner.check_pause()?;
        Ok(PauseState {
            paused_until_us: paused.then(|| inner.paused_until.load(Ordering::Relaxed)),
            dropped: inner.dropped_paused.load(Ordering::Relaxed),
        })
    }

    pub(crate) fn status(&self) -> Result<Status> {
        let inner = self;
        inner.check_live()?;
        let pause = inner.pause_state()?;
        let keys = inner.keys()?;
        let st = inner.log.lock().clone();
        let epochs = keys
            .epochs()
            .into_iter()
            .map(|e| {
                let c = st.counts.get(&e.epoch).copied().unwrap_or_default();
                EpochStatus {
                    epoch: e.epoch,
                    created_us: e.created_us,
                    records: c.records,
                    bytes: c.bytes,
                }
            })
            .collect();
        let persistent = inner.keystore.persistent();
        Ok(Status {
            dir: inner.dir().display().to_string(),
            vault_id: data_encoding::HEXLOWER.encode(&inner.vault_id),
            device_id: data_encoding::HEXLOWER.encode(&inner.device_id),
            user: inner.user.clone(),
            keystore: inner.keystore.kind(),
            keystore_persistent: persistent,
            keystore_warning: (!persistent).then(|| "kernel keyutils keys are lost at reboot: everything in this vault becomes unreadable after a restart unless it was sealed and uploaded first".to_string()),
            kek_version: keys.kek_version(),
            current_epoch: keys.current().0,
            epochs,
            records: st.records(),
            stored_bytes: st.bytes(),
            disk_bytes: inner.store.size_on_disk()?,
            first_record: if st.records() > 0 { st.tail.first_seq } else { 0 },
            last_record: st.head.last_seq,
            next_event_seq: st.head.next_event_seq,
            pause,
            filtered: inner.filtered.load(Ordering::Relaxed),
            policy_version: inner.opts.policy.version,
            purpose: inner.opts.policy.purpose.clone(),
            audit_entries: inner.ledger.last_seq(),
            audit_entries_pruned: inner.ledger.pruned(),
            maintenance_error: {
                let problems: Vec<String> = [
                    inner.maintenance_error(),
                    inner.ledger.prune_problem(),
                    inner.store.mark_failure(),
                ]
                .into_iter()
                .flatten()
                .collect();
                (!problems.is_empty()).then(|| problems.join("; "))
            },
            erased: false,
            upload: inner.upload.as_ref().map(|u| {
                // The outbox bundle counts whether or not its records are still logged.
                let outbox = inner.outbox_len().ok().flatten().unwrap_or(0);
                u.status(st.bytes().max(outbox), outbox > 0)
            }),
        })
    }

    /// Rotates the DEK when the current epoch is older than `dek_epoch_hours`.
    /// When the current data key is due for its scheduled rotation (`None`: never).
    pub(crate) fn rotation_due_us(&self) -> Result<Option<i64>> {
        let hours = self.opts.dek_epoch_hours;
        if hours == 0 {
            return Ok(None);
        }
        let created = self.keys()?.current_created_us();
        Ok(Some(created.saturating_add(
            (hours as i64).saturating_mul(3_600_000_000),
        )))
    }

    pub(crate) fn rotate_if_due(&self) -> Result<()> {
        let hours = self.opts.dek_epoch_hours;
        if hours == 0 {
            return Ok(());
        }
        let age_us = now_us() - self.keys()?.current_created_us();
        if age_us >= (hours as i64) * 3_600_000_000 {
            self.rotate_dek("scheduled")?;
        }
        Ok(())
    }

    pub(crate) fn rotate_dek(&self, why: &str) -> Result<u32> {
        let mut p = self.quiesce()?;
        let epoch = self.keys_mut()?.rotate_dek(now_us())?;
        // The new epoch's key must be durable before any record uses it.
        self.durable_flush()?;
        self.push_markers(&mut p, &[Marker::KeyRotated { epoch }])?;
        drop(p);
        self.audit("rotate-dek", &format!("epoch {epoch} ({why})"))?;
        Ok(epoch)
    }

    pub(crate) fn rotate_kek(&self) -> Result<u32> {
        let p = self.quiesce()?;
        let rotated = self.keys_mut()?.rotate_kek(&|| self.durable_flush());
        drop(p);
        let version = match rotated {
            // The keys found the KEK in use gone from the keychain: the user was erased
            // elsewhere (through a copy of the vault, which shares its keys). Carry the
            // erasure out here too, as the hand-off would.
            Err(Error::Erased) => {
                self.erase_in_place()?;
                return Err(Error::Erased);
            }
            other => other?,
        };
        super::erase::note_kek(&self.dir(), &self.file_note(), &self.user, version + 1);
        self.audit("rotate-kek", &format!("version {version}"))?;
        Ok(version)
    }

    /// Destroys the keys of epochs that have no records left (never the current one):
    /// every epoch older than the first live record's, or all when the log is empty.
    /// Epochs only grow along the log, and that record's epoch is read from the record
    /// itself (authenticated), so the per-epoch counters decide nothing here: a trim after
    /// a crash takes its records' epochs from the index's locations, which whoever edits
    /// the database could point elsewhere, and the counters that follow cannot make a key
    /// of a live record go (`verify` reports them), nor keep a dead one. An empty epoch
    /// between live ones goes once the front passes it. The keys are held throughout, so
    /// no record is appended and no key rotated between the read and the retirement.
    pub(crate) fn retire_empty_epochs(&self) -> Result<Vec<u32>> {
        let mut keys = self.keys_mut()?;
        let current = keys.current().0;
        let older: Vec<u32> = keys
            .epochs()
            .iter()
            .map(|e| e.epoch)
            .filter(|e| *e != current)
            .collect();
        if older.is_empty() {
            return Ok(older);
        }
        let first_live = self.first_live_epoch(&keys)?;
        let dead: Vec<u32> = older
            .into_iter()
            .filter(|e| first_live.is_none_or(|first| *e < first))
            .collect();
        if dead.is_empty() {
            return Ok(dead);
        }
        crate::failpoint::hit("retire:before-batch")?;
        // The counters first: a crash in between leaves keys that the next open retires,
        // never counters that ask for a key that is gone.
        self.log.forget_epochs(&dead)?;
        keys.retire(&dead)?;
        drop(keys);
        self.durable_flush()?;
        self.audit("retire-dek", &format!("epochs {dead:?} destroyed"))?;
        Ok(dead)
    }

    /// The epoch of the first live record, read and checked from the log's tail
    /// (`None`: the log is empty). An acknowledgement on another thread may take that
    /// record away while it is read: then it is read again from the new front.
    fn first_live_epoch(&self, keys: &crate::keys::hierarchy::KeyHierarchy) -> Result<Option<u32>> {
        let mut moved = 0;
        loop {
            let front = self.log.front();
            let mut first = None;
            let read = self
                .log
                .read(keys, &|v| self.purpose_of(v), front, &mut |r| {
                    first = Some(r.header.epoch);
                    Ok(false)
                });
            match read {
                Ok(()) => return Ok(first),
                Err(_) if self.log.front() != front && moved < 8 => moved += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The signed enrollment record of this vault's device key. Its creation time is
    /// fixed at the first call, so every call gives the same record.
    pub(crate) fn enrollment_record(&self) -> Result<EnrollmentRecord> {
        self.check_live()?;
        let db = &self.store.db;
        let created_us = match db.get(META_ENROLLMENT_US)? {
            Some(v) => i64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::tampered("the enrollment time has the wrong size"))?,
            ),
            None => {
                let now = now_us();
                db.insert(META_ENROLLMENT_US, &now.to_be_bytes())?;
                self.durable_flush()?;
                now
            }
        };
        let device = DeviceKey::from_seed(&self.device_seed)?;
        Ok(EnrollmentRecord::new(self.device_id, &device, created_us))
    }

    /// Decrypts every live record in order and returns its events (crate-internal: the
    /// sealing and subject-access paths, and tests).
    pub(crate) fn read_events(&self, to_record: u64) -> Result<Zeroizing<Vec<SeqEvent>>> {
        let keys = self.keys()?;
        let mut asm = Assembler::default();
        let mut out = Zeroizing::new(Vec::new());
        self.log
            .read(&keys, &|v| self.purpose_of(v), to_record, &mut |r| {
                asm.feed(&r.header, r.plaintext, &mut out)?;
                Ok(true)
            })?;
        Ok(out)
    }
}

impl Vault {
    /// Pauses capture for `duration`, capped at the policy's `max_pause_secs`. Events
    /// appended during the pause are dropped and counted. Returns the pause deadline.
    /// The deadline survives restarts.
    pub fn pause(&self, duration: Duration) -> Result<TimestampUs> {
        self.inner().pause(duration)
    }

    /// Ends a pause early. Resuming when not paused is harmless.
    pub fn resume(&self) -> Result<()> {
        self.inner().resume()
    }

    /// The pause state.
    pub fn pause_state(&self) -> Result<PauseState> {
        self.inner().pause_state()
    }

    /// Starts a new data-key epoch; later records use the new key. Returns its number.
    pub fn rotate_dek(&self) -> Result<u32> {
        self.inner().rotate_dek("on demand")
    }

    /// Rotates the key-encryption key: every data key is rewrapped under a new KEK and
    /// the old KEK is deleted from the keychain. Crash-safe at every step. Returns the
    /// new KEK version.
    pub fn rotate_kek(&self) -> Result<u32> {
        self.inner().rotate_kek()
    }

    /// Walks the whole log and reports the first inconsistency as [`Error::Tampered`].
    pub fn verify(&self) -> Result<VerifyReport> {
        let inner = self.inner();
        let _p = inner.quiesce()?;
        // An acknowledgement on another thread prunes the log's front: not while the
        // walk and its count of each epoch's records are compared with the counters
        // (the same order as eviction's: appends, then release).
        let _r = inner.release_lock();
        let keys = inner.keys()?;
        let report = inner.log.verify(&keys, &|v| inner.purpose_of(v))?;
        inner.ledger.check_chain()?;
        inner.state.check_all()?;
        inner.check_generations()?;
        inner.check_mark()?;
        Ok(report)
    }

    /// The audit ledger: every entry, oldest first. Reading it is not itself audited.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        self.inner().ledger.read_after(0)
    }

    /// The collector receipt key this vault is configured with (kept across opens):
    /// while set, every `ack` needs a receipt that verifies under it.
    pub fn collector_receipt_key(&self) -> Option<&str> {
        self.inner().opts.collector_receipt_key.as_deref()
    }

    /// The device's signed enrollment record (docs/FORMAT.md, "Enrollment records"):
    /// device id, device Ed25519 public key and creation time, signed by the device key.
    /// Collectors pin the key from it. The same record on every call.
    pub fn enrollment_record(&self) -> Result<EnrollmentRecord> {
        self.inner().enrollment_record()
    }

    /// Status report.
    pub fn status(&self) -> Result<Status> {
        self.inner().status()
    }

    /// What `status` reports as `maintenance_error`, also when the rest of the status
    /// cannot be read (the vault directory moved or removed). Test builds only.
    #[cfg(feature = "test-hooks")]
    pub fn test_maintenance_error(&self) -> Option<String> {
        self.inner().maintenance_error()
    }

    /// Decrypts every stored event. Test builds only: the public API never returns stored
    /// plaintext to an agent.
    #[cfg(feature = "test-hooks")]
    pub fn test_read_all(&self) -> Result<Vec<SeqEvent>> {
        let inner = self.inner();
        let _p = inner.quiesce()?;
        Ok(std::mem::take(&mut *inner.read_events(u64::MAX)?))
    }
}
