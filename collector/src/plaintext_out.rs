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

/// Checks standard output before plaintext goes to it; a regular file of this user's
/// that others could read is made owner-only (said on stderr).
#[cfg(unix)]
pub fn check_stdout() -> Result<(), ApiError> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let failed = |e: std::io::Error| ApiError::Operational(format!("cannot check stdout: {e}"));
    let out = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(failed)?,
    );
    let meta = out.metadata().map_err(failed)?;
    if !meta.is_file() {
        // A pipe, a terminal, /dev/null: what reads it is the caller's choice.
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(ApiError::Operational(format!(
            "standard output is a file {why}: others could read every event exported; \
             use --out FILE (a new owner-only file), or a file of your own with mode 600"
        )))
    };
    if crate::private::my_uid() != Some(meta.uid()) {
        return refuse("that belongs to another user");
    }
    if meta.nlink() > 1 {
        return refuse("with other names (hard links)");
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        out.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(failed)?;
        eprintln!(
            "capvault-collector: standard output is a file others could read (mode {mode:o}): \
             made it owner-only (600)"
        );
    }
    Ok(())
}

#[cfg(not(unix))]
pub fn check_stdout() -> Result<(), ApiError> {
    Ok(())
}
