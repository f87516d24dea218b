//! Collector-side commands: `recipient new`, `open`, `receipt`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

use capvault::{ChainChecker, DevicePins, EnrollmentRecord, Error, Identity, Suite};

use crate::files;
use crate::output::{self, print_json, CliError, CliResult, EXIT_FAILURE, EXIT_INTEGRITY};
use crate::secrets;

#[derive(Args, Debug)]
pub struct NewRecipientArgs {
    /// Where to write the identity (secret; created 0600, never overwritten). `-`
    /// writes it to stdout (the recipient then goes to stderr).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub out: PathBuf,
    /// Post-quantum hybrid recipient (X-Wing: ML-KEM-768 + X25519).
    #[arg(long)]
    pub pq: bool,
}

pub fn recipient_new(a: &NewRecipientArgs, json: bool) -> CliResult<()> {
    let suite = if a.pq { Suite::XWing } else { Suite::X25519 };
    let id = Identity::generate(suite);
    let recipient = id.recipient().to_string();
    let receipt_key = id.receipt_key().to_string();
    if files::is_dash(&a.out) {
        // As `age-keygen` without -o: the identity is the output, the public part a note.
        // A secret: only to a stdout no one else can read.
        files::private_stdout()?;
        if json {
            print_json(&json!({
                "recipient": recipient,
                "receipt_key": receipt_key,
                "suite": suite.to_string(),
                "identity": id.to_secret_string().as_str(),
            }));
        } else {
            files::write_out(&a.out, "the identity", id.to_file_text().as_bytes())?;
            eprintln!("recipient: {recipient}");
            eprintln!("receipt key: {receipt_key}");
        }
        return Ok(());
    }
    id.write_to_file(&a.out).map_err(|e| match e {
        capvault_format::Error::Io(m) => CliError::failure(format!(
            "cannot write the identity to {}: {m}",
            a.out.display()
        )),
        other => CliError::failure(output::describe_format(&other)),
    })?;
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

#[derive(Args, Debug)]
pub struct ShowRecipientArgs {
    /// The identity file (`-` reads it from stdin).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: PathBuf,
}

pub fn recipient_show(a: &ShowRecipientArgs, json: bool) -> CliResult<()> {
    let id = read_identity(&a.identity)?;
    let recipient = id.recipient().to_string();
    let receipt_key = id.receipt_key().to_string();
    if json {
        print_json(&json!({
            "recipient": recipient,
            "receipt_key": receipt_key,
            "suite": id.suite().to_string(),
        }));
    } else {
        println!("{recipient}");
        eprintln!("receipt key: {receipt_key}");
    }
    Ok(())
}

/// Reads the identity named by `--identity`: a file, or stdin for `-`.
fn read_identity(path: &Path) -> CliResult<Identity> {
    if secrets::holds_identity(&path.to_string_lossy()) {
        return Err(CliError::usage(
            "--identity takes the identity file, and this is the identity itself (a secret, \
             now in your shell history): put it in a file only you can read, or pass `-` and \
             give it on stdin",
        ));
    }
    if files::is_dash(path) {
        let bytes = files::read_stdin("--identity -")?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| CliError::failure("the identity on stdin is not text"))?;
        return Identity::from_file_text(text, "the identity on stdin")
            .map_err(|e| CliError::failure(output::describe_format(&e)));
    }
    Identity::read_from_file(path).map_err(|e| match e {
        capvault_format::Error::NotFound(_) => CliError::failure(format!(
            "identity file {} not found: pass the file written by `capvault recipient new`",
            path.display()
        )),
        capvault_format::Error::Io(m) => CliError::failure(format!(
            "cannot read the identity file {}: {m}",
            path.display()
        )),
        other => CliError::failure(format!(
            "--identity {}: {}",
            path.display(),
            output::describe_format(&other)
        )),
    })
}

/// Reads a bundle argument: a file, or stdin for `-`.
fn read_bundle(path: &Path) -> CliResult<Vec<u8>> {
    if files::is_dash(path) {
        return Ok(files::read_stdin("a `-` bundle")?.to_vec());
    }
    files::read_file(path, "the bundle")
}

/// An error about one bundle, with what to do.
fn bundle_error(path: &Path, e: impl Into<Error>) -> CliError {
    let p = shown(path);
    match e.into() {
        Error::NotFound(_) => CliError::failure(format!(
            "{p}: this bundle is not sealed to this identity; use the identity whose recipient the device seals to"
        )),
        Error::Tampered(m) => CliError::integrity(format!(
            "{p}: integrity check failed ({m}); the bundle was modified or truncated: do not trust it, fetch it again from the device"
        )),
        other => CliError::failure(format!("{p}: {}", output::describe(&other))),
    }
}

/// A bundle argument as messages name it (`-` is "stdin").
fn shown(path: &Path) -> String {
    if files::is_dash(path) {
        "the bundle on stdin".into()
    } else {
        path.display().to_string()
    }
}

/// Refuses two arguments that would both read stdin.
fn one_stdin(identity: &Path, bundles: &[PathBuf]) -> CliResult<()> {
    let dashes = bundles.iter().filter(|p| files::is_dash(p)).count()
        + usize::from(files::is_dash(identity));
    if dashes > 1 {
        return Err(CliError::usage(
            "`-` (stdin) can stand for one input only: the identity or one bundle",
        ));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct OpenArgs {
    /// The collector identity file (from `capvault recipient new`; `-` reads stdin).
    #[arg(short = 'i', long, value_name = "FILE")]
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
        let bytes = files::read_file(path, "the enrollment record")?;
        let text = String::from_utf8_lossy(&bytes);
        let record = EnrollmentRecord::from_json(&text).map_err(|e| match e {
            capvault_format::Error::Tampered(m) => {
                CliError::integrity(format!("{}: {m}", path.display()))
            }
            other => CliError::failure(format!(
                "{}: {}",
                path.display(),
                output::describe_format(&other)
            )),
        })?;
        pins.add(&record).map_err(|e| {
            CliError::integrity(format!(
                "{}: {}",
                path.display(),
                output::describe_format(&e)
            ))
        })?;
    }
    Ok(pins)
}

/// What became of one bundle given to `open`.
struct Verdict {
    file: String,
    id: Option<String>,
    /// "opened", "rejected", "duplicate" (another copy of a bundle given twice), or
    /// "skipped" (not decided: a fatal error stopped the command first).
    verdict: &'static str,
    reason: Option<String>,
    events: usize,
}

impl Verdict {
    fn to_json(&self) -> Value {
        let mut v = json!({ "file": self.file, "id": self.id, "verdict": self.verdict });
        if let Some(r) = &self.reason {
            v["reason"] = json!(r);
        }
        if self.verdict == "opened" {
            v["events"] = json!(self.events);
        }
        v
    }
}

/// What `open` decided so far. With `--json` it is reported whole, also when a fatal
/// error (an unreadable identity, an unusable --blobs-dir, stdout failing) stops the
/// command before every bundle is decided.
struct Run {
    verdicts: Vec<Verdict>,
    opened: usize,
    events: usize,
    pinned: bool,
    /// Set once every bundle went through the chain check.
    checker: Option<ChainChecker>,
}

impl Run {
    fn new(a: &OpenArgs) -> Run {
        Run {
            verdicts: a
                .bundles
                .iter()
                .map(|p| Verdict {
                    file: shown(p),
                    id: None,
                    verdict: "skipped",
                    reason: None,
                    events: 0,
                })
                .collect(),
            opened: 0,
            events: 0,
            pinned: !a.devices.is_empty(),
            checker: None,
        }
    }

    fn count(&self, verdict: &str) -> usize {
        self.verdicts
            .iter()
            .filter(|v| v.verdict == verdict)
            .count()
    }

    /// The one JSON object of `open --json`. `error` is set when the exit code is not
    /// 0; `stopped` when a fatal error ended the command before every bundle was
    /// decided (the bundles not reached are `skipped`).
    fn to_json(&self, clean: bool, error: Option<&str>, stopped: bool) -> Value {
        let chain = self.checker.as_ref().map(ChainChecker::report);
        let mut v = json!({
            "bundles_given": self.verdicts.len(),
            "bundles_opened": self.opened,
            "bundles_rejected": self.count("rejected"),
            "bundles_skipped": self.count("skipped"),
            "events": self.events,
            "keys_pinned": self.pinned,
            "chain_clean": clean && !stopped,
            "stopped": stopped,
            "bundles": self.verdicts.iter().map(Verdict::to_json).collect::<Vec<_>>(),
            "failed": self
                .verdicts
                .iter()
                .filter(|v| v.verdict == "rejected")
                .map(|v| json!({ "file": v.file, "error": v.reason }))
                .collect::<Vec<_>>(),
            "chain": chain.map(|r| serde_json::to_value(&r).expect("report serializes")),
        });
        if let Some(e) = error {
            v["error"] = json!(output::plain(&secrets::redact(e)));
        }
        v
    }
}

/// Why the chain check holds a bundle back: its chain's integrity findings.
fn chain_reason(report: &capvault::ChainReport, ins: &capvault::InspectedBundle) -> String {
    let hex = data_encoding::HEXLOWER;
    let (device, stream) = (
        hex.encode(ins.header.device_id()),
        hex.encode(ins.header.stream_id()),
    );
    let issues: Vec<String> = report
        .devices
        .iter()
        .filter(|d| {
            d.device_id.eq_ignore_ascii_case(&device) && d.stream_id.eq_ignore_ascii_case(&stream)
        })
        .flat_map(|d| d.issues.iter().filter(|i| i.is_integrity_failure()))
        .map(ToString::to_string)
        .collect();
    let about_it: Vec<&String> = issues.iter().filter(|i| i.contains(&ins.id)).collect();
    let shown: Vec<&String> = if about_it.is_empty() {
        issues.iter().collect()
    } else {
        about_it
    };
    if shown.is_empty() {
        "rejected by the chain check".into()
    } else {
        format!(
            "rejected by the chain check: {}",
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

pub fn open(a: &OpenArgs, json: bool) -> CliResult<()> {
    let mut run = Run::new(a);
    match open_bundles(a, json, &mut run) {
        // With --json the one JSON object on stderr carries the error as well, with
        // everything decided before it.
        Err(e) if json && !e.message.is_empty() => {
            for v in run.verdicts.iter_mut().filter(|v| v.verdict == "skipped") {
                v.reason.get_or_insert_with(|| {
                    "not decided: the command stopped before this bundle (see error)".into()
                });
            }
            let v = run.to_json(false, Some(&e.message), true);
            eprintln!("{}", serde_json::to_string(&v).expect("JSON"));
            Err(CliError::silent(e.code))
        }
        other => other,
    }
}

fn open_bundles(a: &OpenArgs, json: bool, run: &mut Run) -> CliResult<()> {
    one_stdin(&a.identity, &a.bundles)?;
    let identity = read_identity(&a.identity)?;
    let pins = if a.devices.is_empty() {
        None
    } else {
        Some(read_pins(&a.devices)?)
    };
    if let Some(d) = &a.blobs_dir {
        files::ensure_dir(d, "--blobs-dir")?;
    }
    let mut worst: u8 = 0;
    let mut reject = |v: &mut Verdict, e: CliError| {
        if !json {
            eprintln!("error: {}", output::plain(&secrets::redact(&e.message)));
        }
        v.verdict = "rejected";
        v.reason = Some(e.message);
        worst = worst.max(e.code);
    };
    // Pass 1: signatures and headers only (no plaintext yet); the chain verdict.
    let mut checker = match pins {
        Some(p) => ChainChecker::with_pins(p),
        None => ChainChecker::new(),
    };
    let pb = output::bar(a.bundles.len() as u64, "checking");
    let mut order = Vec::new();
    for (at, path) in a.bundles.iter().enumerate() {
        pb.inc(1);
        let v = &mut run.verdicts[at];
        match read_bundle(path) {
            Err(e) => reject(v, e),
            Ok(bytes) => match capvault::inspect_bundle(&bytes) {
                Ok(ins) => {
                    checker.add_inspected(&ins);
                    v.id = Some(ins.id.clone());
                    let h = &ins.header;
                    let key = (*h.device_id(), *h.stream_id(), h.bundle_seq(), ins.digest);
                    order.push((key, at, ins, bytes));
                }
                Err(e) => reject(v, bundle_error(path, e)),
            },
        }
    }
    pb.finish_and_clear();
    let report = checker.report();
    run.checker = Some(checker);
    order.sort_by_key(|o| o.0);
    // Pass 2: open the accepted bundles in chain order; a bundle's events are written
    // only once it has fully opened and checked. Retries of one bundle: opened once.
    files::private_stdout()?;
    let pb = output::bar(order.len() as u64, "opening");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut rejected = 0usize;
    let mut prev: Option<(_, usize)> = None;
    for (key, at, ins, bytes) in &order {
        pb.inc(1);
        if let Some((k, first)) = prev {
            if k == *key {
                let v = &mut run.verdicts[*at];
                v.verdict = "duplicate";
                v.reason = Some(format!("the same bundle as {}", a.bundles[first].display()));
                continue;
            }
        }
        prev = Some((*key, *at));
        let path = &a.bundles[*at];
        if !report.accepts(&ins.digest) {
            rejected += 1;
            let v = &mut run.verdicts[*at];
            v.verdict = "rejected";
            v.reason = Some(chain_reason(&report, ins));
            continue;
        }
        match capvault::open_bundle(bytes, &identity) {
            Ok(b) => {
                // Flushed per bundle: "opened" means its events reached stdout.
                capvault::write_bundle_json_lines(&b, &mut out, a.blobs_dir.as_deref())
                    .map_err(Error::from)
                    .and_then(|()| out.flush().map_err(Error::from))
                    .map_err(|e| {
                        let e = write_error(a, e);
                        run.verdicts[*at].reason = Some(format!(
                            "its events could not all be written ({}); some of them may be on stdout",
                            e.message
                        ));
                        e
                    })?;
                let v = &mut run.verdicts[*at];
                v.verdict = "opened";
                v.events = b.events.len();
                run.events += b.events.len();
                run.opened += 1;
            }
            Err(e) => {
                // Authentic by its signature, but not released: the chain report
                // must not count it as accepted.
                if let Some(c) = run.checker.as_mut() {
                    c.not_opened(&ins.digest);
                }
                reject(&mut run.verdicts[*at], bundle_error(path, e));
            }
        }
    }
    drop(out);
    pb.finish_and_clear();
    let report = run
        .checker
        .as_ref()
        .map(ChainChecker::report)
        .unwrap_or(report);
    let failed = run.count("rejected");
    let opened = run.opened;
    let chain_ok = report.is_clean();
    let clean = chain_ok && failed == 0 && opened > 0;
    let error = if !chain_ok {
        Some(
            "the bundle chain has gaps, conflicts or foreign signers: data is missing or not authentic"
                .to_string(),
        )
    } else if opened == 0 {
        Some("no bundle was opened".to_string())
    } else if failed > 0 {
        Some(format!(
            "{} of {} not opened",
            output::count(failed as u64, "bundle"),
            a.bundles.len()
        ))
    } else {
        None
    };
    if json {
        let v = run.to_json(clean, error.as_deref(), false);
        eprintln!("{}", serde_json::to_string(&v).expect("JSON"));
    } else {
        print_chain_report(&report);
        for v in run.verdicts.iter().filter(|v| v.verdict == "rejected") {
            if rejected > 0
                && v.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("rejected by"))
            {
                eprintln!("{}: {}", v.file, v.reason.as_deref().unwrap_or(""));
            }
        }
        eprintln!(
            "{} opened, {} written{}",
            output::count(opened as u64, "bundle"),
            output::count(run.events as u64, "event"),
            if failed == 0 {
                String::new()
            } else {
                format!(
                    ", {} rejected (none of their events written)",
                    output::count(failed as u64, "bundle")
                )
            }
        );
        if !report.pinned {
            eprintln!(
                "note: device keys were not pinned: pass --devices with the devices' \
                 enrollment records (`capvault enroll`) to reject bundles from any other key"
            );
        }
    }
    let code = if !chain_ok {
        EXIT_INTEGRITY
    } else if worst > 0 {
        worst
    } else if opened == 0 {
        EXIT_FAILURE
    } else {
        return Ok(());
    };
    match error {
        // Text mode: the summary line above is the report; the verdict goes last.
        Some(e) if !json => Err(CliError { code, message: e }),
        _ => Err(CliError::silent(code)),
    }
}

/// Writing events failed: stdout, or a blob file in --blobs-dir.
fn write_error(a: &OpenArgs, e: Error) -> CliError {
    output::write_events_error("events", a.blobs_dir.as_deref(), &e)
}

fn print_chain_report(report: &capvault::ChainReport) {
    for d in &report.devices {
        eprintln!(
            "chain: device {} stream {}: {}, sequence {} to {}{}",
            d.device_id,
            d.stream_id,
            output::count(d.bundles as u64, "bundle"),
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
    /// The collector identity file the bundles are sealed to (`-` reads stdin).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: PathBuf,
    /// Bundle files to issue receipts for (each is opened and verified first; `-` reads
    /// one from stdin).
    #[arg(value_name = "BUNDLE", required = true)]
    pub bundles: Vec<PathBuf>,
    /// Write the receipts here (0600, atomically) instead of stdout (`-`).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn receipt(a: &ReceiptArgs, json: bool) -> CliResult<()> {
    one_stdin(&a.identity, &a.bundles)?;
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
    let list = || -> Vec<Value> {
        lines
            .iter()
            .map(|(id, r)| json!({ "id": id, "receipt": r }))
            .collect()
    };
    match a.out.as_deref().filter(|p| !files::is_dash(p)) {
        Some(p) => {
            let path = files::write_out(p, "the receipts", text.as_bytes())?;
            if json {
                print_json(&json!({ "receipts": list(), "file": path.display().to_string() }));
            } else {
                eprintln!(
                    "{} written to {}; give them to `capvault ack --receipt {}`",
                    output::count(lines.len() as u64, "receipt"),
                    path.display(),
                    path.display()
                );
            }
        }
        None if json => print_json(&json!({ "receipts": list() })),
        None => {
            files::write_out(Path::new("-"), "the receipts", text.as_bytes())?;
        }
    }
    Ok(())
}
