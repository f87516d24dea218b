//! `capvault upload`: drives the built-in uploader for one vault from the command line
//! (SPEC 12.5). `--once` uploads everything pending in the foreground and exits;
//! without it the vault stays open and uploads in the background until SIGINT/SIGTERM.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use zeroize::Zeroizing;

use capvault::{UploadError, UploadOptions, UploadReport, Vault};

use crate::admin::{open_existing, parse_receipt_key, parse_recipient, resolve, vault_error};
use crate::output::{self, count, human_bytes, human_time, print_json, CliError, CliResult};
use crate::secrets;
use crate::VaultArgs;

/// How often `--once` retries when the collector says it is busy (429/503).
const BUSY_RETRIES: u32 = 5;

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// The collector's base URL (https://...; http only to 127.0.0.0/8, ::1, localhost).
    #[arg(long = "to", value_name = "URL")]
    pub url: String,
    /// The collector's recipient (cvrecip-...) that bundles are sealed to.
    #[arg(long, value_name = "RECIPIENT")]
    pub recipient: String,
    /// The collector's receipt key (cvreceipt-ed25519-1...): bundles are pruned only
    /// against its receipts.
    #[arg(long, value_name = "KEY")]
    pub receipt_key: String,
    /// Enrollment token, used once to enroll this device [env: CAPVAULT_UPLOAD_TOKEN].
    /// Prefer the environment or --token-file: a command line is visible to other users.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the enrollment token from FILE (first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Upload everything pending, then exit (0 when drained, 1 with the error).
    #[arg(long)]
    pub once: bool,
    /// Largest bundle to seal, in bytes (65536 to 67108864; at most the collector's
    /// --max-bundle-bytes, 16 MiB by default).
    #[arg(long, value_name = "N", default_value_t = UploadOptions::default().max_bundle_bytes)]
    pub max_bundle_bytes: usize,
    /// Average bandwidth cap in bytes per second (0: unlimited, else at least 65536),
    /// paced within each bundle.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_bytes_per_sec: u64,
    /// Seconds between checks for new data while running in the background.
    #[arg(long, value_name = "SECS", default_value_t = UploadOptions::default().interval_secs)]
    pub interval: u64,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// The enrollment token, held in wiped-on-drop memory from here on. An identity is
/// refused wherever the token comes from: it would be sent to the collector.
fn token(a: &UploadArgs) -> CliResult<Option<Zeroizing<String>>> {
    let (token, from) = if let Some(t) = &a.token {
        (Some(Zeroizing::new(t.clone())), "--token".to_string())
    } else if let Some(path) = &a.token_file {
        let mut text = Zeroizing::new(String::new());
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| {
                CliError::usage(format!(
                    "cannot read --token-file {}: {}",
                    path.display(),
                    output::io_reason(&e)
                ))
            })?;
        let first = text
            .lines()
            .next()
            .map(|l| Zeroizing::new(l.trim().to_string()));
        (first, format!("--token-file {}", path.display()))
    } else {
        let env = std::env::var("CAPVAULT_UPLOAD_TOKEN")
            .ok()
            .map(Zeroizing::new)
            .filter(|t| !t.is_empty());
        (env, "CAPVAULT_UPLOAD_TOKEN".to_string())
    };
    if token.as_deref().is_some_and(|t| secrets::holds_identity(t)) {
        return Err(CliError::usage(secrets::refused(&from)));
    }
    Ok(token)
}

/// An uploader option error in the words of this command: its flags, not the names of
/// the `upload` option keys, and no internal category prefix.
fn upload_option_error(e: &capvault::Error) -> CliError {
    let mut m = output::describe(e);
    for (key, flag) in [
        ("upload.url", "--to"),
        ("upload.recipient", "--recipient"),
        ("upload.token", "the enrollment token"),
        ("upload.max_bundle_bytes", "--max-bundle-bytes"),
        ("upload.interval_secs", "--interval"),
    ] {
        m = m.replace(key, flag);
    }
    CliError::usage(m)
}

pub fn run(a: &UploadArgs, json: bool) -> CliResult<()> {
    let mut t = resolve(&a.vault)?;
    parse_recipient("--recipient", &a.recipient)?;
    let mut up = UploadOptions::new(a.url.clone(), a.recipient.clone());
    up.token = token(a)?;
    up.max_bundle_bytes = a.max_bundle_bytes;
    up.max_bytes_per_sec = a.max_bytes_per_sec;
    up.interval_secs = a.interval;
    up.validate().map_err(|e| upload_option_error(&e))?;
    parse_receipt_key(&a.receipt_key)?;
    t.options.collector_receipt_key = Some(a.receipt_key.clone());
    if a.once {
        t.options.upload = None;
        let vault = open_existing(&t).map_err(|f| f.at(&t))?;
        let result = once(&vault, &up);
        vault.close().map_err(|e| vault_error(&t, e))?;
        let report = result?;
        if json {
            print_json(&json!({ "drained": true, "report": report }));
        } else {
            println!(
                "uploaded {} ({}){}; nothing pending",
                count(report.bundles, "bundle"),
                human_bytes(report.bytes),
                if report.enrolled {
                    ", enrolled this device"
                } else {
                    ""
                }
            );
        }
        return Ok(());
    }
    t.options.upload = Some(up);
    let vault = open_existing(&t).map_err(|f| f.at(&t))?;
    background(&vault, json)?;
    vault.close().map_err(|e| vault_error(&t, e))?;
    Ok(())
}

/// `--once`: one foreground cycle, retried while the collector says it is busy.
fn once(vault: &Vault, up: &UploadOptions) -> CliResult<UploadReport> {
    let progress = std::io::stderr().is_terminal();
    let mut busy = 0;
    loop {
        if progress {
            eprintln!("uploading to {} ...", up.url);
        }
        match vault.upload_pending(up) {
            Ok(r) => return Ok(r),
            Err(UploadError::Busy { retry_after, .. }) if busy < BUSY_RETRIES => {
                busy += 1;
                if progress {
                    eprintln!(
                        "the collector is busy; retrying in {} s",
                        retry_after.as_secs()
                    );
                }
                std::thread::sleep(retry_after);
            }
            Err(UploadError::Vault(e)) => return Err(e.into()),
            Err(e) => return Err(CliError::failure(e.to_string())),
        }
    }
}

/// Without `--once`: the vault uploads in the background until SIGINT or SIGTERM.
fn background(vault: &Vault, json: bool) -> CliResult<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| CliError::failure(format!("cannot install a signal handler: {e}")))?;
    }
    let progress = std::io::stderr().is_terminal();
    let mut last_report = Instant::now();
    let mut last_line = String::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if progress && last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            if let Some(u) = vault.status()?.upload {
                let line = format!(
                    "uploaded {} ({}), {} pending{}",
                    count(u.uploaded_bundles, "bundle"),
                    human_bytes(u.uploaded_bytes),
                    human_bytes(u.pending_bytes),
                    match (&u.last_error, u.next_attempt_us) {
                        (Some(e), Some(next)) => format!("; {e}; next try {}", human_time(next)),
                        _ => String::new(),
                    }
                );
                if line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
            }
        }
    }
    let st = vault.status()?;
    if json {
        print_json(&json!({ "stopped": true, "upload": st.upload }));
    } else if let Some(u) = st.upload {
        println!(
            "stopped: uploaded {} ({}), {} pending",
            count(u.uploaded_bundles, "bundle"),
            human_bytes(u.uploaded_bytes),
            human_bytes(u.pending_bytes)
        );
    }
    Ok(())
}
