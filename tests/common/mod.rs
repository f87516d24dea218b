//! Helpers shared by the integration tests (`mod common;` in each test file).
// Each test file uses a different subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use capvault::KeyStoreKind;

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
