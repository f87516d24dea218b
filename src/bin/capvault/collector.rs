//! Collector-side commands: `recipient new`, `open`, `receipt`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

use capvault::{ChainChecker, Error, Identity, Suite};

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
    /// Bundle files (.cvb). Opened in device and sequence order whatever the order given.
    #[arg(value_name = "BUNDLE", required = true)]
    pub bundles: Vec<PathBuf>,
    /// Write screenshots and other binary payloads as files here instead of base64.
    #[arg(long, value_name = "DIR")]
    pub blobs_dir: Option<PathBuf>,
}

pub fn open(a: &OpenArgs, json: bool) -> CliResult<()> {
    let identity = read_identity(&a.identity)?;
    if let Some(d) = &a.blobs_dir {
        std::fs::create_dir_all(d).map_err(|e| {
            CliError::failure(format!("cannot create --blobs-dir {}: {e}", d.display()))
        })?;
    }
    let mut worst: Option<CliError> = None;
    let mut note = |e: CliError| {
        eprintln!("error: {}", e.message);
        if worst.as_ref().is_none_or(|w| e.code > w.code) {
            worst = Some(CliError::silent(e.code));
        }
    };
    // Pass 1: check signatures and order by device and bundle sequence.
    let mut order = Vec::new();
    for path in &a.bundles {
        match read_bundle(path) {
            Ok(bytes) => match capvault::inspect_bundle(&bytes) {
                Ok(ins) => order.push((
                    *ins.header.device_id(),
                    ins.header.bundle_seq(),
                    path.clone(),
                )),
                Err(e) => note(bundle_error(path, e)),
            },
            Err(e) => note(e),
        }
    }
    order.sort();
    // Pass 2: open and write the events.
    let pb = if std::io::stderr().is_terminal() {
        output::bar(order.len() as u64, "opening")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut checker = ChainChecker::new();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut events = 0usize;
    let mut opened = 0usize;
    for (_, _, path) in &order {
        pb.inc(1);
        let bytes = match read_bundle(path) {
            Ok(b) => b,
            Err(e) => {
                note(e);
                continue;
            }
        };
        match capvault::open_bundle(&bytes, &identity) {
            Ok(b) => {
                checker.add_opened(&b);
                capvault::write_json_lines(&b.events, &mut out, a.blobs_dir.as_deref())?;
                events += b.events.len();
                opened += 1;
            }
            Err(e) => note(bundle_error(path, e)),
        }
    }
    out.flush()?;
    drop(out);
    pb.finish_and_clear();
    let report = checker.report();
    if json {
        let v = json!({
            "bundles_opened": opened,
            "bundles_given": a.bundles.len(),
            "events": events,
            "chain_clean": report.is_clean(),
            "chain": serde_json::to_value(&report).expect("report serializes"),
        });
        eprintln!("{}", serde_json::to_string(&v).expect("JSON"));
    } else {
        for d in &report.devices {
            eprintln!(
                "chain: device {}: {} bundle(s), sequence {}..={}{}",
                d.device_id,
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
        eprintln!("{opened} bundle(s) opened, {events} event(s) written");
    }
    if !report.is_clean() {
        let e = CliError::integrity(
            "the bundle chain has gaps or conflicts (see above): data is missing or not authentic",
        );
        eprintln!("error: {}", e.message);
        return Err(CliError::silent(EXIT_INTEGRITY));
    }
    match worst {
        Some(w) => Err(w),
        None if opened == 0 => Err(CliError::silent(EXIT_FAILURE)),
        None => Ok(()),
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
