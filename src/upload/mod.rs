//! The built-in uploader (SPEC 12.5): an open vault configured with `upload` enrolls
//! itself once with the collector and ships its bundles in the background.
//!
//! One thread per open vault runs this cycle:
//!
//! 1. enroll once (`POST {url}/v1/enroll` with the token and the device's signed
//!    enrollment record), remembered in the vault so the token is sent only until the
//!    collector accepted it (a 200/201 whose JSON names this device's id; anything else
//!    is an error and the enrollment is retried later);
//! 2. `seal_next` (the outbox: until acknowledged, the same bytes every time) and
//!    `POST {url}/v1/bundles`;
//! 3. check the reply names this bundle, verify the receipt against
//!    `collector_receipt_key`, and only then `ack` (records are pruned);
//! 4. repeat while bundles are pending, paced by `max_bytes_per_sec` (piece by piece
//!    within each request body, so one large bundle is paced too); then sleep until
//!    the next check (`interval_secs`) with one timer. A flush that leaves a full
//!    bundle's worth (`max_bundle_bytes`) waiting wakes it early; an idle vault has no
//!    other wakeups.
//!
//! Failures: transport errors and 5xx back off exponentially with full jitter from 1 s
//! to 15 min; 429 and 503 wait the longer of `Retry-After` (honoured up to 1 h) and that
//! backoff, so a collector answering "retry after 2 s" through an outage still sees its
//! fleet's retries grow and spread; rejections that a retry of the
//! same bytes cannot fix (400, 403, 409, 413, a bad receipt) are recorded in the status
//! and retried only after a long wait (a revoked device may be reinstated). Nothing is
//! pruned without a valid receipt, so a lost reply, a crash or a restarted collector
//! costs at most one resend of the same bytes, which the collector answers idempotently.
//!
//! Redirects are never followed (a 3xx is an error naming where it pointed) and an
//! https URL never falls back to plain http, so nothing between the device and the
//! collector can move the uploader to another host.
//!
//! Each request's timeout grows with its body (60 s plus the body at the slower of
//! 16 KiB/s and the cap), so a large bundle on a slow link completes instead of timing
//! out and being resent forever; a stalled write gives up after 60 s.
//!
//! Stopping (close or drop of the vault) wakes the thread through a condition variable,
//! so it never waits out a backoff; a bundle being sent is abandoned at its next piece
//! (it stays pending), and a request whose body went out waits at most for the reply's
//! timeout. The enrollment token never appears in logs, errors or status.

#[cfg(feature = "upload")]
mod backoff;
#[cfg(feature = "upload")]
mod http;
mod options;
#[cfg(feature = "upload")]
mod worker;

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use options::UploadOptions;
#[cfg(feature = "upload")]
pub(crate) use worker::Uploader;
#[cfg(feature = "upload")]
pub use worker::{UploadError, UploadReport};

use crate::TimestampUs;

/// The uploader's part of [`crate::Status`] (`upload` in the status JSON), present when
/// the vault was opened with `upload` options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UploadStatus {
    /// The collector's base URL.
    pub url: String,
    /// Bundles still to upload, estimated from `pending_bytes` and
    /// `upload.max_bundle_bytes` (at least 1 while anything is pending).
    pub pending_bundles: u64,
    /// Stored bytes of records not yet acknowledged by the collector.
    pub pending_bytes: u64,
    /// When the last bundle was acknowledged with a valid receipt (or the last check
    /// found nothing to send), microseconds since the Unix epoch.
    pub last_success_us: Option<TimestampUs>,
    /// When the last request to the collector started.
    pub last_attempt_us: Option<TimestampUs>,
    /// Why the most recent cycle failed; `None` once a cycle succeeds again.
    pub last_error: Option<String>,
    /// When the next cycle is due (`None` while a request is in flight, or while
    /// `idle`).
    pub next_attempt_us: Option<TimestampUs>,
    /// Nothing is pending and the uploader sleeps until new data is written; the next
    /// cycle starts `upload.interval_secs` after that (so an idle vault's uploader does
    /// not wake up).
    pub idle: bool,
    /// True once this device is enrolled with the collector at `url` (through
    /// `upload.token`).
    pub enrolled: bool,
    /// Failures since the last success (the backoff grows with it).
    pub consecutive_failures: u32,
    /// Bundles acknowledged by the collector since the vault was opened.
    pub uploaded_bundles: u64,
    /// Their bytes.
    pub uploaded_bytes: u64,
}

/// Mutable uploader state, shared between the thread, `status` and `close`.
#[derive(Default)]
#[cfg_attr(not(feature = "upload"), allow(dead_code))]
struct State {
    stop: bool,
    wake: bool,
    /// Waiting for data: nothing was pending at the end of the last cycle.
    idle: bool,
    /// Data was written while idle.
    data: bool,
    enrolled: bool,
    last_success_us: Option<TimestampUs>,
    last_attempt_us: Option<TimestampUs>,
    last_error: Option<String>,
    next_attempt_us: Option<TimestampUs>,
    consecutive_failures: u32,
    uploaded_bundles: u64,
    uploaded_bytes: u64,
}

/// The uploader's shared state; the vault holds it for `status`.
#[cfg_attr(not(feature = "upload"), allow(dead_code))]
pub(crate) struct Shared {
    url: String,
    max_bundle_bytes: usize,
    state: Mutex<State>,
    cv: Condvar,
}

#[cfg_attr(not(feature = "upload"), allow(dead_code))]
impl Shared {
    pub(crate) fn new(opts: &UploadOptions) -> Shared {
        Shared {
            url: opts.url.trim_end_matches('/').to_string(),
            max_bundle_bytes: opts.max_bundle_bytes,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status, given the stored bytes not yet acknowledged.
    pub(crate) fn status(&self, pending_bytes: u64, sealed_pending: bool) -> UploadStatus {
        let s = self.lock();
        let per = self.max_bundle_bytes.max(1) as u64;
        UploadStatus {
            url: self.url.clone(),
            pending_bundles: pending_bytes.div_ceil(per).max(u64::from(sealed_pending)),
            pending_bytes,
            last_success_us: s.last_success_us,
            last_attempt_us: s.last_attempt_us,
            last_error: s.last_error.clone(),
            next_attempt_us: s.next_attempt_us,
            idle: s.idle,
            enrolled: s.enrolled,
            consecutive_failures: s.consecutive_failures,
            uploaded_bundles: s.uploaded_bundles,
            uploaded_bytes: s.uploaded_bytes,
        }
    }

    /// Asks the thread to stop and wakes it.
    pub(crate) fn request_stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// Wakes the thread for a cycle now (unless it is backing off after a failure).
    pub(crate) fn wake(&self) {
        let mut s = self.lock();
        if s.consecutive_failures == 0 {
            s.wake = true;
            self.cv.notify_all();
        }
    }

    /// Called after a successful flush with the stored bytes not yet acknowledged: wakes
    /// the uploader early once a full bundle is waiting (smaller amounts wait for the
    /// next check, so frequent flushes do not turn into many small bundles).
    pub(crate) fn flushed(&self, stored_bytes: u64) {
        if stored_bytes >= self.max_bundle_bytes as u64 {
            self.wake();
        }
    }

    /// Called by the vault's writer after it stored records: ends an idle wait.
    pub(crate) fn data_written(&self) {
        let mut s = self.lock();
        if s.idle {
            s.idle = false;
            s.data = true;
            self.cv.notify_all();
        }
    }

    /// From now on, writes end the wait of [`Shared::wait_for_data`]. Call before the
    /// last look at what is pending, so a write in between is not missed.
    fn going_idle(&self) {
        let mut s = self.lock();
        s.idle = true;
        s.data = false;
        s.next_attempt_us = None;
    }

    /// The next cycle starts at `next` (ends idleness).
    fn scheduled(&self, next: TimestampUs) {
        let mut s = self.lock();
        s.idle = false;
        s.next_attempt_us = Some(next);
    }

    /// Sleeps until data is written (true: wait the interval first), a wake-up (false:
    /// go now) or a stop (`None`).
    fn wait_for_data(&self) -> Option<bool> {
        let mut s = self.lock();
        loop {
            if s.stop {
                return None;
            }
            if s.wake {
                s.wake = false;
                s.idle = false;
                return Some(false);
            }
            if s.data || !s.idle {
                s.data = false;
                return Some(true);
            }
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stopping(&self) -> bool {
        self.lock().stop
    }

    /// Sleeps until `deadline`, a wake-up or a stop. False when stopping.
    fn wait_until(&self, deadline: Instant) -> bool {
        self.wait(deadline, true)
    }

    /// Sleeps for `d` unless stopped (wake-ups do not cut it short). False when stopping.
    fn sleep(&self, d: Duration) -> bool {
        self.wait(Instant::now() + d, false)
    }

    fn wait(&self, deadline: Instant, woken_early: bool) -> bool {
        let mut s = self.lock();
        loop {
            if s.stop {
                return false;
            }
            if woken_early && s.wake {
                s.wake = false;
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            s = self
                .cv
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn set_enrolled(&self, enrolled: bool) {
        self.lock().enrolled = enrolled;
    }

    /// A request starts now; the next attempt is unknown until it ends.
    fn attempt(&self, at: TimestampUs) {
        let mut s = self.lock();
        s.last_attempt_us = Some(at);
        s.next_attempt_us = None;
    }

    fn uploaded(&self, bytes: u64, at: TimestampUs) {
        let mut s = self.lock();
        s.uploaded_bundles += 1;
        s.uploaded_bytes += bytes;
        s.last_success_us = Some(at);
    }

    fn succeeded(&self, at: TimestampUs, next: TimestampUs) {
        let mut s = self.lock();
        s.last_success_us = Some(at);
        s.last_error = None;
        s.consecutive_failures = 0;
        s.next_attempt_us = Some(next);
    }

    fn failed(&self, error: String, failures: u32, next: TimestampUs) {
        let mut s = self.lock();
        // A wake-up asked for during the failed cycle does not cut the backoff short.
        s.wake = false;
        s.last_error = Some(error);
        s.consecutive_failures = failures;
        s.next_attempt_us = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_estimates_pending_bundles() {
        let mut o = UploadOptions::new("https://h/", "r");
        o.max_bundle_bytes = 1000;
        let s = Shared::new(&o);
        assert_eq!(s.status(0, false).pending_bundles, 0);
        assert_eq!(s.status(1, false).pending_bundles, 1);
        assert_eq!(s.status(2001, false).pending_bundles, 3);
        // A sealed bundle whose records were evicted still counts.
        assert_eq!(s.status(0, true).pending_bundles, 1);
        assert_eq!(s.status(0, false).url, "https://h");
    }

    #[test]
    fn a_full_bundle_wakes_the_uploader_unless_it_backs_off() {
        let mut o = UploadOptions::new("https://h", "r");
        o.max_bundle_bytes = 1000;
        let s = Shared::new(&o);
        s.flushed(999);
        assert!(!s.lock().wake);
        s.flushed(1000);
        assert!(s.wait_until(Instant::now() + Duration::from_secs(3600)));
        assert!(!s.lock().wake, "a wake-up is used once");
        s.failed("down".into(), 1, 0);
        s.flushed(5000);
        assert!(!s.lock().wake, "no early wake-up during a backoff");
    }

    #[test]
    fn stop_interrupts_a_long_wait() {
        let s = std::sync::Arc::new(Shared::new(&UploadOptions::default()));
        let t = {
            let s = s.clone();
            std::thread::spawn(move || s.wait_until(Instant::now() + Duration::from_secs(3600)))
        };
        s.request_stop();
        assert!(!t.join().unwrap());
        assert!(!s.sleep(Duration::from_secs(3600)));
    }
}
