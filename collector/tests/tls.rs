//! `serve --tls-cert --tls-key`: HTTPS with rustls.

mod common;

use std::net::TcpStream;
use std::sync::Arc;

use common::*;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};

fn https(
    server: &Server,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> impl FnMut(&str, &[u8]) -> Resp {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let addr = server.addr;
    move |path: &str, body: &[u8]| {
        let conn = rustls::ClientConnection::new(
            config.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let sock = TcpStream::connect(addr).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let (method, ct) = if body.is_empty() {
            ("GET", "text/plain")
        } else if path == "/v1/enroll" {
            ("POST", "application/json")
        } else {
            ("POST", "application/octet-stream")
        };
        exchange(&mut tls, "localhost", method, path, ct, body).unwrap()
    }
}

#[test]
fn serves_https_with_the_given_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let (_, token) = init(&dir);
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    // A key others can read is refused, as ssh does.
    let serve_with_key = |key: &std::path::Path| cli(&serve_args(&dir, &cert_path, key));
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = serve_with_key(&key_path);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("too open"),
            "{}",
            text(&out.stderr)
        );
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let server = Server::start(
        &dir,
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    let mut call = https(&server, cert.cert.der());
    assert_eq!(call("/healthz", b"").status, 200);

    let (id, _) = identity(tmp.path());
    let mut dev = Device::new(50);
    let body = serde_json::json!({ "token": token, "record": dev.record() }).to_string();
    assert_eq!(call("/v1/enroll", body.as_bytes()).status, 201);
    let b = dev.seal_next(&id.recipient(), 2);
    let r = call("/v1/bundles", b.bytes());
    assert_eq!(r.status, 200, "{}", text(&r.body));
    assert_eq!(r.json()["id"], b.id());

    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(try_request(server.addr, "GET", "/healthz", "text/plain", b"").is_err());

    // A missing key file is an operational error at start.
    let out = serve_with_key(&tmp.path().join("nope.pem"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

/// Key files as deployments keep them: a service user's own key must be 0600; a key
/// owned by root may be readable by its group (the `ssl-cert` group, a container's
/// secret volume), as PostgreSQL allows; anyone else's key, or root's readable by
/// others, is refused. Runs the collector as another user, so only as root.
#[test]
fn a_root_owned_key_readable_by_its_group_is_accepted_and_others_are_not() {
    use std::io::BufRead;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        eprintln!("not root: the keys of other users are not checked here");
        return;
    }
    let service = 4_321u32;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_service = |args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            &format!("--reuid={service}"),
            &format!("--regid={service}"),
            "--clear-groups",
            BIN,
        ])
        .args(args);
        c
    };
    // An empty directory of the service user's, as an admin would prepare it.
    let dir = tmp.path().join("c");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(service), Some(service)).unwrap();
    let out = as_service(&["init", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_path = tmp.path().join("cert.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    let key = tmp.path().join("key.pem");
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    // Starts (prints where it listens) or says why not.
    let serve_with = |owner: u32, group: u32, mode: u32| {
        std::os::unix::fs::chown(&key, Some(owner), Some(group)).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut child = as_service(&serve_args(&dir, &cert_path, &key))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (line, text(&out.stderr))
    };
    // The service's own key, 0600: starts.
    let (line, err) = serve_with(service, service, 0o600);
    assert!(line.starts_with("listening on https://"), "{line}{err}");
    // Root's, readable by the service's group: starts.
    let (line, err) = serve_with(0, service, 0o640);
    assert!(line.starts_with("listening on https://"), "{line}{err}");
    assert_eq!(std::fs::metadata(&key).unwrap().uid(), 0);
    // Root's, readable by everyone; the service's own, readable by its group; another
    // user's: refused.
    for (owner, mode, why) in [
        (0, 0o644, "too open"),
        (service, 0o640, "too open"),
        (service + 1, 0o600, "another user"),
    ] {
        let (line, err) = serve_with(owner, service, mode);
        assert!(
            line.is_empty() && err.contains(why),
            "{owner} {mode:o}: {line}{err}"
        );
    }
}

/// `serve` of `dir` with TLS, on a free loopback port.
fn serve_args<'a>(
    dir: &'a std::path::Path,
    cert: &'a std::path::Path,
    key: &'a std::path::Path,
) -> Vec<&'a str> {
    vec![
        "serve",
        "--dir",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]
}
