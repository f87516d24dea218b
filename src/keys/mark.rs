//! The keychain mark: a high-water mark of one user's log, audit ledger and stored
//! state, kept in the OS keychain next to the user's KEKs (docs/FORMAT.md section 15).
//!
//! Everything in the vault directory can be put back from an earlier moment by someone
//! who can write it (sled keeps replaced anchors in its own files), so nothing in the
//! directory can prove it is current. The keychain can: the mark names how far the log,
//! the ledger and the state had come when a durable flush last covered them, and an
//! opener or `verify` that finds the directory behind it refuses with Tampered.
//!
//! The mark only ever names what is already durable (it is written after the flush
//! that covered it), so no crash leaves the directory behind it. Keychain writes are
//! slow (Secret Service is a D-Bus round trip): flushes move the mark at most once per
//! [`MIN_INTERVAL`], through a write the maintenance thread makes when work armed it;
//! state changes (seal, ack, pause, the policy at open) and close write it at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::keys::keystore::KeyStore;
use crate::log::anchor::AnchorKey;
use capvault_format::secret::Key32;

/// Flushes move the mark at most this often (state changes and close write at once).
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How far one user's vault had come. Each field only grows while the user exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Mark {
    /// The log head's last record.
    pub head: u64,
    /// The log tail's first live record.
    pub tail: u64,
    /// The audit ledger's last entry.
    pub ledger: u64,
    /// The generation of the stored state.
    pub state_gen: u64,
}

impl Mark {
    /// Field by field the larger (each one is durable, so is their union).
    fn max(self, o: Mark) -> Mark {
        Mark {
            head: self.head.max(o.head),
            tail: self.tail.max(o.tail),
            ledger: self.ledger.max(o.ledger),
            state_gen: self.state_gen.max(o.state_gen),
        }
    }

    /// What in `found` (the directory) is behind this mark, in words; empty when none.
    pub(crate) fn behind(&self, found: &Mark) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |what: &str, found: u64, recorded: u64| {
            if found < recorded {
                out.push(format!("{what} {found}, the keychain recorded {recorded}"));
            }
        };
        cmp("the log ends at record", found.head, self.head);
        cmp("the log's first live record is", found.tail, self.tail);
        cmp("the audit ledger ends at entry", found.ledger, self.ledger);
        cmp(
            "the stored state is generation",
            found.state_gen,
            self.state_gen,
        );
        out
    }

    /// Refuses a directory behind this mark, saying what was found against what was
    /// recorded and what can be done.
    pub(crate) fn check(&self, found: &Mark, user: &str) -> Result<()> {
        let behind = self.behind(found);
        if behind.is_empty() {
            return Ok(());
        }
        Err(Error::tampered(format!(
            "the vault directory of user {user:?} is behind the high-water mark the keychain keeps for it ({}): records or audit entries that were durable were removed and older anchors put back (someone wrote the directory, or an older copy of it was restored). No copy of the directory can be newer than the mark, so restoring a backup does not help: erase the user, or keep the directory as evidence",
            behind.join("; ")
        )))
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        for v in [self.head, self.tail, self.ledger, self.state_gen] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Mark {
        let at = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().expect("8"));
        Mark {
            head: at(0),
            tail: at(1),
            ledger: at(2),
            state_gen: at(3),
        }
    }
}

/// The keychain name of the mark of `user` in a vault: `mark/<vault hex>/<user hex>`.
pub(crate) fn name(vault_hex: &str, user: &str) -> String {
    let user_hex = data_encoding::HEXLOWER.encode(user.as_bytes());
    format!("mark/{vault_hex}/{user_hex}")
}

/// MACs marks under the user's anchor MAC key, bound to the vault and the user like the
/// anchors: a mark of another vault, another user or an erased earlier user of the same
/// name (another MAC key) does not verify.
pub(crate) struct MarkKey(AnchorKey);

impl MarkKey {
    pub(crate) fn new(mac_key: &Key32, vault_id: &[u8; 16], user: &str) -> Self {
        MarkKey(AnchorKey::with_label(
            b"capvault-mark-v1",
            mac_key,
            vault_id,
            user,
        ))
    }

    pub(crate) fn seal(&self, m: &Mark) -> Vec<u8> {
        self.0.seal_mark(m.encode())
    }

    pub(crate) fn open(&self, stored: &[u8]) -> Result<Mark> {
        self.0.open_mark(stored, 32).map(Mark::decode)
    }
}

/// Reads and verifies the mark of `user`; `None` when the keychain has none.
pub(crate) fn read(
    store: &dyn KeyStore,
    key: &MarkKey,
    vault_hex: &str,
    user: &str,
) -> Result<Option<Mark>> {
    read_at(store, key, &name(vault_hex, user), user)
}

fn read_at(store: &dyn KeyStore, key: &MarkKey, name: &str, user: &str) -> Result<Option<Mark>> {
    let Some(stored) = store.get(name)? else {
        return Ok(None);
    };
    key.open(&stored).map(Some).map_err(|_| {
        Error::tampered(format!(
            "the high-water mark of user {user:?} in the keychain does not verify: it was not written by this vault for this user (copied from another vault or user, left by an erased earlier user of that name, or edited); erase the user, or keep the vault as evidence"
        ))
    })
}

/// Keeps the mark of one open user: remembers what durable flushes covered and writes
/// it to the keychain, at once for state changes and close, otherwise at most once per
/// [`MIN_INTERVAL`].
pub(crate) struct Keeper {
    store: Arc<dyn KeyStore>,
    name: String,
    user: String,
    key: MarkKey,
    /// What the last durable flush covered (union of every flush's). Its own lock, so a
    /// flush never waits on a keychain write.
    durable: Mutex<Mark>,
    /// A durable flush moved `durable` since the last write looked at it.
    armed: AtomicBool,
    /// Held during a keychain write; `None` once the user was erased.
    written: Mutex<Option<Written>>,
    /// The last failed write, until a write succeeds (shown by `status`).
    problem: Mutex<Option<String>>,
    /// False with `fsync: false`: nothing is durable, so the mark does not move.
    enabled: bool,
}

struct Written {
    mark: Mark,
    at: Option<Instant>,
}

impl Keeper {
    /// A keeper whose keychain holds `written` (read and checked at open).
    pub(crate) fn new(
        store: Arc<dyn KeyStore>,
        key: MarkKey,
        vault_hex: &str,
        user: &str,
        written: Mark,
        enabled: bool,
    ) -> Keeper {
        Keeper {
            store,
            name: name(vault_hex, user),
            user: user.to_string(),
            key,
            durable: Mutex::new(written),
            armed: AtomicBool::new(false),
            written: Mutex::new(Some(Written {
                mark: written,
                at: None,
            })),
            problem: Mutex::new(None),
            enabled,
        }
    }

    /// The mark the keychain holds now (`verify`). Read while no write of this keeper
    /// is under way: a keychain may replace an entry in two steps (Secret Service), and
    /// a read between them would find none.
    pub(crate) fn recorded(&self) -> Result<Option<Mark>> {
        let _w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        read_at(&*self.store, &self.key, &self.name, &self.user)
    }

    /// After a durable flush that covered `m`. True when the deferred write should be
    /// woken (the first flush since the last write looked).
    pub(crate) fn durable(&self, m: Mark) -> bool {
        if !self.enabled {
            return false;
        }
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        *d = d.max(m);
        !self.armed.swap(true, Ordering::AcqRel)
    }

    /// Writes what is durable now, if the keychain does not hold it yet (state changes,
    /// close).
    pub(crate) fn write_now(&self) -> Result<()> {
        self.write(None).map(|_| ())
    }

    /// The deferred write: writes what is durable once [`MIN_INTERVAL`] has passed
    /// since the last write. Returns when to come back (`None`: nothing waits).
    pub(crate) fn write_due(&self, now: Instant) -> Option<Instant> {
        if !self.armed.load(Ordering::Acquire) {
            return None;
        }
        match self.write(Some(now)) {
            Ok(next) => next,
            // Tried again later; `status` shows it meanwhile.
            Err(_) => Some(now + MIN_INTERVAL),
        }
    }

    fn write(&self, deferred: Option<Instant>) -> Result<Option<Instant>> {
        let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = w.as_mut() else {
            return Ok(None);
        };
        if let (Some(now), Some(at)) = (deferred, w.at) {
            if now < at + MIN_INTERVAL {
                return Ok(Some(at + MIN_INTERVAL));
            }
        }
        self.armed.store(false, Ordering::Release);
        let durable = *self.durable.lock().unwrap_or_else(|p| p.into_inner());
        let next = w.mark.max(durable);
        if next == w.mark {
            return Ok(None);
        }
        let result = crate::failpoint::hit("mark:write")
            .and_then(|()| self.store.put(&self.name, &self.key.seal(&next)));
        let mut problem = self.problem.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                *problem = None;
                w.mark = next;
                w.at = Some(Instant::now());
                Ok(None)
            }
            Err(e) => {
                self.armed.store(true, Ordering::Release);
                let why = format!(
                    "the high-water mark of user {:?} cannot be written to the keychain ({e}); the data is safe, but a rollback of what was written since the last mark would not be detected",
                    self.user
                );
                *problem = Some(why.clone());
                Err(Error::Keychain(why))
            }
        }
    }

    /// Stops every later write (the user is being erased; erase deletes the mark). A
    /// write under way finishes first.
    pub(crate) fn retire(&self) {
        *self.written.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The last failed write, until one succeeds.
    pub(crate) fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/FORMAT.md section 15, computed independently (`mac_key` = 32 bytes 0x42,
    /// `vault_id` = 16 bytes 0x11, `alice`).
    #[test]
    fn mark_vector() {
        let key = Key32::from_slice_zeroizing(&mut [0x42; 32]).expect("32 bytes");
        let k = MarkKey::new(&key, &[0x11; 16], "alice");
        let m = Mark {
            head: 5,
            tail: 2,
            ledger: 7,
            state_gen: 3,
        };
        let sealed = k.seal(&m);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sealed),
            include_str!("../../tests/vectors/keychain_mark.hex").trim()
        );
        assert_eq!(k.open(&sealed).unwrap(), m);
        for i in 0..sealed.len() {
            let mut x = sealed.clone();
            x[i] ^= 1;
            assert!(k.open(&x).is_err(), "byte {i}");
        }
        assert!(k.open(&sealed[..63]).is_err());
        for other in [
            MarkKey::new(&key, &[0x12; 16], "alice"),
            MarkKey::new(&key, &[0x11; 16], "alicf"),
            MarkKey::new(&Key32::generate(), &[0x11; 16], "alice"),
        ] {
            assert!(other.open(&sealed).is_err(), "another vault, user or key");
        }
    }

    #[test]
    fn a_mark_is_behind_only_where_a_field_is_lower() {
        let m = Mark {
            head: 5,
            tail: 2,
            ledger: 7,
            state_gen: 3,
        };
        assert!(m.check(&m, "a").is_ok());
        assert!(m.check(&Mark { head: 9, ..m }, "a").is_ok());
        for lower in [
            Mark { head: 4, ..m },
            Mark { tail: 1, ..m },
            Mark { ledger: 6, ..m },
            Mark { state_gen: 2, ..m },
        ] {
            let e = m.check(&lower, "a").unwrap_err().to_string();
            assert!(e.contains("the keychain recorded"), "{e}");
        }
    }
}
