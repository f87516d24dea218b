//! `copy-bundles`: the stored bundles, still sealed, as one file each (for a backup, an
//! audit, or `capvault open`). Needs no identity: nothing is decrypted.
//!
//! Files are named `<device>-<stream>-<sequence, 20 digits>.cvb`, so a sorted listing
//! is chain order. Each blob is checked against the digest in its index row before it
//! is written; a missing, unreadable or altered blob is reported, not copied, and the
//! command ends with exit 3. Files are owner-only, written whole (a `.partial` file
//! renamed once synced) and never over an existing file: one that already holds the
//! same bytes (a copy run again after an interruption) counts as copied, one with other
//! bytes is reported. A row whose ids are not hex names no file.

use std::io::Write;
use std::path::Path;

use crate::db::Db;
use crate::error::ApiError;
use crate::store::{BlobStore, StoredBlob};

/// What a copy did.
#[derive(Debug, Default)]
pub struct CopyReport {
    /// Files written.
    pub copied: usize,
    /// Rows whose blob is missing, unreadable or does not match its digest: (file name,
    /// problem).
    pub failed: Vec<(String, String)>,
}

/// Copies every indexed bundle (of one device, if given) into `out`, created if needed.
pub async fn copy_bundles(
    db: &Db,
    store: &BlobStore,
    device: Option<&str>,
    out: &Path,
) -> Result<CopyReport, ApiError> {
    let op = |what: String, e: std::io::Error| ApiError::Operational(format!("{what}: {e}"));
    let mut dir = std::fs::DirBuilder::new();
    dir.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        dir.mode(0o700);
    }
    dir.create(out)
        .map_err(|e| op(format!("cannot create {}", out.display()), e))?;
    let device = device.map(|d| d.trim().to_ascii_lowercase());
    let mut report = CopyReport::default();
    for row in db.bundles(device.as_deref()).await? {
        let hex_id =
            |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|c| c.is_ascii_hexdigit());
        if !hex_id(&row.device_id) || !hex_id(&row.stream_id) {
            report.failed.push((
                format!("bundle {} of a row", row.seq),
                "the index row's device or stream id is not hex (not a name this store gives)"
                    .to_string(),
            ));
            continue;
        }
        let name = format!("{}-{}-{:020}.cvb", row.device_id, row.stream_id, row.seq);
        let problem = match store
            .get_checked(&row.digest, row.location.as_deref())
            .await?
        {
            StoredBlob::Found(bytes) => match write_new(&out.join(&name), &bytes) {
                Ok(()) => {
                    report.copied += 1;
                    continue;
                }
                Err(Problem::Other(e)) => return Err(op(format!("cannot write {name}"), e)),
                Err(Problem::Differs) => {
                    "a file of that name is already there with other bytes (not replaced)"
                        .to_string()
                }
            },
            StoredBlob::Missing => "blob missing".to_string(),
            StoredBlob::Unreadable(why) => why,
            StoredBlob::Corrupt => "blob does not match its digest".to_string(),
        };
        report.failed.push((name, problem));
    }
    Ok(report)
}

enum Problem {
    /// The file exists with other bytes.
    Differs,
    Other(std::io::Error),
}

/// Writes `bytes` to a new owner-only file `path`: to `path.partial` first (one left
/// by an interrupted run is replaced), synced, then linked to its name, which must be
/// free or already hold these bytes.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Problem> {
    let partial = path.with_extension("cvb.partial");
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Problem::Other(e)),
        _ => {}
    }
    if let Ok(there) = std::fs::symlink_metadata(path) {
        let same = there.is_file()
            && there.len() == bytes.len() as u64
            && std::fs::read(path).is_ok_and(|b| b == bytes);
        return if same { Ok(()) } else { Err(Problem::Differs) };
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(&partial).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| match std::fs::hard_link(&partial, path) {
        // A file system without hard links (FAT, exFAT: a USB stick to the offline
        // identity): a rename, after a last look that the name is free.
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists && !path.exists() => {
            std::fs::rename(&partial, path).map_err(|_| e)
        }
        other => other,
    });
    let _ = std::fs::remove_file(&partial);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Problem::Differs),
        Err(e) => Err(Problem::Other(e)),
    }
}
