//! The chunks of a large payload (a screenshot): each is its own part of the buffer that
//! holds the payload's plaintext, carved out of it without a copy. The writer seals a
//! chunk where it lies and the segment write takes the sealed bytes from there, so a
//! payload's bytes are not copied on their way to the file (docs/PERFORMANCE.md, P3).
//!
//! A chunk holds plaintext until it is sealed and is wiped if dropped before; once
//! sealed it holds ciphertext only. A write that fails after sealing opens its chunks
//! again ([`Chunk::unseal`]), so a batch waiting to be tried again always holds
//! plaintext, sealed afresh (fresh nonces) when tried again.

use bytes::{Bytes, BytesMut};
use zeroize::Zeroize;

use crate::aead::{self, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};
use capvault_format::secret::{Key32, PlainBuf};

/// One chunk of a large payload on its way to the log.
pub(crate) struct Chunk {
    state: State,
    /// Its plaintext length, sealed or not (the writer counts plaintext bytes).
    len: usize,
}

enum State {
    Plain(BytesMut),
    Sealed(Bytes, Opener),
    /// Sealed, then not opened again (see [`Chunk::unseal`]); also the placeholder while
    /// moving from one state to another.
    Lost,
}

/// What opens a chunk sealed in place again: its key epoch, nonce, associated data and tag.
pub(crate) struct Opener {
    pub epoch: u32,
    pub nonce: [u8; NONCE_LEN],
    pub ad: Vec<u8>,
    pub tag: [u8; TAG_LEN],
}

impl Chunk {
    fn plain(bytes: BytesMut) -> Chunk {
        Chunk {
            len: bytes.len(),
            state: State::Plain(bytes),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Seals the chunk in place with `seal` (which gets its plaintext and returns what
    /// opens it again); returns the sealed bytes, shared with the chunk until it is
    /// dropped or opened again.
    pub(crate) fn seal(&mut self, seal: impl FnOnce(&mut [u8]) -> Opener) -> Result<Bytes> {
        // Sealed while still held as plaintext, so a panic inside leaves it to be wiped.
        let State::Plain(bytes) = &mut self.state else {
            return Err(Error::Storage(
                "a chunk of a large payload could not be opened again after a failed write \
                 and cannot be stored; close the vault and open it again"
                    .into(),
            ));
        };
        let opener = seal(bytes);
        let State::Plain(bytes) = std::mem::replace(&mut self.state, State::Lost) else {
            unreachable!("matched above");
        };
        let sealed = bytes.freeze();
        self.state = State::Sealed(sealed.clone(), opener);
        Ok(sealed)
    }

    /// Opens a sealed chunk again (after a failed write), with the data key of the epoch
    /// it was sealed under. A chunk not sealed is left as it is, and so is one whose key
    /// is not given. It is opened in place when nothing else holds its bytes, else in a
    /// copy of them (ciphertext: the payload's other chunks share the buffer's count, so
    /// usually a copy). A failure to open (which only a wrong key or a memory fault can
    /// cause) leaves nothing (the AEAD wipes what it could not authenticate): the chunk
    /// is lost, and the next [`Chunk::seal`] says so.
    pub(crate) fn unseal<'k>(&mut self, dek_of: impl FnOnce(u32) -> Option<&'k Key32>) {
        let State::Sealed(_, opener) = &self.state else {
            return;
        };
        let Some(dek) = dek_of(opener.epoch) else {
            return;
        };
        let State::Sealed(sealed, opener) = std::mem::replace(&mut self.state, State::Lost) else {
            unreachable!("matched above");
        };
        let mut bytes = sealed
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        match aead::open_in_place(dek, &opener.nonce, &opener.ad, &mut bytes, &opener.tag) {
            Ok(()) => self.state = State::Plain(bytes),
            Err(_) => self.state = State::Lost,
        }
    }

    #[cfg(test)]
    fn is_sealed(&self) -> bool {
        matches!(self.state, State::Sealed(..))
    }

    #[cfg(test)]
    fn bytes(&self) -> &[u8] {
        match &self.state {
            State::Plain(b) => b,
            State::Sealed(b, _) => b,
            State::Lost => &[],
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let State::Plain(bytes) = &mut self.state {
            wipe(bytes);
        }
    }
}

fn wipe(bytes: &mut BytesMut) {
    bytes[..].zeroize();
    bytes.spare_capacity_mut().zeroize();
}

/// Takes `buf`'s bytes into a [`BytesMut`] over the same allocation (no copy, so no
/// plaintext is left behind in memory given back), its unused capacity wiped first.
fn into_bytes_mut(buf: &mut PlainBuf) -> BytesMut {
    buf.spare_capacity_mut().zeroize();
    BytesMut::from(Bytes::from(std::mem::take(&mut **buf)))
}

/// Carves the payload plaintext `head` followed by `body` into chunks of `chunk_bytes`
/// (the last one shorter). Every chunk is a part of `head`'s or `body`'s own buffer,
/// except one that straddles the two, which is copied (and the parts it was copied from
/// wiped): with a payload taken from its event, `head` is the few bytes before the
/// payload and only the first chunk is copied.
pub(crate) fn carve(head: &mut PlainBuf, body: &mut PlainBuf, chunk_bytes: usize) -> Vec<Chunk> {
    let mut head = into_bytes_mut(head);
    let mut body = into_bytes_mut(body);
    let mut left = head.len() + body.len();
    let mut chunks = Vec::with_capacity(left.div_ceil(chunk_bytes.max(1)));
    while left > 0 {
        let want = chunk_bytes.max(1).min(left);
        let chunk = if head.is_empty() {
            body.split_to(want)
        } else if head.len() >= want {
            head.split_to(want)
        } else {
            let mut a = head.split();
            let mut b = body.split_to(want - a.len());
            let mut joined = BytesMut::with_capacity(want);
            joined.extend_from_slice(&a);
            joined.extend_from_slice(&b);
            wipe(&mut a);
            wipe(&mut b);
            joined
        };
        left -= want;
        chunks.push(Chunk::plain(chunk));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(bytes: &[u8]) -> PlainBuf {
        PlainBuf::new(bytes.to_vec())
    }

    #[test]
    fn carving_keeps_every_byte_in_order_in_chunks_of_the_size() {
        let head: Vec<u8> = (0..30u8).collect();
        let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for chunk_bytes in [1, 7, 30, 31, 64, 1030, 5000] {
            let chunks = carve(&mut plain(&head), &mut plain(&body), chunk_bytes);
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.bytes().to_vec()).collect();
            assert_eq!(joined, [&head[..], &body[..]].concat(), "{chunk_bytes}");
            let (last, full) = chunks.split_last().unwrap();
            assert!(full.iter().all(|c| c.len() == chunk_bytes));
            assert!((1..=chunk_bytes).contains(&last.len()));
        }
        // A payload encoded whole (nothing taken) is all head.
        let chunks = carve(&mut plain(&body), &mut PlainBuf::default(), 300);
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks[3].bytes(), &body[900..]);
    }

    /// The chunks are parts of the payload's own buffer: converting it copied nothing, so
    /// no copy of the plaintext was given back to the allocator unwiped.
    #[test]
    fn chunks_of_the_body_are_parts_of_its_buffer() {
        // Exactly full, and with room to spare (a buffer the caller grew).
        let mut roomy = Vec::with_capacity(150_000);
        roomy.resize(100_000, 9u8);
        for body in [vec![9u8; 100_000], roomy] {
            let at = body.as_ptr();
            let mut body = PlainBuf::new(body);
            let chunks = carve(&mut plain(b"head"), &mut body, 10_000);
            // The first chunk straddles head and body (copied); the second starts in the
            // body where the first chunk's part of it ended.
            assert_eq!(chunks[1].bytes().as_ptr(), at.wrapping_add(10_000 - 4));
            assert_eq!(
                chunks[10].bytes().as_ptr(),
                at.wrapping_add(100_000 - chunks[10].len())
            );
        }
    }

    /// A seal that panics leaves the chunk holding its plaintext, so its drop wipes it.
    #[test]
    fn a_seal_that_panics_leaves_the_chunk_to_be_wiped() {
        let mut chunks = carve(&mut plain(b"h"), &mut plain(&[7u8; 100]), 50);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = chunks[1].seal(|_| panic!("inside the cipher"));
        }));
        assert!(caught.is_err());
        assert!(matches!(chunks[1].state, State::Plain(_)));
        assert_eq!(chunks[1].bytes(), &[7u8; 50][..]);
    }

    #[test]
    fn a_chunk_sealed_in_place_opens_back_to_its_plaintext() {
        let dek = Key32::generate();
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut chunks = carve(&mut plain(b"h"), &mut plain(&body), 2048);
        let nonce = aead::new_nonce();
        let sealed = chunks[1]
            .seal(|b| Opener {
                epoch: 3,
                nonce,
                ad: b"ad".to_vec(),
                tag: aead::seal_in_place(&dek, &nonce, b"ad", b),
            })
            .unwrap();
        assert!(chunks[1].is_sealed());
        assert_ne!(&sealed[..], &body[2047..4095], "sealed in place");
        // Sealing again is refused until opened.
        let e = chunks[1].seal(|_| unreachable!()).unwrap_err();
        assert!(matches!(e, Error::Storage(_)), "{e}");
        // Opened while the sealed bytes are still shared (a write in flight): a copy.
        chunks[1].unseal(|e| (e == 3).then_some(&dek));
        assert!(!chunks[1].is_sealed());
        assert_eq!(chunks[1].bytes(), &body[2047..4095]);
        drop(sealed);
        // No key for the epoch leaves it as it is; a wrong key loses it, and sealing
        // says so.
        let nonce = aead::new_nonce();
        let _ = chunks[2]
            .seal(|b| Opener {
                epoch: 3,
                nonce,
                ad: Vec::new(),
                tag: aead::seal_in_place(&dek, &nonce, &[], b),
            })
            .unwrap();
        chunks[2].unseal(|_| None);
        assert!(chunks[2].is_sealed());
        let other = Key32::generate();
        chunks[2].unseal(|_| Some(&other));
        assert!(!chunks[2].is_sealed());
        assert!(chunks[2].bytes().is_empty());
        let e = chunks[2].seal(|_| unreachable!()).unwrap_err();
        assert!(e.to_string().contains("could not be opened again"), "{e}");
        chunks[2].unseal(|_| Some(&dek));
        assert!(chunks[2].bytes().is_empty());
    }
}
