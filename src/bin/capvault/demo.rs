//! `capvault demo`: a capture session end to end on a throw-away vault, with a report.
//!
//! The session is simulated on a synthetic clock (mouse at 1 kHz, ~8 keys/s, window
//! switches, one 1.5 MB incompressible screenshot per second, a pause and a data-key
//! rotation) and appended as fast as the vault accepts it, so the report also measures
//! ingest throughput. Then bundles are sealed to a fresh collector identity, opened,
//! chain-checked and acknowledged with receipts, and the bundles are searched for the
//! window titles an insider with the upload bucket would be after.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use capvault::{
    Appended, ChainChecker, Error, Event, Identity, KeyStoreKind, Suite, Vault, VaultOptions,
};

use crate::output::{human_bytes, print_json, CliError, CliResult};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Length of the simulated session, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub seconds: u64,
    /// Keep the vault, bundles and collector identity in this directory (must be new or
    /// empty) instead of deleting them.
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
}

impl Counts {
    fn add(&mut self, r: Appended, ev: &Event) {
        self.offered += 1;
        match r {
            Appended::Stored => {
                self.stored += 1;
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
    let work = work_dir(a.keep.as_deref())?;
    let vault_dir = work.path.join("vault");
    let bundle_dir = work.path.join("bundles");
    std::fs::create_dir_all(&bundle_dir)?;
    let mut notes = Vec::new();

    // The collector: a fresh identity; the vault only prunes with its receipts.
    let identity = Identity::generate(Suite::X25519);
    if work.keep {
        identity.write_to_file(&work.path.join("collector.identity"))?;
    }
    let mut opts = VaultOptions::default();
    opts.keystore = a.keystore.kind();
    opts.collector_receipt_key = Some(identity.receipt_key().to_string());
    let vault = open_vault(&vault_dir, &opts, &mut notes)?;
    let st0 = vault.status()?;
    for n in &notes {
        say(json, &format!("note: {n}"));
    }
    say(
        json,
        &format!(
            "vault {} (keys in {}{})",
            vault_dir.display(),
            store_name(st0.keystore),
            if st0.keystore_persistent {
                ""
            } else {
                ", not persistent"
            }
        ),
    );
    let session = run_session(&vault, a.seconds, json)?;
    let c = &session.counts;
    vault.flush()?;
    let st = vault.status()?;

    // Release loop, as an agent and a collector would run it: seal the next bundle,
    // ship it, the collector opens it, checks the chain and returns a receipt, the
    // vault acknowledges it and prunes; repeat until nothing is left.
    let recipient = identity.recipient();
    let mut checker = ChainChecker::new();
    let mut opened_events = 0usize;
    let mut bundles: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut seal_secs, mut open_secs) = (0f64, 0f64);
    loop {
        let t = Instant::now();
        let Some(b) = vault.seal_next(&recipient, 4 << 20)? else {
            break;
        };
        seal_secs += t.elapsed().as_secs_f64();
        std::fs::write(bundle_dir.join(format!("{}.cvb", b.id())), b.bytes())?;
        let t = Instant::now();
        let opened = capvault::open_bundle(b.bytes(), &identity)?;
        open_secs += t.elapsed().as_secs_f64();
        checker.add_opened(&opened);
        opened_events += opened.events.len();
        let receipt = identity.receipt_for(&opened.digest);
        vault.ack(&opened.id, Some(&receipt))?;
        bundles.push((b.id().to_string(), b.bytes().to_vec()));
    }
    let chain = checker.report();
    if !chain.is_clean() {
        return Err(CliError::integrity(
            "the demo's bundle chain did not verify; this is a bug, please report it",
        ));
    }

    // What an insider who can list the bucket sees: ciphertext. Search every bundle
    // for the window titles, the typed text and the user name.
    let secrets: Vec<&str> = WINDOWS
        .iter()
        .map(|(_, t)| *t)
        .chain([TYPED.trim(), USER])
        .collect();
    let leaked: Vec<&str> = secrets
        .iter()
        .copied()
        .filter(|s| bundles.iter().any(|(_, b)| contains(b, s.as_bytes())))
        .collect();
    let bundle_bytes: u64 = bundles.iter().map(|(_, b)| b.len() as u64).sum();

    let after = vault.status()?;
    let verify = vault.verify()?;
    vault.close()?;

    if !work.keep {
        // Crypto-shred the throw-away vault so its keys do not linger in the keychain.
        let mut o = opts.clone();
        o.keystore = st0.keystore;
        if let Err(e) = Vault::erase(&vault_dir, USER, o) {
            notes.push(format!("could not erase the demo vault's keys: {e}"));
        }
    }

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
        "epochs": st.epochs.len(),
        "ingest_seconds": ingest_secs,
        "ingest_events_per_sec": c.offered as f64 / ingest_secs,
        "ingest_mb_per_sec": c.plaintext as f64 / 1e6 / ingest_secs,
        "bundles": bundles.len(),
        "bundle_bytes": bundle_bytes,
        "seal_mb_per_sec": c.plaintext as f64 / 1e6 / seal_secs.max(1e-9),
        "open_mb_per_sec": c.plaintext as f64 / 1e6 / open_secs.max(1e-9),
        "events_opened": opened_events,
        "chain_clean": chain.is_clean(),
        "receipts_acked": bundles.len(),
        "records_left_after_ack": after.records,
        "verify_records": verify.records,
        "secrets_searched": secrets.len(),
        "secrets_found_in_bundles": leaked,
        "kept_in": if work.keep { Some(work.path.display().to_string()) } else { None },
    });
    if json {
        print_json(&report);
    } else {
        print_report(
            a,
            c,
            &st,
            &session,
            &bundles,
            bundle_bytes,
            &report,
            &leaked,
        );
        if let Some(n) = notes.iter().find(|n| n.contains("could not erase")) {
            eprintln!("note: {n}");
        }
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

fn run_session(vault: &Vault, seconds: u64, json: bool) -> CliResult<Session> {
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

#[allow(clippy::too_many_arguments)]
fn print_report(
    a: &DemoArgs,
    c: &Counts,
    st: &capvault::Status,
    s: &Session,
    bundles: &[(String, Vec<u8>)],
    bundle_bytes: u64,
    r: &serde_json::Value,
    leaked: &[&str],
) {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
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
        "  storage    {} plaintext -> {} encrypted records ({:.2}x), {} on disk",
        human_bytes(c.plaintext),
        human_bytes(st.stored_bytes),
        st.stored_bytes as f64 / (c.plaintext.max(1)) as f64,
        human_bytes(st.disk_bytes)
    );
    println!(
        "  keys       {}, KEK v{}, {} data-key epoch(s){}",
        store_name(st.keystore),
        st.kek_version,
        st.epochs.len(),
        s.pause_epoch
            .map(|e| format!(" (rotated to {e} mid-session)"))
            .unwrap_or_default()
    );
    println!(
        "  speed      ingest {:.0} events/s, {:.0} MB/s; seal {:.0} MB/s; open {:.0} MB/s",
        f("ingest_events_per_sec"),
        f("ingest_mb_per_sec"),
        f("seal_mb_per_sec"),
        f("open_mb_per_sec")
    );
    println!(
        "  bundles    {} sealed ({}), {} events opened, chain {}, {} acked with receipts, {} records left",
        bundles.len(),
        human_bytes(bundle_bytes),
        r["events_opened"],
        if r["chain_clean"].as_bool() == Some(true) {
            "verified"
        } else {
            "BROKEN"
        },
        r["receipts_acked"],
        r["records_left_after_ack"]
    );
    println!(
        "  insider    someone with the upload bucket sees {} bundle(s) of ciphertext: none of the {} window titles, the typed text or the user name appear in them{}",
        bundles.len(),
        WINDOWS.len(),
        if leaked.is_empty() { "" } else { " (LEAK FOUND)" }
    );
    if let Some(dir) = r["kept_in"].as_str() {
        println!("  kept       {dir} (vault/, bundles/, collector.identity)");
    }
}
