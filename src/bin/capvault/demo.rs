//! `capvault demo`: a capture session end to end on a throw-away vault, with a report.
//!
//! The session is simulated on a synthetic clock (mouse at 1 kHz, ~8 keys/s, window
//! switches, one 1.5 MB incompressible screenshot per second, a pause and a data-key
//! rotation) and appended as fast as the vault accepts it, so the report also measures
//! ingest throughput. The release path is the real one: a `capvault-collector` (found
//! next to this program or on PATH) is initialised in the demo's directory and serves
//! on loopback; the vault, opened with its `upload` options, enrolls with the one-time
//! token and uploads in the background, acknowledging each bundle only with a receipt
//! it verifies. Then `capvault-collector export` opens what the collector stored with
//! the identity (kept apart from the collector's directory), the report compares its
//! events with what was stored, and the collector's blob store is searched for the
//! window titles an insider with access to it would be after.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use capvault::{
    Appended, Error, Event, Identity, KeyStoreKind, Suite, UploadOptions, UploadStatus, Vault,
    VaultOptions,
};

use crate::output::{self, human_bytes, print_json, CliError, CliResult};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Length of the simulated session, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Keep the vault, the collector's directory (state, stored bundles, log) and the
    /// collector identity in this directory (must be new or empty) instead of deleting
    /// them.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Keychain for the demo vault (auto falls back to kernel keyutils on Linux when no
    /// Secret Service answers).
    #[arg(long, value_enum, default_value_t = crate::KeystoreArg::Auto)]
    pub keystore: crate::KeystoreArg,
}

const USER: &str = "demo-user";

/// Window titles a careless upload would leak; the report checks bundles for them.
const WINDOWS: &[(&str, &str)] = &[
    ("Slack", "#hr-investigations | Acme Corp"),
    ("Excel", "Q3 salary review - CONFIDENTIAL.xlsx"),
    (
        "Chrome",
        "Performance improvement plan - J. Doe - Google Docs",
    ),
    ("Zoom", "1:1 with manager (recording transcript)"),
    ("Outlook", "Inbox - jane.doe@example.com"),
];

const TYPED: &str = "the quarterly numbers look better than expected, please keep this between us ";

/// How to get the collector binary when it is missing.
const BUILD_HINT: &str = "build it with `cargo build --release --workspace --bins` (it is placed next to `capvault` in target/release/) or put it on PATH";

/// Largest bundle the demo's uploader seals.
const DEMO_BUNDLE_BYTES: usize = 4 << 20;

/// A throw-away directory removed on drop (unless kept).
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn work_dir(keep: Option<&Path>) -> CliResult<WorkDir> {
    let (path, kept) = match keep {
        Some(p) => {
            if p.exists()
                && std::fs::read_dir(p)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true)
            {
                return Err(CliError::usage(format!(
                    "--keep {}: the directory exists and is not empty; pick a new one",
                    p.display()
                )));
            }
            (p.to_path_buf(), true)
        }
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            (
                std::env::temp_dir()
                    .join(format!("capvault-demo-{}-{nanos:08x}", std::process::id())),
                false,
            )
        }
    };
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(&path)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", path.display())))?;
    Ok(WorkDir { path, keep: kept })
}

/// A child process killed (and reaped) when dropped, so no collector outlives the demo
/// on any exit path.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Crypto-shreds the throw-away vault (unless kept) so its keys do not linger in the
/// keychain: explicitly at the end, or when dropped on an error path.
struct Shred(Option<(PathBuf, VaultOptions)>);

impl Shred {
    fn erase(&mut self) -> capvault::Result<()> {
        match self.0.take() {
            Some((dir, o)) => Vault::erase(&dir, USER, o),
            None => Ok(()),
        }
    }
}

impl Drop for Shred {
    fn drop(&mut self) {
        let _ = self.erase();
    }
}

/// The `capvault-collector` binary: next to this program, else on PATH.
fn find_collector() -> CliResult<PathBuf> {
    let name = format!("capvault-collector{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(bin) = beside
        .iter()
        .chain(on_path.iter())
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
    {
        return Ok(bin);
    }
    Err(CliError::failure(format!(
        "the demo runs the real collector service, but `{name}` is neither next to this program{} nor on PATH; {BUILD_HINT}",
        beside
            .map(|d| format!(" ({})", d.display()))
            .unwrap_or_default()
    )))
}

/// A collector directory after `capvault-collector init`.
struct Collector {
    bin: PathBuf,
    dir: PathBuf,
    receipt_key: String,
    token: String,
}

fn stderr_text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b).trim().to_string();
    if s.is_empty() {
        "it printed nothing on stderr".into()
    } else {
        s
    }
}

impl Collector {
    fn init(bin: PathBuf, dir: PathBuf) -> CliResult<Collector> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| CliError::failure(format!("cannot create {}: {e}", dir.display())))?;
        let out = Command::new(&bin)
            .arg("init")
            .arg("--dir")
            .arg(&dir)
            .arg("--json")
            .env("CAPVAULT_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| CliError::failure(format!("cannot run {}: {e}", bin.display())))?;
        if !out.status.success() {
            return Err(CliError::failure(format!(
                "`capvault-collector init --dir {}` failed ({}): {}",
                dir.display(),
                out.status,
                stderr_text(&out.stderr)
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        match (v["receipt_key"].as_str(), v["token"].as_str()) {
            (Some(k), Some(t)) => Ok(Collector {
                receipt_key: k.to_string(),
                token: t.to_string(),
                bin,
                dir,
            }),
            _ => Err(CliError::failure(format!(
                "`capvault-collector init --json` printed no receipt key and token (is {} a matching version?)",
                bin.display()
            ))),
        }
    }

    /// Starts `serve` on a free loopback port and returns it with its base URL, read
    /// from the `listening on URL` line it prints once it accepts connections.
    fn serve(&self, log: &Path) -> CliResult<(Proc, String)> {
        // 0600 like everything else the demo writes.
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let log_file = opts
            .open(log)
            .map_err(|e| CliError::failure(format!("cannot create {}: {e}", log.display())))?;
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("CAPVAULT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| CliError::failure(format!("cannot run {}: {e}", self.bin.display())))?;
        let stdout = child.stdout.take();
        let mut proc = Proc(child);
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let _ = tx.send(line);
                // Keep reading so the service never blocks on a full pipe.
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            });
        }
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        if let Some(url) = line.trim().strip_prefix("listening on ") {
            return Ok((proc, url.to_string()));
        }
        let _ = proc.0.kill();
        let status = proc
            .0
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        let err = std::fs::read(log).unwrap_or_default();
        Err(CliError::failure(format!(
            "the collector failed to start (`capvault-collector serve --dir {} --listen 127.0.0.1:0`, {status}): {}",
            self.dir.display(),
            stderr_text(&err)
        )))
    }

    /// `copy-bundles`: the stored bundles, still sealed, one file each (the store
    /// itself keeps them in segment files). Returns their bytes.
    fn copy_bundles(&self, out: &Path) -> CliResult<Vec<Vec<u8>>> {
        let run = Command::new(&self.bin)
            .arg("copy-bundles")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--out")
            .arg(out)
            .env("CAPVAULT_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| CliError::failure(format!("cannot run {}: {e}", self.bin.display())))?;
        if !run.status.success() {
            return Err(CliError::failure(format!(
                "`capvault-collector copy-bundles --dir {} --out {}` failed ({}): {}",
                self.dir.display(),
                out.display(),
                run.status,
                stderr_text(&run.stderr)
            )));
        }
        files_under(out)
            .iter()
            .map(|p| {
                std::fs::read(p)
                    .map_err(|e| CliError::failure(format!("cannot read {}: {e}", p.display())))
            })
            .collect()
    }

    /// `export --identity`: reads its JSON Lines and its chain report.
    fn export(&self, identity: &Path) -> CliResult<Exported> {
        let t = Instant::now();
        let mut child = Command::new(&self.bin)
            .arg("export")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--identity")
            .arg(identity)
            .arg("--json")
            .env("CAPVAULT_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CliError::failure(format!("cannot run {}: {e}", self.bin.display())))?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let mut proc = Proc(child);
        let err_reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_end(&mut s);
            }
            s
        });
        #[derive(serde::Deserialize)]
        struct Line {
            #[serde(rename = "type")]
            kind: String,
            seq: Option<u64>,
            user: Option<String>,
            device_id: Option<String>,
            bundle_id: Option<String>,
        }
        let mut x = Exported::default();
        let mut seen = BTreeSet::new();
        let mut bad_line = None;
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).lines() {
                let line = line.map_err(|e| {
                    CliError::failure(format!("cannot read `capvault-collector export`: {e}"))
                })?;
                let ev: Line = match serde_json::from_str(&line) {
                    Ok(ev) => ev,
                    Err(e) => {
                        bad_line.get_or_insert(e.to_string());
                        continue;
                    }
                };
                x.events += 1;
                *x.by_type.entry(ev.kind).or_default() += 1;
                match (&ev.user, &ev.device_id, &ev.bundle_id) {
                    (Some(u), Some(d), Some(b)) if !u.is_empty() && !d.is_empty() => {
                        x.users.insert(u.clone());
                        x.devices.insert(d.clone());
                        x.bundle_ids.insert(b.clone());
                        if let Some(seq) = ev.seq {
                            if !seen.insert((d.clone(), u.clone(), seq)) {
                                x.duplicates += 1;
                            }
                        }
                    }
                    _ => x.unattributed += 1,
                }
            }
        }
        let status = proc
            .0
            .wait()
            .map_err(|e| CliError::failure(format!("`capvault-collector export`: {e}")))?;
        let err = err_reader.join().unwrap_or_default();
        let err_text = String::from_utf8_lossy(&err);
        x.report = err_text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v.get("streams").is_some())
            .unwrap_or_default();
        x.seconds = t.elapsed().as_secs_f64();
        match status.code() {
            Some(0) => x.clean = true,
            Some(3) => x.clean = false,
            _ => {
                return Err(CliError::failure(format!(
                    "`capvault-collector export --dir {} --identity {}` failed ({status}): {}",
                    self.dir.display(),
                    identity.display(),
                    stderr_text(&err)
                )))
            }
        }
        if let Some(e) = bad_line {
            return Err(CliError::failure(format!(
                "`capvault-collector export` wrote a line that is not an event: {e}"
            )));
        }
        Ok(x)
    }
}

/// What `capvault-collector export` released.
#[derive(Default)]
struct Exported {
    events: u64,
    by_type: BTreeMap<String, u64>,
    users: BTreeSet<String>,
    devices: BTreeSet<String>,
    bundle_ids: BTreeSet<String>,
    /// Events without `user`, `device_id` or `bundle_id`.
    unattributed: u64,
    /// Events released twice (same user, device and sequence number).
    duplicates: u64,
    /// The chain report (`--json`, from stderr).
    report: serde_json::Value,
    /// Exit 0: every chain verified.
    clean: bool,
    seconds: f64,
}

/// Every file under `dir` (the collector's blob store), recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => todo.push(p),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Waits (polling the status, bounded) until the background uploader has every
/// stored record acknowledged with a receipt.
fn wait_for_upload(vault: &Vault, limit: Duration) -> CliResult<UploadStatus> {
    vault.upload_now();
    let deadline = Instant::now() + limit;
    loop {
        let st = vault.status()?;
        let Some(u) = st.upload else {
            return Err(CliError::failure(
                "the demo vault has no uploader; this is a bug, please report it",
            ));
        };
        // Everything acknowledged, and the uploader's cycle over (its counters final).
        if u.pending_bytes == 0 && u.pending_bundles == 0 && (u.idle || u.next_attempt_us.is_some())
        {
            return Ok(u);
        }
        if Instant::now() >= deadline {
            return Err(CliError::failure(format!(
                "the upload to the collector did not finish within {} s: {} uploaded, {} still pending{}",
                limit.as_secs(),
                output::count(u.uploaded_bundles, "bundle"),
                human_bytes(u.pending_bytes),
                u.last_error
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// splitmix64: fast incompressible filler for synthetic screenshots.
struct Filler(u64);
impl Filler {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

fn store_name(k: KeyStoreKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{k:?}"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Opens the demo vault: the requested keychain, or with `auto` the platform's
/// persistent one, falling back to kernel keyutils on Linux.
fn open_vault(dir: &Path, opts: &VaultOptions, note: &mut Vec<String>) -> CliResult<Vault> {
    match Vault::open(dir, USER, opts.clone()) {
        Ok(v) => Ok(v),
        Err(Error::Keychain(why))
            if opts.keystore == KeyStoreKind::Auto && cfg!(target_os = "linux") =>
        {
            note.push(format!(
                "no usable Secret Service ({why}); falling back to kernel keyutils, whose keys are lost at reboot"
            ));
            let mut o = opts.clone();
            o.keystore = KeyStoreKind::Keyutils;
            Ok(Vault::open(dir, USER, o)?)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Default)]
struct Counts {
    offered: u64,
    stored: u64,
    paused: u64,
    filtered: u64,
    plaintext: u64,
    mouse: u64,
    keys: u64,
    windows: u64,
    screenshots: u64,
    /// Stored events by JSON Lines type.
    stored_by_type: BTreeMap<&'static str, u64>,
}

impl Counts {
    fn add(&mut self, r: Appended, ev: &Event) {
        self.offered += 1;
        match r {
            Appended::Stored => {
                self.stored += 1;
                *self.stored_by_type.entry(ev.type_name()).or_default() += 1;
                let mut buf = Vec::new();
                ev.encode_into(&mut buf);
                self.plaintext += buf.len() as u64;
            }
            Appended::Paused => self.paused += 1,
            _ => self.filtered += 1,
        }
    }
}

fn say(json: bool, msg: &str) {
    if !json {
        eprintln!("{msg}");
    }
}

pub fn run(a: &DemoArgs, json: bool) -> CliResult<()> {
    // The collector binary first: without it there is nothing to demonstrate.
    let collector_bin = find_collector()?;
    let work = work_dir(a.keep.as_deref())?;
    let vault_dir = work.path.join("vault");
    let collector_dir = work.path.join("collector");
    let blobs_dir = collector_dir.join("bundles");
    let identity_file = work.path.join("collector.identity");
    let mut notes = Vec::new();

    // The collector: an identity made offline (only `export` reads it; the service
    // never holds it), then `init` (receipt key, enrollment token) and `serve`.
    let identity = Identity::generate(Suite::X25519);
    identity.write_to_file(&identity_file)?;
    let collector = Collector::init(collector_bin, collector_dir.clone())?;
    let (serve, url) = collector.serve(&work.path.join("collector-serve.log"))?;
    say(
        json,
        &format!("collector {} serving on {url}", collector.bin.display()),
    );

    let mut upload = UploadOptions::new(url.clone(), identity.recipient().to_string());
    upload.token = Some(collector.token.clone().into());
    upload.max_bundle_bytes = DEMO_BUNDLE_BYTES;
    // The uploader enrolls at open, then idles until the session ends and the demo
    // wakes it, so the ingest and storage figures are not mixed with the upload's.
    upload.interval_secs = 86_400;
    let mut opts = VaultOptions::default();
    opts.keystore = a.keystore.kind();
    opts.collector_receipt_key = Some(collector.receipt_key.clone());
    opts.upload = Some(upload);
    // Declared before the vault so that, on an error below, the vault is closed first
    // and then erased.
    let mut shred = Shred(None);
    let vault = open_vault(&vault_dir, &opts, &mut notes)?;
    let st0 = vault.status()?;
    if !work.keep {
        let mut o = opts.clone();
        o.keystore = st0.keystore;
        o.upload = None;
        shred.0 = Some((vault_dir.clone(), o));
    }
    for n in &notes {
        say(json, &format!("note: {n}"));
    }
    say(
        json,
        &format!(
            "vault {} (keys in {}{}), uploading to the collector in the background once the session ends",
            vault_dir.display(),
            store_name(st0.keystore),
            if st0.keystore_persistent {
                ""
            } else {
                ", not persistent"
            }
        ),
    );
    let pb = output::bar(a.seconds, "capturing");
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} s simulated ({elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let session = run_session(&vault, a.seconds, json, &pb);
    pb.finish_and_clear();
    let session = session?;
    let c = &session.counts;
    vault.flush()?;
    let st = vault.status()?;

    // The uploader seals from the outbox, posts each bundle, verifies the collector's
    // receipt and only then acknowledges (and prunes). Wait for it to drain.
    say(json, "uploading to the collector");
    let t = Instant::now();
    let sp = output::spinner("uploading to the collector");
    let up = wait_for_upload(&vault, Duration::from_secs(60 + 2 * a.seconds));
    sp.finish_and_clear();
    let up = up?;
    let drain_secs = t.elapsed().as_secs_f64();
    let after = vault.status()?;
    let verify = vault.verify()?;
    let device_id = after.device_id.clone();
    vault.close()?;
    drop(serve);

    if let Err(e) = shred.erase() {
        notes.push(format!("could not erase the demo vault's keys: {e}"));
    }

    // Offline, with the identity: what the collector stored, opened and chain-checked.
    let sp = output::spinner("exporting from the collector");
    let x = collector.export(&identity_file);
    sp.finish_and_clear();
    let x = x?;

    // What an insider with the collector's blob store sees: ciphertext. Search every
    // stored bundle, and the store's own files, for the window titles, the typed text
    // and the user name.
    let copies = work.path.join("stored-bundles");
    let blobs = collector.copy_bundles(&copies);
    let _ = std::fs::remove_dir_all(&copies); // only read here, never kept
    let blobs = blobs?;
    let store_files: Vec<Vec<u8>> = files_under(&blobs_dir)
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect();
    let secrets: Vec<&str> = WINDOWS
        .iter()
        .map(|(_, t)| *t)
        .chain([TYPED.trim(), USER])
        .collect();
    let leaked: Vec<&str> = secrets
        .iter()
        .copied()
        .filter(|s| {
            blobs
                .iter()
                .chain(&store_files)
                .any(|b| contains(b, s.as_bytes()))
        })
        .collect();
    let bundle_bytes: u64 = blobs.iter().map(|b| b.len() as u64).sum();

    // Every stored event arrived exactly once, attributed.
    let exported_captured: u64 = x
        .by_type
        .iter()
        .filter(|(k, _)| k.as_str() != "marker")
        .map(|(_, n)| *n)
        .sum();
    let mut types: BTreeSet<&str> = c.stored_by_type.keys().copied().collect();
    types.extend(
        x.by_type
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "marker"),
    );
    let per_type: serde_json::Map<String, serde_json::Value> = types
        .iter()
        .map(|t| {
            (
                t.to_string(),
                json!({
                    "stored": c.stored_by_type.get(t).copied().unwrap_or(0),
                    "exported": x.by_type.get(*t).copied().unwrap_or(0),
                }),
            )
        })
        .collect();
    let all_arrived = types.iter().all(|t| {
        c.stored_by_type.get(t).copied().unwrap_or(0) == x.by_type.get(*t).copied().unwrap_or(0)
    });
    let attributed = x.unattributed == 0
        && x.duplicates == 0
        && x.users.iter().all(|u| u == USER)
        && x.devices.iter().all(|d| *d == device_id);

    let ingest_secs = session.elapsed.as_secs_f64().max(1e-9);
    let report = json!({
        "seconds_simulated": a.seconds,
        "keystore": st0.keystore,
        "keystore_persistent": st0.keystore_persistent,
        "notes": notes,
        "events": {
            "offered": c.offered, "stored": c.stored, "dropped_while_paused": c.paused,
            "filtered_by_policy": c.filtered, "mouse": c.mouse, "keys": c.keys,
            "window_switches": c.windows, "screenshots": c.screenshots,
        },
        "plaintext_bytes": c.plaintext,
        "stored_bytes": st.stored_bytes,
        "disk_bytes": st.disk_bytes,
        "disk_bytes_after_upload": after.disk_bytes,
        "epochs": st.epochs.len(),
        "ingest_seconds": ingest_secs,
        "ingest_events_per_sec": c.offered as f64 / ingest_secs,
        "ingest_mb_per_sec": c.plaintext as f64 / 1e6 / ingest_secs,
        "collector": {
            "binary": collector.bin.display().to_string(),
            "url": url,
        },
        "upload": {
            "bundles": up.uploaded_bundles,
            "bytes": up.uploaded_bytes,
            "receipts_verified": up.uploaded_bundles,
            "pending_bundles": up.pending_bundles,
            "pending_bytes": up.pending_bytes,
            "enrolled": up.enrolled,
            "last_error": up.last_error,
            "seconds": drain_secs,
            "mb_per_sec": up.uploaded_bytes as f64 / 1e6 / drain_secs.max(1e-9),
        },
        "bundles": blobs.len(),
        "bundle_bytes": bundle_bytes,
        "export": {
            "events": x.events,
            "events_captured": exported_captured,
            "events_stored": c.stored,
            "markers": x.by_type.get("marker").copied().unwrap_or(0),
            "by_type": per_type,
            "all_arrived_once": all_arrived && x.duplicates == 0,
            "attributed": attributed,
            "users": x.users,
            "device_ids": x.devices,
            "bundle_ids": x.bundle_ids.len(),
            "unattributed": x.unattributed,
            "duplicates": x.duplicates,
            "chain_report": x.report,
            "seconds": x.seconds,
        },
        "chain_clean": x.clean,
        "records_left_after_ack": after.records,
        "verify_records": verify.records,
        "secrets_searched": secrets.len(),
        "secrets_found_in_bundles": leaked,
        "kept_in": if work.keep { Some(work.path.display().to_string()) } else { None },
    });
    if json {
        print_json(&report);
    } else {
        print_report(a, c, &st, &session, &report, &leaked);
        if let Some(n) = notes.iter().find(|n| n.contains("could not erase")) {
            eprintln!("note: {n}");
        }
    }
    if !x.clean {
        return Err(CliError::integrity(
            "the collector's export reported an integrity failure (see chain_report); this is a bug, please report it",
        ));
    }
    if !all_arrived || !attributed {
        return Err(CliError::integrity(
            "the events exported by the collector differ from those stored in the vault (or lack user/device_id/bundle_id); this is a bug, please report it",
        ));
    }
    if !leaked.is_empty() {
        return Err(CliError::integrity(
            "plaintext was found in a bundle; this is a bug, please report it",
        ));
    }
    Ok(())
}

struct Session {
    counts: Counts,
    elapsed: Duration,
    pause_epoch: Option<u32>,
}

fn run_session(
    vault: &Vault,
    seconds: u64,
    json: bool,
    pb: &indicatif::ProgressBar,
) -> CliResult<Session> {
    let say = |json: bool, msg: &str| {
        if !json {
            output::note_above(pb, msg);
        }
    };
    let mut c = Counts::default();
    let mut fill = Filler(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7),
    );
    // One incompressible 1.5 MB image, made distinct per screenshot below (generating
    // fresh random bytes each time would measure the generator, not the vault).
    let mut shot = vec![0u8; 1_500_000];
    fill.fill(&mut shot);
    let mut shot_no = 0u64;
    let t0 = crate::output::now_us();
    let total_ms = seconds * 1000;
    // Pause for 10% of the session starting at 40%; rotate the data key at 60%.
    let pause_from = total_ms * 4 / 10;
    let pause_to = pause_from + (total_ms / 10).max(1);
    let rotate_at = total_ms * 6 / 10;
    let mut typed = TYPED.chars().cycle();
    let mut window = 0usize;
    let mut pause_epoch = None;
    let start = Instant::now();
    let mut busy = Duration::ZERO;
    let push = |ev: Event, c: &mut Counts| -> CliResult<()> {
        let r = vault.append(ev.clone())?;
        c.add(r, &ev);
        Ok(())
    };
    for ms in 0..total_ms {
        let ts = t0 + (ms as i64) * 1000;
        if ms % 1000 == 0 && ms > 0 {
            pb.inc(1);
        }
        if ms == pause_from {
            let t = Instant::now();
            vault.pause(Duration::from_secs(60))?;
            busy += t.elapsed();
            say(json, &format!("  t={:.1}s  pause", ms as f64 / 1000.0));
        }
        if ms == pause_to {
            let t = Instant::now();
            vault.resume()?;
            busy += t.elapsed();
            say(json, &format!("  t={:.1}s  resume", ms as f64 / 1000.0));
        }
        if ms == rotate_at {
            let t = Instant::now();
            pause_epoch = Some(vault.rotate_dek()?);
            busy += t.elapsed();
            say(
                json,
                &format!(
                    "  t={:.1}s  data key rotated to epoch {}",
                    ms as f64 / 1000.0,
                    pause_epoch.unwrap_or(0)
                ),
            );
        }
        // Mouse at 1 kHz along a slow Lissajous curve.
        let f = ms as f64 / 1000.0;
        let (x, y) = (
            (960.0 + 700.0 * (f * 0.7).sin()) as i32,
            (540.0 + 400.0 * (f * 1.1).cos()) as i32,
        );
        push(Event::MouseMove { ts_us: ts, x, y }, &mut c)?;
        c.mouse += 1;
        if ms % 2000 == 700 {
            push(
                Event::MouseButton {
                    ts_us: ts,
                    button: 1,
                    pressed: true,
                    x,
                    y,
                },
                &mut c,
            )?;
            push(
                Event::MouseButton {
                    ts_us: ts + 80_000,
                    button: 1,
                    pressed: false,
                    x,
                    y,
                },
                &mut c,
            )?;
            c.mouse += 2;
        }
        // About 8 keys per second (press and release).
        if ms % 125 == 0 {
            let ch = typed.next().unwrap_or(' ');
            let code = if ch == ' ' {
                0x2c
            } else {
                0x04 + (ch as u32).saturating_sub('a' as u32).min(25)
            };
            let text = Some(ch.to_string());
            push(Event::key(ts, code, true, text.clone()), &mut c)?;
            push(Event::key(ts + 60_000, code, false, text), &mut c)?;
            c.keys += 2;
        }
        // A window switch every 1.5 s.
        if ms % 1500 == 0 {
            let (app, title) = WINDOWS[window % WINDOWS.len()];
            window += 1;
            push(
                Event::WindowFocus {
                    ts_us: ts,
                    app: app.into(),
                    title: title.into(),
                },
                &mut c,
            )?;
            c.windows += 1;
        }
        // One screenshot per second: 1.5 MB of incompressible bytes.
        if ms % 1000 == 500 {
            shot_no += 1;
            fill.fill(&mut shot[..4096]);
            shot[4096..4104].copy_from_slice(&shot_no.to_le_bytes());
            let r = vault.append_screenshot(ts, 1920, 1080, "webp", &shot)?;
            c.offered += 1;
            match r {
                Appended::Stored => {
                    c.stored += 1;
                    *c.stored_by_type.entry("screenshot").or_default() += 1;
                    c.plaintext += shot.len() as u64;
                }
                Appended::Paused => c.paused += 1,
                _ => c.filtered += 1,
            }
            c.screenshots += 1;
        }
    }
    let t = Instant::now();
    vault.flush()?;
    busy += t.elapsed();
    let elapsed = start.elapsed().saturating_sub(busy.min(start.elapsed()));
    Ok(Session {
        counts: c,
        elapsed: elapsed.max(Duration::from_micros(1)),
        pause_epoch,
    })
}

fn print_report(
    a: &DemoArgs,
    c: &Counts,
    st: &capvault::Status,
    s: &Session,
    r: &serde_json::Value,
    leaked: &[&str],
) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let (up, x) = (&r["upload"], &r["export"]);
    println!();
    println!("capvault demo: {} s of simulated capture", a.seconds);
    println!(
        "  events     {} offered: {} mouse, {} keys, {} window switches, {} screenshots",
        c.offered, c.mouse, c.keys, c.windows, c.screenshots
    );
    println!(
        "             {} stored, {} dropped during the pause, {} reduced/filtered by policy",
        c.stored, c.paused, c.filtered
    );
    println!(
        "  storage    {} plaintext -> {} encrypted records ({:.2}x), {} on disk ({} once every bundle was acknowledged)",
        human_bytes(c.plaintext),
        human_bytes(st.stored_bytes),
        st.stored_bytes as f64 / (c.plaintext.max(1)) as f64,
        human_bytes(st.disk_bytes),
        human_bytes(n(&r["disk_bytes_after_upload"]))
    );
    println!(
        "  keys       {}, KEK v{}, {}{}",
        store_name(st.keystore),
        st.kek_version,
        output::count(st.epochs.len() as u64, "data-key epoch"),
        s.pause_epoch
            .map(|e| format!(" (rotated to {e} mid-session)"))
            .unwrap_or_default()
    );
    println!(
        "  speed      ingest {:.0} events/s, {:.0} MB/s; upload (seal, POST, receipt, ack) {:.0} MB/s",
        f(&r["ingest_events_per_sec"]),
        f(&r["ingest_mb_per_sec"]),
        f(&up["mb_per_sec"]),
    );
    println!(
        "  collector  capvault-collector serve on {}, the vault enrolled with its one-time token",
        r["collector"]["url"].as_str().unwrap_or("?")
    );
    println!(
        "  upload     {} ({}) uploaded, {} verified against the collector's receipt key, {} pending, {} left in the vault",
        output::count(n(&up["bundles"]), "bundle"),
        human_bytes(n(&up["bytes"])),
        output::count(n(&up["receipts_verified"]), "receipt"),
        n(&up["pending_bundles"]),
        output::count(n(&r["records_left_after_ack"]), "record")
    );
    let by_type: Vec<String> = x["by_type"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(t, v)| format!("{t} {}/{}", n(&v["exported"]), n(&v["stored"])))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "  export     capvault-collector export --identity: {} of {} stored events ({}), {}; {}; chain {}",
        n(&x["events_captured"]),
        n(&x["events_stored"]),
        by_type.join(", "),
        output::count(n(&x["markers"]), "marker"),
        if x["attributed"].as_bool() == Some(true) {
            format!(
                "each once, with user, device_id and bundle_id ({})",
                output::count(n(&x["bundle_ids"]), "bundle")
            )
        } else {
            "SOME UNATTRIBUTED OR DUPLICATED".to_string()
        },
        if r["chain_clean"].as_bool() == Some(true) {
            "verified"
        } else {
            "BROKEN"
        },
    );
    println!(
        "  insider    someone with the collector's blob store sees {} of ciphertext: none of the {} window titles, the typed text or the user name appear in them{}",
        output::count(n(&r["bundles"]), "bundle"),
        WINDOWS.len(),
        if leaked.is_empty() { "" } else { " (LEAK FOUND)" }
    );
    if let Some(dir) = r["kept_in"].as_str() {
        println!(
            "  kept       {dir} (vault/, collector/ with bundles/, collector.identity, collector-serve.log)"
        );
    }
}
