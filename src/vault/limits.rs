//! Retention and the byte budget, enforced by the vault: records older than the policy's
//! maximum age, or the oldest records when the log outgrows its budget, are removed even
//! if never released. Each removal leaves a loss marker, and data keys with nothing left
//! to read are destroyed.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::release::RELEASE_STATE;
use super::state::Put;
use super::{now_us, Inner};
use crate::error::Result;
use crate::handoff::Requests;
use crate::log::record::{RecordHeader, RecordKind, FLAG_LAST};
use crate::policy::BudgetAction;
use capvault_format::{Event, LossReason, Marker};

/// How soon a duty that failed, or requests that nothing reports, are looked at again.
const RETRY_TICK: Duration = Duration::from_millis(500);

/// What wakes the maintenance thread. It sleeps until one of these or until its next
/// deadline (the oldest record leaving retention, the next scheduled key rotation),
/// so an idle vault's maintenance thread does not wake up.
pub(crate) enum Wake {
    /// Records were written: the byte budget may be exceeded, or retention has a first
    /// record to watch.
    Wrote,
    /// A hand-off request arrived.
    Request,
    /// A durable flush moved the keychain mark: write it when due (src/keys/mark.rs).
    Mark,
    /// The vault is closing.
    Stop,
}

/// The duties, each with its own failure (shown in `status` until it succeeds).
#[derive(Default)]
struct Duties {
    /// When the oldest record leaves retention (`None`: unknown, look again).
    retention_due_us: Option<i64>,
    /// When a request left for another user falls stale.
    stale_request_us: Option<i64>,
    /// Serving the requests failed (retried in a moment).
    serve_failed: bool,
    problems: [Option<String>; 4],
}

const LIMITS: usize = 0;
const ROTATION: usize = 1;
const REQUESTS: usize = 2;
const MARK: usize = 3;

/// The maintenance thread: enforces limits and scheduled DEK rotation, and answers
/// hand-off requests from other processes (`capvault` CLI) through `requests`, opened
/// when the vault was, until told to stop (or until the vault is dropped). Each duty
/// runs whatever happened to the others; their failures show in `status`.
pub(crate) fn run(inner: Arc<Inner>, mut requests: Requests, wake: Receiver<Wake>) {
    let waker = inner.maintenance_waker();
    requests.start(move || {
        let _ = waker.send(Wake::Request);
    });
    let mut d = Duties::default();
    // Everything once at the start; afterwards on wake-ups and deadlines.
    let mut deadline = Some(Instant::now());
    // The deferred write of the keychain mark, armed by durable flushes only.
    let mut mark_due: Option<Instant> = None;
    loop {
        let woke = match deadline.into_iter().chain(mark_due).min() {
            None => wake.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => wake.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let only_wrote = match woke {
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Wrote) => Some(true),
            Ok(Wake::Request) => Some(false),
            Ok(Wake::Mark) => None,
            Err(RecvTimeoutError::Timeout) => deadline
                .is_some_and(|t| t <= Instant::now())
                .then_some(false),
        };
        inner.maintenance_woken();
        if inner.is_erased() {
            deadline = None;
            mark_due = None;
            continue;
        }
        mark_due = inner.mark.write_due(Instant::now());
        d.problems[MARK] = inner.mark.problem();
        let Some(only_wrote) = only_wrote else {
            // Only the mark was due: the other duties wait for their own deadline.
            let problems: Vec<String> = d.problems.iter().flatten().cloned().collect();
            inner.set_maintenance_problems(&problems);
            continue;
        };
        let now = now_us();
        let retention_due = d.retention_due_us.is_none_or(|t| t < now);
        d.problems[LIMITS] = inner
            .enforce_limits(retention_due)
            .and_then(|()| {
                if retention_due {
                    d.retention_due_us = inner.retention_due_us()?;
                }
                Ok(())
            })
            .err()
            .map(|e| format!("retention and budget: {e}"));
        if !only_wrote {
            d.problems[ROTATION] = inner
                .rotate_if_due()
                .err()
                .map(|e| format!("scheduled key rotation: {e}"));
            // A `requests/` that is not there is waited for (a watch wakes the thread when
            // one appears), not retried; a failure to serve one that is, is retried.
            d.serve_failed = false;
            // Known again only from a successful look (a past deadline kept would spin).
            d.stale_request_us = None;
            d.problems[REQUESTS] = requests.refresh().or_else(|| match requests.serve(&inner) {
                Ok(stale) => {
                    d.stale_request_us = stale;
                    None
                }
                Err(e) => {
                    d.serve_failed = true;
                    Some(format!("hand-off requests: {e}"))
                }
            });
        }
        let problems: Vec<String> = d.problems.iter().flatten().cloned().collect();
        inner.set_maintenance_problems(&problems);
        let retry = d.problems[LIMITS].is_some()
            || d.problems[ROTATION].is_some()
            || d.serve_failed
            || requests.needs_polling();
        deadline = next_deadline(&inner, &d, retry);
    }
}

/// The earliest moment something is due: the oldest record leaving retention, the next
/// scheduled rotation, a stale request, or (when `retry`: a duty fails, or requests are
/// not watched) a retry in a moment. `None`: sleep until woken.
fn next_deadline(inner: &Inner, d: &Duties, retry: bool) -> Option<Instant> {
    let soon = retry.then(|| Instant::now() + RETRY_TICK);
    let rotation = inner.rotation_due_us().ok().flatten();
    let at = |us: i64| {
        let wait = us.saturating_sub(now_us()).max(0) as u64;
        Instant::now() + Duration::from_micros(wait)
    };
    [d.retention_due_us, rotation, d.stale_request_us]
        .into_iter()
        .flatten()
        .map(at)
        .chain(soon)
        .min()
}

impl Inner {
    /// Applies retention (when `retention_due`: the oldest record may be out of it),
    /// then the byte budget.
    pub(crate) fn enforce_limits(&self, retention_due: bool) -> Result<()> {
        let policy = &self.opts.policy;
        if policy.retention_secs > 0 && retention_due {
            let cutoff = now_us() - (policy.retention_secs as i64).saturating_mul(1_000_000);
            if self.retention_due_us()?.is_some_and(|t| t < now_us()) {
                self.evict(LossReason::Retention, &mut |h, _| h.created_us < cutoff)?;
            }
        }
        if policy.budget_bytes > 0 && policy.on_budget == BudgetAction::EvictOldest {
            let stored = self.log.disk_bytes();
            if stored > policy.budget_bytes {
                // Evict down to 90% so eviction does not run on every frame.
                let mut excess = stored - policy.budget_bytes * 9 / 10;
                self.evict(LossReason::Budget, &mut |_, len| {
                    let take = excess > 0;
                    excess = excess.saturating_sub(len as u64);
                    take
                })?;
            }
        }
        Ok(())
    }

    /// When the oldest record leaves retention (`None`: no retention, or no record).
    /// The record is authenticated before its time is trusted.
    pub(crate) fn retention_due_us(&self) -> Result<Option<i64>> {
        let secs = self.opts.policy.retention_secs;
        if secs == 0 || self.log.lock().records() == 0 {
            return Ok(None);
        }
        let keys = self.keys()?;
        let first = self.log.lock().tail.first_seq;
        let mut created = None;
        self.log
            .read(&keys, &|v| self.purpose_of(v), first, &mut |r| {
                created = Some(r.header.created_us);
                Ok(false)
            })?;
        Ok(created.map(|c| c.saturating_add((secs as i64).saturating_mul(1_000_000))))
    }

    /// True when the budget refuses new data (policy `refuse`): what is on disk and what
    /// the writer has yet to write.
    pub(crate) fn budget_refuses(&self) -> bool {
        let p = &self.opts.policy;
        p.budget_bytes > 0
            && p.on_budget == BudgetAction::Refuse
            && self
                .log
                .disk_bytes()
                .saturating_add(self.unwritten.load(Ordering::Relaxed))
                >= p.budget_bytes
    }

    /// Removes records from the tail while `take(header, stored_len)` says so, never
    /// splitting a chunked payload.
    ///
    /// Records already sealed (in the pending bundle) are not lost: the outbox keeps
    /// them. The others are counted into the release state's `records_lost` and
    /// described by a loss marker; the removal, the marker record and the count are
    /// written in one transaction, so a crash never leaves a gap without its marker or
    /// count (appends wait meanwhile, so the marker takes the next event number).
    fn evict(
        &self,
        reason: LossReason,
        take: &mut dyn FnMut(&RecordHeader, usize) -> bool,
    ) -> Result<()> {
        let mut p = self.quiesce()?;
        let g = self.release_lock();
        let mut state = self.release_state()?;
        let head = self.log.lock().head.last_seq;
        let mut last = None;
        let (mut records, mut bytes, mut lost, mut lost_bytes) = (0u64, 0u64, 0u64, 0u64);
        let mut in_chunks = false;
        let keys = self.keys()?;
        // Each record is authenticated (header, position and chain) before its header
        // decides anything; the walk stops at the first record to keep.
        self.log
            .read(&keys, &|v| self.purpose_of(v), head, &mut |r| {
                if !in_chunks && !take(&r.header, r.stored_len) {
                    return Ok(false);
                }
                in_chunks = r.header.kind == RecordKind::Chunk && r.header.flags & FLAG_LAST == 0;
                last = Some(r.seq);
                records += 1;
                bytes += r.stored_len as u64;
                if r.seq > state.last_sealed_record {
                    lost += 1;
                    lost_bytes += r.stored_len as u64;
                }
                Ok(true)
            })?;
        drop(keys);
        let Some(last) = last else { return Ok(()) };
        let (mut jobs, rewind_to) = if lost > 0 {
            p.framer.standalone(&Event::Marker {
                ts_us: now_us(),
                marker: Marker::Loss {
                    reason,
                    records: lost,
                    bytes: lost_bytes,
                },
            })
        } else {
            (Vec::new(), 0)
        };
        state.records_lost += lost;
        let json = serde_json::to_vec(&state).expect("serializes");
        let result = {
            let keys = self.keys()?;
            self.log.evict_through(
                last,
                &mut jobs,
                &keys,
                &|v| self.purpose_of(v),
                now_us(),
                &|log| {
                    self.state.write(
                        &self.ledger,
                        &[Put::Sealed(RELEASE_STATE, Some(&json))],
                        log,
                    )
                },
            )
        };
        if result.is_err() && !jobs.is_empty() {
            p.framer.rewind(rewind_to);
        }
        result?;
        self.durable_flush()?;
        drop(g);
        drop(p);
        self.retire_empty_epochs()?;
        self.audit(
            "evict",
            &format!(
                "{records} records ({bytes} bytes) removed: {}; {lost} of them never released",
                reason.name()
            ),
        )?;
        self.flush()
    }
}
