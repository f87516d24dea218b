//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; never in production
//! builds). Each runs one private decoder of stored or received bytes exactly as the
//! vault runs it and, where the vault has an encoder, re-encodes what was accepted, so
//! a target can check that decoding and encoding agree. Keys are fixed test keys: the
//! record key is the one of tests/vectors/records.txt, so its vectors are valid seeds.

use crate::error::{Error, Result};
use crate::log::anchor::{AnchorKey, Head, Tail};
use crate::log::assemble::Assembler;
use crate::log::record::{RecordBinding, RecordHeader, RecordKind, HEADER_LEN};
use crate::log::store::EpochCount;
use capvault_format::secret::{Key32, PlainBuf};
use capvault_format::SeqEvent;

/// The vault id of the record vectors.
pub const VAULT_ID: [u8; 16] = [0x11; 16];
/// The user of the record vectors.
pub const USER: &str = "alice";
/// The purpose of the record vectors.
pub const PURPOSE: &str = "activity-capture";

fn key(first: u8) -> Key32 {
    let mut k: Vec<u8> = (first..first + 32).collect();
    Key32::from_slice_zeroizing(&mut k).expect("32 bytes")
}

/// The record key of the vectors (bytes 0..32).
fn dek() -> Key32 {
    key(0)
}

fn binding() -> RecordBinding {
    RecordBinding::new(&VAULT_ID, USER)
}

/// Parses the clear header of a stored record; returns it re-encoded.
pub fn record_header(value: &[u8]) -> Result<Vec<u8>> {
    let h = RecordHeader::parse(value)?;
    let mut out = Vec::with_capacity(HEADER_LEN);
    h.write(&mut out);
    Ok(out)
}

/// Opens record `seq` chained to `prev_tag` under the vector key; the plaintext.
pub fn open_record(seq: u64, prev_tag: &[u8; 16], value: &[u8]) -> Option<Vec<u8>> {
    binding()
        .open(seq, value, prev_tag, PURPOSE, &dek())
        .ok()
        .map(|p| p.to_vec())
}

/// Seals `plaintext` as record `seq` with the header and nonce of `like` (a stored
/// record whose header parses), as the writer does.
pub fn reseal_record(seq: u64, prev_tag: &[u8; 16], like: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let h = RecordHeader::parse(like).expect("the caller's record header parses");
    let nonce: [u8; 24] = like[HEADER_LEN..HEADER_LEN + 24].try_into().expect("24");
    binding().seal_with_nonce(seq, &h, prev_tag, PURPOSE, &dek(), plaintext, &nonce)
}

/// Feeds decrypted records `(kind, flags, plaintext)` to the reader's assembler. Kind 1
/// is a frame (flags ignored), anything else a chunk. Errors as the reader's, also for
/// input that ends inside a chunked payload.
pub fn assemble(records: &[(u8, u8, &[u8])]) -> Result<Vec<SeqEvent>> {
    let mut asm = Assembler::default();
    let mut out = Vec::new();
    for (kind, flags, plain) in records {
        let (kind, flags) = if *kind == 1 {
            (RecordKind::Frame, 0)
        } else {
            (RecordKind::Chunk, flags & 3)
        };
        let header = RecordHeader {
            kind,
            flags,
            epoch: 1,
            policy_version: 1,
            created_us: 0,
        };
        asm.feed(&header, PlainBuf::new(plain.to_vec()), &mut out)?;
    }
    if !asm.at_boundary() {
        return Err(Error::tampered("the log ends inside a chunked payload"));
    }
    Ok(out)
}

/// Which anchor.
#[derive(Clone, Copy, Debug)]
pub enum Anchor {
    /// The log's head.
    Head,
    /// The log's tail.
    Tail,
    /// The audit ledger's head.
    LedgerHead,
}

fn anchor_key(which: Anchor) -> AnchorKey {
    match which {
        Anchor::LedgerHead => {
            AnchorKey::with_label(b"capvault-ledger-anchor-v1", &key(32), &VAULT_ID, USER)
        }
        _ => AnchorKey::new(&key(32), &VAULT_ID, USER),
    }
}

/// Opens a stored anchor under the fixed MAC key; returns it sealed again.
pub fn open_anchor(which: Anchor, stored: &[u8]) -> Result<Vec<u8>> {
    let k = anchor_key(which);
    Ok(match which {
        Anchor::Tail => k.seal_tail(&k.open_tail(stored)?),
        _ => k.seal_head(&k.open_head(stored)?),
    })
}

/// A valid anchor under the fixed MAC key (for seed corpora): `seq` is the head's last
/// record or the tail's first, `next` the head's next event sequence number.
pub fn seal_anchor(which: Anchor, seq: u64, tag: [u8; 16], next: u64) -> Vec<u8> {
    let k = anchor_key(which);
    match which {
        Anchor::Tail => k.seal_tail(&Tail {
            first_seq: seq,
            prev_tag: tag,
        }),
        _ => k.seal_head(&Head {
            last_seq: seq,
            last_tag: tag,
            next_event_seq: next,
        }),
    }
}

/// Decodes a per-epoch counter; returns it re-encoded.
pub fn epoch_count(bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(EpochCount::decode(bytes)?.encode().to_vec())
}

/// Decodes a stored release state; returns a current state re-encoded, `None` for a
/// version 1 state (carried over, never written again).
pub fn release_state(bytes: &[u8]) -> Result<Option<Vec<u8>>> {
    use crate::vault::release::{encode_release_state, StoredRelease};
    Ok(match StoredRelease::decode(bytes)? {
        StoredRelease::Current(s) => Some(encode_release_state(&s)),
        StoredRelease::V1 { .. } => None,
    })
}

/// Decodes a stored `policy/<version>` entry; returns its version and the policy
/// re-encoded.
pub fn policy_record(key: &[u8], value: &[u8]) -> Result<(u32, Vec<u8>)> {
    let (v, p) = crate::vault::decode_policy_record(key, value)?;
    Ok((v, crate::vault::encode_policy_record(&p)))
}

/// Decodes the authenticated plaintext of audit ledger entry `seq`; returns it
/// re-encoded.
pub fn ledger_entry(seq: u64, plain: &[u8]) -> Result<Vec<u8>> {
    let e = crate::audit::decode_entry(seq, plain)?;
    Ok(crate::audit::encode_entry(&e).to_vec())
}

/// Decodes a wrapped key entry of the keys tree; returns it re-encoded.
pub fn wrapped_key(bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(crate::keys::hierarchy::Wrapped::decode(bytes)?.encode())
}

/// Decodes the KEK rotation marker: (from, to).
pub fn rotation_marker(bytes: &[u8]) -> Result<(u32, u32)> {
    crate::keys::hierarchy::decode_rotation_marker(bytes)
}

/// Decodes a stored i64 (pause deadline, dropped count).
pub fn stored_i64(bytes: &[u8]) -> Result<i64> {
    crate::vault::decode_i64(bytes)
}

/// Parses a hand-off request file's bytes as the serving vault does (`id` is the one in
/// the file name).
pub fn handoff_request(bytes: &[u8], id: &str) -> Option<crate::handoff::Request> {
    crate::handoff::parse_request(bytes, id)
}
