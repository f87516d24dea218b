//! Two replicas sharing one state database and one blob store (R10): concurrent
//! retries of one bundle store one copy and get the same receipt; concurrent
//! conflicting bundles store exactly one.

mod common;

use std::sync::{Arc, Barrier};

use common::*;

#[test]
fn concurrent_retries_to_two_replicas_store_one_copy_with_one_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (receipt_key, token) = init(&dir);
    let key: capvault_format::ReceiptKey = receipt_key.parse().unwrap();
    let r1 = Server::start(&dir, &[]);
    let r2 = Server::start(&dir, &[]);
    let (id, id_path) = identity(tmp.path());
    let mut dev = Device::new(40);
    assert_eq!(r1.enroll(&token, &dev).status, 201);
    assert_eq!(r2.enroll(&token, &dev).status, 200);

    let rounds = 8;
    let per_round = 6;
    for _ in 0..rounds {
        let b = dev.seal_next(&id.recipient(), 3);
        let barrier = Arc::new(Barrier::new(per_round));
        let threads: Vec<_> = (0..per_round)
            .map(|i| {
                let addr = if i % 2 == 0 { r1.addr } else { r2.addr };
                let bytes = b.bytes().to_vec();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    request(
                        addr,
                        "POST",
                        "/v1/bundles",
                        "application/octet-stream",
                        &bytes,
                    )
                })
            })
            .collect();
        let answers: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for a in &answers {
            assert_eq!(a.status, 200, "{}", text(&a.body));
            assert_eq!(a.json(), answers[0].json(), "the same receipt everywhere");
        }
        let receipt = data_encoding::BASE64
            .decode(answers[0].json()["receipt"].as_str().unwrap().as_bytes())
            .unwrap();
        capvault_format::verify_receipt(&key, b.digest(), &receipt).unwrap();
    }
    assert_eq!(blob_count(&dir), rounds);
    drop((r1, r2));
    let (code, lines, report) = export(&dir, &id_path, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(lines.len(), rounds * 3);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=(rounds as u64 * 3)).collect::<Vec<_>>());
}

#[test]
fn concurrent_conflicting_bundles_to_two_replicas_store_exactly_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let r1 = Server::start(&dir, &[]);
    let r2 = Server::start(&dir, &[]);
    let (id, id_path) = identity(tmp.path());
    let mut dev = Device::new(41);
    assert_eq!(r1.enroll(&token, &dev).status, 201);
    let mut prev = [0u8; 32];
    for seq in 1..=5u64 {
        let a = dev.seal_at(&id.recipient(), seq, prev, 2);
        let b = dev.seal_at(&id.recipient(), seq, prev, 2);
        assert_ne!(a.digest(), b.digest());
        let barrier = Arc::new(Barrier::new(2));
        let send = |addr, bytes: Vec<u8>| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                request(
                    addr,
                    "POST",
                    "/v1/bundles",
                    "application/octet-stream",
                    &bytes,
                )
                .status
            })
        };
        let ta = send(r1.addr, a.bytes().to_vec());
        let tb = send(r2.addr, b.bytes().to_vec());
        let statuses = [ta.join().unwrap(), tb.join().unwrap()];
        prev = match statuses {
            [200, 409] => *a.digest(),
            [409, 200] => *b.digest(),
            other => panic!("seq {seq}: expected one 200 and one 409, got {other:?}"),
        };
    }
    // The loser's blob may stay behind (content-addressed, unindexed, never exported).
    assert!(blob_count(&dir) >= 5);
    drop((r1, r2));
    let (code, lines, report) = export(&dir, &id_path, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(lines.len(), 10);
}

#[test]
fn two_replicas_never_store_neighbours_that_do_not_link() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let r1 = Server::start(&dir, &[]);
    let r2 = Server::start(&dir, &[]);
    let (id, _) = identity(tmp.path());
    let mut dev = Device::new(42);
    assert_eq!(r1.enroll(&token, &dev).status, 201);
    race_unlinked_neighbours(r1.addr, r2.addr, &mut dev, &id.recipient(), 20);
}
