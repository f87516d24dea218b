//! `serve`: the listener (plain HTTP or HTTPS with rustls and the ring provider), one
//! task per connection, HTTP/1.1 through hyper.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::api::{router, AppState};
use crate::config::{ServeConfig, TlsFiles};
use crate::db::Db;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::BlobStore;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, ApiError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let op = |what: &str, e: &dyn std::fmt::Display| ApiError::Operational(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            op(
                &format!("cannot read certificates from {}", files.cert.display()),
                &e,
            )
        })?;
    if certs.is_empty() {
        return Err(ApiError::Operational(format!(
            "{} holds no certificate",
            files.cert.display()
        )));
    }
    crate::private::check_key_file(&files.key, "the TLS key")?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        op(
            &format!("cannot read the private key from {}", files.key.display()),
            &e,
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| op("TLS configuration", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| op("the TLS certificate or key is not usable", &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the service until SIGINT or SIGTERM. Prints `listening on URL` to stdout once
/// the socket is bound (the port is useful with `--listen 127.0.0.1:0`).
pub async fn serve(cfg: ServeConfig) -> Result<(), ApiError> {
    let signer = crate::config::load_signer(&cfg.dir)?;
    let tls = cfg.tls.as_ref().map(load_tls).transpose()?;
    let db = Db::open(&cfg.db_url).await?;
    let store = BlobStore::open(&cfg.store_url)?;
    let key = signer.receipt_key().to_string();
    crate::config::check_bindings(&db, Some(&store), Some(&key), true).await?;
    let state = Arc::new(AppState {
        db: db.clone(),
        store,
        signer,
        metrics: Metrics::default(),
        max_bundle_bytes: cfg.max_bundle_bytes,
        in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
        body_timeout: cfg.body_timeout,
        min_upload_rate: cfg.min_upload_rate,
        refusal_log: Default::default(),
    });
    // Each connection holds one permit from accept to close; at the cap, new
    // connections wait in the listen backlog.
    let connections = Arc::new(Semaphore::new(cfg.max_connections));
    let idle_timeout = cfg.idle_timeout;
    let app = router(state);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ApiError::Operational(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ApiError::Operational(e.to_string()))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {scheme}://{addr}");
        let _ = out.flush();
    }
    tracing::info!(%addr, scheme, db = ?db.engine(), "collector serving");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (sock, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = sock.set_nodelay(true);
        let svc = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let http = {
                let mut b = hyper::server::conn::http1::Builder::new();
                // Runs from the moment the connection waits for a request: the time to
                // send the headers, and the idle keep-alive timeout.
                b.timer(TokioTimer::new()).header_read_timeout(idle_timeout);
                // Within the memory budget (hyper's default is about 400 KiB a
                // connection, which a client sending never-ending headers fills).
                b.max_buf_size(crate::config::CONNECTION_READ_BUFFER);
                b
            };
            let result = match tls {
                None => http.serve_connection(TokioIo::new(sock), svc).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(stream)) => http.serve_connection(TokioIo::new(stream), svc).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    tracing::info!("shutting down");
    db.close().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
