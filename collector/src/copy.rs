//! `copy-bundles`: the stored bundles, still sealed, as one file each (for a backup, an
//! audit, or `capvault open`). Needs no identity: nothing is decrypted.
//!
//! Files are named `<device>-<stream>-<sequence, 20 digits>.cvb`, so a sorted listing
//! is chain order. Each blob is checked against the digest in its index row before it
//! is written; a missing, unreadable or altered blob is reported, not copied, and the
//! command ends with exit 3. An existing file is never overwritten.

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
    std::fs::create_dir_all(out).map_err(|e| op(format!("cannot create {}", out.display()), e))?;
    let mut report = CopyReport::default();
    for row in db.bundles(device).await? {
        let name = format!("{}-{}-{:020}.cvb", row.device_id, row.stream_id, row.seq);
        let problem = match store
            .get_checked(&row.digest, row.location.as_deref())
            .await?
        {
            StoredBlob::Found(bytes) => {
                let path = out.join(&name);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| op(format!("cannot create {}", path.display()), e))?;
                f.write_all(&bytes)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| op(format!("cannot write {}", path.display()), e))?;
                report.copied += 1;
                continue;
            }
            StoredBlob::Missing => "blob missing".to_string(),
            StoredBlob::Unreadable(why) => why,
            StoredBlob::Corrupt => "blob does not match its digest".to_string(),
        };
        report.failed.push((name, problem));
    }
    Ok(report)
}
