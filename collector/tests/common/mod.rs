//! Test helpers: a real collector process on loopback, a minimal HTTP/1.1 client, and
//! devices that seal real bundles.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use capvault_format::secret::Key32;
use capvault_format::{
    seal_bundle, BundleInput, DeviceKey, EnrollmentRecord, Event, Identity, Recipient,
    SealedBundle, SeqEvent, Suite,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_capvault-collector");

/// Runs the collector command line to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the collector binary runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `init --json` in `dir`: (receipt key, token).
pub fn init(dir: &Path) -> (String, String) {
    init_with(dir, &[])
}

/// `init --json` with extra arguments (`--db URL`).
pub fn init_with(dir: &Path, extra: &[&str]) -> (String, String) {
    let mut args = vec!["init", "--dir", dir.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(out.status.success(), "init: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["receipt_key"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
    )
}

/// A new token with `uses` uses.
pub fn new_token(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["token", "new", "--dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(out.status.success(), "token new: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// A running `serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Server {
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut args = vec![
            "serve",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .env("CAPVAULT_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Server {
            child,
            addr,
            dir: dir.to_path_buf(),
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Resp {
        request(self.addr, "POST", path, content_type, body)
    }

    pub fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, "text/plain", b"")
    }

    pub fn enroll(&self, token: &str, device: &Device) -> Resp {
        let body = serde_json::json!({ "token": token, "record": device.record() });
        self.post(
            "/v1/enroll",
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    pub fn upload(&self, bundle: &[u8]) -> Resp {
        self.post("/v1/bundles", "application/octet-stream", bundle)
    }

    /// An upload with `Transfer-Encoding: chunked` and no Content-Length, the body in
    /// chunks of `chunk` bytes.
    pub fn upload_chunked(&self, bundle: &[u8], chunk: usize) -> Resp {
        let mut body = Vec::new();
        for c in bundle.chunks(chunk) {
            body.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"0\r\n\r\n");
        self.upload_raw_chunked(&body)
    }

    /// An upload with `Transfer-Encoding: chunked` whose encoded body is `raw`, as is.
    pub fn upload_raw_chunked(&self, raw: &[u8]) -> Resp {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST /v1/bundles HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        // The server may answer (413) before reading all of it: ignore a reset here.
        let _ = s.write_all(raw);
        let _ = s.flush();
        read_response(&mut s).expect("the request completes")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn request(addr: SocketAddr, method: &str, path: &str, ct: &str, body: &[u8]) -> Resp {
    try_request(addr, method, path, ct, body).expect("the request completes")
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ct: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(&mut s, &addr.to_string(), method, path, ct, body)
}

/// One request and its answer on an open stream (plain or TLS).
pub fn exchange<S: Read + Write>(
    s: &mut S,
    host: &str,
    method: &str,
    path: &str,
    ct: &str,
    body: &[u8],
) -> std::io::Result<Resp> {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    // The server may answer (413) before reading a large body: ignore a reset here.
    let _ = s.write_all(body);
    let _ = s.flush();
    read_response(s)
}

/// Reads an answer until the server closes the connection.
pub fn read_response<S: Read>(s: &mut S) -> std::io::Result<Resp> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            // A TLS peer that closes without close_notify, after its answer.
            Err(e) if !raw.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// A simulated device: an id and an Ed25519 seed, sealing real bundles.
pub struct Device {
    pub id: [u8; 16],
    pub stream: [u8; 16],
    pub seed: [u8; 32],
    pub user: String,
    pub sealed: Vec<SealedBundle>,
    next_event: u64,
}

impl Device {
    pub fn new(tag: u8) -> Device {
        Device {
            id: [tag; 16],
            stream: [tag ^ 0x55; 16],
            seed: [tag.wrapping_add(100); 32],
            user: format!("user-{tag}"),
            sealed: Vec::new(),
            next_event: 1,
        }
    }

    /// A device with random id, stream and key (for shared databases).
    pub fn random() -> Device {
        let mut d = Device::new(0);
        d.id = capvault_format::secret::random_array();
        d.stream = capvault_format::secret::random_array();
        d.seed = capvault_format::secret::random_array();
        d.user = format!("user-{}", hex(&d.id[..4]));
        d
    }

    /// The same id with another key (a forger).
    pub fn impostor_of(other: &Device) -> Device {
        let mut d = Device::new(0);
        d.id = other.id;
        d.seed = [0xEE; 32];
        d
    }

    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    fn key(&self) -> DeviceKey {
        let mut seed = self.seed;
        DeviceKey::from_seed(&Key32::from_slice_zeroizing(&mut seed).unwrap()).unwrap()
    }

    /// The self-signed enrollment record (JSON value).
    pub fn record(&self) -> serde_json::Value {
        let r = EnrollmentRecord::new(self.id, &self.key(), 1_764_000_000_000_000);
        serde_json::from_str(&r.to_json()).unwrap()
    }

    /// Seals the next bundle of the chain with `n` mouse moves.
    pub fn seal_next(&mut self, recipient: &Recipient, n: u64) -> SealedBundle {
        let prev = self.sealed.last().map(|b| *b.digest()).unwrap_or([0; 32]);
        let seq = self.sealed.len() as u64 + 1;
        let b = self.seal_at(recipient, seq, prev, n);
        self.sealed.push(b.clone());
        b
    }

    /// Seals the next bundle of the chain with one screenshot of `size` random bytes
    /// (a bundle of about that size).
    pub fn seal_next_screenshot(&mut self, recipient: &Recipient, size: usize) -> SealedBundle {
        let prev = self.sealed.last().map(|b| *b.digest()).unwrap_or([0; 32]);
        let seq = self.sealed.len() as u64 + 1;
        let mut data = vec![0u8; size];
        for chunk in data.chunks_mut(32) {
            let r: [u8; 32] = capvault_format::secret::random_array();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        let event = SeqEvent {
            seq: self.next_event,
            event: Event::Screenshot {
                ts_us: 1_764_000_000_000_000 + self.next_event as i64,
                width: 1920,
                height: 1080,
                format: "png".into(),
                data,
            },
        };
        self.next_event += 1;
        let b = self.seal_events(recipient, seq, prev, &[event]);
        self.sealed.push(b.clone());
        b
    }

    /// Seals a bundle at an arbitrary position (for conflicts), not kept in the chain.
    pub fn seal_at(
        &mut self,
        recipient: &Recipient,
        seq: u64,
        prev: [u8; 32],
        n: u64,
    ) -> SealedBundle {
        let first = self.next_event;
        let events: Vec<SeqEvent> = (0..n)
            .map(|i| SeqEvent {
                seq: first + i,
                event: Event::MouseMove {
                    ts_us: 1_764_000_000_000_000 + (first + i) as i64,
                    x: (first + i) as i32,
                    y: seq as i32,
                },
            })
            .collect();
        self.next_event += n;
        self.seal_events(recipient, seq, prev, &events)
    }

    fn seal_events(
        &self,
        recipient: &Recipient,
        seq: u64,
        prev: [u8; 32],
        events: &[SeqEvent],
    ) -> SealedBundle {
        let input = BundleInput {
            device_id: self.id,
            stream_id: self.stream,
            bundle_seq: seq,
            first_record: seq,
            last_record: seq,
            records_lost: 0,
            prev_digest: prev,
            created_us: 1_764_000_000_000_000,
            purpose: "activity-capture",
            user: &self.user,
            events,
            audit: &[],
        };
        seal_bundle(&input, recipient, &self.key()).expect("seals")
    }
}

pub fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

/// A collector identity written to `dir/collector.identity`.
pub fn identity(dir: &Path) -> (Identity, PathBuf) {
    let id = Identity::generate(Suite::X25519);
    let path = dir.join("collector.identity");
    id.write_to_file(&path).unwrap();
    (id, path)
}

/// Every bundle entry in the segment files under `dir/bundles`, read with the format
/// of docs/COLLECTOR.md (48-byte header: `cvseg01\n`, u64 LE length, SHA-256; then the
/// bytes; zeros between entries, before and after those written directly): (digest
/// hex, segment file, offset of the bytes, length). The digest in each header is
/// checked against the bytes; a cut entry at the end of a segment is left out.
pub fn segment_entries(dir: &Path) -> Vec<(String, PathBuf, u64, usize)> {
    let mut out = Vec::new();
    let Ok(files) = std::fs::read_dir(dir.join("bundles")) else {
        return out;
    };
    for f in files.flatten() {
        let path = f.path();
        if path.extension().is_none_or(|x| x != "seg") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut at = 0usize;
        while at + 48 <= bytes.len() {
            if bytes[at] == 0 {
                at += 1;
                continue;
            }
            assert_eq!(&bytes[at..at + 8], b"cvseg01\n", "{}", path.display());
            let len = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap()) as usize;
            let digest = hex(&bytes[at + 16..at + 48]);
            if at + 48 + len > bytes.len() {
                // The tail of a segment cut by a crash: never referenced by an index row.
                break;
            }
            let data = &bytes[at + 48..at + 48 + len];
            let actual = ring::digest::digest(&ring::digest::SHA256, data);
            assert_eq!(hex(actual.as_ref()), digest, "{}", path.display());
            out.push((digest, path.clone(), (at + 48) as u64, len));
            at += 48 + len;
        }
    }
    out
}

/// Number of distinct bundles in the blob store under `dir/bundles`.
pub fn blob_count(dir: &Path) -> usize {
    let digests: std::collections::HashSet<String> =
        segment_entries(dir).into_iter().map(|e| e.0).collect();
    digests.len()
}

/// `copy-bundles` of `dir` into `out`.
pub fn copy_bundles(dir: &Path, out: &Path) -> Output {
    copy_bundles_with(dir, out, &[])
}

pub fn copy_bundles_with(dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "copy-bundles",
        "--dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    cli(&args)
}

/// `export` of `dir`: (exit code, stdout lines as JSON, stderr).
pub fn export(
    dir: &Path,
    identity: &Path,
    extra: &[&str],
) -> (i32, Vec<serde_json::Value>, String) {
    let mut args = vec![
        "export",
        "--dir",
        dir.to_str().unwrap(),
        "--identity",
        identity.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = cli(&args);
    let lines = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l}: {e}")))
        .collect();
    (out.status.code().unwrap_or(-1), lines, text(&out.stderr))
}

/// Races, on fresh streams of `dev`, a bundle at sequence 1 (to `a`) against a bundle
/// at sequence 2 that does not link to it (to `b`): whichever is stored first, the
/// other must be refused (409); both stored would be a broken chain.
pub fn race_unlinked_neighbours(
    a: SocketAddr,
    b: SocketAddr,
    dev: &mut Device,
    recipient: &Recipient,
    rounds: usize,
) {
    use std::sync::{Arc, Barrier};
    for round in 0..rounds {
        dev.stream = capvault_format::secret::random_array();
        let first = dev.seal_at(recipient, 1, [0; 32], 1);
        let unlinked = dev.seal_at(recipient, 2, [0x77; 32], 1);
        let barrier = Arc::new(Barrier::new(2));
        let send = |addr: SocketAddr, bytes: Vec<u8>| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                request(
                    addr,
                    "POST",
                    "/v1/bundles",
                    "application/octet-stream",
                    &bytes,
                )
                .status
            })
        };
        let t1 = send(a, first.bytes().to_vec());
        let t2 = send(b, unlinked.bytes().to_vec());
        let statuses = [t1.join().unwrap(), t2.join().unwrap()];
        assert!(
            matches!(statuses, [200, 409] | [409, 200]),
            "round {round}: expected one 200 and one 409, got {statuses:?}"
        );
    }
}
