//! Counters and the ingest latency histogram, rendered as Prometheus text for
//! `GET /metrics`. Plain atomics: no registry, no labels beyond the fixed reasons.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The service's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: AtomicU64,
    accepted_bytes: AtomicU64,
    retries: AtomicU64,
    enrolled: AtomicU64,
    rejected: Reasons,
    enroll_rejected: Reasons,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// A newly stored bundle of `bytes` bytes.
    pub fn accepted(&self, bytes: u64) {
        self.accepted.fetch_add(1, Relaxed);
        self.accepted_bytes.fetch_add(bytes, Relaxed);
    }

    /// An identical retry of a stored bundle (answered with the same receipt).
    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// A newly enrolled device.
    pub fn enrolled(&self) {
        self.enrolled.fetch_add(1, Relaxed);
    }

    /// A rejected upload, by error code.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.count(reason);
    }

    /// A refused enrollment, by error code (`bad_token` is the one to alert on).
    pub fn enroll_rejected(&self, reason: &'static str) {
        self.enroll_rejected.count(reason);
    }

    /// The time one upload took, whatever its outcome.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(2048);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "capvault_collector_bundles_accepted_total",
            "Bundles verified and stored.",
            self.accepted.load(Relaxed),
        );
        counter(
            "capvault_collector_bytes_accepted_total",
            "Bytes of bundles verified and stored.",
            self.accepted_bytes.load(Relaxed),
        );
        counter(
            "capvault_collector_bundle_retries_total",
            "Identical retries of stored bundles, answered with the same receipt.",
            self.retries.load(Relaxed),
        );
        counter(
            "capvault_collector_devices_enrolled_total",
            "Devices newly enrolled.",
            self.enrolled.load(Relaxed),
        );
        self.rejected.render(
            &mut o,
            "capvault_collector_bundles_rejected_total",
            "Uploads rejected, by reason.",
        );
        self.enroll_rejected.render(
            &mut o,
            "capvault_collector_enrollments_rejected_total",
            "Enrollments refused, by reason.",
        );
        let name = "capvault_collector_upload_duration_seconds";
        let _ = writeln!(
            o,
            "# HELP {name} Time to answer an upload (verify, store, receipt).\n# TYPE {name} histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            o,
            "{name}_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "{name}_count {count}");
        o
    }
}

/// A counter per fixed reason (an error code).
#[derive(Debug, Default)]
struct Reasons(Mutex<Vec<(&'static str, u64)>>);

impl Reasons {
    fn count(&self, reason: &'static str) {
        let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match r.iter_mut().find(|(k, _)| *k == reason) {
            Some((_, n)) => *n += 1,
            None => r.push((reason, 1)),
        }
    }

    fn render(&self, o: &mut String, name: &str, help: &str) {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        counts.sort();
        for (reason, n) in counts {
            let _ = writeln!(o, "{name}{{reason=\"{reason}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.accepted(100);
        m.rejected("conflict");
        m.rejected("conflict");
        m.enroll_rejected("bad_token");
        m.observe(Duration::from_millis(3));
        let t = m.render();
        assert!(t.contains("capvault_collector_bundles_accepted_total 1\n"));
        assert!(t.contains("capvault_collector_bytes_accepted_total 100\n"));
        assert!(t.contains("capvault_collector_bundles_rejected_total{reason=\"conflict\"} 2\n"));
        assert!(
            t.contains("capvault_collector_enrollments_rejected_total{reason=\"bad_token\"} 1\n")
        );
        assert!(!t.contains("bundles_rejected_total{reason=\"bad_token\"}"));
        assert!(t.contains("capvault_collector_upload_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(t.contains("capvault_collector_upload_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(t.contains("capvault_collector_upload_duration_seconds_count 1\n"));
    }
}
