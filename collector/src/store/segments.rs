//! The directory backend: bundles appended to segment files,
//! `<root>/<creation time µs>-<random>.seg`, each entry a 48-byte header (magic,
//! length, SHA-256 digest) then the bundle bytes.
//!
//! A writer thread appends each bundle as it comes; a syncer thread makes everything
//! appended while its previous sync ran durable with one `fdatasync` (group commit), so
//! writing the next bundles overlaps the device's work on the previous ones. No upload
//! is answered before the sync covering its bytes returned; after a failed sync nothing
//! in that segment is answered as stored, ever. Bundles of [`direct::DIRECT_MIN`] and
//! more are written around the page cache where the file system allows it
//! ([`super::direct`]): such an entry starts at a multiple of 4096 bytes and is followed
//! by zeros up to the next one, and the bytes between entries read as zeros.
//!
//! A blob is addressed by `<segment>:<offset>:<length>`, kept in its index row.
//! Segments are append-only: bytes once written never change, a segment is never
//! reopened for writing (a new one is started at every start, at [`SEGMENT_BYTES`], and
//! after a failed write or sync), and the directory is fsynced once per new segment.
//! Index rows of version 1 (no location) name a file `<root>/<first 2 hex>/<digest
//! hex>.cvb`; those are still read. object_store's local backend does not fsync, and a
//! receipt tells the device it may delete its copy, so this backend is written here.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::blob::{Blob, ReceiveBuffers};
use super::direct::{self, DirectFailed, Stage};
use super::unavailable;
use crate::error::ApiError;

/// A segment is closed once it holds this many bytes (the last bundle may pass it).
pub(super) const SEGMENT_BYTES: u64 = 256 << 20;
/// Most bundles, and bytes, made durable by one sync.
const MAX_GROUP: usize = 256;
const MAX_GROUP_BYTES: usize = 64 << 20;
/// How many appended digests the writer remembers to answer concurrent retries.
const RECENT_DIGESTS: usize = 65_536;
/// The header before each bundle in a segment: magic, length (u64 LE), SHA-256.
const ENTRY_MAGIC: &[u8; 8] = b"cvseg01\n";
pub(super) const ENTRY_HEADER: usize = 8 + 8 + 32;

#[derive(Debug)]
pub(super) struct LocalStore {
    root: PathBuf,
    /// The segment writer, started by the first put (export and init only read).
    writer: Mutex<Option<mpsc::Sender<Append>>>,
    /// Buffers large uploads are received into, laid out for a direct write.
    buffers: Arc<ReceiveBuffers>,
}

/// One bundle waiting for the segment writer; answered with its location once durable.
#[derive(Debug)]
struct Append {
    digest: [u8; 32],
    blob: Blob,
    reply: oneshot::Sender<Result<String, String>>,
}

impl LocalStore {
    pub(super) fn new(root: PathBuf) -> LocalStore {
        LocalStore {
            root,
            writer: Mutex::new(None),
            buffers: Arc::default(),
        }
    }

    /// A buffer to receive a bundle of `len` bytes into, after the prefix it holds
    /// (see [`ReceiveBuffers::take`]); `None` for a bundle small enough to go through
    /// the page cache.
    pub(super) fn receive_buffer(&self, len: usize) -> Option<Vec<u8>> {
        (len >= direct::DIRECT_MIN).then(|| self.buffers.take(len))
    }

    /// The blob of a bundle received into a [`Self::receive_buffer`] after `start` bytes.
    pub(super) fn received(&self, buf: Vec<u8>, start: usize) -> Blob {
        Blob::received(buf, start, self.buffers.clone())
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    /// Appends `bytes`, whose SHA-256 is `digest_hex`, and returns its location once it
    /// is durable.
    pub(super) async fn put(&self, digest_hex: &str, blob: Blob) -> Result<String, ApiError> {
        let mut digest = [0u8; 32];
        data_encoding::HEXLOWER
            .decode_mut(digest_hex.as_bytes(), &mut digest)
            .map_err(|_| unavailable("put", "the digest is not 64 hex digits"))?;
        let (reply, answer) = oneshot::channel();
        self.writer()?
            .send(Append {
                digest,
                blob,
                reply,
            })
            .map_err(|_| unavailable("put", "the segment writer stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("put", "the segment writer stopped"))?
            .map_err(|e| unavailable("append", e))
    }
    /// The file of a bundle indexed without a location (schema version 1).
    fn legacy_path(&self, digest_hex: &str) -> PathBuf {
        self.root
            .join(digest_hex.get(..2).unwrap_or("__"))
            .join(format!("{digest_hex}.cvb"))
    }

    fn writer(&self) -> Result<mpsc::Sender<Append>, ApiError> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| unavailable("put", "the segment writer failed"))?;
        if let Some(tx) = w.as_ref() {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::channel();
        let (to_syncer, syncer_rx) = mpsc::channel();
        let root = self.root.clone();
        std::thread::Builder::new()
            .name("segment-syncer".into())
            .spawn(move || segment_syncer(syncer_rx))
            .map_err(|e| unavailable("segment syncer", e))?;
        std::thread::Builder::new()
            .name("segment-writer".into())
            .spawn(move || segment_writer(&root, rx, to_syncer, SEGMENT_BYTES))
            .map_err(|e| unavailable("segment writer", e))?;
        *w = Some(tx.clone());
        Ok(tx)
    }

    pub(super) fn get(
        &self,
        digest_hex: &str,
        location: Option<&str>,
    ) -> Result<Option<Bytes>, ApiError> {
        let damaged = |why: String| {
            ApiError::Integrity(format!("the blob of {digest_hex} cannot be read: {why}"))
        };
        let Some(location) = location else {
            let Some(mut f) = open_stored(&self.legacy_path(digest_hex)).map_err(damaged)? else {
                return Ok(None);
            };
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)
                .map_err(|e| damaged(e.to_string()))?;
            return Ok(Some(Bytes::from(buf)));
        };
        let bad = || damaged(format!("not a segment location: {location:?}"));
        let mut parts = location.split(':');
        let (Some(name), Some(offset), Some(len), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        // A name from the index, but never a path out of the store.
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(bad());
        }
        let offset: u64 = offset.parse().map_err(|_| bad())?;
        let len: usize = len.parse().map_err(|_| bad())?;
        if offset < ENTRY_HEADER as u64 {
            return Err(bad());
        }
        let Some(mut f) = open_stored(&self.root.join(name)).map_err(damaged)? else {
            return Ok(None);
        };
        let size = f.metadata().map_err(|e| damaged(e.to_string()))?.len();
        if offset.saturating_add(len as u64) > size {
            // Shorter than the index says: missing, as a deleted file would be.
            return Ok(None);
        }
        // The entry header is for recovery tools; the caller checks the digest.
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| damaged(e.to_string()))?;
        Ok(Some(Bytes::from(buf)))
    }
}

/// Opens a stored file to read it: `None` when it is not there. A symbolic link is not
/// followed and a FIFO not waited on: anything but a regular file is damage (`Err`,
/// saying what it is), reported for its bundle alone.
fn open_stored(path: &Path) -> Result<Option<std::fs::File>, String> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    match opts.open(path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_file() => Ok(Some(f)),
            Ok(_) => Err(format!("{} is not a regular file", path.display())),
            Err(e) => Err(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        #[cfg(unix)]
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(format!(
            "{} is a symbolic link (not followed)",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A segment file, shared by the writer (which appends to it) and the syncer (which
/// makes it durable). The file closes once neither holds it: the writer lets go at
/// roll-over, the syncer after the last sync that covers it.
#[derive(Debug)]
struct SegmentFile {
    file: std::fs::File,
    failed: Arc<Failed>,
}

/// A sync of a segment failed: what it holds is unknown (after a failed `fsync` Linux
/// may report the next one as a success), so nothing in it is ever answered as stored
/// again. The writer starts a new segment when it sees the flag; a bundle appended in
/// the moment between is answered as not stored.
#[derive(Debug, Default)]
struct Failed(AtomicBool);

impl Failed {
    fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self) {
        self.0.store(true, Ordering::Release)
    }
}

/// An open segment being appended to.
struct Segment {
    name: String,
    shared: Arc<SegmentFile>,
    /// The same file opened for direct writes, when the file system allows them.
    direct: Option<std::fs::File>,
    len: u64,
}

/// The header of a segment entry.
fn entry_header(a: &Append) -> [u8; ENTRY_HEADER] {
    let mut header = [0u8; ENTRY_HEADER];
    header[..8].copy_from_slice(ENTRY_MAGIC);
    header[8..16].copy_from_slice(&(a.blob.len() as u64).to_le_bytes());
    header[16..].copy_from_slice(&a.digest);
    header
}

/// One bundle appended (or found appended), waiting for the sync that makes it durable.
struct Written {
    reply: oneshot::Sender<Result<String, String>>,
    location: String,
    /// The segment to sync: `None` for a bundle this writer had already appended (a
    /// concurrent retry), whose first copy reached the syncer first and is synced (or
    /// found failed) no later than this one is answered.
    segment: Option<Arc<SegmentFile>>,
    failed: Arc<Failed>,
}

/// A bundle this writer appended: where, and whether its segment failed.
struct Recent {
    location: String,
    failed: Arc<Failed>,
}

impl Segment {
    /// A new, empty segment, its directory entry durable; with a direct handle too if
    /// `direct_writes` and the file system allows them.
    fn create(root: &Path, direct_writes: bool) -> std::io::Result<Segment> {
        let mut nonce = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| std::io::Error::other("no random numbers"))?;
        let name = format!(
            "{:016}-{}.seg",
            crate::config::now_us(),
            data_encoding::HEXLOWER.encode(&nonce)
        );
        let mut opts = std::fs::OpenOptions::new();
        opts.append(true).create_new(true);
        #[cfg(unix)]
        {
            // Ciphertext, but nobody else's business: owner only.
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let path = root.join(&name);
        let file = opts.open(&path)?;
        let direct = direct_writes.then(|| direct::open(&path, &file)).flatten();
        std::fs::File::open(root)?.sync_all()?;
        Ok(Segment {
            name,
            shared: Arc::new(SegmentFile {
                file,
                failed: Arc::default(),
            }),
            direct,
            len: 0,
        })
    }

    /// Appends one bundle (not yet durable) and returns its location: directly when it
    /// is large and the file system allows it (in place when it was received into a
    /// buffer laid out for it, else through `stage`), else through the page cache.
    fn append(&mut self, a: &mut Append, stage: &mut Option<Stage>) -> std::io::Result<String> {
        let len = a.blob.len();
        let large = len >= direct::DIRECT_MIN;
        if let (true, Some(st), Some(file)) = (large, stage.as_mut(), self.direct.as_ref()) {
            let start = self.len.next_multiple_of(direct::DIRECT_ALIGN as u64);
            let header = entry_header(a);
            let wrote = match a.blob.direct_entry(&header) {
                Some(entry) => direct::write_aligned(file, entry, start),
                None => direct::write_at(file, st, &[&header, a.blob.as_slice()], start),
            };
            match wrote {
                Ok(end) => {
                    self.len = end;
                    let offset = start + ENTRY_HEADER as u64;
                    return Ok(format!("{}:{offset}:{len}", self.name));
                }
                // Refused before anything was written (a file system that takes the
                // flag but not the writes): through the page cache from now on.
                Err(DirectFailed {
                    error,
                    wrote: false,
                }) if error.kind() == std::io::ErrorKind::InvalidInput => {
                    tracing::warn!(error = %error, "blob store: direct writes refused, writing through the page cache");
                    *stage = None;
                    // Appends through the page cache go to the end of the file: it
                    // must be where this segment's entries end.
                    if self.shared.file.metadata()?.len() != self.len {
                        return Err(std::io::Error::other(
                            "a refused direct write changed the segment's length",
                        ));
                    }
                }
                Err(DirectFailed { error, .. }) => return Err(error),
            }
        }
        self.append_buffered(a)
    }

    fn append_buffered(&mut self, a: &Append) -> std::io::Result<String> {
        let mut file = &self.shared.file;
        let bytes = a.blob.as_slice();
        file.write_all(&entry_header(a))?;
        file.write_all(bytes)?;
        let offset = self.len + ENTRY_HEADER as u64;
        self.len = offset + bytes.len() as u64;
        Ok(format!("{}:{offset}:{}", self.name, bytes.len()))
    }
}

/// The writer thread: appends every bundle as it comes and hands it to the syncer, so
/// that the next bundles are copied into the page cache while the previous ones are
/// being synced. A bundle this writer already appended (concurrent retries of one
/// upload) is answered with the copy it has, once that copy is durable. A segment is
/// closed once it holds `segment_bytes`.
fn segment_writer(
    root: &Path,
    rx: mpsc::Receiver<Append>,
    syncer: mpsc::Sender<Vec<Written>>,
    segment_bytes: u64,
) {
    let mut segment: Option<Segment> = None;
    let mut recent: HashMap<[u8; 32], Recent> = HashMap::new();
    let mut stage = Stage::new();
    while let Ok(first) = rx.recv() {
        let mut bytes = first.blob.len();
        let mut group = vec![first];
        while group.len() < MAX_GROUP && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(a) => {
                    bytes += a.blob.len();
                    group.push(a);
                }
                Err(_) => break,
            }
        }
        let mut written = Vec::with_capacity(group.len());
        let mut group = group.into_iter();
        let failure = loop {
            let Some(mut a) = group.next() else {
                break None;
            };
            if a.reply.is_closed() {
                // Its upload ended (the client left, or its deadline passed): nobody
                // would get the receipt, and the device sends it again.
                continue;
            }
            if let Some(r) = recent.get(&a.digest).filter(|r| !r.failed.get()) {
                written.push(Written {
                    reply: a.reply,
                    location: r.location.clone(),
                    segment: None,
                    failed: r.failed.clone(),
                });
                continue;
            }
            let appended = (|| {
                if segment
                    .as_ref()
                    .is_none_or(|s| s.len >= segment_bytes || s.shared.failed.get())
                {
                    segment = Some(Segment::create(root, stage.is_some())?);
                }
                let Some(s) = segment.as_mut() else {
                    return Err(std::io::Error::other("no segment"));
                };
                Ok((s.append(&mut a, &mut stage)?, s.shared.clone()))
            })();
            match appended {
                Ok((location, seg)) => {
                    if recent.len() >= RECENT_DIGESTS {
                        recent.clear();
                    }
                    let failed = seg.failed.clone();
                    recent.insert(
                        a.digest,
                        Recent {
                            location: location.clone(),
                            failed: failed.clone(),
                        },
                    );
                    written.push(Written {
                        reply: a.reply,
                        location,
                        segment: Some(seg),
                        failed,
                    });
                }
                Err(e) => break Some((a, e)),
            }
        };
        if let Some((a, e)) = failure {
            // What reached the segment is unknown: never append to it again, and
            // answer nothing from the rest of this group as already stored. What was
            // appended before is whole and goes on to its sync.
            segment = None;
            recent.clear();
            tracing::error!(error = %e, "blob store: segment append failed");
            for a in std::iter::once(a).chain(group) {
                let _ = a.reply.send(Err(e.to_string()));
            }
        }
        if !written.is_empty() && syncer.send(written).is_err() {
            // The syncer is gone (it never stops first): the unsent replies are
            // dropped here, and their uploads are answered 503.
            return;
        }
    }
}

/// The syncer thread: every bundle appended while the previous sync ran is made
/// durable by one `fdatasync` of its segment (group commit; two at a roll-over), then
/// answered. No upload is answered as stored before the sync covering its bytes
/// returned success.
fn segment_syncer(rx: mpsc::Receiver<Vec<Written>>) {
    while let Ok(first) = rx.recv() {
        let mut batch = first;
        while batch.len() < 4 * MAX_GROUP {
            match rx.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        // Each segment named by the batch once, in order (usually one).
        let mut segments: Vec<&Arc<SegmentFile>> = Vec::new();
        for seg in batch.iter().filter_map(|w| w.segment.as_ref()) {
            if !segments.iter().any(|s| Arc::ptr_eq(s, seg)) {
                segments.push(seg);
            }
        }
        for seg in segments {
            if seg.failed.get() {
                continue;
            }
            if let Err(e) = seg.file.sync_data() {
                seg.failed.set();
                tracing::error!(error = %e, "blob store: segment sync failed");
            }
        }
        for w in batch {
            let answer = if w.failed.get() {
                Err("the segment holding this bundle could not be synced".to_string())
            } else {
                Ok(w.location)
            };
            let _ = w.reply.send(answer);
        }
    }
}

#[cfg(test)]
mod local_tests {
    use super::*;
    use crate::store::BlobStore;

    fn digest(b: &[u8]) -> String {
        data_encoding::HEXLOWER.encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
    }

    #[tokio::test]
    async fn segments_hold_concurrent_puts_and_read_back_by_location() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().to_str().unwrap()).unwrap();
        let blobs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let puts = blobs.iter().map(|b| {
            let store = store.clone();
            let b = b.clone();
            async move {
                store
                    .put(&digest(&b), Bytes::from(b))
                    .await
                    .unwrap()
                    .unwrap()
            }
        });
        let locations = futures_join_all(puts).await;
        for (b, l) in blobs.iter().zip(&locations) {
            let got = store.get(&digest(b), Some(l)).await.unwrap().unwrap();
            assert_eq!(&got[..], &b[..]);
        }
        // The same bytes again (a concurrent retry): the copy already stored.
        let again = store
            .put(&digest(&blobs[3]), Bytes::from(blobs[3].clone()))
            .await
            .unwrap();
        assert_eq!(again.as_deref(), Some(locations[3].as_str()));

        // Each entry is its header (magic, length, digest) then the bytes.
        let (name, offset, _) = {
            let mut p = locations[0].split(':');
            (
                p.next().unwrap().to_string(),
                p.next().unwrap().parse::<usize>().unwrap(),
                p.next().unwrap(),
            )
        };
        let seg = std::fs::read(tmp.path().join(&name)).unwrap();
        let h = &seg[offset - ENTRY_HEADER..offset];
        assert_eq!(&h[..8], ENTRY_MAGIC);
        assert_eq!(u64::from_le_bytes(h[8..16].try_into().unwrap()), 1000);
        assert_eq!(data_encoding::HEXLOWER.encode(&h[16..]), digest(&blobs[0]));

        // Locations that leave the store or do not parse are refused; one past the end
        // of the segment is missing.
        for bad in [
            "../x.seg:48:5",
            "/etc/passwd:48:5",
            "x.seg:5",
            "x.seg:1:5",
            ".seg:48:1",
        ] {
            assert!(store.get(&digest(b"x"), Some(bad)).await.is_err(), "{bad}");
        }
        let past = format!("{name}:{}:10", seg.len());
        assert!(store
            .get(&digest(b"x"), Some(&past))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_blob_indexed_before_segments_is_read_from_its_digest_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().to_str().unwrap()).unwrap();
        let d = digest(b"legacy");
        std::fs::create_dir_all(tmp.path().join(&d[..2])).unwrap();
        std::fs::write(tmp.path().join(&d[..2]).join(format!("{d}.cvb")), b"legacy").unwrap();
        assert_eq!(&store.get(&d, None).await.unwrap().unwrap()[..], b"legacy");
        assert!(store.get(&digest(b"other"), None).await.unwrap().is_none());
    }

    fn append_of(bytes: &'static [u8]) -> (Append, oneshot::Receiver<Result<String, String>>) {
        let mut d = [0u8; 32];
        d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
        let (reply, answer) = oneshot::channel();
        let a = Append {
            digest: d,
            blob: Bytes::from_static(bytes).into(),
            reply,
        };
        (a, answer)
    }

    /// A sync that fails answers every bundle of that segment as not stored, then and
    /// later (Linux may report the next `fsync` of the file as a success), a retry
    /// answered from the first copy included, while a bundle of another segment in the
    /// same batch is answered. A pipe stands in for the segment: `fsync` of a pipe
    /// fails, which a disk cannot be made to do here.
    #[test]
    fn a_failed_sync_never_answers_its_segment_as_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let good = Segment::create(tmp.path(), true).unwrap().shared;
        let (_pipe_reader, pipe_writer) = std::io::pipe().unwrap();
        let bad = Arc::new(SegmentFile {
            file: std::fs::File::from(std::os::fd::OwnedFd::from(pipe_writer)),
            failed: Arc::default(),
        });
        let (tx, rx) = mpsc::channel();
        let syncer = std::thread::spawn(move || segment_syncer(rx));
        let written = |seg: &Arc<SegmentFile>, retry: bool, l: &str| {
            let (reply, answer) = oneshot::channel();
            let w = Written {
                reply,
                location: l.to_string(),
                segment: (!retry).then(|| seg.clone()),
                failed: seg.failed.clone(),
            };
            (w, answer)
        };
        let (w1, a1) = written(&bad, false, "bad:48:1");
        let (w2, a2) = written(&good, false, "good:48:1");
        let (w3, a3) = written(&bad, true, "bad:48:1");
        tx.send(vec![w1, w2, w3]).unwrap();
        assert!(a1.blocking_recv().unwrap().is_err());
        assert_eq!(a2.blocking_recv().unwrap().unwrap(), "good:48:1");
        assert!(a3.blocking_recv().unwrap().is_err());
        assert!(bad.failed.get());
        // Later bundles of the failed segment are refused too.
        let (w4, a4) = written(&bad, false, "bad:98:1");
        tx.send(vec![w4]).unwrap();
        assert!(a4.blocking_recv().unwrap().is_err());
        drop(tx);
        syncer.join().unwrap();
    }

    /// After its segment failed, a bundle is appended again to a new segment rather than
    /// answered with the copy the writer remembers; an upload whose client left is not
    /// written at all.
    #[test]
    fn a_retry_of_a_bundle_in_a_failed_segment_is_appended_anew() {
        let tmp = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let (to_syncer, written) = mpsc::channel::<Vec<Written>>();
        let root = tmp.path().to_path_buf();
        let writer =
            std::thread::spawn(move || segment_writer(&root, rx, to_syncer, SEGMENT_BYTES));
        let (a, _answer) = append_of(b"bundle");
        tx.send(a).unwrap();
        let first = written.recv().unwrap().pop().unwrap();
        let first_segment = first.segment.clone().unwrap();
        // A concurrent retry while the copy is sound: the same location, nothing to sync.
        let (a, _answer) = append_of(b"bundle");
        tx.send(a).unwrap();
        let retry = written.recv().unwrap().pop().unwrap();
        assert_eq!(retry.location, first.location);
        assert!(retry.segment.is_none());
        // The copy's segment failed its sync: the next retry goes to a new segment.
        first.failed.set();
        let (a, _answer) = append_of(b"bundle");
        tx.send(a).unwrap();
        let again = written.recv().unwrap().pop().unwrap();
        let segment_name = |l: &str| l.split(':').next().unwrap().to_string();
        assert_ne!(segment_name(&again.location), segment_name(&first.location));
        assert!(!Arc::ptr_eq(
            again.segment.as_ref().unwrap(),
            &first_segment
        ));
        // Nobody waits for this one: skipped, the next is written.
        let (a, answer) = append_of(b"abandoned");
        drop(answer);
        tx.send(a).unwrap();
        let (a, _answer) = append_of(b"next");
        tx.send(a).unwrap();
        let next = written.recv().unwrap();
        assert_eq!(next.len(), 1);
        let len = |l: &str| l.rsplit(':').next().unwrap().parse::<usize>().unwrap();
        assert_eq!(len(&next[0].location), b"next".len());
        drop(tx);
        writer.join().unwrap();
    }

    /// Closed segments are closed files: the writer keeps only the open one, whatever
    /// it remembers of earlier bundles (8 MiB bundles fill a 256 MiB segment every 32).
    #[test]
    fn closed_segments_do_not_stay_open() {
        let open_files = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let tmp = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let (to_syncer, syncer_rx) = mpsc::channel();
        let root = tmp.path().to_path_buf();
        let before = open_files();
        // Every bundle closes its segment.
        let writer = std::thread::spawn(move || segment_writer(&root, rx, to_syncer, 1));
        let syncer = std::thread::spawn(move || segment_syncer(syncer_rx));
        let blobs: Vec<&'static [u8]> = (0..200u32)
            .map(|i| &*Box::leak(format!("blob {i}").into_bytes().into_boxed_slice()))
            .collect();
        for b in &blobs {
            let (a, answer) = append_of(b);
            tx.send(a).unwrap();
            answer.blocking_recv().unwrap().unwrap();
        }
        let segments = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(segments, 200);
        assert!(
            open_files() <= before + 4,
            "{} files open, {before} before",
            open_files()
        );
        drop(tx);
        writer.join().unwrap();
        syncer.join().unwrap();
    }

    /// An upload's slot comes back once its body is written, also when the upload was
    /// given up while its body waited for the writer (the body is still in memory until
    /// then, and the slots are what bound that memory); never before, and none is lost.
    #[tokio::test]
    async fn an_upload_slot_is_held_until_its_body_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::new(tmp.path().to_path_buf());
        let slots = Arc::new(tokio::sync::Semaphore::new(4));
        let body = |i: u8| vec![i; direct::DIRECT_MIN + i as usize];
        let received = |b: &[u8]| {
            let mut buf = store.receive_buffer(b.len()).unwrap();
            let start = buf.len();
            buf.extend_from_slice(b);
            let slot = slots.clone().try_acquire_owned().unwrap();
            store.received(buf, start).holding(slot)
        };
        // Held while the bytes are, given back with them.
        let blob = received(&body(0));
        assert_eq!(slots.available_permits(), 3);
        let (_bytes, slot) = blob.into_bytes();
        assert_eq!(slots.available_permits(), 3);
        drop(slot);
        assert_eq!(slots.available_permits(), 4);
        // Uploads given up while their bodies wait in the writer's queue (their replies
        // closed): each slot travels with its body, and comes back when the writer drops
        // it (how soon depends on the writer, so only that they come back is checked).
        let writer = store.writer().unwrap();
        for i in 1..=3u8 {
            let b = body(i);
            let mut digest = [0u8; 32];
            digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &b).as_ref());
            let (reply, answer) = oneshot::channel();
            drop(answer);
            let blob = received(&b);
            writer
                .send(Append {
                    digest,
                    blob,
                    reply,
                })
                .unwrap();
        }
        // A put after them is answered after the writer passed them.
        let b = body(9);
        store.put(&digest(&b), received(&b)).await.unwrap();
        assert_eq!(slots.available_permits(), 4);
        // Nothing of the given-up uploads was written: only the last bundle is there.
        let seg: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(seg.len(), 1);
        let len = seg[0].as_ref().unwrap().metadata().unwrap().len() as usize;
        assert_eq!(
            len,
            (ENTRY_HEADER + b.len()).next_multiple_of(direct::DIRECT_ALIGN)
        );
    }

    /// Large bundles (written directly) and small ones (through the page cache), in any
    /// order, read back byte for byte from their locations; each entry has its header,
    /// a direct one starts at a multiple of 4096, and the bytes between entries are
    /// zeros, so a scan of the segment finds every entry.
    #[tokio::test]
    async fn large_and_small_bundles_share_a_segment_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::open(tmp.path().to_str().unwrap()).unwrap();
        let m = direct::DIRECT_MIN;
        let sizes = [1000, 2 * m, 10, m, 5 * m + 3, 77, m - 1, m + 4096, 1];
        let blobs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (j * 7 + i * 13 + 1) as u8).collect())
            .collect();
        let mut locations = Vec::new();
        for (i, b) in blobs.iter().enumerate() {
            // Received as an upload is (large ones in place), and handed over as bytes.
            let blob = if i % 2 == 0 {
                let mut buf = store.receive_buffer(b.len());
                let start = buf.len();
                buf.extend_from_slice(b);
                store.received(buf, start)
            } else {
                Bytes::from(b.clone()).into()
            };
            let l = store.put(&digest(b), blob).await.unwrap();
            locations.push(l.unwrap());
        }
        let probe = tmp.path().join("probe");
        let direct_here = direct::open(&probe, &std::fs::File::create(&probe).unwrap()).is_some();
        let mut entries = Vec::new();
        for (b, l) in blobs.iter().zip(&locations) {
            let got = store.get(&digest(b), Some(l)).await.unwrap().unwrap();
            assert!(got[..] == b[..], "{l}");
            let mut p = l.split(':');
            let name = p.next().unwrap().to_string();
            let offset: usize = p.next().unwrap().parse().unwrap();
            if direct_here && b.len() >= m {
                assert_eq!(offset % direct::DIRECT_ALIGN, ENTRY_HEADER, "{l}");
            }
            entries.push((name, offset, b));
        }
        // One segment: scan it as a recovery tool would.
        assert!(entries.iter().all(|e| e.0 == entries[0].0));
        let seg = std::fs::read(tmp.path().join(&entries[0].0)).unwrap();
        let mut pos = 0;
        let mut found = Vec::new();
        while pos < seg.len() {
            if seg[pos] == 0 {
                pos += 1;
                continue;
            }
            assert_eq!(&seg[pos..pos + 8], ENTRY_MAGIC, "at {pos}");
            let len = u64::from_le_bytes(seg[pos + 8..pos + 16].try_into().unwrap()) as usize;
            let body = &seg[pos + ENTRY_HEADER..pos + ENTRY_HEADER + len];
            assert_eq!(
                data_encoding::HEXLOWER.encode(&seg[pos + 16..pos + 48]),
                digest(body)
            );
            found.push(pos + ENTRY_HEADER);
            pos += ENTRY_HEADER + len;
        }
        let mut offsets: Vec<usize> = entries.iter().map(|e| e.1).collect();
        offsets.sort();
        assert_eq!(found, offsets);
    }

    /// A direct write the kernel refuses (here from a buffer it cannot take) writes
    /// nothing; the bundle goes through the page cache, and so does every later one.
    /// (A file system without alignment rules, such as tmpfs, takes the write: then the
    /// bundles must read back all the same.)
    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let mut segment = Segment::create(tmp.path(), true).unwrap();
        if segment.direct.is_none() {
            eprintln!("this file system takes no direct writes: nothing to check here");
            return;
        }
        let mut stage = Some(direct::Stage::misaligned_for_tests());
        let blob: &'static [u8] = Box::leak(vec![5u8; direct::DIRECT_MIN].into_boxed_slice());
        let (mut a, _answer) = append_of(blob);
        let first = segment.append(&mut a, &mut stage).unwrap();
        let refused = stage.is_none();
        let (mut a, _answer) = append_of(blob);
        let second = segment.append(&mut a, &mut stage).unwrap();
        let store = LocalStore::new(tmp.path().to_path_buf());
        for l in [&first, &second] {
            assert_eq!(
                &store.get(&digest(blob), Some(l)).unwrap().unwrap()[..],
                blob
            );
        }
        if !refused {
            eprintln!("this file system has no alignment rules for direct writes");
            return;
        }
        // Both through the page cache: back to back, as if direct writes never were.
        let entry = ENTRY_HEADER + blob.len();
        assert_eq!(
            first,
            format!("{}:{ENTRY_HEADER}:{}", segment.name, blob.len())
        );
        assert_eq!(
            second,
            format!("{}:{}:{}", segment.name, entry + ENTRY_HEADER, blob.len())
        );
        let len = std::fs::metadata(tmp.path().join(&segment.name))
            .unwrap()
            .len();
        assert_eq!(len, 2 * entry as u64);
    }

    /// A refused direct write in a segment whose file is longer than the entries the
    /// writer put in it (bytes it does not know of) is not followed by an append through
    /// the page cache, which would land somewhere other than the location it reports:
    /// the append fails and the segment is given up.
    #[test]
    fn a_fallback_in_a_segment_of_unexpected_length_fails_instead_of_misplacing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut segment = Segment::create(tmp.path(), true).unwrap();
        if segment.direct.is_none() {
            eprintln!("this file system takes no direct writes: nothing to check here");
            return;
        }
        let (mut a, _answer) = append_of(b"small");
        segment.append(&mut a, &mut None).unwrap();
        // Bytes the writer does not know of.
        let path = tmp.path().join(&segment.name);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"stray")
            .unwrap();
        let mut stage = Some(direct::Stage::misaligned_for_tests());
        let blob: &'static [u8] = Box::leak(vec![6u8; direct::DIRECT_MIN].into_boxed_slice());
        let (mut a, _answer) = append_of(blob);
        match segment.append(&mut a, &mut stage) {
            Err(e) => {
                assert!(stage.is_none());
                assert!(e.to_string().contains("length"), "{e}");
                let len = std::fs::metadata(&path).unwrap().len();
                assert_eq!(len, (ENTRY_HEADER + 5 + 5) as u64);
            }
            Ok(location) => {
                // No alignment rules here (tmpfs): the write was taken where asked.
                assert!(stage.is_some());
                let store = LocalStore::new(tmp.path().to_path_buf());
                let got = store.get(&digest(blob), Some(&location)).unwrap().unwrap();
                assert_eq!(&got[..], blob);
            }
        }
    }

    /// Runs the futures concurrently on the test runtime.
    async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<String>
    where
        F: std::future::Future<Output = String> + Send + 'static,
    {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
