//! The outbox file: the sealed, unacknowledged bundle of one user, as an entry under the
//! outbox key (docs/FORMAT.md, "Release state and outbox"), in the user's segment
//! directory. A bundle can be as large as `max_bundle_bytes`; kept in sled, every
//! seal/ack cycle left a dead copy in sled's files until its segment cleaning caught up.
//! As a file, the space comes back when the bundle is acknowledged.
//!
//! Order (crash-safe without a second copy): the file is written, synced and renamed
//! into place before the release state names the bundle, and removed only after the
//! state that no longer names it is durable. A file the state does not name is left over
//! from a crash between those steps and is removed at open.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::log::segments;

/// Name of the outbox file in the user's segment directory (not a number, so the
/// segment files never mistake it for one of theirs).
const NAME: &str = "outbox";
/// Name it is written under before the rename.
const TEMP: &str = "outbox.tmp";

/// The outbox of one user of the vault in `vault_dir`.
pub(crate) struct Outbox {
    dir: PathBuf,
    fsync: bool,
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

impl Outbox {
    pub(crate) fn new(vault_dir: &Path, user: &str, fsync: bool) -> Outbox {
        Outbox {
            dir: segments::user_dir(vault_dir, user),
            fsync,
        }
    }

    /// Replaces the outbox with `entry`, durably (with `fsync`) before it returns.
    pub(crate) fn write(&self, entry: &[u8]) -> Result<()> {
        let temp = self.dir.join(TEMP);
        let path = self.dir.join(NAME);
        // A temp file left by a crash (or planted: creating anew never follows a link).
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(storage("cannot remove", &temp, e)),
        }
        let written = (|| -> std::io::Result<()> {
            let mut o = fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                o.mode(0o600);
            }
            let mut f = o.open(&temp)?;
            f.write_all(entry)?;
            if self.fsync {
                f.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(storage("cannot write the outbox file", &temp, e));
        }
        crate::failpoint::hit("outbox:before-rename")?;
        fs::rename(&temp, &path).map_err(|e| storage("cannot rename the outbox file", &path, e))?;
        if self.fsync {
            // A latch of its own each time: a failed write of the outbox is written anew
            // (a new file renamed into place), so its retry is a real one.
            segments::sync_dir(&self.dir, &Default::default())?;
        }
        Ok(())
    }

    /// The entry, if there is one.
    pub(crate) fn read(&self) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(NAME);
        // A sealed bundle is far below 4 GiB (`max_bundle_bytes`); a link, FIFO or
        // device in the file's place is refused without blocking.
        match crate::files::read_regular(&path, u64::from(u32::MAX)) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == ErrorKind::InvalidData => Err(Error::tampered(format!(
                "the outbox file {} is not one: {e}",
                path.display()
            ))),
            Err(e) => Err(storage("cannot read the outbox file", &path, e)),
        }
    }

    /// The entry's size, if there is one.
    pub(crate) fn len(&self) -> Result<Option<u64>> {
        let path = self.dir.join(NAME);
        match fs::symlink_metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(storage("cannot read the outbox file", &path, e)),
        }
    }

    /// Removes the entry (and a temp file left by a crash). Nothing to remove is fine.
    pub(crate) fn remove(&self) -> Result<()> {
        for name in [NAME, TEMP] {
            let path = self.dir.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(storage("cannot remove the outbox file", &path, e)),
            }
        }
        Ok(())
    }
}
