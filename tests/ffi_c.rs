//! The C API from C: examples/c/agent.c (also under valgrind, and linked through the
//! pkg-config file against the static library) and tests/ffi/bad_input.c, compiled
//! against include/capvault.h and a freshly built libcapvault. What agent.c seals is
//! opened with the collector side and checked event by event.

#[path = "ffi/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use capvault::{Identity, Suite};
use support::*;

/// Runs an agent executable (`prefix` runs it under another program, such as valgrind)
/// on a fresh vault and checks the events in the bundles it wrote.
fn run_agent(agent: &Path, prefix: &[&str], keystore: &str) -> std::process::Output {
    let tmp = tempfile::tempdir().unwrap();
    let vault = tmp.path().join("vault");
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let identity = Identity::generate(Suite::X25519);
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(agent);
            c
        }
        None => Command::new(agent),
    };
    cmd.arg(&vault)
        .arg("alice")
        .arg(identity.recipient().to_string())
        .arg(&out_dir)
        .env("CAPVAULT_KEYSTORE", keystore);
    let output = run_ok(&mut cmd);
    let events = read_bundles(&out_dir, &identity);
    check_agent_events(&events);
    output
}

#[test]
fn ffi_c_agent_on_both_keychains() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = tmp.path().join("agent");
    compile_c(&[&repo().join("examples/c/agent.c")], &agent, &[]);
    for keystore in ["keyutils", "secret-service"] {
        let out = run_agent(&agent, &[], keystore);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("status: {"), "{stdout}");
        assert!(
            stdout.contains(&format!("\"keystore\":\"{keystore}\"")),
            "{stdout}"
        );
    }
}

#[test]
fn ffi_c_agent_under_valgrind() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = tmp.path().join("agent");
    compile_c(&[&repo().join("examples/c/agent.c")], &agent, &[]);
    let out = run_agent(
        &agent,
        &[
            "valgrind",
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,possible",
            "--show-leak-kinds=definite,possible",
            &format!(
                "--suppressions={}",
                repo().join("tests/ffi/valgrind.supp").display()
            ),
        ],
        "keyutils",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ERROR SUMMARY: 0 errors"), "{stderr}");
    // The summary goes to the test output for the record.
    for line in stderr.lines().filter(|l| {
        l.contains("ERROR SUMMARY") || l.contains("lost:") || l.contains("still reachable")
    }) {
        eprintln!("{line}");
    }
}

/// The pkg-config file, filled in for the built library, gives a working compile and
/// link line, also for static linking (`--static`, against libcapvault.a).
#[test]
fn ffi_c_pkg_config_static() {
    let lib = lib_dir();
    let tmp = tempfile::tempdir().unwrap();
    let template = std::fs::read_to_string(repo().join("capvault.pc.in")).unwrap();
    let pc = template
        .replace("@LIBDIR@", &lib.display().to_string())
        .replace(
            "@INCLUDEDIR@",
            &repo().join("include").display().to_string(),
        )
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    std::fs::write(tmp.path().join("capvault.pc"), pc).unwrap();
    let flags = run_ok(
        Command::new("pkg-config")
            .args(["--static", "--cflags", "--libs", "capvault"])
            .env("PKG_CONFIG_PATH", tmp.path()),
    );
    let flags = String::from_utf8(flags.stdout).unwrap();
    let agent = tmp.path().join("agent-static");
    // Link libcapvault.a by path (a -L directory also holding libcapvault.so would pick
    // the shared one), followed by the system libraries pkg-config lists for it.
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror"])
        .arg(repo().join("examples/c/agent.c"))
        .arg(lib.join("libcapvault.a"))
        .arg("-o")
        .arg(&agent)
        .args(flags.split_whitespace().filter(|f| *f != "-lcapvault"));
    run_ok(&mut cmd);
    run_agent(&agent, &[], "keyutils");
}

#[test]
fn ffi_c_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let prog = tmp.path().join("bad_input");
    compile_c(
        &[&repo().join("tests/ffi/bad_input.c")],
        &prog,
        &["-pthread"],
    );
    let identity = Identity::generate(Suite::X25519);
    let out = run_ok(
        Command::new(&prog)
            .arg(tmp.path().join("vault"))
            .arg(identity.recipient().to_string())
            .env("CAPVAULT_KEYSTORE", "keyutils"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bad_input: all checks passed"), "{stdout}");
}
