//! Where `export` writes plaintext, every event of every device it covers: a new file
//! only its owner can read (`--out`), or a standard output no other user can read (a
//! pipe, a terminal, or a file of this user's that is, or is made, owner-only). A file
//! that belongs to someone else, or has other names, is refused before anything is
//! written: whoever made it could read what lands in it.

use std::fs::File;
use std::path::Path;

use crate::error::ApiError;

/// Creates `path` for the export: new (never an existing file, nor through a symbolic
/// link), owner-only.
pub fn create(path: &Path) -> Result<File, ApiError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "it already exists (the export never writes over a file)".to_string()
        } else {
            e.to_string()
        };
        ApiError::Operational(format!("cannot create {}: {why}", path.display()))
    })
}

/// Checks standard output before plaintext goes to it: a terminal, a socket, /dev/null
/// or an anonymous pipe is the caller's choice; a regular file or a named FIFO must be
/// this user's, have no other name, and be closed to others already (a mode changed
/// now would not take the file back from whoever opened it in the meantime).
#[cfg(unix)]
pub fn check_stdout() -> Result<(), ApiError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let failed = |e: std::io::Error| ApiError::Operational(format!("cannot check stdout: {e}"));
    let out = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(failed)?,
    );
    let meta = out.metadata().map_err(failed)?;
    let kind = meta.file_type();
    let anonymous_pipe = kind.is_fifo()
        && std::fs::read_link("/proc/self/fd/1")
            .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"));
    if !(kind.is_file() || kind.is_fifo()) || anonymous_pipe {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    let why = if crate::private::my_uid().is_some_and(|me| me != meta.uid()) {
        "belongs to another user".to_string()
    } else if meta.nlink() > 1 {
        "has other names (hard links)".to_string()
    } else if mode & 0o077 != 0 {
        format!("others could open (mode {mode:04o}), and may hold open already")
    } else {
        return Ok(());
    };
    Err(ApiError::Operational(format!(
        "standard output is a file that {why}: every event exported would be readable \
         by them; use --out FILE (a new owner-only file), or redirect with `umask 077` \
         set, or pipe"
    )))
}

#[cfg(not(unix))]
pub fn check_stdout() -> Result<(), ApiError> {
    Ok(())
}
