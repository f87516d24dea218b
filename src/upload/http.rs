//! The HTTP transport: one blocking ureq agent (rustls on ring, the webpki root
//! certificates), bounded timeouts, and replies reduced to status, `Retry-After` and a
//! bounded body. No async runtime.
//!
//! Redirects are never followed: the collector's address is configuration, and a 3xx
//! (from the collector or anything in front of it) is an error naming where it pointed,
//! so nothing on the path can send the device, its enrollment token or its bundles to
//! another host or down to plain http. An https URL also makes the agent refuse any
//! plain-http connection.

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
    /// `https_only`: refuse plain http (true unless the configured URL is http to a
    /// loopback host).
    pub(crate) fn new(https_only: bool) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .https_only(https_only)
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
        if (300..400).contains(&status) {
            let to = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "nowhere (no Location)".to_string(), location_host);
            return Err(format!(
                "the collector answered HTTP {status}, a redirect to {to}: redirects are not followed; set upload.url to the collector's own address"
            ));
        }
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

/// Where a `Location` points, for an error message: its host (and port), `the same
/// host` for a relative reference, printable and bounded. Never a path or a query.
fn location_host(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return "the same host".to_string();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // Drop any user information; keep host[:port].
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host: String = host
        .chars()
        .filter(|c| !c.is_control() && !c.is_whitespace())
        .take(120)
        .collect();
    let scheme: String = scheme
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    if host.is_empty() {
        "the same host".to_string()
    } else {
        format!("{scheme}://{host}")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback: reads one request (head and
    /// Content-Length body) and answers `response`. Returns the base URL and a handle
    /// yielding the request body.
    pub(crate) fn one_shot(response: &'static str) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut stream = stream;
            stream.write_all(response.as_bytes()).unwrap();
            body
        });
        (url, handle)
    }

    #[test]
    fn a_redirect_is_an_error_naming_its_host_and_is_not_followed() {
        let (url, server) = one_shot(
            "HTTP/1.1 302 Found\r\nLocation: http://other-host.example:8080/v1/enroll?x=1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let err = Client::new(false)
            .post(&format!("{url}/v1/enroll"), "application/json", b"{}")
            .unwrap_err();
        assert!(
            err.contains("302") && err.contains("http://other-host.example:8080"),
            "{err}"
        );
        assert!(!err.contains("x=1") && !err.contains("/v1/enroll"), "{err}");
        assert_eq!(server.join().unwrap(), b"{}");
        // Were it followed, the client would be connecting to other-host.example now;
        // it answered at once instead, from the one request above.
    }

    #[test]
    fn location_hosts_are_bounded_and_never_carry_credentials() {
        assert_eq!(location_host("https://a.example/x"), "https://a.example");
        assert_eq!(
            location_host("http://user:pw@b.example:81/?q"),
            "http://b.example:81"
        );
        assert_eq!(location_host("/v1/bundles"), "the same host");
        assert_eq!(location_host("http:///x"), "the same host");
        assert!(location_host(&format!("https://{}", "h".repeat(1000))).len() < 140);
    }

    #[test]
    fn an_https_client_refuses_plain_http() {
        let err = Client::new(true)
            .post(
                "http://127.0.0.1:9/v1/bundles",
                "application/octet-stream",
                b"x",
            )
            .unwrap_err();
        assert!(err.to_lowercase().contains("https"), "{err}");
    }
}
