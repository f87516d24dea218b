//! Authenticated stored state (docs/FORMAT.md, "Stored state"): every value of a user's
//! state tree that changes behaviour (release state, pause, policies, the receipt key
//! setting) is MAC'd under the user's anchor MAC key together with its name and a
//! generation number. A state anchor names the generation of every record, and the audit
//! ledger's head carries the anchor's generation: an edited record fails its MAC, a
//! replayed older copy names an older generation, a removed or added record disagrees
//! with the anchor, and a replayed anchor disagrees with the ledger head.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use ring::hmac;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{IVec, Transactional};

use crate::audit::Ledger;
use crate::error::{Error, Result};
use capvault_format::secret::Key32;

/// Key of the state anchor in the state tree.
pub(crate) const ANCHOR: &[u8] = b"anchor";
/// The outbox entry: AEAD-sealed on its own and bound to the release state by digest.
pub(crate) const OUTBOX: &[u8] = b"outbox";
const LABEL: &[u8] = b"capvault-state-v1";
const MAC_LEN: usize = 32;

/// Computes and checks state MACs for one user of one vault.
pub(crate) struct Sealer {
    key: hmac::Key,
    binding: Vec<u8>,
}

impl Sealer {
    pub(crate) fn new(mac_key: &Key32, vault_id: &[u8; 16], user: &str) -> Self {
        let mut binding = LABEL.to_vec();
        binding.extend_from_slice(vault_id);
        binding.extend_from_slice(&(user.len() as u16).to_be_bytes());
        binding.extend_from_slice(user.as_bytes());
        Sealer {
            key: hmac::Key::new(hmac::HMAC_SHA256, mac_key.expose()),
            binding,
        }
    }

    fn mac_input(&self, name: &[u8], gen: u64, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.binding.len() + 2 + name.len() + 8 + body.len());
        m.extend_from_slice(&self.binding);
        m.extend_from_slice(&(name.len() as u16).to_be_bytes());
        m.extend_from_slice(name);
        m.extend_from_slice(&gen.to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// `gen || body || HMAC-SHA256(mac_key, binding || len16(name) || name || gen || body)`.
    pub(crate) fn seal(&self, name: &[u8], gen: u64, body: &[u8]) -> Vec<u8> {
        let tag = hmac::sign(&self.key, &self.mac_input(name, gen, body));
        let mut out = Vec::with_capacity(8 + body.len() + MAC_LEN);
        out.extend_from_slice(&gen.to_be_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The generation and body of a sealed value stored under `name`, if its MAC verifies.
    pub(crate) fn open<'a>(&self, name: &[u8], stored: &'a [u8]) -> Option<(u64, &'a [u8])> {
        if stored.len() < 8 + MAC_LEN {
            return None;
        }
        let gen = u64::from_be_bytes(stored[..8].try_into().expect("8"));
        let (body, tag) = stored[8..].split_at(stored.len() - 8 - MAC_LEN);
        hmac::verify(&self.key, &self.mac_input(name, gen, body), tag).ok()?;
        Some((gen, body))
    }
}

/// The state anchor: the current generation and the generation of every record.
#[derive(Clone, Default)]
struct Anchor {
    gen: u64,
    names: BTreeMap<Vec<u8>, u64>,
}

impl Anchor {
    fn encode(&self) -> Vec<u8> {
        let mut b = (self.names.len() as u32).to_be_bytes().to_vec();
        for (name, gen) in &self.names {
            b.extend_from_slice(&(name.len() as u16).to_be_bytes());
            b.extend_from_slice(name);
            b.extend_from_slice(&gen.to_be_bytes());
        }
        b
    }

    fn decode(gen: u64, body: &[u8]) -> Option<Anchor> {
        let n = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
        let mut rest = &body[4..];
        let mut names = BTreeMap::new();
        for _ in 0..n {
            let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let name = rest.get(2..2 + len)?.to_vec();
            let g = u64::from_be_bytes(rest.get(2 + len..10 + len)?.try_into().ok()?);
            rest = &rest[10 + len..];
            names.insert(name, g);
        }
        rest.is_empty().then_some(Anchor { gen, names })
    }
}

/// One change to the state tree.
pub(crate) enum Put<'a> {
    /// A sealed record: its body, or `None` to remove it.
    Sealed(&'a [u8], Option<&'a [u8]>),
    /// A value outside the anchor (the outbox, sealed on its own), or `None` to remove it.
    Raw(&'a [u8], Option<Vec<u8>>),
}

/// Changes to the log tree made in the same transaction as a state write (eviction).
#[derive(Default)]
pub(crate) struct TreeOps {
    pub removes: Vec<IVec>,
    pub inserts: Vec<(IVec, IVec)>,
}

/// The authenticated state tree of one user.
pub(crate) struct StateStore {
    tree: sled::Tree,
    sealer: Sealer,
    anchor: Mutex<Anchor>,
}

fn tampered(what: impl std::fmt::Display) -> Error {
    Error::tampered(format!("the stored state {what}"))
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl StateStore {
    /// Opens an authenticated state tree: the anchor must verify and match the ledger
    /// head, and every record must be the one the anchor names.
    pub(crate) fn open(tree: sled::Tree, sealer: Sealer, ledger: &Ledger) -> Result<StateStore> {
        let stored = tree
            .get(ANCHOR)?
            .ok_or_else(|| tampered("has no anchor (it was removed)"))?;
        let (gen, body) = sealer
            .open(ANCHOR, &stored)
            .ok_or_else(|| tampered("anchor does not authenticate"))?;
        let anchor = Anchor::decode(gen, body).ok_or_else(|| tampered("anchor is malformed"))?;
        if ledger.state_gen() != gen {
            return Err(tampered(format!(
                "is generation {gen} but the audit ledger names generation {} (the state or the ledger was replaced by an older copy or removed)",
                ledger.state_gen()
            )));
        }
        let store = StateStore {
            tree,
            sealer,
            anchor: Mutex::new(anchor),
        };
        store.check_all()?;
        Ok(store)
    }

    /// Every record in the tree is named by the anchor and verifies; every named record
    /// exists.
    pub(crate) fn check_all(&self) -> Result<()> {
        let anchor = self.lock().clone();
        let mut seen = 0;
        for key in self.tree.iter().keys() {
            let key = key?;
            if key == ANCHOR || key == OUTBOX {
                continue;
            }
            if !anchor.names.contains_key(key.as_ref()) {
                return Err(tampered(format!(
                    "holds a record {:?} its anchor does not name (added behind its back)",
                    show(&key)
                )));
            }
            self.get_checked(&anchor, &key)?;
            seen += 1;
        }
        if seen != anchor.names.len() {
            return Err(tampered("lacks a record its anchor names (it was removed)"));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Anchor> {
        self.anchor.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_checked(&self, anchor: &Anchor, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let stored = self.tree.get(name)?;
        let Some(want) = anchor.names.get(name) else {
            return match stored {
                None => Ok(None),
                Some(_) => Err(tampered(format!(
                    "holds a record {:?} its anchor does not name",
                    show(name)
                ))),
            };
        };
        let stored = stored.ok_or_else(|| {
            tampered(format!(
                "lacks its record {:?} (it was removed)",
                show(name)
            ))
        })?;
        let (gen, body) = self
            .sealer
            .open(name, &stored)
            .ok_or_else(|| tampered(format!("record {:?} does not authenticate", show(name))))?;
        if gen != *want {
            return Err(tampered(format!(
                "record {:?} is generation {gen}, not {want} (an older copy was put back)",
                show(name)
            )));
        }
        Ok(Some(body.to_vec()))
    }

    /// The body of the sealed record `name`, checked.
    pub(crate) fn get(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let anchor = self.lock().clone();
        self.get_checked(&anchor, name)
    }

    /// A value outside the anchor (the outbox).
    pub(crate) fn get_raw(&self, key: &[u8]) -> Result<Option<IVec>> {
        Ok(self.tree.get(key)?)
    }

    /// Names of the sealed records starting with `prefix`, in order.
    pub(crate) fn names(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        self.lock()
            .names
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Applies `puts` (and `log_ops` on `log`) in one transaction with the new anchor and
    /// the ledger head that names its generation.
    pub(crate) fn write(
        &self,
        ledger: &Ledger,
        puts: &[Put<'_>],
        log: Option<(&sled::Tree, &TreeOps)>,
    ) -> Result<()> {
        let mut anchor = self.lock();
        let mut head = ledger.lock_head();
        let mut next = anchor.clone();
        next.gen += 1;
        let gen = next.gen;
        let mut state_ops: Vec<(IVec, Option<IVec>)> = Vec::with_capacity(puts.len() + 1);
        for put in puts {
            match put {
                Put::Sealed(name, Some(body)) => {
                    next.names.insert(name.to_vec(), gen);
                    state_ops.push((
                        IVec::from(*name),
                        Some(self.sealer.seal(name, gen, body).into()),
                    ));
                }
                Put::Sealed(name, None) => {
                    next.names.remove(*name);
                    state_ops.push((IVec::from(*name), None));
                }
                Put::Raw(key, value) => {
                    state_ops.push((IVec::from(*key), value.as_deref().map(IVec::from)))
                }
            }
        }
        state_ops.push((
            IVec::from(ANCHOR),
            Some(self.sealer.seal(ANCHOR, gen, &next.encode()).into()),
        ));
        let mut new_head = *head;
        new_head.next_event_seq = gen;
        let head_bytes = IVec::from(ledger.seal_head(&new_head));
        let apply_state = |st: &sled::transaction::TransactionalTree| {
            for (k, v) in &state_ops {
                match v {
                    Some(v) => st.insert(k, v.clone())?,
                    None => st.remove(k)?,
                };
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        };
        let res = match log {
            None => (&self.tree, ledger.tree()).transaction(|(st, lt)| {
                apply_state(st)?;
                lt.insert(crate::log::store::HEAD_KEY, head_bytes.clone())?;
                Ok(())
            }),
            Some((log_tree, ops)) => {
                (log_tree, &self.tree, ledger.tree()).transaction(|(lg, st, lt)| {
                    for k in &ops.removes {
                        lg.remove(k)?;
                    }
                    for (k, v) in &ops.inserts {
                        lg.insert(k, v.clone())?;
                    }
                    apply_state(st)?;
                    lt.insert(crate::log::store::HEAD_KEY, head_bytes.clone())?;
                    Ok(())
                })
            }
        };
        match res {
            Ok(()) => {}
            Err(TransactionError::Abort(())) => {
                return Err(Error::Storage("a state write was aborted".into()))
            }
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        *anchor = next;
        *head = new_head;
        Ok(())
    }

    /// Carries a state tree written before stored state was authenticated over: every
    /// record (plain, or already sealed by an interrupted carry-over) is sealed, and the
    /// anchor and the ledger head are written, in one transaction. `extra` adds records
    /// the tree lacks (the receipt key setting, kept in vault metadata before).
    pub(crate) fn migrate(
        tree: sled::Tree,
        sealer: Sealer,
        ledger: &Ledger,
        extra: &[(&[u8], Vec<u8>)],
    ) -> Result<StateStore> {
        let mut records: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item?;
            if k == ANCHOR || k == OUTBOX {
                continue;
            }
            let body = match sealer.open(&k, &v) {
                Some((_, body)) => body.to_vec(),
                None => v.to_vec(),
            };
            records.insert(k.to_vec(), body);
        }
        for (name, body) in extra {
            records.entry(name.to_vec()).or_insert_with(|| body.clone());
        }
        let store = StateStore {
            tree,
            sealer,
            anchor: Mutex::new(Anchor::default()),
        };
        let puts: Vec<Put<'_>> = records
            .iter()
            .map(|(k, v)| Put::Sealed(k, Some(v)))
            .collect();
        store.write(ledger, &puts, None)?;
        Ok(store)
    }

    /// The anchor of a new user's empty state (generation 1), for the transaction that
    /// creates the user.
    pub(crate) fn initial_anchor(sealer: &Sealer) -> (u64, Vec<u8>) {
        let a = Anchor {
            gen: 1,
            names: BTreeMap::new(),
        };
        (1, sealer.seal(ANCHOR, 1, &a.encode()))
    }
}

/// Test hook: turns a user's sealed state tree back into the format before stored state
/// was authenticated (plain values, no anchor, the receipt key in vault metadata only).
#[cfg(feature = "test-hooks")]
pub(crate) fn downgrade(tree: &sled::Tree, sealer: &Sealer) -> Result<()> {
    for item in tree.iter() {
        let (k, v) = item?;
        if k == OUTBOX {
            continue;
        }
        if k == ANCHOR || k == b"receipt_key"[..] {
            tree.remove(k)?;
            continue;
        }
        let (_, body) = sealer.open(&k, &v).expect("a sealed record");
        tree.insert(k, body)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key32 {
        Key32::from_slice_zeroizing(&mut [b; 32]).expect("32 bytes")
    }

    #[test]
    fn sealed_records_bind_name_generation_and_body() {
        let s = Sealer::new(&key(7), &[3; 16], "alice");
        let v = s.seal(b"release", 5, b"{}");
        assert_eq!(s.open(b"release", &v), Some((5, &b"{}"[..])));
        assert!(s.open(b"pause_until", &v).is_none(), "another name");
        for i in 0..v.len() {
            let mut x = v.clone();
            x[i] ^= 1;
            assert!(s.open(b"release", &x).is_none(), "byte {i}");
        }
        let other = Sealer::new(&key(7), &[3; 16], "bob");
        assert!(other.open(b"release", &v).is_none(), "another user");
    }

    /// docs/FORMAT.md, "Stored state": the test vector.
    #[test]
    fn state_record_vector() {
        let s = Sealer::new(&key(0x42), &[0x11; 16], "alice");
        let v = s.seal(b"pause_until", 3, &0i64.to_be_bytes());
        assert_eq!(
            data_encoding::HEXLOWER.encode(&v),
            include_str!("../../tests/vectors/state_record.hex").trim()
        );
        let a = Anchor {
            gen: 3,
            names: [(b"pause_until".to_vec(), 3u64)].into_iter().collect(),
        };
        let sealed = s.seal(ANCHOR, 3, &a.encode());
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sealed),
            include_str!("../../tests/vectors/state_anchor.hex").trim()
        );
        let (g, body) = s.open(ANCHOR, &sealed).unwrap();
        let back = Anchor::decode(g, body).unwrap();
        assert_eq!(back.names, a.names);
    }
}
