//! End-to-end time from append to receipt for a 1 kHz agent (SPEC P8): mouse
//! moves appended at 1 kHz to a real vault whose built-in uploader (`upload` options)
//! sends to a real `capvault-collector serve` on loopback (embedded default: SQLite and
//! the blob directory).
//!
//! ```text
//! cargo build --release -p capvault-collector
//! cargo run --release --manifest-path harness/Cargo.toml --bin upload_latency -- \
//!     target/release/capvault-collector SECONDS INTERVAL_SECS [RATE_HZ=1000]
//! ```
//!
//! Each event's timestamp is the wall-clock time of its append. The receipt time of a
//! bundle is the collector's `bundle stored` log line (written after the blob and the
//! index row are durable, just before the receipt goes out), matched to the events
//! through `export` (each line carries `ts_us` and `bundle_id`). After the last append
//! the vault is flushed and the harness waits (up to two intervals) until the uploader
//! has sent everything; it checks every appended event came back. The vault keeps its keys in kernel keyutils.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capvault::{Identity, KeyStoreKind, Suite, UploadOptions, Vault, VaultOptions};

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// `2026-11-30T03:38:35.397540Z` to microseconds since the epoch.
fn rfc3339_us(s: &str) -> i64 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (hh, mm, ss) = (n(11, 13), n(14, 16), n(17, 19));
    let frac = s[20..s.len() - 1].to_string();
    let us = format!("{frac:0<6}")[..6].parse::<i64>().unwrap();
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: upload_latency COLLECTOR_BIN SECONDS INTERVAL_SECS [RATE_HZ=1000]");
        std::process::exit(2);
    }
    let bin = &args[0];
    let seconds: u64 = args[1].parse().expect("SECONDS");
    let interval: u64 = args[2].parse().expect("INTERVAL_SECS");
    let rate: u64 = args.get(3).map_or(1000, |s| s.parse().expect("RATE_HZ"));
    let tmp = std::env::temp_dir().join(format!("capvault-upload-latency-{}", std::process::id()));
    let cdir = tmp.join("collector");
    std::fs::create_dir_all(&tmp).unwrap();

    let out = Command::new(bin)
        .args(["init", "--json", "--dir"])
        .arg(&cdir)
        .output()
        .expect("the collector runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let init: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let identity = Identity::generate(Suite::X25519);
    let id_path = tmp.join("collector.identity");
    identity.write_to_file(&id_path).unwrap();

    let log_path = tmp.join("collector.log");
    let mut server = Command::new(bin)
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(&cdir)
        .env("CAPVAULT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();

    let mut upload = UploadOptions::new(url, identity.recipient().to_string());
    upload.token = Some(init["token"].as_str().unwrap().to_string().into());
    upload.interval_secs = interval;
    let mut o = VaultOptions::default();
    o.keystore = KeyStoreKind::Keyutils;
    o.collector_receipt_key = Some(init["receipt_key"].as_str().unwrap().to_string());
    o.upload = Some(upload);
    let vault = Vault::open(tmp.join("vault"), "harness", o).unwrap();

    // 1 kHz: each append at its tick (sleeping in between), timestamped when it is made.
    let start = Instant::now();
    let total = seconds * rate;
    let tick = Duration::from_nanos(1_000_000_000 / rate);
    let mut late = 0u64;
    for i in 0..total {
        let due = start + tick * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(5) {
            late += 1;
        }
        let _ = vault
            .append_mouse_move(now_us(), (i % 1920) as i32, (i % 1080) as i32)
            .unwrap();
    }
    let appended_at = Instant::now();
    // The last frame (under 100 ms of events) becomes a record now rather than at its
    // time bound, so that the wait below cannot see an empty log before it is written.
    vault.flush().unwrap();
    // Until the uploader has sent everything (records and outbox) or two intervals.
    loop {
        let s = vault.status().unwrap();
        let u = s.upload.as_ref().unwrap();
        if s.records == 0 && u.pending_bytes == 0 && u.uploaded_bundles > 0 {
            break;
        }
        if appended_at.elapsed() > Duration::from_secs(2 * interval + 10) {
            panic!("not uploaded within two intervals: {s:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = vault.status().unwrap();
    drop(vault);
    let _ = server.kill();
    let _ = server.wait();

    // Receipt time of each bundle, from the collector's log.
    let mut receipt_at: HashMap<String, i64> = HashMap::new();
    for l in std::fs::read_to_string(&log_path).unwrap().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v["fields"]["message"] == "bundle stored" {
            let id = v["fields"]["id"].as_str().unwrap().to_string();
            receipt_at.insert(id, rfc3339_us(v["timestamp"].as_str().unwrap()));
        }
    }
    let out = Command::new(bin)
        .args(["export", "--dir"])
        .arg(&cdir)
        .arg("--identity")
        .arg(&id_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lat = Vec::new();
    for l in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["type"] != "mouse_move" {
            continue;
        }
        let at = receipt_at[v["bundle_id"].as_str().unwrap()];
        lat.push(at - v["ts_us"].as_i64().unwrap());
    }
    assert_eq!(lat.len() as u64, total, "every appended event came back");
    lat.sort_unstable();
    let u = status.upload.unwrap();
    println!(
        "{{\"rate_hz\":{rate},\"seconds\":{seconds},\"interval_secs\":{interval},\"events\":{},\
         \"bundles\":{},\"late_ticks\":{late},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1},\"min_ms\":{:.1}}}",
        lat.len(),
        u.uploaded_bundles,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        *lat.last().unwrap() as f64 / 1000.0,
        lat[0] as f64 / 1000.0,
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
