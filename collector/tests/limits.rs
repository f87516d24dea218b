//! Resource limits: the memory budget, early 413, the body-read deadline (408), the
//! idle timeout and the connection cap.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Reads one answer (or until close) from a raw stream: (status, elapsed).
fn read_answer(s: &mut TcpStream) -> (Option<u16>, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let status = String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok());
    (status, start.elapsed())
}

#[test]
fn serve_refuses_limits_over_the_memory_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let d = dir.to_str().unwrap();
    let out = cli(&[
        "serve",
        "--dir",
        d,
        "--listen",
        "127.0.0.1:0",
        "--max-in-flight",
        "256",
        "--max-bundle-bytes",
        "67108864",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("--max-memory"), "{err}");
}

/// Headers that never end fill at most the connection's read buffer (64 KiB, counted
/// in the memory budget): the server answers 431 and closes once they pass it, instead
/// of buffering hundreds of kilobytes per connection until the idle timeout.
#[test]
fn endless_headers_are_cut_at_the_connection_buffer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let server = Server::start(&dir, &[]);
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nX-Filler: ")
        .unwrap();
    // 128 KiB of one header, never finished; the server may close before it all went.
    let filler = vec![b'a'; 4096];
    let mut sent = 0;
    while sent < 128 << 10 && s.write_all(&filler).is_ok() {
        sent += filler.len();
    }
    let (status, elapsed) = read_answer(&mut s);
    assert_eq!(status, Some(431), "after {sent} bytes");
    assert!(elapsed < Duration::from_secs(20));
    // The server still serves.
    assert_eq!(
        request(server.addr, "GET", "/healthz", "text/plain", b"").status,
        200
    );
}

#[test]
fn an_oversized_content_length_is_refused_before_the_body_is_read() {
    refused_unread(
        &["--max-bundle-bytes", "100000"],
        "/v1/bundles",
        100_000_000,
        "capvault_collector_bundles_rejected_total",
    );
}

/// A request to `path` declaring `declared` bytes, headers only, to a collector started
/// with `args`: answered 413 at once (the answer must not wait for a body) and counted
/// as `too_large` in `counter`.
fn refused_unread(args: &[&str], path: &str, declared: u64, counter: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let server = Server::start(&dir, args);
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n"
    )
    .unwrap();
    let (status, elapsed) = read_answer(&mut s);
    assert_eq!(status, Some(413));
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let m = text(&server.get("/metrics").body);
    assert!(
        m.contains(&format!("{counter}{{reason=\"too_large\"}} 1\n")),
        "{m}"
    );
}

#[test]
fn a_stalled_body_gets_408_within_its_deadline_and_frees_the_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let server = Server::start(&dir, &["--max-in-flight", "1", "--body-timeout", "1s"]);
    // While it stalls it holds the only slot. A probe that overlaps the slow request's
    // arrival can take the slot first and get the slow request refused: then start a
    // new slow request.
    let mut busy = false;
    let mut slow = TcpStream::connect(server.addr).unwrap();
    for _ in 0..40 {
        slow = TcpStream::connect(server.addr).unwrap();
        write!(
            slow,
            "POST /v1/bundles HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc"
        )
        .unwrap();
        slow.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if server.upload(b"x").status == 429 {
            busy = true;
            break;
        }
    }
    assert!(busy, "the stalled upload holds the slot");
    // Deadline: 1 s + 1000 bytes at 64 KiB/s.
    let (status, elapsed) = read_answer(&mut slow);
    assert_eq!(status, Some(408));
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // The slot is free again: the next upload is read and judged (400), not 429.
    let r = server.upload(b"not a bundle");
    assert_eq!((r.status, r.code()), (400, "malformed_bundle".to_string()));
    let m = text(&server.get("/metrics").body);
    assert!(
        m.contains("capvault_collector_bundles_rejected_total{reason=\"timeout\"} 1\n"),
        "{m}"
    );
}

/// A client that declares a large body and drips a few bytes at a time is cut about one
/// grace after it started (not after the time the declared size would take at the
/// minimum rate, 244 s here), on uploads and on enrollments alike.
#[test]
fn a_dripping_body_is_cut_after_the_grace_whatever_length_it_declares() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let server = Server::start(&dir, &["--body-timeout", "1s"]);
    for (path, declared) in [("/v1/bundles", 16_000_000), ("/v1/enroll", 60_000)] {
        let mut s = TcpStream::connect(server.addr).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n"
        )
        .unwrap();
        let start = Instant::now();
        let mut dripper = s.try_clone().unwrap();
        let drip = std::thread::spawn(move || {
            // 10 bytes every 200 ms until the server closes or 20 s have passed.
            while start.elapsed() < Duration::from_secs(20) {
                if dripper.write_all(b"0123456789").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let (status, _) = read_answer(&mut s);
        let elapsed = start.elapsed();
        assert_eq!(status, Some(408), "{path}");
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(6),
            "{path}: {elapsed:?}"
        );
        drop(s);
        drip.join().unwrap();
    }
    let m = text(&server.get("/metrics").body);
    assert!(
        m.contains("capvault_collector_bundles_rejected_total{reason=\"timeout\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains("capvault_collector_enrollments_rejected_total{reason=\"timeout\"} 1\n"),
        "{m}"
    );
}

/// An enrollment body larger than any record is refused before it is read.
#[test]
fn an_oversized_enrollment_is_refused_before_it_is_read() {
    refused_unread(
        &[],
        "/v1/enroll",
        10_000_000,
        "capvault_collector_enrollments_rejected_total",
    );
}

#[test]
fn idle_connections_are_closed_and_the_connection_cap_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    init(&dir);
    let server = Server::start(&dir, &["--idle-timeout", "2s", "--max-connections", "1"]);
    // A connection that sends nothing is closed after the idle timeout.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    let start = Instant::now();
    // Meanwhile it is the only connection served: another one waits for it to close.
    let addr = server.addr;
    let other = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let r = request(addr, "GET", "/healthz", "text/plain", b"");
        (r.status, t.elapsed())
    });
    let (status, _) = read_answer(&mut idle);
    let closed_after = start.elapsed();
    assert_eq!(status, None, "closed without an answer");
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(10),
        "{closed_after:?}"
    );
    let (status, waited) = other.join().unwrap();
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_millis(1000), "{waited:?}");
}
