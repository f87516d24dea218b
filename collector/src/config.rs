//! Typed configuration, parsed once from the command line, and the collector
//! directory (receipt signing key file, default database and blob locations).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::ApiError;
use crate::store::RECEIVE_SLACK;
use capvault_format::ReceiptSigner;

/// Largest bundle accepted by default (bytes): twice the devices' default
/// `upload.max_bundle_bytes` (8 MiB), for sealing overhead and headroom.
pub const DEFAULT_MAX_BUNDLE_BYTES: usize = capvault_format::COLLECTOR_DEFAULT_MAX_BUNDLE_BYTES;
/// Uploads processed at once by default; more get 429 with `Retry-After`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// Memory budget for upload bodies by default (bytes): `serve` refuses to start when
/// `max_in_flight × max_bundle_bytes` exceeds it (each upload is buffered whole).
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;
/// Open connections per replica by default; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Base of the body-read deadline by default (see [`ServeConfig::body_deadline`]).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Slowest upload rate allowed for by the body-read deadline by default (bytes/s).
pub const DEFAULT_MIN_UPLOAD_RATE: u64 = capvault_format::COLLECTOR_DEFAULT_MIN_UPLOAD_RATE;
/// Time allowed to receive a request's headers by default; also how long an idle
/// keep-alive connection is kept.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// What one open connection may hold besides an upload body: hyper's read buffer (at
/// most this much: request headers are small, and body bytes pass through it on
/// their way to the upload's own buffer) and an enrollment body (at most this much).
pub const CONNECTION_READ_BUFFER: usize = 64 << 10;
/// Largest enrollment request body (a token and a record of a few hundred bytes).
pub const MAX_ENROLL_BYTES: usize = 64 << 10;

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
    /// Uploads processed at once (each holds at most `max_bundle_bytes` in memory).
    pub max_in_flight: usize,
    /// Memory budget for upload bodies and connection buffers: `max_in_flight ×
    /// max_bundle_bytes` plus `max_connections` × 128 KiB must fit.
    pub max_memory: u64,
    /// Connections open at once.
    pub max_connections: usize,
    /// Base of the body-read deadline.
    pub body_timeout: Duration,
    /// Slowest upload rate the body-read deadline allows for, in bytes per second.
    pub min_upload_rate: u64,
    /// Time to receive a request's headers, and the idle keep-alive timeout.
    pub idle_timeout: Duration,
}

impl ServeConfig {
    /// Refuses settings that do not fit: upload buffers over the memory budget, zero
    /// limits.
    pub fn check(&self) -> Result<(), ApiError> {
        let usage = |m: String| Err(ApiError::Operational(m));
        // A receipt promises the row survives: not a database that vanishes at exit or
        // cannot be written.
        let lower = self.db_url.to_ascii_lowercase();
        if lower.starts_with("sqlite:")
            && (lower.contains(":memory:")
                || lower.contains("mode=memory")
                || lower.contains("mode=ro"))
        {
            return usage(
                "--db: serve needs a SQLite database on disk that it can write (not mode=memory, \
                 :memory: or mode=ro): receipts promise that rows survive"
                    .into(),
            );
        }
        if self.max_in_flight == 0 || self.max_connections == 0 || self.max_bundle_bytes == 0 {
            return usage(
                "--max-in-flight, --max-connections and --max-bundle-bytes must be at least 1"
                    .into(),
            );
        }
        if self.idle_timeout.is_zero() {
            return usage("--idle-timeout must be longer than zero".into());
        }
        if self.min_upload_rate == 0 {
            return usage("--min-upload-rate must be at least 1 byte per second".into());
        }
        // A large body's buffer also has room for its segment entry's framing.
        let per_body = (self.max_bundle_bytes as u64).saturating_add(RECEIVE_SLACK as u64);
        let bodies = (self.max_in_flight as u64).saturating_mul(per_body);
        let per_connection = (CONNECTION_READ_BUFFER + MAX_ENROLL_BYTES) as u64;
        let connections = (self.max_connections as u64).saturating_mul(per_connection);
        let need = bodies.saturating_add(connections);
        if need > self.max_memory {
            return usage(format!(
                "--max-in-flight {} x (--max-bundle-bytes {} + {RECEIVE_SLACK}) = {bodies} \
                 bytes of upload buffers, and --max-connections {} x {per_connection} bytes of connection \
                 buffers, {need} bytes in all, over the --max-memory budget of {} bytes: \
                 lower --max-in-flight, --max-bundle-bytes or --max-connections, or raise \
                 --max-memory if this host has the memory",
                self.max_in_flight, self.max_bundle_bytes, self.max_connections, self.max_memory
            ));
        }
        Ok(())
    }
}

/// How long reading a body of `len` bytes may take in all: the base timeout plus the
/// time to send `len` bytes at the minimum upload rate. A client slower than that is
/// answered 408 and its upload slot freed.
pub fn body_deadline(base: Duration, min_rate: u64, len: u64) -> Duration {
    base.saturating_add(Duration::from_secs_f64(len as f64 / min_rate.max(1) as f64))
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

/// Creates a new receipt signing key file (0600) in the collector directory (see
/// [`crate::private::prepare_init_dir`]), durable with its name; refuses to replace an
/// existing key.
pub fn create_signer(dir: &Path) -> Result<ReceiptSigner, ApiError> {
    let op = |what: &str, e: std::io::Error| ApiError::Operational(format!("{what}: {e}"));
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
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| op("cannot write the receipt signing key", e))?;
    Ok(signer)
}

/// Reads the receipt signing key of a collector directory. Like ssh with a private
/// key, refuses a file that its group or others may read or write.
pub fn load_signer(dir: &Path) -> Result<ReceiptSigner, ApiError> {
    let path = signer_path(dir);
    crate::private::check_key_file(&path, "the receipt signing key")?;
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

/// `us` microseconds as the largest whole unit: `3d`, `5h`, `12m`, `40s`.
pub fn format_duration_us(us: i64) -> String {
    let s = us.max(0) / 1_000_000;
    match s {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses a duration such as `90s`, `30m`, `12h`, `7d` or `2w`.
/// The longest duration any option takes: longer than any timeout or token should
/// live; far longer ones overflow clocks (a deadline past what `Instant` holds, a
/// negative expiry).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 86_400);

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
        .filter(|&t| t <= MAX_DURATION.as_secs())
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long: at most 10 years (520w)"))
}

/// What every replica and export of one collector must share, held in its database:
/// where the blobs are and the receipt key (recorded by `init`, or by the first `serve`
/// of a database made before). A replica started without `--store`, or with another directory's key,
/// would answer receipts for bundles no export finds, or that devices cannot verify; it
/// is refused instead. `store: None`: not checked. `bind`: record what is not recorded
/// yet (`init`, `serve`; returns what this call recorded); otherwise only compare
/// (`export`, `copy-bundles`).
pub async fn check_bindings(
    db: &crate::db::Db,
    store: Option<&crate::store::BlobStore>,
    receipt_key: Option<&str>,
    bind: bool,
) -> Result<Vec<&'static str>, ApiError> {
    let mut recorded = Vec::new();
    let mut wanted = Vec::new();
    if let Some(store) = store {
        wanted.push(("store", store.binding(), "--store"));
    }
    if let Some(key) = receipt_key {
        wanted.push(("receipt_key", key, "the receipt signing key"));
    }
    for (name, mine, what) in wanted {
        let bound = if bind {
            let (bound, inserted) = db.bind_setting(name, mine).await?;
            if inserted {
                recorded.push(name);
            }
            Some(bound)
        } else {
            db.setting(name).await?
        };
        match bound {
            Some(bound) if bound != mine => {
                // Nothing recorded by a call that refuses.
                db.unbind(&recorded).await?;
                let fix = if name == "store" {
                    format!(
                        "give --store {bound} (`local`: DIR/bundles or another directory); if \
                         that was recorded by mistake and nothing is stored yet, remove it \
                         (DELETE FROM settings WHERE name = 'store') and start again"
                    )
                } else {
                    "copy the receipt-signing.key that init made to every replica".to_string()
                };
                return Err(ApiError::Operational(format!(
                    "this collector's database holds {name} {bound}, and {what} here is \
                     {mine}: every replica and export of one collector must share it; {fix}"
                )));
            }
            _ => {}
        }
    }
    Ok(recorded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(in_flight: usize, bundle: usize, memory: u64) -> ServeConfig {
        ServeConfig {
            dir: PathBuf::from("d"),
            listen: "127.0.0.1:0".parse().unwrap(),
            db_url: String::new(),
            store_url: String::new(),
            tls: None,
            max_bundle_bytes: bundle,
            max_in_flight: in_flight,
            max_memory: memory,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            min_upload_rate: DEFAULT_MIN_UPLOAD_RATE,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }

    #[test]
    fn serve_refuses_a_database_that_would_not_keep_its_rows() {
        let base = cfg(1, 1 << 20, DEFAULT_MAX_MEMORY);
        for url in [
            "sqlite::memory:",
            "sqlite://x.db?mode=memory&cache=shared",
            "SQLITE://x.db?MODE=RO",
        ] {
            let c = ServeConfig {
                db_url: url.into(),
                ..cfg(1, 1 << 20, DEFAULT_MAX_MEMORY)
            };
            assert!(c.check().is_err(), "{url}");
        }
        for url in [
            "sqlite:///var/c/collector.db?mode=rwc",
            "postgres://u@h/memory",
        ] {
            let c = ServeConfig {
                db_url: url.into(),
                ..cfg(1, 1 << 20, DEFAULT_MAX_MEMORY)
            };
            c.check().unwrap();
        }
        base.check().unwrap();
    }

    #[test]
    fn the_defaults_fit_the_memory_budget_and_more_is_refused() {
        cfg(
            DEFAULT_MAX_IN_FLIGHT,
            DEFAULT_MAX_BUNDLE_BYTES,
            DEFAULT_MAX_MEMORY,
        )
        .check()
        .unwrap();
        let e = cfg(256, 64 << 20, DEFAULT_MAX_MEMORY).check().unwrap_err();
        assert!(e.to_string().contains("--max-memory"), "{e}");
        cfg(256, 64 << 20, 17 << 30).check().unwrap();
        assert!(cfg(0, 1, 1).check().is_err());
        // Connections count too: each may hold a read buffer and an enrollment body.
        let mut many = cfg(
            DEFAULT_MAX_IN_FLIGHT,
            DEFAULT_MAX_BUNDLE_BYTES,
            DEFAULT_MAX_MEMORY,
        );
        many.max_connections = 8192;
        let e = many.check().unwrap_err();
        assert!(e.to_string().contains("--max-connections 8192"), "{e}");
    }

    #[test]
    fn the_body_deadline_grows_with_the_size() {
        let c = cfg(1, 1, 1);
        let d = |len| body_deadline(c.body_timeout, c.min_upload_rate, len);
        assert_eq!(d(0), Duration::from_secs(30));
        assert_eq!(d(16 << 20), Duration::from_secs(30 + 256));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3y").is_err());
        assert_eq!(
            parse_duration("520w").unwrap(),
            Duration::from_secs(520 * 604_800)
        );
        for long in ["20000000w", "20000000000000w", "18446744073709551615s"] {
            let e = parse_duration(long).unwrap_err();
            assert!(e.contains("too long"), "{e}");
        }
    }
}
