//! Where `export` writes plaintext, every event of every device it covers: a new file
//! only its owner can read (`--out`), or a standard output no other user can read (a
//! pipe, a terminal, or a file of this user's that is owner-only already). Anything
//! else is refused before anything is written.

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

/// Checks standard output before plaintext goes to it
/// ([`capvault_format::stdout_not_private`]).
pub fn check_stdout() -> Result<(), ApiError> {
    match capvault_format::stdout_not_private() {
        Err(e) => Err(ApiError::Operational(format!("cannot check stdout: {e}"))),
        Ok(None) => Ok(()),
        Ok(Some(why)) => Err(ApiError::Operational(format!(
            "standard output is a file that {why}: every event exported would be readable \
             by them; use --out FILE (a new owner-only file), or redirect with `umask 077` \
             set, or pipe"
        ))),
    }
}
