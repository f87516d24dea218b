//! Retention and the byte budget, enforced by the vault: records older than the policy's
//! maximum age, or the oldest records when the log outgrows its budget, are removed even
//! if never released. Each removal leaves a loss marker, and data keys with nothing left
//! to read are destroyed.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use super::{now_us, Inner};
use crate::error::Result;
use crate::log::record::{RecordHeader, RecordKind, FLAG_LAST};
use crate::policy::BudgetAction;
use capvault_format::{LossReason, Marker};

/// How often the maintenance thread checks the limits.
const MAINTENANCE_TICK: Duration = Duration::from_millis(500);

/// The maintenance thread: enforces limits and scheduled DEK rotation, and answers
/// hand-off requests from other processes (`capvault` CLI), until told to stop
/// (or until the vault is dropped).
pub(crate) fn run(inner: Arc<Inner>, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(MAINTENANCE_TICK) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if inner.is_erased() {
            continue;
        }
        let result = inner
            .enforce_limits()
            .and_then(|()| inner.rotate_if_due())
            .and_then(|()| crate::handoff::serve_requests(&inner, &inner.dir()).map(|_| ()));
        inner.set_maintenance_error(result.err());
    }
}

impl Inner {
    /// Applies retention, then the byte budget.
    pub(crate) fn enforce_limits(&self) -> Result<()> {
        let policy = &self.opts.policy;
        if policy.retention_secs > 0 {
            let cutoff = now_us() - (policy.retention_secs as i64).saturating_mul(1_000_000);
            self.evict(LossReason::Retention, &mut |h, _| h.created_us < cutoff)?;
        }
        if policy.budget_bytes > 0 && policy.on_budget == BudgetAction::EvictOldest {
            let stored = self.log.lock().bytes();
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
            && self.log.lock().bytes() >= p.budget_bytes
    }

    /// Removes records from the tail while `take(header, stored_len)` says so, never
    /// splitting a chunked payload, then writes a loss marker.
    fn evict(
        &self,
        reason: LossReason,
        take: &mut dyn FnMut(&RecordHeader, usize) -> bool,
    ) -> Result<()> {
        let _g = self.release.lock().unwrap_or_else(|p| p.into_inner());
        let (first, head) = {
            let st = self.log.lock();
            (st.tail.first_seq, st.head.last_seq)
        };
        let mut last = None;
        let mut records = 0u64;
        let mut bytes = 0u64;
        let mut in_chunks = false;
        // Stops at the first record to keep: the scan is as long as what is evicted.
        self.log
            .scan_headers(first, head, &mut |seq, header, len| {
                if !in_chunks && !take(header, len) {
                    return false;
                }
                in_chunks = header.kind == RecordKind::Chunk && header.flags & FLAG_LAST == 0;
                last = Some(seq);
                records += 1;
                bytes += len as u64;
                true
            })?;
        let Some(last) = last else { return Ok(()) };
        self.invalidate_pending_through(last)?;
        self.log.prune_through(last)?;
        drop(_g);
        self.append_markers(&[Marker::Loss {
            reason,
            records,
            bytes,
        }])?;
        self.retire_empty_epochs()?;
        self.audit(
            "evict",
            &format!(
                "{records} records ({bytes} bytes) removed: {}",
                reason.name()
            ),
        )?;
        self.flush()
    }
}
