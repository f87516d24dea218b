//! Hand-off: administrative requests to the process that holds a vault open.
//!
//! sled lets one process own a vault directory. When a capture agent holds it, the CLI
//! cannot open it; instead it drops a request file into `<vault>/requests/` and waits
//! for the owner to answer. Every open vault serves these requests from its
//! maintenance thread, woken by a request's arrival (`RequestWatch`), so a capture
//! agent, whether it uses the Rust crate or the C library, answers without any code of
//! its own.
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
//! Who may ask: the serving process opens `requests/` once, when the vault is opened,
//! and from then on reads, renames and writes only relative to that directory handle,
//! never following symbolic links, so renaming or replacing the vault directory later
//! cannot point it at someone else's files. If `requests/` is removed or renamed away,
//! the server makes none (`Home`); it opens the next one a client makes, only in the
//! vault directory it opened and while the vault's path still names that directory, with
//! the same checks (`Requests`). It accepts only small regular files owned
//! by its own uid or by root; anything else is refused (answered, never run). It
//! ignores requests for other users (another handle may serve them) and deletes
//! requests older than [`STALE_AFTER`]. docs/SECURITY.md states the rule.

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

/// Writes `bytes` to `dir/name` atomically (temp file, then rename), owner-only (the
/// holder's answers where no directory handles are available).
#[cfg(not(unix))]
fn write_atomic_for(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io_err("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    let dest = dir.join(name);
    fs::rename(&tmp, &dest).map_err(|e| io_err("cannot rename", &dest, e))
}

/// Writes `bytes` to `name` in the directory `dir` (a handle; `path` names it in
/// messages) atomically: a temp file made anew (never through an existing name), synced,
/// with `owner` given to that uid, then renamed into place. Owner-only.
#[cfg(unix)]
fn write_in(
    dir: &std::os::fd::OwnedFd,
    path: &Path,
    name: &str,
    bytes: &[u8],
    owner: Option<u32>,
) -> Result<()> {
    use rustix::fs::{Mode, OFlags};
    let tmp = format!(".{name}.tmp");
    let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
    let fd = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io_err("cannot create", &path.join(&tmp), e.into()))?;
    let mut f = fs::File::from(fd);
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err("cannot write", &path.join(&tmp), e))?;
    if let Some(uid) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), None)
            .map_err(|e| io_err("cannot hand over", &path.join(&tmp), e))?;
    }
    rustix::fs::renameat(dir, tmp.as_str(), dir, name)
        .map_err(|e| io_err("cannot rename", &path.join(name), e.into()))
}

/// A client's view of a vault's `requests/`: on Unix a handle opened once, without
/// following a link at `requests`, through which every file is made, handed over, read
/// and removed, so nobody who can rename entries in the vault directory can redirect
/// what the client (root, say) creates or reads.
struct ClientDir {
    path: PathBuf,
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
    /// For a root client: the uid whose holder serves this vault (see
    /// [`ClientDir::open`]), whose requests root writes as that uid's and whose answers
    /// root believes.
    holder: Option<u32>,
}

impl ClientDir {
    /// Opens (making it if needed) the `requests/` of the vault at `vault_dir`.
    ///
    /// A root client trusts another uid only when that uid owns both the vault directory
    /// and `requests/` (a holder serves only the `requests/` of its own uid), and only
    /// while a process holds the vault's database lock: a directory someone merely owns,
    /// with nobody holding a vault in it, answers nothing root believes.
    #[cfg(unix)]
    fn open(vault_dir: &Path) -> Result<ClientDir> {
        use rustix::fs::{Mode, OFlags};
        let path = requests_dir(vault_dir);
        let vault = rustix::fs::open(
            vault_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("cannot open", vault_dir, e.into()))?;
        match rustix::fs::mkdirat(&vault, REQUEST_DIR, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_err("cannot create", &path, e.into())),
        }
        let fd = rustix::fs::openat(
            &vault,
            REQUEST_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("cannot open", &path, e.into()))?;
        let uid = rustix::fs::fstat(&fd)
            .map_err(|e| io_err("cannot read", &path, e.into()))?
            .st_uid;
        let vault_uid = rustix::fs::fstat(&vault)
            .map_err(|e| io_err("cannot read", vault_dir, e.into()))?
            .st_uid;
        let holder = (rustix::process::geteuid().is_root()
            && uid != 0
            && vault_uid == uid
            && crate::log::store::held_by_another_process(vault_dir))
        .then_some(uid);
        Ok(ClientDir { path, fd, holder })
    }

    #[cfg(not(unix))]
    fn open(vault_dir: &Path) -> Result<ClientDir> {
        let path = requests_dir(vault_dir);
        if let Err(e) = fs::create_dir(&path) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(io_err("cannot create", &path, e));
            }
        }
        Ok(ClientDir { path, holder: None })
    }

    /// Writes a request atomically (temp file, then rename), owner-only; for a root
    /// client of another uid's holder, the file is that uid's before it is renamed into
    /// place (the holder could not read a root-owned owner-only file).
    #[cfg(unix)]
    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_in(&self.fd, &self.path, name, bytes, self.holder)
    }

    #[cfg(not(unix))]
    fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic_for(&self.path, name, bytes)
    }

    /// Reads a response: a small regular file (not a link) owned by this process's uid
    /// or root, the only ones whose holders it trusts to have run the request, or (a
    /// root client) by the holder's uid. A response written by anyone else (say, a user
    /// who owns a directory above the vault and put a `requests/` of their own in its
    /// place) is never taken for an answer.
    #[cfg(unix)]
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        let me = rustix::process::geteuid().as_raw();
        let is_file = rustix::fs::FileType::from_raw_mode(st.st_mode).is_file();
        if !is_file
            || st.st_size as u64 > MAX_FILE
            || (st.st_uid != me && st.st_uid != 0 && Some(st.st_uid) != self.holder)
        {
            return None;
        }
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut fs::File::from(fd), &mut out).ok()?;
        Some(out)
    }

    #[cfg(not(unix))]
    fn read(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.path.join(name);
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_file() || meta.len() > MAX_FILE {
            return None;
        }
        fs::read(path).ok()
    }

    /// Removes `name`; false when it was not there (taken by the holder meanwhile).
    #[cfg(unix)]
    fn remove(&self, name: &str) -> bool {
        rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty()).is_ok()
    }

    #[cfg(not(unix))]
    fn remove(&self, name: &str) -> bool {
        fs::remove_file(self.path.join(name)).is_ok()
    }
}

fn requests_dir(vault_dir: &Path) -> PathBuf {
    vault_dir.join(REQUEST_DIR)
}

/// What reading one request file gave.
enum Taken {
    Bytes(Vec<u8>),
    /// Not something this process runs: the reason, for the answer.
    Refused(String),
    /// Vanished meanwhile (the client gave up, or another server took it).
    Gone,
}

/// The vault directory as the serving process opened it with the vault. `requests/` is
/// opened only inside it, and opened again (after someone removed or renamed it away)
/// only while the vault's path still names this directory: once the vault directory has
/// moved, whatever is at its old path belongs to whoever put it there. The holder never
/// creates `requests/` after the open (a program deleting the vault directory would
/// find it back and fail); the client creates it when it sends a request.
pub(crate) struct Home {
    path: PathBuf,
    #[cfg(unix)]
    fd: Option<std::os::fd::OwnedFd>,
}

/// The request directory as the serving process holds it (see the module docs).
pub(crate) struct Inbox {
    path: PathBuf,
    #[cfg(unix)]
    fd: std::os::fd::OwnedFd,
    #[cfg(unix)]
    uid: u32,
}

/// Which file a `stat` names: device and inode.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // the field types differ between Unix systems
fn file_id(st: &rustix::fs::Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

#[cfg(unix)]
impl Home {
    /// Opens the vault directory (following a link in its path, as the vault did).
    pub(crate) fn open(vault_dir: &Path) -> Home {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            vault_dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok();
        Home {
            path: vault_dir.to_path_buf(),
            fd,
        }
    }

    /// True when the vault directory opened was removed: nothing can be served again.
    pub(crate) fn gone(&self) -> bool {
        self.fd
            .as_ref()
            .is_none_or(|fd| rustix::fs::fstat(fd).map_or(true, |st| st.st_nlink == 0))
    }

    /// True when the vault's path names another directory than the one opened (or none).
    fn moved(&self) -> bool {
        let Some(fd) = &self.fd else { return true };
        match (rustix::fs::fstat(fd), rustix::fs::stat(&self.path)) {
            (Ok(held), Ok(now)) => file_id(&held) != file_id(&now),
            _ => true,
        }
    }

    /// True while `inbox` is the `requests/` of the vault directory opened.
    fn holds(&self, inbox: &Inbox) -> bool {
        let Some(fd) = &self.fd else { return false };
        let Ok(held) = rustix::fs::fstat(&inbox.fd) else {
            return false;
        };
        held.st_nlink > 0
            && rustix::fs::statat(fd, REQUEST_DIR, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|now| file_id(&now) == file_id(&held))
    }

    /// Opens `requests/` in the vault directory opened, creating it first when `create`
    /// (only when the vault is opened): it must be a directory (not a link) owned by
    /// this process's uid or root and writable by nobody else.
    pub(crate) fn inbox(&self, create: bool) -> Result<Inbox> {
        use rustix::fs::{Mode, OFlags};
        let path = requests_dir(&self.path);
        if self.gone() {
            return Err(Error::Storage(format!(
                "the vault directory {} was removed",
                self.path.display()
            )));
        }
        if self.moved() {
            return Err(Error::Storage(format!(
                "the vault directory is no longer at {}; requests are served again once the \
                 vault is opened again",
                self.path.display()
            )));
        }
        let Some(dir) = &self.fd else {
            return Err(Error::Storage(format!(
                "the vault directory {} cannot be opened",
                self.path.display()
            )));
        };
        if create {
            match rustix::fs::mkdirat(dir, REQUEST_DIR, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io_err("cannot create", &path, e.into())),
            }
        }
        let fd = match rustix::fs::openat(
            dir,
            REQUEST_DIR,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                return Err(Error::Storage(format!(
                    "{} was removed (or could not be made when the vault was opened); it \
                     is served again once a client sends a request (which makes it)",
                    path.display()
                )))
            }
            Err(e) => return Err(io_err("cannot open", &path, e.into())),
        };
        let uid = rustix::process::geteuid().as_raw();
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("cannot inspect", &path, e.into()))?;
        if st.st_uid != uid && st.st_uid != 0 {
            return Err(Error::Storage(format!(
                "{} belongs to uid {}, not to this process (uid {uid}) or root; requests \
                 from other processes are not served until it is removed",
                path.display(),
                st.st_uid
            )));
        }
        if st.st_mode & 0o022 != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
                .map_err(|e| io_err("cannot make private", &path, e.into()))?;
        }
        Ok(Inbox { path, fd, uid })
    }
}

#[cfg(unix)]
impl Inbox {
    fn names(&self) -> Result<Vec<String>> {
        let dir = rustix::fs::Dir::read_from(&self.fd)
            .map_err(|e| io_err("cannot list", &self.path, e.into()))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| io_err("cannot list", &self.path, e.into()))?;
            if let Ok(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> Taken {
        use rustix::fs::{FileType, Mode, OFlags};
        use std::io::Read;
        let fd = match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Taken::Gone,
            Err(rustix::io::Errno::LOOP) => {
                return Taken::Refused("the request is a symbolic link".into())
            }
            Err(e) => return Taken::Refused(format!("the request cannot be opened: {e}")),
        };
        let st = match rustix::fs::fstat(&fd) {
            Ok(st) => st,
            Err(e) => return Taken::Refused(format!("the request cannot be inspected: {e}")),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Taken::Refused("the request is not a regular file".into());
        }
        if st.st_uid != self.uid && st.st_uid != 0 {
            return Taken::Refused(format!(
                "the request file belongs to uid {}; the process holding the vault runs as \
                 uid {} and accepts requests only from that uid or root",
                st.st_uid, self.uid
            ));
        }
        let mut bytes = Vec::new();
        match fs::File::from(fd)
            .take(MAX_FILE + 1)
            .read_to_end(&mut bytes)
        {
            Ok(n) if n as u64 <= MAX_FILE => Taken::Bytes(bytes),
            Ok(_) => Taken::Refused("the request is too large".into()),
            Err(e) => Taken::Refused(format!("the request cannot be read: {e}")),
        }
    }

    fn rename(&self, from: &str, to: &str) -> bool {
        rustix::fs::renameat(&self.fd, from, &self.fd, to).is_ok()
    }

    fn remove(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty());
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_in(&self.fd, &self.path, name, bytes, None)
    }
}

/// Without directory handles, by path (no uid to check against).
#[cfg(not(unix))]
impl Home {
    pub(crate) fn open(vault_dir: &Path) -> Home {
        Home {
            path: vault_dir.to_path_buf(),
        }
    }

    pub(crate) fn gone(&self) -> bool {
        !self.path.is_dir()
    }

    fn holds(&self, inbox: &Inbox) -> bool {
        inbox.path.is_dir()
    }

    pub(crate) fn inbox(&self, create: bool) -> Result<Inbox> {
        let path = requests_dir(&self.path);
        if create {
            if let Err(e) = fs::create_dir(&path) {
                if e.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(io_err("cannot create", &path, e));
                }
            }
        }
        if !path.is_dir() {
            return Err(Error::Storage(format!(
                "{} was removed; it is served again once a client sends a request \
                 (which creates it)",
                path.display()
            )));
        }
        Ok(Inbox { path })
    }
}

/// Without directory handles, by path.
#[cfg(not(unix))]
impl Inbox {
    fn names(&self) -> Result<Vec<String>> {
        let entries = fs::read_dir(&self.path).map_err(|e| io_err("cannot list", &self.path, e))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect())
    }

    fn read(&self, name: &str) -> Taken {
        let path = self.path.join(name);
        match fs::symlink_metadata(&path) {
            Err(_) => Taken::Gone,
            Ok(m) if !m.file_type().is_file() => {
                Taken::Refused("the request is not a regular file".into())
            }
            Ok(m) if m.len() > MAX_FILE => Taken::Refused("the request is too large".into()),
            Ok(_) => fs::read(&path).map_or(Taken::Gone, Taken::Bytes),
        }
    }

    fn rename(&self, from: &str, to: &str) -> bool {
        fs::rename(self.path.join(from), self.path.join(to)).is_ok()
    }

    fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.path.join(name));
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic_for(&self.path, name, bytes)
    }
}

impl Inbox {
    fn answer(&self, id: &str, resp: &Response) -> Result<()> {
        let bytes = serde_json::to_vec(resp).expect("responses serialize");
        self.write_atomic(&format!("{id}.resp"), &bytes)?;
        self.remove(&format!("{id}.taken"));
        Ok(())
    }

    /// Takes request `id` (exactly one server wins the rename) and answers `e`.
    fn refuse(&self, id: &str, e: &Error) -> Result<bool> {
        if !self.rename(&format!("{id}.req"), &format!("{id}.taken")) {
            return Ok(false);
        }
        self.answer(id, &Response::err(id, e))?;
        Ok(true)
    }
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

/// The request in the bytes of file `<id>.req`, if they hold one of this protocol
/// version that names that id.
pub(crate) fn parse_request(bytes: &[u8], id: &str) -> Option<Request> {
    serde_json::from_slice::<Request>(bytes)
        .ok()
        .filter(|r| r.v == VERSION && r.id == id)
}

/// Answers the pending hand-off requests for the user of `inner`. Requests for other
/// users are left for the handle that serves them. Returns how many were answered.
/// Serves the requests waiting in `inbox`. Returns when a request left for another
/// user falls stale and should be removed (`None`: none is left).
pub(crate) fn serve_requests(inner: &Inner, inbox: &Inbox) -> Result<Option<i64>> {
    let mut stale_at: Option<i64> = None;
    let mut pending: Vec<(i64, String, Request)> = Vec::new();
    for name in inbox.names()? {
        let Some(id) = name.strip_suffix(".req") else {
            continue;
        };
        if !valid_id(id) {
            continue;
        }
        let bytes = match inbox.read(&name) {
            Taken::Bytes(b) => b,
            Taken::Gone => continue,
            Taken::Refused(why) => {
                let e = Error::InvalidArgument(format!("hand-off request refused: {why}"));
                inbox.refuse(id, &e)?;
                continue;
            }
        };
        let req = parse_request(&bytes, id);
        let Some(req) = req else {
            // Not a request we understand: answer so the client does not hang.
            let e = Error::InvalidArgument("malformed hand-off request".into());
            inbox.refuse(id, &e)?;
            continue;
        };
        if now_us() - req.created_us > STALE_AFTER.as_micros() as i64 {
            inbox.remove(&name);
            continue;
        }
        if req.user != inner.user {
            let at = req
                .created_us
                .saturating_add(STALE_AFTER.as_micros() as i64);
            stale_at = Some(stale_at.map_or(at, |s| s.min(at)));
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
        if !inbox.rename(&format!("{id}.req"), &format!("{id}.taken")) {
            continue;
        }
        let resp = match execute(inner, &req.op) {
            Ok(v) => Response::ok(&id, v),
            Err(e) => Response::err(&id, &e),
        };
        inbox.answer(&id, &resp)?;
    }
    Ok(stale_at)
}

/// The hand-off as the maintenance thread serves it: the vault directory opened
/// ([`Home`]), its request directory ([`Inbox`]) and the watch that wakes the thread.
///
/// The watch wakes the thread when a request arrives, and when `requests/` is removed,
/// renamed, made or changes owner in the vault directory. Without `requests/` the thread
/// waits for a client to make a new one (never making one itself) and then opens it, so
/// an idle vault does not poll; meanwhile `status` says the hand-off is not served.
pub(crate) struct Requests {
    home: Home,
    inbox: Option<Inbox>,
    /// Why there is no inbox.
    problem: Option<String>,
    watch: Option<RequestWatch>,
}

impl Requests {
    /// Opens the vault directory and its `requests/`, creating that if needed (when the
    /// vault is opened, so that what is served is this vault's request directory even if
    /// the vault directory is renamed or replaced later).
    pub(crate) fn open(vault_dir: &Path) -> Requests {
        let home = Home::open(vault_dir);
        let (inbox, problem) = match home.inbox(true) {
            Ok(inbox) => (Some(inbox), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Requests {
            home,
            inbox,
            problem,
            watch: None,
        }
    }

    /// Starts the watch; `wake` is called from its own thread.
    pub(crate) fn start(&mut self, wake: impl Fn() + Send + 'static) {
        let mut watch = RequestWatch::start(&self.home, wake);
        if let Some(inbox) = &self.inbox {
            watch.inbox(inbox);
        }
        self.watch = Some(watch);
    }

    /// Makes sure the directory served is the vault's `requests/`: when it was removed or
    /// renamed away, opens the one there now, if any (see [`Home`]). Returns why
    /// requests are not served, for `status`.
    pub(crate) fn refresh(&mut self) -> Option<String> {
        if self.inbox.as_ref().is_some_and(|i| self.home.holds(i)) {
            return None;
        }
        match self.home.inbox(false) {
            Ok(inbox) => {
                if let Some(w) = &mut self.watch {
                    w.inbox(&inbox);
                }
                self.inbox = Some(inbox);
                self.problem = None;
            }
            Err(e) => {
                self.inbox = None;
                self.problem = Some(e.to_string());
            }
        }
        self.problem
            .as_ref()
            .map(|e| format!("hand-off requests are not served: {e}"))
    }

    /// Serves the requests waiting ([`serve_requests`]), if `requests/` is open.
    pub(crate) fn serve(&self, inner: &Inner) -> Result<Option<i64>> {
        match &self.inbox {
            Some(inbox) => serve_requests(inner, inbox),
            None => Ok(None),
        }
    }

    /// True when nothing wakes the thread for what it waits for (no inotify here), so it
    /// must look again in a moment. A removed vault directory is waited for by nobody.
    pub(crate) fn needs_polling(&self) -> bool {
        let watched = self
            .watch
            .as_ref()
            .is_some_and(|w| w.is_watching(self.inbox.is_some()));
        !watched && (self.inbox.is_some() || !self.home.gone())
    }
}

/// Wakes the maintenance thread (inotify, through the directory handles, not paths)
/// when a request arrives in the `requests/` held, so an idle vault does not poll for
/// requests, and when `requests/` is removed, renamed, made or changes owner in the
/// vault directory. Where it cannot run (not Linux, inotify refused)
/// [`RequestWatch::is_watching`] says so and the maintenance thread looks twice a second
/// instead.
pub(crate) struct RequestWatch {
    #[cfg(target_os = "linux")]
    watching: Option<LinuxWatch>,
}

#[cfg(target_os = "linux")]
struct LinuxWatch {
    inotify: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The vault directory's watch.
    home: i32,
    /// The request directory's watch, while one is held.
    inbox: Option<i32>,
    alive: std::sync::Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RequestWatch {
    /// Watches the vault directory; `arrived` is called from the watch's own thread.
    pub(crate) fn start(home: &Home, arrived: impl Fn() + Send + 'static) -> RequestWatch {
        #[cfg(target_os = "linux")]
        {
            RequestWatch {
                watching: home
                    .fd
                    .as_ref()
                    .and_then(|fd| LinuxWatch::start(fd, arrived).ok()),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (home, arrived);
            RequestWatch {}
        }
    }

    /// Watches `inbox` for requests (instead of the one watched before, if any).
    pub(crate) fn inbox(&mut self, inbox: &Inbox) {
        #[cfg(target_os = "linux")]
        if let Some(w) = &mut self.watching {
            w.inbox(inbox);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = inbox;
    }

    /// True while changes are reported (with `inbox`: also requests arriving).
    pub(crate) fn is_watching(&self, inbox: bool) -> bool {
        #[cfg(target_os = "linux")]
        {
            use std::sync::atomic::Ordering;
            self.watching
                .as_ref()
                .is_some_and(|w| w.alive.load(Ordering::Acquire) && (!inbox || w.inbox.is_some()))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = inbox;
            false
        }
    }
}

#[cfg(target_os = "linux")]
fn proc_fd(fd: &std::os::fd::OwnedFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

#[cfg(target_os = "linux")]
impl LinuxWatch {
    fn start(
        home: &std::os::fd::OwnedFd,
        arrived: impl Fn() + Send + 'static,
    ) -> std::io::Result<LinuxWatch> {
        use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC)?);
        // What happens to `requests/` in the vault directory (a removal shows here: the
        // removed directory's own watch hears nothing while it is held open), and the
        // vault directory's own renaming.
        let home_wd = inotify::add_watch(
            &*fd,
            proc_fd(home).as_str(),
            WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::MOVED_FROM
                | WatchFlags::MOVED_TO
                | WatchFlags::ATTRIB
                | WatchFlags::MOVE_SELF
                | WatchFlags::ONLYDIR,
        )?;
        let alive = Arc::new(AtomicBool::new(true));
        let (reader_fd, reader_alive) = (fd.clone(), alive.clone());
        let reader = std::thread::Builder::new()
            .name("capvault-requests".into())
            .spawn(move || {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
                let mut events = inotify::Reader::new(&*reader_fd, &mut buf);
                loop {
                    match events.next() {
                        // The vault directory's watch was removed (by `drop`).
                        Ok(e) if e.wd() == home_wd && e.events().contains(ReadFlags::IGNORED) => {
                            break
                        }
                        // Other entries of the vault directory (sled's files) are not news.
                        Ok(e)
                            if e.wd() == home_wd
                                && e.file_name()
                                    .is_some_and(|n| n.to_bytes() != REQUEST_DIR.as_bytes()) => {}
                        Ok(_) => arrived(),
                        Err(rustix::io::Errno::INTR) => {}
                        Err(_) => break,
                    }
                }
                reader_alive.store(false, Ordering::Release);
                // Whatever arrived before the end is looked at by the poll that follows.
                arrived();
            })?;
        Ok(LinuxWatch {
            inotify: fd,
            home: home_wd,
            inbox: None,
            alive,
            reader: Some(reader),
        })
    }

    fn inbox(&mut self, inbox: &Inbox) {
        use rustix::fs::inotify::{self, WatchFlags};
        if let Some(wd) = self.inbox.take() {
            let _ = inotify::remove_watch(&*self.inotify, wd);
        }
        // However a request appears: renamed into place (the protocol), written in
        // place, or created as a link (refused, but answered).
        self.inbox = inotify::add_watch(
            &*self.inotify,
            proc_fd(&inbox.fd).as_str(),
            WatchFlags::MOVED_TO
                | WatchFlags::CREATE
                | WatchFlags::CLOSE_WRITE
                | WatchFlags::ONLYDIR,
        )
        .ok();
    }
}

#[cfg(target_os = "linux")]
impl Drop for LinuxWatch {
    fn drop(&mut self) {
        // Removing the watch queues IN_IGNORED, which ends the reader's blocking read.
        if let Some(wd) = self.inbox.take() {
            let _ = rustix::fs::inotify::remove_watch(&*self.inotify, wd);
        }
        let _ = rustix::fs::inotify::remove_watch(&*self.inotify, self.home);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
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
    let dir = ClientDir::open(vault_dir).map_err(HandoffError::Io)?;
    let id = random_id();
    // Once taken, an erase may first wait for the holder's upload to stop: at most one
    // stalled socket write before its next piece.
    let taken_wait = match op {
        Op::Erase => crate::vault::send_gate::PIECE_WRITE_TIMEOUT + Duration::from_secs(30),
        _ => Duration::from_secs(30),
    };
    let req = Request {
        v: VERSION,
        id: id.clone(),
        user: user.into(),
        created_us: now_us(),
        op,
    };
    let bytes = serde_json::to_vec(&req).expect("requests serialize");
    dir.write(&format!("{id}.req"), &bytes)
        .map_err(HandoffError::Io)?;
    let resp = format!("{id}.resp");
    let poll = |deadline: Instant| -> Option<Response> {
        loop {
            if let Some(b) = dir.read(&resp) {
                dir.remove(&resp);
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
    match dir.remove(&format!("{id}.req")) {
        true => Err(HandoffError::NoAnswer),
        false => {
            // Taken: the owner is working on it (a KEK rotation over a big vault takes a
            // while). Wait as long again, at least 30 s (90 s for an erase).
            let more = wait.max(taken_wait);
            poll(Instant::now() + more).ok_or(HandoffError::Accepted)
        }
    }
}
