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

/// A capture agent started by pam_keyinit or systemd runs in a session keyring that
/// does not link the user keyring; the vault must work there with keyutils, and the
/// keys must be usable from another session afterwards.
#[cfg(target_os = "linux")]
#[test]
fn keyutils_vaults_work_from_a_fresh_session_keyring() {
    let d = tempfile::tempdir().unwrap();
    let vault = d.path().join("v");
    let in_fresh_session = |args: &[&str]| {
        let out = std::process::Command::new("keyctl")
            .args(["session", "-", env!("CARGO_BIN_EXE_capvault")])
            .args(args)
            .output()
            .expect("keyctl runs (scripts/test.sh installs keyutils)");
        assert!(
            out.status.success(),
            "capvault {args:?} in a fresh session keyring: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let v = vault.to_str().unwrap();
    let user = format!("ku-session-{}", std::process::id());
    in_fresh_session(&[
        "init",
        "--vault",
        v,
        "--user",
        &user,
        "--keystore",
        "keyutils",
    ]);
    in_fresh_session(&["keys", "rotate", "--kek", "--vault", v, "--user", &user]);
    // From this process's own session, then another fresh one.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_capvault"))
        .args(["status", "--vault", v, "--user", &user])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    in_fresh_session(&["verify", "--vault", v, "--user", &user]);
    in_fresh_session(&["erase", "--vault", v, "--user", &user, "--yes"]);
}
