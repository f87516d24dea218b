//! A bundle's bytes on their way into the store, and the receive buffers reused for
//! large ones.
//!
//! A large upload bound for the directory store is received into a buffer laid out for
//! the segment writer ([`ReceiveBuffers::take`]): room for the segment entry's header
//! before the bundle, at an address that is a multiple of [`DIRECT_ALIGN`], and room
//! after it for the zeros up to the next multiple. The writer fills the header in and
//! hands the buffer to the device as it is ([`Blob::direct_entry`]), so the bundle is
//! copied once in user space (out of the HTTP frames), not twice. The buffers are kept
//! for the next uploads, up to [`KEEP_BYTES`]: a fresh 8 MiB buffer costs 2,048 page
//! faults, each a zeroed page.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::direct::{DIRECT_ALIGN, DIRECT_MIN};
use super::segments::ENTRY_HEADER;

/// At most this many bytes of receive buffers are kept between uploads.
const KEEP_BYTES: usize = 64 << 20;
/// What a receive buffer holds beyond its bundle: the entry's header, and up to
/// `DIRECT_ALIGN - 1` bytes each to align the entry and to pad it.
pub const RECEIVE_SLACK: usize = ENTRY_HEADER + 2 * DIRECT_ALIGN;

/// Bundle bytes handed to [`super::BlobStore::put`].
pub struct Blob {
    inner: Inner,
    /// The upload slot of the body held here, given back with the bytes: once written
    /// (a segment writer's queue holds bytes past the end of an upload that was given
    /// up), not when the upload ends.
    slot: Option<OwnedSemaphorePermit>,
}

enum Inner {
    Shared(Bytes),
    Received(Received),
}

/// A receive buffer holding a bundle at `buf[start..start + len]`.
struct Received {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    pool: Arc<ReceiveBuffers>,
}

impl Drop for Received {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Blob {
        Blob {
            inner: Inner::Shared(bytes),
            slot: None,
        }
    }
}

impl Blob {
    /// A bundle received after the prefix of a buffer from [`ReceiveBuffers::take`]:
    /// `buf[start..]`.
    pub(super) fn received(buf: Vec<u8>, start: usize, pool: Arc<ReceiveBuffers>) -> Blob {
        let start = start.min(buf.len());
        Blob {
            inner: Inner::Received(Received {
                len: buf.len() - start,
                buf,
                start,
                pool,
            }),
            slot: None,
        }
    }

    /// The blob, holding `slot` until its bytes are dropped.
    pub fn holding(mut self, slot: OwnedSemaphorePermit) -> Blob {
        self.slot = Some(slot);
        self
    }

    /// The bundle's bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.inner {
            Inner::Shared(b) => b,
            Inner::Received(r) => &r.buf[r.start..r.start + r.len],
        }
    }

    /// The bundle's length in bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// The bundle's bytes as shared bytes (without a copy; a receive buffer is not
    /// reused then), and the upload slot to hold for as long as they are.
    pub fn into_bytes(self) -> (Bytes, Option<OwnedSemaphorePermit>) {
        let bytes = match self.inner {
            Inner::Shared(b) => b,
            Inner::Received(mut r) => {
                let (start, len) = (r.start, r.len);
                Bytes::from(std::mem::take(&mut r.buf)).slice(start..start + len)
            }
        };
        (bytes, self.slot)
    }

    /// The segment entry for a direct write, made in place: `header`, the bundle, then
    /// zeros up to the next multiple of [`DIRECT_ALIGN`], starting at an address that is a
    /// multiple of it. `None` when the bundle is not in a buffer laid out for that (the
    /// writer then copies it through its staging buffer). The bundle's bytes are not
    /// changed.
    pub(super) fn direct_entry(&mut self, header: &[u8; ENTRY_HEADER]) -> Option<&[u8]> {
        let Inner::Received(r) = &mut self.inner else {
            return None;
        };
        let entry = r.start.checked_sub(ENTRY_HEADER)?;
        let padded = (ENTRY_HEADER + r.len).next_multiple_of(DIRECT_ALIGN);
        // Aligned, and the padding within the capacity, so the buffer stays where it is.
        if r.buf[entry..].as_ptr().align_offset(DIRECT_ALIGN) != 0
            || entry + padded > r.buf.capacity()
        {
            return None;
        }
        r.buf.truncate(r.start + r.len);
        r.buf.resize(entry + padded, 0);
        r.buf[entry..r.start].copy_from_slice(header);
        Some(&r.buf[entry..entry + padded])
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob").field("len", &self.len()).finish()
    }
}

/// Receive buffers for large bundles, kept between uploads.
#[derive(Debug, Default)]
pub(super) struct ReceiveBuffers {
    free: Mutex<Vec<Vec<u8>>>,
}

impl ReceiveBuffers {
    /// A buffer to receive a bundle of up to `len` bytes into, after its prefix (the
    /// buffer's contents, zeros): the entry header's room, ending where the bundle
    /// starts. Every buffer that exists is either in use or kept here, and one is only
    /// made when none kept is large enough (dropping one that is not), so they never
    /// outnumber the upload slots: each buffer in use holds one ([`Blob::holding`]).
    pub(super) fn take(&self, len: usize) -> Vec<u8> {
        let need = len.saturating_add(RECEIVE_SLACK);
        let (kept, too_small) = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            // The smallest that fits: large ones stay for large bundles.
            let fit = (0..free.len())
                .filter(|&i| free[i].capacity() >= need)
                .min_by_key(|&i| free[i].capacity());
            match fit {
                Some(i) => (Some(free.swap_remove(i)), None),
                None => (None, free.pop()),
            }
        };
        // Freed outside the lock.
        drop(too_small);
        let mut buf = kept.unwrap_or_else(|| Vec::with_capacity(need));
        buf.clear();
        let entry = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        buf.resize(entry + ENTRY_HEADER, 0);
        buf
    }

    /// Keeps `buf` for a later upload if it is one of ours and there is room.
    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() < DIRECT_MIN {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = free.iter().map(Vec::capacity).sum();
        if kept + buf.capacity() <= KEEP_BYTES {
            free.push(buf);
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(pool: &Arc<ReceiveBuffers>, bundle: &[u8]) -> Blob {
        let mut buf = pool.take(bundle.len());
        let start = buf.len();
        buf.extend_from_slice(bundle);
        Blob::received(buf, start, pool.clone())
    }

    /// The entry is the header, the bundle and zeros to the next multiple, at an aligned
    /// address, and making it leaves the bundle's bytes as they were.
    #[test]
    fn a_received_bundle_becomes_an_aligned_padded_entry_in_place() {
        let pool = Arc::new(ReceiveBuffers::default());
        for len in [
            0,
            1,
            DIRECT_ALIGN - ENTRY_HEADER,
            DIRECT_ALIGN,
            DIRECT_MIN + 5,
        ] {
            let bundle: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut blob = received(&pool, &bundle);
            let header = [0x5Au8; ENTRY_HEADER];
            let entry = blob
                .direct_entry(&header)
                .expect("laid out for it")
                .to_vec();
            assert_eq!(
                entry.len(),
                (ENTRY_HEADER + len).next_multiple_of(DIRECT_ALIGN)
            );
            assert_eq!(&entry[..ENTRY_HEADER], &header);
            assert_eq!(&entry[ENTRY_HEADER..ENTRY_HEADER + len], &bundle[..]);
            assert!(entry[ENTRY_HEADER + len..].iter().all(|&b| b == 0));
            assert_eq!(blob.direct_entry(&header).unwrap(), &entry[..], "twice");
            assert_eq!(blob.as_slice(), &bundle[..]);
            assert_eq!(blob.len(), len);
            assert_eq!(blob.into_bytes().0, bundle);
        }
    }

    /// A reused buffer held a larger bundle before: the padding is still zeros.
    #[test]
    fn a_reused_buffer_pads_with_zeros_not_the_last_bundle() {
        let pool = Arc::new(ReceiveBuffers::default());
        drop(received(&pool, &vec![0xFF; DIRECT_MIN + 10_000]));
        assert_eq!(pool.kept(), 1);
        let mut blob = received(&pool, &[1, 2, 3]);
        assert_eq!(pool.kept(), 0, "the kept buffer is reused");
        let entry = blob.direct_entry(&[9; ENTRY_HEADER]).unwrap();
        assert_eq!(&entry[ENTRY_HEADER..ENTRY_HEADER + 3], &[1, 2, 3]);
        assert!(entry[ENTRY_HEADER + 3..].iter().all(|&b| b == 0));
    }

    /// Shared bytes, and a bundle that outgrew its buffer, are not written in place.
    #[test]
    fn bytes_not_laid_out_for_a_direct_write_give_no_entry() {
        let mut shared = Blob::from(Bytes::from(vec![1u8; 10_000]));
        assert!(shared.direct_entry(&[0; ENTRY_HEADER]).is_none());
        let pool = Arc::new(ReceiveBuffers::default());
        let mut buf = pool.take(10);
        let start = buf.len();
        // More than was announced: the buffer grew (and moved).
        buf.extend_from_slice(&vec![4u8; 3 * DIRECT_ALIGN + 10]);
        let mut grown = Blob::received(buf, start, pool.clone());
        if let Some(entry) = grown.direct_entry(&[0; ENTRY_HEADER]) {
            assert_eq!(entry.as_ptr().align_offset(DIRECT_ALIGN), 0);
        }
        assert_eq!(grown.as_slice(), &vec![4u8; 3 * DIRECT_ALIGN + 10][..]);
        // No room for the header before the bundle.
        let mut no_room = Blob::received(vec![0u8; 100], 10, pool);
        assert!(no_room.direct_entry(&[0; ENTRY_HEADER]).is_none());
    }

    /// Buffers come back when their blob is dropped, small ones are not kept, and no
    /// more than KEEP_BYTES are kept; a kept buffer too small for a bundle is dropped
    /// when a new one is made, so buffers never outnumber the uploads in flight.
    #[test]
    fn buffers_are_kept_within_bounds() {
        let pool = Arc::new(ReceiveBuffers::default());
        let big: Vec<Blob> = (0..12)
            .map(|_| received(&pool, &vec![1; 8 << 20]))
            .collect();
        drop(big);
        assert_eq!(pool.kept(), KEEP_BYTES / ((8 << 20) + RECEIVE_SLACK));
        let kept_before = pool.kept();
        let larger = received(&pool, &vec![1; 9 << 20]);
        assert_eq!(pool.kept(), kept_before - 1, "one too small was dropped");
        drop(larger);
        drop(Blob::received(vec![0; 100], 0, pool.clone()));
        assert!(pool.kept() <= kept_before);
        assert!(pool
            .free
            .lock()
            .unwrap()
            .iter()
            .all(|b| b.capacity() >= DIRECT_MIN));
    }
}
