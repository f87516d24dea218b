//! sled as the store of record: opening (one owning process), per-user trees, a flush
//! that really reaches the disk, and the durability mark that tells a damaged log from a
//! torn one.
//!
//! Key layout of a user's log tree (u64 keys are big-endian, so order is numeric):
//! `0x00 || seq` records (where their bytes are in the segment files; in vaults from
//! before segments, the record itself), `0x01 'h'` head anchor, `0x01 't'` tail anchor,
//! `0x01 'c'` per-epoch counters (records, bytes) MAC'd with the ends they describe,
//! `0x01 'y'` the last record whose segment bytes were synced;
//! `0x02 || epoch` the unauthenticated counters of vaults before that (read once, at the
//! carry-over).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::log::sync_latch::{forget_cached, SyncLatch};

const RECORD_PREFIX: u8 = 0x00;
pub(crate) const HEAD_KEY: &[u8] = &[0x01, b'h'];
pub(crate) const TAIL_KEY: &[u8] = &[0x01, b't'];
pub(crate) const COUNTS_KEY: &[u8] = &[0x01, b'c'];
pub(crate) const SYNCED_KEY: &[u8] = &[0x01, b'y'];
/// How long an opener waits for a lock that is about to be released.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// sled segment size of new vaults (fixed when the vault is created). Small: sled's
/// cleaner reclaims a segment once most of it is dead, and with the records in segment
/// files sled holds little, so with 4 MiB segments the space of replaced values (every
/// state change rewrites a few) never came back and the database grew by about 9 KB per
/// seal/ack cycle without bound (docs/PERFORMANCE.md, "Space after seal and ack").
const SEGMENT_SIZE: usize = 256 << 10;
/// sled segment size of vaults created before the segment files (records of 64 KiB were
/// sled values then, and larger segments kept their nodes in sled's log).
const SEGMENT_SIZE_INLINE: usize = 4 << 20;
/// Default-tree key of the durable generation (u64), bumped by every durable flush.
const DURABLE_GEN_KEY: &[u8] = b"durable_gen";
/// The file holding the last durable generation sled confirmed (docs/FORMAT.md).
pub(crate) const MARK_FILE: &str = "durable";
const MARK_LABEL: &[u8] = b"capvault-durable-v1";
/// What to do about a damaged vault, for error messages.
pub(crate) const DAMAGED_ADVICE: &str = "restore the vault directory from a backup, or erase this user's data (capvault erase) to start again";

/// Key of record `seq` in a log tree.
pub(crate) fn record_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = RECORD_PREFIX;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The record sequence number in a record key, or `None` for other keys.
pub(crate) fn seq_of_key(key: &[u8]) -> Option<u64> {
    if key.len() == 9 && key[0] == RECORD_PREFIX {
        Some(u64::from_be_bytes(key[1..].try_into().ok()?))
    } else {
        None
    }
}

/// Range of all record keys.
pub(crate) fn record_keys() -> std::ops::RangeInclusive<[u8; 9]> {
    record_key(0)..=record_key(u64::MAX)
}

/// A new record's slot was already taken when its write ran.
pub(crate) fn slot_taken() -> Error {
    Error::tampered("a record already exists where the next one belongs; refusing to overwrite it")
}

/// After a transaction that failed in storage: sled may have applied part of it in
/// memory first (a full disk). Takes back exactly the new records it put in (the log
/// refuses until reopened anyway, see `Log::usable`; this keeps the tree it holds
/// until then as close to the durable one as sled allows).
pub(crate) fn take_back<K: AsRef<[u8]>>(tree: &sled::Tree, fresh: &[(K, sled::IVec)]) {
    for (k, v) in fresh {
        if tree.get(k).ok().flatten().as_ref() == Some(v) {
            let _ = tree.remove(k);
        }
    }
}

/// Records and bytes of one epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct EpochCount {
    pub records: u64,
    pub bytes: u64,
}

impl EpochCount {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.records.to_be_bytes());
        b[8..].copy_from_slice(&self.bytes.to_be_bytes());
        b
    }
    pub(crate) fn decode(b: &[u8]) -> Result<Self> {
        if b.len() != 16 {
            return Err(Error::tampered("an epoch counter has the wrong size"));
        }
        Ok(EpochCount {
            records: u64::from_be_bytes(b[..8].try_into().expect("8")),
            bytes: u64::from_be_bytes(b[8..].try_into().expect("8")),
        })
    }
}

/// The trees of one user: log (records + anchors + counters), keys (wrapped keys),
/// state (pause, bundles, policies) and ledger (audit entries).
#[derive(Clone)]
pub(crate) struct UserTrees {
    pub log: sled::Tree,
    pub keys: sled::Tree,
    pub state: sled::Tree,
    pub ledger: sled::Tree,
}

/// A durable flush that the mark file does not name yet ([`Store::mark`]).
#[must_use]
pub(crate) struct Unmarked(Option<u64>);

/// The mark file's generation, and the highest durable generation a write of it
/// failed to name, with why: the next write names at least that one, and until one
/// does, every durable flush writes the mark before it answers.
struct MarkState {
    marked: u64,
    failed: Option<(u64, String)>,
    /// The database's files are removed (its last user was erased through this
    /// handle): a mark written now would outlive them and make a vault created here
    /// later look as if it had lost writes.
    retired: bool,
}

/// An open vault directory.
pub(crate) struct Store {
    pub db: sled::Db,
    dir: PathBuf,
    fsync: bool,
    /// The last durable generation handed out. Handed out and written into sled under
    /// one lock, so sled's value only grows: two flushes at once never leave a lower
    /// generation in sled than the one the later of them writes into the mark.
    gen: std::sync::Mutex<u64>,
    /// What the mark file names, and what it failed to.
    marked: std::sync::Mutex<MarkState>,
    /// What durable flushes synced already (files are synced once, `db` every time).
    synced: std::sync::Mutex<Synced>,
    /// Once a sync of the database's files failed, every later one fails too.
    sync_latch: SyncLatch,
}

impl Store {
    /// Opens (creating if needed) the vault directory. A directory locked by another
    /// process gives [`Error::InUse`].
    pub(crate) fn open(dir: &Path, cache_bytes: u64, fsync: bool) -> Result<Store> {
        create_private_dir(dir)?;
        let db = Self::raw(dir, cache_bytes)?;
        crate::failpoint::hit("store:after-sled-open")?;
        let gen = check_durable_mark(dir, &db)?;
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            fsync,
            gen: std::sync::Mutex::new(gen),
            marked: std::sync::Mutex::new(MarkState {
                marked: gen,
                failed: None,
                retired: false,
            }),
            synced: std::sync::Mutex::new(Synced::new()),
            sync_latch: SyncLatch::default(),
        };
        store.restrict_permissions()?;
        Ok(store)
    }

    /// Whether the vault in `dir` has keys for `user`, creating nothing.
    /// [`Error::InUse`] when another process holds the vault.
    pub(crate) fn probe_user(dir: &Path, user: &str) -> Result<bool> {
        if !dir.join("conf").exists() {
            return Ok(false);
        }
        check_owner(dir)?;
        let db = Self::raw(dir, 1 << 20)?;
        let name = format!("u/{}/keys", data_encoding::HEXLOWER.encode(user.as_bytes()));
        Ok(db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes()))
    }

    /// The sled database of a vault with capvault's configuration (no checks).
    ///
    /// sled's background flusher is off: it woke up every 200 ms whether or not anything
    /// was written. The vault's writer flushes instead, a moment after it writes
    /// ([`Store::lazy_flush`]), and `flush` makes everything durable. Without the flusher,
    /// dropping the handle also releases the directory lock at once.
    pub(crate) fn raw(dir: &Path, cache_bytes: u64) -> Result<sled::Db> {
        // sled creates `blobs/` with the process's umask; made first, it is private
        // from the start (sled leaves an existing one as it is).
        let blobs = dir.join("blobs");
        if !blobs.exists() {
            // Recursive: also makes a missing vault directory, 0700 (and tolerates a
            // concurrent creator).
            private_dir_builder()
                .recursive(true)
                .create(&blobs)
                .map_err(|e| Error::Storage(format!("cannot create {}: {e}", blobs.display())))?;
        }
        refuse_special_files(dir)?;
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .segment_size(segment_size_of(dir))
            .flush_every_ms(None);
        // sled's I/O threads release the directory lock a moment after the previous
        // owner in this process closed it; wait briefly before calling the vault in use.
        let deadline = std::time::Instant::now() + LOCK_GRACE;
        loop {
            // Before every attempt: a holder seen by one attempt (a probe of the lock,
            // an opener about to give up) may be gone by the next.
            #[cfg(any(target_os = "linux", target_os = "macos"))]
            remove_interrupted_snapshot(dir)?;
            match config.open() {
                // sled wrote its files (a snapshot, at least) with the process's umask.
                Ok(db) => return restrict(dir).map(|()| db),
                Err(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::InUse);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(other) => return Err(other.into()),
            }
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The trees of `user`. Tree names carry the user name in hex, so any name is safe.
    pub(crate) fn user_trees(&self, user: &str) -> Result<UserTrees> {
        let hex = data_encoding::HEXLOWER.encode(user.as_bytes());
        Ok(UserTrees {
            log: self.db.open_tree(format!("u/{hex}/log"))?,
            keys: self.db.open_tree(format!("u/{hex}/keys"))?,
            state: self.db.open_tree(format!("u/{hex}/state"))?,
            ledger: self.db.open_tree(format!("u/{hex}/ledger"))?,
        })
    }

    /// Makes everything written so far durable: sled's flush, then fsync of its files and
    /// the directory (sled's own flush does not survive power loss).
    ///
    /// Each such flush first writes a new durable generation into sled, after everything
    /// it covers, and records it in the mark file once sled made it durable. sled treats
    /// the first damaged message of its log as a torn tail and silently drops everything
    /// after it; a generation in sled below the mark tells that damage from a crash.
    pub(crate) fn durable_flush(&self) -> Result<()> {
        let unmarked = self.durable_flush_unmarked()?;
        self.mark(unmarked)
    }

    /// [`Store::durable_flush`] up to the mark: everything is durable when it returns,
    /// and [`Store::mark`] then names it in the mark file. A flush that someone waits
    /// for answers in between, so that its wait is one device flush shorter; a crash
    /// before the mark is written leaves the mark behind sled, as a crash between the
    /// two always could.
    pub(crate) fn durable_flush_unmarked(&self) -> Result<Unmarked> {
        if self
            .marked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retired
        {
            // Its files are gone: there is nothing left to make durable.
            return Ok(Unmarked(None));
        }
        // After a failed sync nothing is promised durable until the vault is opened again
        // (said as it is, not as a failure of this flush's walk).
        self.sync_latch.check()?;
        let gen = {
            let mut last = self.gen.lock().unwrap_or_else(|p| p.into_inner());
            if self.fsync {
                self.db
                    .insert(DURABLE_GEN_KEY, &(*last + 1).to_be_bytes())?;
            }
            *last += 1;
            *last
        };
        self.db.flush()?;
        // Files sled made since the last flush (snapshots, blobs) get owner-only modes
        // here, whatever the process's umask was; with fsync they are synced too.
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let sync = if self.fsync { Some(&mut *synced) } else { None };
        settle_tree(&self.dir, sync, &self.sync_latch).map_err(|e| match e {
            // A full disk stays a full disk (fsync reports ENOSPC too).
            Error::Storage(why) => Error::Storage(format!(
                "cannot sync the vault directory {} (was it moved or deleted while \
                 open?): {why}",
                self.dir.display()
            )),
            other => other,
        })?;
        drop(synced);
        if !self.fsync {
            return Ok(Unmarked(None));
        }
        if self.mark_failure().is_some() {
            // The mark could not be written after an earlier flush had answered: this
            // flush writes it before it answers, and fails if it still cannot.
            self.mark_up_to(gen)?;
            return Ok(Unmarked(None));
        }
        Ok(Unmarked(Some(gen)))
    }

    /// Whether durable flushes sync (`fsync` in the options); without, nothing is
    /// promised durable.
    pub(crate) fn syncs(&self) -> bool {
        self.fsync
    }

    /// Why the last write of the mark failed, while none has named its generation since.
    pub(crate) fn mark_failure(&self) -> Option<String> {
        let st = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        st.failed.as_ref().map(|(_, why)| why.clone())
    }

    /// Names a durable flush in the mark file (and makes that durable).
    pub(crate) fn mark(&self, unmarked: Unmarked) -> Result<()> {
        match unmarked.0 {
            Some(gen) => self.mark_up_to(gen),
            None => Ok(()),
        }
    }

    /// `gen` is durable in sled (its flush is done); so is a generation whose mark
    /// failed, so the mark names the higher of the two.
    fn mark_up_to(&self, gen: u64) -> Result<()> {
        // Concurrent flushes may finish out of order: the mark only moves forward.
        let mut st = self.marked.lock().unwrap_or_else(|p| p.into_inner());
        if st.retired {
            return Ok(());
        }
        let gen = gen.max(st.failed.as_ref().map_or(0, |(g, _)| *g));
        if gen > st.marked {
            if let Err(e) = write_mark(&self.dir, gen) {
                st.failed = Some((gen, e.to_string()));
                return Err(e);
            }
            st.marked = gen;
        }
        if st.failed.as_ref().is_some_and(|(g, _)| *g <= st.marked) {
            st.failed = None;
        }
        Ok(())
    }

    /// The database's files are about to be removed (the last user was erased through
    /// this handle): from now on durable flushes do nothing and no mark is written. A
    /// mark write under way finishes first, so the removal that follows takes it too.
    pub(crate) fn retire(&self) {
        self.marked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retired = true;
    }

    /// Hands what was written so far to sled's own flush, without the fsyncs and the
    /// durability mark of [`Store::durable_flush`] (what sled's background flusher did).
    pub(crate) fn lazy_flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the vault directory takes on disk (as allocated: what `du` counts): the
    /// database, the segments and everything else in it.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        allocated(&self.dir)
    }

    /// Files 0600, directories 0700: other local users get nothing, not even ciphertext.
    pub(crate) fn restrict_permissions(&self) -> Result<()> {
        restrict(&self.dir)
    }
}

/// One copy of the mark: `gen (u64) || SHA-256(label || gen)[..8]`.
fn mark_copy(gen: u64) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(MARK_LABEL);
    ctx.update(&gen.to_be_bytes());
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&gen.to_be_bytes());
    b[8..].copy_from_slice(&ctx.finish().as_ref()[..8]);
    b
}

/// The generation in the mark file: two copies, so damage to one leaves the other.
/// `None` when neither checks out.
pub(crate) fn decode_mark(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != 32 {
        return None;
    }
    bytes
        .chunks(16)
        .filter_map(|c| {
            let gen = u64::from_be_bytes(c[..8].try_into().expect("8"));
            (c == mark_copy(gen)).then_some(gen)
        })
        .max()
}

/// The mark file's bytes for `gen`.
pub(crate) fn encode_mark(gen: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&mark_copy(gen));
    bytes[16..].copy_from_slice(&mark_copy(gen));
    bytes
}

/// Overwrites the mark in place (32 bytes in one sector) and makes it durable.
fn write_mark(dir: &Path, gen: u64) -> Result<()> {
    use std::io::Write;
    let bytes = encode_mark(gen);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never written through a link put in its place, never blocked on a FIFO: the
        // flush fails instead.
        opts.mode(0o600).custom_flags(
            (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
        );
    }
    let path = dir.join(MARK_FILE);
    opts.open(&path)
        .and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "it is not a regular file",
                ));
            }
            f.write_all(&bytes)?;
            f.sync_data()
        })
        .map_err(|e| match Error::from(e) {
            // A full disk stays a full disk.
            Error::Storage(why) => Error::Storage(format!(
                "cannot write the durability mark {}: {why} (it must be a regular file \
                 of the vault's owner)",
                path.display()
            )),
            other => other,
        })
}

/// Creates the mark (generation 0) whole or not at all: written under another name and
/// renamed, so a disk that fills meanwhile never leaves a short mark behind (which the
/// next open would have to call damage).
fn create_mark(dir: &Path) -> Result<()> {
    use std::io::Write;
    let temp = dir.join(format!("{MARK_FILE}.tmp"));
    let written = (|| -> std::io::Result<()> {
        // Created anew (never through a name that is already there).
        match fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&temp)?;
        f.write_all(&encode_mark(0))?;
        f.sync_data()?;
        fs::rename(&temp, dir.join(MARK_FILE))?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    Ok(written?)
}

/// Compares sled's durable generation with the mark; returns the generation. A vault
/// without a mark (new, or made before marks existed) gets one, durable before any
/// generation is written.
fn check_durable_mark(dir: &Path, db: &sled::Db) -> Result<u64> {
    let damaged = |what: &str| {
        Error::tampered(format!(
            "the vault's database is damaged ({what}); {DAMAGED_ADVICE}"
        ))
    };
    let gen = match db.get(DURABLE_GEN_KEY)? {
        None => 0,
        Some(v) => u64::from_be_bytes(
            v.as_ref()
                .try_into()
                .map_err(|_| damaged("its durable generation has the wrong size"))?,
        ),
    };
    let mark = match crate::files::read_regular(&dir.join(MARK_FILE), 4096) {
        Ok(Some(bytes)) => Some(
            decode_mark(&bytes)
                .ok_or_else(|| damaged(&format!("the file {MARK_FILE} is corrupt")))?,
        ),
        Ok(None) => None,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(damaged(&format!("the file {MARK_FILE} is not one: {e}")))
        }
        Err(e) => return Err(e.into()),
    };
    match mark {
        Some(mark) if mark > gen => Err(damaged(&format!(
            "it lost writes it had confirmed as durable: generation {gen} of {mark}"
        ))),
        Some(_) => Ok(gen),
        None if gen > 0 => Err(damaged(&format!("the file {MARK_FILE} is missing"))),
        None => {
            create_mark(dir)?;
            Ok(0)
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(Error::invalid(format!(
                "{} exists and is not a directory",
                dir.display()
            )));
        }
        // Closed before sled creates its files in it: files made with the process's
        // umask are then out of other users' reach until `restrict` fixes their modes.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir)?.permissions().mode();
            if mode & 0o777 != 0o700 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
                    Error::Storage(format!(
                        "cannot make vault directory {} private (mode 0700): {e}",
                        dir.display()
                    ))
                })?;
            }
        }
        return Ok(());
    }
    let mut b = private_dir_builder();
    b.recursive(true);
    b.create(dir).map_err(|e| {
        Error::Storage(format!(
            "cannot create vault directory {}: {e}",
            dir.display()
        ))
    })
}

/// Creates directories 0700 (the umask can only take bits away from that).
fn private_dir_builder() -> fs::DirBuilder {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b
}

/// Refuses a vault directory that another uid owns, before anything there is opened or
/// written: its keys are in its owner's keychain, so no other uid (root included) can
/// open it, and trying would leave files of this uid in it (sled's snapshot, which locks
/// the owner out) and a device key in this uid's keychain. A vault its owner holds open
/// is [`Error::InUse`], so the caller can send its request through the hand-off.
pub(crate) fn check_owner(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let owner = match fs::metadata(dir) {
            Ok(m) => m.uid(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Storage(format!(
                    "cannot read {}: {e}",
                    dir.display()
                )))
            }
        };
        let me = rustix::process::geteuid().as_raw();
        if owner != me {
            if held_by_another_process(dir) {
                return Err(Error::InUse);
            }
            return Err(Error::keychain(format!(
                "the vault {} belongs to uid {owner} and this process runs as uid {me}: its keys are in the owner's keychain, so only uid {owner} can open or erase it (run the command as that user; while the owner's agent holds the vault, requests from root go through the hand-off)",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Whether another process holds the lock sled takes on the vault's `db` (an advisory
/// `flock`, so probing it opens nothing for writing).
#[cfg(unix)]
pub(crate) fn held_by_another_process(dir: &Path) -> bool {
    use rustix::fs::{flock, FlockOperation};
    let Ok(f) = fs::File::open(dir.join("db")) else {
        return false;
    };
    match flock(&f, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            let _ = flock(&f, FlockOperation::Unlock);
            false
        }
        Err(_) => true,
    }
}

/// sled 0.34 writes each snapshot to `snap.<lsn>.generating`, renamed once complete, but
/// at open reads the newest `snap.*` file, a `.generating` one included: one left by a
/// process killed while writing it (sled writes one at every open) made the next open
/// fail as corrupt. While no process holds the vault (sled's lock on `db`, held by a
/// writer for as long as it writes, is free), such a file is a leftover, and without it
/// sled opens from the previous snapshot and its log, as if the kill had come just
/// before the write. Removed then, under that lock (where sled takes it: Linux, macOS).
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn remove_interrupted_snapshot(dir: &Path) -> Result<()> {
    use rustix::fs::{flock, FlockOperation};
    let Ok(db) = fs::File::open(dir.join("db")) else {
        return Ok(());
    };
    if flock(&db, FlockOperation::NonBlockingLockExclusive).is_err() {
        // Held: sled says so at open.
        return Ok(());
    }
    let removed = (|| {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snap.") && name.ends_with(".generating") {
                fs::remove_file(entry.path())?;
            }
        }
        Ok::<(), std::io::Error>(())
    })();
    let _ = flock(&db, FlockOperation::Unlock);
    removed.map_err(|e| {
        Error::Storage(format!(
            "cannot remove an interrupted snapshot in {}: {e}",
            dir.display()
        ))
    })
}

/// sled opens its `conf` and `db` by path, and would wait forever on a FIFO there, or
/// read a device: anything but a regular file in their place is refused first.
fn refuse_special_files(dir: &Path) -> Result<()> {
    for name in ["conf", "db"] {
        let path = dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_file() => {
                return Err(Error::tampered(format!(
                    "{} is not a regular file (a link, directory, FIFO or device was put in place of the vault's database): move it away and restore the vault directory from a backup, or erase the vault",
                    path.display()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The segment size the database in `dir` was created with (sled refuses any other),
/// read from sled's `conf`; a new database gets [`SEGMENT_SIZE`]. Anything but the two
/// sizes capvault ever used is left for sled to refuse (its `conf` carries a CRC).
fn segment_size_of(dir: &Path) -> usize {
    let Ok(Some(conf)) = crate::files::read_regular(&dir.join("conf"), 1 << 16) else {
        return SEGMENT_SIZE;
    };
    let recorded = String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|l| l.strip_prefix("segment_size: ")?.parse::<usize>().ok());
    match recorded {
        Some(SEGMENT_SIZE_INLINE) => SEGMENT_SIZE_INLINE,
        _ => SEGMENT_SIZE,
    }
}

/// Bytes allocated to the files under `dir` (files that vanish meanwhile count 0).
pub(crate) fn allocated(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += allocated(&entry.path()).unwrap_or(0);
        } else {
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt;
                total += meta.blocks() * 512;
            }
            #[cfg(not(unix))]
            {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Files 0600, directories 0700, under `path` and `path` itself.
fn restrict(path: &Path) -> Result<()> {
    settle_tree(path, None, &SyncLatch::default()).map(|_| ())
}

/// What durable flushes synced already: by path and inode, the size and modification
/// time each file had when it was synced (see [`settle_tree`]).
type Synced = std::collections::HashMap<(PathBuf, u64), (u64, Option<std::time::SystemTime>)>;

/// Gives every file under `dir` mode 0600 and every directory 0700 (sled creates its
/// files with the process's umask). With `sync` it also makes the directory durable,
/// syncing only what changed, since every `fsync` costs a device flush even when the
/// file is clean: sled's `db`, which sled rewrites in place (its own writes use
/// `sync_file_range`, which is not durable), at every flush; every other file when it is
/// first seen under its name, and again when its size or modification time changed
/// since (sled writes `conf`, snapshots and blobs once and renames snapshots into place,
/// but a blob another thread is still writing while a flush walks must be synced again
/// by the next; the vault syncs its own files, the durability mark included, as it
/// writes them); a directory only when it gained an entry. Entries of another owner
/// are neither synced nor walked (the vault did not write them, and its user may not be
/// able to open them), and hand-off requests are not walked at all (the hand-off
/// checks them itself). The segment
/// directory is not walked: the vault makes its files owner-only itself, and the log
/// syncs those it wrote before the flush (`Log::sync_segments`); the outbox file is
/// synced as it is written.
/// Returns how many files it synced.
fn settle_tree(dir: &Path, sync: Option<&mut Synced>, latch: &SyncLatch) -> Result<usize> {
    let mut walk = sync.map(|synced| Walk {
        synced,
        seen: Synced::new(),
        files: 0,
        latch,
    });
    let gained = settle_dir(dir, &dir.join("db"), &mut walk)?;
    let Some(w) = walk else { return Ok(0) };
    // What the walk found is what is there: the set forgets what is gone (old
    // snapshots) without looking each entry up again.
    *w.synced = w.seen;
    if gained {
        sync_dir(dir, latch)?;
    }
    Ok(w.files)
}

/// Syncs directory `dir` (an entry was added to it); an error names it.
fn sync_dir(dir: &Path, latch: &SyncLatch) -> Result<()> {
    let d = fs::File::open(dir).map_err(|e| sync_error(dir, e))?;
    latch.sync(|| d.sync_all().map_err(|e| sync_error(dir, e)))
}

/// A failed sync of `path`: a full disk stays a full disk (fsync reports ENOSPC too);
/// anything else names the file.
fn sync_error(path: &Path, e: std::io::Error) -> Error {
    let why = e.to_string();
    match Error::from(e) {
        full @ Error::StorageFull(_) => full,
        _ => Error::Storage(format!("cannot sync {}: {why}", path.display())),
    }
}

/// A syncing walk of [`settle_tree`]: what earlier flushes synced, every entry this
/// walk found (all of them synced by the end of it), and how many files it synced.
struct Walk<'a> {
    synced: &'a mut Synced,
    seen: Synced,
    files: usize,
    /// Once a sync failed, every later one fails too.
    latch: &'a SyncLatch,
}

/// Syncs the regular file `path` (all of it, or its data and size); false when it is
/// gone. It is opened without following a link and without blocking, so an entry
/// replaced by a link or a FIFO after the walk looked at it is an error that names it,
/// never a sync of something else or a flush that hangs.
fn sync_file(path: &Path, whole: bool, latch: &SyncLatch) -> Result<bool> {
    // A lease another process holds is reported by a non-blocking open as "would
    // block": an error that names the file too.
    let cannot = |e: std::io::Error| sync_error(path, e);
    let Some(f) = crate::files::open_regular(path).map_err(cannot)? else {
        return Ok(false);
    };
    latch.sync(|| {
        if whole { f.sync_all() } else { f.sync_data() }
            .map_err(cannot)
            // Tests make the sync fail here, as a disk that cannot write would.
            .and_then(|()| crate::failpoint::hit("store:fsync"))
            .inspect_err(|_| forget_cached(&f))
    })?;
    Ok(true)
}

/// [`settle_tree`] for one directory; true when it gained an entry (its parent then
/// syncs it).
fn settle_dir(dir: &Path, db: &Path, walk: &mut Option<Walk<'_>>) -> Result<bool> {
    let mut gained = false;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        // Files may vanish while we walk (sled's old snapshots, answered hand-off
        // requests): what is gone needs neither permissions nor syncing.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let path = entry.path();
        make_private(&path, &meta)?;
        if !owned(&meta) && !is_sleds(dir, db, &entry.file_name()) {
            // Not the vault's: nothing to make durable, and the user may not be able to
            // open it. sled's own files are synced whoever owns them (one the user
            // cannot open fails the flush, naming it).
            continue;
        }
        let key = (path.clone(), inode(&meta));
        if meta.is_dir() {
            // The segment files are made owner-only by the vault itself and synced by
            // the log as it writes them: walking thousands of them at every flush would
            // only cost.
            // Hand-off requests need no syncing and may belong to root (an admin's
            // request, or a `requests/` root made): the hand-off checks them itself.
            if entry.file_name() == super::segments::SEGMENTS_DIR
                || entry.file_name() == crate::handoff::REQUEST_DIR
            {
                continue;
            }
            if settle_dir(&path, db, walk)? {
                if let Some(w) = walk.as_ref() {
                    sync_dir(&path, w.latch)?;
                }
            }
            if let Some(w) = walk.as_mut() {
                gained |= !w.synced.contains_key(&key);
                w.seen.insert(key, (0, None));
            }
        } else if let Some(w) = walk.as_mut() {
            let version = (meta.len(), meta.modified().ok());
            let before = w.synced.get(&key);
            let first = before.is_none();
            // The mark syncs itself as it is written (at every flush).
            let own = path == db.with_file_name(MARK_FILE);
            let changed = before != Some(&version) && !own;
            if meta.is_file() && (first || changed || path == db) {
                // Once synced whole, `db` needs its data and size, not its times:
                // fdatasync skips the journal commit a changed mtime alone costs.
                if !sync_file(&path, first, w.latch)? {
                    continue;
                }
                w.files += 1;
            }
            gained |= first;
            w.seen.insert(key, version);
        }
    }
    make_private(dir, &fs::metadata(dir)?)?;
    Ok(gained)
}

#[cfg(unix)]
fn inode(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &fs::Metadata) -> u64 {
    0
}

#[cfg(unix)]
fn make_private(path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = if meta.is_dir() { 0o700 } else { 0o600 };
    if meta.permissions().mode() & 0o777 == mode
        || meta.uid() != rustix::process::geteuid().as_raw()
        || meta.file_type().is_symlink()
    {
        return Ok(());
    }
    match fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(not(unix))]
fn make_private(_: &Path, _: &fs::Metadata) -> Result<()> {
    Ok(())
}

/// Whether `name` in `dir` is one of sled's files: `db`, `conf`, `blobs/`, `snap.*` in
/// the vault directory, anything below it.
fn is_sleds(dir: &Path, db: &Path, name: &std::ffi::OsStr) -> bool {
    if Some(dir) != db.parent() {
        return true;
    }
    let name = name.to_string_lossy();
    matches!(&*name, "db" | "conf" | "blobs") || name.starts_with("snap.")
}

/// Whether the entry belongs to the process's effective user.
#[cfg(unix)]
fn owned(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == rustix::process::geteuid().as_raw()
}

#[cfg(not(unix))]
fn owned(_: &fs::Metadata) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_sort_numerically_and_round_trip() {
        assert!(record_key(255) < record_key(256));
        assert_eq!(seq_of_key(&record_key(77)), Some(77));
        assert_eq!(seq_of_key(HEAD_KEY), None);
        assert!(record_key(u64::MAX).as_slice() < HEAD_KEY);
    }

    /// A new store (with fsync) in a temporary directory, and its path.
    fn fresh_store() -> (tempfile::TempDir, PathBuf, Store) {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let s = Store::open(&dir, 1 << 20, true).unwrap();
        (d, dir, s)
    }

    fn flushed_store(dir: &Path, flushes: usize) -> u64 {
        let s = Store::open(dir, 1 << 20, true).unwrap();
        for i in 0..flushes {
            s.db.insert(format!("k{i}"), b"v").unwrap();
            s.durable_flush().unwrap();
        }
        let gen = u64::from_be_bytes(
            s.db.get(DURABLE_GEN_KEY)
                .unwrap()
                .unwrap()
                .as_ref()
                .try_into()
                .unwrap(),
        );
        assert_eq!(
            decode_mark(&fs::read(dir.join(MARK_FILE)).unwrap()),
            Some(gen)
        );
        gen
    }

    #[test]
    fn a_database_behind_its_durability_mark_is_damaged() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let gen = flushed_store(&dir, 3);
        assert_eq!(gen, 3);
        // sled dropping confirmed writes looks like a mark ahead of the database.
        write_mark(&dir, gen + 1).unwrap();
        match Store::open(&dir, 1 << 20, true) {
            Err(Error::Tampered(m)) => {
                assert!(m.contains("lost writes") && m.contains("restore"), "{m}")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        // A mark behind the database is what a crash between the two leaves: fine.
        write_mark(&dir, gen - 1).unwrap();
        Store::open(&dir, 1 << 20, true).unwrap();
    }

    #[test]
    fn a_mark_that_failed_after_its_flush_answered_fails_the_next_flush_until_written() {
        let (_d, dir, s) = fresh_store();
        let path = dir.join(MARK_FILE);
        let good = fs::read(&path).unwrap();
        // A directory in the mark's place: it cannot be written.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        // Durable and answered; the mark written after the answer fails.
        let unmarked = s.durable_flush_unmarked().unwrap();
        assert!(s.mark(unmarked).is_err());
        // The next flush writes the mark before it answers: it fails while it cannot.
        assert!(s.durable_flush_unmarked().is_err());
        assert!(s.durable_flush().is_err());
        fs::remove_dir(&path).unwrap();
        fs::write(&path, &good).unwrap();
        let unmarked = s.durable_flush_unmarked().unwrap();
        // Written by that flush already (generation 4: three flushes before it).
        assert_eq!(decode_mark(&fs::read(&path).unwrap()), Some(4));
        s.mark(unmarked).unwrap();
        // And from then on after the answer again.
        let unmarked = s.durable_flush_unmarked().unwrap();
        assert_eq!(decode_mark(&fs::read(&path).unwrap()), Some(4));
        s.mark(unmarked).unwrap();
        assert_eq!(decode_mark(&fs::read(&path).unwrap()), Some(5));
        drop(s);
        Store::open(&dir, 1 << 20, true).unwrap();
    }

    fn sled_gen(s: &Store) -> u64 {
        let v = s.db.get(DURABLE_GEN_KEY).unwrap().unwrap();
        u64::from_be_bytes(v.as_ref().try_into().unwrap())
    }

    /// The writer (an agent's flush), the uploader (seal, ack) and maintenance flush on
    /// their own threads: sled must never hold a lower generation than the mark names,
    /// or the next open after a crash calls an honest vault damaged.
    #[test]
    fn concurrent_durable_flushes_never_leave_sled_below_the_mark() {
        let (_d, dir, s) = fresh_store();
        for round in 0..150 {
            let start = std::sync::Barrier::new(3);
            std::thread::scope(|t| {
                for _ in 0..3 {
                    t.spawn(|| {
                        start.wait();
                        s.durable_flush().unwrap();
                    });
                }
            });
            let mark = decode_mark(&fs::read(dir.join(MARK_FILE)).unwrap()).unwrap();
            assert!(
                sled_gen(&s) >= mark,
                "round {round}: sled {} < mark {mark}",
                sled_gen(&s)
            );
        }
        drop(s);
        Store::open(&dir, 1 << 20, true).unwrap();
    }

    #[test]
    fn a_failed_mark_is_named_by_the_next_write_even_of_an_older_flush() {
        let (_d, dir, s) = fresh_store();
        let path = dir.join(MARK_FILE);
        let good = fs::read(&path).unwrap();
        let older = s.durable_flush_unmarked().unwrap();
        let newer = s.durable_flush_unmarked().unwrap();
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        assert!(s.mark(newer).is_err());
        assert!(s.mark_failure().unwrap().contains("durability mark"));
        fs::remove_dir(&path).unwrap();
        fs::write(&path, &good).unwrap();
        // The older flush finishing last names the newer, durable generation, and only
        // then is the failure over.
        s.mark(older).unwrap();
        assert_eq!(decode_mark(&fs::read(&path).unwrap()), Some(2));
        assert_eq!(s.mark_failure(), None);
    }

    /// A file another thread was still writing while a flush walked (a sled blob) is
    /// synced again by the next flush; `db` every time; the mark never (it syncs
    /// itself); an unchanged file once.
    #[test]
    fn a_file_that_changed_since_it_was_synced_is_synced_again() {
        let (_d, dir, s) = fresh_store();
        s.durable_flush().unwrap();
        let blob = dir.join("blobs").join("7");
        fs::write(&blob, b"first half").unwrap();
        let mut synced = Synced::new();
        let walk =
            |synced: &mut Synced| settle_tree(&dir, Some(synced), &SyncLatch::default()).unwrap();
        let all = walk(&mut synced);
        // Only `db` again: nothing else changed (the mark was rewritten, but syncs itself).
        write_mark(&dir, 1).unwrap();
        assert_eq!(walk(&mut synced), 1);
        let mut f = fs::OpenOptions::new().append(true).open(&blob).unwrap();
        std::io::Write::write_all(&mut f, b", second half").unwrap();
        assert_eq!(walk(&mut synced), 2, "db and the blob");
        assert_eq!(walk(&mut synced), 1);
        assert!(all >= 4, "db, conf, the mark, the blob: {all}");
    }

    /// A FIFO in the mark's place fails the flush at once instead of blocking it (and
    /// every thread that waits for the mark) until someone opens the FIFO.
    #[test]
    fn a_fifo_in_place_of_the_mark_fails_the_flush_without_blocking() {
        let (_d, dir, s) = fresh_store();
        let path = dir.join(MARK_FILE);
        fs::remove_file(&path).unwrap();
        crate::files::mkfifo(&path);
        match s.durable_flush() {
            Err(Error::Storage(m)) => assert!(m.contains("durability mark"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(s.mark_failure().is_some());
    }

    /// Hand-off requests and other users' files are not walked: an admin's request is
    /// root's file, which the vault's user could not open to sync (every flush would
    /// fail until it is gone).
    #[test]
    fn the_walk_leaves_hand_off_requests_alone() {
        let (_d, dir, s) = fresh_store();
        s.durable_flush().unwrap();
        let mut synced = Synced::new();
        let walk =
            |synced: &mut Synced| settle_tree(&dir, Some(synced), &SyncLatch::default()).unwrap();
        walk(&mut synced);
        let requests = dir.join(crate::handoff::REQUEST_DIR);
        fs::create_dir(&requests).unwrap();
        fs::write(requests.join("0123.req"), b"{}").unwrap();
        assert_eq!(walk(&mut synced), 1, "db only");
        // The same file in a directory of sled's is synced.
        fs::write(dir.join("blobs").join("0123"), b"{}").unwrap();
        assert_eq!(walk(&mut synced), 2, "db and the blob");
        // Another user's file beside the database is not (the vault's user may not
        // open it); one of sled's is, whoever owns it.
        let stray = dir.join("left-by-root");
        fs::write(&stray, b"{}").unwrap();
        let blob = dir.join("blobs").join("4567");
        fs::write(&blob, b"{}").unwrap();
        let foreign = |p: &Path| std::os::unix::fs::chown(p, Some(65534), Some(65534)).is_ok();
        if foreign(&stray) && foreign(&blob) {
            assert_eq!(walk(&mut synced), 2, "db and the blob");
        }
    }

    /// The walk opens a file only as the regular file it found: one replaced by a FIFO
    /// or a link in between fails the sync at once and names it.
    #[test]
    fn a_file_replaced_by_a_fifo_or_link_fails_its_sync_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("conf");
        crate::files::mkfifo(&fifo);
        let link = d.path().join("db");
        let target = d.path().join("elsewhere");
        fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (f, l) = (fifo.clone(), link.clone());
        std::thread::spawn(move || {
            let latch = SyncLatch::default();
            let _ = tx.send((sync_file(&f, true, &latch), sync_file(&l, false, &latch)));
        });
        let (on_fifo, on_link) = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the sync blocked on a FIFO");
        for (got, path) in [(on_fifo, &fifo), (on_link, &link)] {
            match got {
                Err(Error::Storage(m)) => assert!(m.contains(&path.display().to_string()), "{m}"),
                other => panic!("{path:?}: {:?}", other.map(|_| ())),
            }
        }
        let latch = SyncLatch::default();
        assert!(sync_file(&target, true, &latch).unwrap());
        assert!(!sync_file(&d.path().join("gone"), true, &latch).unwrap());
    }

    /// Once the database's files are removed (its last user erased through the handle),
    /// flushes write no mark: one left behind would make a vault created in the same
    /// directory later open as one that lost writes.
    #[test]
    fn a_retired_store_writes_no_mark() {
        let (_d, dir, s) = fresh_store();
        s.db.insert(b"k", b"v").unwrap();
        s.durable_flush().unwrap();
        let unmarked = s.durable_flush_unmarked().unwrap();
        s.retire();
        crate::vault::erase::remove_db_files(&dir).unwrap();
        // A flush that was under way when the store retired marks nothing either.
        s.mark(unmarked).unwrap();
        s.db.insert(b"k2", b"v").unwrap();
        s.durable_flush().unwrap();
        assert!(!dir.join(MARK_FILE).exists());
        drop(s);
        // A new vault in the same directory starts its own count.
        Store::open(&dir, 1 << 20, true).unwrap();
    }

    #[test]
    fn one_damaged_copy_of_the_mark_is_harmless_two_are_not_a_missing_mark_is_not() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        flushed_store(&dir, 2);
        let path = dir.join(MARK_FILE);
        let good = fs::read(&path).unwrap();
        for byte in [0, 9, 16, 31] {
            let mut b = good.clone();
            b[byte] ^= 0x10;
            fs::write(&path, &b).unwrap();
            Store::open(&dir, 1 << 20, true).unwrap();
            fs::write(&path, &good).unwrap();
        }
        let mut b = good.clone();
        b[3] ^= 1;
        b[20] ^= 1;
        fs::write(&path, &b).unwrap();
        assert!(matches!(
            Store::open(&dir, 1 << 20, true),
            Err(Error::Tampered(_))
        ));
        fs::write(&path, &good[..31]).unwrap();
        assert!(matches!(
            Store::open(&dir, 1 << 20, true),
            Err(Error::Tampered(_))
        ));
        fs::remove_file(&path).unwrap();
        match Store::open(&dir, 1 << 20, true) {
            Err(Error::Tampered(m)) => assert!(m.contains("missing"), "{m}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_vault_without_a_mark_gets_one_before_its_first_generation() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        // A vault made before marks existed: sled data, no durable generation, no mark.
        {
            let db = Store::raw(&dir, 1 << 20).unwrap();
            db.insert("old", b"data").unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(&dir, 1 << 20, true).unwrap();
        assert_eq!(
            decode_mark(&fs::read(dir.join(MARK_FILE)).unwrap()),
            Some(0)
        );
        s.durable_flush().unwrap();
        assert_eq!(
            decode_mark(&fs::read(dir.join(MARK_FILE)).unwrap()),
            Some(1)
        );
    }

    #[test]
    fn second_opener_gets_in_use_and_files_are_private() {
        let (_d, dir, s) = fresh_store();
        assert!(matches!(
            Store::open(&dir, 1 << 20, true),
            Err(Error::InUse)
        ));
        s.durable_flush().unwrap();
        s.restrict_permissions().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for e in fs::read_dir(&dir).unwrap() {
            let m = e.unwrap().metadata().unwrap();
            if m.is_file() {
                assert_eq!(m.permissions().mode() & 0o777, 0o600);
            }
        }
    }
}
