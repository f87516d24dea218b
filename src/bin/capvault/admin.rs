//! Vault-scoped commands: init, status, verify, pause, resume, keys, seal, ack, erase,
//! show, audit, and the hidden `serve`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use capvault::{Error, Recipient, Vault, VaultOptions};

use crate::files;
use crate::output::{self, human_bytes, human_time, print_json, CliError, CliResult};
use crate::secrets;
use crate::{EraseArgs, HandoffArgs, KeystoreArg, PauseArgs, RotateArgs, VaultArgs};
use capvault::handoff::{self, HandoffError, Op};

// ----- resolving --vault / --user / options -----

/// A resolved vault target.
pub struct Target {
    pub dir: PathBuf,
    pub user: String,
    pub options: VaultOptions,
}

pub fn resolve(va: &VaultArgs) -> CliResult<Target> {
    let dir = match (&va.vault, std::env::var_os("CAPVAULT_VAULT")) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if !d.is_empty() => PathBuf::from(d),
        _ => {
            return Err(CliError::usage(
                "--vault DIR is required (or set CAPVAULT_VAULT)",
            ))
        }
    };
    let user = match (&va.user, std::env::var("CAPVAULT_USER")) {
        (Some(u), _) => u.clone(),
        (None, Ok(u)) if !u.is_empty() => u,
        _ => {
            return Err(CliError::usage(
                "--user NAME is required (or set CAPVAULT_USER)",
            ))
        }
    };
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return Err(CliError::usage(
            "--user must be 1 to 128 bytes without control characters",
        ));
    }
    let mut options = match &va.options {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!(
                    "cannot read --options {}: {}",
                    path.display(),
                    output::io_reason(&e)
                ))
            })?;
            VaultOptions::from_json(&text).map_err(|e| {
                let why = output::describe(&e);
                // The library names the C API's argument; here it is the file.
                let why = why.strip_prefix("options_json: ").unwrap_or(&why);
                CliError::usage(format!("--options {}: {why}", path.display()))
            })?
        }
        None => VaultOptions::default(),
    };
    if va.keystore != KeystoreArg::Auto || va.options.is_none() {
        options.keystore = va.keystore.kind();
    }
    Ok(Target { dir, user, options })
}

/// True when `dir` holds a vault (a sled database).
fn vault_exists(dir: &Path) -> bool {
    dir.join("conf").is_file() || dir.join("db").is_file()
}

/// Why there is no vault at `--vault`. Only a path that does not exist is a vault to
/// create; a file or another directory is a mistyped path.
fn no_vault(t: &Target) -> CliError {
    let d = t.dir.display();
    CliError::failure(match std::fs::metadata(&t.dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
            "no vault at {d}: check --vault, or create one with `capvault init --vault {d} --user {}`",
            t.user
        ),
        Err(e) => format!("cannot look at --vault {d}: {}", output::io_reason(&e)),
        Ok(m) if !m.is_dir() => format!("--vault {d} is a file, not a vault directory: check --vault"),
        Ok(_) => format!("{d} is a directory but holds no capvault vault: check --vault"),
    })
}

/// The vault exists but not this user. Other users' names are not listed: they are
/// personal data of other people (and may be names of erased users).
fn no_user(t: &Target) -> CliError {
    CliError::failure(format!(
        "the vault at {} has no user '{}': check --user (names are exact and case-sensitive); \
         only if '{}' is a new person to record, add them with `capvault init --vault {} --user {}`",
        t.dir.display(),
        t.user,
        t.user,
        t.dir.display(),
        t.user
    ))
}

/// A library error about the vault at `t`: storage failures name the vault directory.
pub fn vault_error(t: &Target, e: Error) -> CliError {
    match e {
        Error::Storage(m) if !m.contains(&*t.dir.to_string_lossy()) => {
            CliError::failure(format!("the vault at {}: {m}", t.dir.display()))
        }
        Error::StorageFull(_) => CliError::failure(format!(
            "the vault at {}: {}",
            t.dir.display(),
            output::describe(&e)
        )),
        other => other.into(),
    }
}

/// Whether the vault holds trees for the user, without creating anything. `InUse` when
/// another process holds the directory.
fn user_present(t: &Target) -> Result<bool, Error> {
    Vault::user_exists(&t.dir, &t.user)
}

/// Why a vault-scoped command could not run.
pub enum Failure {
    /// A library error (the caller may treat some specially, e.g. `Erased`).
    Lib(Error),
    /// Anything else, ready to print.
    Cli(CliError),
}

impl From<Failure> for CliError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Lib(e) => e.into(),
            Failure::Cli(c) => c,
        }
    }
}

impl Failure {
    /// As a CLI error, with storage failures naming the vault directory.
    pub fn at(self, t: &Target) -> CliError {
        match self {
            Failure::Lib(e) => vault_error(t, e),
            Failure::Cli(c) => c,
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Lib(e)
    }
}

/// Opens an existing vault for an existing user (never creates one).
pub fn open_existing(t: &Target) -> Result<Vault, Failure> {
    let erased = || Vault::erasure(&t.dir, &t.user).is_some();
    if !vault_exists(&t.dir) {
        if erased() {
            return Err(Failure::Lib(Error::Erased));
        }
        return Err(Failure::Cli(no_vault(t)));
    }
    match user_present(t) {
        Ok(true) => {}
        Ok(false) if erased() => return Err(Failure::Lib(Error::Erased)),
        Ok(false) => return Err(Failure::Cli(no_user(t))),
        Err(Error::InUse) => return Err(Failure::Lib(Error::InUse)),
        Err(e) => return Err(Failure::Cli(vault_error(t, e))),
    }
    match Vault::open(&t.dir, &t.user, t.options.clone()) {
        Ok(v) => Ok(v),
        Err(e @ (Error::Storage(_) | Error::StorageFull(_))) => {
            Err(Failure::Cli(vault_error(t, e)))
        }
        Err(e) => Err(Failure::Lib(e)),
    }
}

fn open_or_fail(va: &VaultArgs) -> CliResult<(Target, Vault)> {
    let t = resolve(va)?;
    let v = open_existing(&t).map_err(|f| f.at(&t))?;
    Ok((t, v))
}

/// Runs `local` on the vault, or, when another process holds it, sends `op` through the
/// hand-off. Returns the operation's JSON result.
fn local_or_handoff(
    h: &HandoffArgs,
    op: Op,
    local: impl FnOnce(&Vault) -> capvault::Result<Value>,
) -> Result<(Target, Value), Failure> {
    let t = resolve(&h.vault).map_err(Failure::Cli)?;
    match open_existing(&t) {
        Ok(vault) => {
            let v = local(&vault)?;
            vault.close()?;
            Ok((t, v))
        }
        Err(Failure::Lib(Error::InUse)) => {
            let v = via_handoff(&t, op, h.wait)?;
            Ok((t, v))
        }
        Err(e) => Err(e),
    }
}

fn via_handoff(t: &Target, op: Op, wait: Duration) -> Result<Value, Failure> {
    match handoff::request(&t.dir, &t.user, op, wait) {
        Ok(r) if r.ok => Ok(r.result),
        Ok(r) => {
            let msg = r.error.unwrap_or_else(|| "the request failed".into());
            Err(match r.error_kind.as_deref() {
                Some("erased") => Failure::Lib(Error::Erased),
                Some("tampered") => Failure::Cli(CliError::integrity(format!(
                    "{msg} (reported by the process holding the vault)"
                ))),
                _ => Failure::Cli(CliError::failure(format!(
                    "{msg} (reported by the process holding the vault)"
                ))),
            })
        }
        Err(HandoffError::NoAnswer) => Err(Failure::Cli(CliError::failure(format!(
            "the vault is held by another process that does not answer requests; stop the \
             capture agent or retry (waited {}; --wait sets how long)",
            fmt_wait(wait)
        )))),
        Err(HandoffError::Accepted) => Err(Failure::Cli(CliError::failure(
            "the process holding the vault accepted the request but did not answer in time; \
             check `capvault status` or `capvault audit` later",
        ))),
        Err(HandoffError::Io(e)) => Err(Failure::Cli(CliError::failure(format!(
            "the vault is held by another process and the request could not be sent: {e}"
        )))),
    }
}

fn fmt_wait(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

// ----- init -----

pub fn init(va: &VaultArgs, json: bool) -> CliResult<()> {
    let t = resolve(va)?;
    if t.dir.exists() && !t.dir.is_dir() {
        return Err(no_vault(&t));
    }
    let existed = vault_exists(&t.dir) && user_present(&t).map_err(|e| vault_error(&t, e))?;
    let vault = Vault::open(&t.dir, &t.user, t.options.clone()).map_err(|e| vault_error(&t, e))?;
    let st = serde_json::to_value(vault.status()?).expect("status serializes");
    vault.close().map_err(|e| vault_error(&t, e))?;
    if json {
        print_json(&json!({ "created": !existed, "status": st }));
    } else {
        if existed {
            println!(
                "vault {} already holds user '{}': nothing changed",
                t.dir.display(),
                t.user
            );
        } else {
            println!(
                "created vault {} for user '{}' (keys in {})",
                t.dir.display(),
                t.user,
                st["keystore"].as_str().unwrap_or("?")
            );
        }
        if let Some(w) = st["keystore_warning"].as_str() {
            eprintln!("warning: {w}");
        }
    }
    Ok(())
}

// ----- status and keys list -----

fn erased_report(t: &Target, json: bool) {
    let e = Vault::erasure(&t.dir, &t.user);
    if json {
        let mut v = json!({
            "dir": t.dir.display().to_string(),
            "user": t.user,
            "erased": true,
        });
        if let Some(e) = &e {
            v["erasure"] = serde_json::to_value(e).expect("serializes");
        }
        print_json(&v);
        return;
    }
    match e {
        Some(e) => println!(
            "user '{}' in vault {} was erased {}: KEK versions 1 to {} were deleted from the {} keychain and {}; nothing of this user can be read ({})",
            t.user,
            t.dir.display(),
            human_time(e.erased_us),
            e.kek_versions,
            serde_json::to_value(e.keystore).expect("serializes").as_str().unwrap_or("?"),
            if e.whole_vault {
                "the vault's database was removed (no other user was left)"
            } else {
                "the user's data was removed"
            },
            if e.verified {
                "erasure record verified under this vault's device key"
            } else {
                "erasure record NOT verified: the device key is gone or the record was edited"
            }
        ),
        None => println!(
            "user '{}' in vault {} was erased: the keys were destroyed and nothing of this user can be read",
            t.user,
            t.dir.display()
        ),
    }
}

/// True when a failure means the user is gone and an erasure record says why.
fn erased_failure(t: &Target, f: &Failure) -> bool {
    matches!(f, Failure::Lib(Error::Erased))
        || (Vault::erasure(&t.dir, &t.user).is_some()
            && (!vault_exists(&t.dir) || matches!(user_present(t), Ok(false))))
}

pub fn status(h: &HandoffArgs, json: bool) -> CliResult<()> {
    match local_or_handoff(h, Op::Status, |v| {
        Ok(serde_json::to_value(v.status()?).expect("status serializes"))
    }) {
        Ok((_, st)) => {
            if json {
                print_json(&st);
            } else {
                print!("{}", render_status(&st));
            }
            Ok(())
        }
        Err(e) => {
            let t = resolve(&h.vault)?;
            if erased_failure(&t, &e) {
                erased_report(&t, json);
                return Ok(());
            }
            Err(e.into())
        }
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn render_epochs(st: &Value, out: &mut String) {
    let current = u(&st["current_epoch"]);
    for e in st["epochs"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  epoch {:>4}{}  created {}  {:>8} records  {:>10}\n",
            u(&e["epoch"]),
            if u(&e["epoch"]) == current { "*" } else { " " },
            human_time(e["created_us"].as_i64().unwrap_or(0)),
            u(&e["records"]),
            human_bytes(u(&e["bytes"])),
        ));
    }
}

fn keystore_line(st: &Value) -> String {
    format!(
        "{} ({})",
        st["keystore"].as_str().unwrap_or("?"),
        if st["keystore_persistent"].as_bool().unwrap_or(false) {
            "persistent"
        } else {
            "NOT persistent: lost at reboot"
        }
    )
}

pub fn render_status(st: &Value) -> String {
    let mut o = String::new();
    let s = |k: &str| st[k].as_str().unwrap_or("").to_string();
    o.push_str(&format!("vault      {} (id {})\n", s("dir"), s("vault_id")));
    o.push_str(&format!("user       {}\n", s("user")));
    o.push_str(&format!("keystore   {}\n", keystore_line(st)));
    if let Some(w) = st["keystore_warning"].as_str() {
        o.push_str(&format!("           warning: {w}\n"));
    }
    o.push_str(&format!("KEK        version {}\n", u(&st["kek_version"])));
    o.push_str(&format!(
        "epochs     {} live, current {} (* below)\n",
        st["epochs"].as_array().map_or(0, Vec::len),
        u(&st["current_epoch"])
    ));
    render_epochs(st, &mut o);
    o.push_str(&format!(
        "records    {} ({} stored, {} on disk), next event {}\n",
        u(&st["records"]),
        human_bytes(u(&st["stored_bytes"])),
        human_bytes(u(&st["disk_bytes"])),
        u(&st["next_event_seq"])
    ));
    let pause = &st["pause"];
    match pause["paused_until_us"].as_i64() {
        Some(until) => o.push_str(&format!(
            "pause      paused until {} ({} dropped so far)\n",
            human_time(until),
            output::count(u(&pause["dropped"]), "event")
        )),
        None => o.push_str("pause      not paused\n"),
    }
    o.push_str(&format!(
        "policy     version {}, purpose \"{}\"\n",
        u(&st["policy_version"]),
        s("purpose")
    ));
    let entries = u(&st["audit_entries"]);
    let pruned = u(&st["audit_entries_pruned"]);
    o.push_str(&format!(
        "audit      {entries} ledger {}{}\n",
        if entries == 1 { "entry" } else { "entries" },
        if pruned > 0 {
            format!(", the oldest {pruned} released and pruned from this device")
        } else {
            String::new()
        }
    ));
    render_upload(st, &mut o);
    o
}

/// The uploader's lines of `status`, when the vault uploads by itself.
fn render_upload(st: &Value, o: &mut String) {
    let up = &st["upload"];
    if !up.is_object() {
        return;
    }
    let when = |k: &str| {
        up[k]
            .as_i64()
            .map_or_else(|| "never".to_string(), human_time)
    };
    o.push_str(&format!(
        "upload     to {} ({}), {} pending in about {}\n",
        up["url"].as_str().unwrap_or("?"),
        if up["enrolled"].as_bool().unwrap_or(false) {
            "enrolled"
        } else {
            "not enrolled by this vault"
        },
        human_bytes(u(&up["pending_bytes"])),
        output::count(u(&up["pending_bundles"]), "bundle"),
    ));
    o.push_str(&format!(
        "           last success {}, next attempt {}\n",
        when("last_success_us"),
        when("next_attempt_us")
    ));
    if let Some(e) = up["last_error"].as_str() {
        o.push_str(&format!("           last error: {e}\n"));
    }
}

pub fn keys_list(h: &HandoffArgs, json: bool) -> CliResult<()> {
    let (_, st) = local_or_handoff(h, Op::KeysList, |v| {
        Ok(serde_json::to_value(v.status()?).expect("status serializes"))
    })?;
    if json {
        let mut keys = serde_json::Map::new();
        for k in [
            "keystore",
            "keystore_persistent",
            "keystore_warning",
            "kek_version",
            "current_epoch",
            "epochs",
        ] {
            keys.insert(k.into(), st[k].clone());
        }
        print_json(&Value::Object(keys));
    } else {
        let mut o = String::new();
        o.push_str(&format!("keystore   {}\n", keystore_line(&st)));
        if let Some(w) = st["keystore_warning"].as_str() {
            o.push_str(&format!("           warning: {w}\n"));
        }
        o.push_str(&format!("KEK        version {}\n", u(&st["kek_version"])));
        o.push_str("data keys  (* = current epoch)\n");
        render_epochs(&st, &mut o);
        print!("{o}");
    }
    Ok(())
}

// ----- rotate, pause, resume -----

pub fn keys_rotate(a: &RotateArgs, json: bool) -> CliResult<()> {
    if a.kek {
        let (_, v) = local_or_handoff(&a.h, Op::RotateKek, |v| {
            Ok(json!({ "kek_version": v.rotate_kek()? }))
        })?;
        if json {
            print_json(&json!({ "rotated": "kek", "kek_version": v["kek_version"] }));
        } else {
            println!(
                "KEK rotated: data keys rewrapped under KEK version {}; the old KEK was deleted from the keychain",
                u(&v["kek_version"])
            );
        }
    } else {
        let (_, v) = local_or_handoff(&a.h, Op::RotateDek, |v| {
            Ok(json!({ "epoch": v.rotate_dek()? }))
        })?;
        if json {
            print_json(&json!({ "rotated": "dek", "epoch": v["epoch"] }));
        } else {
            println!("data key rotated: new records use epoch {}", u(&v["epoch"]));
        }
    }
    Ok(())
}

pub fn pause(a: &PauseArgs, json: bool) -> CliResult<()> {
    if a.duration < Duration::from_secs(1) {
        return Err(CliError::usage("--for must be at least 1s"));
    }
    let secs = a.duration.as_secs();
    let (_, v) = local_or_handoff(&a.h, Op::Pause { secs }, |v| {
        Ok(json!({ "paused_until_us": v.pause(Duration::from_secs(secs))? }))
    })?;
    let until = v["paused_until_us"].as_i64().unwrap_or(0);
    if json {
        print_json(&json!({ "paused_until_us": until }));
    } else {
        let granted = (until - output::now_us()).max(0) / 1_000_000;
        println!("capture paused until {}", human_time(until));
        if granted + 2 < secs as i64 {
            println!("(the policy caps a pause at about {} s)", granted + 1);
        }
    }
    Ok(())
}

pub fn resume(h: &HandoffArgs, json: bool) -> CliResult<()> {
    // Whether there was a pause to end: locally from the pause state, through the
    // hand-off from the holder's status first (nothing is sent when not paused).
    let paused = |st: &Value| st["paused_until_us"].is_i64();
    let (t, v) = local_or_handoff(h, Op::Status, |v| {
        let was = serde_json::to_value(v.pause_state()?).expect("pause state serializes");
        if paused(&was) {
            v.resume()?;
        }
        Ok(json!({ "pause": was, "local": true }))
    })?;
    let was_paused = paused(&v["pause"]);
    if was_paused && v["local"].is_null() {
        via_handoff(&t, Op::Resume, h.wait).map_err(|f| f.at(&t))?;
    }
    if json {
        print_json(&json!({ "resumed": was_paused, "was_paused": was_paused }));
    } else if was_paused {
        println!("capture resumed");
    } else {
        println!("capture was not paused: nothing to resume");
    }
    Ok(())
}

// ----- verify -----

pub fn verify(va: &VaultArgs, json: bool) -> CliResult<()> {
    let (t, vault) = open_or_fail(va)?;
    let sp = output::spinner("verifying records");
    let result = vault.verify();
    sp.finish_and_clear();
    let report = result.map_err(|e| vault_error(&t, e))?;
    vault.close().map_err(|e| vault_error(&t, e))?;
    if json {
        let mut v = serde_json::to_value(&report).expect("report serializes");
        v["ok"] = Value::Bool(true);
        print_json(&v);
    } else {
        if report.records == 0 {
            println!("ok: no records to verify; the audit ledger verifies");
        } else {
            println!(
                "ok: {} ({}) and {} verified, {}; the audit ledger verifies",
                output::count(report.records, "record"),
                human_bytes(report.bytes),
                output::count(report.events, "event"),
                output::record_range(report.first_seq, report.last_seq)
            );
        }
    }
    Ok(())
}

// ----- seal and ack -----

/// Parses a recipient argument (`--to`). An identity given by mistake is named as such
/// and never echoed: it is the collector's secret key.
pub fn parse_recipient(flag: &str, s: &str) -> CliResult<Recipient> {
    if secrets::holds_identity(s) {
        return Err(CliError::usage(format!(
            "{flag}: this is an identity (a collector's secret key), not a recipient; pass its \
             recipient, which `capvault recipient show --identity FILE` prints (and keep the \
             identity off command lines: they are visible to other users and kept in shell \
             history)"
        )));
    }
    s.trim()
        .parse::<Recipient>()
        .map_err(|e| CliError::usage(format!("{flag}: {}", output::describe_format(&e))))
}

#[derive(Args, Debug)]
pub struct SealArgs {
    /// The collector's recipient (cvrecip-x25519-1... or cvrecip-xwing-1...).
    #[arg(short = 't', long, value_name = "RECIPIENT")]
    pub to: String,
    /// Directory to write bundles to (created if missing), one `<id>.cvb` per bundle.
    #[arg(short = 'o', long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Largest plaintext per new bundle (bytes, or with K, M, G) [default: 16M]. A bundle
    /// waiting for acknowledgement is final and offered again as it is.
    #[arg(long, value_name = "N", value_parser = output::parse_size)]
    pub max_bytes: Option<usize>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// The default `--max-bytes`.
const SEAL_MAX_BYTES: usize = 16 << 20;

/// Creates `--out-dir` (0700 when new) and a staged bundle file in it, before anything
/// is sealed: a directory that cannot take the bundle fails the command while the vault
/// is unchanged (no bundle sealed, nothing in the audit ledger).
fn stage_bundle_file(dir: &Path) -> CliResult<files::Staged> {
    files::ensure_dir(dir, "--out-dir")?;
    let d = dir.display();
    files::Staged::create_in(dir).map_err(|e| {
        CliError::failure(format!(
            "cannot write bundles into --out-dir {d}: {}; nothing was sealed",
            output::io_reason(&e)
        ))
    })
}

pub fn seal(a: &SealArgs, json: bool) -> CliResult<()> {
    let to = parse_recipient("--to", &a.to)?;
    let (t, vault) = open_or_fail(&a.vault)?;
    let staged = stage_bundle_file(&a.out_dir)?;
    let started_us = output::now_us();
    // The vault offers one bundle at a time: the sealed bundle in its outbox until it is
    // acknowledged (the same bytes every time), then the next records.
    let sp = output::spinner("sealing");
    let sealed = vault.seal_next(&to, a.max_bytes.unwrap_or(SEAL_MAX_BYTES));
    sp.finish_and_clear();
    let mut out = Vec::new();
    if let Some(b) = sealed.map_err(|e| vault_error(&t, e))? {
        let h = b.header();
        let name = format!("{}.cvb", b.id());
        let path = staged.commit(&name, b.bytes()).map_err(|e| {
            CliError::failure(format!(
                "bundle {} ({}) is sealed and kept in the vault's outbox (the audit ledger \
                 records the seal), but writing it to {} failed: {}; run `capvault seal` \
                 again with a usable --out-dir to write the very same bundle",
                h.bundle_seq(),
                b.id(),
                a.out_dir.join(&name).display(),
                output::io_reason(&e)
            ))
        })?;
        // Sealed before this command started: the pending bundle, offered again.
        let again = h.created_us() < started_us;
        out.push(json!({
            "id": b.id(),
            "file": path.display().to_string(),
            "bytes": b.bytes().len(),
            "bundle_seq": h.bundle_seq(),
            "first_record": h.first_record(),
            "last_record": h.last_record(),
            "events": h.event_count(),
            "pending_again": again,
        }));
    }
    vault.close().map_err(|e| vault_error(&t, e))?;
    if json {
        print_json(&json!({ "bundles": out }));
    } else if out.is_empty() {
        println!("nothing to seal: no records are waiting for release");
    } else {
        for b in &out {
            println!(
                "{}  {}  bundle {}, {}, {}, {}",
                b["id"].as_str().unwrap_or(""),
                b["file"].as_str().unwrap_or(""),
                u(&b["bundle_seq"]),
                output::record_range(u(&b["first_record"]), u(&b["last_record"])),
                output::count(u(&b["events"]), "event"),
                human_bytes(u(&b["bytes"]))
            );
            if b["pending_again"] == true {
                println!(
                    "this bundle was sealed earlier and is waiting for acknowledgement: it is \
                     offered again unchanged ({}){}",
                    human_bytes(u(&b["bytes"])),
                    if a.max_bytes.is_some() {
                        "; --max-bytes applies to the next bundle, sealed after this one is acknowledged"
                    } else {
                        ""
                    }
                );
            }
        }
        println!(
            "until it is acknowledged this same bundle is offered again; after the collector confirms, \
             run `capvault ack` with the id or its receipt, then seal again for the next records"
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct AckArgs {
    /// Bundle ids (cvb1...) the collector received. With --receipt, may be omitted to
    /// acknowledge every bundle named in the receipt files.
    #[arg(value_name = "BUNDLE_ID")]
    pub ids: Vec<String>,
    /// Receipt file written by `capvault receipt` (repeatable; `-` reads stdin).
    #[arg(long, value_name = "FILE")]
    pub receipt: Vec<PathBuf>,
    /// The collector's receipt key (cvreceipt-ed25519-1...): must be the key the vault is
    /// configured with (a vault without one is configured with it from now on); only
    /// bundles with a valid receipt from that collector are acknowledged.
    #[arg(long, value_name = "KEY")]
    pub receipt_key: Option<String>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Reads a receipt file: lines `<bundle id> <receipt, base64>`; `#` comments.
pub fn read_receipts(path: &Path) -> CliResult<Vec<(String, Vec<u8>)>> {
    let bytes = if files::is_dash(path) {
        files::read_stdin("--receipt -")?.to_vec()
    } else {
        files::read_file(path, "the receipt file")?
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            CliError::failure(format!(
                "{}:{}: not a receipt line (expected `<bundle id> <receipt>` as written by `capvault receipt`)",
                if files::is_dash(path) { "stdin".into() } else { path.display().to_string() },
                n + 1
            ))
        };
        let mut parts = line.split_whitespace();
        let (Some(id), Some(r), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let r = data_encoding::BASE64
            .decode(r.as_bytes())
            .map_err(|_| bad())?;
        out.push((id.to_string(), r));
    }
    Ok(out)
}

pub fn ack(a: &AckArgs, json: bool) -> CliResult<()> {
    if a.receipt.iter().filter(|p| files::is_dash(p)).count() > 1 {
        return Err(CliError::usage("`--receipt -` (stdin) can be given once"));
    }
    let mut receipts = Vec::new();
    for p in &a.receipt {
        receipts.extend(read_receipts(p)?);
    }
    let ids: Vec<String> = if a.ids.is_empty() {
        receipts.iter().map(|(id, _)| id.clone()).collect()
    } else {
        a.ids.clone()
    };
    if ids.is_empty() {
        return Err(CliError::usage(
            "name the bundles to acknowledge (BUNDLE_ID...) or give --receipt FILE",
        ));
    }
    for id in &ids {
        if !id.starts_with("cvb1") || id.len() != 36 {
            return Err(CliError::usage(format!(
                "'{id}' is not a bundle id (they look like cvb1 followed by 32 characters)"
            )));
        }
    }
    let mut t = resolve(&a.vault)?;
    let mut vault = open_existing(&t).map_err(|f| f.at(&t))?;
    if let Some(k) = &a.receipt_key {
        // A check against the configured key, never a silent change of it: changing the
        // collector is an explicit configuration (`--options` with collector_receipt_key).
        let k = parse_receipt_key(k)?.to_string();
        match vault.collector_receipt_key() {
            Some(configured) if configured == k => {}
            Some(configured) => {
                return Err(CliError::failure(format!(
                    "this vault requires receipts from collector key {configured}, but \
                     --receipt-key names {k}; to change the collector, pass the new key as \
                     collector_receipt_key in --options (the change is audited)"
                )))
            }
            None => {
                // First configuration: from now on every ack needs this collector's receipt.
                vault.close().map_err(|e| vault_error(&t, e))?;
                t.options.collector_receipt_key = Some(k.clone());
                vault = open_existing(&t).map_err(|f| f.at(&t))?;
                if !json {
                    eprintln!("note: this vault now requires receipts from {k} for every ack");
                }
            }
        }
    }
    let mut done = Vec::new();
    let mut first_err = None;
    for id in &ids {
        let receipt = receipts
            .iter()
            .find(|(r, _)| r == id)
            .map(|(_, r)| r.as_slice());
        if !a.receipt.is_empty() && receipt.is_none() {
            first_err.get_or_insert(CliError::failure(format!(
                "no receipt for {id} in the receipt files"
            )));
            continue;
        }
        match vault.ack(id, receipt) {
            Ok(_) => done.push(id.clone()),
            Err(e) => {
                first_err.get_or_insert(CliError::from(e).prefixed(id));
            }
        }
    }
    vault.close()?;
    if json {
        print_json(&json!({ "acknowledged": done }));
    } else {
        for id in &done {
            println!("acknowledged {id}");
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Parses `--receipt-key`; an identity given by mistake is named as such, not echoed.
pub fn parse_receipt_key(s: &str) -> CliResult<capvault::ReceiptKey> {
    if secrets::holds_identity(s) {
        return Err(CliError::usage(
            "--receipt-key: this is an identity (a collector's secret key), not a receipt key; \
             pass its receipt key, which `capvault recipient show --identity FILE` prints",
        ));
    }
    s.parse::<capvault::ReceiptKey>()
        .map_err(|e| CliError::usage(format!("--receipt-key: {}", output::describe_format(&e))))
}

impl CliError {
    fn prefixed(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

// ----- enroll -----

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// Where to write the enrollment record (`-` for stdout); written 0600.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub h: HandoffArgs,
}

pub fn enroll(a: &EnrollArgs, json: bool) -> CliResult<()> {
    let (_, v) = local_or_handoff(&a.h, Op::Enroll, |v| {
        let text = v.enrollment_record()?.to_json();
        Ok(json!({ "record": serde_json::from_str::<Value>(&text).expect("JSON") }))
    })?;
    // Checked here too: what reaches the file is a record that verifies.
    let record = capvault::EnrollmentRecord::from_json(&v["record"].to_string())
        .map_err(|e| CliError::integrity(format!("the enrollment record does not verify: {e}")))?;
    let text = format!("{}\n", record.to_json());
    let device_id = record.device_id_hex();
    if a.out.as_os_str() == "-" {
        if json {
            print_json(&json!({ "device_id": device_id, "path": "-", "record": v["record"] }));
        } else {
            print!("{text}");
        }
        return Ok(());
    }
    let path = files::write_out(&a.out, "the enrollment record", text.as_bytes())?;
    if json {
        print_json(&json!({ "device_id": device_id, "path": path.display().to_string() }));
    } else {
        println!(
            "device {device_id}: enrollment record written to {} (give it to the collector)",
            path.display()
        );
    }
    Ok(())
}

// ----- erase -----

pub fn erase(a: &EraseArgs, json: bool) -> CliResult<()> {
    if !a.yes {
        return Err(CliError::usage(
            "erase destroys this user's keys and data for good; add --yes to confirm",
        ));
    }
    let t = resolve(&a.h.vault)?;
    // Erase does not need a vault that opens: it works from the keychain and the names
    // of the keys (a tampered, corrupted or full vault is erased too).
    let result = match Vault::erase(&t.dir, &t.user, t.options.clone()) {
        Ok(()) => Ok(()),
        Err(Error::InUse) => via_handoff(&t, Op::Erase, a.h.wait).map(|_| ()).map_err(|f| {
            let e = CliError::from(f);
            Failure::Cli(CliError {
                message: format!(
                    "{}; the user's keys were deleted from the keychain already if the vault's keychain file names them and is bound to its database: run erase again once the holder answers or has closed the vault, to remove the data",
                    e.message
                ),
                ..e
            })
        }),
        Err(Error::NotFound(_)) if Vault::erasure(&t.dir, &t.user).is_some() => Ok(()),
        Err(Error::NotFound(_)) if !vault_exists(&t.dir) => Err(Failure::Cli(no_vault(&t))),
        Err(Error::NotFound(_)) => Err(Failure::Cli(no_user(&t))),
        Err(e) => Err(Failure::Lib(e)),
    };
    match result {
        Ok(()) | Err(Failure::Lib(Error::Erased)) => {}
        Err(e) => return Err(e.into()),
    }
    let erasure = Vault::erasure(&t.dir, &t.user);
    let whole = erasure.as_ref().is_some_and(|e| e.whole_vault);
    if json {
        print_json(&json!({
            "erased": true,
            "dir": t.dir.display().to_string(),
            "user": t.user,
            "erasure": erasure,
        }));
    } else {
        println!(
            "user '{}' erased in {}: none of the user's keys is left in the keychain and {}; nothing of this user can be read any more",
            t.user,
            t.dir.display(),
            if whole {
                "the vault's database was removed (no other user was left)"
            } else {
                "the user's data was removed (other users of the vault are untouched)"
            }
        );
    }
    Ok(())
}

// ----- show and audit -----

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Write screenshots and other binary payloads as files here instead of base64.
    #[arg(long, value_name = "DIR")]
    pub blobs_dir: Option<PathBuf>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

pub fn show(a: &ShowArgs) -> CliResult<()> {
    let (t, vault) = open_or_fail(&a.vault)?;
    if let Some(d) = &a.blobs_dir {
        files::ensure_dir(d, "--blobs-dir")?;
    }
    let events = vault.subject_access().map_err(|e| vault_error(&t, e))?;
    vault.close().map_err(|e| vault_error(&t, e))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = capvault::write_json_lines(&events, &mut out, a.blobs_dir.as_deref())
        .map_err(Error::from)
        .and_then(|()| out.flush().map_err(Error::from));
    written.map_err(|e| output::write_events_error("records", a.blobs_dir.as_deref(), &e))
}

pub fn audit(va: &VaultArgs, json: bool) -> CliResult<()> {
    let t = resolve(va)?;
    let opened = open_existing(&t).and_then(|v| {
        let entries = v.audit_log()?;
        v.close()?;
        Ok(entries)
    });
    let entries = match opened {
        Ok(entries) => entries,
        // The ledger went with the user's data; the erasure record is what is left.
        Err(f) if erased_failure(&t, &f) => match Vault::erasure(&t.dir, &t.user) {
            Some(e) => vec![capvault::AuditEntry {
                seq: 0,
                ts_us: e.erased_us,
                action: "erase".into(),
                detail: format!(
                    "user {} erased: KEK versions 1 to {} deleted from the keychain, {}; the ledger went with the data ({})",
                    t.user,
                    e.kek_versions,
                    if e.whole_vault { "database removed" } else { "the user's trees removed" },
                    if e.verified { "record verified under the device key" } else { "record not verified" }
                ),
            }],
            None => return Err(f.into()),
        },
        Err(f) => return Err(f.into()),
    };
    if json {
        print_json(&serde_json::to_value(&entries).expect("entries serialize"));
    } else {
        if let Some(first) = entries.first().filter(|e| e.seq > 1) {
            println!(
                "(entries 1 to {} were released to the collector and pruned from this device)",
                first.seq - 1
            );
        }
        for e in &entries {
            println!(
                "{:>6}  {}  {:<14} {}",
                e.seq,
                human_time(e.ts_us),
                e.action,
                e.detail
            );
        }
    }
    Ok(())
}

// ----- serve (hidden) -----

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Holds the vault open (as a capture agent does) until killed or until the user is
/// erased. The vault itself answers hand-off requests while it is open.
pub fn serve(a: &ServeArgs) -> CliResult<()> {
    let t = resolve(&a.vault)?;
    let vault = Vault::open(&t.dir, &t.user, t.options.clone()).map_err(|e| vault_error(&t, e))?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| {
        CliError::failure(format!("cannot write to stdout: {}", output::io_reason(&e)))
    })?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        if let Err(capvault::Error::Erased) = vault.status() {
            println!("erased");
            return Ok(());
        }
    }
}
