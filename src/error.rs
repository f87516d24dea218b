//! The one public error type. Messages say what happened and what to do; they never
//! carry key bytes or captured plaintext.

/// Everything that can go wrong in capvault. Each variant maps to one C result code.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A caller-supplied value is malformed or out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The OS keychain is unavailable, locked, or lacks a key this vault needs.
    #[error("keychain error: {0}")]
    Keychain(String),
    /// An I/O or database error.
    #[error("storage error: {0}")]
    Storage(String),
    /// The disk is full or the vault's byte budget is exhausted.
    #[error("storage full: {0}")]
    StorageFull(String),
    /// An integrity check failed: the vault or a bundle was modified, truncated,
    /// reordered or rolled back, or was encrypted under another key.
    #[error("integrity check failed: {0}")]
    Tampered(String),
    /// The vault directory is locked by another process.
    #[error("the vault is in use by another process; close the other capvault user (capture agent or CLI) or use its hand-off")]
    InUse,
    /// The vault (or this user's data in it) was crypto-shredded.
    #[error("this user was erased: their keys were destroyed and nothing of theirs in this vault can be read")]
    Erased,
    /// An unknown bundle id, user, or file.
    #[error("not found: {0}")]
    NotFound(String),
    /// The vault handle was already closed.
    #[error("the vault handle is closed")]
    Closed,
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub(crate) fn tampered(msg: impl Into<String>) -> Self {
        Error::Tampered(msg.into())
    }
    pub(crate) fn keychain(msg: impl Into<String>) -> Self {
        Error::Keychain(msg.into())
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => io.into(),
            // sled's own text for this is Debug output ("... at file offset None
            // backtrace ()"); say what it means and what to do instead.
            sled::Error::Corruption { .. } => Error::Tampered(format!(
                "the vault's database is corrupt: data it wrote does not read back intact; {}",
                crate::log::store::DAMAGED_ADVICE
            )),
            // sled re-reports an I/O failure of its background writer as text.
            other if mentions_disk_full(&other.to_string()) => {
                Error::StorageFull(other.to_string())
            }
            // What sled finds unsupported or impossible in its own files is damage.
            sled::Error::Unsupported(_) | sled::Error::ReportableBug(_) => Error::Storage(format!(
                "the vault's database cannot be used ({e}); {}",
                crate::log::store::DAMAGED_ADVICE
            )),
            other => Error::Storage(other.to_string()),
        }
    }
}

impl From<capvault_format::Error> for Error {
    fn from(e: capvault_format::Error) -> Self {
        use capvault_format::Error as F;
        match e {
            F::InvalidArgument(m) => Error::InvalidArgument(m),
            F::Tampered(m) => Error::Tampered(m),
            F::NotFound(m) => Error::NotFound(m),
            F::Io(m) => Error::Storage(m),
            other => Error::Storage(other.to_string()),
        }
    }
}

/// True when an error's text is the operating system's "disk full".
fn mentions_disk_full(text: &str) -> bool {
    text.contains("No space left on device")
        || text.contains("StorageFull")
        || text.contains("Disk quota exceeded")
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC and EDQUOT are the two ways a disk says "full".
        match e.raw_os_error() {
            Some(28) | Some(122) => Error::StorageFull(e.to_string()),
            _ if e.kind() == std::io::ErrorKind::StorageFull
                || e.kind() == std::io::ErrorKind::QuotaExceeded
                || mentions_disk_full(&e.to_string()) =>
            {
                Error::StorageFull(e.to_string())
            }
            _ => {
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.to_string().contains("could not acquire lock")
                {
                    Error::InUse
                } else {
                    Error::Storage(e.to_string())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_formats_to_an_actionable_message() {
        let all = [
            Error::InvalidArgument("x".into()),
            Error::Keychain("x".into()),
            Error::Storage("x".into()),
            Error::StorageFull("x".into()),
            Error::Tampered("x".into()),
            Error::InUse,
            Error::Erased,
            Error::NotFound("x".into()),
            Error::Closed,
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.len() > 10, "{s}");
        }
    }

    #[test]
    fn disk_full_maps_to_storage_full() {
        let e: Error = std::io::Error::from_raw_os_error(28).into();
        assert!(matches!(e, Error::StorageFull(_)));
    }
}
