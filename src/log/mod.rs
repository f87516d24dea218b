//! The append-only, tamper-evident log of one user: records chained by their tags,
//! anchored at both ends. The record bytes are in append-only segment files; sled holds
//! the anchors, the counters and where each record is, written in one batch per append.

pub(crate) mod anchor;
pub(crate) mod assemble;
pub(crate) mod behind;
pub(crate) mod chunk;
pub(crate) mod framer;
pub(crate) mod record;
pub(crate) mod segments;
pub(crate) mod store;
pub(crate) mod sync_latch;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::aead::TAG_LEN;
use crate::error::{Error, Result};
use crate::keys::hierarchy::KeyHierarchy;
use anchor::{AnchorKey, Head, Tail};
use capvault_format::secret::PlainBuf;
use framer::{Job, Plaintext};
use record::{tag_of, RecordBinding, RecordHeader, PREFIX_LEN};
use segments::{Loc, Segments, Stored, LOC_BATCH_END};
use store::{
    record_key, record_keys, seq_of_key, EpochCount, COUNTS_KEY, DAMAGED_ADVICE, HEAD_KEY,
    SYNCED_KEY, TAIL_KEY,
};

/// Where the log stands (mirrors the anchors and counters on disk).
#[derive(Clone, Debug, Default)]
pub(crate) struct LogState {
    pub head: Head,
    pub tail: Tail,
    pub counts: BTreeMap<u32, EpochCount>,
    /// Set when a write to sled failed (a full disk, an I/O error): see [`Log::failed`].
    pub failed: Option<Error>,
    /// Records left the front since their space was last given back.
    front_moved: bool,
}

impl LogState {
    pub(crate) fn records(&self) -> u64 {
        self.counts.values().map(|c| c.records).sum()
    }
    pub(crate) fn bytes(&self) -> u64 {
        self.counts.values().map(|c| c.bytes).sum()
    }
}

/// One user's log. All mutations go through `state`'s lock, so they are serialized.
/// Keys of records at the tail, the per-epoch counts without them, and the tag the
/// new tail chains from (see `Log::scan_tail_through`).
type TailScan = (Vec<sled::IVec>, BTreeMap<u32, EpochCount>, [u8; TAG_LEN]);

pub(crate) struct Log {
    tree: sled::Tree,
    binding: RecordBinding,
    anchors: AnchorKey,
    state: Mutex<LogState>,
    /// `state`'s `bytes()`, stored with every change to the counters (under `state`'s
    /// lock), so [`Log::disk_bytes`] takes no lock on the append path.
    stored_bytes: AtomicU64,
    segments: Segments,
    /// The last record the synced anchor names (moves forward only).
    synced: Mutex<SyncedAnchor>,
    /// The user is being erased: nothing names records again (set under `synced`'s
    /// lock, so an anchor is written either before the tree is cleared or not at all).
    retired: AtomicBool,
    /// Records of a torn write removed at open: how many, and the first one's number.
    trimmed: Option<(u64, u64)>,
}

/// What the synced anchor names, and whether that is in sled yet.
struct SyncedAnchor {
    last: u64,
    /// Named by a sync beside the index's flush, to be put into sled by the next durable
    /// flush ([`Log::put_named_synced`]).
    unwritten: bool,
}

/// Records sealed and written to the segments, not yet indexed.
struct SealedWrite {
    /// The head after them.
    head: Head,
    /// Their index entries (key, location).
    entries: Vec<(sled::IVec, sled::IVec)>,
    /// What to pass to [`Segments::undo`] if the index write fails.
    written: segments::Written,
}

/// A write of the stored state (src/vault/state.rs) rewrites the log head with the new
/// state generation in the same transaction: the locked log, the head to write and the
/// log changes that go with it (eviction).
pub(crate) struct HeadWrite<'a> {
    pub log: &'a Log,
    pub head: Head,
    pub ops: Option<&'a crate::vault::TreeOps>,
}

/// A record read back: its place, clear header and stored size.
pub(crate) struct ReadRecord {
    pub seq: u64,
    pub header: RecordHeader,
    pub stored_len: usize,
    pub plaintext: PlainBuf,
}

/// Summary of a full verification walk.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Events decoded.
    pub events: u64,
    /// First live record sequence number (0 when empty).
    pub first_seq: u64,
    /// Last record sequence number (0 when empty).
    pub last_seq: u64,
    /// Stored bytes of the checked records.
    pub bytes: u64,
}

fn tampered_at(seq: u64, what: &str) -> Error {
    Error::tampered(format!("record {seq}: {what}"))
}

impl Log {
    /// Opens the log and checks its anchors against the records at both ends, so a
    /// rolled-back, truncated or extended log is reported before anything is appended.
    /// With `require_head` (stored state authenticated: every user's log has a head from
    /// its creation on) a missing head means the log was wiped; with `require_bound` (the
    /// keychain says the log is bound to the stored state) a head without the state
    /// generation is an older copy put back. Records up to `marked` (the keychain
    /// mark's head) were durable, like those up to the synced anchor: they are never
    /// taken for a torn write.
    pub(crate) fn open(
        tree: sled::Tree,
        binding: RecordBinding,
        anchors: AnchorKey,
        require_head: bool,
        require_bound: bool,
        marked: u64,
        segments: Segments,
    ) -> Result<Log> {
        // Whether the head names the state generation (a torn tail trimmed at open is
        // written back in the same form).
        let (head, bound) = match tree.get(HEAD_KEY)? {
            Some(h) => match anchors.open_log_head(&h)? {
                (head, true) => (head, true),
                (_, false) if require_bound => {
                    return Err(Error::tampered(
                        "the log's head anchor does not name the stored state's generation, but the keychain says it must (an older copy of the log was put back)",
                    ))
                }
                (head, false) => (head, false),
            },
            None if require_head => {
                return Err(Error::tampered(
                    "the log has no head anchor (the log was wiped)",
                ))
            }
            None if require_bound => {
                return Err(Error::tampered(
                    "the log has no head anchor (the log was wiped)",
                ))
            }
            None => {
                if tree.scan_prefix([0u8]).next().transpose()?.is_some() {
                    return Err(Error::tampered("the log has records but no head anchor"));
                }
                (Head::default(), false)
            }
        };
        let tail = match tree.get(TAIL_KEY)? {
            Some(t) => anchors.open_tail(&t)?,
            None => Tail::default(),
        };
        let counts = match tree.get(COUNTS_KEY)? {
            Some(c) => {
                let (last_seq, first_seq, counts) = anchors.open_counts(&c)?;
                if last_seq != head.last_seq || first_seq != tail.first_seq {
                    return Err(Error::tampered(
                        "the record counters do not belong to the log's current head and tail (an older copy was put back)",
                    ));
                }
                counts
            }
            None if require_head => {
                return Err(Error::tampered("the log's record counters are missing"))
            }
            None => {
                let mut counts = BTreeMap::new();
                for item in tree.scan_prefix([0x02u8]) {
                    let (k, v) = item?;
                    let epoch = u32::from_be_bytes(
                        k[1..]
                            .try_into()
                            .map_err(|_| Error::tampered("bad counter key"))?,
                    );
                    counts.insert(epoch, EpochCount::decode(&v)?);
                }
                counts
            }
        };
        let synced = match tree.get(SYNCED_KEY)? {
            Some(v) => Some(anchors.open_synced(&v)?),
            None => None,
        };
        let stored_bytes = AtomicU64::new(counts.values().map(|c| c.bytes).sum());
        let mut log = Log {
            tree,
            binding,
            anchors,
            stored_bytes,
            state: Mutex::new(LogState {
                head,
                tail,
                counts,
                failed: None,
                front_moved: true,
            }),
            segments,
            synced: Mutex::new(SyncedAnchor {
                last: synced.unwrap_or(0),
                unwritten: false,
            }),
            retired: AtomicBool::new(false),
            trimmed: None,
        };
        log.trimmed = log.trim_torn_tail(synced.map(|s| s.max(marked)), bound)?;
        log.check_ends()?;
        Ok(log)
    }

    /// Where record `seq`'s bytes are in the segments; `None` when the index has no such
    /// record (check_ends reports it) or holds its bytes itself (vaults before segments).
    fn in_segment(&self, seq: u64) -> Result<Option<Loc>> {
        Ok(match self.tree.get(record_key(seq))? {
            Some(v) => match Stored::parse(v)? {
                Stored::At(loc) => Some(loc),
                Stored::Inline(_) => None,
            },
            None => None,
        })
    }

    /// The records after the synced anchor from the oldest whose bytes cannot be read up
    /// to the head (none when every one reads back), and where the walk back goes on. A power
    /// loss need not lose the newest bytes only: the kernel writes a large record back
    /// at once (segments.rs) while smaller ones written before it wait, so a later
    /// write can be on disk and an earlier one not. The later ones cannot stay: their
    /// chain runs through the lost ones. Records after the synced anchor exist only
    /// after a crash, so a clean open reads none.
    fn after_oldest_loss(
        &self,
        first: u64,
        head: u64,
        synced: Option<u64>,
    ) -> Result<(Vec<(u64, Loc)>, u64)> {
        let mut unsynced: Vec<(u64, Loc)> = Vec::new();
        let mut oldest_loss = None;
        let mut k = head;
        while k >= first && k > 0 {
            let Some(loc) = self.in_segment(k)? else {
                break;
            };
            let Some(synced) = synced else {
                break; // the walk below reports it
            };
            if k <= synced {
                break;
            }
            // A file that cannot be read now fails the open: its bytes may be whole.
            if self.segments.read_or_lost(k, &loc)?.is_err() {
                oldest_loss = Some(unsynced.len());
            }
            unsynced.push((k, loc));
            k -= 1;
        }
        Ok(match oldest_loss {
            // Below the oldest loss: the rest of its write is torn too.
            Some(i) => {
                unsynced.truncate(i + 1);
                let below = unsynced[i].0 - 1;
                (unsynced, below)
            }
            None => (Vec::new(), head),
        })
    }

    /// Puts the segment files in order for appending: cuts bytes the index never took,
    /// writes the synced anchor, gives back the space of released records. Called once
    /// the log is known to belong with the stored state (an older copy of the log put
    /// back is refused before it can cut the segments the current log names).
    pub(crate) fn settle_segments(&self) -> Result<()> {
        let synced = self.synced.lock().unwrap_or_else(|p| p.into_inner()).last;
        self.trim_segments(synced)?;
        self.sync_segments()?;
        // What was opened is durable as it is.
        self.release_space(self.front())
    }

    /// Sets the size at which a new segment is begun, for the budget of the policy in
    /// force ([`segments::segment_bytes_for`]).
    pub(crate) fn set_segment_budget(&mut self, budget_bytes: u64) {
        self.segments
            .set_max_bytes(segments::segment_bytes_for(budget_bytes));
    }

    /// Records of a torn write removed at open, as how many and the first one's number
    /// (`None` normally).
    pub(crate) fn trimmed(&self) -> Option<(u64, u64)> {
        self.trimmed
    }

    /// The bytes of record `seq`, from sled (vaults before segments) or its segment.
    fn load<'a>(&self, seq: u64, stored: &'a Stored) -> Result<Cow<'a, [u8]>> {
        match stored {
            Stored::Inline(v) => Ok(Cow::Borrowed(v)),
            // A file that cannot be read now is the disk's or the process's trouble
            // (Storage), not damage.
            Stored::At(loc) => self
                .segments
                .read_or_lost(seq, loc)?
                .map(Cow::Owned)
                .map_err(|why| {
                    // After a failed sync the cache of that file was dropped: what the disk
                    // did not get reads back wrong, which is the disk's failure.
                    let what = format!("record {seq} cannot be read ({why})");
                    self.segments.sync_failure(&what).unwrap_or_else(|| {
                        tampered_at(seq, &format!("cannot be read: {why}; {DAMAGED_ADVICE}"))
                    })
                }),
        }
    }

    /// A crash can leave the index of the last writes durable without their segment
    /// bytes (sled writes on its own schedule; the segments are synced by the durable
    /// flush). Records after the synced anchor whose bytes are missing or damaged are
    /// such a torn tail: they are removed, with every later record and back to the
    /// start of their write, and the head and counters moved back. Up to the synced
    /// anchor the same finding is damage.
    fn trim_torn_tail(&self, synced: Option<u64>, bound: bool) -> Result<Option<(u64, u64)>> {
        let mut st = self.lock();
        let first = st.tail.first_seq;
        let (mut torn, mut k) = self.after_oldest_loss(first, st.head.last_seq, synced)?;
        while k >= first && k > 0 {
            let Some(loc) = self.in_segment(k)? else {
                break;
            };
            let Some(synced) = synced else {
                return Err(Error::tampered(
                    "the log's synced anchor is missing (it is written before the first record)",
                ));
            };
            let durable = k <= synced;
            match self.segments.read_or_lost(k, &loc)? {
                Err(why) if durable => {
                    return Err(tampered_at(
                        k,
                        &format!(
                        "cannot be read though a durable flush covered it: {why}; {DAMAGED_ADVICE}"
                    ),
                    ))
                }
                Err(_) => {}
                Ok(_) if torn.is_empty() || loc.flags & LOC_BATCH_END != 0 => break,
                Ok(_) if durable => {
                    return Err(tampered_at(
                        k,
                        "ends a durable write in the middle (a write's last record is missing)",
                    ))
                }
                Ok(_) => {}
            }
            torn.push((k, loc));
            k -= 1;
        }
        if torn.is_empty() {
            return Ok(None);
        }
        let last_tag = if k >= first {
            let v = self
                .tree
                .get(record_key(k))?
                .ok_or_else(|| tampered_at(k, "is missing"))?;
            tag_of(&self.load(k, &Stored::parse(v)?)?)
        } else {
            st.tail.prev_tag
        };
        let mut counts = st.counts.clone();
        let mut batch = sled::Batch::default();
        for (seq, loc) in &torn {
            let c = counts.entry(loc.epoch).or_default();
            c.records = c.records.saturating_sub(1);
            c.bytes = c.bytes.saturating_sub(u64::from(loc.len));
            batch.remove(&record_key(*seq));
        }
        counts.retain(|_, c| c.records > 0);
        // The events of the torn records are lost; their numbers are not reused.
        let head = Head {
            last_seq: k,
            last_tag,
            next_event_seq: st.head.next_event_seq,
            state_gen: st.head.state_gen,
        };
        // The head keeps the state generation it named: the stored state is unchanged.
        let sealed = if bound {
            self.anchors.seal_log_head(&head)
        } else {
            self.anchors.seal_head(&head)
        };
        batch.insert(HEAD_KEY, sealed);
        batch.insert(
            COUNTS_KEY,
            self.anchors.seal_counts(head.last_seq, first, &counts),
        );
        self.tree.apply_batch(batch)?;
        st.head = head;
        st.counts = counts;
        self.counted(&st);
        Ok(Some((torn.len() as u64, k + 1)))
    }

    /// Removes segment bytes the index does not name after the head (a write whose index
    /// never made it) and marks the segments written after the synced anchor for the
    /// next sync (their bytes may still be only in the page cache).
    fn trim_segments(&self, synced: u64) -> Result<()> {
        let st = self.lock();
        let at = |seq: u64| -> Result<Option<Loc>> {
            if seq < st.tail.first_seq || seq > st.head.last_seq {
                return Ok(None);
            }
            self.in_segment(seq)
        };
        match at(st.head.last_seq)? {
            Some(last) => {
                self.segments.continue_at(last.segment, last.end())?;
                // From the first live record after the anchor (the ones before it may
                // have left the front since); when that is not in a segment, every one.
                let first_unsynced = (synced + 1).max(st.tail.first_seq);
                let from = match at(first_unsynced)? {
                    Some(l) => l.segment,
                    None if first_unsynced > st.head.last_seq => last.segment,
                    None => 0,
                };
                for n in self.segments.numbers() {
                    if n >= from {
                        self.segments.touch(n);
                    }
                }
            }
            // No record in a segment: whatever the segments hold was never indexed, and
            // numbering starts again.
            None => {
                self.segments.release_before(None)?;
                self.segments.number_from(1);
            }
        }
        Ok(())
    }

    /// Before a durable flush of the index: fdatasync the segments written since the
    /// last one, then name the last record they hold in the synced anchor (written to
    /// sled, made durable by the flush that follows).
    pub(crate) fn sync_segments(&self) -> Result<()> {
        // An anchor named by an earlier sync goes in first: its bytes are durable whatever
        // this sync does, and a later flush of the index carries it even if this fails.
        self.put_named_synced()?;
        let last = self.sync_segment_bytes()?;
        self.name_synced(last).map(|_| ())
    }

    /// fdatasyncs the segments written since the last sync; returns the last record
    /// whose bytes are now durable (for [`Log::name_synced`]). It may run beside the
    /// index's own flush: only the synced anchor must wait for it.
    pub(crate) fn sync_segment_bytes(&self) -> Result<u64> {
        let last = self.lock().head.last_seq;
        self.segments.sync()?;
        Ok(last)
    }

    /// Names `last` in the synced anchor (in sled; a durable flush of the index makes it
    /// durable). Only after a [`Log::sync_segment_bytes`] that returned it. Returns
    /// whether the anchor changed.
    pub(crate) fn name_synced(&self, last: u64) -> Result<bool> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if self.retired.load(Ordering::Relaxed) {
            return Ok(false);
        }
        if last > synced.last || synced.unwritten || self.tree.get(SYNCED_KEY)?.is_none() {
            let last = last.max(synced.last);
            self.tree
                .insert(SYNCED_KEY, self.anchors.seal_synced(last))?;
            *synced = SyncedAnchor {
                last,
                unwritten: false,
            };
            return Ok(true);
        }
        Ok(false)
    }

    /// [`Log::name_synced`] for a sync that ran beside the index's flush: the anchor is
    /// put into sled by the next durable flush, before it flushes the index
    /// ([`Log::put_named_synced`]), rather than on its own now. Written now it would
    /// land in sled's buffer after that flush took it, and cost the next batch of
    /// records one more of sled's buffer writes (a device round trip) before its own.
    /// Returns whether the anchor moved.
    pub(crate) fn name_synced_later(&self, last: u64) -> bool {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if self.retired.load(Ordering::Relaxed) || last <= synced.last {
            return false;
        }
        *synced = SyncedAnchor {
            last,
            unwritten: true,
        };
        true
    }

    /// Before a durable flush of the index: puts the anchor named by
    /// [`Log::name_synced_later`] into sled, so that this flush makes it durable.
    pub(crate) fn put_named_synced(&self) -> Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if !synced.unwritten || self.retired.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.tree
            .insert(SYNCED_KEY, self.anchors.seal_synced(synced.last))?;
        synced.unwritten = false;
        Ok(())
    }

    /// Before the user's trees are cleared (erase): from now on nothing writes the
    /// synced anchor, which would leave an entry in the cleared tree.
    pub(crate) fn retire(&self) {
        let _synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        self.retired.store(true, Ordering::Relaxed);
    }

    /// The first live record: taken before a durable flush, it bounds what that flush
    /// made durable the removal of ([`Log::release_space`]).
    pub(crate) fn front(&self) -> u64 {
        self.lock().tail.first_seq
    }

    /// After a durable flush that began when the first live record was `front`: gives
    /// back the space of records before it (whole segments deleted, the dead front of
    /// the first live one punched out). Only what that flush covered: records removed
    /// since (an acknowledgement on another thread) wait for the flush that covers
    /// their removal, so a crash never finds the index naming deleted bytes.
    pub(crate) fn release_space(&self, front: u64) -> Result<()> {
        let mut st = self.lock();
        // After a failed write the tree may hold part of a removal: the space waits for
        // the reopened log (which gives it back at open).
        if !st.front_moved || st.failed.is_some() {
            return Ok(());
        }
        let front = front.min(st.tail.first_seq);
        let result = if front > st.head.last_seq {
            self.segments.release_before(None)
        } else {
            match self.tree.get(record_key(front))? {
                Some(v) => match Stored::parse(v)? {
                    Stored::At(l) => self.segments.release_before(Some(&l)),
                    // Records of a vault before segments come first: nothing to give back.
                    Stored::Inline(_) => Ok(()),
                },
                None => Ok(()),
            }
        };
        st.front_moved = result.is_err() || st.tail.first_seq > front;
        result
    }

    /// Bytes the log's records take on disk: their segments (headers and a dead front
    /// not yet given back included), or the records' own size where that is larger
    /// (records of a vault before segments are inside the database).
    /// Takes no lock: the budget check of every append reads it, and a durable flush
    /// holds the segments' lock across its fdatasync.
    pub(crate) fn disk_bytes(&self) -> u64 {
        let stored = self.stored_bytes.load(Ordering::Relaxed);
        self.segments.bytes().max(stored)
    }

    /// Publishes the counters' byte total for [`Log::disk_bytes`]; called with the lock
    /// held after every change to `st.counts`.
    fn counted(&self, st: &LogState) {
        self.stored_bytes.store(st.bytes(), Ordering::Relaxed);
    }

    fn check_ends(&self) -> Result<()> {
        let st = self.lock();
        let last = self.tree.range(record_keys()).next_back().transpose()?;
        let first = self.tree.range(record_keys()).next().transpose()?;
        match (first, last) {
            (None, None) => {
                if st.head.last_seq + 1 != st.tail.first_seq {
                    return Err(Error::tampered(format!(
                        "the head anchor names record {} but the log holds no records",
                        st.head.last_seq
                    )));
                }
            }
            (Some((fk, _)), Some((lk, lv))) => {
                let first_seq = seq_of_key(&fk).unwrap_or(0);
                let last_seq = seq_of_key(&lk).unwrap_or(0);
                if last_seq != st.head.last_seq
                    || tag_of(&self.load(last_seq, &Stored::parse(lv)?)?) != st.head.last_tag
                {
                    return Err(Error::tampered(format!(
                        "the head anchor (record {}) does not match the last record ({last_seq}): the log was truncated, extended or rolled back",
                        st.head.last_seq
                    )));
                }
                if first_seq != st.tail.first_seq {
                    return Err(Error::tampered(format!(
                        "the tail anchor (record {}) does not match the first record ({first_seq}): records were removed or added at the start",
                        st.tail.first_seq
                    )));
                }
            }
            _ => return Err(Error::tampered("the log's record range is inconsistent")),
        }
        Ok(())
    }

    /// Carries a log over from before its counters were authenticated and heads were
    /// required: writes the head (if missing) and the counters anchor, and removes the
    /// old unauthenticated counters, in one batch.
    pub(crate) fn upgrade(&self) -> Result<()> {
        let st = self.lock();
        let mut batch = sled::Batch::default();
        batch.insert(HEAD_KEY, self.anchors.seal_log_head(&st.head));
        batch.insert(
            COUNTS_KEY,
            self.anchors
                .seal_counts(st.head.last_seq, st.tail.first_seq, &st.counts),
        );
        for key in self.tree.scan_prefix([0x02u8]).keys() {
            batch.remove(key?);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses to go on after a failed write. sled applies a transaction's writes one by
    /// one, in no fixed order, and a full disk can stop it part way, so its in-memory
    /// tree may then hold any part of the batch (records without the head anchor that
    /// names them, or a head without some of its records; for a removal, a hole at the
    /// tail). It also refuses every later write on that handle. What is durable is
    /// consistent (sled recovers a batch whole or not at all), so the log answers with
    /// this error until the vault is reopened, rather than read or extend a tree that
    /// would look tampered with.
    fn usable(st: &LogState) -> Result<()> {
        match &st.failed {
            None => Ok(()),
            Some(e) => {
                let why = format!(
                    "a write to the vault's database failed ({e}); nothing flushed is lost; \
                     free disk space if it is full, then close and reopen the vault"
                );
                Err(match e {
                    Error::StorageFull(_) => Error::StorageFull(why),
                    _ => Error::Storage(why),
                })
            }
        }
    }

    /// Records a failed write (see [`Log::usable`]) and returns its error.
    fn failed(st: &mut LogState, e: Error) -> Error {
        if matches!(e, Error::Storage(_) | Error::StorageFull(_)) && st.failed.is_none() {
            st.failed = Some(e.clone());
        }
        e
    }

    /// Binds a log whose head predates the binding to stored-state generation `gen`
    /// (the carry-over, docs/FORMAT.md section 12).
    pub(crate) fn bind(&self, gen: u64) -> Result<()> {
        let mut st = self.lock();
        let head = Head {
            state_gen: gen,
            ..st.head
        };
        self.tree
            .insert(HEAD_KEY, self.anchors.seal_log_head(&head))?;
        st.head = head;
        Ok(())
    }

    /// The log tree and the sealed form of `head`, for a state write's transaction.
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(crate) fn sealed_head(&self, head: &Head) -> sled::IVec {
        self.anchors.seal_log_head(head).into()
    }

    /// The last record of the stored head and the first of the stored tail, read from
    /// the tree, for `verify`.
    pub(crate) fn stored_ends(&self) -> Result<(u64, u64)> {
        let stored = self
            .tree
            .get(HEAD_KEY)?
            .ok_or_else(|| Error::tampered("the log has no head anchor (the log was wiped)"))?;
        let (head, _) = self.anchors.open_log_head(&stored)?;
        let tail = match self.tree.get(TAIL_KEY)? {
            Some(t) => self.anchors.open_tail(&t)?,
            None => Tail::default(),
        };
        Ok((head.last_seq, tail.first_seq))
    }

    /// The state generation the stored head names (`None`: an unbound head), read
    /// from the tree, for `verify`.
    pub(crate) fn stored_state_gen(&self) -> Result<Option<u64>> {
        let stored = self
            .tree
            .get(HEAD_KEY)?
            .ok_or_else(|| Error::tampered("the log has no head anchor (the log was wiped)"))?;
        let (head, bound) = self.anchors.open_log_head(&stored)?;
        Ok(bound.then_some(head.state_gen))
    }

    /// Seals `jobs` as the records after `head` under the DEK of `epoch`, counting them
    /// into `count`, and writes them to the segments as they are sealed (a large batch's
    /// first bytes go to the disk while the rest of it is sealed). Returns the new head,
    /// the records' index entries and the write (to undo if the index write fails).
    fn seal_and_write(
        &self,
        jobs: &mut [Job],
        head: &Head,
        (epoch, dek): (u32, &capvault_format::secret::Key32),
        purpose_of: &dyn Fn(u32) -> Result<String>,
        now_us: i64,
        count: &mut EpochCount,
    ) -> Result<SealedWrite> {
        // Looked up before the segments' lock is taken: no other lock is taken under it.
        let mut purposes: BTreeMap<u32, String> = BTreeMap::new();
        for job in jobs.iter() {
            if let std::collections::btree_map::Entry::Vacant(slot) =
                purposes.entry(job.policy_version)
            {
                slot.insert(purpose_of(job.policy_version)?);
            }
        }
        crate::failpoint::hit("segments:before-write")?;
        let mut appending = self.segments.begin(epoch)?;
        let mut seq = head.last_seq;
        let mut prev = head.last_tag;
        for job in jobs.iter_mut() {
            seq += 1;
            let header = RecordHeader {
                kind: job.kind,
                flags: job.flags,
                epoch,
                policy_version: job.policy_version,
                created_us: now_us,
            };
            let purpose = &purposes[&job.policy_version];
            let nonce = crate::aead::new_nonce();
            let len = match &mut job.plaintext {
                Plaintext::Owned(plaintext) => appending.push_with(seq, |out| {
                    prev = self
                        .binding
                        .seal_onto(out, seq, &header, &prev, purpose, dek, plaintext, &nonce);
                })?,
                // Sealed where it lies and written from there: not copied.
                Plaintext::Chunk(chunk) => {
                    let mut prefix = [0u8; PREFIX_LEN];
                    let sealed = chunk.seal(|body| {
                        let (p, opener) = self
                            .binding
                            .seal_in_place(seq, &header, &prev, purpose, dek, body, &nonce);
                        prefix = p;
                        prev = opener.tag;
                        opener
                    })?;
                    appending.push_sealed(seq, &prefix, sealed, &prev)?
                }
            };
            count.records += 1;
            count.bytes += u64::from(len);
        }
        let head = Head {
            last_seq: seq,
            last_tag: prev,
            next_event_seq: jobs.last().map_or(head.next_event_seq, |j| j.end_event_seq),
            state_gen: head.state_gen,
        };
        let (locs, written) = appending.finish()?;
        if let Err(e) = crate::failpoint::hit("segments:after-write") {
            self.segments.undo(written);
            return Err(e);
        }
        let first_seq = head.last_seq + 1 - locs.len() as u64;
        let entries = locs
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    sled::IVec::from(&record_key(first_seq + i as u64)[..]),
                    sled::IVec::from(&l.encode()[..]),
                )
            })
            .collect();
        Ok(SealedWrite {
            head,
            entries,
            written,
        })
    }

    /// Drops the records of a large batch once stored off the writer thread (it seals the
    /// next batch meanwhile): their frames are wiped, and the payload buffers their
    /// chunks were sealed in, which hold ciphertext only, go back to the allocator.
    pub(crate) fn drop_stored(&self, jobs: Vec<Job>) {
        self.segments.drop_behind(jobs);
    }

    /// Encrypts `jobs` under the current epoch, appends their bytes to the segments, and
    /// stores their locations with the new head anchor and counters in one batch that
    /// replaces no record. A failed segment write takes its bytes back and changes
    /// nothing else; a failed index write takes the segment bytes back too, and leaves
    /// the log refusing until reopened. After a failure `jobs` hold their plaintext again
    /// (see [`chunk`]), to be tried again.
    pub(crate) fn append(
        &self,
        jobs: &mut [Job],
        keys: &KeyHierarchy,
        purpose_of: &dyn Fn(u32) -> Result<String>,
        now_us: i64,
    ) -> Result<()> {
        let result = self.seal_and_store(jobs, keys, purpose_of, now_us);
        if result.is_err() {
            for job in jobs.iter_mut() {
                if let Plaintext::Chunk(chunk) = &mut job.plaintext {
                    chunk.unseal(|epoch| keys.dek(epoch));
                }
            }
        }
        result
    }

    fn seal_and_store(
        &self,
        jobs: &mut [Job],
        keys: &KeyHierarchy,
        purpose_of: &dyn Fn(u32) -> Result<String>,
        now_us: i64,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let (epoch, dek) = keys.current();
        let mut st = self.lock();
        Self::usable(&st)?;
        let mut count = st.counts.get(&epoch).copied().unwrap_or_default();
        let SealedWrite {
            head,
            entries,
            written,
        } = self.seal_and_write(jobs, &st.head, (epoch, dek), purpose_of, now_us, &mut count)?;
        let head_bytes = sled::IVec::from(self.anchors.seal_log_head(&head));
        let mut counts = st.counts.clone();
        counts.insert(epoch, count);
        let mut batch = sled::Batch::default();
        for (k, v) in entries {
            // Records are never replaced. Every write to the log tree holds the log's
            // lock, so a slot free now is free when the batch lands.
            match self.tree.get(&k) {
                Ok(None) => {}
                Ok(Some(_)) => {
                    self.segments.undo(written);
                    return Err(store::slot_taken());
                }
                Err(e) => {
                    self.segments.undo(written);
                    return Err(e.into());
                }
            }
            batch.insert(k, v);
        }
        batch.insert(HEAD_KEY, head_bytes);
        batch.insert(
            COUNTS_KEY,
            self.anchors
                .seal_counts(head.last_seq, st.tail.first_seq, &counts),
        );
        if let Err(e) = self.tree.apply_batch(batch) {
            // The segment bytes are cut back; the tree may hold any part of the batch,
            // so the log refuses until reopened (see `Log::usable`).
            self.segments.undo(written);
            return Err(Self::failed(&mut st, e.into()));
        }
        st.head = head;
        st.counts.insert(epoch, count);
        self.counted(&st);
        Ok(())
    }

    /// Reads records `from..=to` (clamped to the live range), checking the chain from
    /// the tail. Calls `f` for each; stops early when `f` returns false.
    pub(crate) fn read(
        &self,
        keys: &KeyHierarchy,
        purpose_of: &dyn Fn(u32) -> Result<String>,
        to: u64,
        f: &mut dyn FnMut(ReadRecord) -> Result<bool>,
    ) -> Result<()> {
        let (tail, head) = {
            let st = self.lock();
            Self::usable(&st)?;
            (st.tail, st.head)
        };
        let to = to.min(head.last_seq);
        let mut prev: [u8; TAG_LEN] = tail.prev_tag;
        let mut expect = tail.first_seq;
        for item in self
            .tree
            .range(record_key(tail.first_seq)..=record_key(to.max(tail.first_seq)))
        {
            let (k, v) = item?;
            let seq = seq_of_key(&k).ok_or_else(|| Error::tampered("a record key is malformed"))?;
            if seq != expect {
                return Err(tampered_at(expect, "is missing (a record was deleted)"));
            }
            let stored =
                Stored::parse(v).map_err(|_| tampered_at(seq, "has a malformed location"))?;
            let v = self.load(seq, &stored)?;
            let header =
                RecordHeader::parse(&v).map_err(|_| tampered_at(seq, "has a damaged header"))?;
            let dek = keys
                .dek(header.epoch)
                .ok_or_else(|| tampered_at(seq, "names a data key that does not exist"))?;
            let purpose = purpose_of(header.policy_version)
                .map_err(|_| tampered_at(seq, "names an unknown policy version"))?;
            let plaintext = self
                .binding
                .open(seq, &v, &prev, &purpose, dek)
                .map_err(|_| tampered_at(seq, "does not authenticate (modified, moved, replayed or from another vault or user)"))?;
            prev = tag_of(&v);
            expect = seq + 1;
            if !f(ReadRecord {
                seq,
                header,
                stored_len: v.len(),
                plaintext,
            })? {
                return Ok(());
            }
        }
        if to >= tail.first_seq && expect != to + 1 {
            return Err(tampered_at(expect, "is missing at the end of the log"));
        }
        if expect == head.last_seq + 1 && head.last_seq >= tail.first_seq && prev != head.last_tag {
            return Err(Error::tampered(
                "the last record does not match the head anchor",
            ));
        }
        Ok(())
    }

    /// Walks the whole log: anchors, chain, every record and every event.
    pub(crate) fn verify(
        &self,
        keys: &KeyHierarchy,
        purpose_of: &dyn Fn(u32) -> Result<String>,
    ) -> Result<VerifyReport> {
        Self::usable(&self.lock())?;
        self.check_ends()?;
        let (tail, head) = {
            let st = self.lock();
            (st.tail, st.head)
        };
        // Keys outside the live range would be records added behind the anchors' back.
        // An error ends the walk: sled's iterator yields an unreadable page's error
        // again on every call, so skipping errors would never end.
        for k in self.tree.range(record_keys()).keys() {
            if let Some(s) = seq_of_key(&k?) {
                if s < tail.first_seq || s > head.last_seq {
                    return Err(Error::tampered("a record lies outside the anchored range"));
                }
            }
        }
        let mut report = VerifyReport::default();
        let mut asm = assemble::Assembler::default();
        let mut events = Vec::new();
        let mut per_epoch: BTreeMap<u32, EpochCount> = BTreeMap::new();
        self.read(keys, purpose_of, u64::MAX, &mut |r| {
            if report.records == 0 {
                report.first_seq = r.seq;
            }
            report.records += 1;
            report.last_seq = r.seq;
            report.bytes += r.stored_len as u64;
            let c = per_epoch.entry(r.header.epoch).or_default();
            c.records += 1;
            c.bytes += r.stored_len as u64;
            asm.feed(&r.header, r.plaintext, &mut events)
                .map_err(|e| Error::tampered(format!("record {}: {e}", r.seq)))?;
            report.events += events.len() as u64;
            // Decoded events are plaintext: wiped, not just dropped.
            for e in &mut events {
                e.event.wipe();
            }
            events.clear();
            Ok(true)
        })?;
        if !asm.at_boundary() {
            return Err(Error::tampered("the log ends inside a chunked payload"));
        }
        let stored: BTreeMap<u32, EpochCount> = self
            .lock()
            .counts
            .iter()
            .filter(|(_, c)| c.records > 0)
            .map(|(e, c)| (*e, *c))
            .collect();
        if stored != per_epoch {
            return Err(Error::tampered(
                "the per-epoch record counters do not match the records",
            ));
        }
        Ok(report)
    }

    /// The records from the tail through `last`: their keys, the per-epoch counts once
    /// they are gone, and the tag the new tail chains from.
    fn scan_tail_through(&self, st: &LogState, last: u64) -> Result<TailScan> {
        let mut keys = Vec::new();
        let mut counts = st.counts.clone();
        let mut newest = None;
        for item in self
            .tree
            .range(record_key(st.tail.first_seq)..=record_key(last))
        {
            let (k, v) = item?;
            let seq = seq_of_key(&k).ok_or_else(|| Error::tampered("a record key is malformed"))?;
            let stored = Stored::parse(v)?;
            let epoch = match &stored {
                Stored::Inline(v) => RecordHeader::parse(v)?.epoch,
                Stored::At(l) => l.epoch,
            };
            let c = counts.entry(epoch).or_default();
            c.records = c.records.saturating_sub(1);
            c.bytes = c.bytes.saturating_sub(stored.len() as u64);
            keys.push(k);
            newest = Some((seq, stored));
        }
        let prev_tag = match newest {
            Some((seq, stored)) => tag_of(&self.load(seq, &stored)?),
            None => st.tail.prev_tag,
        };
        Ok((keys, counts, prev_tag))
    }

    /// Removes records from the tail through `last` (inclusive), moving the tail anchor.
    pub(crate) fn prune_through(&self, last: u64) -> Result<()> {
        let mut st = self.lock();
        Self::usable(&st)?;
        if last < st.tail.first_seq {
            return Ok(());
        }
        if last > st.head.last_seq {
            return Err(Error::invalid("cannot prune past the head of the log"));
        }
        let mut batch = sled::Batch::default();
        let (keys, mut counts, prev_tag) = self.scan_tail_through(&st, last)?;
        for k in keys {
            batch.remove(k);
        }
        let tail = Tail {
            first_seq: last + 1,
            prev_tag,
        };
        batch.insert(TAIL_KEY, self.anchors.seal_tail(&tail));
        batch.insert(
            COUNTS_KEY,
            self.anchors
                .seal_counts(st.head.last_seq, tail.first_seq, &counts),
        );
        crate::failpoint::hit("prune:before-batch")?;
        if let Err(e) = self.tree.apply_batch(batch) {
            return Err(Self::failed(&mut st, e.into()));
        }
        counts.retain(|_, c| c.records > 0);
        st.counts = counts;
        st.tail = tail;
        st.front_moved = true;
        self.counted(&st);
        Ok(())
    }

    /// Removes records from the tail through `last` and appends `jobs` (the loss marker
    /// of the removal) after the head. `commit` writes these log changes and the new
    /// head in one transaction with the release state that counts the removed records
    /// (a crash leaves either none or all of it), and returns the state generation the
    /// head now names. `jobs` are not tried again after a failure (the caller gives their
    /// event numbers back).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn evict_through(
        &self,
        last: u64,
        jobs: &mut [Job],
        keys: &KeyHierarchy,
        purpose_of: &dyn Fn(u32) -> Result<String>,
        now_us: i64,
        commit: &dyn Fn(HeadWrite<'_>) -> Result<u64>,
    ) -> Result<()> {
        let mut st = self.lock();
        Self::usable(&st)?;
        if last < st.tail.first_seq || last > st.head.last_seq {
            return Err(Error::invalid("eviction outside the live range of the log"));
        }
        let (removed, mut counts, prev_tag) = self.scan_tail_through(&st, last)?;
        let tail = Tail {
            first_seq: last + 1,
            prev_tag,
        };
        let mut ops = crate::vault::TreeOps {
            removes: removed,
            ..Default::default()
        };
        ops.inserts
            .push((TAIL_KEY.into(), self.anchors.seal_tail(&tail).into()));
        // The marker records, sealed after the head, their bytes in the segments first.
        let mut head = st.head;
        let mut written = None;
        if !jobs.is_empty() {
            let (epoch, dek) = keys.current();
            let c = counts.entry(epoch).or_default();
            let SealedWrite {
                head: new_head,
                entries,
                written: w,
            } = self.seal_and_write(jobs, &head, (epoch, dek), purpose_of, now_us, c)?;
            // Inserted only where no record is (the commit refuses to replace one); the
            // head goes in with the state generation the commit writes.
            ops.fresh.extend(entries);
            written = Some(w);
            head = new_head;
        }
        ops.inserts.push((
            COUNTS_KEY.into(),
            self.anchors
                .seal_counts(head.last_seq, tail.first_seq, &counts)
                .into(),
        ));
        let undo = |written: Option<segments::Written>| {
            if let Some(w) = written {
                self.segments.undo(w);
            }
        };
        if let Err(e) = crate::failpoint::hit("prune:before-batch") {
            undo(written);
            return Err(e);
        }
        let state_gen = match commit(HeadWrite {
            log: self,
            head,
            ops: Some(&ops),
        }) {
            Ok(gen) => gen,
            Err(e) => {
                undo(written);
                return Err(Self::failed(&mut st, e));
            }
        };
        counts.retain(|_, c| c.records > 0);
        st.counts = counts;
        st.tail = tail;
        st.head = Head { state_gen, ..head };
        st.front_moved = true;
        self.counted(&st);
        Ok(())
    }

    /// Drops the counters of `epochs`, which have no record left (they are older than
    /// the first live record's): a count a trim misled by an edited location left there
    /// would otherwise ask, at every open, for the key their retirement destroys.
    pub(crate) fn forget_epochs(&self, epochs: &[u32]) -> Result<()> {
        let mut st = self.lock();
        Self::usable(&st)?;
        if !epochs.iter().any(|e| st.counts.contains_key(e)) {
            return Ok(());
        }
        let mut counts = st.counts.clone();
        counts.retain(|e, _| !epochs.contains(e));
        let sealed = self
            .anchors
            .seal_counts(st.head.last_seq, st.tail.first_seq, &counts);
        if let Err(e) = self.tree.insert(COUNTS_KEY, sealed) {
            return Err(Self::failed(&mut st, e.into()));
        }
        st.counts = counts;
        self.counted(&st);
        Ok(())
    }

    /// Epochs that still have records.
    pub(crate) fn live_epochs(&self) -> BTreeSet<u32> {
        self.lock()
            .counts
            .iter()
            .filter(|(_, c)| c.records > 0)
            .map(|(e, _)| *e)
            .collect()
    }
}
