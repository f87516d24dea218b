//! Export in chain order, and a collector killed mid-stream.

mod common;

use std::collections::BTreeMap;

use common::*;

/// Every event's (device, seq) exactly once, in order per device.
fn check_events(lines: &[serde_json::Value], devices: &[&Device], per_device: u64) {
    let mut by_device: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in lines {
        assert_eq!(l["type"], "mouse_move");
        assert!(l["bundle_id"].as_str().unwrap().starts_with("cvb1"));
        let d = l["device_id"].as_str().unwrap().to_string();
        let dev = devices
            .iter()
            .find(|x| x.id_hex() == d)
            .expect("a known device");
        assert_eq!(l["user"], dev.user.as_str());
        by_device
            .entry(d)
            .or_default()
            .push(l["seq"].as_u64().unwrap());
    }
    assert_eq!(by_device.len(), devices.len());
    for seqs in by_device.values() {
        let want: Vec<u64> = (1..=per_device).collect();
        assert_eq!(seqs, &want, "every event once, in order");
    }
}

#[test]
fn export_writes_json_lines_in_chain_order_with_each_event_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let t2 = new_token(&dir, &[]);
    let server = Server::start(&dir, &[]);
    let (id, id_path) = identity(tmp.path());
    let mut a = Device::new(20);
    let mut b = Device::new(21);
    assert_eq!(server.enroll(&token, &a).status, 201);
    assert_eq!(server.enroll(&t2, &b).status, 201);
    let ab: Vec<_> = (0..4).map(|_| a.seal_next(&id.recipient(), 3)).collect();
    let bb: Vec<_> = (0..3).map(|_| b.seal_next(&id.recipient(), 4)).collect();
    // Out of order, interleaved, with retries.
    for bundle in [
        &ab[2], &bb[0], &ab[0], &ab[1], &bb[2], &ab[0], &bb[1], &ab[3], &ab[2],
    ] {
        assert_eq!(server.upload(bundle.bytes()).status, 200);
    }
    drop(server);

    let (code, lines, report) = export(&dir, &id_path, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(lines.len(), 12 + 12);
    check_events(&lines, &[&a, &b], 12);
    assert!(report.contains("chain ok"), "{report}");
    // Chain order: device a's bundles in sequence order first (ids sort).
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["bundle_id"].as_str().unwrap())
        .collect();
    let mut want = Vec::new();
    for bundle in &ab {
        want.extend(std::iter::repeat_n(bundle.id(), 3));
    }
    assert_eq!(&ids[..12], &want[..]);

    // One device only.
    let (code, lines, _) = export(&dir, &id_path, &["--device", &b.id_hex()]);
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 12);

    // A wrong identity opens nothing: integrity failure, no events.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let (_, other_path) = identity(&other);
    let (code, lines, report) = export(&dir, &other_path, &[]);
    assert_eq!(code, 3, "{report}");
    assert!(lines.is_empty());
}

#[test]
fn export_reports_a_missing_bundle_and_a_corrupt_blob_with_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &[]);
    let (id, id_path) = identity(tmp.path());
    let mut a = Device::new(22);
    assert_eq!(server.enroll(&token, &a).status, 201);
    let bundles: Vec<_> = (0..3).map(|_| a.seal_next(&id.recipient(), 2)).collect();
    assert_eq!(server.upload(bundles[0].bytes()).status, 200);
    assert_eq!(server.upload(bundles[2].bytes()).status, 200);
    drop(server);
    let (code, lines, report) = export(&dir, &id_path, &[]);
    assert_eq!(code, 3, "{report}");
    assert!(report.contains("missing_bundles"), "{report}");
    assert_eq!(lines.len(), 4);

    // Flip a byte of a stored blob: its events are not released.
    let digest = hex(bundles[2].digest());
    let (_, path, offset, _) = segment_entries(&dir)
        .into_iter()
        .find(|e| e.0 == digest)
        .expect("the blob is in a segment");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize + 100] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let (code, lines, report) = export(&dir, &id_path, &[]);
    assert_eq!(code, 3);
    assert!(report.contains("blob_corrupt"), "{report}");
    assert_eq!(lines.len(), 2);
}

/// A stream stored from its third bundle on (the first two went elsewhere, or were
/// lost) is reported as missing its start, not as a clean chain.
#[test]
fn export_reports_a_stream_that_misses_its_first_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &[]);
    let (id, id_path) = identity(tmp.path());
    let mut a = Device::new(23);
    assert_eq!(server.enroll(&token, &a).status, 201);
    let bundles: Vec<_> = (0..4).map(|_| a.seal_next(&id.recipient(), 2)).collect();
    for b in &bundles[2..] {
        assert_eq!(server.upload(b.bytes()).status, 200);
    }
    drop(server);
    let (code, lines, report) = export(&dir, &id_path, &[]);
    assert_eq!(code, 3, "{report}");
    assert!(
        report.contains(r#"{"kind":"missing_bundles","from":1,"to":2}"#),
        "{report}"
    );
    assert_eq!(lines.len(), 4, "what is there is exported");
}

#[test]
fn a_collector_killed_mid_stream_loses_nothing_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (receipt_key, token) = init(&dir);
    let key: capvault_format::ReceiptKey = receipt_key.parse().unwrap();
    let (id, id_path) = identity(tmp.path());
    let mut dev = Device::new(30);
    let total = 40u64;
    let bundles: Vec<_> = (0..total)
        .map(|_| dev.seal_next(&id.recipient(), 2))
        .collect();

    // The device uploads in order and moves on only with a valid receipt; the
    // collector is SIGKILLed every few bundles, mid-request when the timing hits.
    let mut server = Server::start(&dir, &[]);
    assert_eq!(server.enroll(&token, &dev).status, 201);
    let mut next = 0usize;
    let mut kills = 0;
    while next < bundles.len() {
        let addr = server.addr;
        let b = bundles[next].clone();
        let uploader = std::thread::spawn(move || {
            try_request(
                addr,
                "POST",
                "/v1/bundles",
                "application/octet-stream",
                b.bytes(),
            )
        });
        if next % 7 == 3 && kills < 6 {
            // Kill while the upload is in flight (or just after).
            std::thread::sleep(std::time::Duration::from_micros(300 * (kills + 1)));
            server.kill();
            kills += 1;
            let _ = uploader.join().unwrap();
            server = Server::start(&dir, &[]);
            // The device retries the same bytes (outbox) until acknowledged.
            continue;
        }
        let r = uploader.join().unwrap().expect("answered");
        assert_eq!(r.status, 200, "{}", text(&r.body));
        let receipt = data_encoding::BASE64
            .decode(r.json()["receipt"].as_str().unwrap().as_bytes())
            .unwrap();
        capvault_format::verify_receipt(&key, bundles[next].digest(), &receipt).unwrap();
        next += 1;
    }
    assert_eq!(kills, 6);
    drop(server);
    assert_eq!(blob_count(&dir), total as usize);
    let (code, lines, report) = export(&dir, &id_path, &[]);
    assert_eq!(code, 0, "{report}");
    check_events(&lines, &[&dev], total * 2);
}
