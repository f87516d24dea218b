//! The C library at the edges of a process's and a thread's life, from real C and C++
//! programs: `capvault_close` (and other calls) from an `atexit` handler, a
//! `__attribute__((destructor))` function, a C++ static destructor and a pthread key
//! destructor of an exiting thread (all after the library's thread-local storage is
//! released); and a handle used in a child process after `fork()`.

#[path = "ffi/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use capvault::{open_bundle, Event, Identity, KeyStoreKind, Suite, Vault, VaultOptions};
use support::*;

/// The mouse-move timestamps stored in the vault at `dir` for `user`, read back through
/// a sealed bundle.
fn mouse_moves(dir: &Path, user: &str) -> Vec<i64> {
    let mut o = VaultOptions::default();
    o.keystore = KeyStoreKind::Keyutils;
    let vault = Vault::open(dir, user, o).unwrap();
    let identity = Identity::generate(Suite::X25519);
    let mut ts = Vec::new();
    while let Some(b) = vault.seal_next(&identity.recipient(), 64 << 20).unwrap() {
        let opened = open_bundle(b.bytes(), &identity).unwrap();
        ts.extend(opened.events.iter().filter_map(|e| match e.event {
            Event::MouseMove { ts_us, .. } => Some(ts_us),
            _ => None,
        }));
        vault.ack(b.id(), None).unwrap();
    }
    vault.close().unwrap();
    ts
}

fn run_exit_mode(prog: &Path, mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vault");
    let mut cmd = Command::new(prog);
    cmd.arg(&dir).env("CAPVAULT_KEYSTORE", "keyutils");
    if !mode.is_empty() {
        cmd.arg(mode);
    }
    let out = run_ok(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let label = if mode.is_empty() { "static" } else { mode };
    assert!(stdout.contains(&format!("{label}: ")), "{stdout}");
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
    // The failing call made after the thread-locals were released still had a message.
    assert!(
        stdout.contains("failing call reported: ") || stdout.contains("NULL"),
        "{stdout}"
    );
    assert_eq!(mouse_moves(&dir, "alice"), [1, 2, 3], "{stdout}");
}

/// Builds tests/ffi/exit_paths.c and runs it in `mode`.
fn exit_paths(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let prog = tmp.path().join("exit_paths");
    compile_c(
        &[&repo().join("tests/ffi/exit_paths.c")],
        &prog,
        &["-pthread"],
    );
    run_exit_mode(&prog, mode);
}

#[test]
fn ffi_close_from_atexit_handler() {
    exit_paths("atexit");
}

#[test]
fn ffi_close_from_destructor_function() {
    exit_paths("destructor");
}

#[test]
fn ffi_calls_from_exiting_thread() {
    exit_paths("thread");
}

#[test]
fn ffi_close_from_cxx_static_destructor() {
    let tmp = tempfile::tempdir().unwrap();
    let prog = tmp.path().join("exit_static");
    compile_cxx(&[&repo().join("tests/ffi/exit_static.cpp")], &prog, &[]);
    run_exit_mode(&prog, "");
}

#[test]
fn ffi_handle_in_forked_child_fails_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let prog = tmp.path().join("fork");
    compile_c(&[&repo().join("tests/ffi/fork.c")], &prog, &["-pthread"]);
    let identity = Identity::generate(Suite::X25519);
    let dir = tmp.path().join("vault");
    let started = std::time::Instant::now();
    let out = run_ok(
        Command::new(&prog)
            .arg(&dir)
            .arg(tmp.path().join("other"))
            .arg(identity.recipient().to_string())
            .env("CAPVAULT_KEYSTORE", "keyutils"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("child: 0 failure(s)"), "{stdout}");
    assert!(stdout.contains("fork: ok"), "{stdout}");
    assert!(started.elapsed().as_secs() < 20, "the child blocked");
    // Every mouse move the parent appended, before, during and after the fork, is there.
    let n: i64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("parent: appended "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("parent's count");
    assert!(n > 1, "{stdout}");
    assert_eq!(mouse_moves(&dir, "alice"), (1..=n).collect::<Vec<_>>());
    // The child's own vault took its event.
    assert_eq!(mouse_moves(&tmp.path().join("other"), "carol"), [5]);
}
