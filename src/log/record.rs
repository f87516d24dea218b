//! One record of the log: a frame of small events or one chunk of a large payload,
//! sealed with XChaCha20-Poly1305. The layout and associated data are specified in
//! docs/FORMAT.md ("Records"); this file is the only code that knows them.

use crate::aead::{self, Unauthentic, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::log::chunk::Opener;
use capvault_format::secret::{Key32, PlainBuf};

/// Record format version.
pub(crate) const RECORD_VERSION: u8 = 1;
/// Bytes before the nonce: version, kind, flags, epoch, policy version, created time.
pub(crate) const HEADER_LEN: usize = 1 + 1 + 1 + 4 + 4 + 8;
/// Bytes of a record before its ciphertext: header and nonce.
pub(crate) const PREFIX_LEN: usize = HEADER_LEN + NONCE_LEN;
/// Bytes a record adds to its plaintext.
pub(crate) const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// Chunk flag: first chunk of a payload.
pub(crate) const FLAG_FIRST: u8 = 1;
/// Chunk flag: last chunk of a payload.
pub(crate) const FLAG_LAST: u8 = 2;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordKind {
    /// A frame: first event sequence number, then consecutive encoded events.
    Frame = 1,
    /// A chunk of one large event (flags say first/last).
    Chunk = 2,
}

/// The clear part of a record, all of it bound into the associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub kind: RecordKind,
    pub flags: u8,
    pub epoch: u32,
    pub policy_version: u32,
    pub created_us: i64,
}

impl RecordHeader {
    /// Parses the clear header of a stored record value.
    pub(crate) fn parse(value: &[u8]) -> Result<RecordHeader> {
        if value.len() < OVERHEAD || value[0] != RECORD_VERSION {
            return Err(Error::tampered(
                "a record is truncated or has an unknown version",
            ));
        }
        let kind = match value[1] {
            1 => RecordKind::Frame,
            2 => RecordKind::Chunk,
            _ => return Err(Error::tampered("a record has an unknown kind")),
        };
        let flags = value[2];
        if (kind == RecordKind::Frame && flags != 0) || flags > (FLAG_FIRST | FLAG_LAST) {
            return Err(Error::tampered("a record has invalid flags"));
        }
        Ok(RecordHeader {
            kind,
            flags,
            epoch: u32::from_be_bytes(value[3..7].try_into().expect("4 bytes")),
            policy_version: u32::from_be_bytes(value[7..11].try_into().expect("4 bytes")),
            created_us: i64::from_be_bytes(value[11..19].try_into().expect("8 bytes")),
        })
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes());
    }

    /// The header as stored.
    fn bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = RECORD_VERSION;
        b[1] = self.kind as u8;
        b[2] = self.flags;
        b[3..7].copy_from_slice(&self.epoch.to_be_bytes());
        b[7..11].copy_from_slice(&self.policy_version.to_be_bytes());
        b[11..19].copy_from_slice(&self.created_us.to_be_bytes());
        b
    }
}

/// The per-user constant prefix of every record's associated data.
#[derive(Clone, Debug)]
pub(crate) struct RecordBinding {
    prefix: Vec<u8>,
}

impl RecordBinding {
    pub(crate) fn new(vault_id: &[u8; 16], user: &str) -> Self {
        let mut prefix = b"capvault-record-v1".to_vec();
        prefix.extend_from_slice(vault_id);
        prefix.extend_from_slice(&(user.len() as u16).to_be_bytes());
        prefix.extend_from_slice(user.as_bytes());
        RecordBinding { prefix }
    }

    /// Associated data: prefix || seq || header || previous tag || purpose.
    fn associated_data(
        &self,
        seq: u64,
        header: &RecordHeader,
        prev_tag: &[u8; TAG_LEN],
        purpose: &str,
    ) -> Vec<u8> {
        let mut ad =
            Vec::with_capacity(self.prefix.len() + 8 + HEADER_LEN + TAG_LEN + 2 + purpose.len());
        ad.extend_from_slice(&self.prefix);
        ad.extend_from_slice(&seq.to_be_bytes());
        header.write(&mut ad);
        ad.extend_from_slice(prev_tag);
        ad.extend_from_slice(&(purpose.len() as u16).to_be_bytes());
        ad.extend_from_slice(purpose.as_bytes());
        ad
    }

    /// Seals `plaintext` as record `seq`, chained to `prev_tag`. Returns the stored value.
    pub(crate) fn seal(
        &self,
        seq: u64,
        header: &RecordHeader,
        prev_tag: &[u8; TAG_LEN],
        purpose: &str,
        dek: &Key32,
        plaintext: &[u8],
    ) -> Vec<u8> {
        self.seal_with_nonce(
            seq,
            header,
            prev_tag,
            purpose,
            dek,
            plaintext,
            &aead::new_nonce(),
        )
    }

    /// [`RecordBinding::seal`] with a given nonce (test vectors only; production nonces
    /// are always fresh and random).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal_with_nonce(
        &self,
        seq: u64,
        header: &RecordHeader,
        prev_tag: &[u8; TAG_LEN],
        purpose: &str,
        dek: &Key32,
        plaintext: &[u8],
        nonce: &[u8; NONCE_LEN],
    ) -> Vec<u8> {
        let mut value = Vec::with_capacity(OVERHEAD + plaintext.len());
        self.seal_onto(
            &mut value, seq, header, prev_tag, purpose, dek, plaintext, nonce,
        );
        value
    }

    /// Seals `plaintext` as record `seq` and appends the stored value to `out` (the
    /// segment writer's buffer, so a record is not sealed in one place and copied to
    /// another). The plaintext is in `out` only between its copy and its sealing, with
    /// nothing in between that can fail, and `out` grows before the copy: no allocation
    /// `out` gives back ever held plaintext. Returns the record's tag.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal_onto(
        &self,
        out: &mut Vec<u8>,
        seq: u64,
        header: &RecordHeader,
        prev_tag: &[u8; TAG_LEN],
        purpose: &str,
        dek: &Key32,
        plaintext: &[u8],
        nonce: &[u8; NONCE_LEN],
    ) -> [u8; TAG_LEN] {
        out.reserve(OVERHEAD + plaintext.len());
        let start = out.len();
        out.extend_from_slice(&[0; PREFIX_LEN]);
        out.extend_from_slice(plaintext);
        let body = &mut out[start + PREFIX_LEN..];
        let (prefix, opener) = self.seal_in_place(seq, header, prev_tag, purpose, dek, body, nonce);
        out[start..start + PREFIX_LEN].copy_from_slice(&prefix);
        out.extend_from_slice(&opener.tag);
        opener.tag
    }

    /// Seals `body` in place as record `seq`, chained to `prev_tag`: the stored value is
    /// the returned prefix (header || nonce), then `body`, then the tag, the same bytes
    /// [`RecordBinding::seal_onto`] gives. Also returns what opens `body` again in place.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn seal_in_place(
        &self,
        seq: u64,
        header: &RecordHeader,
        prev_tag: &[u8; TAG_LEN],
        purpose: &str,
        dek: &Key32,
        body: &mut [u8],
        nonce: &[u8; NONCE_LEN],
    ) -> ([u8; PREFIX_LEN], Opener) {
        let ad = self.associated_data(seq, header, prev_tag, purpose);
        let tag = aead::seal_in_place(dek, nonce, &ad, body);
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[..HEADER_LEN].copy_from_slice(&header.bytes());
        prefix[HEADER_LEN..].copy_from_slice(nonce);
        (
            prefix,
            Opener {
                epoch: header.epoch,
                nonce: *nonce,
                ad,
                tag,
            },
        )
    }

    /// Opens record `seq`, which must follow `prev_tag`. Any mismatch is one opaque error.
    pub(crate) fn open(
        &self,
        seq: u64,
        value: &[u8],
        prev_tag: &[u8; TAG_LEN],
        purpose: &str,
        dek: &Key32,
    ) -> Result<PlainBuf, Unauthentic> {
        let header = RecordHeader::parse(value).map_err(|_| Unauthentic)?;
        let nonce: [u8; NONCE_LEN] = value[HEADER_LEN..HEADER_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| Unauthentic)?;
        let tag = tag_of(value);
        let mut body = PlainBuf::new(value[HEADER_LEN + NONCE_LEN..value.len() - TAG_LEN].to_vec());
        let ad = self.associated_data(seq, &header, prev_tag, purpose);
        aead::open_in_place(dek, &nonce, &ad, &mut body, &tag)?;
        Ok(body)
    }
}

/// The tag of a stored record (its last 16 bytes): the chain link to the next record.
/// Callers have checked the length with [`RecordHeader::parse`].
pub(crate) fn tag_of(value: &[u8]) -> [u8; TAG_LEN] {
    let mut t = [0u8; TAG_LEN];
    if value.len() >= TAG_LEN {
        t.copy_from_slice(&value[value.len() - TAG_LEN..]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Frame,
            flags: 0,
            epoch: 1,
            policy_version: 1,
            created_us: 5,
        }
    }

    #[test]
    fn a_record_opens_only_at_its_place_in_the_chain() {
        let b = RecordBinding::new(&[1; 16], "alice");
        let dek = Key32::generate();
        let v = b.seal(7, &header(), &[9; 16], "p", &dek, b"events");
        assert_eq!(RecordHeader::parse(&v).unwrap(), header());
        assert_eq!(&b.open(7, &v, &[9; 16], "p", &dek).unwrap()[..], b"events");
        assert!(
            b.open(8, &v, &[9; 16], "p", &dek).is_err(),
            "replayed at another seq"
        );
        assert!(
            b.open(7, &v, &[8; 16], "p", &dek).is_err(),
            "spliced after another record"
        );
        assert!(b.open(7, &v, &[9; 16], "q", &dek).is_err(), "other purpose");
        assert!(RecordBinding::new(&[1; 16], "bob")
            .open(7, &v, &[9; 16], "p", &dek)
            .is_err());
        assert!(RecordBinding::new(&[2; 16], "alice")
            .open(7, &v, &[9; 16], "p", &dek)
            .is_err());
        for i in 0..v.len() {
            let mut t = v.clone();
            t[i] ^= 0x40;
            assert!(b.open(7, &t, &[9; 16], "p", &dek).is_err(), "flip at {i}");
        }
        assert!(b.open(7, &v[..v.len() - 1], &[9; 16], "p", &dek).is_err());
    }

    /// Runs tests/vectors/records.txt (docs/FORMAT.md, section 2): each vector's value
    /// must be what sealing produces, and must open back to its plaintext.
    #[test]
    fn record_vectors() {
        let text = include_str!("../../tests/vectors/records.txt");
        let hex = |s: &str| data_encoding::HEXLOWER.decode(s.trim().as_bytes()).unwrap();
        let mut n = 0;
        for block in text
            .split("\n\n")
            .filter(|b| b.trim_start().starts_with("dek:"))
        {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_else(|| panic!("vector lacks {name}"))
                    .to_string()
            };
            let mut key = hex(&field("dek"));
            let dek = Key32::from_slice_zeroizing(&mut key).unwrap();
            let vault: [u8; 16] = hex(&field("vault_id")).try_into().unwrap();
            let b = RecordBinding::new(&vault, &field("user"));
            let kind = match field("kind").as_str() {
                "frame" => RecordKind::Frame,
                _ => RecordKind::Chunk,
            };
            let header = RecordHeader {
                kind,
                flags: field("flags").parse().unwrap(),
                epoch: field("epoch").parse().unwrap(),
                policy_version: field("policy_version").parse().unwrap(),
                created_us: field("created_us").parse().unwrap(),
            };
            let seq: u64 = field("seq").parse().unwrap();
            let prev: [u8; 16] = hex(&field("prev_tag")).try_into().unwrap();
            let nonce: [u8; 24] = hex(&field("nonce")).try_into().unwrap();
            let plaintext = hex(&field("plaintext"));
            let purpose = field("purpose");
            let value = hex(&field("expect"));
            assert_eq!(
                b.seal_with_nonce(seq, &header, &prev, &purpose, &dek, &plaintext, &nonce),
                value
            );
            assert_eq!(
                &b.open(seq, &value, &prev, &purpose, &dek).unwrap()[..],
                &plaintext[..]
            );
            assert!(b.open(seq + 1, &value, &prev, &purpose, &dek).is_err());
            n += 1;
        }
        assert!(n >= 2, "the vector file holds {n} vectors");
    }

    /// Prints vectors for tests/vectors/records.txt (`cargo test print_record_vectors -- --ignored --nocapture`).
    #[test]
    #[ignore = "generator for tests/vectors/records.txt"]
    fn print_record_vectors() {
        let hexs = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        let mut k: Vec<u8> = (0u8..32).collect();
        let dek = Key32::from_slice_zeroizing(&mut k).unwrap();
        let vault = [0x11u8; 16];
        let mut events = 7u64.to_be_bytes().to_vec();
        capvault_format::Event::MouseMove {
            ts_us: 1_764_000_000_000_000,
            x: 640,
            y: 480,
        }
        .encode_into(&mut events);
        let cases = [
            (1u64, RecordKind::Frame, 0u8, [0u8; 16], events.clone()),
            (
                2u64,
                RecordKind::Chunk,
                FLAG_FIRST | FLAG_LAST,
                [0xabu8; 16],
                b"chunk payload".to_vec(),
            ),
        ];
        for (seq, kind, flags, prev, pt) in cases {
            let header = RecordHeader {
                kind,
                flags,
                epoch: 3,
                policy_version: 1,
                created_us: 1_764_000_000_000_000,
            };
            let nonce = [0x24u8; 24];
            let v = RecordBinding::new(&vault, "alice").seal_with_nonce(
                seq,
                &header,
                &prev,
                "activity-capture",
                &dek,
                &pt,
                &nonce,
            );
            println!("dek: {}\nvault_id: {}\nuser: alice\nseq: {seq}\nkind: {}\nflags: {flags}\nepoch: 3\npolicy_version: 1\ncreated_us: 1764000000000000\nprev_tag: {}\npurpose: activity-capture\nnonce: {}\nplaintext: {}\nexpect: {}\n",
                hexs(dek.expose()), hexs(&vault), if kind == RecordKind::Frame { "frame" } else { "chunk" }, hexs(&prev), hexs(&nonce), hexs(&pt), hexs(&v));
        }
    }

    /// A chunk sealed where it lies is stored as the same bytes a copy sealed into the
    /// segment buffer would be, and opens like any record.
    #[test]
    fn sealing_in_place_stores_what_sealing_a_copy_does() {
        let b = RecordBinding::new(&[1; 16], "alice");
        let dek = Key32::generate();
        let nonce = [5u8; NONCE_LEN];
        let plaintext: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let copy = b.seal_with_nonce(4, &header(), &[2; 16], "p", &dek, &plaintext, &nonce);
        let mut body = plaintext.clone();
        let (prefix, opener) =
            b.seal_in_place(4, &header(), &[2; 16], "p", &dek, &mut body, &nonce);
        let stored = [&prefix[..], &body, &opener.tag].concat();
        assert_eq!(stored, copy);
        assert_eq!(tag_of(&stored), opener.tag);
        assert_eq!(
            &b.open(4, &stored, &[2; 16], "p", &dek).unwrap()[..],
            &plaintext[..]
        );
        aead::open_in_place(&dek, &opener.nonce, &opener.ad, &mut body, &opener.tag).unwrap();
        assert_eq!(body, plaintext);
    }

    #[test]
    fn overhead_is_what_the_format_says() {
        let b = RecordBinding::new(&[1; 16], "alice");
        let v = b.seal(
            1,
            &header(),
            &[0; 16],
            "p",
            &Key32::generate(),
            &[0u8; 1000],
        );
        assert_eq!(v.len(), 1000 + OVERHEAD);
        assert_eq!(OVERHEAD, 59);
    }
}
