//! Reading the files the vault keeps beside its database (the keychain file, the
//! durability mark, the outbox, sled's `conf`). Whoever can write the vault directory
//! can put anything in their place: a link out of the directory, a FIFO that blocks
//! every reader, `/dev/zero`. Opening, erasing and sealing must still return, so these
//! files are read without following a link, without blocking on open, only when they
//! are regular files, and only up to a size bound.

use std::fs::File;
use std::io::{Error, ErrorKind, Read};
use std::path::Path;

/// The regular file `path`, opened for reading; `Ok(None)` when there is no file. A
/// link, a FIFO, a device or a directory is an error that says what was found (nothing
/// is followed, and the open never blocks).
pub(crate) fn open_regular(path: &Path) -> std::io::Result<Option<File>> {
    use rustix::fs::{Mode, OFlags};
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            return Err(Error::new(
                ErrorKind::InvalidData,
                "it is a symbolic link, not a file",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let file = File::from(fd);
    if !file.metadata()?.file_type().is_file() {
        return Err(Error::new(
            ErrorKind::InvalidData,
            "it is not a regular file (a directory, FIFO, socket or device)",
        ));
    }
    Ok(Some(file))
}

/// The bytes of the regular file `path`, at most `max` of them; `Ok(None)` when there is
/// no file. A link, a FIFO, a device, a directory or a longer file is an error that says
/// what was found.
pub(crate) fn read_regular(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let Some(file) = open_regular(path)? else {
        return Ok(None);
    };
    let meta = file.metadata()?;
    if meta.len() > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("it holds {} bytes, more than the {max} it can", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("it grew past the {max} bytes it can hold while being read"),
        ));
    }
    Ok(Some(bytes))
}

/// Makes a FIFO at `at` (tests: something that blocks whoever opens it to read).
#[cfg(test)]
pub(crate) fn mkfifo(at: &Path) {
    let made = std::process::Command::new("mkfifo").arg(at).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", at.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read_regular(&file, 10).unwrap().unwrap(), b"0123456789");
        assert!(read_regular(&file, 9)
            .unwrap_err()
            .to_string()
            .contains("more than"));
        assert!(read_regular(&d.path().join("none"), 10).unwrap().is_none());
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_regular(&link, 10)
            .unwrap_err()
            .to_string()
            .contains("link"));
        assert!(read_regular(d.path(), 10)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let fifo = d.path().join("fifo");
        mkfifo(&fifo);
        // Returns at once: no writer is waited for.
        assert!(read_regular(&fifo, 10)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        assert!(read_regular(Path::new("/dev/zero"), 10)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
    }
}
