//! Helpers for the C API tests: build the C library with cargo, compile C programs
//! against `include/capvault.h` and it, run programs, and read the bundles they wrote
//! with the collector side.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use capvault::{open_bundle, Event, Identity, SeqEvent};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cargo profile directory this test binary was built into (`target/debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary in target/<profile>/deps")
        .to_path_buf()
}

/// Builds `libcapvault` (cdylib and staticlib) with the same cargo, target directory
/// and profile as this test, once per process, and returns the directory holding it.
pub fn lib_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let target = dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO")
            .ok()
            .or(option_env!("CARGO").map(str::to_string))
            .unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo())
            .args(["build", "--quiet", "-p", "capvault-ffi", "--lib"])
            .env("CARGO_TARGET_DIR", target);
        match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
            None => panic!("unexpected target layout {}", dir.display()),
        }
        let status = cmd.status().expect("run cargo build -p capvault-ffi");
        assert!(status.success(), "cargo build -p capvault-ffi failed");
        assert!(dir.join("libcapvault.so").exists() || cfg!(not(target_os = "linux")));
        // Programs linked against the library ask for its SONAME at run time; in the
        // build directory that is a link to the file cargo wrote (as an install has).
        let soname = dir.join(soname());
        if std::fs::read_link(&soname).is_err() {
            let _ = std::fs::remove_file(&soname);
            // Another test process may have made it meanwhile.
            if let Err(e) = std::os::unix::fs::symlink("libcapvault.so", &soname) {
                assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
            }
        }
        dir
    })
}

/// The shared library's SONAME, read from the header's `CAPVAULT_ABI_VERSION`.
pub fn soname() -> String {
    format!("libcapvault.so.{}", header_define("CAPVAULT_ABI_VERSION"))
}

/// The value of `#define NAME value` in include/capvault.h.
pub fn header_define(name: &str) -> String {
    let header = std::fs::read_to_string(repo().join("include/capvault.h")).unwrap();
    header
        .lines()
        .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("no {name} in include/capvault.h"))
        .trim()
        .to_string()
}

/// Compiles C++ `sources` like [`compile_c`] does C.
pub fn compile_cxx(sources: &[&Path], out: &Path, extra: &[&str]) {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    compile(&cxx, &["-std=c++17"], sources, out, extra);
}

/// Compiles C `sources` into the executable `out`, against the header in `include/`
/// and `libcapvault` (shared, found at run time through an rpath), with warnings
/// as errors.
pub fn compile_c(sources: &[&Path], out: &Path, extra: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    compile(&cc, &["-std=c11", "-pedantic"], sources, out, extra);
}

fn compile(compiler: &str, lang: &[&str], sources: &[&Path], out: &Path, extra: &[&str]) {
    let lib = lib_dir();
    let mut cmd = Command::new(compiler);
    cmd.args(lang)
        .args(["-Wall", "-Wextra", "-Werror", "-g"])
        .arg("-I")
        .arg(repo().join("include"))
        .args(sources)
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lcapvault")
        .args(extra);
    run_ok(&mut cmd);
}

/// Runs `cmd`, panicking with its output unless it exits 0; returns its output.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Opens every `bundle-*.cvb` in `dir` (in the order written) and returns all their
/// events, checking that the bundles chain one after the other.
pub fn read_bundles(dir: &Path, identity: &Identity) -> Vec<SeqEvent> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list bundles")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "cvb"))
        .collect();
    files.sort_by_key(|p| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("bundle-"))
            .and_then(|n| n.parse::<u32>().ok())
            .expect("bundle-N.cvb")
    });
    assert!(!files.is_empty(), "no bundle written in {}", dir.display());
    let mut events = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).expect("read bundle");
        let opened = open_bundle(&bytes, identity)
            .unwrap_or_else(|e| panic!("{} does not open: {e}", f.display()));
        events.extend(opened.events.iter().cloned());
    }
    events
}

/// Checks that `events` are what examples/c/agent.c and examples/python/agent.py
/// append, in order, with the vault's own markers in between.
pub fn check_agent_events(events: &[SeqEvent]) {
    let t = 1_764_000_000_000_000_i64;
    let captured: Vec<&Event> = events
        .iter()
        .map(|e| &e.event)
        .filter(|e| !matches!(e, Event::Marker { .. }))
        .collect();
    assert_eq!(captured.len(), 9, "{captured:?}");
    assert!(matches!(captured[0], Event::MouseMove { ts_us, x: 640, y: 480 } if *ts_us == t + 1));
    assert!(matches!(
        captured[1],
        Event::MouseButton { ts_us, button: 1, pressed: true, x: 641, y: 481 } if *ts_us == t + 2
    ));
    assert!(matches!(captured[2], Event::Scroll { ts_us, dx: 0, dy: -120 } if *ts_us == t + 3));
    assert!(matches!(
        captured[3],
        Event::Key { ts_us, pressed: true, key_code: Some(4), text: Some(s), .. }
            if *ts_us == t + 4 && s == "a"
    ));
    assert!(matches!(
        captured[4],
        Event::Key { ts_us, pressed: false, key_code: Some(4), text: None, .. } if *ts_us == t + 5
    ));
    assert!(matches!(
        captured[5],
        Event::WindowFocus { ts_us, app, title } if *ts_us == t + 6 && app == "editor" && title == "notes.txt"
    ));
    match captured[6] {
        Event::Screenshot {
            ts_us,
            width: 1920,
            height: 1080,
            format,
            data,
        } => {
            assert_eq!(*ts_us, t + 7);
            assert_eq!(format, "png");
            assert_eq!(data.len(), 200_000);
            assert!(data
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i.wrapping_mul(7).wrapping_add(3)) as u8));
        }
        other => panic!("expected the screenshot, got {other:?}"),
    }
    assert!(matches!(
        captured[7],
        Event::Custom { ts_us, kind, data } if *ts_us == t + 8 && kind == "clipboard-meta" && data == &[0xde, 0xad, 0xbe, 0xef]
    ));
    // The move appended while paused (t + 9) was dropped.
    assert!(matches!(captured[8], Event::MouseMove { ts_us, x: 700, y: 500 } if *ts_us == t + 10));
    assert!(
        events
            .iter()
            .any(|e| matches!(e.event, Event::Marker { .. })),
        "the pause left no marker"
    );
}
