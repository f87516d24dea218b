//! The writer thread: takes plaintext records from the append path, encrypts them in
//! order, stores them, and answers flush requests once everything before them is on disk.
//! It also closes frames that reach the time bound.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::log::framer::Job;
use crate::log::record::{RecordKind, FLAG_LAST};
use crate::vault::Inner;

/// Messages to the writer, in append order.
pub(crate) enum Msg {
    /// A record to store.
    Record(Job),
    /// Reply once everything sent before is stored and durable.
    Flush(Sender<Result<()>>),
    /// Store everything, flush, reply, and exit.
    Stop(Sender<Result<()>>),
}

/// Most records written in one transaction.
const MAX_BATCH: usize = 256;

pub(crate) fn run(inner: Arc<Inner>, rx: Receiver<Msg>) {
    let frame_age = Duration::from_millis(inner.opts.frame_max_ms);
    let tick = (frame_age / 2).max(Duration::from_millis(1));
    let mut pending: Vec<Job> = Vec::new();
    let mut waiting: Vec<Sender<Result<()>>> = Vec::new();
    let mut stop: Option<Sender<Result<()>>> = None;
    loop {
        match rx.recv_timeout(tick) {
            Ok(msg) => {
                take(msg, &mut pending, &mut waiting, &mut stop);
                while pending.len() < MAX_BATCH && stop.is_none() {
                    match rx.try_recv() {
                        Ok(msg) => take(msg, &mut pending, &mut waiting, &mut stop),
                        Err(_) => break,
                    }
                }
                // A large payload's chunks go into one transaction, so a crash never
                // leaves half of one (its remaining chunks are already on their way:
                // the append path queues a payload's chunks in one go).
                while ends_mid_payload(&pending) {
                    match rx.recv() {
                        Ok(msg) => take(msg, &mut pending, &mut waiting, &mut stop),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if stop.is_none() {
            cut_old_frame(
                &inner,
                &rx,
                frame_age,
                &mut pending,
                &mut waiting,
                &mut stop,
            );
        }
        let written = inner.write_records(&pending);
        match &written {
            Ok(()) => {
                pending.clear();
                inner.set_write_error(None);
            }
            Err(e) => inner.set_write_error(Some(e)),
        }
        if !waiting.is_empty() || stop.is_some() {
            let result = written.and_then(|()| inner.durable_flush());
            for w in waiting.drain(..) {
                let _ = w.send(result.clone());
            }
            if let Some(s) = stop.take() {
                let _ = s.send(result);
                return;
            }
        }
    }
}

fn ends_mid_payload(pending: &[Job]) -> bool {
    pending
        .last()
        .is_some_and(|j| j.kind == RecordKind::Chunk && j.flags & FLAG_LAST == 0)
}

fn take(
    msg: Msg,
    pending: &mut Vec<Job>,
    waiting: &mut Vec<Sender<Result<()>>>,
    stop: &mut Option<Sender<Result<()>>>,
) {
    match msg {
        Msg::Record(j) => pending.push(j),
        Msg::Flush(s) => waiting.push(s),
        Msg::Stop(s) => *stop = Some(s),
    }
}

/// Closes the open frame when it reached the time bound. Holding the append lock means
/// nothing new can be queued, so draining the queue first keeps records in order.
fn cut_old_frame(
    inner: &Inner,
    rx: &Receiver<Msg>,
    age: Duration,
    pending: &mut Vec<Job>,
    waiting: &mut Vec<Sender<Result<()>>>,
    stop: &mut Option<Sender<Result<()>>>,
) {
    let Ok(mut producer) = inner.producer.try_lock() else {
        return;
    };
    if !producer.framer.is_older_than(age) {
        return;
    }
    while let Ok(msg) = rx.try_recv() {
        take(msg, pending, waiting, stop);
    }
    if let Some(job) = producer.framer.cut() {
        pending.push(job);
    }
}
