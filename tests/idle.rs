//! An open vault that nothing uses does not wake up (SPEC P7: "no wakeups when idle"):
//! its threads sleep until work arms a timer, and the work still gets done.
//!
//! Wake-ups are counted by the kernel: each thread's context switches in
//! `/proc/self/task/<tid>/status`. A thread blocked without a timeout has none.

mod common;

use std::time::{Duration, Instant};

use capvault::{KeyStoreKind, Vault};
use common::options;
use common::threads::{settle, switches, woke};

#[test]
fn an_idle_vault_does_not_wake_up() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    // Limits that the maintenance thread enforces by deadline, not by polling.
    o.policy.retention_secs = 3600;
    o.policy.budget_bytes = 64 << 20;
    o.dek_epoch_hours = 24;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    for i in 0..1000 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.flush().unwrap();
    // An event in an open frame, closed by the time bound, and records nobody flushed.
    let _ = v.append_mouse_move(1001, 2, 2).unwrap();
    let quiet = settle(Duration::from_secs(20));
    assert!(
        quiet.keys().any(|t| t.contains("capvault-writer"))
            && quiet.keys().any(|t| t.contains("capvault-mainte")),
        "the vault's threads are running: {quiet:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let later = switches();
    assert_eq!(
        woke(&quiet, &later),
        vec![],
        "threads woke up in an idle vault"
    );
    // The time bound closed the open frame meanwhile: the event is stored.
    let stored = v.test_read_all().unwrap();
    assert!(
        stored.iter().any(|e| e.event
            == capvault::Event::MouseMove {
                ts_us: 1001,
                x: 2,
                y: 2
            }),
        "the event in the open frame was not stored by the time bound"
    );
    v.close().unwrap();
}

#[test]
fn an_idle_vault_still_serves_requests_and_enforces_retention() {
    let d = tempfile::tempdir().unwrap();
    let mut o = options(KeyStoreKind::Keyutils);
    o.policy.retention_secs = 2;
    let v = Vault::open(d.path(), "alice", o).unwrap();
    for i in 0..10 {
        let _ = v.append_mouse_move(i, 1, 1).unwrap();
    }
    v.flush().unwrap();
    assert!(v.status().unwrap().records > 0);
    // Retention: the maintenance thread sleeps until the oldest record is due.
    let deadline = Instant::now() + Duration::from_secs(20);
    let captured = |v: &Vault| {
        v.test_read_all()
            .unwrap()
            .iter()
            .filter(|e| !matches!(e.event, capvault::Event::Marker { .. }))
            .count()
    };
    assert_eq!(captured(&v), 10);
    while captured(&v) > 0 {
        assert!(
            Instant::now() < deadline,
            "retention never removed the records"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A hand-off request wakes it (no polling): `status` from another process.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_capvault"))
        .args(["status", "--json", "--user", "alice", "--vault"])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status through the hand-off: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    v.close().unwrap();
}
