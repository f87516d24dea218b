//! The bytes of a user's records, in append-only segment files (docs/FORMAT.md §2,
//! "Storage"). sled keeps, per record, where its bytes are ([`Loc`]); the files hold
//! only sealed records, each behind a small header that makes a segment readable on
//! its own. Segments are never rewritten: records leave the log only from its front, so
//! whole segments before the first live record are deleted, and the dead front of the
//! segment holding it is punched out where the file system allows.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::log::behind::Behind;
use crate::log::sync_latch::{forget_cached, SyncLatch};

/// Directory of the segment directories, in the vault directory.
pub(crate) const SEGMENTS_DIR: &str = "segments";
/// Bytes before each record in a segment: `seq (u64) || len (u32) || crc32 (u32)`.
pub(crate) const ENTRY_HEADER: u64 = 16;
/// First byte of an index value that is a location (a record value starts with its
/// version, 1).
pub(crate) const LOC_TAG: u8 = 0xC5;
/// Size of a location value.
pub(crate) const LOC_LEN: usize = 26;
/// Location flag: the last record of one write (a crash keeps or loses whole writes).
pub(crate) const LOC_BATCH_END: u8 = 1;
/// Segment size when no byte budget asks for smaller ones (docs/PERFORMANCE.md).
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
/// Smallest segment size chosen for a small budget.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// Open file handles kept (the active segment is always kept).
const HANDLES: usize = 16;
/// Granularity of hole punching.
const BLOCK: u64 = 4096;
/// A write at least this large (a screenshot) is handed to the disk at once, so that the
/// flush after it finds its bytes written and waits only for the device's flush.
const WRITEBACK_AT_ONCE: usize = 512 << 10;
/// Bytes of an append's pieces on their way to the file at most (one piece, whatever its
/// size, when a single record is larger).
const BYTES_IN_FLIGHT: usize = 4 * WRITEBACK_AT_ONCE;
/// Emptied write buffers kept at most (each of at most `2 * WRITEBACK_AT_ONCE`).
const SPARE_BUFFERS: usize = 5;

/// Segment size for a byte budget (0: none): at most a sixteenth of the budget, so the
/// dead front of one segment never holds the budget's slack.
pub(crate) fn segment_bytes_for(budget: u64) -> u64 {
    if budget == 0 {
        DEFAULT_SEGMENT_BYTES
    } else {
        (budget / 16).clamp(MIN_SEGMENT_BYTES, DEFAULT_SEGMENT_BYTES)
    }
}

/// The number of a segment file named `name`: exactly as the vault names them (ten
/// digits), so that a file named `1` or `+1` is not taken for segment 1.
fn segment_number(name: &str) -> Option<u32> {
    (name.len() == 10 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// The segment directory of `user` in the vault directory `dir`. Named by a hash of the
/// user name, so any name (up to the name limit) fits a file name.
pub(crate) fn user_dir(dir: &Path, user: &str) -> PathBuf {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"capvault-segments-v1");
    ctx.update(user.as_bytes());
    let id = data_encoding::HEXLOWER.encode(&ctx.finish().as_ref()[..16]);
    dir.join(SEGMENTS_DIR).join(id)
}

/// Where a record's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Loc {
    pub flags: u8,
    pub segment: u32,
    /// Offset of the entry header.
    pub offset: u64,
    /// Length of the record (without the entry header).
    pub len: u32,
    pub crc: u32,
    /// The record's DEK epoch (counters can be kept without reading the segment).
    pub epoch: u32,
}

impl Loc {
    /// `LOC_TAG || flags || segment u32 || offset u64 || len u32 || crc32 u32 || epoch u32`.
    pub(crate) fn encode(&self) -> [u8; LOC_LEN] {
        let mut b = [0u8; LOC_LEN];
        b[0] = LOC_TAG;
        b[1] = self.flags;
        b[2..6].copy_from_slice(&self.segment.to_be_bytes());
        b[6..14].copy_from_slice(&self.offset.to_be_bytes());
        b[14..18].copy_from_slice(&self.len.to_be_bytes());
        b[18..22].copy_from_slice(&self.crc.to_be_bytes());
        b[22..26].copy_from_slice(&self.epoch.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Loc> {
        if b.len() != LOC_LEN || b[0] != LOC_TAG {
            return None;
        }
        let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4"));
        Some(Loc {
            flags: b[1],
            segment: u32_at(2),
            offset: u64::from_be_bytes(b[6..14].try_into().expect("8")),
            len: u32_at(14),
            crc: u32_at(18),
            epoch: u32_at(22),
        })
    }

    /// End of the entry in its segment.
    pub(crate) fn end(&self) -> u64 {
        self.offset + ENTRY_HEADER + u64::from(self.len)
    }
}

/// An index value: the record itself (vaults written before segments) or its location.
pub(crate) enum Stored {
    Inline(sled::IVec),
    At(Loc),
}

impl Stored {
    pub(crate) fn parse(v: sled::IVec) -> Result<Stored> {
        if v.first() == Some(&LOC_TAG) {
            Loc::decode(&v)
                .map(Stored::At)
                .ok_or_else(|| Error::tampered("a record location is malformed"))
        } else {
            Ok(Stored::Inline(v))
        }
    }

    /// Stored length of the record.
    pub(crate) fn len(&self) -> usize {
        match self {
            Stored::Inline(v) => v.len(),
            Stored::At(l) => l.len as usize,
        }
    }
}

/// What one append wrote, to take it back if the index write fails.
pub(crate) struct Written {
    segment: u32,
    start: u64,
}

/// A piece of an append being written by the helper thread: it comes back with the
/// result.
type PieceWritten = Receiver<(Piece, std::io::Result<()>)>;

/// Bytes on their way to a segment file: a buffer of record entries, with the sealed
/// chunks of large payloads placed between its bytes (each at the buffer position it
/// goes before) and written from where they lie instead of being copied in.
#[derive(Default)]
struct Piece {
    bytes: Vec<u8>,
    shared: Vec<(usize, Bytes)>,
    shared_len: usize,
}

impl Piece {
    fn over(bytes: Vec<u8>) -> Piece {
        Piece {
            bytes,
            ..Piece::default()
        }
    }

    fn len(&self) -> usize {
        self.bytes.len() + self.shared_len
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.shared.clear();
        self.shared_len = 0;
    }

    /// Writes the piece at `offset` of `f`, in order.
    fn write_at(&self, f: &File, offset: u64) -> std::io::Result<()> {
        if self.shared.is_empty() {
            return write_at(f, &self.bytes, offset);
        }
        let mut slices = Vec::with_capacity(2 * self.shared.len() + 1);
        let mut from = 0;
        for (at, sealed) in &self.shared {
            slices.push(std::io::IoSlice::new(&self.bytes[from..*at]));
            slices.push(std::io::IoSlice::new(sealed));
            from = *at;
        }
        slices.push(std::io::IoSlice::new(&self.bytes[from..]));
        slices.retain(|s| !s.is_empty());
        write_vectored_at(f, &mut slices, offset)
    }
}

/// An append in progress ([`Segments::begin`]). Its bytes go out in pieces of
/// [`WRITEBACK_AT_ONCE`] as they come, written by the helper thread while the next
/// records are sealed (in order, [`BYTES_IN_FLIGHT`] at most); the rest is written by
/// [`Appending::finish`] once every piece is. The segment's length moves only when it
/// is finished, and one dropped unfinished waits for its piece and is cut back, so its
/// bytes are never named.
pub(crate) struct Appending<'a> {
    segments: &'a Segments,
    st: MutexGuard<'a, SegState>,
    active: u32,
    start: u64,
    epoch: u32,
    /// Bytes written to the file, or handed to the helper, so far (after `start`).
    out: u64,
    /// Bytes not yet written.
    buf: Piece,
    /// The pieces on their way to the file, oldest first: (answer, offset, length).
    in_flight: std::collections::VecDeque<(PieceWritten, u64, usize)>,
    locs: Vec<Loc>,
    finished: bool,
}

impl Appending<'_> {
    /// Adds the next record (`seq` follows the one before).
    #[cfg(test)]
    pub(crate) fn push(&mut self, seq: u64, bytes: &[u8]) -> Result<()> {
        self.push_with(seq, |buf| buf.extend_from_slice(bytes))
            .map(drop)
    }

    /// Adds the next record (`seq` follows the one before), which `put` appends to the
    /// buffer of bytes on their way to the file. Returns the record's stored length.
    pub(crate) fn push_with(&mut self, seq: u64, put: impl FnOnce(&mut Vec<u8>)) -> Result<u32> {
        const HEAD: usize = ENTRY_HEADER as usize;
        let offset = self.start + self.out + self.buf.len() as u64;
        let buf = &mut self.buf.bytes;
        let entry = buf.len();
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&[0u8; 8]); // length and checksum, once known
        put(buf);
        let bytes = &buf[entry + HEAD..];
        let Ok(len) = u32::try_from(bytes.len()) else {
            buf.truncate(entry);
            return Err(Error::invalid("a record is larger than 4 GiB"));
        };
        let crc = crc32fast::hash(bytes);
        buf[entry + 8..entry + 12].copy_from_slice(&len.to_be_bytes());
        buf[entry + 12..entry + HEAD].copy_from_slice(&crc.to_be_bytes());
        self.pushed(offset, len, crc)?;
        Ok(len)
    }

    /// Adds the next record (`seq` follows the one before) stored as `prefix`, then
    /// `sealed` (written from where it lies), then `tag`. Returns its stored length.
    pub(crate) fn push_sealed(
        &mut self,
        seq: u64,
        prefix: &[u8],
        sealed: Bytes,
        tag: &[u8],
    ) -> Result<u32> {
        let Ok(len) = u32::try_from(prefix.len() + sealed.len() + tag.len()) else {
            return Err(Error::invalid("a record is larger than 4 GiB"));
        };
        let mut crc = crc32fast::Hasher::new();
        for part in [prefix, &sealed, tag] {
            crc.update(part);
        }
        let crc = crc.finalize();
        let offset = self.start + self.out + self.buf.len() as u64;
        let buf = &mut self.buf.bytes;
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&crc.to_be_bytes());
        buf.extend_from_slice(prefix);
        self.buf.shared_len += sealed.len();
        self.buf.shared.push((buf.len(), sealed));
        self.buf.bytes.extend_from_slice(tag);
        self.pushed(offset, len, crc)?;
        Ok(len)
    }

    /// Names the record just added, at `offset`, and sends the buffer on once large.
    fn pushed(&mut self, offset: u64, len: u32, crc: u32) -> Result<()> {
        self.locs.push(Loc {
            flags: 0,
            segment: self.active,
            offset,
            len,
            crc,
            epoch: self.epoch,
        });
        if self.buf.len() >= WRITEBACK_AT_ONCE {
            self.send_piece()?;
        }
        Ok(())
    }

    /// Writes what is left; returns the records' locations (the last one flagged as the
    /// end of a write) and what to pass to [`Segments::undo`].
    pub(crate) fn finish(mut self) -> Result<(Vec<Loc>, Written)> {
        if let Some(last) = self.locs.last_mut() {
            last.flags = LOC_BATCH_END;
        }
        self.wait_pieces()?;
        self.write_out()?;
        let (active, end) = (self.active, self.start + self.out);
        self.segments.change(&mut self.st, active, |s| s.len = end);
        self.st.dirty.insert(active);
        self.finished = true;
        Ok((
            std::mem::take(&mut self.locs),
            Written {
                segment: active,
                start: self.start,
            },
        ))
    }

    /// Hands the buffer to the helper thread (first waiting for the oldest pieces while
    /// it would take more than [`BYTES_IN_FLIGHT`] on their way) and goes on with a
    /// spare one.
    fn send_piece(&mut self) -> Result<()> {
        while !self.in_flight.is_empty()
            && self.in_flight.iter().map(|p| p.2).sum::<usize>() + self.buf.len() > BYTES_IN_FLIGHT
        {
            self.wait_piece()?;
        }
        let spare = self.st.spare.pop().unwrap_or_default();
        let at = self.start + self.out;
        let f = Arc::clone(self.segments.handle(&mut self.st, self.active)?);
        let buf = std::mem::replace(&mut self.buf, Piece::over(spare));
        let len = buf.len() as u64;
        let writeback = self.segments.fsync;
        let (tx, rx) = mpsc::sync_channel(1);
        self.segments.behind.run(move || {
            let written = buf.write_at(&f, at).and_then(|()| {
                crate::failpoint::hit("segments:piece-written")
                    .map_err(|e| std::io::Error::other(e.to_string()))
            });
            if written.is_ok() && writeback {
                start_writeback(&f, at, len);
            }
            let _ = tx.send((buf, written));
        });
        self.in_flight.push_back((rx, at, len as usize));
        self.out += len;
        Ok(())
    }

    /// Waits for every piece on its way.
    fn wait_pieces(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.wait_piece()?;
        }
        Ok(())
    }

    /// Waits for the oldest piece on its way; its buffer becomes a spare.
    fn wait_piece(&mut self) -> Result<()> {
        let Some((rx, at, _)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let path = || self.segments.path(self.active);
        match rx.recv() {
            Ok((buf, Ok(()))) => {
                keep_spare(&mut self.st, buf);
                Ok(())
            }
            // A full disk may have taken part of it: cut back when dropped (the next
            // write starts at `start` anyway).
            Ok((_, Err(e))) => Err(storage("cannot write the segment file", &path(), e)),
            Err(_) => Err(Error::Storage(format!(
                "cannot write the segment file {} at {at}: the write was lost",
                path().display()
            ))),
        }
    }

    fn write_out(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let at = self.start + self.out;
        let f = self.segments.handle(&mut self.st, self.active)?;
        if let Err(e) = self.buf.write_at(f, at) {
            return Err(storage(
                "cannot write the segment file",
                &self.segments.path(self.active),
                e,
            ));
        }
        // Large writes start their own writeback: the flush's fdatasync then waits for
        // the last piece only.
        if self.segments.fsync && self.out + self.buf.len() as u64 >= WRITEBACK_AT_ONCE as u64 {
            start_writeback(f, at, self.buf.len() as u64);
        }
        self.out += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Keeps an emptied write buffer for the next piece or append (fresh allocations of
/// this size are mapped, faulted in and unmapped each time); the sealed chunks it named
/// are let go. Write buffers only ever hold sealed records once a record is pushed, so
/// nothing is wiped.
fn keep_spare(st: &mut SegState, piece: Piece) {
    let mut buf = piece.bytes;
    if st.spare.len() < SPARE_BUFFERS && buf.capacity() <= 2 * WRITEBACK_AT_ONCE {
        buf.clear();
        st.spare.push(buf);
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        if !self.finished {
            // Plaintext is in the buffer only between a record's copy and its sealing,
            // which nothing interrupts today; an append cut short is wiped all the same.
            buf.bytes.as_mut_slice().zeroize();
            buf.bytes.spare_capacity_mut().zeroize();
        }
        keep_spare(&mut self.st, buf);
        if self.finished {
            return;
        }
        // A piece still being written lands before the cut, never after it.
        while !self.in_flight.is_empty() {
            let _ = self.wait_piece();
        }
        // Best effort: the length the segments know is `start` whatever the file says,
        // and a reopened log trims what no index entry names.
        let start = self.start;
        if let Ok(f) = self.segments.handle(&mut self.st, self.active) {
            let _ = f.set_len(start);
        }
    }
}

struct Seg {
    len: u64,
    /// Bytes at the front given back to the file system (hole punched).
    punched: u64,
}

impl Seg {
    /// Bytes the segment holds on disk.
    fn held(&self) -> u64 {
        self.len.saturating_sub(self.punched)
    }
}

struct SegState {
    segs: BTreeMap<u32, Seg>,
    /// Shared with the helper thread while it writes a piece.
    handles: BTreeMap<u32, Arc<File>>,
    active: Option<u32>,
    next: u32,
    /// Written since the last sync.
    dirty: BTreeSet<u32>,
    /// A segment was created since the directory's last sync.
    dir_dirty: bool,
    /// Emptied write buffers ([`keep_spare`]).
    spare: Vec<Vec<u8>>,
}

/// The segment files of one user.
pub(crate) struct Segments {
    dir: PathBuf,
    max_bytes: u64,
    /// Without it a sync only forgets what was written (`fsync: false` vaults promise no
    /// durability).
    fsync: bool,
    st: Mutex<SegState>,
    /// What [`Segments::bytes`] returns: the sum of every segment's `held()`, changed
    /// under `st`'s lock with each change to a segment's length or punched front, so the
    /// byte budget is read on the append path without waiting for a sync that holds
    /// the lock.
    held: AtomicU64,
    /// Writes the pieces of large appends (dropped after the state: an append holds
    /// the state's lock until its pieces are written, so none is left when it goes).
    behind: Behind,
    /// Once a sync of these files failed, every later one fails too.
    latch: SyncLatch,
}

fn name_of(n: u32) -> String {
    format!("{n:010}")
}

fn storage(what: &str, path: &Path, e: std::io::Error) -> Error {
    match Error::from(e) {
        Error::StorageFull(m) => Error::StorageFull(format!("{what} {}: {m}", path.display())),
        Error::Storage(m) => Error::Storage(format!("{what} {}: {m}", path.display())),
        other => other,
    }
}

impl Segments {
    /// Sets the size at which a new segment is begun (the policy recorded in the vault,
    /// known only after the segments opened, may set another budget than the caller's).
    pub(crate) fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes.max(MIN_SEGMENT_BYTES);
    }

    /// Opens (creating if needed) the segment directory `dir`, private to the owner.
    pub(crate) fn open(dir: &Path, max_bytes: u64, fsync: bool) -> Result<Segments> {
        create_private(dir.parent().unwrap_or(dir))?;
        create_private(dir)?;
        refuse_link(dir.parent().unwrap_or(dir))?;
        refuse_link(dir)?;
        let mut segs = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(n) = name.to_str().and_then(segment_number) else {
                // Not a segment (nothing of ours has another name): left alone.
                continue;
            };
            let meta = entry.metadata()?;
            if meta.is_file() {
                segs.insert(
                    n,
                    Seg {
                        len: meta.len(),
                        punched: 0,
                    },
                );
            }
        }
        let next = segs.keys().next_back().map_or(1, |n| n.saturating_add(1));
        let held = segs.values().map(Seg::held).sum();
        Ok(Segments {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(MIN_SEGMENT_BYTES),
            fsync,
            st: Mutex::new(SegState {
                segs,
                handles: BTreeMap::new(),
                active: None,
                next,
                dirty: BTreeSet::new(),
                dir_dirty: false,
                spare: Vec::new(),
            }),
            held: AtomicU64::new(held),
            behind: Behind::default(),
            latch: SyncLatch::default(),
        })
    }

    /// Changes segment `n` (if present) with `f`, keeping the count of bytes held in
    /// step. Called with the lock held.
    fn change(&self, st: &mut SegState, n: u32, f: impl FnOnce(&mut Seg)) {
        if let Some(seg) = st.segs.get_mut(&n) {
            let before = seg.held();
            f(seg);
            let after = seg.held();
            if after >= before {
                self.held.fetch_add(after - before, Ordering::Relaxed);
            } else {
                self.held.fetch_sub(before - after, Ordering::Relaxed);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, SegState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, n: u32) -> PathBuf {
        self.dir.join(name_of(n))
    }

    /// The handle of segment `n` (opened on demand; a few are kept).
    fn handle<'a>(&self, st: &'a mut SegState, n: u32) -> Result<&'a Arc<File>> {
        if !st.handles.contains_key(&n) {
            if st.handles.len() >= HANDLES {
                let drop_one = st.handles.keys().copied().find(|k| Some(*k) != st.active);
                if let Some(k) = drop_one {
                    st.handles.remove(&k);
                }
            }
            let path = self.path(n);
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        Error::tampered(format!("the segment file {} is missing", path.display()))
                    }
                    _ => storage("cannot open the segment file", &path, e),
                })?;
            st.handles.insert(n, Arc::new(f));
        }
        Ok(st.handles.get(&n).expect("inserted"))
    }

    /// Appends `records` (`(seq, bytes)`, in order) as one write, starting a new segment
    /// when the active one is full. Returns their locations (the last one flagged as
    /// the end of a write) and what to pass to [`Segments::undo`].
    #[cfg(test)]
    pub(crate) fn append(
        &self,
        records: &[(u64, &[u8])],
        epoch: u32,
    ) -> Result<(Vec<Loc>, Written)> {
        let mut appending = self.begin(epoch)?;
        for (seq, bytes) in records {
            appending.push(*seq, bytes)?;
        }
        appending.finish()
    }

    /// Starts an append that takes its records one at a time ([`Appending::push`]), so
    /// that the bytes of a large batch go to the disk while the rest of it is sealed.
    /// Holds the segments' lock until it is finished or dropped.
    pub(crate) fn begin(&self, epoch: u32) -> Result<Appending<'_>> {
        let mut st = self.lock();
        let active = match st.active {
            Some(n) if st.segs.get(&n).is_some_and(|s| s.len < self.max_bytes) => n,
            _ => self.create(&mut st)?,
        };
        let start = st.segs[&active].len;
        let buf = Piece::over(st.spare.pop().unwrap_or_default());
        Ok(Appending {
            segments: self,
            st,
            active,
            start,
            epoch,
            out: 0,
            buf,
            in_flight: std::collections::VecDeque::new(),
            locs: Vec::new(),
            finished: false,
        })
    }

    /// Takes back an append whose index write failed: the next append overwrites it.
    pub(crate) fn undo(&self, w: Written) {
        let mut st = self.lock();
        self.change(&mut st, w.segment, |s| s.len = s.len.min(w.start));
        if let Ok(f) = self.handle(&mut st, w.segment) {
            let _ = f.set_len(w.start);
        }
    }

    fn create(&self, st: &mut SegState) -> Result<u32> {
        let n = st.next;
        // Checked before the file is made, so none is left that no segment names.
        let next = n.checked_add(1).ok_or_else(|| {
            Error::Storage(format!(
                "segment numbers ran out in {} (the last is 4294967295): if no record is \
                 in that segment, open the vault again (segments after the last record are \
                 removed and numbering goes on from it); otherwise release its records \
                 (seal and acknowledge them) and open it again, so that numbering starts \
                 again",
                self.dir.display()
            ))
        })?;
        let path = self.path(n);
        let mut o = fs::OpenOptions::new();
        o.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        let f = o
            .open(&path)
            .map_err(|e| storage("cannot create the segment file", &path, e))?;
        crate::failpoint::hit("segments:after-create")?;
        st.next = next;
        st.segs.insert(n, Seg { len: 0, punched: 0 });
        st.handles.insert(n, Arc::new(f));
        st.active = Some(n);
        st.dir_dirty = true;
        Ok(n)
    }

    /// Reads record `seq` at `loc`, checking its entry header and checksum. The error
    /// says what is wrong (missing file, short file, damaged bytes, a file that cannot be
    /// read).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn read(&self, seq: u64, loc: &Loc) -> std::result::Result<Vec<u8>, String> {
        self.read_or_lost(seq, loc)
            .unwrap_or_else(|e| Err(e.to_string()))
    }

    /// Reads record `seq` at `loc`, checking its entry header and checksum, and tells
    /// bytes that are not there (`Ok(Err(why))`: a missing or short file, the released
    /// front, other bytes than written: what a crash or a writer of the files leaves)
    /// from a file that cannot be read now (`Err`: out of file handles, an I/O error),
    /// which says nothing of the bytes and must not be taken for their loss.
    pub(crate) fn read_or_lost(
        &self,
        seq: u64,
        loc: &Loc,
    ) -> Result<std::result::Result<Vec<u8>, String>> {
        let mut st = self.lock();
        let path = self.path(loc.segment);
        let Some(seg) = st.segs.get(&loc.segment) else {
            return Ok(Err(format!(
                "its segment file {} is missing",
                path.display()
            )));
        };
        let too_short = |len: u64| {
            format!(
                "its segment file {} ends at byte {len} before the record does ({})",
                path.display(),
                loc.end()
            )
        };
        if loc.end() > seg.len {
            return Ok(Err(too_short(seg.len)));
        }
        if loc.offset < seg.punched {
            return Ok(Err(format!(
                "it lies in the released front of segment file {}",
                path.display()
            )));
        }
        let f = self.handle(&mut st, loc.segment)?;
        // Tests make the read fail here, as a disk that cannot read would.
        crate::failpoint::hit("segments:read")?;
        let mut buf = vec![0u8; (ENTRY_HEADER + u64::from(loc.len)) as usize];
        match read_at(f, &mut buf, loc.offset) {
            Ok(()) => {}
            // Cut shorter since it was opened.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let len = f.metadata().map_or(0, |m| m.len());
                return Ok(Err(too_short(len)));
            }
            Err(e) => return Err(storage("cannot read segment file", &path, e)),
        }
        let (head, bytes) = buf.split_at(ENTRY_HEADER as usize);
        let mut want = Vec::with_capacity(16);
        want.extend_from_slice(&seq.to_be_bytes());
        want.extend_from_slice(&loc.len.to_be_bytes());
        want.extend_from_slice(&loc.crc.to_be_bytes());
        if head != want.as_slice() || crc32fast::hash(bytes) != loc.crc {
            return Ok(Err(format!(
                "its bytes in segment file {} at offset {} are damaged (checksum)",
                path.display(),
                loc.offset
            )));
        }
        buf.drain(..ENTRY_HEADER as usize);
        Ok(Ok(buf))
    }

    /// fdatasync of every segment written since the last sync, and of the directory when
    /// a segment was created.
    pub(crate) fn sync(&self) -> Result<()> {
        let mut st = self.lock();
        // Tests hold a sync here, with the lock taken, to show what does not wait for it.
        crate::failpoint::pause("segments:sync");
        if !self.fsync {
            st.dirty.clear();
            st.dir_dirty = false;
            return Ok(());
        }
        // A failed sync fails every later one (a retry would succeed for lost pages);
        // only the syncs themselves are latched, not opening what they sync.
        self.latch.check()?;
        let dirty: Vec<u32> = st.dirty.iter().copied().collect();
        for n in dirty {
            if !st.segs.contains_key(&n) {
                continue;
            }
            let path = self.path(n);
            let f = Arc::clone(self.handle(&mut st, n)?);
            self.latch.sync(|| {
                f.sync_data()
                    .map_err(|e| storage("cannot sync the segment file", &path, e))
                    // Tests make the sync fail here, as a disk that cannot write would.
                    .and_then(|()| crate::failpoint::hit("segments:fdatasync"))
                    .inspect_err(|_| forget_cached(&f))
            })?;
            st.dirty.remove(&n);
        }
        if st.dir_dirty {
            sync_dir(&self.dir, &self.latch)?;
            st.dir_dirty = false;
        }
        Ok(())
    }

    /// After a sync of these files failed: the error to report for `what` (a read that
    /// found bytes other than those written), naming that failure.
    pub(crate) fn sync_failure(&self, what: &str) -> Option<Error> {
        self.latch.failure(what)
    }

    /// Marks segment `n` as written (to be synced by the next [`Segments::sync`]).
    pub(crate) fn touch(&self, n: u32) {
        self.lock().dirty.insert(n);
    }

    /// Continues appending to segment `n` after its first `len` bytes, removing what
    /// lies after them (a write the index never took) and every later segment.
    pub(crate) fn continue_at(&self, n: u32, len: u64) -> Result<()> {
        let mut st = self.lock();
        let later: Vec<u32> = match n.checked_add(1) {
            Some(after) => st.segs.range(after..).map(|(k, _)| *k).collect(),
            None => Vec::new(),
        };
        for k in later {
            self.remove(&mut st, k)?;
        }
        // Numbered on from the last segment kept: the ones removed after it were never
        // indexed (a planted `4294967295` would otherwise leave no number to go on with).
        st.next = n.saturating_add(1);
        if st.segs.get(&n).is_some_and(|s| s.len > len) {
            let path = self.path(n);
            let f = self.handle(&mut st, n)?;
            f.set_len(len)
                .map_err(|e| storage("cannot trim the segment file", &path, e))?;
            self.change(&mut st, n, |s| s.len = len);
            st.dirty.insert(n);
        }
        if st.segs.contains_key(&n) {
            st.active = Some(n);
        }
        Ok(())
    }

    /// Numbers the next segment created `n` (at open, once no segment is left).
    pub(crate) fn number_from(&self, n: u32) {
        let mut st = self.lock();
        debug_assert!(st.segs.is_empty(), "segments are numbered on from the last");
        st.next = n;
    }

    fn remove(&self, st: &mut SegState, n: u32) -> Result<()> {
        st.handles.remove(&n);
        if let Some(seg) = st.segs.remove(&n) {
            self.held.fetch_sub(seg.held(), Ordering::Relaxed);
        }
        st.dirty.remove(&n);
        if st.active == Some(n) {
            st.active = None;
        }
        let path = self.path(n);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(storage("cannot remove the segment file", &path, e)),
        }
        st.dir_dirty = true;
        Ok(())
    }

    /// Gives back the space of everything before `keep` (the first live record):
    /// removes earlier segments and punches out the dead front of its segment. `None`
    /// (no live record) removes every segment.
    pub(crate) fn release_before(&self, keep: Option<&Loc>) -> Result<()> {
        let mut st = self.lock();
        let until = keep.map_or(u32::MAX, |l| l.segment);
        let dead: Vec<u32> = st.segs.range(..until).map(|(k, _)| *k).collect();
        if keep.is_none() {
            let all: Vec<u32> = st.segs.keys().copied().collect();
            for k in all {
                self.remove(&mut st, k)?;
            }
        } else {
            for k in dead {
                self.remove(&mut st, k)?;
            }
        }
        if let Some(l) = keep {
            let front = l.offset / BLOCK * BLOCK;
            let punched = st.segs.get(&l.segment).map(|s| s.punched);
            if let Some(done) = punched.filter(|p| front > *p) {
                let f = self.handle(&mut st, l.segment)?;
                if punch(f, done, front - done) {
                    self.change(&mut st, l.segment, |s| s.punched = front);
                }
            }
        }
        Ok(())
    }

    /// Bytes the segments hold on disk (punched fronts excluded). Takes no lock.
    pub(crate) fn bytes(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Segment numbers present.
    pub(crate) fn numbers(&self) -> Vec<u32> {
        self.lock().segs.keys().copied().collect()
    }

    /// Drops `stored` on the helper thread (a large batch once stored), after the pieces
    /// handed to it before.
    pub(crate) fn drop_behind<T: Send + 'static>(&self, stored: T) {
        self.behind.run(move || drop(stored));
    }
}

/// Removes the segment directory of `user` in vault directory `dir` (erase).
pub(crate) fn remove_user(dir: &Path, user: &str) -> Result<()> {
    let d = user_dir(dir, user);
    let cannot =
        |p: &Path, e: std::io::Error| Error::Storage(format!("cannot remove {}: {e}", p.display()));
    // Through something else in place of `segments/` (a link), the user's directory
    // would be another one: nothing behind it is the vault's to delete.
    match fs::symlink_metadata(d.parent().unwrap_or(&d)) {
        Ok(m) if m.file_type().is_dir() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(cannot(&d, e)),
    }
    // A file or link in place of the user's directory goes itself.
    match fs::symlink_metadata(&d) {
        Ok(m) if !m.file_type().is_dir() => {
            return fs::remove_file(&d).map_err(|e| cannot(&d, e));
        }
        _ => {}
    }
    match fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Storage(format!(
            "cannot remove {}: {e}",
            d.display()
        ))),
    }
}

fn create_private(dir: &Path) -> Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| storage("cannot create the segment directory", dir, e))
}

/// The segment directories are the vault's own. A link in their place (which only whoever
/// can write the vault directory can plant) would send record bytes, and the deletions
/// that give space back, somewhere else.
fn refuse_link(dir: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| storage("cannot read the segment directory", dir, e))?;
    if meta.file_type().is_dir() {
        return Ok(());
    }
    Err(Error::tampered(format!(
        "{} is a link or not a directory, where the vault keeps its record files (someone with write access to the vault directory replaced it); move it away and put back the directory from a backup, or erase the vault",
        dir.display()
    )))
}

/// fsync of `dir` and of its parent (a new entry in `dir`, and `dir` itself new).
/// Each sync goes through `latch` (opening the directories does not).
pub(crate) fn sync_dir(dir: &Path, latch: &SyncLatch) -> Result<()> {
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let handle =
            File::open(d).map_err(|e| storage("cannot open the segment directory", d, e))?;
        latch.sync(|| {
            handle
                .sync_all()
                .map_err(|e| storage("cannot sync the segment directory", d, e))
        })?;
    }
    Ok(())
}

#[cfg(unix)]
fn write_at(f: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, buf, offset)
}

/// Writes `slices` in order at `offset` with `pwritev`, going on after a short write
/// (rustix passes at most `IOV_MAX`, 1024 on Linux, slices a call). A system without
/// it (`ENOSYS`: macOS before 11) or that rustix gives none gets one write a slice.
fn write_vectored_at(
    f: &File,
    mut slices: &mut [std::io::IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "dragonfly"
    ))]
    while !slices.is_empty() {
        match rustix::io::pwritev(f, slices, offset) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => {
                offset += written as u64;
                std::io::IoSlice::advance_slices(&mut slices, written);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::NOSYS) => break,
            Err(e) => return Err(e.into()),
        }
    }
    write_each_at(f, slices, offset)
}

/// Writes `slices` in order at `offset`, one write each.
fn write_each_at(
    f: &File,
    slices: &[std::io::IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    for s in slices {
        write_at(f, s, offset)?;
        offset += s.len() as u64;
    }
    Ok(())
}

/// Starts writing `len` bytes at `offset` back to the disk without waiting for them
/// (Linux: `POSIX_FADV_DONTNEED` starts the writeback of dirty pages and leaves pages
/// still being written in the cache). A hint only: durability still comes from the
/// flush's `fdatasync`, so a refusal changes nothing.
fn start_writeback(f: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::fs::fadvise(
            f,
            offset,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::DontNeed,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}

#[cfg(unix)]
fn read_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(windows)]
fn write_at(f: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = f.seek_write(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(windows)]
fn read_at(f: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = f.seek_read(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// Gives `len` bytes at `offset` back to the file system, keeping the file's size and
/// offsets. False when the file system cannot (the bytes then stay until the segment
/// is deleted).
#[cfg(target_os = "linux")]
fn punch(f: &File, offset: u64, len: u64) -> bool {
    use rustix::fs::{fallocate, FallocateFlags};
    fallocate(
        f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )
    .is_ok()
}

#[cfg(not(target_os = "linux"))]
fn punch(_f: &File, _offset: u64, _len: u64) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Segments {
        /// The bytes held, counted from the segments (what the running count must be).
        fn recount(&self) -> u64 {
            self.lock().segs.values().map(Seg::held).sum()
        }
    }

    #[test]
    fn locations_round_trip_and_are_told_from_records() {
        let l = Loc {
            flags: LOC_BATCH_END,
            segment: 7,
            offset: 1 << 40,
            len: 65_000,
            crc: 0xdead_beef,
            epoch: 3,
        };
        let b = l.encode();
        assert!(matches!(Stored::parse(b.to_vec().into()).unwrap(), Stored::At(x) if x == l));
        // A record value starts with its version (1).
        assert!(matches!(
            Stored::parse(vec![1u8; 80].into()).unwrap(),
            Stored::Inline(_)
        ));
        assert!(Stored::parse(b[..20].to_vec().into()).is_err());
    }

    #[test]
    fn appends_read_back_roll_over_and_damage_is_named() {
        let d = tempfile::tempdir().unwrap();
        let s = Segments::open(&d.path().join("s"), MIN_SEGMENT_BYTES, true).unwrap();
        let big = vec![7u8; 70_000];
        let (a, _) = s.append(&[(1, b"one"), (2, &big)], 1).unwrap();
        let (b, _) = s.append(&[(3, &big)], 1).unwrap();
        assert_eq!(a[0].flags, 0);
        assert_eq!(a[1].flags, LOC_BATCH_END);
        assert_eq!(a[0].segment, b[0].segment - 1, "rolled over when full");
        assert_eq!(s.read(1, &a[0]).unwrap(), b"one");
        assert_eq!(s.read(3, &b[0]).unwrap(), big);
        assert_eq!(s.bytes(), s.recount());
        s.sync().unwrap();
        // The wrong sequence number, a flipped byte, a short file: each is named.
        assert!(s.read(2, &a[0]).unwrap_err().contains("damaged"));
        let path = s.path(a[1].segment);
        let mut bytes = fs::read(&path).unwrap();
        bytes[a[1].offset as usize + 100] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(s.read(2, &a[1]).unwrap_err().contains("damaged"));
        let s = Segments::open(&d.path().join("s"), MIN_SEGMENT_BYTES, true).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(s.path(b[0].segment))
            .unwrap()
            .set_len(100)
            .unwrap();
        let s = Segments::open(&d.path().join("s"), MIN_SEGMENT_BYTES, true).unwrap();
        assert!(s.read(3, &b[0]).unwrap_err().contains("ends at byte"));
        assert_eq!(s.bytes(), s.recount());
        s.continue_at(b[0].segment, 50).unwrap();
        assert_eq!(s.bytes(), s.recount());
        s.release_before(Some(&b[0])).unwrap();
        assert_eq!(s.bytes(), s.recount());
        assert!(s.read(1, &a[0]).unwrap_err().contains("missing"));
        s.release_before(None).unwrap();
        assert_eq!(s.numbers(), Vec::<u32>::new());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn an_undone_append_is_overwritten_by_the_next() {
        let d = tempfile::tempdir().unwrap();
        let s = Segments::open(&d.path().join("s"), DEFAULT_SEGMENT_BYTES, true).unwrap();
        let (_, w) = s.append(&[(1, b"lost")], 1).unwrap();
        s.undo(w);
        assert_eq!(s.bytes(), 0);
        let (l, _) = s.append(&[(1, b"kept")], 1).unwrap();
        assert_eq!(l[0].offset, 0);
        assert_eq!(s.read(1, &l[0]).unwrap(), b"kept");
        assert_eq!(s.bytes(), ENTRY_HEADER + 4);
    }

    /// Segments in `dir` holding one record: its location, its file and the file's length.
    fn one_record(dir: &Path) -> (Segments, Loc, PathBuf, u64) {
        let s = Segments::open(&dir.join("s"), DEFAULT_SEGMENT_BYTES, true).unwrap();
        let (first, _) = s.append(&[(1, b"before")], 1).unwrap();
        let file = dir.join("s").join(name_of(first[0].segment));
        let start = fs::metadata(&file).unwrap().len();
        (s, first[0], file, start)
    }

    #[test]
    fn a_large_append_goes_out_in_pieces_and_one_dropped_unfinished_is_cut_back() {
        let d = tempfile::tempdir().unwrap();
        let (s, first, file, start) = one_record(d.path());
        let chunk = vec![0x5au8; 64 << 10];
        // Enough pieces that the first must be written before the last is handed over.
        let n = 2 + ((BYTES_IN_FLIGHT + 2 * WRITEBACK_AT_ONCE) / chunk.len()) as u64;
        {
            let mut a = s.begin(1).unwrap();
            for seq in 2..n {
                a.push(seq, &chunk).unwrap();
            }
            // Pieces went to the file before the end (the append is not finished).
            assert!(fs::metadata(&file).unwrap().len() >= start + (512 << 10));
            // Dropped unfinished with pieces on their way, as when sealing or writing the
            // rest fails: none of them lands after the cut.
        }
        assert_eq!(fs::metadata(&file).unwrap().len(), start);
        assert_eq!(s.bytes(), start);
        // The next append starts where the dropped one did, whole.
        let records: Vec<(u64, &[u8])> = (2..n).map(|seq| (seq, &chunk[..])).collect();
        let (l, _) = s.append(&records, 1).unwrap();
        assert_eq!(l[0].offset, start);
        assert_eq!(l.iter().filter(|l| l.flags & LOC_BATCH_END != 0).count(), 1);
        assert_eq!(l.last().unwrap().flags, LOC_BATCH_END);
        for (i, loc) in l.iter().enumerate() {
            assert_eq!(s.read(2 + i as u64, loc).unwrap(), chunk);
        }
        assert_eq!(s.read(1, &first).unwrap(), b"before");
        assert_eq!(s.recount(), s.bytes());
    }

    /// Records pushed as sealed parts written from where they lie read back like records
    /// copied in, mixed with those, also when a piece has more parts than one `pwritev`
    /// takes (1024) and when it goes out in several pieces.
    #[test]
    fn records_written_from_where_they_lie_read_back_like_copied_ones() {
        let d = tempfile::tempdir().unwrap();
        let (s, first, _, start) = one_record(d.path());
        let record = |seq: u64, len: usize| -> Vec<u8> {
            (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
        };
        // Small parts: 700 records of 40 + 100 + 16 bytes and some copied in, in one piece
        // of more than 1024 slices; then large ones, in several pieces.
        let lens: Vec<usize> = (0..700)
            .map(|_| 156)
            .chain((0..40).map(|_| 70_000))
            .collect();
        let mut a = s.begin(1).unwrap();
        for (i, len) in lens.iter().enumerate() {
            let seq = 2 + i as u64;
            let r = record(seq, *len);
            if i % 7 == 3 {
                a.push(seq, &r).unwrap();
            } else {
                let body = bytes::Bytes::copy_from_slice(&r[40..len - 16]);
                let stored = a.push_sealed(seq, &r[..40], body, &r[len - 16..]).unwrap();
                assert_eq!(stored as usize, *len);
            }
        }
        let (locs, _) = a.finish().unwrap();
        assert_eq!(locs[0].offset, start);
        for (i, loc) in locs.iter().enumerate() {
            let seq = 2 + i as u64;
            assert_eq!(s.read(seq, loc).unwrap(), record(seq, lens[i]), "{seq}");
        }
        assert_eq!(s.read(1, &first).unwrap(), b"before");
        assert_eq!(s.recount(), s.bytes());
    }

    /// An append dropped with pieces still queued for the helper (here behind a task
    /// that blocks it) waits for them before it cuts the segment back: none lands after
    /// the cut.
    #[test]
    fn an_append_dropped_with_pieces_on_their_way_cuts_back_after_they_land() {
        let d = tempfile::tempdir().unwrap();
        let (s, _, file, start) = one_record(d.path());
        let (go, wait) = std::sync::mpsc::channel::<()>();
        s.behind.run(move || {
            let _ = wait.recv();
        });
        let chunk = vec![0x5au8; 64 << 10];
        std::thread::scope(|scope| {
            let dropping = scope.spawn(|| {
                let mut a = s.begin(1).unwrap();
                for seq in 2..20 {
                    a.push(seq, &chunk).unwrap();
                }
                // Dropped unfinished, two pieces queued behind the blocking task.
            });
            std::thread::sleep(std::time::Duration::from_millis(200));
            assert!(!dropping.is_finished(), "dropped before its pieces landed");
            go.send(()).unwrap();
            dropping.join().unwrap();
        });
        assert_eq!(fs::metadata(&file).unwrap().len(), start);
        // The next append, other bytes, reads back whole after the first record.
        let other = vec![0xA7u8; 64 << 10];
        let records: Vec<(u64, &[u8])> = (2..20).map(|seq| (seq, &other[..])).collect();
        let (l, _) = s.append(&records, 1).unwrap();
        assert_eq!(l[0].offset, start);
        for (i, loc) in l.iter().enumerate() {
            assert_eq!(s.read(2 + i as u64, loc).unwrap(), other);
        }
        assert_eq!(fs::metadata(&file).unwrap().len(), l.last().unwrap().end());
    }

    #[test]
    fn only_names_of_ten_digits_are_segments() {
        assert_eq!(segment_number("0000000001"), Some(1));
        assert_eq!(segment_number("4294967295"), Some(u32::MAX));
        for name in [
            "1",
            "01",
            "+1",
            "+000000001",
            "00000000001",
            "4294967296",
            "000000001a",
            " 000000001",
            "outbox",
        ] {
            assert_eq!(segment_number(name), None, "{name}");
        }
    }

    #[test]
    fn segment_size_follows_the_budget() {
        assert_eq!(segment_bytes_for(0), DEFAULT_SEGMENT_BYTES);
        assert_eq!(segment_bytes_for(1 << 20), MIN_SEGMENT_BYTES);
        assert_eq!(segment_bytes_for(64 << 20), 4 << 20);
        assert_eq!(segment_bytes_for(1 << 40), DEFAULT_SEGMENT_BYTES);
    }
}
