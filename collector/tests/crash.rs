//! A receipt means the collector holds the bundle: the collector is killed (SIGKILL)
//! right after it sent receipts, with more uploads in flight, and restarted; every
//! bundle it gave a receipt for is still there, byte for byte, and exports. Every fifth
//! bundle carries a 1.5 MB screenshot, so direct writes (bundles of 1 MiB and more) and
//! writes through the page cache share the segments the kills cut.

mod common;

use std::collections::HashMap;
use std::sync::mpsc;

use common::*;

#[test]
fn every_receipted_bundle_survives_a_kill_right_after_its_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (receipt_key, _) = init(&dir);
    let key: capvault_format::ReceiptKey = receipt_key.parse().unwrap();
    let token = new_token(&dir, &["--uses", "16"]);
    let (id, id_path) = identity(tmp.path());
    let devices = 4;
    let per_device = 20u64;
    let mut chains: Vec<Vec<capvault_format::SealedBundle>> = Vec::new();
    let mut server = Server::start(&dir, &[]);
    for d in 0..devices {
        let mut dev = Device::new(60 + d as u8);
        assert_eq!(server.enroll(&token, &dev).status, 201);
        chains.push(
            (0..per_device)
                .map(|i| match i % 5 {
                    4 => dev.seal_next_screenshot(&id.recipient(), 1_500_000),
                    _ => dev.seal_next(&id.recipient(), 2),
                })
                .collect(),
        );
    }

    // Receipted bundles: digest -> bytes.
    let mut receipted: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
    let mut next = vec![0usize; devices];
    let mut kills = 0;
    while next.iter().any(|&n| n < per_device as usize) {
        // Every device uploads the rest of its chain in order; the test kills the
        // collector as soon as a few receipts came back, mid-stream.
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..devices)
            .map(|d| {
                let todo: Vec<Vec<u8>> = chains[d][next[d]..]
                    .iter()
                    .map(|b| b.bytes().to_vec())
                    .collect();
                let addr = server.addr;
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for (i, bytes) in todo.into_iter().enumerate() {
                        let Ok(r) = try_request(
                            addr,
                            "POST",
                            "/v1/bundles",
                            "application/octet-stream",
                            &bytes,
                        ) else {
                            return;
                        };
                        assert_eq!(r.status, 200, "{}", text(&r.body));
                        if tx.send((d, i, bytes, r)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let kill_after = 2 + 3 * kills;
        let mut got = 0;
        let mut advanced = vec![0usize; devices];
        let mut take = |(d, i, bytes, r): (usize, usize, Vec<u8>, Resp)| {
            let receipt = data_encoding::BASE64
                .decode(r.json()["receipt"].as_str().unwrap().as_bytes())
                .unwrap();
            let digest = *chains[d][next[d] + i].digest();
            capvault_format::verify_receipt(&key, &digest, &receipt).unwrap();
            receipted.insert(digest, bytes);
            advanced[d] = advanced[d].max(i + 1);
        };
        while let Ok(answer) = rx.recv() {
            take(answer);
            got += 1;
            if got == kill_after && kills < 5 {
                break;
            }
        }
        let killed = got == kill_after && kills < 5;
        let alive = if killed {
            server.kill();
            kills += 1;
            None
        } else {
            Some(server)
        };
        for t in threads {
            t.join().unwrap();
        }
        // Receipts that were in flight when the collector died may still arrive.
        while let Ok(answer) = rx.try_recv() {
            take(answer);
        }
        for d in 0..devices {
            next[d] += advanced[d];
        }
        server = alive.unwrap_or_else(|| {
            let s = Server::start(&dir, &[]);
            // Restarted: everything receipted so far is there, byte for byte.
            check_stored(&dir, &receipted);
            s
        });
    }
    assert_eq!(kills, 5, "the collector was killed mid-stream five times");
    drop(server);
    assert_eq!(receipted.len(), devices * per_device as usize);
    check_stored(&dir, &receipted);
    let (code, lines, report) = export(&dir, &id_path, &[]);
    assert_eq!(code, 0, "{report}");
    let large = per_device as usize / 5;
    assert_eq!(
        lines.len(),
        devices * ((per_device as usize - large) * 2 + large)
    );
    // The large ones were written directly where the file system takes that: each
    // at a multiple of 4096 (its 48-byte header first).
    let large_entries: Vec<_> = segment_entries(&dir)
        .into_iter()
        .filter(|e| e.3 >= 1 << 20)
        .collect();
    assert!(large_entries.len() >= devices * large);
    if takes_direct_writes(&dir) {
        for (_, segment, offset, _) in &large_entries {
            assert_eq!(offset % 4096, 48, "{}", segment.display());
        }
    }
}

/// Whether the file system under `dir` takes `O_DIRECT` writes.
fn takes_direct_writes(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("direct-probe");
    let taken = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    taken
}

/// `copy-bundles` finds every receipted bundle with the same bytes.
fn check_stored(dir: &std::path::Path, receipted: &HashMap<[u8; 32], Vec<u8>>) {
    let out = dir.parent().unwrap().join(format!(
        "copy-{}",
        capvault_format::secret::random_array::<4>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let r = copy_bundles(dir, &out);
    assert!(r.status.success(), "copy-bundles: {}", text(&r.stderr));
    let mut copied: HashMap<[u8; 32], Vec<u8>> = HashMap::new();
    for f in std::fs::read_dir(&out).unwrap().flatten() {
        let bytes = std::fs::read(f.path()).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        copied.insert(digest.as_ref().try_into().unwrap(), bytes);
    }
    for (digest, bytes) in receipted {
        assert_eq!(
            copied.get(digest),
            Some(bytes),
            "receipted bundle {} is not stored byte for byte",
            hex(digest)
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
