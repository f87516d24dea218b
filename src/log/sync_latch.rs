//! A sync that stays failed. When `fsync` or `fdatasync` fails, Linux may already have
//! given up the dirty pages it could not write and marked them clean, so a later sync of
//! the same file succeeds although those bytes never reached the disk, and reads still
//! return them from the page cache. Once a sync of the vault's files fails, every later
//! one through the same latch fails too, until the vault is opened again; and the file
//! whose sync failed has its cached pages dropped ([`forget_cached`]), so that what is
//! read next, by this handle or by the open that follows, is what the disk holds.

use std::fs::File;
use std::sync::Mutex;

use crate::error::{Error, Result};

/// The first failed sync of one set of files (a user's segments, the database's files).
#[derive(Default)]
pub(crate) struct SyncLatch(Mutex<Option<Error>>);

impl SyncLatch {
    /// The error of an earlier failed sync, if there was one.
    pub(crate) fn check(&self) -> Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            Some(first) => Err(latched(first)),
            None => Ok(()),
        }
    }

    /// After a failed sync: the error for `what`, which that failure explains.
    pub(crate) fn failure(&self, what: &str) -> Option<Error> {
        let failed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        failed.as_ref().map(|first| match latched(first) {
            Error::StorageFull(m) => Error::StorageFull(format!("{what}: {m}")),
            Error::Storage(m) => Error::Storage(format!("{what}: {m}")),
            other => other,
        })
    }

    /// Runs `sync` unless an earlier one failed, and remembers its failure.
    pub(crate) fn sync(&self, sync: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut failed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = failed.as_ref() {
            return Err(latched(first));
        }
        sync().inspect_err(|e| *failed = Some(e.clone()))
    }
}

/// Drops the cached pages of `f` after its sync failed (Linux: `POSIX_FADV_DONTNEED`;
/// the pages the failed writeback left clean go, dirty ones are written back first), so
/// that reads come from the disk: an open then finds bytes the disk never got as damage
/// or a torn tail, never as records that were made durable. A refusal changes nothing
/// else: the sync has failed either way.
pub(crate) fn forget_cached(f: &File) {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = f;
}

/// The error of every sync after the first failed one: of the same kind (a full disk
/// stays a full disk), saying why a retry is not enough.
fn latched(first: &Error) -> Error {
    let why = format!(
        "an earlier sync of the vault's files failed ({first}); the disk may have dropped \
         what was written before it, so nothing can be promised durable until the vault \
         is closed and opened again (what earlier flushes made durable is safe)"
    );
    match first {
        Error::StorageFull(_) => Error::StorageFull(why),
        _ => Error::Storage(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_one_failure_every_sync_fails_without_running() {
        let latch = SyncLatch::default();
        latch.sync(|| Ok(())).unwrap();
        latch.check().unwrap();
        assert!(latch.failure("a read").is_none());
        let e = latch
            .sync(|| Err(Error::StorageFull("no space".into())))
            .unwrap_err();
        assert!(
            matches!(e, Error::StorageFull(ref m) if m == "no space"),
            "{e:?}"
        );
        let mut ran = false;
        let e = latch
            .sync(|| {
                ran = true;
                Ok(())
            })
            .unwrap_err();
        assert!(
            !ran,
            "a sync after a failure must not run (it would succeed)"
        );
        assert!(latch.check().is_err());
        match latch.failure("record 7 cannot be read") {
            Some(Error::StorageFull(m)) => {
                assert!(
                    m.starts_with("record 7 cannot be read: ") && m.contains("no space"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        match e {
            Error::StorageFull(m) => {
                assert!(m.contains("no space") && m.contains("opened again"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
