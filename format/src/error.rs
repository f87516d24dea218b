//! The error type of the shared formats. The vault maps it into its own error type
//! (same names, same C result codes).

/// What can go wrong when encoding, decoding, sealing or verifying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A caller-supplied value is malformed, out of range, or of an unsupported kind.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An integrity check failed: the input was modified, truncated, forged, or was
    /// sealed or signed under another key.
    #[error("integrity check failed: {0}")]
    Tampered(String),
    /// Something named does not exist (a file, or a key that opens this bundle).
    #[error("not found: {0}")]
    NotFound(String),
    /// Reading or writing a file the caller named failed.
    #[error("I/O error: {0}")]
    Io(String),
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
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_formats_to_an_actionable_message() {
        for e in [
            Error::InvalidArgument("x".into()),
            Error::Tampered("x".into()),
            Error::NotFound("x".into()),
            Error::Io("x".into()),
        ] {
            assert!(e.to_string().len() > 10, "{e}");
        }
    }
}
