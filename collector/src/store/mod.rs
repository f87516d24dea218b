//! The blob store: bundle bytes, written once and never overwritten.
//!
//! * A directory (the default, `DIR/bundles`): bundles appended to segment files by a
//!   writer thread and made durable by group commit ([`segments`]).
//! * `s3://bucket/prefix` (feature `s3`): object_store's S3 client, configured from the
//!   standard `AWS_*` environment variables (`AWS_ENDPOINT`, `AWS_REGION`,
//!   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP=true` for a
//!   plain-HTTP endpoint such as a local MinIO). Objects are named by digest,
//!   `<prefix>/<first 2 hex>/<digest hex>.cvb`, and created with a conditional
//!   put (`If-None-Match: *`), so they are never overwritten either. A put that is
//!   refused because the name exists counts as stored only after a HEAD finds the
//!   object with the expected size: S3 also answers 409 while another conditional put
//!   of the same name is in flight, and that one may still fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::ApiError;

mod blob;
mod direct;
mod segments;

pub use blob::{Blob, RECEIVE_SLACK};

use segments::LocalStore;

/// What reading an index row's blob found ([`BlobStore::get_checked`]).
#[derive(Debug)]
pub enum StoredBlob {
    /// The bytes, which hash to the row's digest.
    Found(Bytes),
    /// Not in the store.
    Missing,
    /// The row or the stored file cannot be what the store wrote: what was found.
    Unreadable(String),
    /// Bytes that do not hash to the row's digest.
    Corrupt,
}

/// Where bundle blobs live.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Backend,
    /// Where the blobs are, as every replica and export of one collector must agree:
    /// `s3://bucket/prefix`, or `local` (a directory each machine has its own of).
    binding: String,
}

#[derive(Clone, Debug)]
enum Backend {
    Local(Arc<LocalStore>),
    #[cfg(feature = "s3")]
    S3 {
        store: Arc<dyn object_store::ObjectStore>,
        prefix: String,
    },
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("blob store: {what}: {e}"))
}

impl BlobStore {
    /// Opens the store named by `url`: a path, `file://PATH`, or `s3://bucket/prefix`.
    pub fn open(url: &str) -> Result<BlobStore, ApiError> {
        if let Some(rest) = url.strip_prefix("s3://") {
            return Self::open_s3(rest);
        }
        let path = url.strip_prefix("file://").unwrap_or(url);
        let root = PathBuf::from(path);
        if !root.is_dir() {
            // Owner-only, like the collector directory: bundles are nobody else's.
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt;
                builder.mode(0o700);
            }
            builder.create(&root).map_err(|e| {
                ApiError::Operational(format!(
                    "cannot create the blob directory {}: {e}",
                    root.display()
                ))
            })?;
            // Its name in the parent is durable before any segment in it counts.
            let parent = root.parent().filter(|p| !p.as_os_str().is_empty());
            std::fs::File::open(parent.unwrap_or(Path::new(".")))
                .and_then(|d| d.sync_all())
                .map_err(|e| {
                    ApiError::Operational(format!(
                        "cannot sync the directory of {}: {e}",
                        root.display()
                    ))
                })?;
        }
        Ok(BlobStore {
            inner: Backend::Local(Arc::new(LocalStore::new(root))),
            binding: "local".into(),
        })
    }

    #[cfg(feature = "s3")]
    fn open_s3(rest: &str) -> Result<BlobStore, ApiError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(ApiError::Operational(
                "--store s3://BUCKET[/PREFIX] needs a bucket".into(),
            ));
        }
        let store = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| ApiError::Operational(format!("cannot configure S3: {e}")))?;
        let prefix = prefix.trim_matches('/').to_string();
        Ok(BlobStore {
            binding: format!("s3://{bucket}/{prefix}"),
            inner: Backend::S3 {
                store: Arc::new(store),
                prefix,
            },
        })
    }

    #[cfg(not(feature = "s3"))]
    fn open_s3(_: &str) -> Result<BlobStore, ApiError> {
        Err(ApiError::Operational(
            "this build has no S3 support (build with the `s3` feature)".into(),
        ))
    }

    /// Where the blobs are, for the database's binding (see [`crate::db::Db::bind_setting`]):
    /// `s3://bucket/prefix` or `local`.
    pub fn binding(&self) -> &str {
        &self.binding
    }

    /// A buffer to receive a bundle of `len` bytes into, after the bytes it holds: a
    /// prefix that lets the store write a large bundle without copying it again (see
    /// [`blob`]), or none.
    pub fn receive_buffer(&self, len: usize) -> Vec<u8> {
        match &self.inner {
            Backend::Local(l) => l.receive_buffer(len),
            #[cfg(feature = "s3")]
            Backend::S3 { .. } => None,
        }
        .unwrap_or_else(|| Vec::with_capacity(len))
    }

    /// The blob of a bundle received into a buffer from [`Self::receive_buffer`], after
    /// its first `start` bytes.
    pub fn received(&self, buf: Vec<u8>, start: usize) -> Blob {
        match &self.inner {
            Backend::Local(l) if start > 0 => l.received(buf, start),
            _ => Bytes::from(buf).slice(start..).into(),
        }
    }

    /// Stores `blob`, whose SHA-256 is `digest_hex`; returns once it is durable, with its
    /// location for the index row (`None`: the digest names it).
    pub async fn put(
        &self,
        digest_hex: &str,
        blob: impl Into<Blob>,
    ) -> Result<Option<String>, ApiError> {
        let blob = blob.into();
        match &self.inner {
            Backend::Local(l) => l.put(digest_hex, blob).await.map(Some),
            #[cfg(feature = "s3")]
            Backend::S3 { store, prefix } => {
                use object_store::{PutMode, PutOptions, PutPayload};
                // The upload slot is held until the bytes are gone.
                let (bytes, _slot) = blob.into_bytes();
                let path = s3_path(prefix, digest_hex);
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                let size = bytes.len() as u64;
                let stored = match store.put_opts(&path, PutPayload::from(bytes), opts).await {
                    Ok(_) => Ok(()),
                    // AlreadyExists is not proof that the object is there: object_store
                    // also maps S3's 409 ConditionalRequestConflict (another conditional
                    // put of this name still in flight, which may yet fail) to it, and
                    // Precondition can mean the same race. Only an object that can be
                    // seen, with the expected size, counts as stored; anything else is
                    // 503 and the device retries (a receipt is never given for a blob
                    // that may not land).
                    Err(
                        e @ (object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. }),
                    ) => {
                        use object_store::ObjectStoreExt;
                        match store.head(&path).await {
                            Ok(meta) if meta.size == size => Ok(()),
                            Ok(meta) => Err(unavailable(
                                "put",
                                format!(
                                    "an object of {} bytes is stored under this digest, expected {size}",
                                    meta.size
                                ),
                            )),
                            Err(object_store::Error::NotFound { .. }) => Err(unavailable(
                                "put",
                                format!("a concurrent write of this object is not complete ({e})"),
                            )),
                            Err(h) => Err(unavailable("head", h)),
                        }
                    }
                    Err(e) => Err(unavailable("put", e)),
                };
                stored.map(|()| None)
            }
        }
    }

    /// The blob of `digest_hex` at `location` (from its index row), if it is there. A row
    /// or stored file that cannot be what the store wrote (a bad digest or location, a
    /// link, a FIFO) is [`ApiError::Integrity`], for that blob alone; a store that
    /// cannot be reached is [`ApiError::Unavailable`].
    /// The caller checks the digest of what it gets.
    pub async fn get(
        &self,
        digest_hex: &str,
        location: Option<&str>,
    ) -> Result<Option<Bytes>, ApiError> {
        // From the index, which may have been edited: never sliced or joined unchecked.
        let is_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if digest_hex.len() != 64 || !digest_hex.bytes().all(is_hex) {
            return Err(ApiError::Integrity(format!(
                "the index names a blob by {digest_hex:?}, which is not a SHA-256 digest"
            )));
        }
        match &self.inner {
            Backend::Local(l) => {
                let l = l.clone();
                let digest = digest_hex.to_string();
                let location = location.map(str::to_string);
                tokio::task::spawn_blocking(move || l.get(&digest, location.as_deref()))
                    .await
                    .map_err(|e| unavailable("read task", e))?
            }
            #[cfg(feature = "s3")]
            Backend::S3 { store, prefix } => {
                use object_store::ObjectStoreExt;
                match store.get(&s3_path(prefix, digest_hex)).await {
                    Ok(r) => Ok(Some(r.bytes().await.map_err(|e| unavailable("get", e))?)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(unavailable("get", e)),
                }
            }
        }
    }

    /// The blob of an index row, checked against the row's digest: what `export` and
    /// `copy-bundles` report on. Only a store that cannot be reached is an `Err`.
    pub async fn get_checked(
        &self,
        digest_hex: &str,
        location: Option<&str>,
    ) -> Result<StoredBlob, ApiError> {
        let bytes = match self.get(digest_hex, location).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(StoredBlob::Missing),
            Err(ApiError::Integrity(why)) => return Ok(StoredBlob::Unreadable(why)),
            Err(e) => return Err(e),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        if data_encoding::HEXLOWER.encode(digest.as_ref()) != digest_hex {
            return Ok(StoredBlob::Corrupt);
        }
        Ok(StoredBlob::Found(bytes))
    }

    /// True when the store can take writes (for `/healthz`).
    pub async fn check(&self) -> Result<(), ApiError> {
        match &self.inner {
            Backend::Local(l) => {
                let meta = tokio::fs::metadata(l.root())
                    .await
                    .map_err(|e| unavailable("blob directory", e))?;
                if meta.is_dir() && !meta.permissions().readonly() {
                    Ok(())
                } else {
                    Err(unavailable("blob directory", "not a writable directory"))
                }
            }
            #[cfg(feature = "s3")]
            Backend::S3 { store, prefix } => {
                // Listing one level proves the bucket answers with these credentials.
                let p = object_store::path::Path::from(prefix.as_str());
                store
                    .list_with_delimiter(Some(&p))
                    .await
                    .map(|_| ())
                    .map_err(|e| unavailable("list", e))
            }
        }
    }
}

#[cfg(feature = "s3")]
fn s3_path(prefix: &str, digest_hex: &str) -> object_store::path::Path {
    let name = format!("{}/{digest_hex}.cvb", &digest_hex[..2]);
    if prefix.is_empty() {
        object_store::path::Path::from(name)
    } else {
        object_store::path::Path::from(format!("{prefix}/{name}"))
    }
}

#[cfg(all(test, feature = "s3"))]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn memory() -> (BlobStore, Arc<object_store::memory::InMemory>) {
        let mem = Arc::new(object_store::memory::InMemory::new());
        let store = BlobStore {
            inner: Backend::S3 {
                store: mem.clone(),
                prefix: "p".into(),
            },
            binding: "memory".into(),
        };
        (store, mem)
    }

    /// An index row whose digest is not one (an edited database) is an integrity
    /// failure for that blob, never a slice out of bounds, in either backend.
    #[tokio::test]
    async fn a_digest_that_is_not_one_is_an_integrity_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let local = BlobStore::open(tmp.path().to_str().unwrap()).unwrap();
        for store in [memory().0, local] {
            for bad in [
                "",
                "é",
                "ab",
                &"AB".repeat(32),
                &"0g".repeat(32),
                &"ab".repeat(33),
            ] {
                let e = store.get(bad, None).await.unwrap_err();
                assert!(matches!(e, ApiError::Integrity(_)), "{bad:?}: {e}");
            }
        }
    }

    #[tokio::test]
    async fn an_existing_object_counts_only_when_it_is_there_with_the_expected_size() {
        let digest = "ab".repeat(32);
        let (store, mem) = memory();
        store
            .put(&digest, Bytes::from_static(b"12345"))
            .await
            .unwrap();
        // Refused as existing, found with the same size: stored.
        store
            .put(&digest, Bytes::from_static(b"12345"))
            .await
            .unwrap();
        let meta = mem.head(&s3_path("p", &digest)).await.unwrap();
        assert_eq!(meta.size, 5);

        // Refused as existing, but the object seen is not the expected one: never
        // "already stored" (503, no receipt).
        let other = "cd".repeat(32);
        mem.put(
            &s3_path("p", &other),
            object_store::PutPayload::from_static(b"123"),
        )
        .await
        .unwrap();
        let e = store
            .put(&other, Bytes::from_static(b"12345"))
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Unavailable(_)), "{e}");
    }
}
