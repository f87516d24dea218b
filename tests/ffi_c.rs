//! The C API from C: examples/c/agent.c (also under valgrind, and built with
//! pkg-config against a prefix written by scripts/install-c.sh, shared and static) and tests/ffi/bad_input.c, compiled
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

/// The dynamic section entries of type `kind` (NEEDED, SONAME) of an ELF file.
fn elf_dynamic(file: &Path, kind: &str) -> Vec<String> {
    let out = run_ok(Command::new("readelf").arg("-d").arg(file));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("({kind})")))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_string()))
        .collect()
}

/// scripts/install-c.sh writes the library (with its SONAME links), the header and a
/// generated capvault.pc into a prefix; the example then builds with nothing but
/// `pkg-config` against that prefix, shared and static, and runs.
#[test]
fn ffi_c_installed_prefix_with_pkg_config() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    run_ok(
        Command::new("bash")
            .arg(repo().join("scripts/install-c.sh"))
            .arg(&prefix)
            .arg("--from")
            .arg(lib_dir()),
    );
    let libdir = prefix.join("lib");
    let version = format!(
        "{}.{}.{}",
        header_define("CAPVAULT_VERSION_MAJOR"),
        header_define("CAPVAULT_VERSION_MINOR"),
        header_define("CAPVAULT_VERSION_PATCH")
    );
    // The real file is named after its SONAME (then minor.patch), as ldconfig and
    // packaging tools expect; ldconfig makes the very link the script made.
    let real = format!(
        "{}.{}.{}",
        soname(),
        header_define("CAPVAULT_VERSION_MINOR"),
        header_define("CAPVAULT_VERSION_PATCH")
    );
    assert_eq!(
        std::fs::read_link(libdir.join(soname())).unwrap(),
        Path::new(&real)
    );
    let only_file = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("libcapvault.so.") && !libdir.join(n).is_symlink())
            .collect::<Vec<_>>()
    };
    assert_eq!(only_file(&libdir), std::slice::from_ref(&real));
    std::fs::remove_file(libdir.join(soname())).unwrap();
    let ldconfig = ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("ldconfig is installed");
    run_ok(Command::new(ldconfig).arg("-n").arg(&libdir));
    assert_eq!(
        std::fs::read_link(libdir.join(soname())).unwrap(),
        Path::new(&real),
        "ldconfig links the SONAME to another file than the script did"
    );
    assert_eq!(
        std::fs::read_link(libdir.join("libcapvault.so")).unwrap(),
        Path::new(&soname())
    );
    assert_eq!(elf_dynamic(&libdir.join(&real), "SONAME"), [soname()]);
    assert_eq!(
        std::fs::read(prefix.join("include/capvault.h")).unwrap(),
        std::fs::read(repo().join("include/capvault.h")).unwrap()
    );
    // Installed without debug information.
    let sections = run_ok(Command::new("readelf").arg("-S").arg(libdir.join(&real)));
    assert!(
        !String::from_utf8_lossy(&sections.stdout).contains(".debug_info"),
        "the installed library keeps its debug information"
    );

    let pkg_config = |args: &[&str]| {
        let out = run_ok(
            Command::new("pkg-config")
                .args(args)
                .arg("capvault")
                .env("PKG_CONFIG_PATH", libdir.join("pkgconfig"))
                .env_remove("PKG_CONFIG_LIBDIR"),
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(pkg_config(&["--modversion"]), version);
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let strict = ["-std=c11", "-Wall", "-Wextra", "-Werror"];

    // Shared: the program records the SONAME and runs against the installed copy.
    let shared = tmp.path().join("agent-shared");
    let flags = pkg_config(&["--cflags", "--libs"]);
    run_ok(
        Command::new(&cc)
            .args(strict)
            .arg(repo().join("examples/c/agent.c"))
            .arg("-o")
            .arg(&shared)
            .args(flags.split_whitespace())
            .arg(format!("-Wl,-rpath,{}", libdir.display())),
    );
    assert!(elf_dynamic(&shared, "NEEDED").contains(&soname()));
    run_agent(&shared, &[], "keyutils");

    // Static: libcapvault.a from the prefix, then the system libraries pkg-config lists
    // for it (by path: a -L directory also holding libcapvault.so would pick that one).
    let stat = tmp.path().join("agent-static");
    let flags = pkg_config(&["--static", "--cflags", "--libs"]);
    run_ok(
        Command::new(&cc)
            .args(strict)
            .arg(repo().join("examples/c/agent.c"))
            .arg(libdir.join("libcapvault.a"))
            .arg("-o")
            .arg(&stat)
            .args(flags.split_whitespace().filter(|f| *f != "-lcapvault")),
    );
    assert!(!elf_dynamic(&stat, "NEEDED")
        .iter()
        .any(|n| n.starts_with("libcapvault")));
    run_agent(&stat, &[], "keyutils");
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
