//! Hand-off: administrative requests to the process that holds a vault open.
//!
//! sled lets one process own a vault directory. When a capture agent holds it, the CLI
//! cannot open it; instead it drops a request file into `<vault>/requests/` and waits
//! for the owner to answer. Every open vault serves these requests from its
//! maintenance thread (about twice a second), so a capture agent, whether it uses the
//! Rust crate or the C library, answers without any code of its own.
//!
//! Protocol (docs/CLI.md, "Hand-off"), all files 0600 in a 0700 directory:
//!
//! 1. client: writes `.<id>.req.tmp`, renames it to `<id>.req` (atomic: the owner never
//!    sees a half-written request). `<id>` is 32 random lower-case hex digits.
//! 2. owner: takes the request by renaming `<id>.req` to `<id>.taken` (exactly one
//!    owner wins), checks it, runs it, writes `.<id>.resp.tmp`, renames it to
//!    `<id>.resp`, deletes `<id>.taken`.
//! 3. client: reads and deletes `<id>.resp`. On timeout it deletes `<id>.req`; if that
//!    works nobody took the request and nothing happened. If the file is gone the owner
//!    took it, and the client waits a while longer for the answer.
//!
//! Only the vault directory's owner (or root) can write there: the directory is 0700.
//! The owner still refuses anything that is not a small regular file owned by the
//! directory's owner, ignores requests for other users (another handle may serve
//! them), and deletes requests older than [`STALE_AFTER`].

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::vault::Inner;

/// Protocol version in every request and response.
pub const VERSION: u32 = 1;
/// Name of the request directory inside the vault directory.
pub const REQUEST_DIR: &str = "requests";
/// Requests older than this are deleted unanswered (their client has given up).
pub const STALE_AFTER: Duration = Duration::from_secs(300);
/// Largest accepted request or response file.
const MAX_FILE: u64 = 64 * 1024;

/// What a client asks the owner to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// `Vault::status` (answer: the status object).
    Status,
    /// Same as status (the CLI shows the key part of it).
    KeysList,
    /// `Vault::rotate_dek` (answer: `{"epoch": N}`).
    RotateDek,
    /// `Vault::rotate_kek` (answer: `{"kek_version": N}`).
    RotateKek,
    /// `Vault::pause` (answer: `{"paused_until_us": T}`).
    Pause {
        /// Pause length in seconds.
        secs: u64,
    },
    /// `Vault::resume` (answer: `{}`).
    Resume,
    /// Crypto-shred the user; the owner's handle then reports the vault erased.
    Erase,
    /// `Vault::enrollment_record` (answer: `{"record": {enrollment record}}`).
    Enroll,
}

/// A request file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Protocol version ([`VERSION`]).
    pub v: u32,
    /// Random id, also the file name.
    pub id: String,
    /// The user whose data the request concerns.
    pub user: String,
    /// When the request was made (microseconds since the Unix epoch).
    pub created_us: i64,
    /// What to do.
    #[serde(flatten)]
    pub op: Op,
}

/// A response file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version ([`VERSION`]).
    pub v: u32,
    /// The request's id.
    pub id: String,
    /// True when the operation succeeded.
    pub ok: bool,
    /// The operation's result on success.
    #[serde(default)]
    pub result: serde_json::Value,
    /// On failure: `tampered`, `keychain`, `storage`, `storage-full`, `invalid`,
    /// `erased`, `not-found`, `in-use`, `closed` or `refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// On failure: the error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    fn ok(id: &str, result: serde_json::Value) -> Self {
        Response {
            v: VERSION,
            id: id.into(),
            ok: true,
            result,
            error_kind: None,
            error: None,
        }
    }
    fn err(id: &str, e: &Error) -> Self {
        let kind = match e {
            Error::InvalidArgument(_) => "invalid",
            Error::Keychain(_) => "keychain",
            Error::Storage(_) => "storage",
            Error::StorageFull(_) => "storage-full",
            Error::Tampered(_) => "tampered",
            Error::InUse => "in-use",
            Error::Erased => "erased",
            Error::NotFound(_) => "not-found",
            Error::Closed => "closed",
        };
        Response {
            v: VERSION,
            id: id.into(),
            ok: false,
            result: serde_json::Value::Null,
            error_kind: Some(kind.into()),
            error: Some(e.to_string()),
        }
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

/// Writes `bytes` to `dir/name` atomically (temp file, then rename), owner-only.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let _ = fs::remove_file(&tmp);
    let mut f = opts
        .open(&tmp)
        .map_err(|e| io_err("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    let dest = dir.join(name);
    fs::rename(&tmp, &dest).map_err(|e| io_err("cannot rename", &dest, e))
}

/// Reads a small regular file owned by the same user as `dir`; refuses symbolic links,
/// other owners and oversized files.
fn read_checked(dir: &Path, path: &Path) -> Option<Vec<u8>> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_file() || meta.len() > MAX_FILE {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let dir_meta = fs::metadata(dir).ok()?;
        if meta.uid() != dir_meta.uid() {
            return None;
        }
    }
    fs::read(path).ok()
}

fn requests_dir(vault_dir: &Path) -> PathBuf {
    vault_dir.join(REQUEST_DIR)
}

fn answer(dir: &Path, id: &str, resp: &Response) -> Result<()> {
    let bytes = serde_json::to_vec(resp).expect("responses serialize");
    write_atomic(dir, &format!("{id}.resp"), &bytes)?;
    let _ = fs::remove_file(dir.join(format!("{id}.taken")));
    Ok(())
}

fn execute(inner: &Inner, op: &Op) -> Result<serde_json::Value> {
    Ok(match op {
        Op::Status | Op::KeysList => {
            serde_json::to_value(inner.status()?).expect("status serializes")
        }
        Op::RotateDek => serde_json::json!({ "epoch": inner.rotate_dek("requested")? }),
        Op::RotateKek => serde_json::json!({ "kek_version": inner.rotate_kek()? }),
        Op::Pause { secs } => {
            serde_json::json!({ "paused_until_us": inner.pause(Duration::from_secs(*secs))? })
        }
        Op::Resume => {
            inner.resume()?;
            serde_json::json!({})
        }
        Op::Erase => {
            inner.erase_in_place()?;
            serde_json::json!({})
        }
        Op::Enroll => {
            let record: serde_json::Value =
                serde_json::from_str(&inner.enrollment_record()?.to_json())
                    .expect("an enrollment record is JSON");
            serde_json::json!({ "record": record })
        }
    })
}

/// Answers the pending hand-off requests for the user of `inner`. Requests for other
/// users are left for the handle that serves them. Returns how many were answered.
pub(crate) fn serve_requests(inner: &Inner, vault_dir: &Path) -> Result<usize> {
    let dir = requests_dir(vault_dir);
    let mut answered = 0;
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("cannot list", &dir, e)),
    };
    let mut pending: Vec<(i64, String, Request)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name.strip_suffix(".req") else {
            continue;
        };
        if !valid_id(id) {
            continue;
        }
        let path = dir.join(name);
        let req = read_checked(&dir, &path)
            .and_then(|b| serde_json::from_slice::<Request>(&b).ok())
            .filter(|r| r.v == VERSION && r.id == id);
        let Some(req) = req else {
            // Not a request we understand: answer so the client does not hang.
            if fs::rename(&path, dir.join(format!("{id}.taken"))).is_ok() {
                let e = Error::InvalidArgument("malformed hand-off request".into());
                answer(&dir, id, &Response::err(id, &e))?;
                answered += 1;
            }
            continue;
        };
        if now_us() - req.created_us > STALE_AFTER.as_micros() as i64 {
            let _ = fs::remove_file(&path);
            continue;
        }
        if req.user != inner.user {
            continue;
        }
        pending.push((req.created_us, id.to_string(), req));
    }
    // Oldest first, so a rotate queued before an erase runs before it.
    pending.sort_by_key(|(t, id, _)| (*t, id.clone()));
    for (_, id, req) in pending {
        if inner.is_erased() {
            break; // nothing more can be done with this handle
        }
        // Take the request; if the rename fails another server (or the client's timeout)
        // got there first.
        if fs::rename(
            dir.join(format!("{id}.req")),
            dir.join(format!("{id}.taken")),
        )
        .is_err()
        {
            continue;
        }
        let resp = match execute(inner, &req.op) {
            Ok(v) => Response::ok(&id, v),
            Err(e) => Response::err(&id, &e),
        };
        answer(&dir, &id, &resp)?;
        answered += 1;
    }
    Ok(answered)
}

// ----- client side -----

/// Why a hand-off did not produce an answer.
#[derive(Debug)]
pub enum HandoffError {
    /// Nobody took the request before the timeout; nothing happened.
    NoAnswer,
    /// The owner took the request but did not answer in time; it may still complete.
    Accepted,
    /// The request could not be written.
    Io(Error),
}

fn random_id() -> String {
    data_encoding::HEXLOWER.encode(&capvault_format::secret::random_array::<16>())
}

/// Sends `op` to the process holding the vault and waits up to `wait` for its answer.
pub fn request(
    vault_dir: &Path,
    user: &str,
    op: Op,
    wait: Duration,
) -> Result<Response, HandoffError> {
    let dir = requests_dir(vault_dir);
    let mut b = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    if let Err(e) = b.create(&dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(HandoffError::Io(io_err("cannot create", &dir, e)));
        }
    }
    let id = random_id();
    let req = Request {
        v: VERSION,
        id: id.clone(),
        user: user.into(),
        created_us: now_us(),
        op,
    };
    let bytes = serde_json::to_vec(&req).expect("requests serialize");
    write_atomic(&dir, &format!("{id}.req"), &bytes).map_err(HandoffError::Io)?;
    let resp_path = dir.join(format!("{id}.resp"));
    let poll = |deadline: Instant| -> Option<Response> {
        loop {
            if let Some(b) = read_checked(&dir, &resp_path) {
                let _ = fs::remove_file(&resp_path);
                return serde_json::from_slice::<Response>(&b)
                    .ok()
                    .filter(|r| r.id == id);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    };
    if let Some(r) = poll(Instant::now() + wait) {
        return Ok(r);
    }
    match fs::remove_file(dir.join(format!("{id}.req"))) {
        Ok(()) => Err(HandoffError::NoAnswer),
        Err(_) => {
            // Taken: the owner is working on it (a KEK rotation over a big vault takes a
            // while). Wait as long again, at least 30 s.
            let more = wait.max(Duration::from_secs(30));
            poll(Instant::now() + more).ok_or(HandoffError::Accepted)
        }
    }
}
