//! The C API from Python: python/capvault.py (ctypes) has its signatures and constants
//! checked against include/capvault.h, examples/python/agent.py runs through it against
//! a freshly built libcapvault, and the bundles it wrote are opened with the collector
//! side and checked event by event.

#[path = "ffi/support.rs"]
mod support;

use std::process::Command;

use capvault::{Identity, Suite};
use support::*;

#[test]
fn ffi_python_agent() {
    let lib = lib_dir().join("libcapvault.so");
    for keystore in ["keyutils", "secret-service"] {
        let tmp = tempfile::tempdir().unwrap();
        let out_dir = tmp.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        let identity = Identity::generate(Suite::X25519);
        let out = run_ok(
            Command::new("python3")
                .arg(repo().join("examples/python/agent.py"))
                .arg("--lib")
                .arg(&lib)
                .arg(tmp.path().join("vault"))
                .arg("bob")
                .arg(identity.recipient().to_string())
                .arg(&out_dir)
                .env("CAPVAULT_KEYSTORE", keystore),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("sealed "), "{stdout}");
        check_agent_events(&read_bundles(&out_dir, &identity));
    }
}

fn check_signatures(header: &std::path::Path) -> std::process::Output {
    Command::new("python3")
        .arg(repo().join("tests/ffi/check_python_signatures.py"))
        .arg(header)
        .arg(repo().join("python"))
        .output()
        .expect("run python3")
}

/// The module's signatures and constants match the header, and the check catches a
/// header that drifted (a changed parameter type, a new function, a changed code).
#[test]
fn ffi_python_module_matches_header() {
    let header = repo().join("include/capvault.h");
    let out = check_signatures(&header);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("matches the header"), "{stdout}");

    let text = std::fs::read_to_string(&header).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, expect) in [
        (
            "capvault_result capvault_flush(capvault *v);",
            "capvault_result capvault_flush(capvault *v, uint32_t flags);",
            "capvault_flush: 2 parameters",
        ),
        (
            "capvault_result capvault_pause(capvault *v, uint32_t seconds);",
            "capvault_result capvault_pause(capvault *v, int64_t seconds);",
            "capvault_pause: parameter 2 is `int64_t`",
        ),
        (
            "const char *capvault_version(void);",
            "const char *capvault_version(void);\nvoid capvault_new_thing(void);",
            "capvault_new_thing: declared in the header",
        ),
        (
            "#define CAPVAULT_FILTERED 101",
            "#define CAPVAULT_FILTERED 105",
            "CAPVAULT_FILTERED is 105",
        ),
    ] {
        assert!(text.contains(from), "the header no longer has {from}");
        let drifted = tmp.path().join("capvault.h");
        std::fs::write(&drifted, text.replace(from, to)).unwrap();
        let out = check_signatures(&drifted);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "not caught: {to}\n{stdout}");
        assert!(stdout.contains(expect), "{stdout}");
    }
}

/// Errors through the module: the code, the library's message and the static
/// description; outcomes (PAUSED) are returned, not raised; a closed vault raises.
#[test]
fn ffi_python_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let script = r#"
import sys
sys.path.insert(0, sys.argv[1])
import capvault
capvault.load(sys.argv[2])
assert capvault.is_error(capvault.ERR_FORKED) and capvault.is_error(42)
assert not capvault.is_error(capvault.PAUSED) and not capvault.is_error(150)
v = capvault.Vault.open(sys.argv[3], "dave", {"keystore": "keyutils"})
try:
    v.pause(0)
    raise SystemExit("pause(0) did not raise")
except capvault.CapvaultError as e:
    assert e.code == capvault.ERR_INVALID_ARGUMENT, e.code
    assert "invalid argument" in e.description and e.message, (e.description, e.message)
    print("raised:", e)
try:
    v.append_window_focus(3, "a\0b", "t")
    raise SystemExit("a NUL in a string was accepted")
except ValueError as e:
    assert "NUL" in str(e), e
v.pause(60)
assert v.append_mouse_move(1, 2, 3) == capvault.PAUSED
v.resume()
assert v.append_mouse_move(2, 2, 3) == capvault.OK
try:
    capvault.Vault.open(sys.argv[3], "dave", {"keystore": "keyutils", "nope": 1})
    raise SystemExit("bad option accepted")
except capvault.CapvaultError as e:
    assert e.code == capvault.ERR_INVALID_ARGUMENT and "nope" in e.message, e
v.close()
v.close()
try:
    v.flush()
    raise SystemExit("flush after close did not raise")
except capvault.CapvaultError as e:
    assert e.code == capvault.ERR_CLOSED
print("python errors: ok")
"#;
    let out = run_ok(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(repo().join("python"))
            .arg(lib_dir().join("libcapvault.so"))
            .arg(tmp.path().join("vault")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("python errors: ok"), "{stdout}");
}
