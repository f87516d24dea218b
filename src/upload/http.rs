//! The HTTP transport: one blocking ureq agent (rustls on ring, the webpki root
//! certificates), bounded timeouts, and replies reduced to status, `Retry-After` and a
//! bounded body. No async runtime.
//!
//! Redirects are never followed: the collector's address is configuration, and a 3xx
//! (from the collector or anything in front of it) is an error naming where it pointed,
//! so nothing on the path can send the device, its enrollment token or its bundles to
//! another host or down to plain http. An https URL also makes the agent refuse any
//! plain-http connection; plain http connects only to loopback addresses.

use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ureq::config::Config;
use ureq::http::uri::{Scheme, Uri};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// Connecting (TCP and TLS) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Waiting for the response head after the body was sent.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// A single socket write that makes no progress for this long means the link stalled.
const WRITE_TIMEOUT: Duration = crate::vault::send_gate::PIECE_WRITE_TIMEOUT;
/// The whole-request timeout is this plus the body's time at [`MIN_RATE`].
const BASE_TIMEOUT: Duration = Duration::from_secs(60);
/// The slowest link a request is given time for, in bytes per second (16 KiB/s,
/// about 130 kbit/s): an 8 MiB bundle gets 60 s + 512 s, so it completes on a
/// 0.5 Mbit/s link instead of timing out and being resent forever.
pub(crate) const MIN_RATE: u64 = 16 * 1024;
/// The body is handed to the transport in pieces of at most this size, so a stop (or
/// the bandwidth cap) acts between pieces rather than after the whole bundle.
const MAX_CHUNK: usize = 64 * 1024;

/// The whole-request timeout for a body of `len` bytes: [`BASE_TIMEOUT`] plus the time
/// to send it at the slower of [`MIN_RATE`] and the configured cap
/// (`max_bytes_per_sec`, 0 for none), so neither a slow link nor the uploader's own
/// pacing makes a large bundle time out every time.
pub(crate) fn request_timeout(len: u64, max_bytes_per_sec: u64) -> Duration {
    let rate = match max_bytes_per_sec {
        0 => MIN_RATE,
        cap => cap.min(MIN_RATE),
    };
    BASE_TIMEOUT + Duration::from_secs(len.div_ceil(rate))
}

/// The size of the pieces a body is sent in: about a quarter second's worth at the
/// cap (so pacing is smooth), between 1 KiB and 64 KiB.
pub(crate) fn chunk_size(max_bytes_per_sec: u64) -> usize {
    match max_bytes_per_sec {
        0 => MAX_CHUNK,
        cap => usize::try_from(cap / 4).map_or(MAX_CHUNK, |c| c.clamp(1024, MAX_CHUNK)),
    }
}

/// A request body read out in pieces; `gate(n)` runs before each piece of `n` bytes
/// (it paces to the bandwidth cap and checks for a stop) and returning false aborts
/// the request.
pub(crate) struct PacedBody<'a, G: FnMut(usize) -> bool> {
    rest: &'a [u8],
    chunk: usize,
    gate: G,
}

impl<'a, G: FnMut(usize) -> bool> PacedBody<'a, G> {
    pub(crate) fn new(body: &'a [u8], chunk: usize, gate: G) -> Self {
        PacedBody {
            rest: body,
            chunk: chunk.max(1),
            gate,
        }
    }
}

impl<G: FnMut(usize) -> bool> Read for PacedBody<'_, G> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.rest.len().min(self.chunk).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        if !(self.gate)(n) {
            // Not ErrorKind::Interrupted, which readers retry.
            return Err(std::io::Error::other("the upload was stopped"));
        }
        let (now, rest) = self.rest.split_at(n);
        buf[..n].copy_from_slice(now);
        self.rest = rest;
        Ok(n)
    }
}
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
    /// The collector's error code (`{"code": ...}`), when the body is that JSON.
    pub(crate) fn code(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Coded {
            code: String,
        }
        serde_json::from_slice::<Coded>(&self.body)
            .ok()
            .map(|c| c.code)
    }

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
    /// loopback host). Plain http to loopback never goes through a proxy named in the
    /// environment (`HTTP_PROXY`, `ALL_PROXY`): the token and the enrollment record would
    /// cross the network in clear, to a proxy that reaches its own loopback, not this
    /// device's. https may (a proxy tunnels it, and TLS is end to end). For the same
    /// reason plain http connects only to loopback addresses ([`LoopbackResolver`]).
    pub(crate) fn new(https_only: bool) -> Client {
        let mut config = ureq::Agent::config_builder();
        if !https_only {
            config = config.proxy(None);
        }
        let config = config
            .http_status_as_error(false)
            .max_redirects(0)
            .https_only(https_only)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT))
            .timeout_per_write(Some(WRITE_TIMEOUT))
            .timeout_global(Some(request_timeout(0, 0)))
            .user_agent(concat!("capvault/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = if https_only {
            config.into()
        } else {
            ureq::Agent::with_parts(config, DefaultConnector::default(), LoopbackResolver)
        };
        Client { agent }
    }

    /// POSTs `body` (with a Content-Length) within `timeout` (see [`request_timeout`]).
    /// `Err` is a transport failure (no HTTP reply), with a message that names neither
    /// the body nor any credential.
    pub(crate) fn post<R: Read>(
        &self,
        url: &str,
        content_type: &str,
        len: u64,
        mut body: R,
        timeout: Duration,
    ) -> Result<Reply, String> {
        let mut resp = self
            .agent
            .post(url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", content_type)
            .header("Content-Length", len.to_string())
            .header("Accept", "application/json")
            .send(ureq::SendBody::from_reader(&mut body))
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

/// The plain-http client's resolver. Plain http is allowed only to loopback hosts
/// ([`super::options::CollectorUrl`]), but the system resolver may answer `localhost`
/// with another address (a bad /etc/hosts, a resolver that asks DNS), and the token and
/// bundles would then cross the network in clear. So `localhost` is answered here,
/// never asked, and any other answer that is not loopback is refused.
#[derive(Debug)]
struct LoopbackResolver;

impl Resolver for LoopbackResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default();
        let addrs = if host.eq_ignore_ascii_case("localhost") {
            let https = uri.scheme() == Some(&Scheme::HTTPS);
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let mut addrs = self.empty();
            let both = [
                SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            ];
            config
                .ip_family()
                .keep_wanted(both.into_iter())
                .for_each(|a| addrs.push(a));
            addrs
        } else {
            DefaultResolver::default().resolve(uri, config, timeout)?
        };
        match addrs.iter().find(|a| !a.ip().is_loopback()) {
            None if !addrs.is_empty() => Ok(addrs),
            None => Err(ureq::Error::HostNotFound),
            Some(a) => Err(ureq::Error::Io(std::io::Error::other(format!(
                "{host} resolved to {}, not a loopback address: plain http goes only to loopback",
                a.ip()
            )))),
        }
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
        // Mid-request: a collector answers a body over its --max-bundle-bytes (413) or
        // one arriving slower than its --min-upload-rate (408) and closes the
        // connection while the body is still being sent, so the answer is not read.
        ureq::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            format!(
                "the collector closed the connection while the request was being sent ({io}): \
                 a collector does that to a bundle larger than its --max-bundle-bytes or \
                 arriving slower than its --min-upload-rate"
            )
        }
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
    fn one_shot(response: &'static str) -> (String, std::thread::JoinHandle<Vec<u8>>) {
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
        let err = post_json(&Client::new(false), &format!("{url}/v1/enroll")).unwrap_err();
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

    /// POSTs `{}` to `url` as an enrollment would be sent.
    fn post_json(client: &Client, url: &str) -> Result<Reply, String> {
        client.post(
            url,
            "application/json",
            2,
            &b"{}"[..],
            request_timeout(2, 0),
        )
    }

    /// A proxy in the environment is not used for plain http to loopback: the request
    /// reaches the server itself (the proxy named is a port where nothing listens).
    #[test]
    fn plain_http_to_loopback_ignores_proxies_in_the_environment() {
        for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            std::env::set_var(var, "http://127.0.0.1:9");
        }
        for var in ["NO_PROXY", "no_proxy"] {
            std::env::remove_var(var);
        }
        let (url, server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        let reply = post_json(&Client::new(false), &format!("{url}/v1/enroll")).unwrap();
        for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            std::env::remove_var(var);
        }
        assert_eq!(reply.status, 200);
        assert_eq!(server.join().unwrap(), b"{}");
    }

    #[test]
    fn localhost_resolves_to_loopback_without_the_system_and_nothing_else_passes() {
        let resolve = |url: &str| {
            LoopbackResolver.resolve(
                &url.parse().unwrap(),
                &Config::default(),
                NextTimeout::default(),
            )
        };
        for (url, port) in [
            ("http://localhost:8080/v1/enroll", 8080),
            ("http://LOCALHOST/", 80),
            ("http://LocalHost:1", 1),
        ] {
            let addrs: Vec<SocketAddr> = resolve(url).unwrap().iter().copied().collect();
            assert_eq!(
                addrs,
                [
                    SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
                ],
                "{url}"
            );
        }
        // Other hosts go to ureq's resolver (literals here: no lookup), loopback only.
        assert!(resolve("http://127.9.8.7:81").is_ok());
        assert!(resolve("http://[::1]:81").is_ok());
        for url in [
            "http://10.0.0.1:80",
            "http://[2001:db8::1]",
            "http://0.0.0.0:80",
        ] {
            let e = resolve(url).unwrap_err().to_string();
            assert!(e.contains("not a loopback address"), "{url}: {e}");
        }
    }

    /// The plain-http client reaches a server on 127.0.0.1 by the name `localhost`, and
    /// refuses a non-loopback address before connecting.
    #[test]
    fn the_plain_http_client_reaches_localhost_and_only_loopback() {
        let (url, server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
        let url = url.replace("127.0.0.1", "localhost");
        let reply = post_json(&Client::new(false), &format!("{url}/v1/enroll")).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(server.join().unwrap(), b"{}");
        // 192.0.2.1 (TEST-NET-1): without the check this would try to connect.
        let err = post_json(&Client::new(false), "http://192.0.2.1:9/v1/enroll").unwrap_err();
        assert!(err.contains("not a loopback address"), "{err}");
    }

    #[test]
    fn an_https_client_refuses_plain_http() {
        let err = Client::new(true)
            .post(
                "http://127.0.0.1:9/v1/bundles",
                "application/octet-stream",
                1,
                &b"x"[..],
                request_timeout(1, 0),
            )
            .unwrap_err();
        assert!(err.to_lowercase().contains("https"), "{err}");
    }

    #[test]
    fn the_timeout_grows_with_the_body_and_the_cap() {
        let mib = 1024 * 1024;
        assert_eq!(request_timeout(0, 0), Duration::from_secs(60));
        // 8 MiB at 16 KiB/s: 512 s on top; a 0.5 Mbit/s link needs about 134 s.
        let t = request_timeout(8 * mib, 0);
        assert_eq!(t, Duration::from_secs(60 + 512));
        assert!(t.as_secs_f64() > (8 * mib) as f64 / (500_000.0 / 8.0));
        // A cap above the floor does not shorten it; a cap below it lengthens it.
        assert_eq!(request_timeout(8 * mib, 1 << 30), t);
        assert_eq!(
            request_timeout(8 * mib, 4096),
            Duration::from_secs(60 + 2048)
        );
        // The largest bundle the collector takes.
        assert_eq!(request_timeout(64 * mib, 0), Duration::from_secs(60 + 4096));
    }

    #[test]
    fn a_paced_body_is_the_body_in_gated_pieces() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut pieces = Vec::new();
        let mut out = Vec::new();
        PacedBody::new(&data, chunk_size(40_000), |n| {
            pieces.push(n);
            true
        })
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out, data);
        assert!(pieces.iter().all(|&n| n <= 10_000), "{pieces:?}");
        assert_eq!(pieces.iter().sum::<usize>(), data.len());
        assert_eq!(chunk_size(0), 64 * 1024);
        assert_eq!(chunk_size(100), 1024);
        assert_eq!(chunk_size(u64::MAX), 64 * 1024);
        // A closed gate aborts with an error that is not retried as Interrupted.
        let mut calls = 0;
        let err = PacedBody::new(&data, 1000, |_| {
            calls += 1;
            calls < 3
        })
        .read_to_end(&mut Vec::new())
        .unwrap_err();
        assert_ne!(err.kind(), std::io::ErrorKind::Interrupted);
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_body_is_sent_whole_with_its_length_through_the_gate() {
        let (url, server) = one_shot(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let mut gated = 0;
        let reply = Client::new(false)
            .post(
                &format!("{url}/v1/bundles"),
                "application/octet-stream",
                data.len() as u64,
                PacedBody::new(&data, chunk_size(0), |n| {
                    gated += n;
                    true
                }),
                request_timeout(data.len() as u64, 0),
            )
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(gated, data.len());
        assert_eq!(server.join().unwrap(), data);
    }
}
