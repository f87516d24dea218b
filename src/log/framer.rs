//! Packs events into frames (small events) and chunks (large payloads) on the append
//! path. It only encodes and copies; encryption and storage happen on the writer thread.

use std::time::Instant;

use crate::log::chunk::{self, Chunk};
use crate::log::record::{RecordKind, FLAG_FIRST, FLAG_LAST};
use capvault_format::secret::{extend_zeroizing, reserve_zeroizing, PlainBuf};
use capvault_format::Event;

/// A record's plaintext: a frame it owns, or one chunk of a large payload, its own part
/// of the payload's buffer (so chunking does not copy, and the writer seals it in place).
pub(crate) enum Plaintext {
    Owned(PlainBuf),
    Chunk(Chunk),
}

impl Plaintext {
    pub(crate) fn len(&self) -> usize {
        match self {
            Plaintext::Owned(b) => b.len(),
            Plaintext::Chunk(c) => c.len(),
        }
    }
}

/// The plaintext of one large payload's records: `head` (room for the event sequence
/// number, then the event's encoding up to its payload) followed by `body` (the payload,
/// moved out of the appended event rather than copied). [`chunk::carve`] cuts the two
/// into chunks.
pub(crate) struct Large {
    head: PlainBuf,
    body: PlainBuf,
}

/// A record's plaintext on its way to the writer.
pub(crate) struct Job {
    pub kind: RecordKind,
    pub flags: u8,
    pub plaintext: Plaintext,
    /// The event sequence number after this record's events.
    pub end_event_seq: u64,
    pub policy_version: u32,
}

/// Frame layout: first event sequence number (u64 BE), then encoded events.
pub(crate) const FRAME_PREFIX: usize = 8;

pub(crate) struct Framer {
    buf: PlainBuf,
    events_in_frame: u64,
    started: Option<Instant>,
    /// Frames opened so far (the writer is told of each it does not watch for).
    opens: u64,
    /// The writer looks at the open frame again within a frame's age on its own (it
    /// does while frames keep coming): appenders need not wake it for a new one.
    watched: bool,
    max_bytes: usize,
    chunk_bytes: usize,
    next_event_seq: u64,
    policy_version: u32,
}

/// Chunked-payload plaintext of an event the caller gives up: its payload is moved, not
/// copied, and the event is left with an empty one.
pub(crate) fn take_large(event: &mut Event) -> Large {
    let mut head = PlainBuf::new(vec![0u8; FRAME_PREFIX]);
    match event.split_payload(&mut head) {
        Some(payload) => Large {
            head,
            body: PlainBuf::new(payload),
        },
        None => copy_large(event),
    }
}

/// Chunked-payload plaintext of an event the caller keeps (a copy of its encoding).
fn copy_large(event: &Event) -> Large {
    let mut head = PlainBuf::new(Vec::with_capacity(FRAME_PREFIX + event.encoded_len_max()));
    head.extend_from_slice(&[0u8; FRAME_PREFIX]);
    event.encode_into(&mut head);
    Large {
        head,
        body: PlainBuf::new(Vec::new()),
    }
}

impl Framer {
    pub(crate) fn new(
        max_bytes: usize,
        chunk_bytes: usize,
        next_event_seq: u64,
        policy_version: u32,
    ) -> Self {
        Framer {
            buf: PlainBuf::new(Vec::new()),
            events_in_frame: 0,
            started: None,
            opens: 0,
            watched: false,
            max_bytes,
            chunk_bytes,
            next_event_seq,
            policy_version,
        }
    }

    /// Whether the writer watches the open frame (see [`Framer::set_watched`]).
    pub(crate) fn watched(&self) -> bool {
        self.watched
    }

    /// Set by whoever holds the append lock: `true` when the writer was told of a frame
    /// or will look again on its own, `false` when it stops looking.
    pub(crate) fn set_watched(&mut self, watched: bool) {
        self.watched = watched;
    }

    /// When the open frame was opened (`None`: no frame is open).
    pub(crate) fn opened_at(&self) -> Option<Instant> {
        self.started
    }

    /// How many frames were opened so far.
    pub(crate) fn opens(&self) -> u64 {
        self.opens
    }

    /// Adds one event; emits every record it completes.
    pub(crate) fn push(&mut self, event: &Event, emit: &mut dyn FnMut(Job)) {
        if event.payload_len() > self.max_bytes / 2 {
            return self.push_large(event, emit);
        }
        if self.events_in_frame == 0 {
            self.buf.clear();
            self.buf
                .extend_from_slice(&self.next_event_seq.to_be_bytes());
            self.started = Some(Instant::now());
            self.opens += 1;
        }
        let before = self.buf.len();
        // Room first, in memory that is wiped: encoding never reallocates the frame.
        reserve_zeroizing(&mut self.buf, event.encoded_len_max());
        event.encode_into(&mut self.buf);
        if self.buf.len() > self.max_bytes && self.events_in_frame > 0 {
            // The event does not fit: close the frame without it and start the next with it.
            let mut moved = PlainBuf::new(Vec::with_capacity(self.max_bytes.min(4096)));
            moved.extend_from_slice(&self.next_event_seq.to_be_bytes());
            extend_zeroizing(&mut moved, &self.buf[before..]);
            self.buf.truncate(before);
            emit(self.take_frame());
            self.buf = moved;
            self.started = Some(Instant::now());
            self.opens += 1;
        }
        self.events_in_frame += 1;
        self.next_event_seq += 1;
        if self.buf.len() >= self.max_bytes {
            emit(self.take_frame());
        }
    }

    fn push_large(&mut self, event: &Event, emit: &mut dyn FnMut(Job)) {
        self.push_taken_large(copy_large(event), emit);
    }

    /// Stores a payload taken by [`take_large`] (which callers do before taking the
    /// append lock, so other appenders never wait for a screenshot).
    pub(crate) fn push_taken_large(&mut self, mut whole: Large, emit: &mut dyn FnMut(Job)) {
        if let Some(j) = self.cut() {
            emit(j);
        }
        whole.head[..FRAME_PREFIX].copy_from_slice(&self.next_event_seq.to_be_bytes());
        self.next_event_seq += 1;
        let chunks = chunk::carve(&mut whole.head, &mut whole.body, self.chunk_bytes);
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let mut flags = 0;
            if i == 0 {
                flags |= FLAG_FIRST;
            }
            if i + 1 == n {
                flags |= FLAG_LAST;
            }
            emit(Job {
                kind: RecordKind::Chunk,
                flags,
                plaintext: Plaintext::Chunk(c),
                end_event_seq: self.next_event_seq,
                policy_version: self.policy_version,
            });
        }
    }

    /// Frames `event` as a record of its own, for a caller that stores it itself. The
    /// open frame must be empty (the caller flushed it); returns the record and the event
    /// sequence number to go back to with [`Framer::rewind`] if it is not stored.
    pub(crate) fn standalone(&mut self, event: &Event) -> (Vec<Job>, u64) {
        debug_assert_eq!(self.events_in_frame, 0, "the open frame was flushed first");
        let before = self.next_event_seq;
        let mut jobs = Vec::new();
        self.push(event, &mut |j| jobs.push(j));
        jobs.extend(self.cut());
        (jobs, before)
    }

    /// Gives back the event sequence numbers of records that were not stored.
    pub(crate) fn rewind(&mut self, next_event_seq: u64) {
        self.buf.clear();
        self.events_in_frame = 0;
        self.started = None;
        self.next_event_seq = next_event_seq;
    }

    /// Closes the open frame, if any.
    pub(crate) fn cut(&mut self) -> Option<Job> {
        (self.events_in_frame > 0).then(|| self.take_frame())
    }

    fn take_frame(&mut self) -> Job {
        let plaintext = std::mem::replace(
            &mut self.buf,
            PlainBuf::new(Vec::with_capacity(self.max_bytes + 64)),
        );
        self.events_in_frame = 0;
        self.started = None;
        Job {
            kind: RecordKind::Frame,
            flags: 0,
            plaintext: Plaintext::Owned(plaintext),
            end_event_seq: self.next_event_seq,
            policy_version: self.policy_version,
        }
    }
}
