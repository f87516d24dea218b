//! The C API from Python (ctypes): examples/python/agent.py runs against a freshly
//! built libcapvault, and the bundles it wrote are opened with the collector side and
//! checked event by event.

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
