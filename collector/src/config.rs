//! Typed configuration, parsed once from the command line, and the collector
//! directory (receipt signing key file, default database and blob locations).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::ApiError;
use crate::formats::ReceiptSigner;

/// Largest bundle accepted by default (bytes).
pub const DEFAULT_MAX_BUNDLE_BYTES: usize = 64 << 20;
/// Uploads processed at once by default; more get 429 with `Retry-After`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Everything `serve` needs, checked before the server starts.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The collector directory (receipt signing key).
    pub dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// State database URL.
    pub db_url: String,
    /// Blob store URL.
    pub store_url: String,
    /// Certificate chain and key (PEM) for HTTPS; plain HTTP without.
    pub tls: Option<TlsFiles>,
    /// Largest bundle accepted, in bytes.
    pub max_bundle_bytes: usize,
    /// Uploads processed at once.
    pub max_in_flight: usize,
}

/// PEM files for HTTPS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// The receipt signing key file in a collector directory.
pub fn signer_path(dir: &Path) -> PathBuf {
    dir.join("receipt-signing.key")
}

/// The database URL: the one given, or the SQLite file in `dir`.
pub fn db_url(dir: &Path, given: Option<&str>) -> String {
    given.map_or_else(|| crate::db::default_url(dir), str::to_string)
}

/// The blob store URL: the one given, or `dir/bundles`.
pub fn store_url(dir: &Path, given: Option<&str>) -> String {
    given.map_or_else(
        || dir.join("bundles").to_string_lossy().into_owned(),
        str::to_string,
    )
}

/// Creates the collector directory (0700) and a new receipt signing key file (0600);
/// refuses to replace an existing key.
pub fn create_signer(dir: &Path) -> Result<ReceiptSigner, ApiError> {
    let op = |what: &str, e: std::io::Error| ApiError::Operational(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| op(&format!("cannot create {}", dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| op("cannot restrict the directory", e))?;
    }
    let path = signer_path(dir);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            ApiError::Operational(format!(
                "{} already exists: this directory is initialized (use `token new` for another token)",
                path.display()
            ))
        } else {
            op(&format!("cannot create {}", path.display()), e)
        }
    })?;
    let signer = ReceiptSigner::generate();
    let mut text = zeroize::Zeroizing::new(String::new());
    text.push_str("# capvault-collector receipt signing key: keep this file secret\n");
    text.push_str(&format!("# receipt key: {}\n", signer.receipt_key()));
    text.push_str(&signer.to_secret_string());
    text.push('\n');
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| op("cannot write the receipt signing key", e))?;
    Ok(signer)
}

/// Reads the receipt signing key of a collector directory. Like ssh with a private
/// key, refuses a file that its group or others may read or write.
pub fn load_signer(dir: &Path) -> Result<ReceiptSigner, ApiError> {
    let path = signer_path(dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(ApiError::Operational(format!(
                    "permissions {mode:04o} for {} are too open: the receipt signing key must be \
                     accessible by its owner only (chmod 600 {})",
                    path.display(),
                    path.display()
                )));
            }
        }
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
        ApiError::Operational(format!(
            "cannot read {} ({e}); run `capvault-collector init --dir {}` first",
            path.display(),
            dir.display()
        ))
    })?);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| ApiError::Operational(format!("{} holds no key", path.display())))?;
    line.parse().map_err(|e: capvault_format::Error| {
        ApiError::Operational(format!("{}: {e}", path.display()))
    })
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Parses a duration such as `90s`, `30m`, `12h`, `7d` or `2w`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: use e.g. 30m, 12h, 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("{s:?}: the unit must be one of s, m, h, d, w")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3y").is_err());
    }
}
