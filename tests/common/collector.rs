//! A real `capvault-collector` for the tests that need one: its binary, a collector
//! directory after `init`, and `serve` on a loopback port (killed on drop).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The collector binary, built once per test process when not given.
pub fn collector_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CAPVAULT_COLLECTOR_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/upload-<hash> -> target/<profile>/capvault-collector
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let bin = profile_dir.join(format!(
            "capvault-collector{}",
            std::env::consts::EXE_SUFFIX
        ));
        if !bin.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .args(["build", "-p", "capvault-collector"])
                .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap())
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building capvault-collector failed");
        }
        assert!(bin.exists(), "no collector binary at {}", bin.display());
        bin
    })
}

/// A collector's directory (after `init`) and, while running, its `serve` process.
pub struct Collector {
    pub dir: tempfile::TempDir,
    pub receipt_key: String,
    pub token: String,
    pub child: Option<Child>,
    pub port: u16,
}

impl Collector {
    pub fn init() -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(collector_bin())
            .args(["init", "--dir", dir.path().to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Collector {
            dir,
            receipt_key: v["receipt_key"].as_str().unwrap().to_string(),
            token: v["token"].as_str().unwrap().to_string(),
            child: None,
            port: free_port(),
        }
    }

    /// Starts `serve` on this collector's port (the same one after a restart).
    pub fn start(&mut self, extra: &[&str]) {
        assert!(self.child.is_none());
        let listen = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(collector_bin())
                .args(["serve", "--dir", self.dir.path().to_str().unwrap()])
                .args(["--listen", &listen])
                .args(extra)
                .env("CAPVAULT_LOG", "error")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
            if line.starts_with("listening on") {
                self.child = Some(child);
                return;
            }
            // The port may still be held by the killed predecessor for a moment.
            let _ = child.kill();
            let _ = child.wait();
            assert!(Instant::now() < deadline, "serve did not start: {line:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `copy-bundles`: every stored bundle, still sealed (the store keeps them in
    /// segment files).
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn stored_bundles(&self) -> Vec<Vec<u8>> {
        let out_dir = tempfile::tempdir().unwrap();
        let out = Command::new(collector_bin())
            .args(["copy-bundles", "--dir", self.dir.path().to_str().unwrap()])
            .args(["--out", out_dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "copy-bundles: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        super::files_under(out_dir.path())
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect()
    }

    /// `export` with the identity: every stored event as JSON (the chain complete).
    pub fn export(&self, identity: &Path) -> Vec<serde_json::Value> {
        let (code, events, report) = self.export_reporting(identity);
        assert_eq!(code, Some(0), "export: {report}");
        events
    }

    /// `export` with the identity, whatever its chain report: (exit code, events,
    /// report).
    #[allow(dead_code)] // not every test binary that shares this module uses it
    pub fn export_reporting(
        &self,
        identity: &Path,
    ) -> (Option<i32>, Vec<serde_json::Value>, String) {
        let out = Command::new(collector_bin())
            .args(["export", "--dir", self.dir.path().to_str().unwrap()])
            .args(["--identity", identity.to_str().unwrap()])
            .output()
            .unwrap();
        let events = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (
            out.status.code(),
            events,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
