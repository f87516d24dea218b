//! Writing large bundles around the page cache (`O_DIRECT`, Linux).
//!
//! A buffered write of an 8 MiB bundle costs the writer thread more CPU than the SHA-256
//! the upload handler already spent on it: the kernel allocates, charges and fills 2,048
//! page-cache pages, which the following `fdatasync` then writes out. A direct write hands
//! the device the bytes as they are: an upload received into a buffer laid out as its
//! entry ([`super::blob`]) is written from that buffer, anything else is copied through
//! an aligned buffer the writer reuses ([`Stage`]). Durability does not change: the
//! segment is still synced (`fdatasync`, for the device's write cache and the file's new
//! size) before any upload in it is answered.
//!
//! Direct writes need the file offset, the length and the buffer's address aligned to
//! the device's logical block size; [`DIRECT_ALIGN`] (a page) covers every size a
//! device reports. Where the file system refuses the flag (some network and FUSE file
//! systems; tmpfs before Linux 6.6) a segment has no direct handle and everything goes
//! through the page cache; tmpfs since 6.6 takes direct writes without alignment rules.

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

/// Opens `path` again for direct writes; `None` where the file system refuses them, or
/// if `path` is no longer the file `same_as` (replaced since it was created).
#[cfg(target_os = "linux")]
pub(super) fn open(path: &Path, same_as: &File) -> Option<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()?;
    let (a, b) = (file.metadata().ok()?, same_as.metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(file)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn open(_: &Path, _: &File) -> Option<File> {
    None
}

/// Writes `parts`, one after the other, at `at` (a multiple of [`DIRECT_ALIGN`]) through
/// `stage`, zeros after them up to the next multiple; returns where the write ended.
/// A failure says whether any byte may have reached the file (a short write counts).
#[cfg(unix)]
pub(super) fn write_at(
    file: &File,
    stage: &mut Stage,
    parts: &[&[u8]],
    at: u64,
) -> Result<u64, DirectFailed> {
    let mut parts = parts.iter().copied().filter(|p| !p.is_empty());
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
        pos = write_aligned(file, &window[..padded], pos).map_err(|e| DirectFailed {
            wrote: e.wrote || pos > at,
            ..e
        })?;
    }
}

/// Writes `entry` (at an aligned address, its length and `at` multiples of
/// [`DIRECT_ALIGN`]) at `at` as it is; returns where the write ended. A failure says
/// whether any byte may have reached the file (a short write counts).
#[cfg(unix)]
pub(super) fn write_aligned(file: &File, entry: &[u8], at: u64) -> Result<u64, DirectFailed> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < entry.len() {
        let failed = |error| DirectFailed {
            error,
            wrote: done > 0,
        };
        match file.write_at(&entry[done..], at + done as u64) {
            Ok(0) => return Err(failed(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(at + entry.len() as u64)
}

#[cfg(not(unix))]
pub(super) fn write_at(
    file: &File,
    _: &mut Stage,
    _: &[&[u8]],
    _: u64,
) -> Result<u64, DirectFailed> {
    write_aligned(file, &[], 0)
}

#[cfg(not(unix))]
pub(super) fn write_aligned(_: &File, _: &[u8], _: u64) -> Result<u64, DirectFailed> {
    let error = std::io::Error::from(std::io::ErrorKind::Unsupported);
    Err(DirectFailed {
        error,
        wrote: false,
    })
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
        let Some(file) = open(&path, &File::open(&path).unwrap()) else {
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

    /// A write the device cannot take (an unaligned offset) is refused before anything
    /// is written: what the writer relies on to fall back to the page cache with
    /// nothing to take back. A file system without alignment rules (tmpfs) takes it,
    /// and then it must land whole where it was asked to.
    #[test]
    fn an_unaligned_write_is_refused_with_nothing_written_or_taken_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seg");
        std::fs::write(&path, b"").unwrap();
        let Some(file) = open(&path, &File::open(&path).unwrap()) else {
            eprintln!("this file system takes no direct writes: nothing to check here");
            return;
        };
        let mut stage = Stage::new().unwrap();
        match write_at(&file, &mut stage, &[b"x"], 1) {
            Err(e) => {
                assert_eq!(e.error.kind(), std::io::ErrorKind::InvalidInput);
                assert!(!e.wrote);
                assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
            }
            Ok(end) => {
                eprintln!("this file system has no alignment rules for direct writes");
                assert_eq!(end, 1 + DIRECT_ALIGN as u64);
                let mut expected = vec![0u8; 1 + DIRECT_ALIGN];
                expected[1] = b'x';
                assert_eq!(std::fs::read(&path).unwrap(), expected);
            }
        }
    }

    /// A direct write cut short (here by the file size limit, `prlimit --fsize`) that
    /// then fails says bytes may have reached the file, so the writer abandons the
    /// segment instead of appending after bytes it does not know of. Runs itself in a
    /// child process with the limit (and SIGXFSZ ignored, so the write fails instead).
    #[test]
    fn a_write_cut_short_then_failing_says_bytes_may_have_landed() {
        const CHILD: &str = "CAPVAULT_TEST_FSIZE_CHILD";
        const NAME: &str =
            "store::direct::tests::a_write_cut_short_then_failing_says_bytes_may_have_landed";
        if let Some(dir) = std::env::var_os(CHILD) {
            let path = Path::new(&dir).join("seg");
            let created = File::create(&path).unwrap();
            let Some(file) = open(&path, &created) else {
                println!("child: no direct writes here");
                return;
            };
            let e =
                write_at(&file, &mut Stage::new().unwrap(), &[&vec![1u8; 2 << 20]], 0).unwrap_err();
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(e.wrote, "{e:?}, the file has {len} bytes");
            assert!(len > 0);
            println!("child: cut short after {len} bytes: {}", e.error);
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(r#"trap '' XFSZ; exec prlimit --fsize=1048576 -- "$0" --exact "$1" --nocapture"#)
            .arg(&exe)
            .arg(NAME)
            .env(CHILD, tmp.path())
            .output()
            .expect("bash and prlimit (util-linux)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if stdout.contains("child: no direct writes here") {
            eprintln!("this file system takes no direct writes: nothing to check here");
            return;
        }
        assert!(
            stdout.contains("child: cut short after 1048576 bytes"),
            "{stdout}"
        );
    }

    /// A file put in the segment's place between its creation and the direct handle's
    /// open gets no direct writes.
    #[test]
    fn a_replaced_file_gets_no_direct_handle() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("seg");
        std::fs::write(&path, b"").unwrap();
        let created = File::open(&path).unwrap();
        if open(&path, &created).is_none() {
            eprintln!("this file system takes no direct writes: nothing to check here");
            return;
        }
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"").unwrap();
        assert!(open(&path, &created).is_none());
    }
}
