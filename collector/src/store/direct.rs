//! Writing large bundles around the page cache (`O_DIRECT`, Linux).
//!
//! A buffered write of an 8 MiB bundle costs the writer thread more CPU than the SHA-256
//! the upload handler already spent on it: the kernel allocates, charges and fills 2,048
//! page-cache pages, which the following `fdatasync` then writes out. A direct write hands
//! the device the bytes from an aligned buffer the writer reuses, so all that is left is
//! one copy into that buffer. Durability does not change: the segment is still synced
//! (`fdatasync`, for the device's write cache and the file's new size) before any
//! upload in it is answered.
//!
//! Direct writes need the file offset, the length and the buffer's address aligned to
//! the device's logical block size; [`DIRECT_ALIGN`] (a page) covers every size a
//! device reports. Where the file system refuses the flag (tmpfs, some network file
//! systems) a segment has no direct handle and everything goes through the page cache.

use std::fs::File;
use std::path::Path;

/// Bundles of this size and more are written directly. Smaller ones go through the
/// page cache: for them the copy costs less than waiting for the device on each.
pub(super) const DIRECT_MIN: usize = 1 << 20;
/// Direct writes start at, and are padded to, a multiple of this, from a buffer aligned
/// to it.
pub(super) const DIRECT_ALIGN: usize = 4096;
/// The size of the aligned buffer a direct write goes through, piece by piece.
const STAGE_BYTES: usize = 4 << 20;

/// An aligned buffer for direct writes, allocated once per writer thread.
pub(super) struct Stage {
    buf: Vec<u8>,
    start: usize,
}

impl Stage {
    /// `None` if no aligned window can be found (never, in practice).
    pub(super) fn new() -> Option<Stage> {
        let buf = vec![0u8; STAGE_BYTES + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        (start < DIRECT_ALIGN).then_some(Stage { buf, start })
    }

    /// A stage whose window no device takes, to see a direct write refused.
    #[cfg(test)]
    pub(super) fn misaligned_for_tests() -> Stage {
        let mut stage = Stage::new().expect("an aligned window");
        stage.start += 1;
        stage
    }

    fn window(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + STAGE_BYTES]
    }
}

/// A direct write that failed, and whether any of its bytes may have reached the file.
#[derive(Debug)]
pub(super) struct DirectFailed {
    pub error: std::io::Error,
    pub wrote: bool,
}

/// Opens `path` again for direct writes; `None` where the file system refuses them.
#[cfg(target_os = "linux")]
pub(super) fn open(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
pub(super) fn open(_: &Path) -> Option<File> {
    None
}

/// Writes `parts`, one after the other, at `at` (a multiple of [`DIRECT_ALIGN`]) through
/// `stage`, zeros after them up to the next multiple; returns where the write ended.
pub(super) fn write_at(
    file: &File,
    stage: &mut Stage,
    parts: &[&[u8]],
    at: u64,
) -> Result<u64, DirectFailed> {
    use std::os::unix::fs::FileExt;
    let mut parts = parts.iter().copied().filter(|p| !p.is_empty()).peekable();
    let mut pos = at;
    let mut rest: &[u8] = parts.next().unwrap_or_default();
    loop {
        // Fill the window from the parts, in order.
        let window = stage.window();
        let mut filled = 0;
        while filled < window.len() && !rest.is_empty() {
            let n = rest.len().min(window.len() - filled);
            window[filled..filled + n].copy_from_slice(&rest[..n]);
            filled += n;
            rest = &rest[n..];
            if rest.is_empty() {
                rest = parts.next().unwrap_or_default();
            }
        }
        if filled == 0 {
            return Ok(pos);
        }
        let padded = filled.next_multiple_of(DIRECT_ALIGN);
        window[filled..padded].fill(0);
        file.write_all_at(&window[..padded], pos)
            .map_err(|error| DirectFailed {
                error,
                wrote: pos > at,
            })?;
        pos += padded as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the sizes of the parts against the window, the file holds them in order,
    /// then zeros to the next multiple of the alignment, and the bytes before `at` are
    /// untouched.
    #[test]
    fn parts_land_in_order_padded_with_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seg");
        std::fs::write(&path, vec![0xEEu8; 100]).unwrap();
        let Some(file) = open(&path) else {
            eprintln!("this file system takes no direct writes: nothing to check here");
            return;
        };
        let mut stage = Stage::new().unwrap();
        let header = [7u8; 48];
        let cases: [usize; 5] = [
            0,
            1,
            DIRECT_ALIGN - 48,
            STAGE_BYTES - 48,
            STAGE_BYTES + 5_000,
        ];
        let mut at = DIRECT_ALIGN as u64;
        let mut expected = vec![0xEEu8; 100];
        for (i, &len) in cases.iter().enumerate() {
            let body: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let end = write_at(&file, &mut stage, &[&header, &body], at).unwrap();
            let written = 48 + len;
            assert_eq!(end, at + written.next_multiple_of(DIRECT_ALIGN) as u64);
            expected.resize(at as usize, 0);
            expected.extend_from_slice(&header);
            expected.extend_from_slice(&body);
            expected.resize(end as usize, 0);
            at = end;
        }
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // Nothing to write: nothing written.
        assert_eq!(write_at(&file, &mut stage, &[&[]], at).unwrap(), at);
    }

    /// An offset the device cannot take is refused before anything is written: what
    /// the writer relies on to fall back to the page cache with nothing to take back.
    #[test]
    fn an_unaligned_offset_is_refused_with_nothing_written() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seg");
        std::fs::write(&path, b"").unwrap();
        let Some(file) = open(&path) else {
            return;
        };
        let mut stage = Stage::new().unwrap();
        let e = write_at(&file, &mut stage, &[b"x"], 1).unwrap_err();
        assert_eq!(e.error.kind(), std::io::ErrorKind::InvalidInput);
        assert!(!e.wrote);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
