//! The audit ledger: every open, seal, ack, rotation, pause/resume, policy change,
//! erase and subject-access read, chained and encrypted like the capture log.
//!
//! Entries are sealed with a key derived from the user's anchor MAC key (so they outlive
//! data-key epochs and die with the KEK at erase), chained by tag, and anchored by a
//! MAC'd head so deleting or editing an entry is detected. The head's third field (the
//! event counter in a log head) carries the generation of the user's stored state, so
//! the state and the ledger vouch for each other (src/vault/state.rs).
//!
//! The ledger grows with every bundle, so the device keeps the newest [`LEDGER_KEEP`]
//! entries and drops older ones once they were released in an acknowledged bundle (the
//! collector holds them); a MAC'd tail anchor says where the kept chain starts.

use std::sync::Mutex;

use crate::aead::TAG_LEN;
use crate::error::{Error, Result};
use crate::log::anchor::{AnchorKey, Head, Tail};
use crate::log::record::{tag_of, RecordBinding, RecordHeader, RecordKind};
use crate::log::store::{record_key, record_keys, seq_of_key, HEAD_KEY, TAIL_KEY};
use capvault_format::secret::Key32;

pub use capvault_format::AuditEntry;

/// Ledger entries reuse the record layout with this purpose string.
const LEDGER_PURPOSE: &str = "capvault-ledger";

/// Entries kept on the device: the newest 10,000 (a few MB, days to weeks of a busy
/// agent's seals and acks). Older ones go once released in an acknowledged bundle;
/// entries not yet released are never pruned.
pub(crate) const LEDGER_KEEP: u64 = 10_000;

/// Entries one prune removes at most, so that an acknowledgement stays short when a
/// ledger from before pruning has a long history to shed; later acks go on.
const PRUNE_AT_ONCE: u64 = 1_000;

pub(crate) struct Ledger {
    tree: sled::Tree,
    binding: RecordBinding,
    anchors: AnchorKey,
    key: Key32,
    head: Mutex<Head>,
    /// Where the kept chain starts (entry 1 until the first prune).
    tail: Mutex<Tail>,
    /// Why the last prune after an acknowledgement failed (shown in `status`).
    prune_problem: Mutex<Option<String>>,
}

/// The key of the ledger's head anchor.
pub(crate) fn anchor_key(mac_key: &Key32, vault_id: &[u8; 16], user: &str) -> AnchorKey {
    AnchorKey::with_label(b"capvault-ledger-anchor-v1", mac_key, vault_id, user)
}

/// The ledger's stored tail anchor (entry 1 and a zero tag before the first prune).
fn stored_tail(tree: &sled::Tree, anchors: &AnchorKey) -> Result<Tail> {
    match tree.get(TAIL_KEY)? {
        Some(t) => anchors.open_tail(&t),
        None => Ok(Tail::default()),
    }
}

fn derive_ledger_key(mac_key: &Key32) -> Key32 {
    crate::keys::hierarchy::derive_subkey(mac_key, b"capvault-ledger-key-v1", b"ledger")
}

/// The authenticated plaintext of ledger entry `seq`, decoded; it must name its own
/// position.
pub(crate) fn decode_entry(seq: u64, plain: &[u8]) -> Result<AuditEntry> {
    let entry: AuditEntry = serde_json::from_slice(plain)
        .map_err(|_| Error::tampered(format!("audit ledger entry {seq} does not decode")))?;
    if entry.seq != seq {
        return Err(Error::tampered(format!(
            "audit ledger entry {seq} names another position"
        )));
    }
    Ok(entry)
}

/// The plaintext [`Ledger::record`] seals for `entry`.
pub(crate) fn encode_entry(entry: &AuditEntry) -> zeroize::Zeroizing<Vec<u8>> {
    zeroize::Zeroizing::new(serde_json::to_vec(entry).expect("entry serializes"))
}

impl Ledger {
    /// Opens the ledger. With `require_head` (stored state authenticated) a missing head
    /// means the ledger was wiped.
    pub(crate) fn open(
        tree: sled::Tree,
        mac_key: &Key32,
        vault_id: &[u8; 16],
        user: &str,
        require_head: bool,
    ) -> Result<Ledger> {
        let mut label_user = String::from(user);
        label_user.push_str("\u{0}ledger");
        let binding = RecordBinding::new(vault_id, &label_user);
        let anchors = anchor_key(mac_key, vault_id, user);
        let head = match tree.get(HEAD_KEY)? {
            Some(h) => anchors.open_head(&h)?,
            None if require_head => {
                return Err(Error::tampered(
                    "the audit ledger has no head anchor (the ledger was wiped)",
                ))
            }
            None => Head::default(),
        };
        let tail = stored_tail(&tree, &anchors)?;
        let last = tree.range(record_keys()).next_back().transpose()?;
        let consistent = match &last {
            None => head.last_seq + 1 == tail.first_seq && head.last_tag == tail.prev_tag,
            Some((k, v)) => seq_of_key(k) == Some(head.last_seq) && tag_of(v) == head.last_tag,
        };
        if !consistent {
            return Err(Error::tampered("the audit ledger does not match its head anchor (entries were removed or rolled back)"));
        }
        let first = tree.range(record_keys()).next().transpose()?;
        if let Some((k, _)) = first {
            if seq_of_key(&k) != Some(tail.first_seq) {
                return Err(Error::tampered(format!(
                    "the audit ledger does not start at its tail anchor (entry {} was removed)",
                    tail.first_seq
                )));
            }
        }
        Ok(Ledger {
            tree,
            binding,
            anchors,
            key: derive_ledger_key(mac_key),
            head: Mutex::new(head),
            tail: Mutex::new(tail),
            prune_problem: Mutex::new(None),
        })
    }

    /// Appends an entry (durable at the next vault flush).
    pub(crate) fn record(&self, ts_us: i64, action: &str, detail: &str) -> Result<u64> {
        let mut head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let seq = head.last_seq + 1;
        let entry = AuditEntry {
            seq,
            ts_us,
            action: action.into(),
            detail: detail.into(),
        };
        let plain = encode_entry(&entry);
        let header = RecordHeader {
            kind: RecordKind::Frame,
            flags: 0,
            epoch: 0,
            policy_version: 0,
            created_us: ts_us,
        };
        let value = self.binding.seal(
            seq,
            &header,
            &head.last_tag,
            LEDGER_PURPOSE,
            &self.key,
            &plain,
        );
        let new_head = Head {
            last_seq: seq,
            last_tag: tag_of(&value),
            next_event_seq: head.next_event_seq,
            state_gen: 0,
        };
        let mut batch = sled::Batch::default();
        batch.insert(&record_key(seq), value);
        batch.insert(HEAD_KEY, self.anchors.seal_head(&new_head));
        self.tree.apply_batch(batch)?;
        *head = new_head;
        Ok(seq)
    }

    /// Entries with `seq > after` that the device keeps, checked against the head
    /// anchor: the chain is authenticated from the entry `after` on (its tag is what the
    /// next entry's associated data binds), so a seal reads only what it releases.
    pub(crate) fn read_after(&self, after: u64) -> Result<Vec<AuditEntry>> {
        // Held throughout, so that a prune cannot remove what is being read.
        let tail = self.lock_tail();
        let mut out = Vec::new();
        if after < tail.first_seq {
            self.walk(tail.first_seq, tail.prev_tag, |e| out.push(e))?;
        } else if after <= self.last_seq() {
            // Recorded (the entry goes in before the head moves), so it must be there.
            let prev = self
                .tree
                .get(record_key(after))?
                .ok_or_else(|| Error::tampered(format!("audit ledger entry {after} is missing")))?;
            self.walk(after + 1, tag_of(&prev), |e| out.push(e))?;
        }
        Ok(out)
    }

    /// Checks every kept entry, from the tail anchor to the head anchor.
    pub(crate) fn check_chain(&self) -> Result<()> {
        let tail = self.lock_tail();
        // The stored anchor, not only the one this handle holds.
        let stored = stored_tail(&self.tree, &self.anchors)?;
        if stored != *tail {
            return Err(Error::tampered(format!(
                "the audit ledger's tail anchor names entry {} where this vault's ledger starts at {} (the anchor was removed or replaced)",
                stored.first_seq, tail.first_seq
            )));
        }
        self.walk(tail.first_seq, tail.prev_tag, |_| {})
    }

    /// Opens entries `from..` in order, the first chained to `prev`, and checks that
    /// they end at the head anchor (as it stands when the walk starts: entries recorded
    /// meanwhile are not read). The caller holds the tail lock.
    fn walk(&self, from: u64, prev: [u8; TAG_LEN], mut each: impl FnMut(AuditEntry)) -> Result<()> {
        let head = *self.head.lock().unwrap_or_else(|p| p.into_inner());
        let last_tag = self.open_run(from, head.last_seq, prev, |_, e| each(e))?;
        if last_tag != head.last_tag {
            return Err(Error::tampered(
                "the audit ledger does not end at its head anchor",
            ));
        }
        Ok(())
    }

    /// Opens entries `from..=to`, the first chained to `prev`: every one must be there,
    /// in order, and authenticate. Gives each its key and entry; returns the last tag
    /// (`prev` when the run is empty, `from > to`).
    fn open_run(
        &self,
        from: u64,
        to: u64,
        mut prev: [u8; TAG_LEN],
        mut each: impl FnMut(sled::IVec, AuditEntry),
    ) -> Result<[u8; TAG_LEN]> {
        let mut expect = from;
        // A range must not be inverted.
        let entries = (from <= to)
            .then(|| self.tree.range(record_key(from)..=record_key(to)))
            .into_iter()
            .flatten();
        for item in entries {
            let (k, v) = item?;
            if seq_of_key(&k) != Some(expect) {
                return Err(Error::tampered(format!(
                    "audit ledger entry {expect} is missing"
                )));
            }
            let plain = self
                .binding
                .open(expect, &v, &prev, LEDGER_PURPOSE, &self.key)
                .map_err(|_| {
                    Error::tampered(format!("audit ledger entry {expect} does not authenticate"))
                })?;
            each(k, decode_entry(expect, &plain)?);
            prev = tag_of(&v);
            expect += 1;
        }
        if expect <= to {
            return Err(Error::tampered(format!(
                "audit ledger entry {expect} is missing"
            )));
        }
        Ok(prev)
    }

    /// Removes the oldest entries up to `released` (entries released in an acknowledged
    /// bundle), keeping the newest `keep`, at most [`PRUNE_AT_ONCE`] of them per call.
    /// Each one is authenticated before it goes; the new tail anchor goes in the same
    /// batch. Returns how many were removed.
    pub(crate) fn prune(&self, released: u64, keep: u64) -> Result<u64> {
        // Lock order: tail, then head (as readers take them).
        let mut tail = self.lock_tail();
        let head = self.head.lock().unwrap_or_else(|p| p.into_inner());
        let through = released
            .min(head.last_seq.saturating_sub(keep.max(1)))
            .min(tail.first_seq.saturating_add(PRUNE_AT_ONCE - 1));
        if through < tail.first_seq {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        let prev_tag = self.open_run(tail.first_seq, through, tail.prev_tag, |k, _| {
            batch.remove(k)
        })?;
        let new_tail = Tail {
            first_seq: through + 1,
            prev_tag,
        };
        batch.insert(TAIL_KEY, self.anchors.seal_tail(&new_tail));
        if let Err(e) = self.tree.apply_batch(batch) {
            // sled can apply a batch in memory and fail only to log it: follow the tree.
            if let Ok(t) = stored_tail(&self.tree, &self.anchors) {
                *tail = t;
            }
            return Err(e.into());
        }
        let removed = new_tail.first_seq - tail.first_seq;
        *tail = new_tail;
        Ok(removed)
    }

    /// Prunes what an acknowledgement released ([`LEDGER_KEEP`] kept). A failure is kept
    /// for `status` until a later prune succeeds; the entries stay, and `verify` and
    /// `audit` report a ledger that does not authenticate.
    pub(crate) fn prune_released(&self, released: u64) {
        let problem = self
            .prune(released, LEDGER_KEEP)
            .err()
            .map(|e| format!("pruning the audit ledger: {e}"));
        *self.prune_problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// The failure of the last prune after an acknowledgement, if it failed.
    pub(crate) fn prune_problem(&self) -> Option<String> {
        self.prune_problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Entries released and pruned from the device (the oldest ones, `1..=n`).
    pub(crate) fn pruned(&self) -> u64 {
        self.lock_tail().first_seq - 1
    }

    fn lock_tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation of the stored state this ledger names (the third field of a
    /// ledger head, `next_event_seq` in a log head; `state_gen` is a log head's own).
    #[allow(clippy::misnamed_getters)]
    pub(crate) fn state_gen(&self) -> u64 {
        self.lock_head().next_event_seq
    }

    /// The generation of the stored state the ledger's stored head names, read from the
    /// tree, for `verify`.
    pub(crate) fn stored_state_gen(&self) -> Result<u64> {
        let stored = self.tree.get(HEAD_KEY)?.ok_or_else(|| {
            Error::tampered("the audit ledger has no head anchor (the ledger was wiped)")
        })?;
        Ok(self.anchors.open_head(&stored)?.next_event_seq)
    }

    /// The last entry the ledger's stored head names, read from the tree, for `verify`.
    pub(crate) fn stored_last_seq(&self) -> Result<u64> {
        let stored = self.tree.get(HEAD_KEY)?.ok_or_else(|| {
            Error::tampered("the audit ledger has no head anchor (the ledger was wiped)")
        })?;
        Ok(self.anchors.open_head(&stored)?.last_seq)
    }

    pub(crate) fn lock_head(&self) -> std::sync::MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn seal_head(&self, head: &Head) -> Vec<u8> {
        self.anchors.seal_head(head)
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.head.lock().unwrap_or_else(|p| p.into_inner()).last_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VAULT: [u8; 16] = [0x11; 16];

    fn mac_key() -> Key32 {
        Key32::from_slice_zeroizing(&mut [0x42; 32]).expect("32 bytes")
    }

    fn open(tree: &sled::Tree) -> Result<Ledger> {
        Ledger::open(tree.clone(), &mac_key(), &VAULT, "alice", false)
    }

    /// A ledger of `n` entries on real files.
    fn ledger_of(n: u64) -> (tempfile::TempDir, sled::Db, sled::Tree, Ledger) {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path().join("db")).unwrap();
        let tree = db.open_tree("ledger").unwrap();
        let l = open(&tree).unwrap();
        for i in 0..n {
            l.record(i as i64, "seal", &format!("bundle {i}")).unwrap();
        }
        (d, db, tree, l)
    }

    /// The positions `read_after(after)` returns.
    fn seqs_after(l: &Ledger, after: u64) -> Vec<u64> {
        l.read_after(after).unwrap().iter().map(|e| e.seq).collect()
    }

    fn tampered(r: Result<impl Sized>) -> String {
        match r {
            Err(Error::Tampered(m)) => m,
            Err(e) => panic!("expected Tampered, got {e:?}"),
            Ok(_) => panic!("expected Tampered, got Ok"),
        }
    }

    /// docs/FORMAT.md section 5, computed independently with Python's `hmac`.
    #[test]
    fn ledger_tail_vector() {
        let t = Tail {
            first_seq: 31,
            prev_tag: [0xaa; 16],
        };
        let sealed = anchor_key(&mac_key(), &VAULT, "alice").seal_tail(&t);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sealed),
            include_str!("../tests/vectors/ledger_tail.hex").trim()
        );
    }

    #[test]
    fn reading_after_an_entry_returns_the_rest_checked_against_the_head() {
        let (_d, _db, tree, l) = ledger_of(20);
        assert_eq!(seqs_after(&l, 0), (1..=20).collect::<Vec<_>>());
        assert_eq!(seqs_after(&l, 15), (16..=20).collect::<Vec<_>>());
        assert!(l.read_after(20).unwrap().is_empty());
        assert!(l.read_after(u64::MAX).unwrap().is_empty());
        l.check_chain().unwrap();

        // The entry read from is what the next one's associated data binds: an edit of
        // it is found by the entry after it, and of the last one by the head anchor.
        for at in [15, 20] {
            let k = record_key(at);
            let was = tree.get(k).unwrap().unwrap();
            let mut edited = was.to_vec();
            *edited.last_mut().unwrap() ^= 1;
            tree.insert(k, edited).unwrap();
            let m = tampered(l.read_after(at));
            assert!(m.contains("ledger"), "{m}");
            tampered(l.check_chain());
            tree.insert(k, was).unwrap();
        }
        // An entry after the one read from, removed or edited.
        let k = record_key(18);
        let was = tree.remove(k).unwrap().unwrap();
        assert!(tampered(l.read_after(15)).contains("entry 18 is missing"));
        tree.insert(k, &was[..was.len() - 1]).unwrap();
        assert!(tampered(l.read_after(15)).contains("entry 18 does not authenticate"));
        tree.insert(k, was).unwrap();
        // The entry read from, removed.
        let was = tree.remove(record_key(15)).unwrap().unwrap();
        assert!(tampered(l.read_after(15)).contains("entry 15 is missing"));
        tree.insert(record_key(15), was).unwrap();
        assert_eq!(l.read_after(15).unwrap().len(), 5);
    }

    #[test]
    fn pruning_keeps_the_newest_and_what_was_not_released() {
        let (_d, _db, tree, l) = ledger_of(50);
        // Released through 30, keep 10: 1..=30 go.
        assert_eq!(l.prune(30, 10).unwrap(), 30);
        assert_eq!(l.pruned(), 30);
        assert_eq!(seqs_after(&l, 0), (31..=50).collect::<Vec<_>>());
        assert_eq!(seqs_after(&l, 30), (31..=50).collect::<Vec<_>>());
        assert_eq!(seqs_after(&l, 44), (45..=50).collect::<Vec<_>>());
        // Nothing more released: nothing goes.
        assert_eq!(l.prune(30, 10).unwrap(), 0);
        // Everything released: the newest 10 stay.
        assert_eq!(l.prune(50, 10).unwrap(), 10);
        assert_eq!(seqs_after(&l, 0), (41..=50).collect::<Vec<_>>());
        // Keeping none still keeps the last entry, whose tag the head names.
        assert_eq!(l.prune(50, 0).unwrap(), 9);
        assert_eq!(seqs_after(&l, 0), vec![50]);
        l.check_chain().unwrap();
        // Recording goes on after the kept entries, and a reopened ledger agrees.
        l.record(99, "ack", "bundle 50").unwrap();
        drop(l);
        let l = open(&tree).unwrap();
        assert_eq!(l.pruned(), 49);
        assert_eq!(seqs_after(&l, 0), vec![50, 51]);
        l.check_chain().unwrap();
    }

    #[test]
    fn a_long_history_is_pruned_a_bounded_step_at_a_time() {
        let (_d, _db, _tree, l) = ledger_of(2_600);
        assert_eq!(l.prune(2_600, 100).unwrap(), PRUNE_AT_ONCE);
        assert_eq!(l.prune(2_600, 100).unwrap(), PRUNE_AT_ONCE);
        assert_eq!(l.prune(2_600, 100).unwrap(), 500);
        assert_eq!(l.prune(2_600, 100).unwrap(), 0);
        assert_eq!(l.read_after(0).unwrap().len(), 100);
    }

    #[test]
    fn a_prune_that_meets_an_edited_entry_removes_nothing() {
        let (_d, _db, tree, l) = ledger_of(30);
        let k = record_key(7);
        let mut edited = tree.get(k).unwrap().unwrap().to_vec();
        edited[20] ^= 1;
        tree.insert(k, edited).unwrap();
        assert!(tampered(l.prune(20, 5)).contains("entry 7 does not authenticate"));
        assert_eq!(l.pruned(), 0);
        assert!(tree.get(record_key(1)).unwrap().is_some());
        assert!(tree.get(TAIL_KEY).unwrap().is_none());
    }

    /// Removing, replacing or forging the tail anchor, or the entries it names, is
    /// detected at open: pruning gives an attacker no way to drop entries unseen.
    #[test]
    fn the_start_of_a_pruned_ledger_is_anchored() {
        let (_d, _db, tree, l) = ledger_of(40);
        l.prune(10, 5).unwrap();
        let older_tail = tree.get(TAIL_KEY).unwrap().unwrap();
        l.prune(20, 5).unwrap();
        drop(l);
        let tail = tree.get(TAIL_KEY).unwrap().unwrap();
        let restore = |tree: &sled::Tree| {
            tree.insert(TAIL_KEY, tail.clone()).unwrap();
        };

        tree.remove(TAIL_KEY).unwrap();
        assert!(tampered(open(&tree)).contains("entry 1 was removed"));
        restore(&tree);

        tree.insert(TAIL_KEY, older_tail).unwrap();
        assert!(tampered(open(&tree)).contains("entry 11 was removed"));
        restore(&tree);

        // The first kept entry removed (the prefix dropped further).
        let first = tree.remove(record_key(21)).unwrap().unwrap();
        assert!(tampered(open(&tree)).contains("entry 21 was removed"));
        tree.insert(record_key(21), first).unwrap();

        // A tail anchor of the capture log (same MAC key, other label), or of another
        // user's ledger.
        let log_anchors = AnchorKey::new(&mac_key(), &VAULT, "alice");
        let bob = anchor_key(&mac_key(), &VAULT, "bob");
        let prev_tag = tag_of(&tree.get(record_key(29)).unwrap().unwrap());
        for forger in [log_anchors, bob] {
            let forged = forger.seal_tail(&Tail {
                first_seq: 30,
                prev_tag,
            });
            tree.insert(TAIL_KEY, forged).unwrap();
            for k in 21..30 {
                tree.remove(record_key(k)).unwrap();
            }
            assert!(tampered(open(&tree)).contains("tail anchor's MAC"));
        }
        // Every entry removed, head and tail left.
        let d2 = tempfile::tempdir().unwrap();
        let db2 = sled::open(d2.path().join("db")).unwrap();
        let t2 = db2.open_tree("ledger").unwrap();
        let l2 = open(&t2).unwrap();
        for i in 0..10 {
            l2.record(i, "open", "").unwrap();
        }
        l2.prune(10, 3).unwrap();
        drop(l2);
        for k in 8..=10 {
            t2.remove(record_key(k)).unwrap();
        }
        assert!(tampered(open(&t2)).contains("does not match its head anchor"));
    }

    /// Readers, recorders and pruning on other threads never see each other's
    /// half-done work as tampering.
    #[test]
    fn reading_while_entries_are_recorded_and_pruned_finds_no_tampering() {
        let (_d, _db, _tree, l) = ledger_of(10);
        read_while(
            || {
                for i in 0..1_500 {
                    l.record(i, "seal", "bundle").unwrap();
                    l.prune(l.last_seq(), 5).unwrap();
                }
            },
            || {
                let all = l.read_after(0).unwrap();
                assert!(all.len() >= 5, "{}", all.len());
                l.read_after(all[all.len() / 2].seq).unwrap();
                l.check_chain().unwrap();
            },
        );
        assert_eq!(l.pruned(), l.last_seq() - 5);
    }

    /// A reader asking past the head while entries are recorded gets nothing, never
    /// "missing".
    #[test]
    fn reading_past_the_head_while_entries_are_recorded_finds_nothing_missing() {
        let (_d, _db, _tree, l) = ledger_of(1);
        read_while(
            || {
                for i in 0..5_000 {
                    l.record(i, "seal", "bundle").unwrap();
                }
            },
            || {
                l.read_after(l.last_seq() + 1).unwrap();
            },
        );
    }

    /// Runs `writer` on another thread and `read` over and over (at least 10 times)
    /// until the writer is done.
    fn read_while(writer: impl FnOnce() + Send, mut read: impl FnMut()) {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                writer();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || reads < 10 {
                read();
                reads += 1;
            }
        });
    }

    #[test]
    fn pruning_at_the_edges() {
        let (_d, _db, tree, l) = ledger_of(0);
        assert_eq!(l.prune(100, 0).unwrap(), 0, "an empty ledger");
        l.record(1, "open", "").unwrap();
        assert_eq!(l.prune(1, 0).unwrap(), 0, "the last entry stays");
        l.record(2, "open", "").unwrap();
        assert_eq!(l.prune(1, 0).unwrap(), 1);
        assert_eq!(l.prune(2, 0).unwrap(), 0);
        drop(l);
        let l = open(&tree).unwrap();
        assert_eq!(seqs_after(&l, 0), vec![2]);
        assert_eq!(seqs_after(&l, 1), vec![2]);
        assert!(l.read_after(2).unwrap().is_empty());
        l.check_chain().unwrap();
    }
}
