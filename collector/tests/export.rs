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

/// Stored data that cannot be what the store wrote (an index row whose location leaves
/// the store, a segment replaced by a FIFO, a segment replaced by a link) is reported
/// for its bundles alone, with exit 3: export neither stops at the first one nor waits
/// on the FIFO, and everything else is still exported; `copy-bundles` likewise.
#[test]
fn unreadable_blobs_are_reported_one_by_one_and_the_rest_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let token = new_token(&dir, &["--uses", "3"]);
    let (id, id_path) = identity(tmp.path());
    // Each device in a segment of its own (a new segment at every start).
    let mut segments = Vec::new();
    let mut devices = Vec::new();
    for tag in [41u8, 42, 43] {
        let before: Vec<_> = segment_entries(&dir).into_iter().map(|e| e.1).collect();
        let server = Server::start(&dir, &[]);
        let mut d = Device::new(tag);
        assert_eq!(server.enroll(&token, &d).status, 201);
        for _ in 0..2 {
            let b = d.seal_next(&id.recipient(), 2);
            assert_eq!(server.upload(b.bytes()).status, 200);
        }
        drop(server);
        let seg = segment_entries(&dir)
            .into_iter()
            .map(|e| e.1)
            .find(|p| !before.contains(p))
            .unwrap();
        segments.push(seg);
        devices.push(d);
    }
    // Device 41's second row names a place outside the store.
    let sql = format!(
        "UPDATE bundles SET location = '../../etc/passwd:48:5' WHERE device_id = '{}' AND seq = 2",
        devices[0].id_hex()
    );
    let db = dir.join("collector.db");
    let py = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); \
              c.commit(); assert c.total_changes == 1";
    let out = std::process::Command::new("python3")
        .args(["-c", py])
        .arg(&db)
        .arg(&sql)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Device 42's segment is now a FIFO, device 43's a link to device 41's.
    std::fs::remove_file(&segments[1]).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(&segments[1])
        .status()
        .unwrap();
    assert!(fifo.success());
    std::fs::remove_file(&segments[2]).unwrap();
    std::os::unix::fs::symlink(&segments[0], &segments[2]).unwrap();

    let (tx, rx) = std::sync::mpsc::channel();
    let (d, p) = (dir.clone(), id_path.clone());
    std::thread::spawn(move || tx.send(export(&d, &p, &[])).unwrap());
    let (code, lines, report) = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("export ends, whatever the store holds");
    assert_eq!(code, 3, "{report}");
    assert_eq!(report.matches("blob_unreadable").count(), 5, "{report}");
    assert!(report.contains("not a segment location"), "{report}");
    assert!(report.contains("not a regular file"), "{report}");
    assert!(report.contains("symbolic link"), "{report}");
    // Device 41's first bundle, two events, is all that is released.
    assert_eq!(lines.len(), 2, "{report}");

    let out = dir.parent().unwrap().join("copies");
    let r = copy_bundles(&dir, &out);
    assert_eq!(r.status.code(), Some(3), "{}", text(&r.stderr));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
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

/// A collector with one device and one bundle of 3 events: (collector dir, identity
/// file).
fn one_bundle_collector(tmp: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tmp.join("c");
    let (_, token) = init(&dir);
    let server = Server::start(&dir, &[]);
    let (id, id_path) = identity(tmp);
    let mut dev = Device::new(30);
    assert_eq!(server.enroll(&token, &dev).status, 201);
    assert_eq!(
        server
            .upload(dev.seal_next(&id.recipient(), 3).bytes())
            .status,
        200
    );
    (dir, id_path)
}

/// `export` runs with its standard output sent to `file`.
fn export_to(
    dir: &std::path::Path,
    id: &std::path::Path,
    file: std::fs::File,
) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["export", "--dir", dir.to_str().unwrap(), "--identity"])
        .arg(id)
        .stdout(file)
        .output()
        .unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every captured event of every device is in an export: it goes only where no one else
/// can read it. `--out` makes a new owner-only file and never writes over one or through
/// a link; a redirected stdout must be one's own and owner-only already; a file of someone
/// else's, or one with other names, is refused before anything is written.
#[test]
fn exported_plaintext_goes_only_where_no_one_else_can_read_it() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, id) = one_bundle_collector(tmp.path());
    let export_out = |out: &std::path::Path| {
        let (d, i) = (dir.to_str().unwrap(), id.to_str().unwrap());
        cli(&[
            "export",
            "--dir",
            d,
            "--identity",
            i,
            "--out",
            out.to_str().unwrap(),
        ])
    };

    let out = tmp.path().join("events.jsonl");
    let o = export_out(&out);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
    assert_eq!(mode(&out), 0o600);
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    // Never over an existing file, nor through a symbolic link.
    let o = export_out(&out);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("already exists"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    let planted = tmp.path().join("planted");
    let link = tmp.path().join("link.jsonl");
    std::os::unix::fs::symlink(&planted, &link).unwrap();
    let o = export_out(&link);
    assert_eq!(o.status.code(), Some(1));
    assert!(!planted.exists());

    // `> file` with a umask of 022: refused, nothing written (a mode changed now would
    // not take the file back from a reader that opened it already); with 600: written.
    let redirected = tmp.path().join("redirected.jsonl");
    std::fs::write(&redirected, b"").unwrap();
    std::fs::set_permissions(
        &redirected,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let o = export_to(&dir, &id, std::fs::File::create(&redirected).unwrap());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("umask 077"), "{}", text(&o.stderr));
    assert_eq!(std::fs::metadata(&redirected).unwrap().len(), 0);
    std::fs::set_permissions(
        &redirected,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let o = export_to(&dir, &id, std::fs::File::create(&redirected).unwrap());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(mode(&redirected), 0o600);
    assert_eq!(
        std::fs::read_to_string(&redirected)
            .unwrap()
            .lines()
            .count(),
        3
    );

    // A named FIFO others can open (someone reading behind it): refused.
    let fifo = tmp.path().join("events.fifo");
    assert!(std::process::Command::new("mkfifo")
        .args(["-m", "644"])
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo).unwrap())
    };
    let o = export_to(
        &dir,
        &id,
        std::fs::OpenOptions::new().write(true).open(&fifo).unwrap(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(reader.join().unwrap().is_empty());

    // A file with a second name (made by someone to read it through): refused.
    let linked = tmp.path().join("linked.jsonl");
    std::fs::write(&linked, b"").unwrap();
    std::fs::hard_link(&linked, tmp.path().join("their-name")).unwrap();
    let o = export_to(&dir, &id, std::fs::File::create(&linked).unwrap());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("other names"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::metadata(&linked).unwrap().len(), 0);

    // A file that belongs to another user (who made it, writable, in a shared place).
    let me = std::fs::metadata("/proc/self").unwrap().uid();
    if me == 0 {
        let theirs = tmp.path().join("theirs.jsonl");
        std::fs::write(&theirs, b"").unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        let o = export_to(&dir, &id, std::fs::File::create(&theirs).unwrap());
        assert_eq!(o.status.code(), Some(1));
        assert!(
            text(&o.stderr).contains("another user"),
            "{}",
            text(&o.stderr)
        );
        assert_eq!(std::fs::metadata(&theirs).unwrap().len(), 0);
    } else {
        eprintln!("not root: the file of another user is not checked here");
    }

    // A pipe is the caller's choice: as before.
    let (code, lines, _) = export(&dir, &id, &[]);
    assert_eq!((code, lines.len()), (0, 3));
}

/// An identity typed where its file's path belongs is refused before anything runs,
/// and never echoed (stderr, like the shell's history, outlives the command).
#[test]
fn an_identity_given_as_an_argument_is_refused_and_not_echoed() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, id) = one_bundle_collector(tmp.path());
    let secret = std::fs::read_to_string(&id).unwrap();
    let secret = secret.lines().find(|l| l.starts_with("CVSECRET-")).unwrap();
    let body = &secret[20..40];
    for args in [
        vec![
            "export",
            "--dir",
            dir.to_str().unwrap(),
            "--identity",
            secret,
        ],
        vec!["export", "--dir", dir.to_str().unwrap(), secret],
        vec!["nonsense", &secret.to_ascii_lowercase()],
    ] {
        let o = cli(&args);
        assert_eq!(o.status.code(), Some(2));
        let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
        assert!(
            !all.to_ascii_uppercase()
                .contains(&body.to_ascii_uppercase()),
            "{all}"
        );
        assert!(all.contains("not shown"), "{all}");
    }
    // An identity file others can read is refused, as ssh refuses such a key.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let (code, lines, err) = export(&dir, &id, &[]);
    assert_eq!((code, lines.len()), (1, 0), "{err}");
    assert!(err.contains("too open"), "{err}");
}

/// `copy-bundles` writes owner-only files whole, takes a device id in any case, can be
/// run again after an interruption (files with the same bytes count as copied, a
/// leftover `.partial` is replaced), never replaces a file with other bytes, and never
/// names a file from an index row whose ids are not hex (a path out of `--out`).
#[test]
fn copy_bundles_is_owner_only_resumable_and_stays_in_its_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = one_bundle_collector(tmp.path());
    let out = tmp.path().join("copies");
    let device = Device::new(30).id_hex().to_ascii_uppercase();
    let copy = || copy_bundles_with(&dir, &out, &["--device", &device]);
    let r = copy();
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    assert!(
        text(&r.stdout).contains("copied 1 bundles"),
        "{}",
        text(&r.stdout)
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700);
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(mode(&files[0]), 0o600);
    // Again, with a leftover partial file: the same result, the partial gone.
    std::fs::write(files[0].with_extension("cvb.partial"), b"cut").unwrap();
    let r = copy();
    assert_eq!(r.status.code(), Some(0), "{}", text(&r.stderr));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // A file with other bytes under that name: reported, left as it is.
    std::fs::write(&files[0], b"someone else's").unwrap();
    let r = copy();
    assert_eq!(r.status.code(), Some(3));
    assert!(
        text(&r.stderr).contains("other bytes"),
        "{}",
        text(&r.stderr)
    );
    assert_eq!(std::fs::read(&files[0]).unwrap(), b"someone else's");

    // An index row whose device id is a path: no file outside --out, reported.
    let db = dir.join("collector.db");
    let sql = "UPDATE bundles SET device_id = '../../escaped'";
    let out2 = tmp.path().join("copies2");
    let r = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(sql)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", text(&r.stderr));
    let r = copy_bundles(&dir, &out2);
    assert_eq!(r.status.code(), Some(3), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("not hex"), "{}", text(&r.stderr));
    assert_eq!(std::fs::read_dir(&out2).unwrap().count(), 0);
    assert!(!tmp.path().join("escaped").exists());
    let escaped: Vec<_> = std::fs::read_dir(tmp.path().parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("escaped"))
        .collect();
    assert!(escaped.is_empty());
}
