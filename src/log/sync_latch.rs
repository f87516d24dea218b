//! A sync that stays failed. When `fsync` or `fdatasync` fails, Linux may already have
//! given up the dirty pages it could not write and marked them clean, so a later sync of
//! the same file succeeds although those bytes never reached the disk. Once a sync of
//! the vault's files fails, every later one through the same latch fails too, until the
//! vault is opened again (the open checks what is on disk and syncs it anew).

use std::sync::Mutex;

use crate::error::{Error, Result};

/// The first failed sync of one set of files (a user's segments, the database's files).
#[derive(Default)]
pub(crate) struct SyncLatch(Mutex<Option<Error>>);

impl SyncLatch {
    /// Runs `sync` unless an earlier one failed, and remembers its failure.
    pub(crate) fn sync(&self, sync: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut failed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = failed.as_ref() {
            return Err(latched(first));
        }
        sync().inspect_err(|e| *failed = Some(e.clone()))
    }
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
        match e {
            Error::StorageFull(m) => {
                assert!(m.contains("no space") && m.contains("opened again"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
