//! sled as the store of record: opening (one owning process), per-user trees, and a
//! flush that really reaches the disk.
//!
//! Key layout of a user's log tree (u64 keys are big-endian, so order is numeric):
//! `0x00 || seq` records, `0x01 'h'` head anchor, `0x01 't'` tail anchor,
//! `0x01 'c'` per-epoch counters (records, bytes) MAC'd with the ends they describe;
//! `0x02 || epoch` the unauthenticated counters of vaults before that (read once, at the
//! carry-over).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const RECORD_PREFIX: u8 = 0x00;
pub(crate) const HEAD_KEY: &[u8] = &[0x01, b'h'];
pub(crate) const TAIL_KEY: &[u8] = &[0x01, b't'];
pub(crate) const COUNTS_KEY: &[u8] = &[0x01, b'c'];
/// How long an opener waits for a lock that is about to be released.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// sled segment size (fixed when the vault is created).
const SEGMENT_SIZE: usize = 4 << 20;

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

/// An open vault directory.
pub(crate) struct Store {
    pub db: sled::Db,
    dir: PathBuf,
    fsync: bool,
}

impl Store {
    /// Opens (creating if needed) the vault directory. A directory locked by another
    /// process gives [`Error::InUse`].
    pub(crate) fn open(dir: &Path, cache_bytes: u64, fsync: bool) -> Result<Store> {
        create_private_dir(dir)?;
        let db = Self::raw(dir, cache_bytes, true)?;
        crate::failpoint::hit("store:after-sled-open")?;
        let store = Store {
            db,
            dir: dir.to_path_buf(),
            fsync,
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
        let db = Self::raw(dir, 1 << 20, false)?;
        let name = format!("u/{}/keys", data_encoding::HEXLOWER.encode(user.as_bytes()));
        Ok(db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes()))
    }

    /// The sled database of a vault with capvault's configuration (no checks). Without
    /// the background flusher, dropping the handle releases the directory lock at once
    /// (short-lived handles: probes, tests).
    pub(crate) fn raw(dir: &Path, cache_bytes: u64, background_flush: bool) -> Result<sled::Db> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // sled stores a tree node larger than a quarter segment as a file of its own;
            // with 64 KiB records, 4 MiB segments keep nodes in the log instead.
            .segment_size(SEGMENT_SIZE)
            .flush_every_ms(background_flush.then_some(200));
        // sled's I/O threads release the directory lock a moment after the previous
        // owner in this process closed it; wait briefly before calling the vault in use.
        let deadline = std::time::Instant::now() + LOCK_GRACE;
        loop {
            match config.open() {
                Ok(db) => return Ok(db),
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
    pub(crate) fn durable_flush(&self) -> Result<()> {
        self.db.flush()?;
        if self.fsync {
            sync_tree(&self.dir).map_err(|e| {
                Error::Storage(format!(
                    "cannot sync the vault directory {} (was it moved or deleted while \
                     open?): {e}",
                    self.dir.display()
                ))
            })?;
        }
        Ok(())
    }

    /// Bytes the database files take on disk.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// Files 0600, directories 0700: other local users get nothing, not even ciphertext.
    pub(crate) fn restrict_permissions(&self) -> Result<()> {
        restrict(&self.dir)
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
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| {
        Error::Storage(format!(
            "cannot create vault directory {}: {e}",
            dir.display()
        ))
    })
}

fn restrict(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            // Files may vanish while we walk (sled's old snapshots, answered hand-off
            // requests): what is gone needs no permissions.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let mode = if meta.is_dir() { 0o700 } else { 0o600 };
            if meta.permissions().mode() & 0o777 != mode {
                match fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode)) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    other => other?,
                }
            }
            if meta.is_dir() {
                restrict(&entry.path())?;
            }
        }
        if fs::metadata(path)?.permissions().mode() & 0o777 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// fsync every file under `dir`, then the directories themselves.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            sync_tree(&entry.path())?;
        } else if ft.is_file() {
            match fs::File::open(entry.path()) {
                Ok(f) => f.sync_all()?,
                // sled may remove a file (an old snapshot) between listing and opening it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    fs::File::open(dir)?.sync_all()?;
    Ok(())
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

    #[test]
    fn second_opener_gets_in_use_and_files_are_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        let s = Store::open(&dir, 1 << 20, true).unwrap();
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
