//! The ingest service over loopback: enrollment, upload, receipts, refusals.

mod common;

use common::*;

#[test]
fn init_serve_enroll_upload_and_the_receipt_verifies_with_the_printed_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (receipt_key, token) = init(&dir);
    assert!(
        receipt_key.starts_with("cvreceipt-ed25519-1"),
        "{receipt_key}"
    );
    assert!(token.starts_with("cvtoken-"), "{token}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("receipt-signing.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let key_file = std::fs::read_to_string(dir.join("receipt-signing.key")).unwrap();
        assert!(
            !key_file.contains(&token),
            "the token is not stored in clear"
        );
    }
    // A second init refuses to replace the key.
    assert_eq!(
        cli(&["init", "--dir", dir.to_str().unwrap()]).status.code(),
        Some(1)
    );

    let server = Server::start(&dir, &[]);
    assert_eq!(server.get("/healthz").status, 200);
    let (id, _) = identity(tmp.path());
    let mut dev = Device::new(1);

    let r = server.enroll(&token, &dev);
    assert_eq!(r.status, 201, "{}", text(&r.body));
    assert_eq!(r.json()["device_id"], dev.id_hex());
    // Idempotent: same key again, even though the one-use token is spent.
    let r = server.enroll(&token, &dev);
    assert_eq!(r.status, 200, "{}", text(&r.body));

    let key: capvault_format::ReceiptKey = receipt_key.parse().unwrap();
    let b1 = dev.seal_next(&id.recipient(), 5);
    let r = server.upload(b1.bytes());
    assert_eq!(r.status, 200, "{}", text(&r.body));
    let j = r.json();
    assert_eq!(j["id"], b1.id());
    let receipt = data_encoding::BASE64
        .decode(j["receipt"].as_str().unwrap().as_bytes())
        .unwrap();
    capvault_format::verify_receipt(&key, b1.digest(), &receipt).unwrap();

    // An identical retry gets the same receipt and stores nothing new.
    let again = server.upload(b1.bytes());
    assert_eq!(again.status, 200);
    assert_eq!(again.json(), j);
    assert_eq!(blob_count(&dir), 1);

    let b2 = dev.seal_next(&id.recipient(), 5);
    assert_eq!(server.upload(b2.bytes()).status, 200);

    let m = text(&server.get("/metrics").body);
    assert!(
        m.contains("capvault_collector_bundles_accepted_total 2\n"),
        "{m}"
    );
    assert!(
        m.contains("capvault_collector_bundle_retries_total 1\n"),
        "{m}"
    );
    assert!(
        m.contains("capvault_collector_upload_duration_seconds_count 3\n"),
        "{m}"
    );

    let list = cli(&["devices", "list", "--dir", dir.to_str().unwrap(), "--json"]);
    assert!(list.status.success());
    let line: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(line["device_id"], dev.id_hex());

    let r = server.get("/nope");
    assert_eq!((r.status, r.code()), (404, "not_found".to_string()));
}

#[test]
fn conflicts_are_refused_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &[]);
    let (id, _) = identity(tmp.path());
    let mut dev = Device::new(2);
    assert_eq!(server.enroll(&token, &dev).status, 201);
    let b1 = dev.seal_next(&id.recipient(), 3);
    assert_eq!(server.upload(b1.bytes()).status, 200);

    // Another bundle claiming sequence 1.
    let other = dev.seal_at(&id.recipient(), 1, [0; 32], 3);
    let r = server.upload(other.bytes());
    assert_eq!((r.status, r.code()), (409, "conflict".to_string()));

    // Sequence 2 that does not link to the stored sequence 1.
    let unlinked = dev.seal_at(&id.recipient(), 2, [9; 32], 3);
    let r = server.upload(unlinked.bytes());
    assert_eq!((r.status, r.code()), (409, "conflict".to_string()));

    // Sequence 4 arrives before 3; then a 3 that 4 does not name is refused.
    let b2 = dev.seal_next(&id.recipient(), 3);
    let b3 = dev.seal_next(&id.recipient(), 3);
    let b4 = dev.seal_next(&id.recipient(), 3);
    assert_eq!(server.upload(b2.bytes()).status, 200);
    assert_eq!(server.upload(b4.bytes()).status, 200);
    let fake3 = dev.seal_at(&id.recipient(), 3, *b2.digest(), 3);
    assert_eq!(server.upload(fake3.bytes()).status, 409);
    assert_eq!(server.upload(b3.bytes()).status, 200);
    assert_eq!(blob_count(&dir), 4);

    let m = text(&server.get("/metrics").body);
    assert!(
        m.contains("capvault_collector_bundles_rejected_total{reason=\"conflict\"} 3\n"),
        "{m}"
    );
}

#[test]
fn forged_unknown_and_revoked_devices_are_refused_and_nothing_is_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &[]);
    let (id, _) = identity(tmp.path());

    // Not enrolled.
    let mut stranger = Device::new(3);
    let b = stranger.seal_next(&id.recipient(), 2);
    let r = server.upload(b.bytes());
    assert_eq!((r.status, r.code()), (403, "unknown_device".to_string()));

    // Enrolled id, bundle signed by another key.
    let mut dev = Device::new(4);
    assert_eq!(server.enroll(&token, &dev).status, 201);
    let mut impostor = Device::impostor_of(&dev);
    let forged = impostor.seal_next(&id.recipient(), 2);
    let r = server.upload(forged.bytes());
    // Answered as an unknown device would be (which ids are enrolled is not told to
    // whoever signs a bundle); the metrics count it apart.
    assert_eq!((r.status, r.code()), (403, "unknown_device".to_string()));
    assert_eq!(
        r.json()["error"],
        format!("device {} is not enrolled", dev.id_hex())
    );
    assert!(server
        .get("/metrics")
        .body
        .windows(b"reason=\"wrong_device_key\"} 1".len())
        .any(|w| w == b"reason=\"wrong_device_key\"} 1"));

    // The impostor cannot enroll the id with its key either.
    let t2 = new_token(&dir, &[]);
    let r = server.enroll(&t2, &impostor);
    assert_eq!(
        (r.status, r.code()),
        (409, "enrolled_with_other_key".to_string())
    );
    assert_eq!(blob_count(&dir), 0);

    // The real device uploads; then it is revoked and refused.
    let b1 = dev.seal_next(&id.recipient(), 2);
    assert_eq!(server.upload(b1.bytes()).status, 200);
    let out = cli(&[
        "devices",
        "revoke",
        &dev.id_hex(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b2 = dev.seal_next(&id.recipient(), 2);
    let r = server.upload(b2.bytes());
    assert_eq!((r.status, r.code()), (403, "revoked_device".to_string()));
    assert_eq!(blob_count(&dir), 1);
    // A retry of the bundle stored before the revocation still gets its receipt, so the
    // device can delete what the collector holds; the impostor's copy of that position
    // does not.
    let r = server.upload(b1.bytes());
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["id"], b1.id());
    let r = server.upload(impostor.seal_at(&id.recipient(), 1, [0; 32], 2).bytes());
    assert_eq!((r.status, r.code()), (403, "unknown_device".to_string()));
    let r = server.upload(dev.seal_at(&id.recipient(), 1, [0; 32], 1).bytes());
    assert_eq!((r.status, r.code()), (403, "revoked_device".to_string()));

    let out = cli(&["devices", "revoke", "00", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn tokens_bad_used_up_and_expired_get_401() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &[]);

    let r = server.enroll("cvtoken-nonsense", &Device::new(5));
    assert_eq!((r.status, r.code()), (401, "bad_token".to_string()));

    assert_eq!(server.enroll(&token, &Device::new(6)).status, 201);
    let r = server.enroll(&token, &Device::new(7));
    assert_eq!(r.status, 401, "a one-use token is used up");

    let two = new_token(&dir, &["--uses", "2"]);
    assert_eq!(server.enroll(&two, &Device::new(8)).status, 201);
    assert_eq!(server.enroll(&two, &Device::new(9)).status, 201);
    assert_eq!(server.enroll(&two, &Device::new(10)).status, 401);

    let expired = new_token(&dir, &["--expires", "0s"]);
    assert_eq!(server.enroll(&expired, &Device::new(11)).status, 401);
    let later = new_token(&dir, &["--expires", "1h"]);
    assert_eq!(server.enroll(&later, &Device::new(11)).status, 201);
    // Every refusal counted by its reason, apart from the uploads'.
    let m = text(&server.get("/metrics").body);
    assert!(
        m.contains("capvault_collector_enrollments_rejected_total{reason=\"bad_token\"} 4\n"),
        "{m}"
    );
    assert!(
        !m.contains("bundles_rejected_total{reason=\"bad_token\"}"),
        "{m}"
    );

    // Usage errors exit 2.
    let out = cli(&[
        "token",
        "new",
        "--dir",
        dir.to_str().unwrap(),
        "--expires",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn malformed_requests_get_400_and_oversized_bundles_413() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &["--max-bundle-bytes", "100000"]);
    let (id, _) = identity(tmp.path());
    let mut dev = Device::new(12);
    assert_eq!(server.enroll(&token, &dev).status, 201);

    let r = server.upload(b"not a bundle at all");
    assert_eq!((r.status, r.code()), (400, "malformed_bundle".to_string()));
    let b = dev.seal_next(&id.recipient(), 4);
    let mut flipped = b.bytes().to_vec();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    assert_eq!(server.upload(&flipped).status, 400);
    assert_eq!(server.upload(&b.bytes()[..b.bytes().len() - 1]).status, 400);
    // Sequence 0, properly signed: before any stream's first bundle.
    let zero = dev.seal_at(&id.recipient(), 0, [0; 32], 1);
    let r = server.upload(zero.bytes());
    assert_eq!((r.status, r.code()), (400, "malformed_bundle".to_string()));
    assert!(r.json()["error"].as_str().unwrap().contains("start at 1"));

    let r = server.post("/v1/enroll", "application/json", b"{\"token\": 1}");
    assert_eq!((r.status, r.code()), (400, "bad_request".to_string()));
    let mut rec = dev.record();
    rec["created_us"] = serde_json::json!(1);
    let body = serde_json::json!({ "token": token, "record": rec }).to_string();
    let r = server.post("/v1/enroll", "application/json", body.as_bytes());
    assert_eq!(r.status, 400, "an enrollment record with a bad signature");

    let big = vec![0u8; 100_001];
    let r = server.upload(&big);
    assert_eq!((r.status, r.code()), (413, "too_large".to_string()));
    assert_eq!(blob_count(&dir), 0);
    // The valid bundle still goes in afterwards.
    assert_eq!(server.upload(b.bytes()).status, 200);
}

#[test]
fn a_bundle_sent_in_chunks_without_a_length_gets_the_receipt_of_the_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &["--max-bundle-bytes", "100000"]);
    let (id, _) = identity(tmp.path());
    let mut dev = Device::new(13);
    assert_eq!(server.enroll(&token, &dev).status, 201);

    // Stored from 63-byte chunks (so one ends inside the signature), then sent whole:
    // the retry gets the same answer.
    let b1 = dev.seal_next(&id.recipient(), 40);
    let chunked = server.upload_chunked(b1.bytes(), 63);
    assert_eq!(chunked.status, 200, "{}", text(&chunked.body));
    assert_eq!(chunked.json()["id"], b1.id());
    assert_eq!(server.upload(b1.bytes()).json(), chunked.json());
    // Stored whole, then sent in single bytes and in one chunk.
    let b2 = dev.seal_next(&id.recipient(), 40);
    let whole = server.upload(b2.bytes());
    assert_eq!(whole.status, 200, "{}", text(&whole.body));
    for chunk in [1, b2.bytes().len()] {
        let r = server.upload_chunked(b2.bytes(), chunk);
        assert_eq!(r.status, 200, "{}", text(&r.body));
        assert_eq!(r.json(), whole.json());
    }
    // The stored blobs are the bytes sent.
    for b in [&b1, &b2] {
        let (_, segment, offset, len) = segment_entries(&dir)
            .into_iter()
            .find(|e| e.0 == hex(b.digest()))
            .expect("the blob is in a segment");
        let data = std::fs::read(segment).unwrap();
        assert_eq!(&data[offset as usize..offset as usize + len], b.bytes());
    }
    assert_eq!(blob_count(&dir), 2);

    // Chunked, a changed byte is refused like a whole body with one.
    let b3 = dev.seal_next(&id.recipient(), 40);
    let mut flipped = b3.bytes().to_vec();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let r = server.upload_chunked(&flipped, 1000);
    assert_eq!((r.status, r.code()), (400, "malformed_bundle".to_string()));
    // A body that is not chunked as it says cannot be read.
    let r = server.upload_raw_chunked(b"zz\r\nCVBUNDLE\r\n0\r\n\r\n");
    assert_eq!((r.status, r.code()), (400, "bad_request".to_string()));
    // Without a declared length the limit still holds.
    let r = server.upload_chunked(&vec![0u8; 150_000], 10_000);
    assert_eq!((r.status, r.code()), (413, "too_large".to_string()));
    assert_eq!(blob_count(&dir), 2);
    assert_eq!(server.upload(b3.bytes()).status, 200);
}

#[test]
fn a_full_server_answers_429_with_retry_after() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let server = Server::start(&dir, &["--max-in-flight", "1"]);
    // Hold the only slot with an upload whose body is still arriving, then probe. A
    // probe that overlaps the slow request's arrival can itself take the slot first and
    // make the slow request the one refused; then try again with a new slow request.
    use std::io::Write;
    let mut r = server.upload(b"x");
    for _ in 0..50 {
        let mut slow = std::net::TcpStream::connect(server.addr).unwrap();
        write!(
            slow,
            "POST /v1/bundles HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
        )
        .unwrap();
        slow.flush().unwrap();
        // Give the slow request time to have its headers read and take the slot.
        std::thread::sleep(std::time::Duration::from_millis(200));
        r = server.upload(b"x");
        if r.status == 429 {
            break;
        }
    }
    assert_eq!((r.status, r.code()), (429, "busy".to_string()));
    assert_eq!(r.header("retry-after"), Some("2"));
}

#[test]
fn without_a_token_enrollment_reveals_nothing_about_enrolled_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &[]);
    let dev = Device::new(20);
    assert_eq!(server.enroll(&token, &dev).status, 201);
    let impostor = Device::impostor_of(&dev);
    let stranger = Device::new(21);

    // An unknown token: 401 for the enrolled id (its public record, or another key)
    // exactly as for an id nobody enrolled.
    for d in [&dev, &impostor, &stranger] {
        let r = server.enroll("cvtoken-nope", d);
        assert_eq!((r.status, r.code()), (401, "bad_token".to_string()));
    }
    // The spent one-use token: the device itself may enroll again (200), another key
    // for its id learns nothing (401, not 409).
    assert_eq!(server.enroll(&token, &dev).status, 200);
    let r = server.enroll(&token, &impostor);
    assert_eq!((r.status, r.code()), (401, "bad_token".to_string()));
    // An expired token likewise.
    let expired = new_token(&dir, &["--expires", "0s"]);
    assert_eq!(server.enroll(&expired, &impostor).status, 401);
    // A usable token: the conflict is reported, and no use is consumed.
    let fresh = new_token(&dir, &[]);
    let r = server.enroll(&fresh, &impostor);
    assert_eq!(
        (r.status, r.code()),
        (409, "enrolled_with_other_key".to_string())
    );
    assert_eq!(server.enroll(&fresh, &stranger).status, 201);
}

#[test]
fn secrets_at_rest_are_owner_only_and_an_open_signing_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("collector.db")), 0o600);
    {
        let server = Server::start(&dir, &[]);
        let (id, _) = identity(tmp.path());
        let mut dev = Device::new(22);
        assert_eq!(server.enroll(&token, &dev).status, 201);
        let b = dev.seal_next(&id.recipient(), 2);
        assert_eq!(server.upload(b.bytes()).status, 200);
        let digest = hex(b.digest());
        let (_, segment, _, _) = segment_entries(&dir)
            .into_iter()
            .find(|e| e.0 == digest)
            .expect("the blob is in a segment");
        assert_eq!(mode(&segment), 0o600);
        for f in ["collector.db-wal", "collector.db-shm"] {
            let p = dir.join(f);
            if p.exists() {
                assert_eq!(mode(&p) & 0o077, 0, "{f}");
            }
        }
    }
    let key = dir.join("receipt-signing.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = cli(&[
        "serve",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("too open") && err.contains("chmod 600"),
        "{err}"
    );
}

/// A store that cannot be reached is 503 with `Retry-After` and a fixed message: the
/// detail (an S3 endpoint, bucket and key id, a path, a database error) is for the
/// operator's log, and anyone can call `/healthz`.
#[test]
fn a_503_says_storage_is_unavailable_and_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let store = tmp.path().join("store-at-a-private-path");
    let server = Server::start(&dir, &["--store", store.to_str().unwrap()]);
    assert_eq!(server.get("/healthz").status, 200);
    std::fs::remove_dir_all(&store).unwrap();
    let r = server.get("/healthz");
    assert_eq!(r.status, 503, "{}", text(&r.body));
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.code(), "unavailable");
    assert_eq!(r.json()["error"], "storage is unavailable; retry later");
    assert!(!text(&r.body).contains("blob"), "{}", text(&r.body));
}

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// `init` takes a new path, or an empty directory of one's own (made 0700); never a
/// directory in use (a shared one such as /tmp, where others' files would sit beside
/// the collector's and others could plant its database), a link, or another user's.
#[test]
fn init_takes_only_a_new_or_empty_directory_of_ones_own() {
    let tmp = tempfile::tempdir().unwrap();
    let init_in = |dir: &std::path::Path| cli(&["init", "--dir", dir.to_str().unwrap()]);

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    set_mode(&empty, 0o755);
    let out = init_in(&empty);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(mode_of(&empty), 0o700);
    assert_eq!(mode_of(&empty.join("bundles")), 0o700);

    // A shared directory with someone's file in it: refused, and left as it was.
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o1777);
    std::fs::write(shared.join("someone-elses"), b"x").unwrap();
    let out = init_in(&shared);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(mode_of(&shared), 0o1777);
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 1);
    // An initialized collector: refused, untouched.
    let out = init_in(&empty);
    assert_eq!(out.status.code(), Some(1));
    assert!(empty.join("receipt-signing.key").exists());
    // A link to a directory.
    let target = tmp.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = init_in(&link);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("symbolic link"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    if running_as_root() {
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let out = init_in(&theirs);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("another user"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// An `init` that fails part-way (here its database cannot be created) takes back what
/// it made, so the same command works once the cause is fixed.
#[test]
fn an_init_that_fails_takes_back_what_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let bad_db = format!("sqlite://{}/missing/dir/x.db", tmp.path().display());
    let out = cli(&["init", "--dir", dir.to_str().unwrap(), "--db", &bad_db]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        !dir.exists(),
        "init left {:?}",
        std::fs::read_dir(&dir).map(|d| d.count())
    );
    let out = cli(&["init", "--dir", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Every command refuses a collector directory that someone else could change: the
/// directory writable by others, a database with a second name or another owner, a
/// blob directory that is a link. Whoever could write them could mint tokens, swap
/// enrollment records or delete stored bundles.
#[test]
fn commands_refuse_a_collector_directory_others_can_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let d = dir.to_str().unwrap();
    let refused = |what: &str| {
        for args in [
            vec!["devices", "list", "--dir", d],
            vec!["token", "new", "--dir", d],
            vec!["serve", "--dir", d, "--listen", "127.0.0.1:0"],
        ] {
            let out = cli(&args);
            assert_eq!(out.status.code(), Some(1), "{what}: {args:?}");
            assert!(
                text(&out.stderr).contains(what),
                "{what}: {}",
                text(&out.stderr)
            );
        }
    };
    assert_eq!(cli(&["devices", "list", "--dir", d]).status.code(), Some(0));

    set_mode(&dir, 0o777);
    refused("written by group or others");
    set_mode(&dir, 0o700);

    let db = dir.join("collector.db");
    let other_name = tmp.path().join("planted-name.db");
    std::fs::hard_link(&db, &other_name).unwrap();
    refused("names (hard links)");
    std::fs::remove_file(&other_name).unwrap();

    let bundles = dir.join("bundles");
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::rename(&bundles, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &bundles).unwrap();
    let out = cli(&["serve", "--dir", d, "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("give --store"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_file(&bundles).unwrap();
    std::fs::rename(&elsewhere, &bundles).unwrap();

    if running_as_root() {
        std::os::unix::fs::chown(&db, Some(65534), None).unwrap();
        refused("another user");
        std::os::unix::fs::chown(&db, Some(0), None).unwrap();
    }
    assert_eq!(cli(&["devices", "list", "--dir", d]).status.code(), Some(0));
}

/// One collector's database holds where its blobs are and its receipt key: a replica
/// started without the store the others use, or with another directory's key, and an
/// export given another store, are refused (they would answer receipts for bundles no
/// export finds, or that devices cannot verify).
#[test]
fn replicas_and_exports_of_one_collector_share_its_store_and_receipt_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (receipt_key, _) = init(&dir);
    let d = dir.to_str().unwrap();
    let serve = |dir: &str, extra: &[&str]| {
        let mut args = vec!["serve", "--dir", dir, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let out = serve(d, &["--store", "s3://bucket/prefix"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("holds store local") && err.contains("give --store"),
        "{err}"
    );

    // Another collector's key file with this database.
    let other = tmp.path().join("other");
    init(&other);
    std::fs::copy(
        other.join("receipt-signing.key"),
        dir.join("receipt-signing.key"),
    )
    .unwrap();
    let out = serve(d, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("receipt_key"),
        "{}",
        text(&out.stderr)
    );

    // An export only reads and checks every blob: another store is said, not refused.
    let (_, id) = identity(tmp.path());
    let (_, _, err) = export(&dir, &id, &["--store", "s3://bucket/prefix"]);
    assert!(
        err.contains("warning") && err.contains("holds store local"),
        "{err}"
    );

    // An init on a database that is another collector's: refused, and what that
    // collector recorded stays as it was.
    let third = tmp.path().join("third");
    let db_url = format!("sqlite://{}/collector.db?mode=rwc", dir.display());
    let out = cli(&["init", "--dir", third.to_str().unwrap(), "--db", &db_url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!third.exists());
    let out = std::process::Command::new("sqlite3")
        .arg(dir.join("collector.db"))
        .arg("SELECT name, value FROM settings ORDER BY name")
        .output()
        .unwrap();
    assert_eq!(
        text(&out.stdout),
        format!("receipt_key|{receipt_key}\nstore|local\n")
    );
}

/// A leaked token can be found (`token list`: ids, uses, expiry, never the tokens) and
/// used up (`token revoke`): it enrolls no new device from then on, devices it enrolled
/// stay enrolled, and `token revoke` names them.
#[test]
fn a_leaked_token_can_be_listed_and_used_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, first) = init(&dir);
    let d = dir.to_str().unwrap();
    let out = cli(&[
        "token",
        "new",
        "--dir",
        d,
        "--uses",
        "5",
        "--expires",
        "2d",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (token, id) = (
        made["token"].as_str().unwrap(),
        made["id"].as_str().unwrap(),
    );
    assert_eq!(id.len(), 12);

    let server = Server::start(&dir, &[]);
    let before = Device::new(60);
    assert_eq!(server.enroll(token, &before).status, 201);

    let out = cli(&["token", "list", "--dir", d]);
    let listed = text(&out.stdout);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(
        listed.contains(&format!("{id}  4 uses left  expires in 1d")),
        "{listed}"
    );
    assert!(
        !listed.contains(token) && !listed.contains(&first),
        "{listed}"
    );
    let out = cli(&["token", "list", "--dir", d, "--json"]);
    assert!(!text(&out.stdout).contains(token));

    // Too short, unknown: refused, nothing changed.
    assert_eq!(
        cli(&["token", "revoke", &id[..6], "--dir", d])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        cli(&["token", "revoke", "0123456789ab", "--dir", d])
            .status
            .code(),
        Some(1)
    );
    let out = cli(&[
        "token",
        "revoke",
        &id.to_ascii_uppercase()[..10],
        "--dir",
        d,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // It names the devices the token let in.
    let said = text(&out.stdout);
    assert!(
        said.contains(id) && said.contains("it enrolled 1"),
        "{said}"
    );
    assert!(said.contains(&before.id_hex()), "{said}");

    let after = Device::new(61);
    let r = server.enroll(token, &after);
    assert_eq!((r.status, r.code()), (401, "bad_token".to_string()));
    // The device it enrolled before is still enrolled (the same key again: 200).
    assert_eq!(server.enroll(token, &before).status, 200);
    let listed = text(&cli(&["token", "list", "--dir", d]).stdout);
    assert!(
        listed.contains(&format!("{id}  0 uses left  used up")),
        "{listed}"
    );
}
