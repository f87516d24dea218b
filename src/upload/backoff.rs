//! Timing for the uploader, free of I/O and of the clock: exponential backoff with full
//! jitter, `Retry-After` parsing, and the bandwidth pacer (applied piece by piece
//! within each request body, so one large bundle is paced too). Callers pass the time in, so
//! tests drive these with a made-up clock and never sleep.

use std::time::{Duration, Instant};

/// The first retry waits about this long.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The backoff's own delays never exceed this.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// A server's `Retry-After` is honoured up to this long (above [`BACKOFF_MAX`]: a
/// collector that knows it is down for maintenance may ask for more); longer asks are
/// cut to it.
pub(crate) const RETRY_AFTER_MAX: Duration = Duration::from_secs(60 * 60);

/// Exponential backoff with full jitter between [`BACKOFF_MIN`] and a ceiling that
/// doubles with each consecutive failure up to [`BACKOFF_MAX`]. Full jitter spreads a
/// fleet that lost its collector at the same moment over the whole window instead of
/// having every device retry in lockstep.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Consecutive failures so far.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure starts from the bottom again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// The ceiling of the window for the next delay (before counting this failure).
    pub(crate) fn ceiling(&self) -> Duration {
        let shift = self.failures.min(20);
        BACKOFF_MIN
            .saturating_mul(1u32 << shift)
            .clamp(BACKOFF_MIN, BACKOFF_MAX)
    }

    /// Counts a failure and returns how long to wait. `unit` is a uniform random number
    /// in [0, 1) (injected so tests are deterministic).
    pub(crate) fn fail(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let span = ceiling.saturating_sub(BACKOFF_MIN);
        BACKOFF_MIN + span.mul_f64(unit)
    }

    /// Counts a failure whose wait the server named (`Retry-After`) and returns the
    /// longer of that wait (up to [`RETRY_AFTER_MAX`]) and the jittered exponential
    /// delay [`Backoff::fail`] gives for this failure. A collector that keeps answering
    /// "retry after 2 s" during an outage thus sees its fleet's retries grow and spread
    /// like any other failure, instead of every device resending its bundle every 2 s in
    /// lockstep; a longer `Retry-After` is still honoured.
    pub(crate) fn fail_after(&mut self, wait: Duration, unit: f64) -> Duration {
        let backoff = self.fail(unit);
        wait.min(RETRY_AFTER_MAX).max(backoff)
    }
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date (IMF-fixdate, the form
/// RFC 9110 requires senders to use) relative to `now_unix_secs`. `None` when it is
/// neither, and the caller falls back to its own backoff.
pub(crate) fn parse_retry_after(value: &str, now_unix_secs: u64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    Some(Duration::from_secs(at.saturating_sub(now_unix_secs)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` to seconds since the Unix epoch.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let (_, rest) = s.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as u64
        + 1;
    let year: u64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // A leap second is 60; anything larger is not a time (and could overflow below).
    if !(1970..=9999).contains(&year) || !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm), for years from 1970.
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// Paces uploads to at most `bytes_per_sec` on average, allowing a burst of one
/// second's worth. A virtual-time scheduler (GCRA): each send pushes the theoretical
/// arrival time forward by its size over the rate; a send waits until that time is
/// within the burst. A bundle larger than a second's worth goes out whole and the next
/// one waits for it to be paid off.
#[derive(Clone, Debug)]
pub(crate) struct RateLimiter {
    bytes_per_sec: u64,
    tat: Option<Instant>,
}

impl RateLimiter {
    /// `0` means unlimited.
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        RateLimiter {
            bytes_per_sec,
            tat: None,
        }
    }

    /// How long to wait at `now` before sending. Does not reserve anything.
    pub(crate) fn delay(&self, now: Instant) -> Duration {
        match (self.bytes_per_sec, self.tat) {
            (0, _) | (_, None) => Duration::ZERO,
            (_, Some(tat)) => tat
                .saturating_duration_since(now)
                .saturating_sub(Duration::from_secs(1)),
        }
    }

    /// Waits until `bytes` may go out under the cap, then records them as sent. `now`
    /// reads the clock; `sleep` waits and returns false to give up (a stop), and then
    /// nothing is recorded and the result is false.
    pub(crate) fn acquire(
        &mut self,
        bytes: u64,
        now: &dyn Fn() -> Instant,
        sleep: &mut dyn FnMut(Duration) -> bool,
    ) -> bool {
        let wait = self.delay(now());
        if !wait.is_zero() && !sleep(wait) {
            return false;
        }
        self.sent(bytes, now());
        true
    }

    /// Records `bytes` sent at `now`.
    pub(crate) fn sent(&mut self, bytes: u64, now: Instant) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let start = match self.tat {
            Some(tat) if tat > now => tat,
            _ => now,
        };
        self.tat = Some(start + cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_from_one_second_to_fifteen_minutes() {
        let mut b = Backoff::default();
        let mut ceilings = Vec::new();
        for _ in 0..14 {
            ceilings.push(b.ceiling().as_secs());
            // The top of the window (unit just below 1) is the ceiling itself.
            let d = b.fail(0.999_999_999);
            assert!(d <= BACKOFF_MAX && d >= BACKOFF_MIN, "{d:?}");
        }
        assert_eq!(
            ceilings,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900]
        );
        assert_eq!(b.failures(), 14);
        b.reset();
        assert_eq!(b.ceiling(), BACKOFF_MIN);
    }

    #[test]
    fn full_jitter_spans_the_window_and_never_goes_below_one_second() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.fail(0.5);
        }
        // Ceiling now 32 s: the bottom of the window is 1 s, the top 32 s.
        assert_eq!(b.clone().fail(0.0), Duration::from_secs(1));
        assert_eq!(b.clone().fail(0.5), Duration::from_millis(16_500));
        assert!(b.clone().fail(1.0) <= Duration::from_secs(32));
        assert_eq!(b.clone().fail(f64::NAN), Duration::from_secs(1));
        assert_eq!(b.clone().fail(-3.0), Duration::from_secs(1));
        // Many failures never overflow and stay at the cap.
        for _ in 0..1000 {
            assert!(b.fail(1.0) <= BACKOFF_MAX);
        }
    }

    #[test]
    fn retry_after_is_capped_and_floored() {
        let mut b = Backoff::default();
        assert_eq!(b.fail_after(Duration::ZERO, 0.0), BACKOFF_MIN);
        assert_eq!(
            b.fail_after(Duration::from_secs(7), 0.0),
            Duration::from_secs(7)
        );
        // Above the backoff's own cap, honoured up to an hour.
        assert_eq!(
            b.fail_after(Duration::from_secs(40 * 60), 0.0),
            Duration::from_secs(40 * 60)
        );
        assert_eq!(
            b.fail_after(Duration::from_secs(86_400), 0.0),
            RETRY_AFTER_MAX
        );
        assert_eq!(b.failures(), 4);
    }

    /// A deterministic stand-in for the random unit (a 64-bit LCG).
    fn units(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn a_short_retry_after_grows_with_consecutive_failures() {
        // One device, a collector answering "Retry-After: 2" to every request.
        let two = Duration::from_secs(2);
        let mut b = Backoff::default();
        let mut unit = units(1);
        let mut total = Duration::ZERO;
        for _ in 0..30 {
            let d = b.fail_after(two, unit());
            assert!(d >= two && d <= BACKOFF_MAX, "{d:?}");
            total += d;
        }
        // Exactly Retry-After would be 60 s over 30 failures; the backoff makes it hours.
        assert!(total > Duration::from_secs(3600), "{total:?}");
        // At the top of the window (unit just below 1) the delay is the cap.
        assert!(b.clone().fail_after(two, 0.999_999_999) > BACKOFF_MAX - BACKOFF_MIN);
        // After a success it starts from Retry-After again.
        b.reset();
        assert_eq!(b.fail_after(two, 0.9), two);
    }

    #[test]
    fn a_fleet_answered_retry_after_two_seconds_spreads_out() {
        // 1000 devices that failed together 9 times against a "Retry-After: 2"
        // collector: their 10th retry is spread over the whole window (1 s to 512 s),
        // not bunched at 2 s.
        let two = Duration::from_secs(2);
        let mut unit = units(42);
        let mut delays: Vec<u64> = (0..1000)
            .map(|_| {
                let mut b = Backoff::default();
                for _ in 0..9 {
                    b.fail_after(two, unit());
                }
                b.fail_after(two, unit()).as_secs()
            })
            .collect();
        delays.sort_unstable();
        let at_two = delays.iter().filter(|&&d| d <= 2).count();
        assert!(at_two < 20, "{at_two} of 1000 retry within 2 s");
        // Every tenth of the window holds roughly a tenth of the fleet.
        for decile in 0..10u64 {
            let lo = 1 + decile * 511 / 10;
            let hi = 1 + (decile + 1) * 511 / 10;
            let n = delays.iter().filter(|&&d| d >= lo && d < hi).count();
            assert!((50..=150).contains(&n), "{n} devices in [{lo}, {hi}) s");
        }
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("2", 0), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", 0),
            Some(Duration::from_secs(120))
        );
        // RFC 9110's example date is 784111777 seconds after the epoch.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(parse_imf_fixdate(date), Some(784_111_777));
        assert_eq!(
            parse_retry_after(date, 784_111_777 - 30),
            Some(Duration::from_secs(30))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after(date, 784_111_777 + 30),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_imf_fixdate("Sat, 29 Feb 2020 12:00:00 GMT"),
            Some(1_582_977_600)
        );
        for bad in [
            "",
            "-1",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            // Seconds out of range (a huge one overflowed the sum before).
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Nov 1994 08:49:18446744073709551615 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, 0), None, "{bad}");
        }
    }

    #[test]
    fn one_large_body_is_paced_piece_by_piece() {
        use std::cell::Cell;
        // An 8 MiB bundle at a 64 KiB/s cap, in 16 KiB pieces, on a made-up clock.
        let t0 = Instant::now();
        let clock = Cell::new(t0);
        let rate = 64 * 1024u64;
        let (len, piece) = (8 * 1024 * 1024u64, 16 * 1024u64);
        let mut r = RateLimiter::new(rate);
        let mut sent = 0u64;
        let mut sleeps = 0;
        while sent < len {
            let ok = r.acquire(piece, &|| clock.get(), &mut |d| {
                sleeps += 1;
                clock.set(clock.get() + d);
                true
            });
            assert!(ok);
            sent += piece;
            // Never ahead of the cap by more than the one-second burst and one piece.
            let elapsed = clock.get().duration_since(t0).as_secs_f64();
            assert!(
                sent as f64 <= rate as f64 * (elapsed + 1.0) + piece as f64 + 1e-6,
                "{sent} bytes by {elapsed} s"
            );
        }
        // The whole body took its size over the rate, less the burst, within a piece.
        let elapsed = clock.get().duration_since(t0).as_secs_f64();
        let ideal = len as f64 / rate as f64 - 1.0;
        assert!(
            elapsed <= ideal + 1e-6 && elapsed >= ideal - piece as f64 / rate as f64 - 1e-6,
            "{elapsed} s, ideal {ideal} s"
        );
        assert!(sleeps > 400, "paced within the body, not once: {sleeps}");
        // A sleep that gives up (a stop) sends and records nothing.
        let before = r.delay(clock.get());
        assert!(!r.acquire(piece, &|| clock.get(), &mut |_| false));
        assert_eq!(r.delay(clock.get()), before);
    }

    #[test]
    fn unlimited_rate_never_waits() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0);
        for _ in 0..10 {
            r.sent(1 << 30, t0);
            assert_eq!(r.delay(t0), Duration::ZERO);
        }
    }

    #[test]
    fn rate_limiter_paces_to_the_cap_with_a_one_second_burst() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1000);
        assert_eq!(r.delay(t0), Duration::ZERO);
        // 500 bytes: within the burst, the next send may go at once.
        r.sent(500, t0);
        assert_eq!(r.delay(t0), Duration::ZERO);
        // 3000 more bytes at t0: paid off at t0 + 3.5 s, so the next waits 2.5 s.
        r.sent(3000, t0);
        assert_eq!(r.delay(t0), Duration::from_millis(2500));
        let t1 = t0 + Duration::from_millis(2500);
        assert_eq!(r.delay(t1), Duration::ZERO);
        // Over a long run the cap holds: by any time T, at most rate * (T + burst) bytes
        // plus the one send in progress have gone out.
        let mut now = t1;
        let mut sent = 0u64;
        for _ in 0..100 {
            now += r.delay(now);
            r.sent(1000, now);
            sent += 1000;
        }
        let elapsed = now.duration_since(t0).as_secs_f64();
        assert!(
            (sent + 3500) as f64 <= 1000.0 * (elapsed + 1.0) + 1000.0 + 1e-6,
            "{sent} bytes in {elapsed} s"
        );
        // An idle spell does not bank unlimited credit: after an hour, only the burst.
        let later = now + Duration::from_secs(3600);
        r.sent(2000, later);
        assert_eq!(r.delay(later), Duration::from_secs(1));
    }
}
