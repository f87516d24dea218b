//! Ingest throughput against a running collector (SPEC P8), with the same-run baseline
//! of writing the same bytes to files with fdatasync.
//!
//! ```text
//! capvault-collector init --dir /tmp/c
//! capvault-collector serve --dir /tmp/c --listen 127.0.0.1:8700 &
//! TOKEN=$(capvault-collector token new --dir /tmp/c --uses 1000)
//! cargo run --release -p capvault-collector --example ingest_load -- \
//!     127.0.0.1:8700 "$TOKEN" [devices=8] [bundles_per_device=250] [bundle_bytes=65536] \
//!     [baseline_dir=/tmp] [rounds=3]
//! ```
//!
//! Each device uploads its own chain in order on one keep-alive connection, as the
//! uploader does; devices run in parallel. Sealing happens before the clock starts.
//! Each round (new devices, so `rounds x devices` token uses) runs the ingest and then
//! the baseline, so that both see the same machine load; one JSON line per round, then
//! the median round by ratio.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use capvault_format::secret::{random_array, Key32};
use capvault_format::{
    seal_bundle, BundleInput, DeviceKey, EnrollmentRecord, Event, Identity, SeqEvent, Suite,
};

fn post(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    ct: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let s = conn.get_mut();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: collector\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut out = vec![0u8; len];
    conn.read_exact(&mut out)?;
    Ok((status, out))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: ingest_load ADDR TOKEN [devices] [bundles_per_device] [bundle_bytes] [baseline_dir] [rounds]");
        std::process::exit(2);
    }
    let addr = args[0].clone();
    let token = args[1].clone();
    let arg = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let devices = arg(2, 8);
    let per_device = arg(3, 250);
    let size = arg(4, 65536);
    let baseline_dir = args.get(5).cloned().unwrap_or_else(|| "/tmp".into());

    let rounds = arg(6, 3);
    let identity = Identity::generate(Suite::X25519);
    let mut results = Vec::new();
    for round in 0..rounds {
        let r = run_round(
            &addr,
            &token,
            &identity,
            devices,
            per_device,
            size,
            &baseline_dir,
        );
        println!("{{\"round\":{round},{}", &r.1[1..]);
        results.push(r);
    }
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = &results[results.len() / 2];
    println!("{{\"median_round\":true,{}", &median.1[1..]);
}

/// One round: (ratio, JSON line).
fn run_round(
    addr: &str,
    token: &str,
    identity: &Identity,
    devices: usize,
    per_device: usize,
    size: usize,
    baseline_dir: &str,
) -> (f64, String) {
    let recipient = identity.recipient();
    let payload: Vec<u8> = (0..size).map(|i| (i * 7 + 13) as u8).collect();
    let mut chains: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for _ in 0..devices {
        let id: [u8; 16] = random_array();
        let stream: [u8; 16] = random_array();
        let mut seed: [u8; 32] = random_array();
        let key = DeviceKey::from_seed(&Key32::from_slice_zeroizing(&mut seed).unwrap()).unwrap();
        let record = EnrollmentRecord::new(id, &key, 1_764_000_000_000_000).to_json();
        let mut prev = [0u8; 32];
        let mut bundles = Vec::with_capacity(per_device);
        for n in 0..per_device as u64 {
            let events = [SeqEvent {
                seq: n + 1,
                event: Event::Custom {
                    ts_us: 1_764_000_000_000_000 + n as i64,
                    kind: "load".into(),
                    data: payload.clone(),
                },
            }];
            let input = BundleInput {
                device_id: id,
                stream_id: stream,
                bundle_seq: n + 1,
                first_record: n + 1,
                last_record: n + 1,
                records_lost: 0,
                prev_digest: prev,
                created_us: 1_764_000_000_000_000,
                purpose: "load",
                user: "load",
                events: &events,
                audit: &[],
            };
            let b = seal_bundle(&input, &recipient, &key).expect("seals");
            prev = *b.digest();
            bundles.push(b.into_bytes());
        }
        chains.push((record, bundles));
    }
    let bundle_bytes = chains[0].1[0].len();

    // Enroll.
    for (record, _) in &chains {
        let mut conn = BufReader::new(TcpStream::connect(addr).expect("connects"));
        let body = format!("{{\"token\":\"{token}\",\"record\":{record}}}");
        let (status, answer) =
            post(&mut conn, "/v1/enroll", "application/json", body.as_bytes()).unwrap();
        assert!(
            status == 201 || status == 200,
            "enroll: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }

    let start = Instant::now();
    let threads: Vec<_> = chains
        .into_iter()
        .map(|(_, bundles)| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut conn = BufReader::new(TcpStream::connect(&addr).expect("connects"));
                conn.get_ref().set_nodelay(true).unwrap();
                for b in &bundles {
                    let (status, answer) =
                        post(&mut conn, "/v1/bundles", "application/octet-stream", b).unwrap();
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                }
                bundles
            })
        })
        .collect();
    let all: Vec<Vec<Vec<u8>>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let secs = start.elapsed().as_secs_f64();
    let n = (devices * per_device) as f64;
    let mb = n * bundle_bytes as f64 / 1e6;

    // Baseline: the same bytes, one file each, fdatasync, same parallelism.
    let base =
        std::path::Path::new(&baseline_dir).join(format!("ingest-baseline-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let start = Instant::now();
    let threads: Vec<_> = all
        .into_iter()
        .enumerate()
        .map(|(d, bundles)| {
            let base = base.clone();
            std::thread::spawn(move || {
                for (i, b) in bundles.iter().enumerate() {
                    let mut f = std::fs::File::create(base.join(format!("{d}-{i}"))).unwrap();
                    f.write_all(b).unwrap();
                    f.sync_data().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let base_secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&base);

    let line = format!(
        "{{\"devices\":{devices},\"bundles\":{},\"bundle_bytes\":{bundle_bytes},\
         \"ingest_bundles_per_s\":{:.0},\"ingest_mb_per_s\":{:.1},\
         \"baseline_files_per_s\":{:.0},\"baseline_mb_per_s\":{:.1},\"ratio\":{:.2}}}",
        n as u64,
        n / secs,
        mb / secs,
        n / base_secs,
        mb / base_secs,
        base_secs / secs
    );
    (base_secs / secs, line)
}
