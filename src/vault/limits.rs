//! Retention and the byte budget, enforced by the vault: records older than the policy's
//! maximum age, or the oldest records when the log outgrows its budget, are removed even
//! if never released. Each removal leaves a loss marker, and data keys with nothing left
//! to read are destroyed.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use super::release::RELEASE_STATE;
use super::state::Put;
use super::{now_us, Inner};
use crate::error::Result;
use crate::handoff::Inbox;
use crate::log::record::{RecordHeader, RecordKind, FLAG_LAST};
use crate::policy::BudgetAction;
use capvault_format::{Event, LossReason, Marker};

/// How often the maintenance thread checks the limits.
const MAINTENANCE_TICK: Duration = Duration::from_millis(500);

/// The maintenance thread: enforces limits and scheduled DEK rotation, and answers
/// hand-off requests from other processes (`capvault` CLI) through `inbox`, opened
/// when the vault was, until told to stop (or until the vault is dropped). Each duty
/// runs whatever happened to the others; their failures show in `status`.
pub(crate) fn run(inner: Arc<Inner>, mut inbox: Result<Inbox>, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(MAINTENANCE_TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if inner.is_erased() {
            continue;
        }
        let mut problems = Vec::new();
        if let Err(e) = inner.enforce_limits() {
            problems.push(format!("retention and budget: {e}"));
        }
        if let Err(e) = inner.rotate_if_due() {
            problems.push(format!("scheduled key rotation: {e}"));
        }
        if inbox.is_err() {
            // Could not be opened with the vault (say, the disk was full): try again.
            inbox = Inbox::open(&inner.dir());
        }
        match &inbox {
            Ok(inbox) => {
                if let Err(e) = crate::handoff::serve_requests(&inner, inbox) {
                    problems.push(format!("hand-off requests: {e}"));
                }
            }
            Err(e) => problems.push(format!("hand-off requests are not served: {e}")),
        }
        inner.set_maintenance_problems(&problems);
    }
}

impl Inner {
    /// Applies retention, then the byte budget.
    pub(crate) fn enforce_limits(&self) -> Result<()> {
        let policy = &self.opts.policy;
        if policy.retention_secs > 0 {
            let cutoff = now_us() - (policy.retention_secs as i64).saturating_mul(1_000_000);
            // Eviction holds appends and flushes; look at the oldest record first so an
            // idle vault does no work.
            // The first record is authenticated before its time is trusted.
            let mut due = false;
            {
                let keys = self.keys()?;
                let first = self.log.lock().tail.first_seq;
                self.log
                    .read(&keys, &|v| self.purpose_of(v), first, &mut |r| {
                        due = r.header.created_us < cutoff;
                        Ok(false)
                    })?;
            }
            if due {
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

    /// True when the budget refuses new data (policy `refuse`).
    pub(crate) fn budget_refuses(&self) -> bool {
        let p = &self.opts.policy;
        p.budget_bytes > 0
            && p.on_budget == BudgetAction::Refuse
            && self.log.disk_bytes() >= p.budget_bytes
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
        let (jobs, rewind_to) = if lost > 0 {
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
                &jobs,
                &keys,
                &|v| self.purpose_of(v),
                now_us(),
                &|ops| {
                    self.state.write(
                        &self.ledger,
                        &[Put::Sealed(RELEASE_STATE, Some(&json))],
                        Some((&self.trees.log, ops)),
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
