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
    let serve_with_key = |key: &std::path::Path| {
        cli(&[
            "serve",
            "--dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
    };
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
