//! The OS keychain: where KEKs and the device signing key live, and nowhere else.
//!
//! Backends: Secret Service (Linux, persistent), kernel keyutils (Linux, no daemon,
//! lost at reboot), macOS Keychain, Windows Credential Manager. There is no file or
//! plaintext fallback: when no keychain is usable, opening a vault fails.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::error::Result;

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
}

/// Opens the requested keychain, checking that it is usable; `Auto` resolves to the
/// platform's persistent store.
pub(crate) fn open_keystore(kind: KeyStoreKind) -> Result<Arc<dyn KeyStore>> {
    let _ = kind;
    todo!("keystore backends")
}
