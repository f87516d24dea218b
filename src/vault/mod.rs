//! The vault: the public API that ties policy, framer, record crypto, keys and the log
//! together for one user of one vault directory.

mod admin;
mod binding;
pub(crate) mod erase;
mod limits;
mod outbox;
pub(crate) mod release;
pub(crate) mod send_gate;
pub(crate) mod state;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::keys::hierarchy::{KeyHierarchy, STATE_FORMAT};
use crate::keys::keystore::{open_keystore, KeyStore, KeyStoreKind};
use crate::keys::mark::{self, Keeper, Mark, MarkKey};
use crate::log::anchor::AnchorKey;
use crate::log::framer::{take_large, Framer, Job};
use crate::log::record::RecordBinding;
use crate::log::store::{Store, Unmarked, UserTrees};
use crate::log::Log;
use crate::options::VaultOptions;
use crate::policy::{Admission, Policy, PolicyGate};
use capvault_format::secret::{random_array, Key32};
use capvault_format::{Event, Marker, TimestampUs};

pub use admin::{EpochStatus, PauseState, Status};
pub use erase::Erasure;
pub(crate) use state::TreeOps;
use state::{Put, Sealer, StateStore};
use writer::Msg;

/// What happened to an appended event. Dropped events are not errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Appended {
    /// The event was accepted and will be stored.
    Stored,
    /// Capture is paused: the event was dropped and counted.
    Paused,
    /// The policy dropped the event (deny list, keystrokes off, screenshots off).
    Filtered,
}

/// Records in flight between the append path and the writer (each at most one frame or
/// chunk), which bounds memory when the disk is slower than capture.
const QUEUE_RECORDS: usize = 512;

const META_VAULT_ID: &[u8] = b"vault_id";
const META_DEVICE_ID: &[u8] = b"device_id";
/// The Ed25519 public key the device id belongs to.
const META_DEVICE_KEY: &[u8] = b"device_key";
const META_FORMAT: &[u8] = b"format";
const META_KEYSTORE: &[u8] = b"keystore";
const FORMAT_VERSION: u32 = 1;
/// The collector receipt key the vault requires for acks (text form), once configured.
const META_RECEIPT_KEY: &[u8] = b"collector_receipt_key";
/// The `collector_receipt_key` option value that removes a configured key.
pub const NO_RECEIPT_KEY: &str = "none";

pub(crate) const STATE_PAUSE_UNTIL: &[u8] = b"pause_until";
pub(crate) const STATE_PAUSE_DROPPED: &[u8] = b"pause_dropped";
/// 1 while focus is in a deny-listed window, so that a restart does not store what the
/// still-focused window shows until the next focus event.
pub(crate) const STATE_DENY_GAP: &[u8] = b"deny_gap";
pub(crate) const STATE_POLICY_PREFIX: &[u8] = b"policy/";
/// The user's receipt key setting: the key text, or empty for none.
pub(crate) const STATE_RECEIPT_KEY: &[u8] = b"receipt_key";

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> TimestampUs {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_micros() as TimestampUs
}

/// Queues records for the writer in order, keeping the first failure (the writer has
/// stopped) for the caller.
struct Queue<'a> {
    tx: &'a SyncSender<Msg>,
    unwritten: &'a AtomicU64,
    writer_exited: &'a AtomicBool,
    result: Result<()>,
}

impl<'a> Queue<'a> {
    fn new(inner: &'a Inner) -> Self {
        Queue {
            tx: &inner.tx,
            unwritten: &inner.unwritten,
            writer_exited: &inner.writer_exited,
            result: Ok(()),
        }
    }

    fn send(&mut self, job: Job) {
        if self.result.is_ok() {
            self.unwritten
                .fetch_add(job.plaintext.len() as u64, Ordering::Relaxed);
            self.result = self.tx.send(Msg::Record(job)).map_err(|_| Error::Closed);
        }
    }

    /// Tells the writer when the frame open now was opened, if it was opened since the
    /// framer had counted `opens_before` and the writer is not watching already (it
    /// sleeps while no frame is open).
    fn frame_opened(&mut self, framer: &mut Framer, opens_before: u64) {
        let watched = framer.watched() && !self.writer_exited.load(Ordering::Acquire);
        if framer.opens() == opens_before || watched || self.result.is_err() {
            return;
        }
        if let Some(at) = framer.opened_at() {
            self.result = self
                .tx
                .send(Msg::FrameOpened(at))
                .map_err(|_| Error::Closed);
            framer.set_watched(self.result.is_ok());
        }
    }
}

/// State of the append path, behind one lock: policy gate and framer.
pub(crate) struct Producer {
    pub(crate) gate: PolicyGate,
    pub(crate) framer: Framer,
}

pub(crate) struct Inner {
    pub(crate) opts: VaultOptions,
    pub(crate) user: String,
    pub(crate) store: Store,
    pub(crate) trees: UserTrees,
    pub(crate) keystore: Arc<dyn KeyStore>,
    pub(crate) vault_id: [u8; 16],
    pub(crate) device_id: [u8; 16],
    pub(crate) device_seed: Key32,
    /// The hash of the database's binding value, which the keychain file records
    /// (`binding`).
    pub(crate) keychain_bind: String,
    keys: RwLock<KeyHierarchy>,
    /// The user's high-water mark in the keychain (src/keys/mark.rs).
    pub(crate) mark: Keeper,
    /// The user's authenticated stored state (release, pause, policies, receipt key).
    pub(crate) state: StateStore,
    /// Encrypts the outbox (derived from the MAC key: erased with the KEK).
    outbox_key: Key32,
    /// Where the sealed, unacknowledged bundle is kept.
    outbox: outbox::Outbox,
    pub(crate) log: Log,
    pub(crate) ledger: crate::audit::Ledger,
    /// The append lock. `parking_lot`'s spins before it parks: with several capturing
    /// threads the std mutex put most contended appends to sleep through `futex`.
    pub(crate) producer: parking_lot::Mutex<Producer>,
    tx: SyncSender<Msg>,
    /// Bytes of records handed to the writer and not yet written (in its queue or held
    /// by it): a refusing byte budget counts them, or a writer behind capture would let
    /// the queue's worth (up to 512 records) past the budget.
    pub(crate) unwritten: AtomicU64,
    /// Pause deadline (0 when not paused).
    pub(crate) paused_until: AtomicI64,
    pub(crate) dropped_paused: AtomicU64,
    pub(crate) filtered: AtomicU64,
    /// Set once this user was erased through this handle: every later call fails.
    erased: std::sync::atomic::AtomicBool,
    /// Bundles leave through it; an erase closes it first.
    pub(crate) send_gate: send_gate::SendGate,
    write_error: Mutex<Option<String>>,
    write_failed: std::sync::atomic::AtomicBool,
    maintenance_error: Mutex<Option<String>>,
    /// Wakes the maintenance thread (which sleeps until woken or due).
    maintenance: mpsc::Sender<limits::Wake>,
    /// A `Wrote` wake-up is on its way and not yet taken: writes do not queue more.
    maintenance_nudged: std::sync::atomic::AtomicBool,
    purposes: RwLock<BTreeMap<u32, String>>,
    /// Serializes seal, ack and eviction (they move the release cursor and the tail).
    release: Mutex<()>,
    /// The built-in uploader's state, when `upload` is configured (for `status`).
    pub(crate) upload: Option<Arc<crate::upload::Shared>>,
    /// The writer thread has ended (closed, or a bug): appenders tell it of frames again,
    /// which fails, rather than count on it to cut them.
    writer_exited: AtomicBool,
    /// Removes the database files after an erase of the last user, once sled is closed.
    /// Declared last: fields drop in order, so every sled handle above is gone first.
    pub(crate) remove_on_drop: erase::RemoveOnDrop,
}

/// Refuses an event of `len` encoded bytes (or a payload that long) that cannot fit in
/// one bundle the uploader may send.
#[cfg(feature = "upload")]
fn check_upload_room(up: &crate::upload::UploadOptions, len: usize) -> Result<()> {
    let room = up.event_room();
    if len > room {
        return Err(Error::invalid(format!(
            "an event of {len} bytes does not fit in one upload bundle of {} bytes (the larger of upload.max_bundle_bytes and a collector's default --max-bundle-bytes; {room} bytes for events): it could never be uploaded; send smaller events, or raise the collector's --max-bundle-bytes and upload.max_bundle_bytes to match",
            up.bundle_limit()
        )));
    }
    Ok(())
}

/// An open vault for one user. Cheap to share between threads (`&Vault` is `Sync`);
/// appends from many threads are serialized in one order.
pub struct Vault {
    inner: Arc<Inner>,
    writer: Option<JoinHandle<()>>,
    maintenance: Option<JoinHandle<()>>,
    #[cfg(feature = "upload")]
    uploader: Option<crate::upload::Uploader>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.inner.store.dir())
            .field("user", &self.inner.user)
            .finish()
    }
}

fn check_user(user: &str) -> Result<()> {
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return Err(Error::invalid(
            "user must be 1 to 128 bytes of UTF-8 without control characters",
        ));
    }
    Ok(())
}

/// The device id of the vault's signing key. A device id speaks for one key only: when
/// the keychain holds a different device key than the id was made for (the keychain
/// was reset, or the vault directory was copied to another machine), the vault takes a
/// new device id, so collectors never see one id under two keys.
fn device_id_for_key(db: &sled::Db, seed: &Key32) -> Result<[u8; 16]> {
    let public = capvault_format::DeviceKey::from_seed(seed)?.public_key();
    match db.get(META_DEVICE_KEY)? {
        Some(k) if k.as_ref() == public => load_or_create_id(db, META_DEVICE_ID),
        Some(_) => {
            let id: [u8; 16] = random_array();
            let mut batch = sled::Batch::default();
            batch.insert(META_DEVICE_ID, &id);
            batch.insert(META_DEVICE_KEY, &public);
            db.apply_batch(batch)?;
            Ok(id)
        }
        None => {
            // First open, or a vault made before ids were tied to keys: keep its id.
            let id = load_or_create_id(db, META_DEVICE_ID)?;
            db.insert(META_DEVICE_KEY, &public)?;
            Ok(id)
        }
    }
}

fn load_or_create_id(db: &sled::Db, key: &[u8]) -> Result<[u8; 16]> {
    if let Some(v) = db.get(key)? {
        return v
            .as_ref()
            .try_into()
            .map_err(|_| Error::tampered("a vault identifier has the wrong size"));
    }
    let id: [u8; 16] = random_array();
    db.insert(key, &id)?;
    Ok(id)
}

/// The hash of the database's binding value (`binding`), made now for a new vault or
/// one made before there were bindings (or whose value was damaged: the open proves the
/// database with its keys, and the keychain file is rewritten to match).
fn load_or_create_binding(db: &sled::Db) -> Result<String> {
    if let Some(h) = db
        .get(binding::META_BIND)?
        .and_then(|v| binding::hash_of(&v))
    {
        return Ok(h);
    }
    let value = binding::new_value();
    db.insert(binding::META_BIND, value.as_slice())?;
    db.flush()?;
    Ok(binding::hash_of(&value).expect("a new binding value checks"))
}

impl Vault {
    /// Opens (creating on first use) the vault in `dir` for `user`.
    ///
    /// Keys come from the OS keychain selected in `options`; if it is unusable the vault
    /// does not open. A vault held by another process gives [`Error::InUse`]; a log whose
    /// anchors do not match its records gives [`Error::Tampered`].
    ///
    /// The vault remembers its keychain: with `keystore: auto` an existing vault uses the
    /// one it was created with. An options policy equal to [`Policy::default`] keeps the
    /// policy the vault already records (so administrative tools do not change it).
    pub fn open(dir: impl AsRef<Path>, user: &str, mut options: VaultOptions) -> Result<Vault> {
        check_user(user)?;
        options.validate()?;
        if let Some(k) = &options.collector_receipt_key {
            if k != NO_RECEIPT_KEY {
                k.parse::<capvault_format::ReceiptKey>()?;
            }
        }
        let dir = dir.as_ref();
        let erased = erase::tombstone(dir, user).is_some();
        if erased && !dir.join("conf").exists() {
            return Err(Error::Erased);
        }
        crate::log::store::check_owner(dir)?;
        let (store, keystore) = open_store_and_keystore(dir, &options)?;
        match store.db.get(META_FORMAT)? {
            None => {
                store
                    .db
                    .insert(META_FORMAT, &FORMAT_VERSION.to_be_bytes())?;
            }
            Some(v) if v.as_ref() == FORMAT_VERSION.to_be_bytes() => {}
            Some(_) => {
                return Err(Error::invalid(format!(
                    "{} holds a vault of an unsupported format version",
                    dir.display()
                )))
            }
        }
        let in_db = match store.db.get(META_VAULT_ID)? {
            Some(v) => Some(
                v.as_ref()
                    .try_into()
                    .map_err(|_| Error::tampered("a vault identifier has the wrong size"))?,
            ),
            None => None,
        };
        erase::check_identity(dir, in_db)?;
        let vault_id = load_or_create_id(&store.db, META_VAULT_ID)?;
        let new_binding = store.db.get(binding::META_BIND)?.is_none();
        let keychain_bind = load_or_create_binding(&store.db)?;
        if in_db.is_none() || new_binding {
            // A new vault (or binding): durable before the keychain file names it, so an
            // open that dies in between never leaves a file naming a vault or binding
            // the database lost (which the next open would have to refuse as tampering,
            // and erase to refuse as unbound).
            store.durable_flush()?;
        }
        let device_seed = admin::load_or_create_device_seed(&*keystore, &vault_id)?;
        let device_id = device_id_for_key(&store.db, &device_seed)?;
        let trees = store.user_trees(user)?;
        let now = now_us();
        if trees.keys.is_empty()
            && !(trees.log.is_empty() && trees.state.is_empty() && trees.ledger.is_empty())
        {
            return Err(Error::tampered(format!(
                "the vault holds data of user {user:?} but no keys for it (the keys were removed)"
            )));
        }
        if erased && trees.keys.is_empty() {
            // The name stays erased in this directory (docs/SECURITY.md, "Erasure").
            return Err(Error::Erased);
        }
        erase::refuse_copy(dir, &vault_id, &device_seed, &*keystore)?;
        let (mut keys, new_entries) =
            KeyHierarchy::open(keystore.clone(), trees.keys.clone(), vault_id, user, now)
                .map_err(|e| erase::erased_if_tombstoned(dir, user, e))?;
        let note = |version: u32| {
            let file = erase::FileNote {
                vault_id: &vault_id,
                keystore: keystore.kind(),
                device_seed: &device_seed,
                bind: &keychain_bind,
                store: &*keystore,
            };
            erase::note_kek(dir, &file, user, version)
        };
        note(keys.kek_version() + 1);
        if let Some(entries) = new_entries {
            create_user(&trees, entries, keys.mac_key(), &vault_id, user)?;
            // Only a user whose trees are durable is recorded in the keychain. A crash
            // in between leaves trees and a mark without the record: the next open takes
            // that for format 4 (docs/FORMAT.md §12) and records it.
            store.durable_flush()?;
            crate::failpoint::hit("create:before-format")?;
            keys.record_format()?;
        }
        // How far the user's stored state was carried over: the keys tree says so (a
        // format-2 MAC key entry is only wrapped under KEKs made after the state was
        // sealed) and so does the keychain, which no copy of the directory rolls back.
        // A format-1 keys tree while the keychain records a later format is a carry-over
        // interrupted after it sealed the state, or an older copy of the keys put back:
        // either way the state is already sealed, and is opened as such, never sealed
        // again as it stands (that would adopt whatever an attacker edited).
        let tree_authenticated = keys.state_authenticated();
        let keychain_format = keys.keychain_format();
        // From format 4 on the keychain keeps the user's high-water mark, which no copy
        // of the directory rolls back: the directory must not be behind it.
        let vault_hex = data_encoding::HEXLOWER.encode(&vault_id);
        let mark_key = MarkKey::new(keys.mac_key(), &vault_id, user);
        let recorded_mark = if keychain_format >= STATE_FORMAT {
            Some(
                mark::read(&*keystore, &mark_key, &vault_hex, user)?.ok_or_else(|| {
                    Error::tampered(format!(
                        "the high-water mark of user {user:?} is missing from the keychain, which records that the user has one (the keychain entry was deleted); whether the vault directory was rolled back cannot be told: erase the user, or keep the vault as evidence"
                    ))
                })?,
            )
        } else {
            // Only this format writes a mark, and always before the format record: a
            // mark without the record is a carry-over that died in between, or a record
            // that was lost. Either way the user is at format 4 and the directory is
            // checked against the mark, never carried over again as it stands (an older
            // copy of it would be adopted).
            mark::read(&*keystore, &mark_key, &vault_hex, user)?
        };
        let format = if recorded_mark.is_some() {
            keychain_format.max(STATE_FORMAT)
        } else {
            keychain_format
        };
        let sealed = tree_authenticated || format >= 2;
        let bound = format >= 3;
        let segments = crate::log::segments::Segments::open(
            &crate::log::segments::user_dir(dir, user),
            crate::log::segments::segment_bytes_for(options.policy.budget_bytes),
            options.fsync,
        )?;
        let mut log = Log::open(
            trees.log.clone(),
            RecordBinding::new(&vault_id, user),
            AnchorKey::new(keys.mac_key(), &vault_id, user),
            sealed,
            bound,
            recorded_mark.map_or(0, |m| m.head),
            segments,
        )?;
        let ledger = crate::audit::Ledger::open(
            trees.ledger.clone(),
            keys.mac_key(),
            &vault_id,
            user,
            sealed,
        )?;
        let sealer = Sealer::new(keys.mac_key(), &vault_id, user);
        let mut carried_over = None;
        let state = if sealed {
            let st = StateStore::open(trees.state.clone(), sealer, &ledger)?;
            check_generations(log.stored_state_gen()?, &ledger)?;
            if let Some(m) = &recorded_mark {
                m.check(&mark_of(&log, &ledger), user)?;
            }
            st
        } else {
            // A vault written before stored state was authenticated: seal what is there
            // now (its anchors just verified), bind the log to it.
            let receipt = store
                .db
                .get(META_RECEIPT_KEY)?
                .map(|v| v.to_vec())
                .unwrap_or_default();
            let st = StateStore::migrate(
                trees.state.clone(),
                sealer,
                &ledger,
                &log,
                &[(STATE_RECEIPT_KEY, receipt)],
            )?;
            log.upgrade()?;
            st
        };
        // Only now that the log is known to go with the stored state.
        log.settle_segments()?;
        let mut written_mark = recorded_mark.unwrap_or_default();
        if format < STATE_FORMAT {
            if !bound {
                // Sealed state whose log head predates the binding (format 2), or the
                // state just sealed: bind the log to the state's generation.
                log.bind(ledger.state_gen())?;
            }
            // Make that durable, write the first mark (what is durable now), and only
            // then record the format in the keychain, which from then on requires both.
            let m = mark_of(&log, &ledger);
            store.durable_flush()?;
            if options.fsync {
                written_mark = m;
            }
            keystore.put(&mark::name(&vault_hex, user), &mark_key.seal(&written_mark))?;
        }
        if keychain_format < STATE_FORMAT {
            keys.record_format()?;
        }
        if !tree_authenticated {
            // Rotate the KEK into format 2: the `mac` entry dies with the old KEK.
            let v = keys.upgrade_state(&|| store.durable_flush())?;
            note(v + 1);
            carried_over = Some(v);
        }
        // Every epoch with records must still have its key.
        for epoch in log.live_epochs() {
            if keys.dek(epoch).is_none() {
                return Err(Error::tampered(format!(
                    "records of epoch {epoch} remain but its data key is gone"
                )));
            }
        }
        // After the user's keys opened (an erased user changes nothing).
        let (receipt_key, receipt_key_change) = configure_receipt_key(
            &store.db,
            &state,
            &ledger,
            &log,
            options.collector_receipt_key.as_deref(),
        )?;
        options.collector_receipt_key = receipt_key;
        let (purposes, policy_changed, policy) =
            record_policy(&state, &ledger, &log, &options.policy)?;
        options.policy = policy;
        // The segments opened with the caller's budget; the policy in force may be the
        // one recorded in the vault.
        log.set_segment_budget(options.policy.budget_bytes);
        let next_event_seq = log.lock().head.next_event_seq;
        let framer = Framer::new(
            options.frame_max_bytes,
            options.chunk_bytes,
            next_event_seq,
            options.policy.version,
        );
        let paused_until = read_i64(&state, STATE_PAUSE_UNTIL)?;
        // A pause never outlasts the cap of the policy in force, whatever was stored.
        let cap =
            now.saturating_add((options.policy.max_pause_secs as i64).saturating_mul(1_000_000));
        let paused_until = if paused_until > cap {
            cap
        } else {
            paused_until
        };
        let dropped = read_i64(&state, STATE_PAUSE_DROPPED)? as u64;
        let in_denied_window = read_i64(&state, STATE_DENY_GAP)? == 1;
        let at_open = mark_of(&log, &ledger);
        store.durable_flush()?;
        store.restrict_permissions()?;
        // What this open changed (policy, receipt key, a torn tail) or a crash left
        // unmarked goes into the mark now.
        let mark = Keeper::new(
            keystore.clone(),
            mark_key,
            &vault_hex,
            user,
            written_mark,
            options.fsync,
        );
        mark.durable(at_open);
        // A keychain that refuses the write does not stop the open: the maintenance
        // thread tries again (its first pass runs at once) and `status` shows it.
        let _ = mark.write_now();
        let (tx, rx) = mpsc::sync_channel(QUEUE_RECORDS);
        let (wake_maintenance, maintenance_woken) = mpsc::channel();
        let options_upload = options.upload.clone();
        let outbox = outbox::Outbox::new(dir, user, options.fsync);
        let inner = Arc::new(Inner {
            producer: parking_lot::Mutex::new(Producer {
                gate: PolicyGate::resumed(options.policy.clone(), in_denied_window),
                framer,
            }),
            opts: options,
            user: user.to_string(),
            store,
            trees,
            keystore,
            vault_id,
            device_id,
            device_seed,
            keychain_bind,
            outbox_key: release::derive_outbox_key(keys.mac_key()),
            outbox,
            keys: RwLock::new(keys),
            mark,
            state,
            log,
            ledger,
            tx,
            unwritten: AtomicU64::new(0),
            paused_until: AtomicI64::new(paused_until),
            dropped_paused: AtomicU64::new(dropped),
            filtered: AtomicU64::new(0),
            erased: std::sync::atomic::AtomicBool::new(false),
            send_gate: Default::default(),
            write_error: Mutex::new(None),
            write_failed: std::sync::atomic::AtomicBool::new(false),
            maintenance_error: Mutex::new(None),
            maintenance: wake_maintenance,
            maintenance_nudged: Default::default(),
            purposes: RwLock::new(purposes),
            release: Mutex::new(()),
            upload: options_upload
                .as_ref()
                .map(|u| Arc::new(crate::upload::Shared::new(u))),
            writer_exited: AtomicBool::new(false),
            remove_on_drop: Default::default(),
        });
        let worker = inner.clone();
        let writer = std::thread::Builder::new()
            .name("capvault-writer".into())
            .spawn(move || {
                crate::background::enter();
                // Set however the writer ends, a panic included.
                struct Exited(Arc<Inner>);
                impl Drop for Exited {
                    fn drop(&mut self) {
                        self.0.writer_exited.store(true, Ordering::Release);
                    }
                }
                let _exited = Exited(worker.clone());
                writer::run(worker, rx)
            })
            .map_err(|e| Error::Storage(format!("cannot start the writer thread: {e}")))?;
        let worker = inner.clone();
        // Opened now, so that what is served is this vault's request directory even if
        // the vault directory is renamed or replaced later.
        let requests = crate::handoff::Requests::open(&inner.dir());
        let maintenance = std::thread::Builder::new()
            .name("capvault-maintenance".into())
            .spawn(move || {
                crate::background::enter();
                limits::run(worker, requests, maintenance_woken)
            })
            .map_err(|e| Error::Storage(format!("cannot start the maintenance thread: {e}")))?;
        #[allow(unused_mut)]
        let mut vault = Vault {
            inner,
            writer: Some(writer),
            maintenance: Some(maintenance),
            #[cfg(feature = "upload")]
            uploader: None,
        };
        if let Some(v) = policy_changed {
            vault
                .inner
                .append_markers(&[Marker::PolicyChanged { version: v }])?;
            vault
                .inner
                .audit("policy-change", &format!("version {v}"))?;
        }
        if let Some(change) = receipt_key_change {
            vault.inner.audit("receipt-key", &change)?;
        }
        if let Some(v) = carried_over {
            vault.inner.audit(
                "state-format",
                &format!("stored state authenticated (format 2); KEK rotated to v{v}"),
            )?;
        }
        if let Some((records, from)) = vault.inner.log.trimmed() {
            vault.inner.audit(
                "recover",
                &format!(
                    "{records} records from record {from} on were removed: written after the last durable flush, their bytes (or an earlier record's) did not all reach the disk before a crash (never flushed, or flushed in the moment before it)"
                ),
            )?;
        }
        vault.inner.recover_release()?;
        vault.inner.enforce_limits(true)?;
        vault.inner.rotate_if_due()?;
        vault.inner.audit(
            "open",
            &format!("policy v{}", vault.inner.opts.policy.version),
        )?;
        #[cfg(feature = "upload")]
        if let (Some(shared), Some(opts)) = (&vault.inner.upload, &options_upload) {
            vault.uploader = Some(crate::upload::Uploader::start(
                vault.inner.clone(),
                shared.clone(),
                opts,
            )?);
        }
        Ok(vault)
    }

    /// Whether the vault in `dir` holds keys for `user` (it was created and not erased,
    /// or erased), without creating anything. [`Error::InUse`] when another process
    /// holds the vault.
    pub fn user_exists(dir: impl AsRef<Path>, user: &str) -> Result<bool> {
        Store::probe_user(dir.as_ref(), user)
    }

    /// Appends one event. Returns once the event is in the framer: it never waits on the
    /// disk (only on a full queue when the disk is far behind). Markers are written by the
    /// vault itself and are rejected here.
    pub fn append(&self, event: Event) -> Result<Appended> {
        self.inner.append(event)
    }

    /// Appends a mouse move.
    pub fn append_mouse_move(&self, ts_us: TimestampUs, x: i32, y: i32) -> Result<Appended> {
        self.append(Event::MouseMove { ts_us, x, y })
    }

    /// Appends a mouse button press or release.
    pub fn append_mouse_button(
        &self,
        ts_us: TimestampUs,
        button: u32,
        pressed: bool,
        x: i32,
        y: i32,
    ) -> Result<Appended> {
        self.append(Event::MouseButton {
            ts_us,
            button,
            pressed,
            x,
            y,
        })
    }

    /// Appends a scroll.
    pub fn append_scroll(&self, ts_us: TimestampUs, dx: i32, dy: i32) -> Result<Appended> {
        self.append(Event::Scroll { ts_us, dx, dy })
    }

    /// Appends a key press or release; the keystroke policy decides what is kept.
    pub fn append_key(
        &self,
        ts_us: TimestampUs,
        key_code: u32,
        pressed: bool,
        text: Option<&str>,
    ) -> Result<Appended> {
        self.append(Event::key(
            ts_us,
            key_code,
            pressed,
            text.map(str::to_string),
        ))
    }

    /// Appends a window-focus change.
    pub fn append_window_focus(
        &self,
        ts_us: TimestampUs,
        app: &str,
        title: &str,
    ) -> Result<Appended> {
        self.append(Event::WindowFocus {
            ts_us,
            app: app.into(),
            title: title.into(),
        })
    }

    /// Appends a screenshot.
    pub fn append_screenshot(
        &self,
        ts_us: TimestampUs,
        width: u32,
        height: u32,
        format: &str,
        data: &[u8],
    ) -> Result<Appended> {
        // Checked before the copy below, so an oversized buffer is never duplicated.
        self.inner.check_payload(data.len())?;
        self.append(Event::Screenshot {
            ts_us,
            width,
            height,
            format: format.into(),
            data: data.to_vec(),
        })
    }

    /// Appends an agent-defined event.
    pub fn append_custom(&self, ts_us: TimestampUs, kind: &str, data: &[u8]) -> Result<Appended> {
        self.inner.check_payload(data.len())?;
        self.append(Event::Custom {
            ts_us,
            kind: kind.into(),
            data: data.to_vec(),
        })
    }

    /// Returns once everything appended before the call is on disk and survives a crash
    /// or power loss (with the default `fsync: true`).
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// Flushes, stops the writer and releases the directory lock.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    pub(crate) fn shutdown(&mut self) -> Result<()> {
        #[cfg(feature = "upload")]
        if let Some(uploader) = self.uploader.take() {
            uploader.stop();
        }
        if let Some(handle) = self.maintenance.take() {
            let _ = self.inner.maintenance.send(limits::Wake::Stop);
            let _ = handle.join();
        }
        let Some(handle) = self.writer.take() else {
            return Ok(());
        };
        let result = self.inner.stop_writer();
        let _ = handle.join();
        // The final flush is durable: the mark names it (state changes wrote already).
        result.and_then(|()| self.inner.mark.write_now())
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn read_i64(state: &StateStore, key: &[u8]) -> Result<i64> {
    match state.get(key)? {
        None => Ok(0),
        Some(v) => decode_i64(&v),
    }
}

/// A stored big-endian i64 (pause deadline, dropped count).
pub(crate) fn decode_i64(v: &[u8]) -> Result<i64> {
    Ok(i64::from_be_bytes(v.try_into().map_err(|_| {
        Error::tampered("a stored counter has the wrong size")
    })?))
}

/// A stored `policy/<version>` record's body: the version from its name, the policy
/// from its body, which must name the same version.
pub(crate) fn decode_policy_record(name: &[u8], body: &[u8]) -> Result<(u32, Policy)> {
    let ver = u32::from_be_bytes(
        name.strip_prefix(STATE_POLICY_PREFIX)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| Error::tampered("a policy entry name is malformed"))?,
    );
    let p: Policy = serde_json::from_slice(body)
        .map_err(|_| Error::tampered("a stored policy does not parse"))?;
    if p.version != ver {
        return Err(Error::tampered(format!(
            "the policy stored as version {ver} names version {}",
            p.version
        )));
    }
    Ok((ver, p))
}

/// The bytes a policy is recorded as (compared byte for byte on every open).
pub(crate) fn encode_policy_record(policy: &Policy) -> Vec<u8> {
    serde_json::to_vec(policy).expect("policy serializes")
}

/// Test hook: moves the records and the outbox of `user` in the vault at `dir` (closed)
/// back into the database, as vaults stored them before segment files, and removes the
/// segment directory.
#[cfg(feature = "test-hooks")]
pub fn write_records_inline(dir: &Path, user: &str) -> Result<()> {
    let store = Store::open(dir, 1 << 20, true)?;
    inline_records(&store, user)?;
    store.durable_flush()
}

#[cfg(feature = "test-hooks")]
fn inline_records(store: &Store, user: &str) -> Result<()> {
    use crate::log::segments::{self, Segments, Stored};
    let trees = store.user_trees(user)?;
    let user_dir = segments::user_dir(store.dir(), user);
    let segs = Segments::open(&user_dir, segments::DEFAULT_SEGMENT_BYTES, true)?;
    for item in trees.log.range(crate::log::store::record_keys()) {
        let (k, v) = item?;
        let seq = crate::log::store::seq_of_key(&k).expect("a record key");
        if let Stored::At(loc) = Stored::parse(v)? {
            let bytes = segs.read(seq, &loc).map_err(Error::tampered)?;
            trees.log.insert(k, bytes)?;
        }
    }
    trees.log.remove(crate::log::store::SYNCED_KEY)?;
    drop(segs);
    // So did the outbox: its entry went into the state tree.
    if let Some(entry) = outbox::Outbox::new(store.dir(), user, true).read()? {
        trees.state.insert(state::OUTBOX, entry)?;
    }
    segments::remove_user(store.dir(), user)
}

/// What the format test hooks work on: the closed vault's database, its id, its
/// keychain and the trees of one user.
#[cfg(feature = "test-hooks")]
type HookVault = (Store, [u8; 16], Arc<dyn KeyStore>, UserTrees);

/// For the format test hooks: the closed vault at `dir` and the trees of `user`.
#[cfg(feature = "test-hooks")]
fn open_for_hook(dir: &Path, user: &str) -> Result<HookVault> {
    let store = Store::open(dir, 1 << 20, true)?;
    // The older formats kept the records inside the database.
    inline_records(&store, user)?;
    let vault_id = load_or_create_id(&store.db, META_VAULT_ID)?;
    let kind: KeyStoreKind =
        serde_json::from_slice(&store.db.get(META_KEYSTORE)?.expect("kind")).expect("kind parses");
    let keystore = open_keystore(kind)?;
    let trees = store.user_trees(user)?;
    Ok((store, vault_id, keystore, trees))
}

/// Test hook: rewrites the trees of `user` in the vault at `dir` (closed) in the format
/// of vaults before stored state was authenticated, for tests of the carry-over.
#[cfg(feature = "test-hooks")]
pub fn write_format1(dir: &Path, user: &str) -> Result<()> {
    let (store, vault_id, keystore, trees) = open_for_hook(dir, user)?;
    let mac = crate::keys::hierarchy::downgrade_mac_entry(&*keystore, &trees.keys, vault_id, user)?;
    state::downgrade(&trees.state, &Sealer::new(&mac, &vault_id, user))?;
    // Counters unauthenticated under 0x02 || epoch, the ledger head without a generation.
    let anchors = AnchorKey::new(&mac, &vault_id, user);
    let counts_key = crate::log::store::COUNTS_KEY;
    if let Some(c) = trees.log.get(counts_key)? {
        let (_, _, counts) = anchors.open_counts(&c)?;
        for (e, c) in counts {
            let mut k = vec![0x02];
            k.extend_from_slice(&e.to_be_bytes());
            trees.log.insert(k, &c.encode())?;
        }
        trees.log.remove(counts_key)?;
    }
    unbind_log(&trees, &anchors)?;
    KeyHierarchy::forget_format(&*keystore, &vault_id, user)?;
    let ledger_anchors = crate::audit::anchor_key(&mac, &vault_id, user);
    let head_key = crate::log::store::HEAD_KEY;
    if let Some(h) = trees.ledger.get(head_key)? {
        let mut head = ledger_anchors.open_head(&h)?;
        head.next_event_seq = 0;
        trees
            .ledger
            .insert(head_key, ledger_anchors.seal_head(&head))?;
    }
    store.durable_flush()
}

/// How far the log, the ledger and the stored state have come (in memory: each is
/// updated after its write applied, so a durable flush started afterwards covers it).
fn mark_of(log: &Log, ledger: &crate::audit::Ledger) -> Mark {
    let (head, tail) = {
        let st = log.lock();
        (st.head.last_seq, st.tail.first_seq)
    };
    Mark {
        head,
        tail,
        ledger: ledger.last_seq(),
        state_gen: ledger.state_gen(),
    }
}

/// The log head, the state anchor and the ledger head name one generation of the stored
/// state (docs/FORMAT.md section 12): the state and ledger put back from another moment
/// over the current log, or an older log under the current state, disagree.
/// `log_gen` is `None` for a log head from before the binding (carried over at open).
fn check_generations(log_gen: Option<u64>, ledger: &crate::audit::Ledger) -> Result<()> {
    let state_gen = ledger.state_gen();
    let Some(log_gen) = log_gen else {
        return Ok(());
    };
    if log_gen != state_gen {
        return Err(Error::tampered(format!(
            "the stored state and the audit ledger are generation {state_gen} but the log's head names generation {log_gen} (the state and the ledger, or the log, were put back from another moment)"
        )));
    }
    Ok(())
}

/// Test hook: rewrites the log head of `user` in the form before it named the state
/// generation and removes the keychain's format record, as in vaults of format 2 (records
/// inside the database, as then).
#[cfg(feature = "test-hooks")]
pub fn write_format2(dir: &Path, user: &str) -> Result<()> {
    let (store, vault_id, keystore, trees) = open_for_hook(dir, user)?;
    let (keys, _) = KeyHierarchy::open(keystore.clone(), trees.keys.clone(), vault_id, user, 0)?;
    unbind_log(&trees, &AnchorKey::new(keys.mac_key(), &vault_id, user))?;
    KeyHierarchy::forget_format(&*keystore, &vault_id, user)?;
    store.durable_flush()
}

/// Test hook: the log head without the state generation.
#[cfg(feature = "test-hooks")]
fn unbind_log(trees: &UserTrees, anchors: &AnchorKey) -> Result<()> {
    let head_key = crate::log::store::HEAD_KEY;
    if let Some(h) = trees.log.get(head_key)? {
        let (head, _) = anchors.open_log_head(&h)?;
        trees.log.insert(head_key, anchors.seal_head(&head))?;
    }
    Ok(())
}

/// Creates a new user's trees in one transaction: the wrapped keys, an empty log head,
/// the state anchor and the ledger head that names it. From then on each of them must
/// exist, so removing one is detected.
fn create_user(
    trees: &UserTrees,
    entries: crate::keys::hierarchy::NewEntries,
    mac_key: &Key32,
    vault_id: &[u8; 16],
    user: &str,
) -> Result<()> {
    use sled::Transactional;
    let log_anchors = AnchorKey::new(mac_key, vault_id, user);
    let (gen, anchor) = StateStore::initial_anchor(&Sealer::new(mac_key, vault_id, user));
    let log_head = log_anchors.seal_log_head(&crate::log::anchor::Head {
        state_gen: gen,
        ..Default::default()
    });
    let log_counts = log_anchors.seal_counts(0, 1, &Default::default());
    let ledger_head =
        crate::audit::anchor_key(mac_key, vault_id, user).seal_head(&crate::log::anchor::Head {
            next_event_seq: gen,
            ..Default::default()
        });
    let head_key = crate::log::store::HEAD_KEY;
    (&trees.keys, &trees.log, &trees.state, &trees.ledger)
        .transaction(|(k, l, s, g)| {
            for (key, value) in &entries {
                k.insert(key, value.clone())?;
            }
            l.insert(head_key, log_head.as_slice())?;
            l.insert(crate::log::store::COUNTS_KEY, log_counts.as_slice())?;
            s.insert(state::ANCHOR, anchor.as_slice())?;
            g.insert(head_key, ledger_head.as_slice())?;
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|e| match e {
            sled::transaction::TransactionError::Storage(e) => Error::from(e),
            sled::transaction::TransactionError::Abort(()) => {
                Error::Storage("creating the user's trees was aborted".into())
            }
        })
}

/// A stored receipt key setting (the user's record, or the vault-wide copy in metadata):
/// empty for none.
pub(crate) fn decode_receipt_key(v: &[u8]) -> Result<Option<String>> {
    if v.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(v)
        .ok()
        .filter(|t| t.parse::<capvault_format::ReceiptKey>().is_ok())
        .map(|t| Some(t.to_string()))
        .ok_or_else(|| Error::tampered("the stored collector receipt key does not parse"))
}

/// The receipt key in force for this user: the one asked for replaces the recorded one
/// ("none" removes it), no key asked for keeps the recorded one. The user's setting is
/// authenticated stored state; the vault-wide copy in metadata only seeds a user that
/// has none yet (a forged one could only demand receipts, never drop the demand).
/// Returns it and, when it changed, a line for the audit ledger.
fn configure_receipt_key(
    db: &sled::Db,
    state: &StateStore,
    ledger: &crate::audit::Ledger,
    log: &Log,
    asked: Option<&str>,
) -> Result<(Option<String>, Option<String>)> {
    let recorded = state.get(STATE_RECEIPT_KEY)?;
    let stored = match &recorded {
        Some(v) => decode_receipt_key(v)?,
        None => match db.get(META_RECEIPT_KEY)? {
            Some(v) => decode_receipt_key(&v)?,
            None => None,
        },
    };
    let save = |key: Option<&str>| -> Result<()> {
        let body = key.unwrap_or("").as_bytes();
        state.put(ledger, log, &[Put::Sealed(STATE_RECEIPT_KEY, Some(body))])?;
        match key {
            Some(k) => db.insert(META_RECEIPT_KEY, k.as_bytes())?,
            None => db.remove(META_RECEIPT_KEY)?,
        };
        Ok(())
    };
    match asked {
        None => {
            if recorded.is_none() {
                save(stored.as_deref())?;
            }
            Ok((stored, None))
        }
        Some(NO_RECEIPT_KEY) => {
            let Some(old) = stored else {
                if recorded.is_none() {
                    save(None)?;
                }
                return Ok((None, None));
            };
            save(None)?;
            Ok((
                None,
                Some(format!("removed {old}: acks no longer need a receipt")),
            ))
        }
        Some(k) => {
            let key = k.parse::<capvault_format::ReceiptKey>()?.to_string();
            if stored.as_deref() == Some(key.as_str()) && recorded.is_some() {
                return Ok((stored, None));
            }
            save(Some(&key))?;
            if stored.as_deref() == Some(key.as_str()) {
                return Ok((stored, None));
            }
            let change = match stored {
                Some(old) => format!("{key} replaces {old}: acks need its receipts"),
                None => format!("{key}: acks need its receipts"),
            };
            Ok((Some(key), Some(change)))
        }
    }
}

/// Records the policy under its version, refusing a changed policy under an old version.
/// Returns all known purposes, the version when it is new and not the first, and the
/// policy in force (the latest recorded one when `policy` is the default).
fn record_policy(
    state: &StateStore,
    ledger: &crate::audit::Ledger,
    log: &Log,
    policy: &Policy,
) -> Result<(BTreeMap<u32, String>, Option<u32>, Policy)> {
    let mut purposes = BTreeMap::new();
    let mut latest: Option<Policy> = None;
    for name in state.names(STATE_POLICY_PREFIX) {
        let v = state.get(&name)?.unwrap_or_default();
        let (ver, p) = decode_policy_record(&name, &v)?;
        purposes.insert(ver, p.purpose.clone());
        latest = Some(p);
    }
    if let Some(latest) = latest {
        if *policy == Policy::default() {
            return Ok((purposes, None, latest));
        }
    }
    let mut key = STATE_POLICY_PREFIX.to_vec();
    key.extend_from_slice(&policy.version.to_be_bytes());
    let json = encode_policy_record(policy);
    // Once a later version was used, an earlier one never comes back into force (an
    // agent restarted with its previous configuration would drop the newer rules
    // silently): the default policy keeps what the vault records.
    if let Some(&newest) = purposes.keys().next_back() {
        if newest > policy.version {
            return Err(Error::invalid(format!(
                "policy version {} is older than version {newest}, which this vault already uses: configure version {newest} or later (or the default policy, which keeps the latest recorded one)",
                policy.version
            )));
        }
    }
    let changed = match state.get(&key)? {
        Some(stored) if stored == json => None,
        Some(_) => {
            return Err(Error::invalid(format!(
                "policy version {} is already recorded with different settings; raise policy.version when the policy changes",
                policy.version
            )))
        }
        None => {
            state.put(ledger, log, &[Put::Sealed(&key, Some(&json))])?;
            let first = purposes.is_empty();
            purposes.insert(policy.version, policy.purpose.clone());
            (!first).then_some(policy.version)
        }
    };
    Ok((purposes, changed, policy.clone()))
}

/// Opens the vault directory and its keychain. A new vault asks the keychain first, so
/// nothing is written unless keys can be kept safely; an existing vault uses the keychain
/// it records (asking for another one explicitly is an error).
fn open_store_and_keystore(
    dir: &Path,
    options: &VaultOptions,
) -> Result<(Store, Arc<dyn KeyStore>)> {
    let existing = dir.join("conf").exists();
    let early = if existing {
        None
    } else {
        Some(open_keystore(options.keystore)?)
    };
    let store = Store::open(dir, options.cache_bytes, options.fsync)?;
    let recorded: Option<KeyStoreKind> = match store.db.get(META_KEYSTORE)? {
        Some(v) => Some(
            serde_json::from_slice(&v)
                .map_err(|_| Error::tampered("the recorded keychain kind does not parse"))?,
        ),
        None => None,
    };
    let keystore = match (early, recorded) {
        (Some(ks), _) => ks,
        (None, Some(rec)) if options.keystore == KeyStoreKind::Auto || options.keystore == rec => open_keystore(rec)?,
        (None, Some(rec)) => {
            return Err(Error::invalid(format!(
                "this vault keeps its keys in the {} keychain; open it with keystore \"{}\" or \"auto\"",
                rec.as_str(),
                rec.as_str()
            )))
        }
        (None, None) => open_keystore(options.keystore)?,
    };
    if recorded.is_none() {
        store.db.insert(
            META_KEYSTORE,
            serde_json::to_vec(&keystore.kind()).expect("serializes"),
        )?;
    }
    Ok((store, keystore))
}

impl Inner {
    /// Writes authenticated stored state (src/vault/state.rs).
    /// The stored log head, state anchor and ledger head name one state generation
    /// (read from the trees under the log lock, which every state write holds).
    pub(crate) fn check_generations(&self) -> Result<()> {
        let _st = self.log.lock();
        let log_gen = self.log.stored_state_gen()?.ok_or_else(|| {
            Error::tampered("the log's head anchor does not name the stored state's generation (an older copy of the log was put back)")
        })?;
        let (state_gen, ledger_gen) = (self.state.stored_gen()?, self.ledger.stored_state_gen()?);
        if state_gen != ledger_gen || log_gen != state_gen {
            return Err(Error::tampered(format!(
                "the stored state is generation {state_gen}, the audit ledger names {ledger_gen} and the log's head {log_gen} (parts of the vault were put back from another moment)"
            )));
        }
        Ok(())
    }

    pub(crate) fn state_put(&self, puts: &[Put<'_>]) -> Result<()> {
        crate::failpoint::hit("state:put")?;
        self.state.put(&self.ledger, &self.log, puts)
    }

    /// The user's keys; [`Error::Erased`] once they were destroyed through this handle
    /// (checked under the lock, so no caller sees a half-erased hierarchy).
    pub(crate) fn keys(&self) -> Result<RwLockReadGuard<'_, KeyHierarchy>> {
        let guard = self.keys.read().unwrap_or_else(|p| p.into_inner());
        self.check_live()?;
        Ok(guard)
    }

    pub(crate) fn keys_mut(&self) -> Result<RwLockWriteGuard<'_, KeyHierarchy>> {
        let guard = self.keys.write().unwrap_or_else(|p| p.into_inner());
        self.check_live()?;
        Ok(guard)
    }

    pub(crate) fn producer(&self) -> parking_lot::MutexGuard<'_, Producer> {
        self.producer.lock()
    }

    pub(crate) fn purpose_of(&self, version: u32) -> Result<String> {
        self.purposes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&version)
            .cloned()
            .ok_or_else(|| Error::tampered(format!("unknown policy version {version}")))
    }

    fn check_payload(&self, len: usize) -> Result<()> {
        if len > self.opts.max_payload_bytes {
            return Err(Error::invalid(format!(
                "payload of {len} bytes exceeds max_payload_bytes ({})",
                self.opts.max_payload_bytes
            )));
        }
        #[cfg(feature = "upload")]
        if let Some(up) = &self.opts.upload {
            check_upload_room(up, len)?;
        }
        Ok(())
    }

    /// With the built-in uploader, an event whose encoding (payload and strings alike)
    /// cannot fit in one bundle a collector takes is refused: sealed alone, it would be
    /// refused for good, with every later bundle waiting behind it. The collector's
    /// limit is taken as at least its default, or the larger `max_bundle_bytes` the
    /// administrator set to match it. (A payload alone is checked before it is copied,
    /// in [`Inner::check_payload`]; pointer events always fit.)
    #[cfg(feature = "upload")]
    fn check_fits_an_upload(&self, event: &Event) -> Result<()> {
        let Some(up) = &self.opts.upload else {
            return Ok(());
        };
        if matches!(
            event,
            Event::MouseMove { .. } | Event::MouseButton { .. } | Event::Scroll { .. }
        ) {
            return Ok(());
        }
        check_upload_room(up, event.encoded_len_max())
    }

    /// Fails with [`Error::Erased`] once the user was erased through this handle.
    pub(crate) fn check_live(&self) -> Result<()> {
        if self.is_erased() {
            return Err(Error::Erased);
        }
        Ok(())
    }

    pub(crate) fn is_erased(&self) -> bool {
        self.erased.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_erased(&self) {
        self.erased.store(true, Ordering::Relaxed);
    }

    /// Stores `event` (or not, as the policy says); the event's own copy of what was
    /// captured is wiped before this returns, stored or not.
    fn append(&self, mut event: Event) -> Result<Appended> {
        let appended = self.append_event(&mut event);
        // After the append lock is released: other appenders do not wait for the wipe.
        event.wipe();
        appended
    }

    fn append_event(&self, event: &mut Event) -> Result<Appended> {
        self.check_live()?;
        if matches!(event, Event::Marker { .. }) {
            return Err(Error::invalid(
                "markers are written by the vault, not appended",
            ));
        }
        self.check_payload(event.payload_len())?;
        #[cfg(feature = "upload")]
        self.check_fits_an_upload(event)?;
        // The flag keeps the common case to one atomic load.
        if self.write_failed.load(Ordering::Relaxed) {
            let e = self
                .write_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(Error::StorageFull(format!("the vault cannot store more data right now ({e}); what was flushed is safe; free disk space, then close and reopen the vault")));
        }
        if self.budget_refuses() {
            return Err(Error::StorageFull(format!(
                "the byte budget of {} bytes is used up and the policy refuses new data; seal and acknowledge bundles to make room",
                self.opts.policy.budget_bytes
            )));
        }
        if self.paused_until.load(Ordering::Relaxed) != 0 && self.check_pause()? {
            self.dropped_paused.fetch_add(1, Ordering::Relaxed);
            return Ok(Appended::Paused);
        }
        // A large payload (a screenshot or custom event, the only ones with payloads) is
        // moved out and the rest encoded before taking the append lock; the gate keeps or
        // drops such events but never looks at their payload.
        let encoded =
            (event.payload_len() > self.opts.frame_max_bytes / 2).then(|| take_large(event));
        let mut p = self.producer();
        let Producer { gate, framer } = &mut *p;
        let was_denied = gate.in_denied_window();
        let admission = gate.admit(event);
        if gate.in_denied_window() != was_denied {
            // Only on focus changes into or out of a deny-listed window.
            let flag = i64::from(gate.in_denied_window());
            self.state_put(&[Put::Sealed(STATE_DENY_GAP, Some(&flag.to_be_bytes()))])?;
        }
        let (markers, store) = match admission {
            Admission::Store(m) => (m, true),
            Admission::Drop(m) => (m, false),
        };
        let ts = event.ts_us();
        if !markers.is_empty() {
            self.push_markers_at(framer, ts, markers)?;
        }
        if store {
            let mut queue = Queue::new(self);
            let opens = framer.opens();
            match encoded {
                Some(whole) => framer.push_taken_large(whole, &mut |j| queue.send(j)),
                None => framer.push(event, &mut |j| queue.send(j)),
            }
            queue.frame_opened(framer, opens);
            queue.result?;
        }
        if store {
            Ok(Appended::Stored)
        } else {
            self.filtered.fetch_add(1, Ordering::Relaxed);
            Ok(Appended::Filtered)
        }
    }

    /// Queues vault-written markers (never filtered or paused).
    pub(crate) fn append_markers(&self, markers: &[Marker]) -> Result<()> {
        let mut p = self.producer();
        self.push_markers(&mut p, markers)
    }

    pub(crate) fn push_markers(&self, p: &mut Producer, markers: &[Marker]) -> Result<()> {
        self.push_markers_at(&mut p.framer, now_us(), markers.to_vec())
    }

    fn push_markers_at(
        &self,
        framer: &mut Framer,
        ts_us: TimestampUs,
        markers: Vec<Marker>,
    ) -> Result<()> {
        let mut queue = Queue::new(self);
        let opens = framer.opens();
        for marker in markers {
            framer.push(&Event::Marker { ts_us, marker }, &mut |j| queue.send(j));
        }
        queue.frame_opened(framer, opens);
        queue.result
    }

    /// Sends the open frame and a flush request while holding the append lock, so the
    /// flush covers exactly what was appended before. Returns the reply channel.
    fn request_flush(
        &self,
        p: &mut Producer,
        answer: writer::Answer,
    ) -> Result<mpsc::Receiver<Result<()>>> {
        let (reply, wait) = mpsc::channel();
        self.send_with_open_frame(p, Msg::Flush(reply, answer))?;
        Ok(wait)
    }

    /// Saves the count of events dropped during a pause (so it survives a restart too),
    /// then queues the open frame and `msg`.
    fn send_with_open_frame(&self, p: &mut Producer, msg: Msg) -> Result<()> {
        self.save_paused_count()?;
        self.send_open_frame_then(p, msg)
    }

    fn save_paused_count(&self) -> Result<()> {
        if self.paused_until.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let dropped = self.dropped_paused.load(Ordering::Relaxed) as i64;
        self.state_put(&[Put::Sealed(
            STATE_PAUSE_DROPPED,
            Some(&dropped.to_be_bytes()),
        )])
    }

    fn send_open_frame_then(&self, p: &mut Producer, msg: Msg) -> Result<()> {
        if let Some(job) = p.framer.cut() {
            let mut queue = Queue::new(self);
            queue.send(job);
            queue.result?;
        }
        self.tx.send(msg).map_err(|_| Error::Closed)
    }

    pub(crate) fn flush(&self) -> Result<()> {
        self.check_live()?;
        let wait = {
            let mut p = self.producer();
            self.request_flush(&mut p, writer::Answer::Durable)?
        };
        wait.recv().map_err(|_| Error::Closed)??;
        if let Some(upload) = &self.upload {
            upload.flushed(self.log.lock().bytes());
        }
        Ok(())
    }

    /// Flushes while keeping the append lock: on return every appended event is stored
    /// and nothing new can be appended until the guard drops. Used by operations that
    /// change keys or read the whole log.
    pub(crate) fn quiesce(&self) -> Result<parking_lot::MutexGuard<'_, Producer>> {
        self.check_live()?;
        let mut p = self.producer();
        let wait = self.request_flush(&mut p, writer::Answer::Marked)?;
        wait.recv().map_err(|_| Error::Closed)??;
        Ok(p)
    }

    fn stop_writer(&self) -> Result<()> {
        let (reply, wait) = mpsc::channel();
        let saved = {
            let mut p = self.producer();
            // The open frame and the stop reach the writer even when saving the count
            // fails (on a full disk, say), or closing waits for a writer that never ends.
            let saved = self.save_paused_count();
            self.send_open_frame_then(&mut p, Msg::Stop(reply))?;
            saved
        };
        let stopped = wait.recv().map_err(|_| Error::Closed)?;
        saved.and(stopped)
    }

    /// Called by the writer thread: encrypts and stores a batch.
    pub(crate) fn write_records(&self, jobs: &mut [Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        crate::failpoint::hit("write:before-batch")?;
        let keys = self.keys()?;
        self.log
            .append(jobs, &keys, &|v| self.purpose_of(v), now_us())
    }

    /// The segments first, then the index that names their bytes (docs/FORMAT.md §14);
    /// space of records gone from the front comes back once that is durable.
    pub(crate) fn durable_flush(&self) -> Result<()> {
        let unmarked = self.durable_flush_unmarked()?;
        self.store.mark(unmarked)
    }

    /// [`Inner::durable_flush`] up to the mark file ([`Store::durable_flush_unmarked`]):
    /// the writer answers a waiting `flush` before it writes the mark.
    pub(crate) fn durable_flush_unmarked(&self) -> Result<Unmarked> {
        if self.is_erased() {
            // The user's log and segments went with the keys: nothing of it to sync or
            // name (a synced anchor would put an entry back into the cleared tree).
            return self.store.durable_flush_unmarked();
        }
        // Taken first: everything they name is applied and so covered by the flush.
        let covered = mark_of(&self.log, &self.ledger);
        let front = self.log.front();
        self.log.sync_segments()?;
        crate::failpoint::hit("flush:after-segments")?;
        let unmarked = self.store.durable_flush_unmarked()?;
        self.flushed(covered, front)?;
        Ok(unmarked)
    }

    /// After a durable flush that began with the keychain mark's `covered` and the
    /// first live record at `front`: the keychain mark may name what it covered, and
    /// the space of records gone from the front comes back.
    fn flushed(&self, covered: Mark, front: u64) -> Result<()> {
        if self.mark.durable(covered) {
            let _ = self.maintenance.send(limits::Wake::Mark);
        }
        crate::failpoint::hit("flush:before-release")?;
        self.log.release_space(front)
    }

    /// A durable flush that an agent waits for, one device round trip shorter: the
    /// segments' fdatasync runs on a second thread beside the index's flush (sled's
    /// write and the fdatasync of its file), and the synced anchor, which must not be
    /// durable before the bytes it names, goes into sled only once that sync is done
    /// (docs/FORMAT.md §14). Everything the flush covers is durable when it returns.
    /// Also returns whether the synced anchor moved and so may not be durable yet (it
    /// rode along only if it reached sled before the index's flush took its buffers):
    /// the next durable flush makes it so, and the writer runs one when none comes soon.
    pub(crate) fn durable_flush_overlapped(&self) -> Result<(Unmarked, bool)> {
        if self.is_erased() || !self.store.syncs() {
            return Ok((self.durable_flush_unmarked()?, false));
        }
        let covered = mark_of(&self.log, &self.ledger);
        let front = self.log.front();
        // The anchor the last such flush named goes into sled now, with this flush's
        // index (never on its own: that would cost sled a buffer write of its own).
        self.log.put_named_synced()?;
        let sync_and_name = || -> Result<bool> {
            let last = self.log.sync_segment_bytes()?;
            crate::failpoint::hit("flush:before-naming")?;
            Ok(self.log.name_synced_later(last))
        };
        let both = std::thread::scope(|s| {
            // Tests make the spawn fail here, as a process at its thread limit would.
            crate::failpoint::hit("flush:spawn").ok()?;
            let segments = std::thread::Builder::new()
                .name("capvault-sync".into())
                .spawn_scoped(s, sync_and_name)
                .ok()?;
            let index = self.store.durable_flush_unmarked();
            let segments = segments
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            Some((segments, index))
        });
        // No thread to be had (a process at its limit): the flush in order, on this one.
        let Some((segments, index)) = both else {
            return Ok((self.durable_flush_unmarked()?, false));
        };
        // When the segments' sync failed, the index's generation stays unmarked and
        // nothing names their records.
        let named = segments?;
        let unmarked = index?;
        crate::failpoint::hit("flush:after-segments")?;
        self.flushed(covered, front)?;
        Ok((unmarked, named))
    }

    /// After a state change's durable flush: the keychain mark names it at once. A
    /// failed write is tried again by the maintenance thread and shown by `status`; the
    /// change itself stands.
    pub(crate) fn mark_now(&self) {
        if self.mark.write_now().is_err() {
            let _ = self.maintenance.send(limits::Wake::Mark);
        }
    }

    /// `verify`: the stored log, ledger and state are not behind the keychain mark.
    pub(crate) fn check_mark(&self) -> Result<()> {
        let (head, tail) = self.log.stored_ends()?;
        let found = Mark {
            head,
            tail,
            ledger: self.ledger.stored_last_seq()?,
            state_gen: self.ledger.stored_state_gen()?,
        };
        match self.mark.recorded()? {
            Some(m) => m.check(&found, &self.user),
            None => Err(Error::tampered(format!(
                "the high-water mark of user {:?} is missing from the keychain (the keychain entry was deleted); whether the vault directory was rolled back cannot be told",
                self.user
            ))),
        }
    }

    /// Called by the writer after it stored records: wakes the maintenance thread (once
    /// until it runs) and an idle uploader.
    pub(crate) fn records_written(&self) {
        if !self.maintenance_nudged.swap(true, Ordering::AcqRel) {
            let _ = self.maintenance.send(limits::Wake::Wrote);
        }
        if let Some(upload) = &self.upload {
            upload.data_written();
        }
    }

    /// Called by the maintenance thread when it wakes up.
    pub(crate) fn maintenance_woken(&self) {
        self.maintenance_nudged.store(false, Ordering::Release);
    }

    /// A sender that wakes the maintenance thread.
    pub(crate) fn maintenance_waker(&self) -> mpsc::Sender<limits::Wake> {
        self.maintenance.clone()
    }

    pub(crate) fn set_maintenance_problems(&self, problems: &[String]) {
        *self
            .maintenance_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) =
            (!problems.is_empty()).then(|| problems.join("; "));
    }

    pub(crate) fn maintenance_error(&self) -> Option<String> {
        self.maintenance_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_write_error(&self, e: Option<&Error>) {
        if e.is_none() && !self.write_failed.load(Ordering::Relaxed) {
            return;
        }
        *self.write_error.lock().unwrap_or_else(|p| p.into_inner()) = e.map(|e| e.to_string());
        self.write_failed.store(e.is_some(), Ordering::Relaxed);
    }

    pub(crate) fn dir(&self) -> PathBuf {
        self.store.dir().to_path_buf()
    }
}
