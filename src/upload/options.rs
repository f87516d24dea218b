//! The `upload` options: where the built-in uploader sends bundles and to whom they are
//! sealed. Parsed with the rest of [`crate::VaultOptions`]; checked at open.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use capvault_format::Recipient;

/// Default largest bundle the uploader seals (8 MiB).
pub const DEFAULT_MAX_BUNDLE_BYTES: usize = 8 * 1024 * 1024;
/// The largest `max_bundle_bytes` accepted (64 MiB). A collector accepts bundles up to
/// its `--max-bundle-bytes` ([`COLLECTOR_DEFAULT_MAX_BUNDLE_BYTES`] by default) and
/// refuses larger ones (413): keep `max_bundle_bytes` at or below it.
pub const MAX_BUNDLE_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// The largest bundle a collector accepts by default (its `--max-bundle-bytes`, 16 MiB).
pub const COLLECTOR_DEFAULT_MAX_BUNDLE_BYTES: usize =
    capvault_format::COLLECTOR_DEFAULT_MAX_BUNDLE_BYTES;
/// The lowest bandwidth cap accepted (64 KiB/s): a collector cuts an upload that
/// arrives slower than its `--min-upload-rate` (64 KiB/s by default), so a bundle paced
/// below it would be sent again and again and never land.
pub const MIN_BYTES_PER_SEC: u64 = capvault_format::COLLECTOR_DEFAULT_MIN_UPLOAD_RATE;
/// Default seconds between checks for new data while idle.
pub const DEFAULT_INTERVAL_SECS: u64 = 30;

/// Options of the built-in uploader (`upload` in [`crate::VaultOptions`] and in the C
/// API's `options_json`). When set, the open vault enrolls itself once and uploads its
/// bundles in the background (SPEC 12.5). `collector_receipt_key` must be set with it:
/// bundles are pruned only against the collector's signed receipt.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UploadOptions {
    /// Base URL of the collector (`https://ingest.example.com`); the uploader posts to
    /// `{url}/v1/enroll` and `{url}/v1/bundles`. `http` is accepted only for loopback
    /// hosts (127.0.0.0/8, ::1, localhost).
    pub url: String,
    /// The collector's recipient (`cvrecip-...`) bundles are sealed to. Configured here,
    /// never learned from the network.
    pub recipient: String,
    /// Enrollment token, sent once to enroll this device. Never logged or reported, and
    /// wiped from memory when the options are dropped (`Some(token.into())` from a
    /// `String`).
    #[serde(with = "secret_token")]
    pub token: Option<Zeroizing<String>>,
    /// Largest bundle to seal, in bytes (default 8 MiB, from 64 KiB to 64 MiB; keep it
    /// at or below the collector's `--max-bundle-bytes`, 16 MiB by default). A single
    /// event larger than this goes alone. With `upload` set, an event too large for a
    /// bundle of the larger of this and 16 MiB is refused when it is appended
    /// (`InvalidArgument`): a collector with its default limit would refuse it for
    /// good, and every later bundle would wait behind it.
    pub max_bundle_bytes: usize,
    /// Average upload bandwidth cap in bytes per second (default 0: unlimited; else at
    /// least 64 KiB/s, the collector's default `--min-upload-rate`), applied within each
    /// request as well as between bundles (bursts of up to one second's worth).
    /// Requests get time for their body at the slower of this and 16 KiB/s.
    pub max_bytes_per_sec: u64,
    /// Seconds between checks for new data while idle (default 30).
    pub interval_secs: u64,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            url: String::new(),
            recipient: String::new(),
            token: None,
            max_bundle_bytes: DEFAULT_MAX_BUNDLE_BYTES,
            max_bytes_per_sec: 0,
            interval_secs: DEFAULT_INTERVAL_SECS,
        }
    }
}

impl std::fmt::Debug for UploadOptions {
    // The token is a credential: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadOptions")
            .field("url", &self.url)
            .field("recipient", &self.recipient)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_bundle_bytes", &self.max_bundle_bytes)
            .field("max_bytes_per_sec", &self.max_bytes_per_sec)
            .field("interval_secs", &self.interval_secs)
            .finish()
    }
}

impl UploadOptions {
    /// The largest bundle this uploader may send: the larger of `max_bundle_bytes` and
    /// what a collector accepts by default (a single event larger than
    /// `max_bundle_bytes` goes alone).
    pub(crate) fn bundle_limit(&self) -> usize {
        self.max_bundle_bytes
            .max(COLLECTOR_DEFAULT_MAX_BUNDLE_BYTES)
    }

    /// Room for events (encoded) in a bundle of [`Self::bundle_limit`]: what is left
    /// after the bundle's own overhead and its audit entries.
    pub(crate) fn event_room(&self) -> usize {
        self.bundle_limit().saturating_sub(
            crate::vault::release::BUNDLE_OVERHEAD + crate::vault::release::AUDIT_ROOM,
        )
    }

    /// Options for `url` and `recipient`, everything else default.
    pub fn new(url: impl Into<String>, recipient: impl Into<String>) -> Self {
        UploadOptions {
            url: url.into(),
            recipient: recipient.into(),
            ..UploadOptions::default()
        }
    }

    /// Checks the URL (https, or http to loopback only), the recipient and the ranges.
    pub fn validate(&self) -> Result<()> {
        CollectorUrl::parse(&self.url)?;
        if self.recipient.is_empty() {
            return Err(Error::invalid(
                "upload.recipient is required: the collector's cvrecip-... recipient",
            ));
        }
        Recipient::from_str(&self.recipient)
            .map_err(|e| Error::invalid(format!("upload.recipient: {e}")))?;
        if let Some(t) = &self.token {
            // The message never echoes the token.
            if t.is_empty() || t.len() > 1024 || t.chars().any(char::is_control) {
                return Err(Error::invalid(
                    "upload.token must be 1 to 1024 bytes without control characters",
                ));
            }
        }
        if !(64 * 1024..=MAX_BUNDLE_BYTES_LIMIT).contains(&self.max_bundle_bytes) {
            return Err(Error::invalid(format!(
                "upload.max_bundle_bytes must be between 65536 and {MAX_BUNDLE_BYTES_LIMIT} (64 MiB; and at most the collector's --max-bundle-bytes, 16 MiB by default); got {}",
                self.max_bundle_bytes
            )));
        }
        if self.max_bytes_per_sec != 0 && self.max_bytes_per_sec < MIN_BYTES_PER_SEC {
            return Err(Error::invalid(format!(
                "upload.max_bytes_per_sec must be 0 (no cap) or at least {MIN_BYTES_PER_SEC}: a collector cuts an upload that arrives slower than its --min-upload-rate (64 KiB/s by default), so bundles capped below it would never land; got {}",
                self.max_bytes_per_sec
            )));
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(Error::invalid(
                "upload.interval_secs must be between 1 and 86400",
            ));
        }
        Ok(())
    }
}

/// (De)serializes the token as a plain optional string, straight into and out of its
/// zeroizing holder.
mod secret_token {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use zeroize::Zeroizing;

    pub(super) fn serialize<S: Serializer>(
        token: &Option<Zeroizing<String>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        token.as_ref().map(|t| t.as_str()).serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Zeroizing<String>>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(Zeroizing::new))
    }
}

/// A checked collector base URL, without a trailing slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CollectorUrl(String);

#[cfg_attr(not(feature = "upload"), allow(dead_code))]
impl CollectorUrl {
    pub(crate) fn parse(url: &str) -> Result<CollectorUrl> {
        let bad = |why: &str| Error::invalid(format!("upload.url {url:?}: {why}"));
        if url.is_empty() {
            return Err(Error::invalid(
                "upload.url is required: the collector's base URL (https://...)",
            ));
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected https://HOST[:PORT][/PATH]"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("the scheme must be https (or http to a loopback host)")),
        };
        if rest.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("a query, fragment or whitespace is not allowed"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((_, host)) = authority.rsplit_once('@') {
            // Quoted without them: the message must not repeat a password.
            return Err(Error::invalid(format!(
                "upload.url \"{scheme}://<credentials>@{host}/...\": credentials in the URL are not allowed (use upload.token)"
            )));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("only :PORT may follow ']'"))?,
                ),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if let Some(p) = port {
            if p.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad("the port must be 1 to 65535"));
            }
        }
        if !https && !is_loopback(host) {
            return Err(bad(
                "plain http is allowed only to a loopback host (127.0.0.0/8, ::1, localhost); use https",
            ));
        }
        Ok(CollectorUrl(url.trim_end_matches('/').to_string()))
    }

    pub(crate) fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// True for an https URL (the client then refuses plain http); false only for http
    /// to a loopback host.
    pub(crate) fn is_https(&self) -> bool {
        self.0
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<Ipv4Addr>()
            .is_ok_and(|ip| ip.octets()[0] == 127)
        || host.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_to_loopback() {
        for ok in [
            "https://ingest.example.com",
            "https://ingest.example.com:8443/capture/",
            "https://[2001:db8::1]:443",
            "http://127.0.0.1:8080",
            "http://127.9.8.7",
            "HTTP://LOCALHOST:1/x",
            "http://[::1]:9000",
        ] {
            CollectorUrl::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "ingest.example.com",
            "ftp://127.0.0.1",
            "http://ingest.example.com",
            "http://10.0.0.1:80",
            "http://128.0.0.1",
            "http://[::2]",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "https://user:pw@ingest.example.com",
            "https://ingest.example.com/?a=b",
            "https://",
            "https://host:0",
            "https://host:99999",
            "https://[::1",
            "http://[::1]evil.example.com",
            "http://[::1]:80evil",
            "https://[2001:db8::1]x",
        ] {
            let e = CollectorUrl::parse(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
            assert!(e.to_string().contains("upload.url"), "{e}");
        }
        // A password in the URL is never repeated in the message.
        let e = CollectorUrl::parse("https://user:s3cr3t-pw@ingest.example.com/x").unwrap_err();
        let m = e.to_string();
        assert!(!m.contains("s3cr3t") && !m.contains("user:"), "{m}");
        assert!(
            m.contains("ingest.example.com") && m.contains("credentials"),
            "{m}"
        );
        assert!(CollectorUrl::parse("HTTPS://h").unwrap().is_https());
        assert!(!CollectorUrl::parse("http://127.0.0.1:1")
            .unwrap()
            .is_https());
        assert_eq!(
            CollectorUrl::parse("https://h/p/")
                .unwrap()
                .endpoint("/v1/bundles"),
            "https://h/p/v1/bundles"
        );
    }

    #[test]
    fn max_bundle_bytes_stays_within_what_the_collector_accepts() {
        let recipient = capvault_format::Identity::generate(capvault_format::Suite::X25519)
            .recipient()
            .to_string();
        let mut o = UploadOptions::new("https://h", recipient);
        for ok in [65_536, DEFAULT_MAX_BUNDLE_BYTES, MAX_BUNDLE_BYTES_LIMIT] {
            o.max_bundle_bytes = ok;
            o.validate().unwrap();
        }
        for bad in [0, 65_535, MAX_BUNDLE_BYTES_LIMIT + 1, 1 << 30] {
            o.max_bundle_bytes = bad;
            let e = o.validate().unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
            assert!(
                e.to_string().contains("upload.max_bundle_bytes")
                    && e.to_string().contains("67108864"),
                "{e}"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let mut o = UploadOptions::new("https://h", "cvrecip-x");
        o.token = Some(String::from("sekrit-token-value").into());
        let s = format!("{o:?}");
        assert!(!s.contains("sekrit"), "{s}");
        assert!(s.contains("redacted"), "{s}");
    }

    #[test]
    fn the_token_is_held_zeroizing_and_round_trips_as_a_string() {
        let o: UploadOptions =
            serde_json::from_str(r#"{"url": "https://h", "recipient": "r", "token": "t-1"}"#)
                .unwrap();
        let token: &Option<Zeroizing<String>> = &o.token;
        assert_eq!(token.as_deref().map(String::as_str), Some("t-1"));
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["token"], "t-1");
        let back: UploadOptions = serde_json::from_value(json).unwrap();
        assert_eq!(back, o);
        let none: UploadOptions =
            serde_json::from_str(r#"{"url": "https://h", "recipient": "r"}"#).unwrap();
        assert!(none.token.is_none());
        assert!(serde_json::to_value(&none).unwrap()["token"].is_null());
        // Wiping works on the holder the options use.
        let mut t = Zeroizing::new(String::from("sekrit"));
        zeroize::Zeroize::zeroize(&mut t);
        assert!(t.is_empty());
    }
}
