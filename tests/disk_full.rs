//! R4: a full disk. The vault lives on a small tmpfs (mounted by the test; the suite runs
//! as root). Appends and flushes report storage full, nothing flushed is lost, and work
//! resumes once space returns.
mod common;

use capvault::{Error, Event, KeyStoreKind, Vault};
use common::Tmpfs;

fn moves(v: &[capvault::SeqEvent]) -> Vec<i64> {
    v.iter()
        .filter(|e| matches!(e.event, Event::MouseMove { .. }))
        .map(|e| e.event.ts_us())
        .collect()
}

#[test]
fn a_full_disk_reports_storage_full_and_loses_nothing_flushed() {
    let fs = Tmpfs::mount("96m");
    let filler = fs.0.join("filler");
    let dir = fs.0.join("vault");
    let o = || common::options(KeyStoreKind::Keyutils);
    let v = Vault::open(&dir, "alice", o()).unwrap();
    // Take most of the space so the vault runs out quickly.
    let avail = fs.avail();
    std::fs::write(&filler, vec![0u8; (avail - (24 << 20)) as usize]).unwrap();
    let shot: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let mut flushed = 0i64;
    let mut ts = 0i64;
    let mut full = None;
    for _ in 0..200 {
        let mut step = || -> capvault::Result<()> {
            for _ in 0..100 {
                ts += 1;
                let _ = v.append_mouse_move(ts, 1, 1)?;
            }
            let _ = v.append_screenshot(ts, 1, 1, "raw", &shot)?;
            v.flush()
        };
        match step() {
            Ok(()) => flushed = ts,
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let e = full.expect("the disk filled up");
    assert!(
        matches!(e, Error::StorageFull(_)),
        "reported as storage full: {e}"
    );
    assert!(flushed > 0);
    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let resumed = (|| -> capvault::Result<()> {
        let _ = v.append_mouse_move(ts + 1, 2, 2)?;
        v.flush()
    })();
    // sled refuses further writes on a handle that hit an I/O error, so work resumes
    // after a reopen (the error message says so).
    assert!(
        matches!(resumed, Ok(()) | Err(Error::StorageFull(_))),
        "{resumed:?}"
    );
    drop(v);
    let v = Vault::open(&dir, "alice", o()).unwrap();
    let got = moves(&v.test_read_all().unwrap());
    assert!(
        got.len() as i64 >= flushed,
        "every flushed event survives: {} < {flushed}",
        got.len()
    );
    assert_eq!(
        &got[..flushed as usize],
        &(1..=flushed).collect::<Vec<_>>()[..]
    );
    let _ = v.append_mouse_move(ts + 2, 3, 3).unwrap();
    v.flush().unwrap();
    v.verify().unwrap();
    eprintln!("flushed {flushed} before the disk filled; resume in place: {resumed:?}");
    v.close().unwrap();
}

/// Closing a paused vault returns (with the error) when saving the count of events the
/// pause dropped fails, as it does when the disk is full: that save comes before the
/// writer is told to stop, and its failure must not leave the writer running and the
/// close waiting for it. The failure is injected (sled takes a write into memory even
/// on a full disk, and fails it later).
#[test]
fn closing_a_paused_vault_returns_when_saving_the_dropped_count_fails() {
    let d = tempfile::tempdir().unwrap();
    let v = Vault::open(d.path(), "alice", common::options(KeyStoreKind::Keyutils)).unwrap();
    let _ = v.append_mouse_move(1, 1, 1).unwrap();
    v.flush().unwrap();
    let _ = v.pause(std::time::Duration::from_secs(60)).unwrap();
    for ts in 2..100 {
        let _ = v.append_mouse_move(ts, 1, 1).unwrap();
    }
    capvault::testing::arm("state:put");
    let (done, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(v.close());
    });
    let result = closed
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("close returned");
    assert!(result.is_err(), "the failure is reported: {result:?}");
    // Nothing flushed was lost.
    let v = Vault::open(d.path(), "alice", common::options(KeyStoreKind::Keyutils)).unwrap();
    let moves = moves(&v.test_read_all().unwrap());
    assert_eq!(moves.first(), Some(&1));
    v.close().unwrap();
}
