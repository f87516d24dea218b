//! Head and tail anchors: MAC'd summaries of where the log ends and begins, so that
//! truncation, rollback and deletion at either end are detected.

use std::collections::BTreeMap;

use ring::hmac;

use super::store::EpochCount;
use crate::aead::TAG_LEN;
use crate::error::{Error, Result};
use capvault_format::secret::Key32;

/// The end of the log: last record and its tag, and the next event sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Head {
    /// Last record's sequence number (0 when no record was ever written).
    pub last_seq: u64,
    /// Last record's tag (zeros when none).
    pub last_tag: [u8; TAG_LEN],
    /// Next event sequence number to assign.
    pub next_event_seq: u64,
    /// In a log head: the generation of the user's stored state (docs/FORMAT.md
    /// section 12), rewritten in the same transaction as every state change, so the log
    /// and the state vouch for each other. Not part of a ledger head.
    pub state_gen: u64,
}

/// The start of the log after pruning: first live record and the tag it chains to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tail {
    /// First record that may still exist.
    pub first_seq: u64,
    /// Tag of the record before it (zeros at the start of the log).
    pub prev_tag: [u8; TAG_LEN],
}

impl Default for Tail {
    fn default() -> Self {
        Tail {
            first_seq: 1,
            prev_tag: [0; TAG_LEN],
        }
    }
}

const MAC_LEN: usize = 32;

/// Computes and checks anchor MACs for one user of one vault.
pub(crate) struct AnchorKey {
    key: hmac::Key,
    binding: Vec<u8>,
}

impl AnchorKey {
    /// Anchors of the capture log.
    pub(crate) fn new(mac_key: &Key32, vault_id: &[u8; 16], user: &str) -> Self {
        Self::with_label(b"capvault-anchor-v1", mac_key, vault_id, user)
    }

    /// Anchors of another chain (the audit ledger), domain-separated by `label`.
    pub(crate) fn with_label(
        label: &[u8],
        mac_key: &Key32,
        vault_id: &[u8; 16],
        user: &str,
    ) -> Self {
        let mut binding = label.to_vec();
        binding.extend_from_slice(vault_id);
        binding.extend_from_slice(&(user.len() as u16).to_be_bytes());
        binding.extend_from_slice(user.as_bytes());
        AnchorKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, mac_key.expose()),
            binding,
        }
    }

    fn mac(&self, which: u8, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&self.binding);
        ctx.update(&[which]);
        ctx.update(body);
        ctx.sign()
    }

    fn seal(&self, which: u8, body: Vec<u8>) -> Vec<u8> {
        let mut out = body;
        let tag = self.mac(which, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn open<'a>(
        &self,
        which: u8,
        stored: &'a [u8],
        body_len: usize,
        what: &str,
    ) -> Result<&'a [u8]> {
        if stored.len() != body_len + MAC_LEN {
            return Err(Error::tampered(format!(
                "the {what} anchor has the wrong size"
            )));
        }
        let (body, mac) = stored.split_at(body_len);
        let mut ctx_body = Vec::with_capacity(self.binding.len() + 1 + body.len());
        ctx_body.extend_from_slice(&self.binding);
        ctx_body.push(which);
        ctx_body.extend_from_slice(body);
        hmac::verify(&self.key, &ctx_body, mac)
            .map_err(|_| Error::tampered(format!("the {what} anchor's MAC does not verify")))?;
        Ok(body)
    }

    pub(crate) fn seal_head(&self, h: &Head) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&h.last_seq.to_be_bytes());
        b.extend_from_slice(&h.last_tag);
        b.extend_from_slice(&h.next_event_seq.to_be_bytes());
        self.seal(b'h', b)
    }

    pub(crate) fn open_head(&self, stored: &[u8]) -> Result<Head> {
        let b = self.open(b'h', stored, 32, "head")?;
        Ok(Head {
            last_seq: u64::from_be_bytes(b[0..8].try_into().expect("8")),
            last_tag: b[8..24].try_into().expect("16"),
            next_event_seq: u64::from_be_bytes(b[24..32].try_into().expect("8")),
            state_gen: 0,
        })
    }

    /// A log head bound to the stored state: the head's fields, then `state_gen` (u64).
    pub(crate) fn seal_log_head(&self, h: &Head) -> Vec<u8> {
        let mut b = Vec::with_capacity(40);
        b.extend_from_slice(&h.last_seq.to_be_bytes());
        b.extend_from_slice(&h.last_tag);
        b.extend_from_slice(&h.next_event_seq.to_be_bytes());
        b.extend_from_slice(&h.state_gen.to_be_bytes());
        self.seal(b'h', b)
    }

    /// A log head and whether it names the state generation (a head written before the
    /// log was bound to the state has no `state_gen`; it is accepted only by the
    /// carry-over).
    pub(crate) fn open_log_head(&self, stored: &[u8]) -> Result<(Head, bool)> {
        if stored.len() != 40 + MAC_LEN {
            return self.open_head(stored).map(|h| (h, false));
        }
        let b = self.open(b'h', stored, 40, "head")?;
        Ok((
            Head {
                last_seq: u64::from_be_bytes(b[0..8].try_into().expect("8")),
                last_tag: b[8..24].try_into().expect("16"),
                next_event_seq: u64::from_be_bytes(b[24..32].try_into().expect("8")),
                state_gen: u64::from_be_bytes(b[32..40].try_into().expect("8")),
            },
            true,
        ))
    }

    /// The per-epoch counters (epochs with records), bound to the log's ends they
    /// describe: `last_seq || first_seq || n (u32) || n x (epoch u32, records u64,
    /// bytes u64)`, so an older copy does not fit the current head and tail.
    pub(crate) fn seal_counts(
        &self,
        last_seq: u64,
        first_seq: u64,
        counts: &BTreeMap<u32, EpochCount>,
    ) -> Vec<u8> {
        let live: Vec<_> = counts.iter().filter(|(_, c)| c.records > 0).collect();
        let mut b = Vec::with_capacity(20 + live.len() * 20);
        b.extend_from_slice(&last_seq.to_be_bytes());
        b.extend_from_slice(&first_seq.to_be_bytes());
        b.extend_from_slice(&(live.len() as u32).to_be_bytes());
        for (e, c) in live {
            b.extend_from_slice(&e.to_be_bytes());
            b.extend_from_slice(&c.encode());
        }
        self.seal(b'c', b)
    }

    /// The counters and the ends (`last_seq`, `first_seq`) they were written for.
    pub(crate) fn open_counts(
        &self,
        stored: &[u8],
    ) -> Result<(u64, u64, BTreeMap<u32, EpochCount>)> {
        let body_len = stored.len().saturating_sub(MAC_LEN);
        let b = self.open(b'c', stored, body_len, "counters")?;
        let bad = || Error::tampered("the counters anchor is malformed");
        if b.len() < 20 {
            return Err(bad());
        }
        let n = u32::from_be_bytes(b[16..20].try_into().expect("4")) as usize;
        if b.len() != 20 + n * 20 {
            return Err(bad());
        }
        let mut counts = BTreeMap::new();
        for item in b[20..].chunks_exact(20) {
            let epoch = u32::from_be_bytes(item[..4].try_into().expect("4"));
            counts.insert(epoch, EpochCount::decode(&item[4..])?);
        }
        Ok((
            u64::from_be_bytes(b[..8].try_into().expect("8")),
            u64::from_be_bytes(b[8..16].try_into().expect("8")),
            counts,
        ))
    }

    /// Any body sealed as counters (fuzzing: past the MAC to the counters' decoder).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn seal_counts_body(&self, body: &[u8]) -> Vec<u8> {
        self.seal(b'c', body.to_vec())
    }

    /// The last record whose segment bytes a durable flush synced (key `0x01 'y'`):
    /// records after it may be lost to a crash, records up to it may not.
    pub(crate) fn seal_synced(&self, seq: u64) -> Vec<u8> {
        self.seal(b'y', seq.to_be_bytes().to_vec())
    }

    pub(crate) fn open_synced(&self, stored: &[u8]) -> Result<u64> {
        let b = self.open(b'y', stored, 8, "synced")?;
        Ok(u64::from_be_bytes(b.try_into().expect("8")))
    }

    /// A keychain mark's body (src/keys/mark.rs), under `which` = 'm'.
    pub(crate) fn seal_mark(&self, body: Vec<u8>) -> Vec<u8> {
        self.seal(b'm', body)
    }

    pub(crate) fn open_mark<'a>(&self, stored: &'a [u8], body_len: usize) -> Result<&'a [u8]> {
        self.open(b'm', stored, body_len, "keychain mark")
    }

    pub(crate) fn seal_tail(&self, t: &Tail) -> Vec<u8> {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&t.first_seq.to_be_bytes());
        b.extend_from_slice(&t.prev_tag);
        self.seal(b't', b)
    }

    pub(crate) fn open_tail(&self, stored: &[u8]) -> Result<Tail> {
        let b = self.open(b't', stored, 24, "tail")?;
        Ok(Tail {
            first_seq: u64::from_be_bytes(b[0..8].try_into().expect("8")),
            prev_tag: b[8..24].try_into().expect("16"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/FORMAT.md section 12: the log head bound to the state generation, computed
    /// independently (`mac_key` = 32 bytes 0x42, `vault_id` = 16 bytes 0x11, `alice`).
    #[test]
    fn bound_log_head_vector() {
        let key = Key32::from_slice_zeroizing(&mut [0x42; 32]).expect("32 bytes");
        let k = AnchorKey::new(&key, &[0x11; 16], "alice");
        let h = Head {
            last_seq: 5,
            last_tag: [0xaa; 16],
            next_event_seq: 9,
            state_gen: 3,
        };
        let sealed = k.seal_log_head(&h);
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sealed),
            include_str!("../../tests/vectors/state_log_head.hex").trim()
        );
        assert_eq!(k.open_log_head(&sealed).unwrap(), (h, true));
    }

    #[test]
    fn anchors_round_trip_and_reject_edits_and_swaps() {
        let k = AnchorKey::new(&Key32::generate(), &[3; 16], "alice");
        let h = Head {
            last_seq: 9,
            last_tag: [4; 16],
            next_event_seq: 100,
            state_gen: 0,
        };
        let sh = k.seal_head(&h);
        assert_eq!(k.open_head(&sh).unwrap(), h);
        let t = Tail {
            first_seq: 5,
            prev_tag: [6; 16],
        };
        let st = k.seal_tail(&t);
        assert_eq!(k.open_tail(&st).unwrap(), t);
        for i in 0..sh.len() {
            let mut x = sh.clone();
            x[i] ^= 1;
            assert!(k.open_head(&x).is_err());
        }
        // A tail cannot pass as a head (different label and size).
        assert!(k.open_head(&st).is_err());
        let other = AnchorKey::new(&Key32::generate(), &[3; 16], "alice");
        assert!(other.open_head(&sh).is_err());
        // A bound log head carries the state generation under the MAC; an older
        // (unbound) head reads as such, and no edit passes.
        let bound = Head { state_gen: 7, ..h };
        let sb = k.seal_log_head(&bound);
        assert_eq!(k.open_log_head(&sb).unwrap(), (bound, true));
        assert_eq!(k.open_log_head(&sh).unwrap(), (h, false));
        for i in 0..sb.len() {
            let mut x = sb.clone();
            x[i] ^= 1;
            assert!(k.open_log_head(&x).is_err(), "byte {i}");
        }
        assert!(
            k.open_head(&sb).is_err(),
            "a bound head is not a ledger head"
        );
        let counts: BTreeMap<u32, EpochCount> = [(
            2,
            EpochCount {
                records: 3,
                bytes: 400,
            },
        )]
        .into_iter()
        .collect();
        let sc = k.seal_counts(9, 5, &counts);
        assert_eq!(k.open_counts(&sc).unwrap(), (9, 5, counts));
        for i in 0..sc.len() {
            let mut x = sc.clone();
            x[i] ^= 1;
            assert!(k.open_counts(&x).is_err());
        }
        assert!(
            k.open_counts(&sh).is_err(),
            "a head is not a counters anchor"
        );
    }
}
