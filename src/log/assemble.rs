//! Turns decrypted records back into events: frames hold consecutive events, chunks are
//! joined until the last-chunk flag.

use crate::error::{Error, Result};
use crate::log::framer::FRAME_PREFIX;
use crate::log::record::{RecordHeader, RecordKind, FLAG_FIRST, FLAG_LAST};
use capvault_format::secret::{extend_zeroizing, push_zeroizing, PlainBuf};
use capvault_format::{Event, SeqEvent};

#[derive(Default)]
pub(crate) struct Assembler {
    partial: Option<PlainBuf>,
}

impl Assembler {
    /// True when no chunked payload is half-read (a safe place to end a read).
    pub(crate) fn at_boundary(&self) -> bool {
        self.partial.is_none()
    }

    /// Feeds one decrypted record; appends any completed events to `out`.
    pub(crate) fn feed(
        &mut self,
        header: &RecordHeader,
        plaintext: PlainBuf,
        out: &mut Vec<SeqEvent>,
    ) -> Result<()> {
        match header.kind {
            RecordKind::Frame => {
                if self.partial.is_some() {
                    return Err(Error::tampered("a frame interrupts a chunked payload"));
                }
                let (seq, mut rest) = split_seq(&plaintext)?;
                let mut seq = Some(seq);
                while !rest.is_empty() {
                    let (event, r) = Event::decode_from(rest)?;
                    // A frame cannot run past the last sequence number.
                    let s = seq.ok_or_else(|| {
                        Error::tampered("a frame's events run past the last sequence number")
                    })?;
                    push_zeroizing(out, SeqEvent { seq: s, event });
                    seq = s.checked_add(1);
                    rest = r;
                }
            }
            RecordKind::Chunk => {
                let first = header.flags & FLAG_FIRST != 0;
                match (&mut self.partial, first) {
                    (None, true) => self.partial = Some(plaintext),
                    (Some(p), false) => extend_zeroizing(p, &plaintext),
                    _ => {
                        return Err(Error::tampered(
                            "chunks of a large payload are out of order",
                        ))
                    }
                }
                if header.flags & FLAG_LAST != 0 {
                    let whole = self.partial.take().expect("set above");
                    let (seq, body) = split_seq(&whole)?;
                    let (event, rest) = Event::decode_from(body)?;
                    if !rest.is_empty() {
                        return Err(Error::tampered("a chunked payload has trailing bytes"));
                    }
                    push_zeroizing(out, SeqEvent { seq, event });
                }
            }
        }
        Ok(())
    }
}

fn split_seq(p: &[u8]) -> Result<(u64, &[u8])> {
    if p.len() < FRAME_PREFIX {
        return Err(Error::tampered(
            "a record is too short to hold its event sequence number",
        ));
    }
    Ok((u64::from_be_bytes(p[..8].try_into().expect("8")), &p[8..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Found by fuzzing the event decoder: a frame starting at the last sequence number
    /// with two events overflowed the sequence counter (a panic with overflow checks, a
    /// wrap to 0 without).
    #[test]
    fn a_frame_past_the_last_sequence_number_is_refused() {
        let header = RecordHeader {
            kind: RecordKind::Frame,
            flags: 0,
            epoch: 1,
            policy_version: 1,
            created_us: 0,
        };
        let ev = Event::Scroll {
            ts_us: 1,
            dx: 0,
            dy: 1,
        };
        let frame = |first: u64, n: usize| {
            let mut p = first.to_be_bytes().to_vec();
            for _ in 0..n {
                ev.encode_into(&mut p);
            }
            PlainBuf::new(p)
        };
        let mut out = Vec::new();
        let e = Assembler::default()
            .feed(&header, frame(u64::MAX, 2), &mut out)
            .unwrap_err();
        assert!(matches!(e, Error::Tampered(_)), "{e}");
        // One event at the last number is fine.
        let mut out = Vec::new();
        Assembler::default()
            .feed(&header, frame(u64::MAX, 1), &mut out)
            .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seq, u64::MAX);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Untrusted bytes (a damaged or forged record that somehow authenticated, or a
        /// fuzzed header) never panic the parsers: they decode or give an error.
        #[test]
        fn arbitrary_record_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            kind in 1u8..=2,
            flags in 0u8..=3,
        ) {
            let _ = RecordHeader::parse(&bytes);
            let _ = Event::decode_from(&bytes);
            let header = RecordHeader {
                kind: if kind == 1 { RecordKind::Frame } else { RecordKind::Chunk },
                flags: if kind == 1 { 0 } else { flags },
                epoch: 1,
                policy_version: 1,
                created_us: 0,
            };
            let mut asm = Assembler::default();
            let mut out = Vec::new();
            let _ = asm.feed(&header, PlainBuf::new(bytes.clone()), &mut out);
            let _ = asm.feed(&header, PlainBuf::new(bytes), &mut out);
        }
    }
}
