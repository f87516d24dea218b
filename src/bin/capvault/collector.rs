//! Collector-side commands: `recipient new`, `open`, `receipt`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

use capvault::{ChainChecker, DevicePins, EnrollmentRecord, Error, Identity, Suite};

use crate::output::{self, print_json, CliError, CliResult, EXIT_FAILURE, EXIT_INTEGRITY};

#[derive(Args, Debug)]
pub struct NewRecipientArgs {
    /// Where to write the identity (secret; created 0600, never overwritten).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Post-quantum hybrid recipient (X-Wing: ML-KEM-768 + X25519).
    #[arg(long)]
    pub pq: bool,
}

pub fn recipient_new(a: &NewRecipientArgs, json: bool) -> CliResult<()> {
    let suite = if a.pq { Suite::XWing } else { Suite::X25519 };
    let id = Identity::generate(suite);
    id.write_to_file(&a.out)?;
    let recipient = id.recipient().to_string();
    let receipt_key = id.receipt_key().to_string();
    if json {
        print_json(&json!({
            "recipient": recipient,
            "receipt_key": receipt_key,
            "suite": suite.to_string(),
            "identity_file": a.out.display().to_string(),
        }));
    } else {
        println!("{recipient}");
        eprintln!(
            "identity written to {} (keep it secret); devices seal to the recipient above",
            a.out.display()
        );
        eprintln!("receipt key (for vaults that require receipts): {receipt_key}");
    }
    Ok(())
}

fn read_identity(path: &Path) -> CliResult<Identity> {
    Identity::read_from_file(path).map_err(|e| match e {
        capvault_format::Error::NotFound(_) => CliError::failure(format!(
            "identity file {} not found: pass the file written by `capvault recipient new`",
            path.display()
        )),
        other => CliError::failure(format!("--identity {}: {other}", path.display())),
    })
}

fn read_bundle(path: &Path) -> CliResult<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| CliError::failure(format!("cannot read bundle {}: {e}", path.display())))
}

/// An error about one bundle, with what to do.
fn bundle_error(path: &Path, e: impl Into<Error>) -> CliError {
    let p = path.display();
    match e.into() {
        Error::NotFound(_) => CliError::failure(format!(
            "{p}: this bundle is not sealed to this identity; use the identity whose recipient the device seals to"
        )),
        Error::Tampered(m) => CliError::integrity(format!(
            "{p}: integrity check failed ({m}); the bundle was modified or truncated: do not trust it, fetch it again from the device"
        )),
        other => CliError::failure(format!("{p}: {other}")),
    }
}

#[derive(Args, Debug)]
pub struct OpenArgs {
    /// The collector identity file (from `capvault recipient new`).
    #[arg(long, value_name = "FILE")]
    pub identity: PathBuf,
    /// Enrollment record (from `capvault enroll`) of a device whose bundles may be
    /// released; repeat for each device. A bundle from another device, or under an
    /// enrolled device id but signed by another key, is rejected and none of its events
    /// are written. Take the records from the devices through a channel you trust: a
    /// record only proves that its maker holds the key it names.
    #[arg(long = "devices", value_name = "RECORD", action = clap::ArgAction::Append)]
    pub devices: Vec<PathBuf>,
    /// Bundle files (.cvb; `-` reads one bundle from stdin). Opened in device, stream and
    /// sequence order whatever the order given.
    #[arg(value_name = "BUNDLE", required = true)]
    pub bundles: Vec<PathBuf>,
    /// Write screenshots and other binary payloads as files here instead of base64.
    #[arg(long, value_name = "DIR")]
    pub blobs_dir: Option<PathBuf>,
}

/// Reads enrollment records and pins their keys.
fn read_pins(paths: &[PathBuf]) -> CliResult<DevicePins> {
    let mut pins = DevicePins::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::failure(format!(
                "cannot read enrollment record {}: {e}",
                path.display()
            ))
        })?;
        let record = EnrollmentRecord::from_json(&text).map_err(|e| match e {
            capvault_format::Error::Tampered(m) => {
                CliError::integrity(format!("{}: {m}", path.display()))
            }
            other => CliError::failure(format!("{}: {other}", path.display())),
        })?;
        pins.add(&record)
            .map_err(|e| CliError::integrity(format!("{}: {e}", path.display())))?;
    }
    Ok(pins)
}

/// The bundles given on the command line, read once (stdin can only be read once).
fn read_bundles(paths: &[PathBuf]) -> Vec<(PathBuf, CliResult<Vec<u8>>)> {
    paths
        .iter()
        .map(|p| {
            let bytes = if p.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .map(|_| buf)
                    .map_err(|e| CliError::failure(format!("cannot read a bundle from stdin: {e}")))
            } else {
                read_bundle(p)
            };
            (p.clone(), bytes)
        })
        .collect()
}

pub fn open(a: &OpenArgs, json: bool) -> CliResult<()> {
    let identity = read_identity(&a.identity)?;
    let pins = if a.devices.is_empty() {
        None
    } else {
        Some(read_pins(&a.devices)?)
    };
    if a.bundles.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        return Err(CliError::usage("`-` (stdin) can stand for one bundle only"));
    }
    if let Some(d) = &a.blobs_dir {
        std::fs::create_dir_all(d).map_err(|e| {
            CliError::failure(format!("cannot create --blobs-dir {}: {e}", d.display()))
        })?;
    }
    let mut worst: Option<CliError> = None;
    let mut failed: Vec<Value> = Vec::new();
    let mut note = |path: &Path, e: CliError| {
        if !json {
            eprintln!("error: {}", e.message);
        }
        failed.push(json!({ "file": path.display().to_string(), "error": e.message }));
        if worst.as_ref().is_none_or(|w| e.code > w.code) {
            worst = Some(CliError::silent(e.code));
        }
    };
    // Pass 1: signatures and headers only (no plaintext yet); the chain verdict.
    let mut checker = match pins {
        Some(p) => ChainChecker::with_pins(p),
        None => ChainChecker::new(),
    };
    let mut order = Vec::new();
    for (path, bytes) in read_bundles(&a.bundles) {
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                note(&path, e);
                continue;
            }
        };
        match capvault::inspect_bundle(&bytes) {
            Ok(ins) => {
                checker.add_inspected(&ins);
                let h = &ins.header;
                let key = (*h.device_id(), *h.stream_id(), h.bundle_seq(), ins.digest);
                order.push((key, path, bytes));
            }
            Err(e) => note(&path, bundle_error(&path, e)),
        }
    }
    let report = checker.report();
    order.sort_by_key(|o| o.0);
    // Retries of one bundle: open it once.
    order.dedup_by(|later, first| later.0 == first.0);
    // Pass 2: open the accepted bundles in chain order; a bundle's events are written
    // only once it has fully opened and checked.
    let pb = if std::io::stderr().is_terminal() {
        output::bar(order.len() as u64, "opening")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut events, mut opened, mut rejected) = (0usize, 0usize, 0usize);
    for ((_, _, _, digest), path, bytes) in &order {
        pb.inc(1);
        if !report.accepts(digest) {
            rejected += 1;
            continue;
        }
        match capvault::open_bundle(bytes, &identity) {
            Ok(b) => {
                capvault::write_bundle_json_lines(&b, &mut out, a.blobs_dir.as_deref())?;
                events += b.events.len();
                opened += 1;
            }
            Err(e) => note(path, bundle_error(path, e)),
        }
    }
    out.flush()?;
    drop(out);
    pb.finish_and_clear();
    let clean = report.is_clean() && failed.is_empty();
    if json {
        let v = json!({
            "bundles_given": a.bundles.len(),
            "bundles_opened": opened,
            "bundles_rejected": rejected,
            "events": events,
            "keys_pinned": report.pinned,
            "chain_clean": clean,
            "failed": failed,
            "chain": serde_json::to_value(&report).expect("report serializes"),
        });
        eprintln!("{}", serde_json::to_string(&v).expect("JSON"));
    } else {
        print_chain_report(&report);
        eprintln!(
            "{opened} bundle(s) opened, {events} event(s) written{}",
            if rejected > 0 {
                format!(", {rejected} bundle(s) rejected (none of their events written)")
            } else {
                String::new()
            }
        );
        if !report.pinned {
            eprintln!(
                "note: device keys were not pinned: pass --devices with the devices' \
                 enrollment records (`capvault enroll`) to reject bundles from any other key"
            );
        }
    }
    if !report.is_clean() {
        if !json {
            eprintln!(
                "error: the bundle chain has gaps, conflicts or foreign signers (see above): \
                 data is missing or not authentic"
            );
        }
        return Err(CliError::silent(EXIT_INTEGRITY));
    }
    match worst {
        Some(w) => Err(w),
        None if opened == 0 => Err(CliError::silent(EXIT_FAILURE)),
        None => Ok(()),
    }
}

fn print_chain_report(report: &capvault::ChainReport) {
    for d in &report.devices {
        eprintln!(
            "chain: device {} stream {}: {} bundle(s), sequence {} to {}{}",
            d.device_id,
            d.stream_id,
            d.bundles,
            d.first_seq,
            d.last_seq,
            if d.issues.iter().any(|i| i.is_integrity_failure()) {
                ": PROBLEMS"
            } else {
                ": ok"
            }
        );
        for i in &d.issues {
            let tag = if i.is_integrity_failure() {
                "problem"
            } else {
                "note"
            };
            eprintln!("  {tag}: {i}");
        }
    }
}

#[derive(Args, Debug)]
pub struct ReceiptArgs {
    /// The collector identity file the bundles are sealed to.
    #[arg(long, value_name = "FILE")]
    pub identity: PathBuf,
    /// Bundle files to issue receipts for (each is opened and verified first).
    #[arg(value_name = "BUNDLE", required = true)]
    pub bundles: Vec<PathBuf>,
    /// Write the receipts here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn receipt(a: &ReceiptArgs, json: bool) -> CliResult<()> {
    let identity = read_identity(&a.identity)?;
    let mut lines = Vec::new();
    for path in &a.bundles {
        let bytes = read_bundle(path)?;
        // A receipt says "received intact": only issue it for a bundle that opens.
        let b = capvault::open_bundle(&bytes, &identity).map_err(|e| bundle_error(path, e))?;
        let r = identity.receipt_for(&b.digest);
        lines.push((b.id.clone(), data_encoding::BASE64.encode(&r)));
    }
    let text: String = lines.iter().map(|(id, r)| format!("{id} {r}\n")).collect();
    match &a.out {
        Some(p) => {
            std::fs::write(p, &text)
                .map_err(|e| CliError::failure(format!("cannot write {}: {e}", p.display())))?;
            if json {
                let list: Vec<Value> = lines
                    .iter()
                    .map(|(id, r)| json!({ "id": id, "receipt": r }))
                    .collect();
                print_json(&json!({ "receipts": list, "file": p.display().to_string() }));
            } else {
                eprintln!(
                    "{} receipt(s) written to {}; give them to `capvault ack --receipt {}`",
                    lines.len(),
                    p.display(),
                    p.display()
                );
            }
        }
        None if json => {
            let list: Vec<Value> = lines
                .iter()
                .map(|(id, r)| json!({ "id": id, "receipt": r }))
                .collect();
            print_json(&json!({ "receipts": list }));
        }
        None => print!("{text}"),
    }
    Ok(())
}
