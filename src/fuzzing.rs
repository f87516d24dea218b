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
use crate::vault::state::{self, Sealer};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// The log's head.
    Head,
    /// The log's tail.
    Tail,
    /// The audit ledger's head.
    LedgerHead,
    /// The log's per-epoch counters.
    Counts,
}

/// The MAC key of anchors and stored state (bytes 32..64).
fn mac_key() -> Key32 {
    key(32)
}

fn anchor_key(which: Anchor) -> AnchorKey {
    match which {
        Anchor::LedgerHead => crate::audit::anchor_key(&mac_key(), &VAULT_ID, USER),
        _ => AnchorKey::new(&mac_key(), &VAULT_ID, USER),
    }
}

/// Opens a stored anchor under the fixed MAC key as the vault does; returns it sealed
/// again.
pub fn open_anchor(which: Anchor, stored: &[u8]) -> Result<Vec<u8>> {
    let k = anchor_key(which);
    Ok(match which {
        Anchor::Tail => k.seal_tail(&k.open_tail(stored)?),
        Anchor::Counts => {
            let (last, first, counts) = k.open_counts(stored)?;
            k.seal_counts(last, first, &counts)
        }
        // The log head as the log reads it: bound to a state generation (40 bytes) or
        // from before the binding (32 bytes).
        Anchor::Head => match k.open_log_head(stored)? {
            (head, true) => k.seal_log_head(&head),
            (head, false) => k.seal_head(&head),
        },
        Anchor::LedgerHead => k.seal_head(&k.open_head(stored)?),
    })
}

/// A valid anchor under the fixed MAC key (for seed corpora): `seq` is the head's last
/// record, the tail's first or the counters' last, `next` the head's next event sequence
/// number or the counters' first record (the counters hold one epoch).
pub fn seal_anchor(which: Anchor, seq: u64, tag: [u8; 16], next: u64) -> Vec<u8> {
    let k = anchor_key(which);
    match which {
        Anchor::Tail => k.seal_tail(&Tail {
            first_seq: seq,
            prev_tag: tag,
        }),
        Anchor::Counts => {
            let one = EpochCount {
                records: seq.saturating_sub(next) + 1,
                bytes: 4096,
            };
            k.seal_counts(seq, next, &[(1, one)].into_iter().collect())
        }
        Anchor::Head => k.seal_log_head(&Head {
            last_seq: seq,
            last_tag: tag,
            next_event_seq: next,
            state_gen: next.wrapping_add(seq),
        }),
        Anchor::LedgerHead => k.seal_head(&Head {
            last_seq: seq,
            last_tag: tag,
            next_event_seq: next,
            state_gen: 0,
        }),
    }
}

/// `body` sealed as the counters anchor under the fixed MAC key, so a target reaches
/// the counters' decoder past the MAC.
pub fn seal_counts_body(body: &[u8]) -> Vec<u8> {
    anchor_key(Anchor::Counts).seal_counts_body(body)
}

/// Decodes a per-epoch counter of a vault from before the counters were anchored (read
/// once, at the carry-over); returns it re-encoded.
pub fn epoch_count(bytes: &[u8]) -> Result<Vec<u8>> {
    Ok(EpochCount::decode(bytes)?.encode().to_vec())
}

fn sealer() -> Sealer {
    Sealer::new(&mac_key(), &VAULT_ID, USER)
}

/// The names of the sealed state records (`policy/` takes a big-endian u32 version).
pub const STATE_NAMES: [&[u8]; 6] = [
    crate::vault::release::RELEASE_STATE,
    crate::vault::STATE_PAUSE_UNTIL,
    crate::vault::STATE_PAUSE_DROPPED,
    crate::vault::STATE_DENY_GAP,
    crate::vault::STATE_RECEIPT_KEY,
    crate::vault::STATE_POLICY_PREFIX,
];

/// `body` sealed as state record `name` of generation `gen` under the fixed MAC key, as
/// the vault writes it.
pub fn seal_state_record(name: &[u8], gen: u64, body: &[u8]) -> Vec<u8> {
    sealer().seal(name, gen, body)
}

/// Reads the stored state record `name` as the vault does: checked under the fixed MAC
/// key against the generation `want` its anchor names, then decoded by the record's own
/// decoder. Returns the decoded value encoded and sealed again (`None` for what the
/// vault never writes back as it is: a version 1 release state), or the vault's error.
pub fn state_record(name: &[u8], want: u64, stored: &[u8]) -> Result<Option<Vec<u8>>> {
    use crate::vault::{self, release};
    let body = state::open_record(&sealer(), name, want, stored)?;
    let again = if name == release::RELEASE_STATE {
        match release::StoredRelease::decode(body)? {
            release::StoredRelease::Current(s) => Some(release::encode_release_state(&s)),
            release::StoredRelease::V1 { .. } => None,
        }
    } else if name.starts_with(vault::STATE_POLICY_PREFIX) {
        let (_, policy) = vault::decode_policy_record(name, body)?;
        Some(vault::encode_policy_record(&policy))
    } else if name == vault::STATE_RECEIPT_KEY {
        Some(
            vault::decode_receipt_key(body)?
                .unwrap_or_default()
                .into_bytes(),
        )
    } else if [
        vault::STATE_PAUSE_UNTIL,
        vault::STATE_PAUSE_DROPPED,
        vault::STATE_DENY_GAP,
    ]
    .contains(&name)
    {
        Some(vault::decode_i64(body)?.to_be_bytes().to_vec())
    } else {
        return Err(Error::tampered(format!(
            "the stored state has no record {:?}",
            String::from_utf8_lossy(name)
        )));
    };
    Ok(again.map(|b| seal_state_record(name, want, &b)))
}

/// `body` sealed as the state anchor of generation `gen` under the fixed MAC key.
pub fn seal_state_anchor(gen: u64, body: &[u8]) -> Vec<u8> {
    sealer().seal(state::ANCHOR, gen, body)
}

/// The body of a state anchor naming `records` (name, generation), as the vault encodes
/// it (for seed corpora).
pub fn state_anchor_body(records: &[(&[u8], u64)]) -> Vec<u8> {
    let mut names = std::collections::BTreeMap::new();
    for (n, g) in records {
        names.insert(n.to_vec(), *g);
    }
    state::Anchor::new(0, names).encode()
}

/// The records a state anchor names: (name, generation).
pub type Named = Vec<(Vec<u8>, u64)>;

/// Opens a stored state anchor as the vault does, against the generation the ledger
/// head names; returns it encoded and sealed again, and the records it names.
pub fn state_anchor(stored: &[u8], ledger_gen: u64) -> Result<(Vec<u8>, Named)> {
    let a = state::open_anchor(&sealer(), stored, ledger_gen)?;
    Ok((seal_state_anchor(a.gen(), &a.encode()), a.names()))
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

/// What erase reads from a keychain file (`keychain.json`).
#[derive(Debug, PartialEq, Eq)]
pub struct KeychainFileRead {
    /// Whether its MAC verifies under the fixed device seed.
    pub verifies: bool,
    /// The vault id it names, if it names one.
    pub vault_id: Option<[u8; 16]>,
    /// The file as erase writes it after signing it under the fixed device seed.
    pub signed: Vec<u8>,
}

/// Parses a keychain file as erase does (no database needed, so no other check before
/// it), checks its MAC under the fixed device seed (bytes 64..96), and signs it as erase
/// writes it. `None` for what erase does not take as a keychain file.
pub fn keychain_file(bytes: &[u8]) -> Option<KeychainFileRead> {
    let seed = key(64);
    let file = crate::vault::erase::KeychainFile::parse(bytes)?;
    let mut signed = file.clone();
    signed.sign(&seed);
    Some(KeychainFileRead {
        verifies: file.verifies(&seed),
        vault_id: file.vault_id(),
        signed: signed.to_bytes(),
    })
}

/// Decodes the durability mark file (`durable`): the generation it records.
pub fn durable_mark(bytes: &[u8]) -> Option<u64> {
    crate::log::store::decode_mark(bytes)
}

/// The durability mark file for generation `gen`, as written.
pub fn encode_durable_mark(gen: u64) -> [u8; 32] {
    crate::log::store::encode_mark(gen)
}

/// Parses a hand-off request file's bytes as the serving vault does (`id` is the one in
/// the file name).
pub fn handoff_request(bytes: &[u8], id: &str) -> Option<crate::handoff::Request> {
    crate::handoff::parse_request(bytes, id)
}
