//! Helpers shared by the integration tests (`mod common;` in each test file).
// Each test file uses a different subset of these.
#![allow(dead_code)]

pub mod collector;
pub mod threads;

use std::path::{Path, PathBuf};

use capvault::KeyStoreKind;

/// A second uid for the tests that need one (no account needed: `setpriv` switches to
/// it), one per test process. The kernel's key quota is per uid and shared by every
/// process on the machine (containers on one host included): a fixed uid would collect
/// the keys of every run that ever died before removing them, until its quota is full.
/// Away from the uid tests/handoff.rs uses, so their keyrings never meet, and never the
/// uid of an account (directory services hand out uids in this range too).
pub fn other_uid() -> u32 {
    static UID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UID.get_or_init(|| loop {
        let uid = 3_000_000 + rand::random::<u32>() % 1_000_000;
        let taken = std::process::Command::new("getent")
            .args(["passwd", &uid.to_string()])
            .output()
            .is_ok_and(|o| o.status.success());
        if !taken {
            return uid;
        }
    })
}

/// The keychains every keychain-backed test runs against on this platform. Opening
/// one that is not usable fails with a message saying what to start; run the suite
/// through `bash scripts/test.sh`, which provides both on Linux.
pub fn stores() -> Vec<KeyStoreKind> {
    if cfg!(target_os = "linux") {
        vec![KeyStoreKind::SecretService, KeyStoreKind::Keyutils]
    } else if cfg!(target_os = "macos") {
        vec![KeyStoreKind::MacosKeychain]
    } else if cfg!(target_os = "windows") {
        vec![KeyStoreKind::WindowsCredential]
    } else {
        Vec::new()
    }
}

/// Every regular file under `dir`, recursively, in a stable (sorted) order.
/// Symbolic links are listed, not followed.
pub fn files_under(dir: impl AsRef<Path>) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
            let path = entry.path();
            let kind = entry
                .file_type()
                .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
            if kind.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir.as_ref(), &mut out);
    out.sort();
    out
}

/// Options for tests: the given keychain, everything else default.
pub fn options(kind: KeyStoreKind) -> capvault::VaultOptions {
    let mut o = capvault::VaultOptions::default();
    o.keystore = kind;
    o
}

/// Reads a capvault secret straight from the OS keychain with the platform's own tool
/// (secret-tool or keyctl), independent of capvault's code. `None` when absent.
pub fn keychain_secret(kind: KeyStoreKind, name: &str) -> Option<Vec<u8>> {
    use std::process::Command;
    match kind {
        KeyStoreKind::SecretService => {
            let out = Command::new("secret-tool")
                .args(["lookup", "service", "capvault", "username", name])
                .output()
                .expect("secret-tool is installed by scripts/test.sh");
            (out.status.success() && !out.stdout.is_empty()).then_some(out.stdout)
        }
        KeyStoreKind::Keyutils => {
            let id = Command::new("keyctl")
                .args(["search", "@u", "user", &format!("capvault:{name}")])
                .output()
                .expect("keyctl is installed by scripts/test.sh");
            if !id.status.success() {
                return None;
            }
            let id = String::from_utf8(id.stdout).unwrap();
            let out = Command::new("keyctl")
                .args(["pipe", id.trim()])
                .output()
                .unwrap();
            out.status.success().then_some(out.stdout)
        }
        other => panic!("no independent reader for {other:?}"),
    }
}

/// Name of a user's KEK entry (docs/FORMAT.md, "Keychain entries").
pub fn kek_name(vault_id_hex: &str, user: &str, version: u32) -> String {
    let user_hex: String = user.bytes().map(|b| format!("{b:02x}")).collect();
    format!("kek/{vault_id_hex}/{user_hex}/v{version}")
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The sled tree `name` (`log`, `keys`, `state`, `ledger`) of `user` in a raw vault
/// database (docs/FORMAT.md: trees are named `u/<hex(user)>/<name>`).
pub fn user_tree(db: &sled::Db, user: &str, name: &str) -> sled::Tree {
    let hex: String = user.bytes().map(|b| format!("{b:02x}")).collect();
    db.open_tree(format!("u/{hex}/{name}")).unwrap()
}

/// Moves a closed vault. Open refuses a copy of a vault while the original is still
/// where the vault's keychain file says it lives (docs/SECURITY.md, "Copies of a
/// vault"); a test that opens copies of a vault makes it elsewhere and moves it, so that
/// every copy is a moved vault.
pub fn move_vault(from: &Path, to: &Path) {
    std::fs::rename(from, to).unwrap();
}

/// `cp -a from to`: the copy an administrator makes of a vault directory (a backup, or a
/// move to another file system), modes and times kept.
pub fn cp_a(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status();
    assert!(
        st.unwrap().success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Copies the directory tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Where record `seq` of `user`'s log is in a closed vault (docs/FORMAT.md §2,
/// "Storage"), read from the raw database: the segment file, the entry's offset and the
/// record's bytes.
pub fn record_entry(dir: &Path, user: &str, seq: u64) -> (PathBuf, u64, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let db = capvault::testing::open_raw_db(dir);
    let mut key = vec![0u8];
    key.extend_from_slice(&seq.to_be_bytes());
    let loc = user_tree(&db, user, "log")
        .get(&key)
        .unwrap()
        .unwrap_or_else(|| panic!("record {seq} is indexed"));
    assert_eq!(
        (loc.len(), loc[0]),
        (26, 0xC5),
        "record {seq} is in a segment"
    );
    let segment = u32::from_be_bytes(loc[2..6].try_into().unwrap());
    let offset = u64::from_be_bytes(loc[6..14].try_into().unwrap());
    let len = u32::from_be_bytes(loc[14..18].try_into().unwrap());
    let path = capvault::testing::segment_dir(dir, user).join(format!("{segment:010}"));
    let mut bytes = vec![0u8; len as usize];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut bytes, offset + 16)
        .unwrap();
    (path, offset, bytes)
}

/// Writes `bytes` as the entry of record `seq` at `offset` in `segment` of a closed
/// vault, with its entry header and its index location made to match (length, checksum,
/// sequence number): what an attacker with write access and no keys can do. Only the
/// record's AEAD and the chain are left to notice.
pub fn forge_entry(dir: &Path, user: &str, seq: u64, segment: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let crc = crc32fast::hash(bytes);
    let mut entry = seq.to_be_bytes().to_vec();
    entry.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    entry.extend_from_slice(&crc.to_be_bytes());
    entry.extend_from_slice(bytes);
    std::fs::OpenOptions::new()
        .write(true)
        .open(segment)
        .unwrap()
        .write_all_at(&entry, offset)
        .unwrap();
    let db = capvault::testing::open_raw_db(dir);
    let log = user_tree(&db, user, "log");
    let mut key = vec![0u8];
    key.extend_from_slice(&seq.to_be_bytes());
    let mut loc = log.get(&key).unwrap().expect("indexed").to_vec();
    let n: u32 = segment
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    loc[2..6].copy_from_slice(&n.to_be_bytes());
    loc[6..14].copy_from_slice(&offset.to_be_bytes());
    loc[14..18].copy_from_slice(&(bytes.len() as u32).to_be_bytes());
    loc[18..22].copy_from_slice(&crc.to_be_bytes());
    log.insert(&key, loc).unwrap();
    db.flush().unwrap();
}

/// Edits record `seq`'s bytes in place (same length) with every checksum made to match.
pub fn forge_record(dir: &Path, user: &str, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) {
    let (path, offset, mut bytes) = record_entry(dir, user, seq);
    let len = bytes.len();
    edit(&mut bytes);
    assert_eq!(bytes.len(), len, "an edit in place keeps the length");
    forge_entry(dir, user, seq, &path, offset, &bytes);
}

/// SplitMix64: small and deterministic, for seeded test schedules.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A small tmpfs mounted for the test (the suite runs as root), unmounted on drop: a
/// disk that really fills up.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap().keep();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount(8) is available");
        assert!(
            st.success(),
            "cannot mount a tmpfs for a disk-full test: run the suite as root (scripts/test.sh in CI is)"
        );
        Tmpfs(dir)
    }

    /// Bytes still free.
    pub fn avail(&self) -> u64 {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.0)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Stores a capvault secret straight into the OS keychain with the platform's own tool
/// (secret-tool or keyctl), with the permissions capvault gives its keys.
pub fn put_keychain_secret(kind: KeyStoreKind, name: &str, secret: &[u8]) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    match kind {
        KeyStoreKind::SecretService => {
            let mut child = Command::new("secret-tool")
                .args([
                    "store", "--label", name, "service", "capvault", "username", name,
                ])
                .stdin(Stdio::piped())
                .spawn()
                .expect("secret-tool is installed by scripts/test.sh");
            child.stdin.take().unwrap().write_all(secret).unwrap();
            assert!(child.wait().unwrap().success());
        }
        KeyStoreKind::Keyutils => {
            let mut child = Command::new("keyctl")
                .args(["padd", "user", &format!("capvault:{name}"), "@u"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("keyctl is installed by scripts/test.sh");
            child.stdin.take().unwrap().write_all(secret).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            let id = String::from_utf8(out.stdout).unwrap();
            let perm = Command::new("keyctl")
                .args(["setperm", id.trim(), "0x3f3f0000"])
                .status()
                .unwrap();
            assert!(perm.success());
        }
        other => panic!("no independent writer for {other:?}"),
    }
}

/// The files of the user's record segments (the log's other half: an older copy of the
/// log comes with its segments).
pub fn segments_snapshot(dir: &Path, user: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let seg = capvault::testing::segment_dir(dir, user);
    let mut files: Vec<_> = std::fs::read_dir(&seg)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no segment file in {}", seg.display());
    files
}

/// Puts the segment files of `files` back in place of the current ones.
pub fn segments_restore(dir: &Path, user: &str, files: &[(std::path::PathBuf, Vec<u8>)]) {
    let seg = capvault::testing::segment_dir(dir, user);
    for e in std::fs::read_dir(&seg).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (p, bytes) in files {
        std::fs::write(p, bytes).unwrap();
    }
}

/// A value of one of user `alice`'s trees in the closed vault at `dir`.
pub fn alice_value(dir: &Path, tree: &str, key: &[u8]) -> Option<Vec<u8>> {
    let db = capvault::testing::open_raw_db(dir);
    let v = user_tree(&db, "alice", tree).get(key).unwrap();
    v.map(|v| v.to_vec())
}

/// Every entry of one of user `alice`'s trees in the closed vault at `dir`.
pub fn alice_entries(dir: &Path, tree: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = capvault::testing::open_raw_db(dir);
    user_tree(&db, "alice", tree)
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// Appends `n` mouse moves (timestamps from a fixed moment plus `from`) and flushes.
pub fn flushed_moves(v: &capvault::Vault, n: i64, from: i64) {
    try_flushed_moves(v, n, from).unwrap();
}

/// Puts what `make` creates in place of the file at `path` of an open vault. The
/// durability mark is written right after a flush returns, so the vault may put its file
/// back in between: tried again until `make` finds the name free.
pub fn replace_in_open_vault(path: &Path, make: impl Fn(&Path) -> std::io::Result<()>) {
    for _ in 0..400 {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot remove {}: {e}", path.display()),
        }
        match make(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("cannot create {}: {e}", path.display()),
        }
    }
    panic!("{} kept coming back", path.display());
}

/// [`flushed_moves`] that returns the first failure (for vaults that may refuse).
pub fn try_flushed_moves(v: &capvault::Vault, n: i64, from: i64) -> capvault::Result<()> {
    for i in 0..n {
        let _ = v.append_mouse_move(1_764_000_000_000_000 + from + i, 1, 1)?;
    }
    v.flush()
}

/// The vault id of the closed vault at `dir`, in hex.
pub fn vault_hex(dir: &Path) -> String {
    let db = capvault::testing::open_raw_db(dir);
    let id = db.get(b"vault_id").unwrap().unwrap();
    id.iter().map(|b| format!("{b:02x}")).collect()
}
