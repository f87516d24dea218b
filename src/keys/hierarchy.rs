//! The key hierarchy of one user in one vault:
//!
//! ```text
//! KEK v(N)   32 bytes, OS keychain entry "kek/<vault>/<user>/v<N>"
//! format     u32, OS keychain entry "format/<vault>/<user>": how far the user's stored
//!            state was carried over (docs/FORMAT.md section 12)
//! mark       OS keychain entry "mark/<vault>/<user>": how far the log, ledger and state
//!            had come (src/keys/mark.rs), MAC'd under the anchor MAC key
//!   wraps -> DEK epoch e (32 bytes)   keys tree "dek" || e
//!   wraps -> anchor MAC key           keys tree "mac2" ("mac" before stored state
//!                                     was authenticated)
//! ```
//!
//! Wrapping is XChaCha20-Poly1305 with associated data naming vault, user, entry and KEK
//! version (docs/FORMAT.md, "Key wrapping"). KEK rotation rewraps every entry and then
//! deletes the old KEK; a marker makes each step restartable.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::aead;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::keys::keystore::KeyStore;
use capvault_format::secret::Key32;

const KEK_VERSION: &[u8] = b"kek_version";
const CURRENT_EPOCH: &[u8] = b"current_epoch";
/// The MAC key of a vault written before stored state was authenticated (format 1).
const MAC_ENTRY_V1: &[u8] = b"mac";
/// The MAC key of a vault whose stored state is authenticated. Only ever wrapped under a
/// KEK that never wrapped a `mac` entry (the carry-over rotates the KEK), so an old
/// format-1 copy of the keys cannot be put back to downgrade the vault.
const MAC_ENTRY: &[u8] = b"mac2";
const ROTATION_MARKER: &[u8] = b"kek_rotation";
/// The stored-state format a new user starts in and every user is carried over to:
/// 2 = state authenticated, 3 = log head bound to the state generation, 4 = a keychain
/// mark (src/keys/mark.rs) exists. Kept in the keychain, which a copy of the vault
/// directory cannot roll back.
pub(crate) const STATE_FORMAT: u32 = 4;
const ERASED: &[u8] = b"erased";

fn dek_entry(epoch: u32) -> Vec<u8> {
    let mut k = b"dek".to_vec();
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

fn epoch_of_entry(key: &[u8]) -> Option<u32> {
    let rest = key.strip_prefix(b"dek")?;
    Some(u32::from_be_bytes(rest.try_into().ok()?))
}

fn be_u32(v: &[u8], what: &str) -> Result<u32> {
    v.try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| Error::tampered(format!("{what} has the wrong size")))
}

/// The stored KEK rotation marker: from (u32) || to (u32).
pub(crate) fn decode_rotation_marker(marker: &[u8]) -> Result<(u32, u32)> {
    if marker.len() != 8 {
        return Err(Error::tampered(
            "the KEK rotation marker has the wrong size",
        ));
    }
    Ok((
        be_u32(&marker[..4], "the rotation marker")?,
        be_u32(&marker[4..], "the rotation marker")?,
    ))
}

/// A wrapped key as stored: KEK version, creation time, nonce || ciphertext || tag.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Wrapped {
    kek_version: u32,
    created_us: i64,
    sealed: Vec<u8>,
}

impl Wrapped {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12 + self.sealed.len());
        v.extend_from_slice(&self.kek_version.to_be_bytes());
        v.extend_from_slice(&self.created_us.to_be_bytes());
        v.extend_from_slice(&self.sealed);
        v
    }
    pub(crate) fn decode(v: &[u8]) -> Result<Self> {
        if v.len() < 12 {
            return Err(Error::tampered("a wrapped key is truncated"));
        }
        Ok(Wrapped {
            kek_version: be_u32(&v[..4], "a wrapped key")?,
            created_us: i64::from_be_bytes(v[4..12].try_into().expect("8")),
            sealed: v[12..].to_vec(),
        })
    }
}

/// Information about one DEK epoch (no key material).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EpochInfo {
    /// Epoch number.
    pub epoch: u32,
    /// When its DEK was created (microseconds since the Unix epoch).
    pub created_us: i64,
}

/// Unwrapped keys of one user, loaded at open.
pub(crate) struct KeyHierarchy {
    store: Arc<dyn KeyStore>,
    tree: sled::Tree,
    vault_hex: String,
    user: String,
    vault_id: [u8; 16],
    kek: Key32,
    kek_version: u32,
    deks: BTreeMap<u32, (Key32, i64)>,
    current_epoch: u32,
    mac_key: Key32,
    /// False for a format-1 vault (its MAC key under `mac`): its stored state is not
    /// authenticated yet and is carried over at open.
    state_authenticated: bool,
    /// The format the keychain records for this user (0: none recorded).
    keychain_format: u32,
}

/// Keys tree entries of a new user, written by the caller in the transaction that
/// creates the user's trees.
pub(crate) type NewEntries = Vec<(sled::IVec, sled::IVec)>;

impl KeyHierarchy {
    pub(crate) fn kek_name(vault_hex: &str, user: &str, version: u32) -> String {
        format!("{}{version}", Self::kek_prefix(vault_hex, user))
    }

    /// The common start of the names of every KEK version of `user` in a vault.
    fn kek_prefix(vault_hex: &str, user: &str) -> String {
        let user_hex = data_encoding::HEXLOWER.encode(user.as_bytes());
        format!("kek/{vault_hex}/{user_hex}/v")
    }

    fn format_name(vault_hex: &str, user: &str) -> String {
        let user_hex = data_encoding::HEXLOWER.encode(user.as_bytes());
        format!("format/{vault_hex}/{user_hex}")
    }

    fn read_format(store: &dyn KeyStore, vault_hex: &str, user: &str) -> Result<u32> {
        match store.get(&Self::format_name(vault_hex, user))? {
            None => Ok(0),
            Some(v) => v
                .as_slice()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| {
                    Error::keychain("the stored-state format in the keychain has the wrong size")
                }),
        }
    }

    /// The stored-state format the keychain records for this user (0: none, a vault
    /// from before the record).
    pub(crate) fn keychain_format(&self) -> u32 {
        self.keychain_format
    }

    /// Whether the keychain still holds the KEK in use. It only goes with an erasure of
    /// the user, possibly made through a copy of the vault while this process held it.
    pub(crate) fn kek_in_keychain(&self) -> Result<bool> {
        Ok(Self::load_kek(&*self.store, &self.vault_hex, &self.user, self.kek_version)?.is_some())
    }

    /// Records in the keychain that this user's stored state is in `STATE_FORMAT`.
    /// From then on an older form of the trees is refused, whatever copy is put back.
    pub(crate) fn record_format(&mut self) -> Result<()> {
        self.store.put(
            &Self::format_name(&self.vault_hex, &self.user),
            &STATE_FORMAT.to_be_bytes(),
        )?;
        self.keychain_format = STATE_FORMAT;
        Ok(())
    }

    /// Whether `vault_id` demonstrably is the vault of this keys tree: a KEK of
    /// `vault_id` and `user` in the keychain unwraps one of its wrapped entries, whose
    /// associated data names vault, user, entry and version (a tree or vault id copied
    /// from elsewhere does not). Reads only; used by erase before it deletes anything.
    pub(crate) fn unwraps_tree(
        store: &dyn KeyStore,
        tree: &sled::Tree,
        vault_id: &[u8; 16],
        user: &str,
    ) -> Result<bool> {
        Ok(Self::proven_kek_version(store, tree, vault_id, user)?.is_some())
    }

    /// The highest KEK version under which a wrapped entry of the raw keys tree unwraps
    /// with the vault's KEK from the keychain (the associated data names vault, user,
    /// entry and version), or None when none does. Unlike the tree's version counters,
    /// which anyone who can write the directory can set, this version is proven.
    pub(crate) fn proven_kek_version(
        store: &dyn KeyStore,
        tree: &sled::Tree,
        vault_id: &[u8; 16],
        user: &str,
    ) -> Result<Option<u32>> {
        let vault_hex = data_encoding::HEXLOWER.encode(vault_id);
        let mut kek: Option<(u32, Option<Key32>)> = None;
        let mut proven = None;
        for item in tree.iter() {
            // A damaged page repeats its error on every call: stop at the first.
            let Ok((entry, value)) = item else { break };
            let wrapped = entry.as_ref() == MAC_ENTRY
                || entry.as_ref() == MAC_ENTRY_V1
                || epoch_of_entry(&entry).is_some();
            let Some(w) = wrapped.then(|| Wrapped::decode(&value).ok()).flatten() else {
                continue;
            };
            if proven.is_some_and(|p| p >= w.kek_version) {
                continue;
            }
            if kek.as_ref().is_none_or(|(v, _)| *v != w.kek_version) {
                kek = Some((
                    w.kek_version,
                    Self::load_kek(store, &vault_hex, user, w.kek_version)?,
                ));
            }
            let Some((_, Some(key))) = &kek else { continue };
            let ad = Self::wrap_ad(vault_id, user, &entry, w.kek_version);
            if aead::unwrap_key(key, &ad, &w.sealed).is_ok() {
                proven = Some(w.kek_version);
            }
        }
        Ok(proven)
    }

    /// Vault ids for which the keychain holds KEKs of `user` (empty when it cannot
    /// enumerate its entries).
    pub(crate) fn vaults_with_keks(store: &dyn KeyStore, user: &str) -> Result<Vec<[u8; 16]>> {
        let user_hex = data_encoding::HEXLOWER.encode(user.as_bytes());
        let mut out = Vec::new();
        for name in store.list("kek/")?.unwrap_or_default() {
            let mut parts = name.split('/');
            let (Some(_), Some(vault), Some(u)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if u != user_hex {
                continue;
            }
            let id = data_encoding::HEXLOWER
                .decode(vault.as_bytes())
                .ok()
                .and_then(|v| <[u8; 16]>::try_from(v).ok());
            if let Some(id) = id.filter(|id| !out.contains(id)) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn wrap_ad(vault_id: &[u8; 16], user: &str, entry: &[u8], kek_version: u32) -> Vec<u8> {
        let mut ad = b"capvault-wrap-v1".to_vec();
        ad.extend_from_slice(vault_id);
        ad.extend_from_slice(&(user.len() as u16).to_be_bytes());
        ad.extend_from_slice(user.as_bytes());
        ad.extend_from_slice(&(entry.len() as u16).to_be_bytes());
        ad.extend_from_slice(entry);
        ad.extend_from_slice(&kek_version.to_be_bytes());
        ad
    }

    fn wrap(
        &self,
        entry: &[u8],
        key: &Key32,
        created_us: i64,
        kek: &Key32,
        kek_version: u32,
    ) -> Vec<u8> {
        let ad = Self::wrap_ad(&self.vault_id, &self.user, entry, kek_version);
        Wrapped {
            kek_version,
            created_us,
            sealed: aead::wrap(kek, &ad, key.expose()),
        }
        .encode()
    }

    fn load_kek(
        store: &dyn KeyStore,
        vault_hex: &str,
        user: &str,
        version: u32,
    ) -> Result<Option<Key32>> {
        match store.get(&Self::kek_name(vault_hex, user, version))? {
            None => Ok(None),
            Some(mut bytes) => Key32::from_slice_zeroizing(&mut bytes)
                .map(Some)
                .ok_or_else(|| {
                    Error::keychain("the key-encryption key in the keychain has the wrong size")
                }),
        }
    }

    /// Loads the keys of `user`, creating them on first use. Completes an interrupted
    /// KEK rotation. Nothing is written to sled before the keychain accepted the KEK.
    pub(crate) fn open(
        store: Arc<dyn KeyStore>,
        tree: sled::Tree,
        vault_id: [u8; 16],
        user: &str,
        now_us: i64,
    ) -> Result<(KeyHierarchy, Option<NewEntries>)> {
        let vault_hex = data_encoding::HEXLOWER.encode(&vault_id);
        if tree.get(ERASED)?.is_some() {
            // Every erase deletes the KEKs before it writes this marker, so there is
            // nothing left to delete; and deleting on the word of an unauthenticated
            // marker and vault id would let a forged directory delete another vault's
            // keys.
            return Err(Error::Erased);
        }
        let Some(version) = tree.get(KEK_VERSION)? else {
            let (h, entries) = Self::create(store, tree, vault_id, vault_hex, user, now_us)?;
            return Ok((h, Some(entries)));
        };
        let mut kek_version = be_u32(&version, "the KEK version")?;
        if let Some(marker) = tree.get(ROTATION_MARKER)? {
            // An interrupted rotation: roll it forward. The marker is not authenticated:
            // only the two states a rotation passes through are believed (before the
            // rewrap: at `from`; after it: at `to`, which then unwraps everything), so
            // no marker can make the opener delete the KEK in use.
            let (from, to) = decode_rotation_marker(&marker)?;
            if from.checked_add(1) != Some(to) || (kek_version != from && kek_version != to) {
                return Err(Error::tampered(format!(
                    "the KEK rotation marker names v{from} -> v{to} while the keys are at v{kek_version}: the marker was edited"
                )));
            }
            let mut h = Self::load(
                store.clone(),
                tree.clone(),
                vault_id,
                vault_hex.clone(),
                user,
                kek_version,
            )?;
            if kek_version == from {
                let new = match Self::load_kek(&*store, &vault_hex, user, to)? {
                    Some(k) => k,
                    None => {
                        let k = Key32::generate();
                        store.put(&Self::kek_name(&vault_hex, user, to), k.expose())?;
                        k
                    }
                };
                h.rewrap_all(new, to)?;
            }
            h.finish_rotation(from)?;
            kek_version = to;
            drop(h);
        }
        Self::load(store, tree, vault_id, vault_hex, user, kek_version).map(|h| (h, None))
    }

    fn load(
        store: Arc<dyn KeyStore>,
        tree: sled::Tree,
        vault_id: [u8; 16],
        vault_hex: String,
        user: &str,
        kek_version: u32,
    ) -> Result<KeyHierarchy> {
        let kek = Self::load_kek(&*store, &vault_hex, user, kek_version)?.ok_or_else(|| {
            let hint = if store.persistent() {
                "it was deleted from the keychain, or this is another user's or machine's keychain"
            } else {
                "kernel keyutils keys are lost at reboot"
            };
            Error::keychain(format!(
                "the key-encryption key v{kek_version} of user {user:?} is missing from the {:?} keychain ({hint}); the data encrypted under it cannot be read",
                store.kind()
            ))
        })?;
        let wrong_key = || {
            Error::Keychain(format!(
            "the key-encryption key in the keychain does not unwrap this vault's keys for user {user:?} (the keychain entry or the vault was replaced or tampered with)"
        ))
        };
        let mut olds: BTreeMap<u32, Key32> = BTreeMap::new();
        let mut unwrap = |entry: &[u8], w: &Wrapped| -> Result<Key32> {
            let k = if w.kek_version == kek_version {
                &kek
            } else {
                if let std::collections::btree_map::Entry::Vacant(slot) = olds.entry(w.kek_version)
                {
                    let old = Self::load_kek(&*store, &vault_hex, user, w.kek_version)?
                        .ok_or_else(wrong_key)?;
                    slot.insert(old);
                }
                &olds[&w.kek_version]
            };
            let ad = Self::wrap_ad(&vault_id, user, entry, w.kek_version);
            aead::unwrap_key(k, &ad, &w.sealed).map_err(|_| wrong_key())
        };
        let (mac_entry, state_authenticated) = match (tree.get(MAC_ENTRY)?, tree.get(MAC_ENTRY_V1)?)
        {
            (Some(v), None) => ((MAC_ENTRY, v), true),
            (None, Some(v)) => ((MAC_ENTRY_V1, v), false),
            (None, None) => return Err(Error::tampered("the anchor key entry is missing")),
            (Some(_), Some(_)) => {
                return Err(Error::tampered(
                    "the keys hold an anchor key of both formats (an old copy was put back)",
                ))
            }
        };
        let keychain_format = Self::read_format(&*store, &vault_hex, user)?;
        let mac_w = Wrapped::decode(&mac_entry.1)?;
        let mac_key = unwrap(mac_entry.0, &mac_w)?;
        let mut deks = BTreeMap::new();
        for item in tree.scan_prefix(b"dek") {
            let (k, v) = item?;
            let epoch = epoch_of_entry(&k)
                .ok_or_else(|| Error::tampered("a key entry has a malformed name"))?;
            let w = Wrapped::decode(&v)?;
            deks.insert(epoch, (unwrap(&k, &w)?, w.created_us));
        }
        let current_epoch = be_u32(
            &tree
                .get(CURRENT_EPOCH)?
                .ok_or_else(|| Error::tampered("the current epoch is missing"))?,
            "the current epoch",
        )?;
        // Epochs only grow and the current one is never retired: it is the newest key.
        if deks.keys().next_back() != Some(&current_epoch) {
            return Err(Error::tampered(
                "the current epoch is not the newest data key (the current epoch or a key entry was edited)",
            ));
        }
        Ok(KeyHierarchy {
            store,
            tree,
            vault_hex,
            user: user.to_string(),
            vault_id,
            kek,
            kek_version,
            deks,
            current_epoch,
            mac_key,
            state_authenticated,
            keychain_format,
        })
    }

    fn create(
        store: Arc<dyn KeyStore>,
        tree: sled::Tree,
        vault_id: [u8; 16],
        vault_hex: String,
        user: &str,
        now_us: i64,
    ) -> Result<(KeyHierarchy, NewEntries)> {
        // The format record is written only once a user's trees are durable: with it
        // in the keychain, trees missing from the directory were removed, not never
        // made, and making a new user would overwrite the old one's KEK (so no backup
        // could be read) and its mark (so nothing would show the loss).
        if Self::read_format(&*store, &vault_hex, user)? != 0 {
            return Err(Error::tampered(format!(
                "the keychain holds the keys of user {user:?} of this vault, but the vault directory holds none of the user's data (it was removed): restore the vault directory from a backup, or erase the user"
            )));
        }
        let kek = Key32::generate();
        let mac_key = Key32::generate();
        store.put(&Self::kek_name(&vault_hex, user, 1), kek.expose())?;
        // The mark before the format that requires it (the caller records the format
        // once the trees are durable; a crash before leaves a user the next open
        // creates again). It replaces any mark an earlier user of this name left.
        let mark_key = super::mark::MarkKey::new(&mac_key, &vault_id, user);
        store.put(
            &super::mark::name(&vault_hex, user),
            &mark_key.seal(&super::mark::Mark::default()),
        )?;
        let mut h = KeyHierarchy {
            store,
            tree,
            vault_hex,
            user: user.to_string(),
            vault_id,
            kek,
            kek_version: 1,
            deks: BTreeMap::new(),
            current_epoch: 1,
            mac_key,
            state_authenticated: true,
            keychain_format: 0,
        };
        let dek = Key32::generate();
        let entries: NewEntries = vec![
            (
                MAC_ENTRY.into(),
                h.wrap(MAC_ENTRY, &h.mac_key, now_us, &h.kek, 1).into(),
            ),
            (
                dek_entry(1).into(),
                h.wrap(&dek_entry(1), &dek, now_us, &h.kek, 1).into(),
            ),
            (CURRENT_EPOCH.into(), 1u32.to_be_bytes().as_ref().into()),
            (KEK_VERSION.into(), 1u32.to_be_bytes().as_ref().into()),
        ];
        h.deks.insert(1, (dek, now_us));
        Ok((h, entries))
    }

    /// The DEK of the current epoch and its number.
    pub(crate) fn current(&self) -> (u32, &Key32) {
        (self.current_epoch, &self.deks[&self.current_epoch].0)
    }

    /// Creation time of the current epoch.
    pub(crate) fn current_created_us(&self) -> i64 {
        self.deks[&self.current_epoch].1
    }

    /// The DEK of `epoch`, if it is still live.
    pub(crate) fn dek(&self, epoch: u32) -> Option<&Key32> {
        self.deks.get(&epoch).map(|(k, _)| k)
    }

    pub(crate) fn mac_key(&self) -> &Key32 {
        &self.mac_key
    }

    /// True when the user's stored state is authenticated (format 2).
    pub(crate) fn state_authenticated(&self) -> bool {
        self.state_authenticated
    }

    /// Finishes carrying a format-1 vault over: rotates the KEK, writing the MAC key
    /// under its format-2 entry. The old KEK is deleted, so no copy of the format-1 keys
    /// can be unwrapped again (no downgrade). The caller sealed the stored state first.
    pub(crate) fn upgrade_state(&mut self, flush: &dyn Fn() -> Result<()>) -> Result<u32> {
        self.state_authenticated = true;
        self.rotate_kek(flush)
    }

    pub(crate) fn kek_version(&self) -> u32 {
        self.kek_version
    }

    pub(crate) fn epochs(&self) -> Vec<EpochInfo> {
        self.deks
            .iter()
            .map(|(&epoch, &(_, created_us))| EpochInfo { epoch, created_us })
            .collect()
    }

    /// Starts a new DEK epoch (no rewrite of existing records). The caller makes the
    /// change durable before any record uses the new epoch.
    pub(crate) fn rotate_dek(&mut self, now_us: i64) -> Result<u32> {
        let epoch = self
            .current_epoch
            .checked_add(1)
            .ok_or_else(|| Error::invalid("epoch numbers exhausted"))?;
        let dek = Key32::generate();
        let mut batch = sled::Batch::default();
        batch.insert(
            dek_entry(epoch),
            self.wrap(&dek_entry(epoch), &dek, now_us, &self.kek, self.kek_version),
        );
        batch.insert(CURRENT_EPOCH, &epoch.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.deks.insert(epoch, (dek, now_us));
        self.current_epoch = epoch;
        Ok(epoch)
    }

    /// Destroys the DEKs of `epochs` (never the current one): crypto-shredding.
    pub(crate) fn retire(&mut self, epochs: &[u32]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for &e in epochs {
            if e != self.current_epoch {
                batch.remove(dek_entry(e));
            }
        }
        self.tree.apply_batch(batch)?;
        for e in epochs {
            if *e != self.current_epoch {
                self.deks.remove(e);
            }
        }
        Ok(())
    }

    /// Rotates the KEK: new KEK in the keychain, rotation marker, rewrap of every entry,
    /// delete of the old KEK, marker removed. `flush` makes each sled step durable.
    /// A failure at any step leaves a vault that [`KeyHierarchy::open`] completes.
    /// [`Error::Erased`], before anything is written, when the KEK in use is no longer
    /// in the keychain (every rotation comes through here; the uploader also looks
    /// before each bundle it sends).
    pub(crate) fn rotate_kek(&mut self, flush: &dyn Fn() -> Result<()>) -> Result<u32> {
        if !self.kek_in_keychain()? {
            // Erased elsewhere (say, through a copy of the vault): a new KEK would
            // wrap the data keys again and undo the erasure.
            return Err(Error::Erased);
        }
        let from = self.kek_version;
        let to = from
            .checked_add(1)
            .ok_or_else(|| Error::invalid("KEK versions exhausted"))?;
        let new = Key32::generate();
        self.store.put(
            &Self::kek_name(&self.vault_hex, &self.user, to),
            new.expose(),
        )?;
        failpoint::hit("kek-rotate:after-keychain-put")?;
        let mut marker = from.to_be_bytes().to_vec();
        marker.extend_from_slice(&to.to_be_bytes());
        self.tree.insert(ROTATION_MARKER, marker)?;
        flush()?;
        failpoint::hit("kek-rotate:after-marker")?;
        self.rewrap_all(new, to)?;
        flush()?;
        failpoint::hit("kek-rotate:after-rewrap")?;
        self.finish_rotation(from)?;
        flush()?;
        Ok(to)
    }

    /// Rewraps every entry under `new` and makes it the current KEK, in one atomic batch.
    fn rewrap_all(&mut self, new: Key32, new_version: u32) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mac_entry = if self.state_authenticated {
            batch.remove(MAC_ENTRY_V1);
            MAC_ENTRY
        } else {
            MAC_ENTRY_V1
        };
        batch.insert(
            mac_entry,
            self.wrap(mac_entry, &self.mac_key, 0, &new, new_version),
        );
        for (&epoch, (dek, created)) in &self.deks {
            batch.insert(
                dek_entry(epoch),
                self.wrap(&dek_entry(epoch), dek, *created, &new, new_version),
            );
        }
        batch.insert(KEK_VERSION, &new_version.to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.kek = new;
        self.kek_version = new_version;
        Ok(())
    }

    fn finish_rotation(&mut self, old_version: u32) -> Result<()> {
        self.store
            .delete(&Self::kek_name(&self.vault_hex, &self.user, old_version))?;
        failpoint::hit("kek-rotate:after-keychain-delete")?;
        self.tree.remove(ROTATION_MARKER)?;
        Ok(())
    }

    /// Crypto-shreds this user: deletes every KEK version from the keychain (nothing
    /// in sled is touched). Returns the highest version deleted, for the erase marker.
    pub(crate) fn shred(&mut self) -> Result<u32> {
        let up_to = Self::delete_keks(
            &*self.store,
            &self.vault_hex,
            &self.user,
            self.kek_version.saturating_add(1),
        )?;
        self.deks.clear();
        Ok(up_to)
    }

    /// Replaces everything in a user's keys tree by the erase marker, which keeps the
    /// highest KEK version so an opener deletes any KEK an interrupted erase left.
    pub(crate) fn mark_erased(tree: &sled::Tree, up_to: u32) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in tree.iter().keys() {
            batch.remove(key?);
        }
        batch.insert(ERASED, &up_to.to_be_bytes());
        tree.apply_batch(batch)?;
        Ok(())
    }

    /// The highest KEK version a raw keys tree names (current, rotating to, or an erase
    /// marker), without unwrapping anything; 0 when it names none.
    pub(crate) fn highest_kek_version(tree: &sled::Tree) -> u32 {
        let read = |k: &[u8], at: usize| -> u32 {
            tree.get(k)
                .ok()
                .flatten()
                .and_then(|v| {
                    v.get(at..at + 4)
                        .map(|b| u32::from_be_bytes(b.try_into().expect("4")))
                })
                .unwrap_or(0)
        };
        read(KEK_VERSION, 0)
            .max(read(ROTATION_MARKER, 4))
            .max(read(ERASED, 0))
    }

    /// True when a raw keys tree holds the erase marker.
    pub(crate) fn is_erased_tree(tree: &sled::Tree) -> bool {
        matches!(tree.get(ERASED), Ok(Some(_)))
    }

    /// Deletes every KEK version of `user` in the vault from the keychain, then the
    /// format record and the mark (src/keys/mark.rs): each version the keychain lists (where it can enumerate: Secret
    /// Service and keyutils), and versions 1..=`up_to` in any case (macOS and Windows
    /// cannot be listed here, so there the versions the vault recorded are all that is
    /// known; a rotation never skips a version). Returns the highest version deleted.
    pub(crate) fn delete_keks(
        store: &dyn KeyStore,
        vault_hex: &str,
        user: &str,
        up_to: u32,
    ) -> Result<u32> {
        let prefix = Self::kek_prefix(vault_hex, user);
        let listed = store.list(&prefix)?;
        let mut listed_max = 0;
        for name in listed.iter().flatten() {
            let Some(v) = name
                .strip_prefix(&prefix)
                .and_then(|v| v.parse::<u32>().ok())
            else {
                continue;
            };
            store.delete(name)?;
            listed_max = listed_max.max(v);
        }
        // Where the keychain lists its entries, every KEK is gone already: the loop
        // below only covers one version past them (a store that lists lazily), so an
        // inflated `up_to` costs nothing.
        let up_to = match listed {
            Some(_) => up_to.min(listed_max.saturating_add(1)),
            None => up_to,
        };
        let highest = up_to.max(listed_max);
        for v in 1..=up_to {
            store.delete(&Self::kek_name(vault_hex, user, v))?;
        }
        store.delete(&Self::format_name(vault_hex, user))?;
        store.delete(&super::mark::name(vault_hex, user))?;
        Ok(highest)
    }
}

/// Test hook: rewraps a user's MAC key under its format-1 entry `mac` (as vaults
/// before authenticated stored state kept it) and returns it.
#[cfg(feature = "test-hooks")]
pub(crate) fn downgrade_mac_entry(
    store: &dyn KeyStore,
    tree: &sled::Tree,
    vault_id: [u8; 16],
    user: &str,
) -> Result<Key32> {
    let vault_hex = data_encoding::HEXLOWER.encode(&vault_id);
    let version = be_u32(&tree.get(KEK_VERSION)?.expect("a KEK version"), "kek")?;
    let kek = KeyHierarchy::load_kek(store, &vault_hex, user, version)?.expect("the KEK");
    let w = Wrapped::decode(&tree.get(MAC_ENTRY)?.expect("a format-2 MAC entry"))?;
    let ad = KeyHierarchy::wrap_ad(&vault_id, user, MAC_ENTRY, w.kek_version);
    let mac = aead::unwrap_key(&kek, &ad, &w.sealed).expect("unwraps");
    let ad = KeyHierarchy::wrap_ad(&vault_id, user, MAC_ENTRY_V1, version);
    let v1 = Wrapped {
        kek_version: version,
        created_us: w.created_us,
        sealed: aead::wrap(&kek, &ad, mac.expose()),
    };
    tree.insert(MAC_ENTRY_V1, v1.encode())?;
    tree.remove(MAC_ENTRY)?;
    Ok(mac)
}

#[cfg(feature = "test-hooks")]
impl KeyHierarchy {
    /// Test hook: removes the keychain's format record and mark of `user`, as in
    /// vaults from before them.
    pub(crate) fn forget_format(
        store: &dyn KeyStore,
        vault_id: &[u8; 16],
        user: &str,
    ) -> Result<()> {
        let vault_hex = data_encoding::HEXLOWER.encode(vault_id);
        store.delete(&super::mark::name(&vault_hex, user))?;
        store.delete(&Self::format_name(&vault_hex, user))
    }
}

/// A 32-byte key derived from the user's MAC key with HKDF-SHA256 (`salt`, `info`).
/// Everything derived this way dies with the KEK, which wraps the MAC key.
pub(crate) fn derive_subkey(mac_key: &Key32, salt: &[u8], info: &[u8]) -> Key32 {
    use ring::hkdf;
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(mac_key.expose());
    let info = [info];
    let okm = prk
        .expand(&info, Len32)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    okm.fill(&mut out[..]).expect("length matches");
    Key32::from_slice_zeroizing(&mut out[..]).expect("32 bytes")
}
