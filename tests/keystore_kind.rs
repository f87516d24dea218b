//! The public face of the keychain choice: option names and the helpers in `common`.
mod common;

use capvault::KeyStoreKind;

#[test]
fn keystore_names_in_options() {
    let cases = [
        (KeyStoreKind::Auto, "\"auto\""),
        (KeyStoreKind::SecretService, "\"secret-service\""),
        (KeyStoreKind::Keyutils, "\"keyutils\""),
        (KeyStoreKind::MacosKeychain, "\"macos-keychain\""),
        (KeyStoreKind::WindowsCredential, "\"windows-credential\""),
    ];
    for (kind, json) in cases {
        assert_eq!(serde_json::to_string(&kind).unwrap(), json);
        assert_eq!(serde_json::from_str::<KeyStoreKind>(json).unwrap(), kind);
    }
    assert_eq!(KeyStoreKind::default(), KeyStoreKind::Auto);
}

#[test]
fn stores_lists_the_platform_keychains() {
    let stores = common::stores();
    assert!(!stores.is_empty());
    assert!(!stores.contains(&KeyStoreKind::Auto));
    #[cfg(target_os = "linux")]
    assert_eq!(
        stores,
        [KeyStoreKind::SecretService, KeyStoreKind::Keyutils]
    );
}

#[test]
fn files_under_walks_recursively() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
    std::fs::write(dir.path().join("top"), b"1").unwrap();
    std::fs::write(dir.path().join("a/b/deep"), b"2").unwrap();
    let files = common::files_under(dir.path());
    assert_eq!(files, [dir.path().join("a/b/deep"), dir.path().join("top")]);
}
