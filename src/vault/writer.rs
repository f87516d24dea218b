//! The writer thread: takes plaintext records from the append path, encrypts them in
//! order, stores them, and answers flush requests once everything before them is on disk.
//! It also closes frames that reach the time bound.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::log::framer::Job;
use crate::log::record::{RecordKind, FLAG_LAST};
use crate::vault::Inner;

/// Messages to the writer, in append order.
pub(crate) enum Msg {
    /// A record to store.
    Record(Job),
    /// The append path opened a frame at this moment: close it when it reaches the
    /// time bound (the writer sleeps without a timeout while no frame is open).
    FrameOpened(Instant),
    /// Reply once everything sent before is stored and durable.
    Flush(Sender<Result<()>>, Answer),
    /// Store everything, flush, reply, and exit.
    Stop(Sender<Result<()>>),
}

/// When a flush's caller gets its answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Once everything is durable, before the durability mark names it (one device
    /// flush less to wait for): the agent's `flush`, whose later calls that touch the
    /// vault's files go through this thread, after the mark.
    Durable,
    /// After the mark: callers that go on to change the vault's files themselves
    /// (erase, key changes) find the writer done with them.
    Marked,
}

/// Most records written in one transaction.
const MAX_BATCH: usize = 256;

/// Records nobody asked to flush are written (segments, then the index in one sled
/// batch, then sled's own flush) at most this long after the first of them arrived.
/// Not a durability promise (that is `flush`): it bounds what a crash can take of
/// records nobody flushed, to this plus the frame bound. Writing at every frame cost
/// more than the frames themselves at 1 kHz: each sled batch writes two of sled's I/O
/// buffers, each a task for a thread of sled's I/O pool.
const WRITE_AFTER: Duration = Duration::from_millis(500);

/// Records waiting to be written are written at once when they hold this many bytes
/// (a screenshot, say): memory held by the writer stays bounded.
const WRITE_BYTES: usize = 1 << 20;

/// sled's flush follows a write for size within this, and a failed one is tried again
/// this long after.
const LAZY_FLUSH_AFTER: Duration = Duration::from_millis(200);

/// After a failed write (say, a full disk) the batch is tried again this long after, the
/// pause doubling with each failure up to [`RETRY_MAX`]: a write that keeps failing
/// neither wakes the vault 20 times a second nor seals the batch again each time.
const RETRY_AFTER: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The synced anchor written by an agent's flush (beside the index's flush, so perhaps
/// not made durable by it) is made durable by the next durable flush, or by one the
/// writer runs this long after when none came; after a failure, twice as long each
/// time, up to [`NAME_RETRY_MAX`].
const NAME_AFTER: Duration = Duration::from_millis(500);
const NAME_RETRY_MAX: Duration = Duration::from_secs(60);

/// The writer's timers. Each is armed by work and disarmed when done, so an idle vault's
/// writer sleeps in `recv` without waking up.
#[derive(Default)]
struct Timers {
    /// The open frame reaches its time bound.
    frame: Option<Instant>,
    /// Records waiting since [`WRITE_AFTER`] are written.
    write: Option<Instant>,
    /// Records written since the last flush go to sled's flush.
    lazy_flush: Option<Instant>,
    /// A failed batch is tried again.
    retry: Option<Instant>,
    /// How long after the next failed write the batch is tried again.
    retry_backoff: Duration,
    /// The synced anchor of the last flush is made durable.
    name: Option<Instant>,
    /// How long after a failed attempt the next one comes.
    name_backoff: Duration,
    /// Why that attempt failed: the next `flush` reports it (a retried fdatasync may
    /// succeed where the one that failed lost the bytes).
    name_failed: Option<crate::error::Error>,
    /// How long the last look at the open frame waited for the append lock.
    lock_wait: Duration,
}

impl Timers {
    /// A flush's answer: the failure of the writer's own flush since the last answer, if
    /// there was one (it had no caller to tell), else `result`.
    fn report_name_failure(&mut self, result: Result<()>) -> Result<()> {
        match self.name_failed.take() {
            Some(e) => Err(e),
            None => result,
        }
    }

    fn next(&self) -> Option<Instant> {
        [
            self.frame,
            self.write,
            self.lazy_flush,
            self.retry,
            self.name,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Whether a timer has fired.
fn due(t: Option<Instant>, now: Instant) -> bool {
    t.is_some_and(|t| t <= now)
}

pub(crate) fn run(inner: Arc<Inner>, rx: Receiver<Msg>) {
    let frame_age = Duration::from_millis(inner.opts.frame_max_ms);
    let mut timers = Timers {
        retry_backoff: RETRY_AFTER,
        name_backoff: NAME_AFTER,
        ..Timers::default()
    };
    let mut b = Batch::default();
    loop {
        let received = match timers.next() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match received {
            Ok(msg) => {
                b.take(msg, frame_age, &mut timers);
                while b.pending.len() < MAX_BATCH && b.stop.is_none() {
                    match rx.try_recv() {
                        Ok(msg) => b.take(msg, frame_age, &mut timers),
                        Err(_) => break,
                    }
                }
                // A large payload's chunks go into one transaction, so a crash never
                // leaves half of one (its remaining chunks are already on their way:
                // the append path queues a payload's chunks in one go).
                while ends_mid_payload(&b.pending) {
                    match rx.recv() {
                        Ok(msg) => b.take(msg, frame_age, &mut timers),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if b.stop.is_none() && due(timers.frame, now) {
            timers.frame = cut_old_frame(&inner, &rx, frame_age, &mut b, &mut timers);
        }
        if !b.pending.is_empty() {
            timers.write.get_or_insert(now + WRITE_AFTER);
        }
        let asked = !b.waiting.is_empty() || b.stop.is_some();
        let by_timer = due(timers.write, now);
        // After a failed write only the retry timer (or a flush) tries again.
        let pending_bytes = b.pending_bytes();
        let by_size = timers.retry.is_none()
            && (b.pending.len() >= MAX_BATCH || pending_bytes >= WRITE_BYTES);
        let write_now = asked || by_timer || by_size || due(timers.retry, now);
        let wrote = write_now && !b.pending.is_empty();
        let written = if write_now {
            inner.write_records(&mut b.pending)
        } else {
            Ok(())
        };
        match &written {
            Ok(()) if write_now => {
                inner
                    .unwritten
                    .fetch_sub(pending_bytes as u64, Ordering::Relaxed);
                if pending_bytes >= WRITE_BYTES {
                    // Given back on the helper thread while this one seals the next batch
                    // (small batches are dropped here: no wake-up for a few bytes).
                    inner.log.drop_stored(std::mem::take(&mut b.pending));
                } else {
                    b.pending.clear();
                }
                timers.write = None;
                timers.retry = None;
                timers.retry_backoff = RETRY_AFTER;
                inner.set_write_error(None);
                if wrote {
                    // sled's batch leaves the records in its memory buffer: flushed at
                    // once when the timer wrote them, so the bound above holds; after a
                    // write for size, within LAZY_FLUSH_AFTER (one flush for several).
                    if by_timer {
                        timers.lazy_flush = Some(now);
                    } else {
                        timers.lazy_flush.get_or_insert(now + LAZY_FLUSH_AFTER);
                    }
                    inner.records_written();
                }
            }
            Ok(()) => {}
            Err(e) => {
                // Tried again after a pause, not at every wake-up.
                timers.write = None;
                timers.retry = Some(now + timers.retry_backoff);
                timers.retry_backoff = (timers.retry_backoff * 2).min(RETRY_MAX);
                inner.set_write_error(Some(e));
            }
        }
        if asked {
            if b.stop.is_some() || std::mem::take(&mut b.mark_first) {
                // Closing (the process may end as soon as close returns), or a caller
                // that changes files next: everything in order (the synced anchor made
                // durable too), the mark first.
                let result = written
                    .and_then(|()| inner.durable_flush_unmarked())
                    .and_then(|unmarked| inner.store.mark(unmarked));
                if result.is_ok() {
                    timers.lazy_flush = None;
                    timers.name = None;
                    timers.name_backoff = NAME_AFTER;
                }
                let result = timers.report_name_failure(result);
                for w in b.waiting.drain(..) {
                    let _ = w.send(result.clone());
                }
                if let Some(s) = b.stop.take() {
                    let _ = s.send(result);
                    return;
                }
                continue;
            }
            let flushed = written.and_then(|()| inner.durable_flush_overlapped());
            let (result, unmarked) = match flushed {
                Ok((unmarked, anchor_moved)) => {
                    timers.lazy_flush = None;
                    if anchor_moved {
                        timers.name_backoff = NAME_AFTER;
                        timers.name = Some(Instant::now() + NAME_AFTER);
                    }
                    (Ok(()), Some(unmarked))
                }
                // The anchor may have moved before the failure: made durable soon all
                // the same (or the failure tried again).
                Err(e) => {
                    timers
                        .name
                        .get_or_insert(Instant::now() + timers.name_backoff);
                    (Err(e), None)
                }
            };
            let result = timers.report_name_failure(result);
            for w in b.waiting.drain(..) {
                let _ = w.send(result.clone());
            }
            // Everything is durable already; the mark names it right after the answer.
            // A mark that cannot be written is remembered by the store and fails the
            // next flush (which writes it first); appends go on, their records are safe.
            if let Some(unmarked) = unmarked {
                let _ = inner.store.mark(unmarked);
            }
        } else if due(timers.name, Instant::now()) {
            // No durable flush came since the last one, whose synced anchor may be in
            // sled's memory only. A failure is tried again later, and the next `flush`
            // reports it.
            let flushed =
                crate::failpoint::hit("flush:naming").and_then(|()| inner.durable_flush());
            timers.name = match flushed {
                Ok(()) => {
                    timers.lazy_flush = None;
                    timers.name_backoff = NAME_AFTER;
                    None
                }
                Err(e) => {
                    timers.name_failed = Some(e);
                    timers.name_backoff = (timers.name_backoff * 2).min(NAME_RETRY_MAX);
                    Some(Instant::now() + timers.name_backoff)
                }
            };
        } else if due(timers.lazy_flush, Instant::now()) {
            // Not a durability promise (that is `flush`): it bounds what a crash can
            // take of records nobody flushed. A failure is tried again later, and the
            // next `flush` reports it.
            timers.lazy_flush = match inner.store.lazy_flush() {
                Ok(()) => None,
                Err(_) => Some(now + LAZY_FLUSH_AFTER),
            };
        }
    }
}

/// What the writer has received and not yet handled.
#[derive(Default)]
struct Batch {
    pending: Vec<Job>,
    waiting: Vec<Sender<Result<()>>>,
    /// A waiting caller wants its answer after the mark ([`Answer::Marked`]).
    mark_first: bool,
    stop: Option<Sender<Result<()>>>,
}

impl Batch {
    fn pending_bytes(&self) -> usize {
        self.pending.iter().map(|j| j.plaintext.len()).sum()
    }

    fn take(&mut self, msg: Msg, frame_age: Duration, timers: &mut Timers) {
        match msg {
            Msg::Record(j) => self.pending.push(j),
            Msg::FrameOpened(at) => {
                let bound = at + frame_age;
                timers.frame = Some(timers.frame.map_or(bound, |t| t.min(bound)));
            }
            Msg::Flush(s, answer) => {
                self.waiting.push(s);
                self.mark_first |= answer == Answer::Marked;
            }
            Msg::Stop(s) => self.stop = Some(s),
        }
    }
}

fn ends_mid_payload(pending: &[Job]) -> bool {
    pending
        .last()
        .is_some_and(|j| j.kind == RecordKind::Chunk && j.flags & FLAG_LAST == 0)
}

/// Closes the open frame when it reached the time bound. Holding the append lock means
/// nothing new can be queued, so draining the queue first keeps records in order.
/// Returns when to look again: one frame's age after a cut (appenders do not wake the
/// writer for frames opened while it watches), the bound of a younger frame, or, while
/// someone holds the append lock, 1 ms later, doubling up to a quarter of a frame's age;
/// `None` when no frame is open (the next appender to open one wakes the writer).
fn cut_old_frame(
    inner: &Inner,
    rx: &Receiver<Msg>,
    age: Duration,
    b: &mut Batch,
    timers: &mut Timers,
) -> Option<Instant> {
    let Some(mut producer) = inner.producer.try_lock() else {
        // An appender holds the lock for microseconds; a long holder (key rotation,
        // eviction, subject access) is looked at less and less often, up to a quarter of
        // a frame's age.
        let most = (age / 4).max(Duration::from_millis(1));
        timers.lock_wait = (timers.lock_wait * 2)
            .max(Duration::from_millis(1))
            .min(most);
        return Some(Instant::now() + timers.lock_wait);
    };
    timers.lock_wait = Duration::ZERO;
    let now = Instant::now();
    let Some(opened) = producer.framer.opened_at() else {
        producer.framer.set_watched(false);
        return None;
    };
    // A frame within a quarter of its age of the bound is cut now: under steady input the
    // frame opened just after a cut is cut at the next look, one wake-up per frame.
    if opened + age > now + age / 4 {
        return Some(opened + age);
    }
    timers.frame = None;
    while let Ok(msg) = rx.try_recv() {
        b.take(msg, age, timers);
    }
    if let Some(job) = producer.framer.cut() {
        inner
            .unwritten
            .fetch_add(job.plaintext.len() as u64, Ordering::Relaxed);
        b.pending.push(job);
    }
    // A FrameOpened drained above belongs to the frame just cut.
    producer.framer.set_watched(true);
    Some(now + age)
}
