//! The OS keychain: where KEKs and the device signing key live, and nowhere else.
//!
//! Backends: Secret Service (Linux, persistent), kernel keyutils (Linux, no daemon,
//! lost at reboot), macOS Keychain, Windows Credential Manager. There is no file or
//! plaintext fallback: when no keychain is usable, opening a vault fails.
//!
//! Every secret is stored under the service name [`SERVICE`] and a caller-chosen
//! `name`. Secret Service, macOS and Windows go through `keyring-core` with a store
//! object held by this module (never the process-global default store). Keyutils is
//! driven directly through `linux-keyutils`, because the `linux-keyutils-keyring-store`
//! insists on linking keys into the persistent keyring, which many systems refuse.
//!
//! Secrets come back as `Zeroizing<Vec<u8>>`; no type here prints secret bytes, and
//! error text never includes them.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Which keychain a vault uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyStoreKind {
    /// The platform's persistent store (Secret Service on Linux).
    #[default]
    Auto,
    /// Freedesktop Secret Service over D-Bus (gnome-keyring, KWallet, KeePassXC).
    SecretService,
    /// Linux kernel keyutils, user keyring. Keys do not survive a reboot.
    Keyutils,
    /// macOS Keychain.
    MacosKeychain,
    /// Windows Credential Manager.
    WindowsCredential,
}

impl KeyStoreKind {
    /// The name used in options and status output (`"secret-service"`, ...).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KeyStoreKind::Auto => "auto",
            KeyStoreKind::SecretService => "secret-service",
            KeyStoreKind::Keyutils => "keyutils",
            KeyStoreKind::MacosKeychain => "macos-keychain",
            KeyStoreKind::WindowsCredential => "windows-credential",
        }
    }
}

/// A keychain holding small named secrets for capvault (service name `capvault`).
pub(crate) trait KeyStore: Send + Sync {
    /// The concrete backend (never `Auto`).
    fn kind(&self) -> KeyStoreKind;
    /// False when keys vanish at reboot (keyutils).
    fn persistent(&self) -> bool;
    /// Creates or replaces the secret stored under `name`.
    fn put(&self, name: &str, secret: &[u8]) -> Result<()>;
    /// The secret stored under `name`, or `None` when there is none.
    fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>>;
    /// Removes the secret under `name`; removing a missing one succeeds.
    fn delete(&self, name: &str) -> Result<()>;
    /// Every name starting with `prefix` this keychain holds for capvault, or `None`
    /// when the backend cannot enumerate its entries (the caller then goes by the names
    /// it recorded).
    fn list(&self, _prefix: &str) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
}

/// The service name every capvault secret is filed under.
pub(crate) const SERVICE: &str = "capvault";

/// A name looked up when a store is opened, to prove the store answers. Never written.
const PROBE_NAME: &str = "capvault-availability-probe";

/// Opens the requested keychain, checking that it is usable; `Auto` resolves to the
/// platform's persistent store.
pub(crate) fn open_keystore(kind: KeyStoreKind) -> Result<Arc<dyn KeyStore>> {
    match resolve(kind)? {
        #[cfg(target_os = "linux")]
        KeyStoreKind::SecretService => Ok(Arc::new(linux::SecretService::open()?)),
        #[cfg(target_os = "linux")]
        KeyStoreKind::Keyutils => Ok(Arc::new(linux::Keyutils::open()?)),
        #[cfg(target_os = "macos")]
        KeyStoreKind::MacosKeychain => Ok(Arc::new(native::NativeStore::open_macos()?)),
        #[cfg(target_os = "windows")]
        KeyStoreKind::WindowsCredential => Ok(Arc::new(native::NativeStore::open_windows()?)),
        other => Err(unavailable(other)),
    }
}

/// The keychains this platform has, its persistent store (what `Auto` means) first.
pub(crate) const NATIVE_KINDS: &[KeyStoreKind] = if cfg!(target_os = "linux") {
    &[KeyStoreKind::SecretService, KeyStoreKind::Keyutils]
} else if cfg!(target_os = "macos") {
    &[KeyStoreKind::MacosKeychain]
} else if cfg!(target_os = "windows") {
    &[KeyStoreKind::WindowsCredential]
} else {
    &[]
};

/// Maps `Auto` to this platform's persistent store and rejects backends this platform
/// does not have.
fn resolve(kind: KeyStoreKind) -> Result<KeyStoreKind> {
    let native = NATIVE_KINDS;
    let resolved = if kind == KeyStoreKind::Auto {
        *native.first().ok_or_else(|| unavailable(kind))?
    } else {
        kind
    };
    if native.contains(&resolved) {
        Ok(resolved)
    } else {
        Err(unavailable(resolved))
    }
}

fn unavailable(kind: KeyStoreKind) -> Error {
    let supported = if cfg!(target_os = "linux") {
        "\"secret-service\" or \"keyutils\""
    } else if cfg!(target_os = "macos") {
        "\"macos-keychain\""
    } else if cfg!(target_os = "windows") {
        "\"windows-credential\""
    } else {
        "none"
    };
    Error::keychain(format!(
        "keystore \"{}\" is not available on {} (supported here: {supported}); capvault has no \
         file or plaintext fallback",
        kind.as_str(),
        std::env::consts::OS,
    ))
}

/// Rejects names no backend can store faithfully.
/// The longest entry name: `kek/<32 hex>/<hex of a 128-byte user>/v<u32>` is 305
/// bytes, so every user name the vault accepts fits; every backend takes far more
/// (keyutils descriptions up to 4095 bytes, Windows targets up to 32767 characters).
const MAX_NAME: usize = 400;

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "a keychain entry name must be 1 to {MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

/// Backends that go through `keyring-core`: Secret Service, macOS, Windows.
#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
mod core_store {
    use std::sync::Arc;

    use keyring_core::api::CredentialStore;
    use keyring_core::{Entry, Error as KcError};
    use zeroize::{Zeroize, Zeroizing};

    use super::{check_name, SERVICE};
    use crate::error::{Error, Result};

    /// What to tell a person when a `keyring-core` store fails.
    pub(super) struct Hints {
        /// The store, as people know it ("Secret Service").
        pub what: &'static str,
        /// What to do when the store refuses access (locked, denied).
        pub locked: &'static str,
        /// What to do when the store is broken or unreachable.
        pub broken: &'static str,
    }

    /// One `keyring-core` store plus the advice to give when it fails.
    pub(super) struct CoreStore {
        store: Arc<CredentialStore>,
        hints: Hints,
    }

    impl std::fmt::Debug for CoreStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("CoreStore")
                .field("store", &self.hints.what)
                .finish_non_exhaustive()
        }
    }

    impl CoreStore {
        /// Wraps `store` and proves it answers by looking up a name that is never
        /// written.
        pub(super) fn new(store: Arc<CredentialStore>, hints: Hints) -> Result<Self> {
            let this = CoreStore { store, hints };
            this.get(super::PROBE_NAME)?;
            Ok(this)
        }

        fn entry(&self, name: &str) -> Result<Entry> {
            check_name(name)?;
            Entry::new_in_store(&self.store, SERVICE, name).map_err(|e| self.error(name, e))
        }

        pub(super) fn put(&self, name: &str, secret: &[u8]) -> Result<()> {
            self.entry(name)?
                .set_secret(secret)
                .map_err(|e| self.error(name, e))
        }

        pub(super) fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
            match self.entry(name)?.get_secret() {
                Ok(secret) => Ok(Some(Zeroizing::new(secret))),
                Err(KcError::NoEntry) => Ok(None),
                Err(e) => Err(self.error(name, e)),
            }
        }

        pub(super) fn delete(&self, name: &str) -> Result<()> {
            match self.entry(name)?.delete_credential() {
                Ok(()) | Err(KcError::NoEntry) => Ok(()),
                Err(e) => Err(self.error(name, e)),
            }
        }

        /// Names under `prefix`, found by searching the store's attributes
        /// `service=capvault` (Secret Service items carry `username=<name>`).
        #[cfg(target_os = "linux")]
        pub(super) fn list(&self, prefix: &str) -> Result<Vec<String>> {
            let spec = std::collections::HashMap::from([("service", SERVICE)]);
            let found =
                Entry::search_in_store(&self.store, &spec).map_err(|e| self.error(prefix, e))?;
            let mut names: Vec<String> = found
                .iter()
                .filter_map(|e| e.get_specifiers())
                .filter(|(service, name)| service == SERVICE && name.starts_with(prefix))
                .map(|(_, name)| name)
                .collect();
            names.sort();
            names.dedup();
            Ok(names)
        }

        /// Turns a `keyring-core` error into an actionable message. Variants that
        /// carry secret bytes are wiped and never formatted.
        pub(super) fn error(&self, name: &str, e: KcError) -> Error {
            let Hints {
                what,
                locked,
                broken,
            } = self.hints;
            let msg = match e {
                KcError::NoStorageAccess(err) => {
                    format!("{what} refused access to \"{SERVICE}/{name}\" ({err}): {locked}")
                }
                KcError::PlatformFailure(err) => {
                    format!("{what} failed on \"{SERVICE}/{name}\" ({err}): {broken}")
                }
                KcError::Ambiguous(items) => format!(
                    "{what} holds {} entries for \"{SERVICE}/{name}\"; remove all but one \
                     (they may have been made by another program)",
                    items.len()
                ),
                KcError::BadEncoding(mut bytes) | KcError::BadDataFormat(mut bytes, _) => {
                    bytes.zeroize();
                    format!("{what} returned an unreadable secret for \"{SERVICE}/{name}\"")
                }
                KcError::TooLong(attr, limit) => format!(
                    "{what} cannot store \"{SERVICE}/{name}\": {attr} exceeds its limit of \
                     {limit}"
                ),
                KcError::Invalid(attr, reason) => {
                    format!("{what} rejected \"{SERVICE}/{name}\": {attr} is invalid ({reason})")
                }
                other => format!("{what} failed on \"{SERVICE}/{name}\" ({other}): {broken}"),
            };
            Error::keychain(msg)
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::sync::Arc;

    use keyring_core::api::CredentialStore;
    use linux_keyutils::{KeyError, KeyPermissionsBuilder, KeyRing, KeyRingIdentifier, Permission};
    use zeroize::Zeroizing;

    use super::core_store::{CoreStore, Hints};
    use super::{check_name, KeyStore, KeyStoreKind};
    use crate::error::{Error, Result};

    const SS_UNREACHABLE: &str = "start gnome-keyring (or another Secret Service such as \
        KWallet or KeePassXC) on the session D-Bus and unlock it, or choose keystore \
        \"keyutils\"";

    /// Freedesktop Secret Service (gnome-keyring, KWallet, KeePassXC) over the session
    /// D-Bus. Items live in the default collection with attributes
    /// `service=capvault`, `username=<name>`.
    pub(super) struct SecretService {
        inner: CoreStore,
    }

    impl std::fmt::Debug for SecretService {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("SecretService")
        }
    }

    impl SecretService {
        pub(super) fn open() -> Result<Self> {
            let store: Arc<CredentialStore> = zbus_secret_service_keyring_store::Store::new()
                .map_err(|e| {
                    Error::keychain(format!(
                        "Secret Service is not reachable on the session D-Bus ({e}): \
                         {SS_UNREACHABLE}"
                    ))
                })?;
            let hints = Hints {
                what: "Secret Service",
                locked: "unlock the keyring (for gnome-keyring: log in to the desktop, or \
                         run gnome-keyring-daemon --unlock), or choose keystore \"keyutils\"",
                broken: SS_UNREACHABLE,
            };
            Ok(SecretService {
                inner: CoreStore::new(store, hints)?,
            })
        }
    }

    impl KeyStore for SecretService {
        fn kind(&self) -> KeyStoreKind {
            KeyStoreKind::SecretService
        }
        fn persistent(&self) -> bool {
            true
        }
        fn put(&self, name: &str, secret: &[u8]) -> Result<()> {
            self.inner.put(name, secret)
        }
        fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
            self.inner.get(name)
        }
        fn delete(&self, name: &str) -> Result<()> {
            self.inner.delete(name)
        }
        fn list(&self, prefix: &str) -> Result<Option<Vec<String>>> {
            self.inner.list(prefix).map(Some)
        }
    }

    /// The Linux kernel key retention service, user keyring (`@u`), keys of type
    /// `user` described as `capvault:<name>`.
    ///
    /// No daemon is needed, but the keys live in kernel memory only: they are lost at
    /// reboot (and when the user's last process exits, on kernels that tear the user
    /// keyring down then). The persistent keyring is not used because linking into it
    /// is commonly denied.
    ///
    /// Keys are given user (same uid) read/search permission in addition to the
    /// possessor's, so that processes whose session keyring does not link the user
    /// keyring (services, containers, other logins) can read them too; they are
    /// never readable by other uids.
    #[derive(Debug)]
    pub(super) struct Keyutils {
        ring: KeyRing,
    }

    const KU_HINT: &str = "the kernel keyring (keyutils) must be usable, or choose keystore \
        \"secret-service\"";

    /// Serializes puts, which stage keys in the process keyring.
    static STAGING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    impl Keyutils {
        pub(super) fn open() -> Result<Self> {
            let ring = KeyRing::from_special_id(KeyRingIdentifier::User, true).map_err(|e| {
                Error::keychain(format!(
                    "cannot open the kernel user keyring ({e}): {KU_HINT}"
                ))
            })?;
            let this = Keyutils { ring };
            this.get(super::PROBE_NAME)?;
            Ok(this)
        }

        fn description(name: &str) -> Result<String> {
            check_name(name)?;
            Ok(format!("{}:{name}", super::SERVICE))
        }

        fn error(what: &str, desc: &str, e: KeyError) -> Error {
            let advice = match e {
                KeyError::QuotaExceeded => {
                    "the per-user key quota is exhausted (see /proc/sys/kernel/keys/maxkeys \
                     and maxbytes)"
                }
                KeyError::KeyRevoked | KeyError::KeyExpired => {
                    "the key was revoked or expired; delete it and restore the vault's keys"
                }
                KeyError::AccessDenied => {
                    "the key's permissions do not allow it to this process; keys stored by \
                     another uid or by another program under the same name cannot be used \
                     (see `keyctl show @u`)"
                }
                KeyError::PermissionDenied | KeyError::OperationNotSupported => {
                    "the kernel refused the keyctl call itself; in containers, keyctl and \
                     add_key are often blocked by the seccomp profile; or choose keystore \
                     \"secret-service\""
                }
                _ => KU_HINT,
            };
            Error::keychain(format!(
                "keyutils: cannot {what} \"{desc}\" ({e}): {advice}"
            ))
        }
    }

    impl KeyStore for Keyutils {
        fn kind(&self) -> KeyStoreKind {
            KeyStoreKind::Keyutils
        }

        fn persistent(&self) -> bool {
            false
        }

        fn put(&self, name: &str, secret: &[u8]) -> Result<()> {
            let desc = Self::description(name)?;
            // A key is created in the process keyring, which this process always
            // possesses, given its permissions there, and only then linked into the
            // user keyring. Created directly in the user keyring, it would not be
            // possessed by a process whose session keyring does not link the user
            // keyring (`keyctl session`, pam_keyinit logins, systemd services), and
            // setting its permissions would be refused after it was already stored.
            // One put at a time: the process keyring is shared by every thread.
            let _one_at_a_time = STAGING.lock().unwrap_or_else(|e| e.into_inner());
            let staging = KeyRing::from_special_id(KeyRingIdentifier::Process, true)
                .map_err(|e| Self::error("create the process keyring for", &desc, e))?;
            let key = staging
                .add_key(&desc, secret)
                .map_err(|e| Self::error("store", &desc, e))?;
            let perms = KeyPermissionsBuilder::builder()
                .posessor(Permission::ALL)
                .user(Permission::ALL)
                .build();
            // Linking displaces a key of the same description in the user keyring,
            // so a replaced secret is swapped in one step.
            let linked = key
                .set_perms(perms)
                .map_err(|e| Self::error("set permissions on", &desc, e))
                .and_then(|()| {
                    self.ring
                        .link_key(key)
                        .map_err(|e| Self::error("store", &desc, e))
                });
            // The staging link goes whatever happened; a key that never reached the
            // user keyring is destroyed rather than left behind.
            let _ = staging.unlink_key(key);
            if linked.is_err() {
                let _ = key.invalidate();
            }
            linked
        }

        fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
            let desc = Self::description(name)?;
            // Search from the user keyring only (not request_key, which would also look
            // in the thread, process and session keyrings).
            let key = match self.ring.search(&desc) {
                Ok(key) => key,
                // A key being invalidated or expiring is as good as gone.
                Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired) => {
                    return Ok(None)
                }
                Err(e) => return Err(Self::error("find", &desc, e)),
            };
            // Read into a buffer of exactly the right size so that no copy of the
            // secret is left behind by a reallocation.
            loop {
                let len = match key.read(&mut Vec::new()) {
                    Ok(len) => len,
                    // Invalidated (deleted) keys linger briefly until the kernel collects them.
                    Err(
                        KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired,
                    ) => return Ok(None),
                    Err(e) => return Err(Self::error("read", &desc, e)),
                };
                let mut buf = Zeroizing::new(vec![0u8; len]);
                match key.read(&mut *buf) {
                    Ok(n) if n <= len => {
                        buf.truncate(n);
                        return Ok(Some(buf));
                    }
                    Ok(_) => continue, // replaced by a longer secret meanwhile
                    // Invalidated (deleted) keys linger briefly until the kernel collects them.
                    Err(
                        KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired,
                    ) => return Ok(None),
                    Err(e) => return Err(Self::error("read", &desc, e)),
                }
            }
        }

        fn delete(&self, name: &str) -> Result<()> {
            let desc = Self::description(name)?;
            let key = match self.ring.search(&desc) {
                Ok(key) => key,
                // Already invalidated, not yet collected by the kernel: already deleted.
                Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired) => {
                    return Ok(())
                }
                Err(e) => return Err(Self::error("find", &desc, e)),
            };
            // Invalidation removes the key from every keyring at once and has the kernel
            // free (and wipe) its payload.
            match key.invalidate() {
                Ok(())
                | Err(KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired) => {
                    Ok(())
                }
                Err(e) => Err(Self::error("delete", &desc, e)),
            }
        }

        /// Names under `prefix`: the kernel lists every key this process may view in
        /// `/proc/keys` (the keyring read call of linux-keyutils needs its buffer size
        /// guessed in advance); each candidate of this uid is then looked up in `@u`, so
        /// only keys `get` would find are named.
        fn list(&self, prefix: &str) -> Result<Option<Vec<String>>> {
            let text = match std::fs::read_to_string("/proc/keys") {
                Ok(t) => t,
                // Kernels built without /proc/keys: go by the recorded names.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(Error::keychain(format!(
                        "keyutils: cannot list the keys in /proc/keys ({e}): {KU_HINT}"
                    )))
                }
            };
            let uid = rustix::process::geteuid().as_raw().to_string();
            let want = format!("{}:{prefix}", super::SERVICE);
            let mut names = Vec::new();
            for line in text.lines() {
                // id flags usage timeout perm uid gid type description: summary
                let f: Vec<&str> = line.split_whitespace().collect();
                let (Some(owner), Some(kind), Some(desc)) = (f.get(5), f.get(7), f.get(8)) else {
                    continue;
                };
                let desc = desc.strip_suffix(':').unwrap_or(desc);
                if *owner != uid || *kind != "user" || !desc.starts_with(&want) {
                    continue;
                }
                match self.ring.search(desc) {
                    Ok(_) => names.push(desc[super::SERVICE.len() + 1..].to_string()),
                    Err(
                        KeyError::KeyDoesNotExist | KeyError::KeyRevoked | KeyError::KeyExpired,
                    ) => {}
                    Err(e) => return Err(Self::error("find", desc, e)),
                }
            }
            names.sort();
            names.dedup();
            Ok(Some(names))
        }
    }
}

/// macOS Keychain and Windows Credential Manager, through `keyring-core`. Mirrors the
/// Secret Service backend; only built (and testable) on those platforms.
#[cfg(any(target_os = "macos", target_os = "windows"))]
mod native {
    use std::sync::Arc;

    use keyring_core::api::CredentialStore;
    use zeroize::Zeroizing;

    use super::core_store::{CoreStore, Hints};
    use super::{KeyStore, KeyStoreKind};
    use crate::error::{Error, Result};

    pub(super) struct NativeStore {
        kind: KeyStoreKind,
        inner: CoreStore,
    }

    impl std::fmt::Debug for NativeStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NativeStore")
                .field("kind", &self.kind)
                .finish_non_exhaustive()
        }
    }

    impl NativeStore {
        #[cfg(target_os = "macos")]
        pub(super) fn open_macos() -> Result<Self> {
            let hints = Hints {
                what: "the macOS Keychain",
                locked: "unlock the login keychain and allow capvault access to it",
                broken: "check the login keychain with Keychain Access",
            };
            let store: Arc<CredentialStore> = apple_native_keyring_store::keychain::Store::new()
                .map_err(|e| Error::keychain(format!("cannot open the macOS Keychain ({e})")))?;
            Ok(NativeStore {
                kind: KeyStoreKind::MacosKeychain,
                inner: CoreStore::new(store, hints)?,
            })
        }

        #[cfg(target_os = "windows")]
        pub(super) fn open_windows() -> Result<Self> {
            let hints = Hints {
                what: "Windows Credential Manager",
                locked: "log in interactively as the user who owns the vault",
                broken: "check the user's Credential Manager",
            };
            let store: Arc<CredentialStore> =
                windows_native_keyring_store::Store::new().map_err(|e| {
                    Error::keychain(format!("cannot open Windows Credential Manager ({e})"))
                })?;
            Ok(NativeStore {
                kind: KeyStoreKind::WindowsCredential,
                inner: CoreStore::new(store, hints)?,
            })
        }
    }

    impl KeyStore for NativeStore {
        fn kind(&self) -> KeyStoreKind {
            self.kind
        }
        fn persistent(&self) -> bool {
            true
        }
        fn put(&self, name: &str, secret: &[u8]) -> Result<()> {
            self.inner.put(name, secret)
        }
        fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
            self.inner.get(name)
        }
        fn delete(&self, name: &str) -> Result<()> {
            self.inner.delete(name)
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Opens `kind` or fails the test with what to install or start.
    fn open(kind: KeyStoreKind) -> Arc<dyn KeyStore> {
        match open_keystore(kind) {
            Ok(store) => store,
            Err(e) => panic!(
                "the {} keychain is not usable: {e}\n\
                 Run the tests through `bash scripts/test.sh`, which installs gnome-keyring, \
                 dbus and keyutils and starts an unlocked gnome-keyring in a private D-Bus \
                 session.",
                kind.as_str()
            ),
        }
    }

    /// A name no other test (or concurrent test process) uses.
    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        format!(
            "test-{tag}-{}-{:016x}-{}",
            std::process::id(),
            u64::from_le_bytes(capvault_format::secret::random_array()),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn round_trip(kind: KeyStoreKind) {
        let store = open(kind);
        assert_eq!(store.kind(), kind);
        let name = unique(kind.as_str());

        assert!(
            store.get(&name).unwrap().is_none(),
            "fresh name must be empty"
        );
        store
            .delete(&name)
            .expect("deleting a missing entry succeeds");

        let first = [0x11u8; 32];
        store.put(&name, &first).unwrap();
        assert_eq!(
            store.get(&name).unwrap().as_deref().map(|v| &v[..]),
            Some(&first[..])
        );

        // Replace with a secret of a different length.
        let second: Vec<u8> = (0u8..48).collect();
        store.put(&name, &second).unwrap();
        assert_eq!(
            store.get(&name).unwrap().as_deref().map(|v| &v[..]),
            Some(&second[..])
        );

        // Names are independent.
        let other = unique(kind.as_str());
        assert!(store.get(&other).unwrap().is_none());

        store.delete(&name).unwrap();
        assert!(store.get(&name).unwrap().is_none());
        store.delete(&name).expect("deleting twice succeeds");
    }

    #[test]
    fn secret_service_round_trip() {
        round_trip(KeyStoreKind::SecretService);
    }

    #[test]
    fn keyutils_round_trip() {
        round_trip(KeyStoreKind::Keyutils);
    }

    #[test]
    fn auto_is_secret_service_on_linux() {
        assert_eq!(
            resolve(KeyStoreKind::Auto).unwrap(),
            KeyStoreKind::SecretService
        );
        assert!(open(KeyStoreKind::Auto).persistent());
        assert!(!open(KeyStoreKind::Keyutils).persistent());
    }

    #[test]
    fn foreign_platform_stores_are_refused_by_name() {
        for kind in [KeyStoreKind::MacosKeychain, KeyStoreKind::WindowsCredential] {
            let err = open_keystore(kind).err().expect("must be refused on Linux");
            let msg = err.to_string();
            assert!(matches!(err, Error::Keychain(_)), "{msg}");
            assert!(
                msg.contains("linux") && msg.contains(kind.as_str()),
                "{msg}"
            );
        }
    }

    #[test]
    fn keyutils_keys_live_in_the_user_keyring() {
        use linux_keyutils::{KeyRing, KeyRingIdentifier};
        let store = open(KeyStoreKind::Keyutils);
        let name = unique("placement");
        store.put(&name, b"k").unwrap();
        let user = KeyRing::from_special_id(KeyRingIdentifier::User, false).unwrap();
        let key = user.search(&format!("capvault:{name}")).unwrap();
        assert_eq!(
            key.metadata().unwrap().get_description(),
            format!("capvault:{name}")
        );
        store.delete(&name).unwrap();
        assert!(user.search(&format!("capvault:{name}")).is_err());

        // A key of the same description in the session keyring is not ours.
        let session = KeyRing::from_special_id(KeyRingIdentifier::Session, true).unwrap();
        let stray = session
            .add_key(&format!("capvault:{name}"), b"stray")
            .unwrap();
        let found = store.get(&name);
        stray.invalidate().unwrap();
        assert!(found.unwrap().is_none(), "must not read keys outside @u");
    }

    /// Run by `keyutils_works_in_a_fresh_session_keyring` in a fresh session keyring
    /// that does not link the user keyring, as under pam_keyinit or systemd.
    #[test]
    #[ignore = "helper: run under `keyctl session` by keyutils_works_in_a_fresh_session_keyring"]
    fn keyutils_in_a_fresh_session_child() {
        let Ok(name) = std::env::var("CAPVAULT_KU_NAME") else {
            return;
        };
        use linux_keyutils::{KeyError, KeyRing, KeyRingIdentifier};
        let store = open(KeyStoreKind::Keyutils);
        store.put(&name, b"first").unwrap();
        assert_eq!(store.get(&name).unwrap().unwrap().as_slice(), b"first");
        store.put(&name, b"second, longer").unwrap();
        assert_eq!(
            store.get(&name).unwrap().unwrap().as_slice(),
            b"second, longer"
        );
        // Nothing stays staged in the process keyring.
        let process = KeyRing::from_special_id(KeyRingIdentifier::Process, false).unwrap();
        assert!(process
            .search(&format!("{SERVICE}:{name}"))
            .is_err_and(|e| e == KeyError::KeyDoesNotExist));
        println!("STORED");
    }

    #[test]
    fn keyutils_works_in_a_fresh_session_keyring() {
        let name = unique("fresh-session");
        let out = std::process::Command::new("keyctl")
            .args(["session", "-"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "keys::keystore::tests::keyutils_in_a_fresh_session_child",
                "--nocapture",
            ])
            .env("CAPVAULT_KU_NAME", &name)
            .output()
            .expect("keyctl runs (scripts/test.sh installs keyutils)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("STORED"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Stored in the user keyring, readable from this (another) session.
        let store = open(KeyStoreKind::Keyutils);
        assert_eq!(
            store.get(&name).unwrap().unwrap().as_slice(),
            b"second, longer"
        );
        store.delete(&name).unwrap();
    }

    #[test]
    fn keyutils_keys_are_readable_from_another_session_keyring() {
        // A capture agent started by a service manager does not share the CLI's session
        // keyring, so the key must be readable by the uid without possession.
        let store = open(KeyStoreKind::Keyutils);
        let name = unique("session");
        store.put(&name, b"shared-across-sessions").unwrap();
        let out = std::process::Command::new("keyctl")
            .args(["session", "-", "keyctl", "pipe"])
            .arg(format!("%user:capvault:{name}"))
            .output();
        store.delete(&name).unwrap();
        let out = out.unwrap_or_else(|e| {
            panic!(
                "cannot run keyctl ({e}): install keyutils, or run the tests through \
                 `bash scripts/test.sh`, which does"
            )
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"shared-across-sessions");
    }

    #[test]
    fn bad_names_are_rejected() {
        let store = open(KeyStoreKind::Keyutils);
        for name in ["", "a\nb", "nul\0"] {
            assert!(matches!(store.get(name), Err(Error::InvalidArgument(_))));
        }
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let marker = b"do-not-print-this-secret";
        for kind in [KeyStoreKind::SecretService, KeyStoreKind::Keyutils] {
            let name = unique("debug");
            let debug = match kind {
                KeyStoreKind::SecretService => {
                    let s = linux::SecretService::open().unwrap();
                    s.put(&name, marker).unwrap();
                    let d = format!("{s:?}");
                    s.delete(&name).unwrap();
                    d
                }
                _ => {
                    let s = linux::Keyutils::open().unwrap();
                    s.put(&name, marker).unwrap();
                    let d = format!("{s:?}");
                    s.delete(&name).unwrap();
                    d
                }
            };
            assert!(!debug.contains("do-not-print"), "{debug}");
        }
    }
}
