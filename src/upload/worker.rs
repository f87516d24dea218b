//! The upload cycle (enroll, seal, post, verify, ack) and the background thread that
//! runs it.

use std::str::FromStr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::backoff::{parse_retry_after, Backoff, RateLimiter, BACKOFF_MAX, RETRY_AFTER_MAX};
use super::http::{chunk_size, request_timeout, Client, PacedBody, Reply};
use super::options::CollectorUrl;
use super::{Shared, UploadOptions};
use crate::error::{Error, Result};
use crate::vault::{now_us, Inner, Vault};
use capvault_format::{verify_receipt, ReceiptKey, Recipient};
use zeroize::Zeroizing;

/// Where the vault remembers that the device enrolled with a collector (per base URL).
const ENROLLED_PREFIX: &[u8] = b"upload/enrolled/";

/// Why an upload cycle stopped short. Messages never carry the enrollment token.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The collector could not be reached or did not answer in time.
    #[error("{0}")]
    Network(String),
    /// The collector asked to come back later (429 or 503).
    #[error("the collector is busy ({reply}); it asked to retry after {} s", .retry_after.as_secs())]
    Busy {
        /// The collector's answer.
        reply: String,
        /// How long it asked to wait (its `Retry-After`, capped to 1 hour). The
        /// background uploader waits at least this long, and longer when its backoff for
        /// the consecutive failures so far is longer.
        retry_after: Duration,
    },
    /// The collector refused enrollment (bad or used-up token, or the device id is
    /// enrolled with another key).
    #[error("enrollment refused: {0}")]
    Enrollment(String),
    /// The collector rejected the bundle; resending the same bytes will not help until
    /// an administrator acts.
    #[error("the collector rejected the bundle: {0}")]
    Rejected(String),
    /// The collector's answer was not a valid receipt for the bundle sent: the bundle
    /// stays unacknowledged.
    #[error("the collector's receipt was refused, the bundle stays pending: {0}")]
    BadReceipt(String),
    /// The vault failed to seal or acknowledge.
    #[error(transparent)]
    Vault(#[from] Error),
}

/// What a foreground [`Vault::upload_pending`] run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct UploadReport {
    /// Bundles sent and acknowledged with a valid receipt.
    pub bundles: u64,
    /// Their bytes.
    pub bytes: u64,
    /// True when this run enrolled the device.
    pub enrolled: bool,
}

/// How a failed cycle is retried.
enum Retry {
    /// Transport failure or server error: exponential backoff.
    Backoff,
    /// The server said when (`Retry-After`).
    After(Duration),
    /// Resending cannot fix it: wait long before trying again.
    Long,
}

impl UploadError {
    fn retry(&self) -> Retry {
        match self {
            UploadError::Busy { retry_after, .. } => Retry::After(*retry_after),
            UploadError::Rejected(_) | UploadError::BadReceipt(_) => Retry::Long,
            UploadError::Network(_) | UploadError::Enrollment(_) | UploadError::Vault(_) => {
                Retry::Backoff
            }
        }
    }
}

/// Everything one upload cycle needs, checked once.
struct Engine<'a> {
    inner: &'a Inner,
    opts: UploadOptions,
    url: CollectorUrl,
    recipient: Recipient,
    receipt_key: ReceiptKey,
    client: Client,
    limiter: RateLimiter,
}

impl<'a> Engine<'a> {
    fn new(inner: &'a Inner, opts: &UploadOptions) -> Result<Engine<'a>> {
        opts.validate()?;
        let key = inner.opts.collector_receipt_key.as_deref().ok_or_else(|| {
            Error::invalid(
                "upload needs collector_receipt_key: bundles are pruned only against the collector's signed receipt",
            )
        })?;
        Ok(Engine {
            inner,
            url: CollectorUrl::parse(&opts.url)?,
            recipient: Recipient::from_str(&opts.recipient)
                .map_err(|e| Error::invalid(format!("upload.recipient: {e}")))?,
            receipt_key: key.parse()?,
            client: Client::new(CollectorUrl::parse(&opts.url)?.is_https()),
            limiter: RateLimiter::new(opts.max_bytes_per_sec),
            opts: opts.clone(),
        })
    }

    fn enrolled_key(&self) -> Vec<u8> {
        let mut k = ENROLLED_PREFIX.to_vec();
        k.extend_from_slice(self.url.as_str().as_bytes());
        k
    }

    fn is_enrolled(&self) -> Result<bool> {
        Ok(self.inner.store.db.get(self.enrolled_key())?.is_some())
    }

    /// Enrolls with the token, once. Without a token the device is taken to be enrolled
    /// out of band (an administrator registered its `capvault enroll` record).
    fn enroll(&self, shared: Option<&Shared>) -> Result<bool, UploadError> {
        let Some(token) = &self.opts.token else {
            return Ok(false);
        };
        if self.is_enrolled()? {
            return Ok(false);
        }
        // The same record `capvault enroll` writes (its time is fixed at first use).
        let record = self.inner.enrollment_record()?;
        let device_id = record.device_id_hex();
        let record = record.to_json();
        let record_value: serde_json::Value = serde_json::from_str(&record)
            .map_err(|e| Error::Storage(format!("the enrollment record: {e}")))?;
        let body = enroll_body(&record_value, token, record.len())?;
        if let Some(s) = shared {
            s.attempt(now_us());
        }
        let reply = self
            .client
            .post(
                &self.url.endpoint("/v1/enroll"),
                "application/json",
                body.len() as u64,
                &body[..],
                request_timeout(body.len() as u64, 0),
            )
            .map_err(UploadError::Network)?;
        match reply.status {
            200 | 201 => {
                check_enrolled(&reply, &device_id)?;
                let at = now_us().to_be_bytes();
                self.inner
                    .store
                    .db
                    .insert(self.enrolled_key(), &at)
                    .map_err(Error::from)?;
                self.inner.durable_flush()?;
                self.inner.audit(
                    "enroll",
                    &format!("enrolled with the collector at {}", self.url.as_str()),
                )?;
                Ok(true)
            }
            401 => Err(UploadError::Enrollment(format!(
                "the enrollment token was refused ({}); give the vault a new upload.token",
                reply.error_text()
            ))),
            409 => Err(UploadError::Enrollment(format!(
                "this device id is enrolled with another key ({})",
                reply.error_text()
            ))),
            _ => Err(classify(&reply, "enrollment", body.len())),
        }
    }

    /// Forgets that this device enrolled with the collector, so that the next
    /// [`Engine::enroll`] enrolls it again; false (nothing done) without a token.
    fn forget_enrollment(&self) -> Result<bool, UploadError> {
        if self.opts.token.is_none() || !self.is_enrolled()? {
            return Ok(false);
        }
        self.inner
            .store
            .db
            .remove(self.enrolled_key())
            .map_err(Error::from)?;
        self.inner.audit(
            "enroll",
            &format!(
                "the collector at {} no longer knows this device: enrolling again",
                self.url.as_str()
            ),
        )?;
        Ok(true)
    }

    /// Enrolls if needed, then uploads until nothing is pending, `stop` says so, or a
    /// request fails. `sleep` paces the bandwidth cap (false: stop).
    fn cycle(
        &mut self,
        shared: Option<&Shared>,
        stop: &dyn Fn() -> bool,
        sleep: &dyn Fn(Duration) -> bool,
    ) -> Result<UploadReport, UploadError> {
        let mut report = UploadReport {
            enrolled: self.enroll(shared)?,
            ..UploadReport::default()
        };
        if let Some(s) = shared {
            s.set_enrolled(self.is_enrolled()?);
        }
        let bundles_url = self.url.endpoint("/v1/bundles");
        let mut enrolled_again = false;
        loop {
            if stop() {
                return Ok(report);
            }
            // Nothing stored: no seal (whose flush would fsync an idle vault every
            // interval). Events still in the open frame are written by the time bound
            // and found at the next check.
            // A sealed bundle in the outbox is sent even when its records are gone from
            // the log (evicted while offline): it may be the only copy left.
            if self.inner.log.lock().records() == 0 && self.inner.outbox_len()?.is_none() {
                return Ok(report);
            }
            let Some(bundle) = self
                .inner
                .seal_next(&self.recipient, self.opts.max_bundle_bytes)?
            else {
                return Ok(report);
            };
            if let Some(s) = shared {
                s.attempt(now_us());
            }
            let len = bundle.bytes().len() as u64;
            // The body goes out in pieces: each waits for the bandwidth cap and checks
            // for a stop and for an erase (which closes the gate and waits for this
            // send), so one large bundle is paced too, closing the vault does not wait
            // for it to finish, and an erased user's bundle stops going out.
            self.inner.check_not_erased_elsewhere()?;
            let gate = &self.inner.send_gate;
            let Some(sending) = gate.enter() else {
                return Err(Error::Erased.into());
            };
            // Given up once the last piece is let through: an erase then waits for no
            // reply (the bundle went out before it; its ack fails on the erased keys).
            let mut sending = Some(sending);
            let mut handed = 0u64;
            let limiter = &mut self.limiter;
            let mut stopped = false;
            let body = PacedBody::new(
                bundle.bytes(),
                chunk_size(self.opts.max_bytes_per_sec),
                |n| {
                    let go = !stop()
                        && !gate.is_closed()
                        && limiter.acquire(n as u64, &Instant::now, &mut |d| sleep(d))
                        && !stop()
                        && !gate.is_closed();
                    stopped |= !go;
                    handed += n as u64;
                    if go && handed >= len {
                        sending = None;
                    }
                    go
                },
            );
            let reply = self.client.post(
                &bundles_url,
                "application/octet-stream",
                len,
                body,
                request_timeout(len, self.opts.max_bytes_per_sec),
            );
            drop(sending);
            if gate.is_closed() {
                return Err(Error::Erased.into());
            }
            if stopped {
                return Ok(report);
            }
            let reply = reply.map_err(UploadError::Network)?;
            if reply.status == 403
                && reply.code().as_deref() == Some("unknown_device")
                && !enrolled_again
                && self.forget_enrollment()?
            {
                // The collector no longer knows this device (its state was restored from
                // a backup, say): enroll again with the token, once, and send again.
                enrolled_again = true;
                report.enrolled |= self.enroll(shared)?;
                if let Some(s) = shared {
                    s.set_enrolled(self.is_enrolled()?);
                }
                continue;
            }
            if reply.status != 200 {
                return Err(classify(&reply, "bundle", bundle.bytes().len()));
            }
            let receipt = self.check_reply(&reply, bundle.id(), bundle.digest())?;
            self.inner.ack(bundle.id(), Some(&receipt))?;
            report.bundles += 1;
            report.bytes += len;
            if let Some(s) = shared {
                s.uploaded(len, now_us());
            }
        }
    }

    /// The receipt in a 200 reply, after checking it names this bundle and verifies
    /// against the configured collector receipt key.
    fn check_reply(
        &self,
        reply: &Reply,
        id: &str,
        digest: &[u8; 32],
    ) -> Result<Vec<u8>, UploadError> {
        #[derive(serde::Deserialize)]
        struct Accepted {
            id: String,
            receipt: String,
        }
        let a: Accepted = serde_json::from_slice(&reply.body).map_err(|e| {
            UploadError::BadReceipt(format!("the reply is not {{\"id\", \"receipt\"}}: {e}"))
        })?;
        if a.id != id {
            return Err(UploadError::BadReceipt(format!(
                "the reply names bundle {} instead of {id}",
                a.id.chars().take(80).collect::<String>()
            )));
        }
        let receipt = data_encoding::BASE64
            .decode(a.receipt.as_bytes())
            .map_err(|_| UploadError::BadReceipt("the receipt is not base64".into()))?;
        verify_receipt(&self.receipt_key, digest, &receipt).map_err(|_| {
            UploadError::BadReceipt(
                "it does not verify against collector_receipt_key (is the vault configured for this collector?)"
                    .into(),
            )
        })?;
        Ok(receipt)
    }
}

/// The `/v1/enroll` body, `{"record": ..., "token": ...}`, in a buffer that is wiped
/// when dropped. The token is written last into a buffer sized for the whole body, so
/// no reallocation leaves a copy of it behind in freed memory.
fn enroll_body(
    record: &serde_json::Value,
    token: &str,
    record_len: usize,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    #[derive(serde::Serialize)]
    struct EnrollRequest<'a> {
        record: &'a serde_json::Value,
        token: &'a str,
    }
    // Escaping at most doubles a token without control characters.
    let mut body = Zeroizing::new(Vec::with_capacity(2 * record_len + 2 * token.len() + 64));
    serde_json::to_writer(&mut *body, &EnrollRequest { record, token })
        .map_err(|e| Error::Storage(format!("the enrollment request: {e}")))?;
    Ok(body)
}

/// A 200 or 201 from `/v1/enroll` counts only when it is the collector's answer for
/// this device: JSON whose `device_id` is this device's id. Anything else (a captive
/// portal, a proxy's page, another service) is an error, retried later, and the device
/// is not taken to be enrolled.
fn check_enrolled(reply: &Reply, device_id: &str) -> Result<(), UploadError> {
    #[derive(serde::Deserialize)]
    struct Enrolled {
        device_id: String,
    }
    match serde_json::from_slice::<Enrolled>(&reply.body) {
        Ok(e) if e.device_id.eq_ignore_ascii_case(device_id) => Ok(()),
        Ok(e) => Err(UploadError::Enrollment(format!(
            "HTTP {} names device {:?}, not this device ({device_id}); not taken as enrolled",
            reply.status,
            e.device_id
                .chars()
                .filter(|c| !c.is_control())
                .take(80)
                .collect::<String>()
        ))),
        Err(_) => Err(UploadError::Enrollment(format!(
            "HTTP {} without the collector's {{\"device_id\"}} answer (is upload.url the collector?); not taken as enrolled",
            reply.status
        ))),
    }
}

/// Maps a non-success reply to a request of `len` bytes to an error.
fn classify(reply: &Reply, what: &str, len: usize) -> UploadError {
    let text = reply.error_text();
    match reply.status {
        429 | 503 => {
            let now = u64::try_from(now_us() / 1_000_000).unwrap_or_default();
            let after = reply
                .retry_after
                .as_deref()
                .and_then(|v| parse_retry_after(v, now));
            match after {
                Some(d) => UploadError::Busy {
                    reply: text,
                    retry_after: d.min(RETRY_AFTER_MAX),
                },
                None => UploadError::Network(format!("the collector is busy ({text})")),
            }
        }
        400 => UploadError::Rejected(format!(
            "the collector finds the {what} malformed ({text})"
        )),
        403 => UploadError::Rejected(format!(
            "this device is not accepted: unknown, revoked or enrolled with another key ({text}); enroll it (upload.token or capvault enroll) or ask the collector's administrator"
        )),
        409 => UploadError::Rejected(format!(
            "the bundle conflicts with one the collector already holds ({text})"
        )),
        413 => UploadError::Rejected(format!(
            "the collector refuses {what}s this large ({len} bytes; {text}): lower upload.max_bundle_bytes (a bundle already sealed is resent as it is)"
        )),
        _ => UploadError::Network(format!("the collector answered {text}")),
    }
}

/// The background uploader of one open vault.
pub(crate) struct Uploader {
    shared: Arc<Shared>,
    handle: JoinHandle<()>,
}

impl Uploader {
    /// Checks the options and starts the thread.
    pub(crate) fn start(
        inner: Arc<Inner>,
        shared: Arc<Shared>,
        opts: &UploadOptions,
    ) -> Result<Uploader> {
        // Checked here so a bad configuration fails the open, not the thread.
        let engine = Engine::new(&inner, opts)?;
        shared.set_enrolled(engine.is_enrolled()?);
        drop(engine);
        let opts = opts.clone();
        let worker = shared.clone();
        let handle = std::thread::Builder::new()
            .name("capvault-upload".into())
            .spawn(move || {
                crate::background::enter();
                run(&inner, &worker, &opts)
            })
            .map_err(|e| Error::Storage(format!("cannot start the upload thread: {e}")))?;
        Ok(Uploader { shared, handle })
    }

    /// Stops the thread and waits for it: a bundle being sent is abandoned at its next
    /// piece (unacknowledged, so it is sent again later); a request whose body went out
    /// waits at most for the collector's reply (60 s).
    pub(crate) fn stop(self) {
        self.shared.request_stop();
        let _ = self.handle.join();
    }
}

fn run(inner: &Inner, shared: &Shared, opts: &UploadOptions) {
    let Ok(mut engine) = Engine::new(inner, opts) else {
        return;
    };
    let interval = Duration::from_secs(opts.interval_secs);
    let mut backoff = Backoff::default();
    let mut next = Instant::now();
    loop {
        if !shared.wait_until(next) {
            return;
        }
        let result = engine.cycle(Some(shared), &|| shared.stopping(), &|d| shared.sleep(d));
        if shared.stopping() {
            return;
        }
        let delay = match result {
            Ok(_) => {
                backoff.reset();
                shared.succeeded(now_us(), now_us() + interval.as_micros() as i64);
                // Nothing pending: sleep until the writer stores something, then give
                // it the interval to grow into a bundle.
                shared.going_idle();
                if nothing_pending(inner) {
                    match shared.wait_for_data() {
                        None => return,
                        Some(true) => {
                            shared.scheduled(now_us() + interval.as_micros() as i64);
                            interval
                        }
                        Some(false) => Duration::ZERO,
                    }
                } else {
                    shared.scheduled(now_us() + interval.as_micros() as i64);
                    interval
                }
            }
            Err(e) => {
                let delay = match e.retry() {
                    Retry::Backoff => backoff.fail(unit_random()),
                    Retry::After(d) => backoff.fail_after(d, unit_random()),
                    Retry::Long => {
                        // Half to all of the longest backoff, jittered.
                        backoff.fail(0.0);
                        BACKOFF_MAX.mul_f64(0.5 + unit_random() / 2.0)
                    }
                };
                shared.failed(
                    e.to_string(),
                    backoff.failures(),
                    now_us() + delay.as_micros() as i64,
                );
                delay
            }
        };
        next = Instant::now() + delay;
    }
}

/// Nothing to upload: no record in the log and no sealed bundle in the outbox (a
/// failure to tell counts as something pending, so the uploader looks again).
fn nothing_pending(inner: &Inner) -> bool {
    inner.log.lock().records() == 0 && matches!(inner.outbox_len(), Ok(None))
}

/// A uniform random number in [0, 1).
fn unit_random() -> f64 {
    let b: [u8; 8] = capvault_format::secret::random_array();
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

impl Vault {
    /// Runs one upload cycle in the calling thread with `options`: enrolls (when
    /// `options.token` is set and the device is not enrolled yet), then seals, posts and
    /// acknowledges bundles until nothing is pending. Stops at the first failure. The
    /// vault must have been opened with `collector_receipt_key`. This is what
    /// `capvault upload --once` runs; agents normally set `upload` in the options instead
    /// and let the vault upload in the background.
    pub fn upload_pending(&self, options: &UploadOptions) -> Result<UploadReport, UploadError> {
        let mut engine = Engine::new(self.inner(), options)?;
        self.flush()?;
        engine.cycle(None, &|| false, &|d| {
            std::thread::sleep(d);
            true
        })
    }

    /// Wakes the background uploader for a cycle now instead of at its next check
    /// (no effect while it backs off after a failure, or without `upload` options).
    pub fn upload_now(&self) {
        if let Some(s) = &self.inner().upload {
            s.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_formats_to_an_actionable_message() {
        let all = [
            UploadError::Network("the collector refused the connection".into()),
            UploadError::Busy {
                reply: "HTTP 429".into(),
                retry_after: Duration::from_secs(2),
            },
            UploadError::Enrollment("the enrollment token was refused".into()),
            UploadError::Rejected("HTTP 403".into()),
            UploadError::BadReceipt("wrong key".into()),
            UploadError::Vault(Error::Closed),
        ];
        for e in all {
            let s = e.to_string();
            assert!(s.len() > 10, "{s}");
        }
    }

    fn reply(status: u16, retry_after: Option<&str>, body: &str) -> Reply {
        Reply {
            status,
            retry_after: retry_after.map(str::to_string),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn replies_map_to_how_they_are_retried() {
        let api = r#"{"error": "slow down", "code": "busy"}"#;
        let e = classify(&reply(429, Some("7"), api), "bundle", 9_000_000);
        assert!(
            matches!(e, UploadError::Busy { retry_after, .. } if retry_after == Duration::from_secs(7))
        );
        assert!(e.to_string().contains("busy: slow down"), "{e}");
        assert!(
            matches!(classify(&reply(503, Some("99999"), ""), "bundle", 9_000_000),
            UploadError::Busy { retry_after, .. } if retry_after == RETRY_AFTER_MAX)
        );
        // Busy without a usable Retry-After falls back to the exponential backoff.
        assert!(matches!(
            classify(&reply(503, None, ""), "bundle", 9_000_000).retry(),
            Retry::Backoff
        ));
        for status in [400, 403, 409, 413] {
            let e = classify(&reply(status, None, api), "bundle", 9_000_000);
            assert!(matches!(e.retry(), Retry::Long), "{status}: {e}");
            assert!(e.to_string().contains(&status.to_string()), "{e}");
        }
        let e = classify(&reply(413, None, ""), "bundle", 9_000_000).to_string();
        assert!(
            e.contains("refuses bundles this large (9000000 bytes")
                && e.contains("lower upload.max_bundle_bytes"),
            "{e}"
        );
        assert!(classify(&reply(403, None, ""), "bundle", 9_000_000)
            .to_string()
            .contains("revoked"));
        for status in [500, 502, 404] {
            assert!(matches!(
                classify(&reply(status, None, ""), "bundle", 9_000_000).retry(),
                Retry::Backoff
            ));
        }
    }

    #[test]
    fn the_enroll_body_holds_the_record_and_the_token_without_reallocating() {
        let record = serde_json::json!({"format": "x", "device_id": "00ff"});
        let record_len = record.to_string().len();
        let token = "tok\"en\\with-escapes";
        let body = enroll_body(&record, token, record_len).unwrap();
        let cap = body.capacity();
        assert!(body.len() <= cap);
        assert_eq!(cap, 2 * record_len + 2 * token.len() + 64, "never grown");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["token"], token);
        assert_eq!(v["record"], record);
    }

    #[test]
    fn enrollment_counts_only_for_this_devices_id() {
        let me = "00112233445566778899aabbccddeeff";
        check_enrolled(
            &reply(201, None, &format!(r#"{{"device_id": "{me}"}}"#)),
            me,
        )
        .unwrap();
        check_enrolled(
            &reply(
                200,
                None,
                &format!(r#"{{"device_id": "{}"}}"#, me.to_uppercase()),
            ),
            me,
        )
        .unwrap();
        for body in [
            "",
            "<html>welcome to the hotel wifi</html>",
            "{}",
            r#"{"device_id": 7}"#,
            r#"{"device_id": "ffffffffffffffffffffffffffffffff"}"#,
        ] {
            let e = check_enrolled(&reply(200, None, body), me).unwrap_err();
            assert!(matches!(e, UploadError::Enrollment(_)), "{body}: {e}");
            // Retried later like any failed enrollment, with the reason recorded.
            assert!(matches!(e.retry(), Retry::Backoff), "{body}");
            assert!(e.to_string().contains("not taken as enrolled"), "{e}");
        }
    }

    #[test]
    fn reply_text_is_bounded_and_printable() {
        let long = format!(
            "{{\"error\": \"{}\u{7}\", \"code\": \"x\"}}",
            "a".repeat(10_000)
        );
        let t = reply(400, None, &long).error_text();
        assert!(t.len() < 400 && !t.contains('\u{7}'), "{t}");
        assert_eq!(reply(502, None, "").error_text(), "HTTP 502");
    }
}
