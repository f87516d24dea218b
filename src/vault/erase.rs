//! Erasure: a crypto-shred first, then the data, then a tombstone.
//!
//! `erase` must work on a vault that does not open (tampered, corrupted, on a full
//! disk) and on one another process holds. So it needs nothing but the keychain and
//! the names of the keys: it deletes every KEK version of the user before it touches
//! anything else, then removes the user's trees (for the last user: the whole
//! database, files and all), then records the erasure in the keychain file, where
//! `status` and `audit` find it afterwards.
//!
//! The keychain file (`keychain.json` in the vault directory, docs/FORMAT.md "Keychain
//! file") names the vault id, the keychain and the highest KEK version of every user, so
//! the keys can be found when the database cannot be read. It is MAC'd under a key
//! derived from the device signing key (which stays in the keychain), so a forged file
//! cannot point erase at another vault's keys; a file that does not verify is only
//! used when nothing else is left, and its tombstones are shown as unverified.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ring::hmac;
use serde::{Deserialize, Serialize};

use super::binding;
use crate::error::{Error, Result};
use crate::keys::hierarchy::{derive_subkey, KeyHierarchy};
use crate::keys::keystore::{open_keystore, KeyStoreKind};
use crate::log::store::Store;
use crate::options::VaultOptions;
use capvault_format::secret::Key32;

/// The keychain file in the vault directory.
pub(crate) const KEYCHAIN_FILE: &str = "keychain.json";
/// The keychain file is a few hundred bytes; anything longer is not one.
const MAX_FILE_BYTES: u64 = 1 << 20;
const FORMAT: &str = "capvault-keychain-1";

/// What `status` and `audit` show about an erased user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Erasure {
    /// The erased user.
    pub user: String,
    /// When the erasure finished (microseconds since the Unix epoch).
    pub erased_us: i64,
    /// The keychain the KEKs were deleted from.
    pub keystore: KeyStoreKind,
    /// KEK versions 1 to this one were deleted.
    pub kek_versions: u32,
    /// True when the user was the last one and the whole database was removed.
    pub whole_vault: bool,
    /// True when the record verified under this vault's device key. An unverified
    /// record is shown but proves nothing (docs/SECURITY.md, "Erasure").
    pub verified: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct UserEntry {
    /// Highest KEK version that may exist in the keychain.
    kek_max: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erased_us: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    whole_vault: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KeychainFile {
    format: String,
    vault_id: String,
    keystore: KeyStoreKind,
    users: BTreeMap<String, UserEntry>,
    /// The vault directory the file was written in (canonical path), under the MAC: a
    /// copy of the file elsewhere (a backup restored into another directory) never
    /// names keys for that directory.
    #[serde(default)]
    dir: String,
    /// The hash of the binding value in the vault's database (`binding`), under the MAC:
    /// a file copied from another vault, or left from an earlier one at this path, is not
    /// taken for the database's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    bind: String,
    /// The inode of the directory it was written in, under the MAC: another directory at
    /// the same path (the vault moved away, another made there) has another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dir_inode: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

/// The canonical form of `dir` as the keychain file records it.
fn canonical(dir: &Path) -> String {
    std::fs::canonicalize(dir)
        .unwrap_or_else(|_| dir.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

fn file_key(device_seed: &Key32) -> hmac::Key {
    let k = derive_subkey(device_seed, b"capvault-keychain-file-v1", b"keychain.json");
    hmac::Key::new(hmac::HMAC_SHA256, k.expose())
}

impl KeychainFile {
    fn new(vault_id: String, keystore: KeyStoreKind) -> KeychainFile {
        KeychainFile {
            format: FORMAT.into(),
            vault_id,
            keystore,
            users: BTreeMap::new(),
            dir: String::new(),
            bind: String::new(),
            dir_inode: None,
            mac: None,
        }
    }

    fn unsigned_bytes(&self) -> Vec<u8> {
        let mut copy = self.clone();
        copy.mac = None;
        serde_json::to_vec(&copy).expect("serializes")
    }

    pub(crate) fn sign(&mut self, device_seed: &Key32) {
        self.mac = None;
        let tag = hmac::sign(&file_key(device_seed), &self.unsigned_bytes());
        self.mac = Some(data_encoding::HEXLOWER.encode(tag.as_ref()));
    }

    pub(crate) fn verifies(&self, device_seed: &Key32) -> bool {
        let Some(mac) = self
            .mac
            .as_deref()
            .and_then(|m| data_encoding::HEXLOWER.decode(m.as_bytes()).ok())
        else {
            return false;
        };
        hmac::verify(&file_key(device_seed), &self.unsigned_bytes(), &mac).is_ok()
    }

    fn read(dir: &Path) -> Option<KeychainFile> {
        Self::parse(&crate::files::read_regular(&dir.join(KEYCHAIN_FILE), MAX_FILE_BYTES).ok()??)
    }

    /// The file in `bytes`, if it is one of this format (its MAC not checked yet).
    pub(crate) fn parse(bytes: &[u8]) -> Option<KeychainFile> {
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return None;
        }
        serde_json::from_slice::<KeychainFile>(bytes)
            .ok()
            .filter(|f| f.format == FORMAT)
    }

    /// The bytes [`Self::write`] stores.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("serializes")
    }

    pub(crate) fn vault_id(&self) -> Option<[u8; 16]> {
        data_encoding::HEXLOWER
            .decode(self.vault_id.as_bytes())
            .ok()?
            .try_into()
            .ok()
    }

    /// The device seed of the vault the file names, and whether the file verifies under
    /// it.
    fn check(&self) -> (Option<Key32>, bool) {
        let Some(id) = self.vault_id() else {
            return (None, false);
        };
        let seed = open_keystore(self.keystore)
            .ok()
            .and_then(|ks| super::admin::read_device_seed(&*ks, &id).ok().flatten());
        let ok = seed.as_ref().is_some_and(|s| self.verifies(s));
        (seed, ok)
    }

    /// Whether the file was written in `dir` (not copied there from another vault).
    fn written_in(&self, dir: &Path) -> bool {
        !self.dir.is_empty() && self.dir == canonical(dir)
    }

    /// Whether the database in `dir` (`db` when sled opened it) confirms that the file
    /// is its own (see `binding`); otherwise why not.
    fn bound_here(&self, dir: &Path, db: Option<&sled::Db>) -> std::result::Result<(), String> {
        let other = "the database there holds another vault's binding (the file was copied from another vault, or left by an earlier vault in this directory)";
        if let Some(h) = db
            .and_then(|db| db.get(binding::META_BIND).ok().flatten())
            .and_then(|v| binding::hash_of(&v))
        {
            return if h == self.bind {
                Ok(())
            } else {
                Err(other.into())
            };
        }
        let found = binding::scan(dir);
        if !self.bind.is_empty() && found.contains(&self.bind) {
            return Ok(());
        }
        if !found.is_empty() {
            return Err(other.into());
        }
        // Nothing of the database is recognisable: the directory itself must be the one,
        // and the one the vault's file was last bound to.
        if self.dir_inode.is_some() && self.dir_inode == binding::dir_inode(dir) {
            let home = open_keystore(self.keystore)
                .and_then(|ks| ks.get(&binding::home_name(&self.vault_id)));
            return match home {
                Ok(Some(v)) if *v != binding::home_value(&self.bind, &self.dir, self.dir_inode) => {
                    Err("the vault it names has been opened elsewhere since (its files were moved out of this directory): the file is an earlier one".into())
                }
                // No record: made before there were any, or keyutils after a reboot
                // (then no key is left to protect either).
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "the keychain cannot say where the vault it names was last opened ({e})"
                )),
            };
        }
        // A database and a file both from before bindings, as they were then.
        if db.is_some() && self.bind.is_empty() && self.dir_inode.is_none() {
            return Ok(());
        }
        Err("nothing of the database is recognisable and the file was written in another directory at this path (the vault there was moved away, or the file was copied) or before keychain files were bound".into())
    }

    /// Whether the file's binding is in the bytes of the database in `dir`: the only
    /// check there is of a database another process holds.
    fn bound_in_bytes(&self, dir: &Path) -> bool {
        !self.bind.is_empty() && binding::scan(dir).contains(&self.bind)
    }

    fn write(&mut self, dir: &Path, device_seed: Option<&Key32>) -> Result<()> {
        self.dir = canonical(dir);
        self.dir_inode = binding::dir_inode(dir);
        self.write_in_place(dir, device_seed)
    }

    /// Writes the file into `dir` keeping the directory it names: a copy's file stays
    /// the file of a copy.
    fn write_in_place(&mut self, dir: &Path, device_seed: Option<&Key32>) -> Result<()> {
        match device_seed {
            Some(s) => self.sign(s),
            None => self.mac = None,
        }
        write_private(dir, KEYCHAIN_FILE, &self.to_bytes())
    }
}

/// Writes `dir/name` atomically (temporary file, fsync, rename, fsync of the directory),
/// readable by the owner only.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let target = dir.join(name);
    let result = (|| -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        // Only a directory keeps the rename from replacing what is there (a link, a
        // FIFO or a file is replaced itself): nothing of the vault is one.
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_dir()) {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&tmp, &target)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| match Error::from(e) {
        Error::StorageFull(m) => {
            Error::StorageFull(format!("cannot write {}: {m}", target.display()))
        }
        Error::Storage(m) => Error::Storage(format!("cannot write {}: {m}", target.display())),
        other => other,
    })
}

/// What an open vault writes into its keychain file.
pub(crate) struct FileNote<'a> {
    pub(crate) vault_id: &'a [u8; 16],
    pub(crate) keystore: KeyStoreKind,
    pub(crate) device_seed: &'a Key32,
    /// The hash of the database's binding value.
    pub(crate) bind: &'a str,
    /// The keychain, where the file's binding is remembered.
    pub(crate) store: &'a dyn crate::keys::keystore::KeyStore,
}

impl super::Inner {
    pub(crate) fn file_note(&self) -> FileNote<'_> {
        FileNote {
            vault_id: &self.vault_id,
            keystore: self.keystore.kind(),
            device_seed: &self.device_seed,
            bind: &self.keychain_bind,
            store: &*self.keystore,
        }
    }
}

/// Refuses to open a copy of a vault while the original is still where the keychain
/// says the vault lives. Both share the vault's keychain entries, and its high-water
/// mark among them: opening the copy (even only to look) moves the mark past the
/// original, which from then on would be refused as rolled back. A vault that was moved
/// (its recorded directory is gone, or is another directory now) opens, and the keychain
/// learns its new place.
pub(crate) fn refuse_copy(
    dir: &Path,
    vault_id: &[u8; 16],
    device_seed: &Key32,
    store: &dyn crate::keys::keystore::KeyStore,
) -> Result<()> {
    let Some(f) = KeychainFile::read(dir) else {
        return Ok(());
    };
    let hex = data_encoding::HEXLOWER.encode(vault_id);
    if f.vault_id != hex || f.dir.is_empty() || f.dir == canonical(dir) || !f.verifies(device_seed)
    {
        return Ok(());
    }
    // The keychain says the vault lives where this file was written...
    match store.get(&binding::home_name(&hex)) {
        Ok(Some(home)) if *home == binding::home_value(&f.bind, &f.dir, f.dir_inode) => {}
        _ => return Ok(()),
    }
    // ...and that very directory is still there, holding this vault (its database
    // bytes hold the binding; not another vault made there since).
    let there = Path::new(&f.dir);
    if f.dir_inode.is_some()
        && binding::dir_inode(there) == f.dir_inode
        && !binding::same_dir(dir, there)
        && binding::scan(there).contains(&f.bind)
    {
        return Err(Error::invalid(format!(
            "{} is a copy of the vault at {}, which is still there: both use the same keychain entries, and opening the copy would move the vault's keychain mark past the original (which would then be refused as rolled back); open the original, or move the copy into its place",
            dir.display(),
            f.dir
        )));
    }
    Ok(())
}

/// Records, before a KEK version is put in the keychain, that it may exist, so erase
/// finds it even when the database cannot be read, and binds the file to the database
/// and the directory (again after the vault was moved or restored). Best effort: the
/// database names the versions too.
pub(crate) fn note_kek(dir: &Path, note: &FileNote<'_>, user: &str, kek_max: u32) {
    let vault_hex = data_encoding::HEXLOWER.encode(note.vault_id);
    let mut file = match KeychainFile::read(dir) {
        Some(f) if f.vault_id == vault_hex && f.verifies(note.device_seed) => f,
        _ => KeychainFile::new(vault_hex, note.keystore),
    };
    let bound = file.bind == note.bind
        && file.dir == canonical(dir)
        && file.dir_inode == binding::dir_inode(dir);
    let entry = file.users.entry(user.to_string()).or_default();
    if bound && entry.kek_max >= kek_max && entry.erased_us.is_none() {
        return;
    }
    entry.kek_max = entry.kek_max.max(kek_max);
    entry.erased_us = None;
    entry.whole_vault = false;
    if !bound {
        // The keychain first: a file bound where the keychain does not say is refused
        // by erase, which is safe; the reverse would let the earlier file pass.
        let home = binding::home_value(note.bind, &canonical(dir), binding::dir_inode(dir));
        if note
            .store
            .put(&binding::home_name(&file.vault_id), &home)
            .is_err()
        {
            return;
        }
    }
    file.bind = note.bind.to_string();
    let _ = file.write(dir, Some(note.device_seed));
}

/// Refuses a database that lost the vault it held: the keychain file names a vault (and
/// verifies under that vault's device key) but the database names none, or another. sled
/// recovers a damaged log by cutting it at the first bad message, which can leave an
/// empty database; opening that would silently make a new vault over the old one.
pub(crate) fn check_identity(dir: &Path, in_db: Option<[u8; 16]>) -> Result<()> {
    let Some(file) = KeychainFile::read(dir) else {
        return Ok(());
    };
    if file.vault_id().is_none() {
        return Ok(());
    }
    // A database that names a vault wins: a file naming another one was copied here,
    // and is replaced by this vault's own on open. Only a database that lost its vault,
    // next to a file written in this very directory, is refused.
    if in_db.is_some() || file.users.values().all(|u| u.erased_us.is_some()) {
        return Ok(());
    }
    if !file.written_in(dir) || !file.check().1 {
        return Ok(());
    }
    Err(Error::tampered(format!(
        "the database in {} {} but its keychain file names vault {} (the database was damaged and lost its contents, or was replaced): refusing to use it; `capvault erase` still removes the keys",
        dir.display(),
        match in_db {
            None => "names no vault".to_string(),
            Some(id) => format!("names vault {}", data_encoding::HEXLOWER.encode(&id)),
        },
        file.vault_id
    )))
}

/// The erasure of `user` recorded in the vault directory, if any.
pub(crate) fn tombstone(dir: &Path, user: &str) -> Option<Erasure> {
    let file = KeychainFile::read(dir)?;
    let entry = file.users.get(user)?;
    let erased_us = entry.erased_us?;
    let (_, verified) = file.check();
    Some(Erasure {
        user: user.to_string(),
        erased_us,
        keystore: file.keystore,
        kek_versions: entry.kek_max,
        whole_vault: entry.whole_vault,
        verified,
    })
}

/// Files and directories of sled's database in a vault directory.
fn db_paths(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // The durability mark goes with the database it marks: a vault made here
            // later starts a new count.
            matches!(
                name,
                "conf" | "db" | "blobs" | crate::log::segments::SEGMENTS_DIR
            ) || name == crate::log::store::MARK_FILE
                || name.starts_with("snap.")
        })
        .collect()
}

/// Removes the database files (the keychain file, with the tombstone, stays).
pub(crate) fn remove_db_files(dir: &Path) -> Result<()> {
    for p in db_paths(dir) {
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Storage(format!(
                    "cannot remove {}: {e}",
                    p.display()
                )))
            }
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Removes the database files once the handle that erased the last user is gone (a
/// field of the vault's shared state, declared last so sled is closed first).
#[derive(Default)]
pub(crate) struct RemoveOnDrop {
    dir: std::sync::OnceLock<PathBuf>,
    armed: AtomicBool,
}

impl RemoveOnDrop {
    pub(crate) fn arm(&self, dir: &Path) {
        let _ = self.dir.set(dir.to_path_buf());
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (self.armed.load(Ordering::SeqCst), self.dir.get()) {
            let _ = remove_db_files(dir);
        }
    }
}

fn user_of_tree(name: &[u8]) -> Option<String> {
    let hex = name.strip_prefix(b"u/")?.strip_suffix(b"/keys")?;
    String::from_utf8(data_encoding::HEXLOWER.decode(hex).ok()?).ok()
}

/// Users other than `user` whose keys are live in `db`.
pub(crate) fn other_live_users(db: &sled::Db, user: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for name in db.tree_names() {
        let Some(u) = user_of_tree(&name) else {
            continue;
        };
        if u == user {
            continue;
        }
        let tree = db.open_tree(&name)?;
        if !tree.is_empty() && !KeyHierarchy::is_erased_tree(&tree) {
            out.push(u);
        }
    }
    Ok(out)
}

/// What erase learned about where the user's keys are.
struct Located {
    vault_id: [u8; 16],
    /// Other vaults the directory proves its own (their KEKs of the user go too).
    also: Vec<[u8; 16]>,
    keystore: KeyStoreKind,
    kek_max: u32,
    /// The database, when it opened.
    db: Option<sled::Db>,
    /// Why it did not.
    db_error: Option<Error>,
}

fn locate(dir: &Path, user: &str, options: &VaultOptions) -> Result<Located> {
    let file = KeychainFile::read(dir);
    let (db, db_error) = if dir.join("conf").exists() || dir.join("db").exists() {
        match Store::raw(dir, 1 << 20) {
            Ok(db) => (Some(db), None),
            Err(Error::InUse) => {
                // Held by another process, which erases through the hand-off. The keys
                // go now already if the keychain file names them, so the crypto-shred
                // does not depend on the holder answering.
                // Only a file bound to this very database: its binding value is among
                // the database file's bytes (another vault's file names another).
                if let Some(f) = file
                    .as_ref()
                    .filter(|f| f.written_in(dir) && f.check().1 && f.bound_in_bytes(dir))
                {
                    if let (Some(id), Some(u)) = (f.vault_id(), f.users.get(user)) {
                        let ks = open_keystore(f.keystore)?;
                        let hex = data_encoding::HEXLOWER.encode(&id);
                        KeyHierarchy::delete_keks(
                            &*ks,
                            &hex,
                            user,
                            u.kek_max.max(1).saturating_add(1),
                        )?;
                    }
                }
                return Err(Error::InUse);
            }
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, None)
    };
    let from_db = db.as_ref().and_then(|db| {
        let id: [u8; 16] = db
            .get(super::META_VAULT_ID)
            .ok()??
            .as_ref()
            .try_into()
            .ok()?;
        let ks: Option<KeyStoreKind> = db
            .get(super::META_KEYSTORE)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok());
        Some((id, ks))
    });
    let file_ok = file.as_ref().map(|f| (f, f.check().1));
    let mut also = Vec::new();
    let (vault_id, keystore) = match (from_db, &file_ok) {
        (Some((id, ks)), _) => {
            let (ks, mut proven) = proven_in_any_keychain(
                dir,
                user,
                db.as_ref(),
                id,
                ks.unwrap_or(options.keystore),
                options.keystore,
                file_ok,
            )?;
            let first = proven.remove(0);
            also = proven;
            (first, ks)
        }
        // Without the database, the file is trusted only as far as it verifies, or when
        // nothing else is left (an unverified file names a vault id that is then
        // checked against the device key it claims: see the module comment).
        (None, Some((f, true))) if f.written_in(dir) => {
            if let Err(why) = f.bound_here(dir, db.as_ref()) {
                let user_hex = data_encoding::HEXLOWER.encode(user.as_bytes());
                return Err(Error::tampered(format!(
                    "the database in {} cannot be read{} and its keychain file, which names vault {}, is not bound to it: {why}; refusing to delete any keys on its word, and deleting nothing. To erase: restore the database from a backup and run erase again, or, if this directory really holds vault {}, delete its keychain entries \"kek/{}/{user_hex}/v*\" (service \"capvault\") with the keychain's own tool",
                    dir.display(),
                    db_error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_else(|| " (it names no vault)".into()),
                    f.vault_id,
                    f.vault_id,
                    f.vault_id,
                )));
            }
            (f.vault_id().expect("verified"), f.keystore)
        }
        (None, Some((f, true))) => {
            return Err(Error::invalid(format!(
                "the database in {} does not open, and its keychain file was written in {}: it was copied here, or the vault was moved; refusing to delete the keys it names (erase the vault where it was created, or with its database)",
                dir.display(),
                if f.dir.is_empty() { "an unknown directory" } else { &f.dir }
            )))
        }
        (None, Some((_, false))) => {
            return Err(Error::tampered(format!(
                "the database in {} does not open and its keychain file does not verify under the device key it names: refusing to delete keys on its word",
                dir.display()
            )))
        }
        _ => {
            let why = db_error
                .map(|e| format!(": the database does not open ({e})"))
                .unwrap_or_default();
            return Err(Error::NotFound(format!(
                "no vault (no readable database and no keychain file) in {}{why}",
                dir.display()
            )));
        }
    };
    let mut kek_max = 0;
    let mut known = false;
    if let Some(db) = &db {
        let name = format!("u/{}/keys", data_encoding::HEXLOWER.encode(user.as_bytes()));
        if db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes())
        {
            known = true;
            // The tree's own version counters are not authenticated (set to billions,
            // erase would never end): only versions its entries prove count; the
            // keychain's listing covers the rest where it can enumerate.
            let ks = open_keystore(keystore)?;
            kek_max =
                KeyHierarchy::proven_kek_version(&*ks, &db.open_tree(name)?, &vault_id, user)?
                    .unwrap_or(0);
        }
    }
    if let Some((entry, verified)) = file_ok
        .filter(|(f, _)| f.vault_id() == Some(vault_id))
        .and_then(|(f, verified)| Some((f.users.get(user)?, verified)))
    {
        known = true;
        // Only a file that verifies says how far the versions go: an edited one could
        // name four billion of them (erase would never end) or u32::MAX (one past it
        // wrapped to none deleted).
        if verified {
            kek_max = kek_max.max(entry.kek_max);
        }
    }
    if !known {
        return Err(Error::NotFound(format!(
            "the vault in {} has no user {user:?}",
            dir.display()
        )));
    }
    Ok(Located {
        vault_id,
        also,
        keystore,
        // A rotation may have put the next version in the keychain before recording it.
        kek_max: kek_max.max(1).saturating_add(1),
        db,
        db_error,
    })
}

/// [`proven_vaults`] in the keychain the database names, and in every other keychain
/// named for this vault: the one its verified keychain file names and the one the caller
/// asked for (unless `Auto`), then in the platform's other keychains. The database's keychain kind is not authenticated: edited,
/// it would point erase at a keychain that holds nothing of the user, taken for "nothing
/// to protect" while the KEKs live on in the real one. The first keychain whose keys
/// prove a vault here is the vault's; a refusal in any of them stands; only when every
/// one of them holds nothing of the user does the erase go on as [`proven_vaults`] says.
fn proven_in_any_keychain(
    dir: &Path,
    user: &str,
    db: Option<&sled::Db>,
    db_id: [u8; 16],
    named: KeyStoreKind,
    asked: KeyStoreKind,
    file: Option<(&KeychainFile, bool)>,
) -> Result<(KeyStoreKind, Vec<[u8; 16]>)> {
    let mut kinds = vec![named];
    if let Some((f, true)) = file {
        kinds.push(f.keystore);
    }
    if asked != KeyStoreKind::Auto {
        kinds.push(asked);
    }
    // Before "nothing to protect" is believed, every other keychain this platform has
    // is asked for a proof too (the named ones may all have been edited; a keychain that
    // cannot be reached here is skipped: it holds nothing this process could delete).
    let others: Vec<KeyStoreKind> = crate::keys::keystore::NATIVE_KINDS
        .iter()
        .copied()
        .filter(|k| !kinds.contains(k))
        .collect();
    let mut tried = Vec::new();
    let mut refused = None;
    for (kind, named_here) in kinds
        .into_iter()
        .map(|k| (k, true))
        .chain(others.into_iter().map(|k| (k, false)))
    {
        if tried.contains(&kind) {
            continue;
        }
        tried.push(kind);
        if !named_here && open_keystore(kind).is_err() {
            continue;
        }
        match proven_vaults(dir, user, db, db_id, kind, file) {
            Ok(Proof::Proven(ids)) => return Ok((kind, ids)),
            Ok(Proof::NothingHeld) => {}
            Err(e) if named_here => {
                refused.get_or_insert(e);
            }
            // Another keychain only counts when it proves this vault: its entries of
            // other vaults of the same user name say nothing about this one.
            Err(_) => {}
        }
    }
    match refused {
        Some(e) => Err(e),
        None => Ok((named, vec![db_id])),
    }
}

/// What [`proven_vaults`] found in one keychain.
enum Proof {
    /// These vaults (at least one) are proven to be this directory's.
    Proven(Vec<[u8; 16]>),
    /// Nothing is proven, and the keychain holds no KEK of the user at all.
    NothingHeld,
}

/// The vaults whose KEKs of `user` erase may delete (at least one; the database's
/// first when it is proven), when the database opened and names vault `db_id`. That
/// name is not authenticated (anyone who can write the directory can change it, to
/// point erase at another vault of the same user), so it is believed only as far as
/// the directory proves it:
///
/// - a KEK of the vault in the keychain unwraps a wrapped key of the user's keys tree
///   here (the associated data names vault, user, entry and KEK version), or
/// - only when that proves no vault: the keychain file verifies under the vault's
///   device key and was written in this directory (it names a path, and a path can be
///   reused by another vault after this one moved away).
///
/// The candidates are the database's vault, the file's, and (where the keychain can be
/// enumerated) every vault with KEKs of this user, so the real vault is found even when
/// the database names another; every proven one goes. When nothing is proven and the
/// keychain holds no KEK of this user at all (keyutils after a reboot), there is
/// nothing to protect and the erase goes on; otherwise it is refused before anything is
/// deleted (the unproven vault may be any of those the keychain lists).
fn proven_vaults(
    dir: &Path,
    user: &str,
    db: Option<&sled::Db>,
    db_id: [u8; 16],
    keystore: KeyStoreKind,
    file: Option<(&KeychainFile, bool)>,
) -> Result<Proof> {
    let store = open_keystore(keystore)?;
    let file = file.filter(|(f, verified)| *verified && f.written_in(dir));
    let file_id = file.and_then(|(f, _)| f.vault_id());
    let name = format!("u/{}/keys", data_encoding::HEXLOWER.encode(user.as_bytes()));
    let tree = match db {
        Some(db)
            if db
                .tree_names()
                .iter()
                .any(|n| n.as_ref() == name.as_bytes()) =>
        {
            Some(db.open_tree(&name)?)
        }
        _ => None,
    };
    let listed = KeyHierarchy::vaults_with_keks(&*store, user)?;
    let unwraps = |id: &[u8; 16]| match &tree {
        Some(t) => KeyHierarchy::unwraps_tree(&*store, t, id, user),
        None => Ok(false),
    };
    let mut candidates = vec![db_id];
    candidates.extend(file_id);
    candidates.extend(listed.iter().copied());
    let mut seen = Vec::new();
    let mut proven = Vec::new();
    for id in candidates {
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        if unwraps(&id)? {
            proven.push(id);
        }
    }
    // A path can be reused (a vault moved away and another created in its place, the
    // old file copied back): the file vouches only when the keys here prove no vault at
    // all, and only when it is bound to this database (or this very directory), and
    // only for the keychain it names.
    if proven.is_empty()
        && file.is_some_and(|(f, _)| f.keystore == keystore && f.bound_here(dir, db).is_ok())
    {
        proven.extend(file_id);
    }
    if !proven.is_empty() {
        return Ok(Proof::Proven(proven));
    }
    let hex = data_encoding::HEXLOWER.encode(&db_id);
    let user_hex = data_encoding::HEXLOWER.encode(user.as_bytes());
    // Which KEKs of the named vault the keychain holds: listed where it can enumerate,
    // else probed up to the version the tree records (unauthenticated, so bounded).
    let held = match store.list(&format!("kek/{hex}/{user_hex}/"))? {
        Some(names) => !names.is_empty(),
        None => {
            let recorded = tree
                .as_ref()
                .map(KeyHierarchy::highest_kek_version)
                .unwrap_or(0)
                .clamp(1, PROBE_VERSIONS);
            let mut held = false;
            for v in 1..=recorded.saturating_add(1) {
                if store.get(&KeyHierarchy::kek_name(&hex, user, v))?.is_some() {
                    held = true;
                    break;
                }
            }
            held
        }
    };
    // Nothing to protect only when the keychain holds no KEK of this user at all
    // (keyutils after a reboot): any vault it lists may be this directory's, its keys
    // replaced or its id changed, and "nothing deleted" must not pass for an erase.
    if !held && listed.is_empty() {
        return Ok(Proof::NothingHeld);
    }
    let mut named: Vec<String> = Vec::new();
    for id in std::iter::once(db_id).filter(|_| held).chain(listed) {
        let entry = format!(
            "\"kek/{}/{user_hex}/v*\"",
            data_encoding::HEXLOWER.encode(&id)
        );
        if !named.contains(&entry) {
            named.push(entry);
        }
    }
    Err(Error::tampered(format!(
        "the database in {} names vault {hex} for user {user:?}, but nothing in the directory proves which vault it is: no key-encryption key in the keychain unwraps the user's keys here and the keychain file does not vouch for it (the vault id or the keys were replaced, or the database was copied from another vault); refusing to delete any vault's keys on its word, and deleting nothing. If this directory really is one of these vaults, delete its keychain entries {} (service \"capvault\") with the keychain's own tool",
        dir.display(),
        named.join(" or "),
    )))
}

/// How many KEK versions erase probes, where the keychain cannot list its entries, for
/// a vault nothing proves (a bound on an unauthenticated counter; rotations are rare).
const PROBE_VERSIONS: u32 = 4096;

/// Crypto-shreds `user` in `dir` without opening the vault (see the module comment).
pub(crate) fn erase_closed(dir: &Path, user: &str, options: &VaultOptions) -> Result<Erasure> {
    let loc = locate(dir, user, options)?;
    let vault_hex = data_encoding::HEXLOWER.encode(&loc.vault_id);
    // 1. The keys, before anything else.
    let keystore = open_keystore(loc.keystore)?;
    let deleted = KeyHierarchy::delete_keks(&*keystore, &vault_hex, user, loc.kek_max)?;
    for other in &loc.also {
        let hex = data_encoding::HEXLOWER.encode(other);
        KeyHierarchy::delete_keks(&*keystore, &hex, user, loc.kek_max)?;
    }
    let loc = Located {
        kek_max: deleted,
        ..loc
    };
    let device_seed = super::admin::read_device_seed(&*keystore, &loc.vault_id)
        .ok()
        .flatten();
    // A first tombstone now, so an opener knows the missing keys were erased on purpose
    // even if what follows is interrupted (best effort: the disk may be full).
    let _ = record_tombstone(dir, &loc, user, false, device_seed.as_ref());
    crate::failpoint::hit("erase:after-keychain")?;
    // 2. The data.
    let whole = match &loc.db {
        Some(db) => {
            let others = other_live_users(db, user)?;
            if others.is_empty() {
                true
            } else {
                drop_user_trees(db, user, loc.kek_max)?;
                crate::log::segments::remove_user(dir, user)?;
                false
            }
        }
        None => {
            let others: Vec<String> = KeychainFile::read(dir)
                .map(|f| {
                    f.users
                        .iter()
                        .filter(|(u, e)| *u != user && e.erased_us.is_none())
                        .map(|(u, _)| u.clone())
                        .collect()
                })
                .unwrap_or_default();
            match &loc.db_error {
                Some(e) if !others.is_empty() => {
                    return Err(Error::Storage(format!(
                        "the keys of user {user:?} were destroyed (nothing of theirs can be read any more), but the database does not open ({e}) and also holds users {others:?}, so it was left in place"
                    )))
                }
                _ => true,
            }
        }
    };
    drop(loc.db);
    if whole {
        remove_db_files(dir)?;
    }
    // 3. The tombstone.
    let loc = Located {
        db: None,
        db_error: None,
        ..loc
    };
    record_tombstone(dir, &loc, user, whole, device_seed.as_ref())?;
    tombstone(dir, user)
        .ok_or_else(|| Error::Storage("the erasure record cannot be read back".into()))
}

/// Removes a user's trees from a database other users still use, leaving the keys tree
/// with the erase marker only (so the name stays erased).
pub(crate) fn drop_user_trees(db: &sled::Db, user: &str, kek_max: u32) -> Result<()> {
    let hex = data_encoding::HEXLOWER.encode(user.as_bytes());
    let keys = db.open_tree(format!("u/{hex}/keys"))?;
    KeyHierarchy::mark_erased(&keys, kek_max)?;
    for name in ["log", "state", "ledger"] {
        db.drop_tree(format!("u/{hex}/{name}"))?;
    }
    db.flush()?;
    Ok(())
}

fn record_tombstone(
    dir: &Path,
    loc: &Located,
    user: &str,
    whole: bool,
    device_seed: Option<&Key32>,
) -> Result<()> {
    let vault_hex = data_encoding::HEXLOWER.encode(&loc.vault_id);
    let mut file = match KeychainFile::read(dir) {
        Some(f) if f.vault_id == vault_hex => f,
        _ => KeychainFile::new(vault_hex, loc.keystore),
    };
    let verified = device_seed.is_some_and(|s| file.verifies(s));
    if !verified {
        // Entries nobody can vouch for are not carried into a signed file.
        file.users.retain(|u, _| u == user);
    }
    let entry = file.users.entry(user.to_string()).or_default();
    entry.kek_max = entry.kek_max.max(loc.kek_max);
    // The time of the first step (the keys' deletion) is kept.
    entry.erased_us.get_or_insert_with(super::now_us);
    entry.whole_vault = whole;
    if file.dir.is_empty() {
        file.write(dir, device_seed)
    } else {
        // The tombstone does not make a copy pass for the vault (refuse_copy).
        file.write_in_place(dir, device_seed)
    }
}

impl Located {
    /// What an erase through an open handle knows: the handle's own vault and keychain.
    fn open_handle(inner: &super::Inner, kek_max: u32) -> Located {
        Located {
            vault_id: inner.vault_id,
            also: Vec::new(),
            keystore: inner.keystore.kind(),
            kek_max,
            db: None,
            db_error: None,
        }
    }
}

/// After an erase through an open handle: records the tombstone and, when no other
/// user is left, removes the database files now (the handle keeps them open until it
/// is dropped; then they are removed again, should sled have written any). Returns
/// whether the whole database went.
pub(crate) fn finish_in_place(inner: &super::Inner, kek_max: u32) -> Result<bool> {
    let dir = inner.dir();
    let whole = other_live_users(&inner.store.db, &inner.user)
        .map(|o| o.is_empty())
        // A database that cannot be read back says nothing about other users: keep it.
        .unwrap_or(false);
    if whole {
        inner.remove_on_drop.arm(&dir);
        inner.store.retire();
        remove_db_files(&dir)?;
    }
    let loc = Located::open_handle(inner, kek_max);
    record_tombstone(&dir, &loc, &inner.user, whole, Some(&inner.device_seed))?;
    Ok(whole)
}

/// The first tombstone of an erase through an open handle, right after the keys went
/// (best effort: the disk may be full).
pub(crate) fn note_erasing(inner: &super::Inner, kek_max: u32) {
    let loc = Located::open_handle(inner, kek_max);
    let _ = record_tombstone(
        &inner.dir(),
        &loc,
        &inner.user,
        false,
        Some(&inner.device_seed),
    );
}

/// Ensures the `erased` state is reported for a user whose keys are gone on purpose.
pub(crate) fn erased_if_tombstoned(dir: &Path, user: &str, e: Error) -> Error {
    match e {
        Error::Keychain(_) if tombstone(dir, user).is_some() => Error::Erased,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keychain_file_verifies_only_under_its_device_key() {
        let seed = Key32::generate();
        let mut f = KeychainFile::new("00".repeat(16), KeyStoreKind::Keyutils);
        f.users.insert(
            "alice".into(),
            UserEntry {
                kek_max: 3,
                erased_us: Some(5),
                whole_vault: true,
            },
        );
        f.sign(&seed);
        assert!(f.verifies(&seed));
        assert!(!f.verifies(&Key32::generate()));
        let mut g = f.clone();
        g.users.get_mut("alice").unwrap().erased_us = Some(6);
        assert!(!g.verifies(&seed), "an edited tombstone does not verify");
        // A file from before bindings verifies as it did: absent fields stay absent.
        let bytes = f.to_bytes();
        assert!(!String::from_utf8_lossy(&bytes).contains("bind"));
        assert!(KeychainFile::parse(&bytes).unwrap().verifies(&seed));
        // The bindings are under the MAC.
        let mut h = f.clone();
        h.bind = "00".repeat(32);
        h.dir_inode = Some(7);
        h.sign(&seed);
        let mut i = KeychainFile::parse(&h.to_bytes()).unwrap();
        assert!(i.verifies(&seed));
        i.dir_inode = Some(8);
        assert!(
            !i.verifies(&seed),
            "an edited directory inode does not verify"
        );
        i.dir_inode = Some(7);
        i.bind = "11".repeat(32);
        assert!(!i.verifies(&seed), "an edited binding does not verify");
    }
}
