//! The HTTP transport: one blocking ureq agent (rustls on ring, the webpki root
//! certificates), bounded timeouts, and replies reduced to status, `Retry-After` and a
//! bounded body. No async runtime.

use std::time::Duration;

/// Connecting (TCP and TLS) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Waiting for the response head after the body was sent.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole request, upper bound: closing a vault waits at most this long for an upload in
/// flight.
const GLOBAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Replies are small JSON objects; anything longer is cut.
const MAX_REPLY_BYTES: u64 = 64 * 1024;

/// A reply from the collector.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// The collector's error text (`{"error": ..., "code": ...}`), shortened, or the
    /// start of the body when it is not that JSON.
    pub(crate) fn error_text(&self) -> String {
        #[derive(serde::Deserialize)]
        struct ApiError {
            error: Option<String>,
            code: Option<String>,
        }
        let text = match serde_json::from_slice::<ApiError>(&self.body) {
            Ok(ApiError {
                error: Some(e),
                code: Some(c),
            }) => format!("{c}: {e}"),
            Ok(ApiError { error: Some(e), .. }) => e,
            _ => String::from_utf8_lossy(&self.body).into_owned(),
        };
        let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
        if text.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {} ({text})", self.status)
        }
    }
}

/// A blocking HTTP client for the collector API.
pub(crate) struct Client {
    agent: ureq::Agent,
}

impl Client {
    pub(crate) fn new() -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_global(Some(GLOBAL_TIMEOUT))
            .user_agent(concat!("capvault/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent: config.into(),
        }
    }

    /// POSTs `body`. `Err` is a transport failure (no HTTP reply), with a message that
    /// names neither the body nor any credential.
    pub(crate) fn post(&self, url: &str, content_type: &str, body: &[u8]) -> Result<Reply, String> {
        let mut resp = self
            .agent
            .post(url)
            .header("Content-Type", content_type)
            .header("Accept", "application/json")
            .send(body)
            .map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_REPLY_BYTES)
            .read_to_vec()
            .map_err(|e| {
                format!(
                    "reading the collector's reply failed: {}",
                    transport_error(&e)
                )
            })?;
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}

fn transport_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => format!("the collector did not answer in time ({e})"),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "the collector refused the connection (is it running?)".to_string()
        }
        ureq::Error::HostNotFound => "the collector's host name does not resolve".to_string(),
        other => format!("cannot reach the collector: {other}"),
    }
}
