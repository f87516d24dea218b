//! The command line (SPEC 12.6). Exit codes as for `capvault`: 0 success, 1
//! operational failure, 2 usage error, 3 integrity failure.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, ServeConfig, TlsFiles};
use crate::db::Db;
use crate::error::ApiError;
use crate::store::BlobStore;

/// capvault-collector: receive, verify and store sealed capvault bundles; export them
/// as JSON Lines with the collector identity.
#[derive(Debug, Parser)]
#[command(name = "capvault-collector", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the collector directory: receipt signing key and a first enrollment token.
    Init(InitArgs),
    /// Run the ingest service.
    Serve(ServeArgs),
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Enrolled devices.
    Devices {
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Open the stored bundles with the identity and write JSON Lines to stdout.
    Export(ExportArgs),
    /// Copy the stored bundles, still sealed, into a directory, one file each (no
    /// identity needed; each is checked against its digest first).
    CopyBundles(CopyArgs),
}

#[derive(Debug, Args)]
struct DirArgs {
    /// The collector directory.
    #[arg(long)]
    dir: PathBuf,
    /// State database URL (default: sqlite file in DIR). Keep a password out of it
    /// (PGPASSWORD or ~/.pgpass), or give the URL in the environment: a command line is
    /// visible to every local user.
    #[arg(long, env = "CAPVAULT_COLLECTOR_DB", hide_env_values = true)]
    db: Option<String>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The collector directory to create.
    #[arg(long)]
    dir: PathBuf,
    /// State database URL (default: sqlite file in DIR). Keep a password out of it
    /// (PGPASSWORD or ~/.pgpass), or give the URL in the environment: a command line is
    /// visible to every local user.
    #[arg(long, env = "CAPVAULT_COLLECTOR_DB", hide_env_values = true)]
    db: Option<String>,
    /// Blob store URL every replica will use (default: DIR/bundles); recorded in the
    /// database, so that a replica or export given another is refused.
    #[arg(long)]
    store: Option<String>,
    /// Print {"receipt_key", "token"}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Address to listen on, e.g. 0.0.0.0:8443 (port 0 picks a free port).
    #[arg(long)]
    listen: SocketAddr,
    /// Blob store URL: a directory or s3://bucket/prefix (default: DIR/bundles).
    #[arg(long)]
    store: Option<String>,
    /// Certificate chain (PEM) for HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for HTTPS.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest bundle accepted, in bytes (413 above; a larger Content-Length is refused
    /// before the body is read).
    #[arg(long, default_value_t = config::DEFAULT_MAX_BUNDLE_BYTES)]
    max_bundle_bytes: usize,
    /// Uploads processed at once; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = config::DEFAULT_MAX_IN_FLIGHT)]
    max_in_flight: usize,
    /// Memory budget for upload bodies, in bytes: serve refuses to start when
    /// max-in-flight x max-bundle-bytes exceeds it.
    #[arg(long, default_value_t = config::DEFAULT_MAX_MEMORY)]
    max_memory: u64,
    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Grace for a request body: after it, the body so far must have come at
    /// --min-upload-rate or faster, else 408 [default: 30s].
    #[arg(long, value_parser = config::parse_duration)]
    body_timeout: Option<std::time::Duration>,
    /// Slowest upload allowed after --body-timeout, in bytes per second.
    #[arg(long, default_value_t = config::DEFAULT_MIN_UPLOAD_RATE)]
    min_upload_rate: u64,
    /// Time to receive a request's headers, and to keep an idle connection
    /// [default: 30s].
    #[arg(long, value_parser = config::parse_duration)]
    idle_timeout: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an enrollment token (printed once; only its hash is stored).
    New {
        #[command(flatten)]
        dir: DirArgs,
        /// How many devices may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Lifetime, e.g. 30m, 12h, 7d (default: no expiry).
        #[arg(long, value_parser = config::parse_duration)]
        expires: Option<std::time::Duration>,
        /// Print {"token", "id", "uses", "expires_us"}.
        #[arg(long)]
        json: bool,
    },
    /// List the tokens: id, uses left, expiry, creation (never the tokens).
    List {
        #[command(flatten)]
        dir: DirArgs,
        /// JSON Lines: {"id", "uses_left", "expires_us", "created_us"}.
        #[arg(long)]
        json: bool,
    },
    /// Use up a token (lost or leaked): it enrolls no new device from then on. Devices
    /// it enrolled stay enrolled (`devices revoke` them).
    Revoke {
        /// The token's id, from `token list` or `token new` (at least 8 hex digits).
        id: String,
        #[command(flatten)]
        dir: DirArgs,
    },
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// List enrolled devices.
    List {
        #[command(flatten)]
        dir: DirArgs,
        /// JSON Lines, one device per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: its further uploads are refused (403).
    Revoke {
        /// The device id (hex).
        device_id: String,
        #[command(flatten)]
        dir: DirArgs,
    },
}

#[derive(Debug, Args)]
struct ExportArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// The collector identity file (opens bundles).
    #[arg(long)]
    identity: PathBuf,
    /// Blob store URL (default: DIR/bundles).
    #[arg(long)]
    store: Option<String>,
    /// Only this device (hex id).
    #[arg(long)]
    device: Option<String>,
    /// Write the events to this new file (owner-only; never over an existing file,
    /// removed if the export fails) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Chain report as JSON on stderr.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CopyArgs {
    #[command(flatten)]
    dir: DirArgs,
    /// Blob store URL (default: DIR/bundles).
    #[arg(long)]
    store: Option<String>,
    /// Only this device (hex id).
    #[arg(long)]
    device: Option<String>,
    /// Where to write the files (created if needed; existing files are not replaced).
    #[arg(long)]
    out: PathBuf,
}

fn init_logs(format: LogFormat, default_level: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("CAPVAULT_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| default_level.parse().expect("a valid level"));
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
}

fn runtime() -> Result<tokio::runtime::Runtime, ApiError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ApiError::Operational(format!("cannot start the runtime: {e}")))
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    let serving = matches!(cli.command, Command::Serve(_));
    init_logs(cli.log_format, if serving { "info" } else { "warn" });
    let result = runtime().and_then(|rt| rt.block_on(dispatch(cli.command)));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("capvault-collector: {e}");
            e.exit_code()
        }
    }
}

fn print_out(text: &str) -> Result<(), ApiError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| ApiError::Operational(format!("cannot write to stdout: {e}")))
}

async fn open_db(dir: &Path, db: Option<&str>) -> Result<Db, ApiError> {
    // Without --db the SQLite file must already exist: a typo in --dir should not
    // create an empty collector.
    if db.is_none() && !dir.join(crate::db::DEFAULT_FILE).exists() {
        return Err(ApiError::Operational(format!(
            "{} is not a collector directory; run `capvault-collector init --dir {}` first",
            dir.display(),
            dir.display()
        )));
    }
    crate::private::check_collector_dir(dir, db.is_none(), false)?;
    Db::open(&config::db_url(dir, db)).await
}

/// `export` and `copy-bundles` only read, and check every blob against its digest: a
/// store other than the one recorded is said, not refused (the report then shows what
/// it lacks).
fn warn_unbound(checked: Result<Vec<&'static str>, ApiError>) {
    if let Err(e) = checked {
        eprintln!("capvault-collector: warning: {e}");
    }
}

/// The blob store of collector directory `dir` (checked when it is the default one),
/// or the one given.
fn open_store(dir: &Path, store: Option<&str>) -> Result<BlobStore, ApiError> {
    crate::private::check_collector_dir(dir, false, store.is_none())?;
    BlobStore::open(&config::store_url(dir, store))
}

/// `init`: a new or empty directory of this user's, a receipt signing key, the
/// database, the blob directory and a first token. Whatever it made is taken back if a
/// later step fails, so that it can be run again.
async fn init(
    dir: &Path,
    db_url: Option<&str>,
    store: Option<&str>,
) -> Result<(capvault_format::ReceiptSigner, String), ApiError> {
    let created = crate::private::prepare_init_dir(dir)?;
    // The key file, made new, is this init's claim on the directory: another init that
    // got there first has it, and this one stops having made nothing.
    let signer = match config::create_signer(dir) {
        Ok(signer) => signer,
        Err(e) => {
            if created {
                // Empty: only what this init made (removes nothing otherwise).
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    let made = async {
        let db = Db::open(&config::db_url(dir, db_url)).await?;
        let token = async {
            let blobs = BlobStore::open(&config::store_url(dir, store))?;
            let key = signer.receipt_key().to_string();
            let bound = config::check_bindings(&db, Some(&blobs), Some(&key), true).await?;
            let token = crate::tokens::create(&db, 1, None).await;
            if token.is_err() {
                // Nothing recorded for a collector that did not come to be.
                let _ = db.unbind(&bound).await;
            }
            token
        }
        .await;
        db.close().await;
        token
    }
    .await;
    match made {
        Ok(token) => Ok((signer, token)),
        Err(e) => {
            // The directory was new or empty and this init holds it: everything in it
            // is this init's.
            let undone = if created {
                std::fs::remove_dir_all(dir)
            } else {
                std::fs::read_dir(dir).and_then(|entries| {
                    entries.into_iter().try_for_each(|e| {
                        let e = e?;
                        if e.file_name() == "lost+found" {
                            return Ok(());
                        }
                        let path = e.path();
                        if path.is_dir() && !path.is_symlink() {
                            std::fs::remove_dir_all(path)
                        } else {
                            std::fs::remove_file(path)
                        }
                    })
                })
            };
            if let Err(e) = undone {
                eprintln!(
                    "capvault-collector: could not take back what init made in {}: {e}",
                    dir.display()
                );
            }
            Err(e)
        }
    }
}

async fn dispatch(command: Command) -> Result<u8, ApiError> {
    match command {
        Command::Init(a) => {
            let (signer, token) = init(&a.dir, a.db.as_deref(), a.store.as_deref()).await?;
            let key = signer.receipt_key().to_string();
            if a.json {
                print_out(&format!(
                    "{}\n",
                    serde_json::json!({ "receipt_key": key, "token": token })
                ))?;
            } else {
                print_out(&format!(
                    "receipt key: {key}\nenrollment token (1 use): {token}\n\
                     Configure devices with the receipt key (collector_receipt_key) and the token (upload.token).\n"
                ))?;
            }
            Ok(0)
        }
        Command::Serve(a) => {
            let cfg = ServeConfig {
                listen: a.listen,
                db_url: config::db_url(&a.dir.dir, a.dir.db.as_deref()),
                store_url: config::store_url(&a.dir.dir, a.store.as_deref()),
                tls: match (a.tls_cert, a.tls_key) {
                    (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                    _ => None,
                },
                max_bundle_bytes: a.max_bundle_bytes,
                max_in_flight: a.max_in_flight,
                max_memory: a.max_memory,
                max_connections: a.max_connections,
                body_timeout: a.body_timeout.unwrap_or(config::DEFAULT_BODY_TIMEOUT),
                min_upload_rate: a.min_upload_rate,
                idle_timeout: a.idle_timeout.unwrap_or(config::DEFAULT_IDLE_TIMEOUT),
                dir: a.dir.dir,
            };
            cfg.check()?;
            crate::private::check_collector_dir(&cfg.dir, a.dir.db.is_none(), a.store.is_none())?;
            crate::server::serve(cfg).await?;
            Ok(0)
        }
        Command::Token {
            command:
                TokenCommand::New {
                    dir,
                    uses,
                    expires,
                    json,
                },
        } => {
            let db = open_db(&dir.dir, dir.db.as_deref()).await?;
            let expires_us = expires.map(|d| config::now_us().saturating_add(d.as_micros() as i64));
            let token = crate::tokens::create(&db, uses, expires_us).await?;
            db.close().await;
            let hash = crate::tokens::hash(&token);
            let id = crate::tokens::id(&hash);
            if json {
                print_out(&format!(
                    "{}\n",
                    serde_json::json!({ "token": token, "id": id, "uses": uses, "expires_us": expires_us })
                ))?;
            } else {
                print_out(&format!("{token}\n"))?;
                eprintln!("token id {id} (for `token list` and `token revoke`)");
            }
            Ok(0)
        }
        Command::Token {
            command: TokenCommand::List { dir, json },
        } => {
            let db = open_db(&dir.dir, dir.db.as_deref()).await?;
            let tokens = db.tokens().await?;
            db.close().await;
            let now = config::now_us();
            let mut text = String::new();
            for t in &tokens {
                let id = crate::tokens::id(&t.hash);
                if json {
                    let line = serde_json::json!({
                        "id": id, "uses_left": t.uses_left,
                        "expires_us": t.expires_us, "created_us": t.created_us,
                    });
                    text.push_str(&format!("{line}\n"));
                } else {
                    let state = match t.expires_us {
                        _ if t.uses_left <= 0 => "used up".to_string(),
                        Some(e) if e <= now => "expired".to_string(),
                        Some(e) => format!("expires in {}", config::format_duration_us(e - now)),
                        None => "no expiry".to_string(),
                    };
                    text.push_str(&format!(
                        "{id}  {} uses left  {state}\n",
                        t.uses_left.max(0)
                    ));
                }
            }
            print_out(&text)?;
            Ok(0)
        }
        Command::Token {
            command: TokenCommand::Revoke { id, dir },
        } => {
            let db = open_db(&dir.dir, dir.db.as_deref()).await?;
            let revoked = async {
                let hash = crate::tokens::find(&db, &id).await?;
                db.revoke_token(&hash).await?;
                let devices = db.enrolled_with(&hash).await?;
                Ok::<_, ApiError>((hash, devices))
            }
            .await;
            db.close().await;
            let (hash, devices) = revoked?;
            let mut text = format!(
                "token {} can enroll no new device; it enrolled {}",
                crate::tokens::id(&hash),
                devices.len()
            );
            if !devices.is_empty() {
                text.push_str(" (`devices revoke` those that should not upload):");
                for d in &devices {
                    text.push_str(&format!("\n  {d}"));
                }
            }
            print_out(&format!("{text}\n"))?;
            Ok(0)
        }
        Command::Devices {
            command: DevicesCommand::List { dir, json },
        } => {
            let db = open_db(&dir.dir, dir.db.as_deref()).await?;
            let devices = db.devices().await?;
            db.close().await;
            let mut text = String::new();
            for d in devices {
                if json {
                    text.push_str(
                        &serde_json::json!({
                            "device_id": d.device_id,
                            "device_key": d.device_key,
                            "enrolled_us": d.enrolled_us,
                            "revoked_us": d.revoked_us,
                        })
                        .to_string(),
                    );
                    text.push('\n');
                } else {
                    text.push_str(&format!(
                        "{}  key {}  {}\n",
                        d.device_id,
                        d.device_key,
                        if d.revoked_us.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    ));
                }
            }
            print_out(&text)?;
            Ok(0)
        }
        Command::Devices {
            command: DevicesCommand::Revoke { device_id, dir },
        } => {
            let db = open_db(&dir.dir, dir.db.as_deref()).await?;
            let id = device_id.trim().to_ascii_lowercase();
            let found = db.revoke(&id, config::now_us()).await?;
            db.close().await;
            if !found {
                return Err(ApiError::Operational(format!(
                    "device {id} is not enrolled"
                )));
            }
            print_out(&format!("revoked {id}\n"))?;
            Ok(0)
        }
        Command::CopyBundles(a) => {
            let db = open_db(&a.dir.dir, a.dir.db.as_deref()).await?;
            let store = open_store(&a.dir.dir, a.store.as_deref())?;
            warn_unbound(config::check_bindings(&db, Some(&store), None, false).await);
            let report = crate::copy::copy_bundles(&db, &store, a.device.as_deref(), &a.out).await;
            db.close().await;
            let report = report?;
            let mut err = std::io::stderr().lock();
            for (name, problem) in &report.failed {
                let _ = writeln!(err, "capvault-collector: {name}: {problem}");
            }
            print_out(&format!(
                "copied {} bundles to {}\n",
                report.copied,
                a.out.display()
            ))?;
            Ok(if report.failed.is_empty() { 0 } else { 3 })
        }
        Command::Export(a) => {
            crate::private::check_key_file(&a.identity, "the identity file")?;
            let identity = capvault_format::Identity::read_from_file(&a.identity)
                .map_err(|e| ApiError::Operational(e.to_string()))?;
            let db = open_db(&a.dir.dir, a.dir.db.as_deref()).await?;
            let store = open_store(&a.dir.dir, a.store.as_deref())?;
            warn_unbound(config::check_bindings(&db, Some(&store), None, false).await);
            // Plaintext goes only where no one else can read it, checked before any of it
            // is written.
            let target: Box<dyn Write> = match &a.out {
                Some(path) => Box::new(crate::plaintext_out::create(path)?),
                None => {
                    crate::plaintext_out::check_stdout()?;
                    Box::new(std::io::stdout().lock())
                }
            };
            let mut out = std::io::BufWriter::new(target);
            let exported =
                crate::export::export(&db, &store, &identity, a.device.as_deref(), &mut out).await;
            let flushed = out.flush();
            drop(out);
            db.close().await;
            let report = match (exported, flushed) {
                (Ok(report), Ok(())) => report,
                (exported, flushed) => {
                    let e = exported.err().unwrap_or_else(|| {
                        let e = flushed.err().map(|e| e.to_string()).unwrap_or_default();
                        ApiError::Operational(format!("cannot write the events: {e}"))
                    });
                    // No partial plaintext left behind.
                    if let Some(path) = &a.out {
                        if std::fs::remove_file(path).is_ok() {
                            eprintln!("capvault-collector: removed the partial {}", path.display());
                        }
                    }
                    return Err(e);
                }
            };
            let mut err = std::io::stderr().lock();
            if a.json {
                let _ = writeln!(
                    err,
                    "{}",
                    serde_json::to_string(&report).unwrap_or_default()
                );
            } else {
                let _ = report.write_text(&mut err);
            }
            if report.is_clean() {
                Ok(0)
            } else {
                let _ = writeln!(
                    err,
                    "capvault-collector: integrity failure: see the report above"
                );
                Ok(3)
            }
        }
    }
}
