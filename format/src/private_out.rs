//! Where released plaintext (or a secret) may go: the check both command lines make on
//! their standard output before they write anything to it.

/// This process's effective user; `None` off Unix (ownership is then not checked).
pub fn effective_uid() -> Option<u32> {
    #[cfg(unix)]
    {
        Some(rustix::process::geteuid().as_raw())
    }
    #[cfg(not(unix))]
    None
}

/// Why standard output is not a place only this user can read, or `None` when it is.
/// A terminal, a socket, /dev/null or an anonymous pipe is the caller's choice; a
/// regular file or a named FIFO must be this (effective) user's, have one name (whoever
/// made or linked it could read what lands in it), and be closed to others already: a
/// mode changed now would not take the file back from whoever opened it meanwhile.
#[cfg(unix)]
pub fn stdout_not_private() -> std::io::Result<Option<String>> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let dup = std::io::stdout().as_fd().try_clone_to_owned()?;
    let meta = std::fs::File::from(dup).metadata()?;
    let kind = meta.file_type();
    let anonymous_pipe = kind.is_fifo()
        && std::fs::read_link("/proc/self/fd/1")
            .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"));
    if !(kind.is_file() || kind.is_fifo()) || anonymous_pipe {
        return Ok(None);
    }
    let mode = meta.permissions().mode() & 0o7777;
    Ok(if effective_uid() != Some(meta.uid()) {
        Some("belongs to another user".to_string())
    } else if meta.nlink() > 1 {
        Some("has other names (hard links)".to_string())
    } else if mode & 0o077 != 0 {
        Some(format!(
            "others could open (mode {mode:04o}), and may hold open already"
        ))
    } else {
        None
    })
}

/// Elsewhere nothing is checked.
#[cfg(not(unix))]
pub fn stdout_not_private() -> std::io::Result<Option<String>> {
    Ok(None)
}
