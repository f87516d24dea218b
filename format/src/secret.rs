//! Fixed-size secret keys that zeroize on drop and never print their bytes.

use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte symmetric secret (KEK, DEK, MAC key, signing seed).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key32(Box<[u8; 32]>);

impl Key32 {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut k = Box::new([0u8; 32]);
        fill_random(&mut k[..]);
        Key32(k)
    }

    /// Takes a key out of a buffer (for example one the keychain returned) and
    /// zeroizes the buffer.
    pub fn from_slice_zeroizing(buf: &mut [u8]) -> Option<Self> {
        let out = if buf.len() == 32 {
            let mut k = Box::new([0u8; 32]);
            k.copy_from_slice(buf);
            Some(Key32(k))
        } else {
            None
        };
        buf.zeroize();
        out
    }

    /// The key bytes. The one accessor: callers pass them straight to a primitive.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key32(<redacted>)")
    }
}

/// A plaintext buffer of captured data: its whole allocation (contents and spare
/// capacity) is wiped when it is dropped, and it never prints its bytes.
///
/// `Zeroizing<Vec<u8>>` wipes a vector one volatile byte at a time (about 7 GB/s here);
/// this wipes it as a slice, with one optimisation barrier (about 30 GB/s), which for
/// a 1.5 MB screenshot is the difference between 0.2 and 0.05 ms on the writer thread.
#[derive(Default)]
pub struct PlainBuf(Vec<u8>);

impl PlainBuf {
    /// Takes ownership of `bytes`, to be wiped when dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        PlainBuf(bytes)
    }
}

impl std::ops::Deref for PlainBuf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for PlainBuf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Zeroize for PlainBuf {
    fn zeroize(&mut self) {
        self.0.as_mut_slice().zeroize();
        self.0.spare_capacity_mut().zeroize();
        self.0.clear();
    }
}

impl Drop for PlainBuf {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for PlainBuf {}

impl Clone for PlainBuf {
    fn clone(&self) -> Self {
        PlainBuf(self.0.clone())
    }
}

impl std::fmt::Debug for PlainBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlainBuf(<{} bytes redacted>)", self.0.len())
    }
}

/// Appends `more` to a secret buffer. When the buffer must grow, the bytes move to a
/// larger allocation and the old one is wiped (a plain `extend` would hand it back to
/// the allocator as it is).
pub fn extend_zeroizing(buf: &mut PlainBuf, more: &[u8]) {
    reserve_zeroizing(buf, more.len());
    buf.extend_from_slice(more);
}

/// Makes room for `additional` more bytes in a secret buffer; when it must grow, the
/// bytes move to a larger allocation and the old one is wiped.
#[inline]
pub fn reserve_zeroizing(buf: &mut PlainBuf, additional: usize) {
    if buf.capacity() - buf.len() < additional {
        grow_zeroizing(buf, additional);
    }
}

/// [`reserve_zeroizing`]'s move to a larger allocation, kept out of line: on the append
/// path it is rare, and inlined it slowed every mouse move by about 5%.
#[cold]
#[inline(never)]
fn grow_zeroizing(buf: &mut PlainBuf, additional: usize) {
    let cap = (buf.len() + additional).max(buf.capacity() * 2);
    let mut bigger = PlainBuf::new(Vec::with_capacity(cap));
    bigger.extend_from_slice(buf);
    std::mem::swap(buf, &mut bigger); // `bigger`, now the old buffer, is wiped on drop
}

/// Pushes onto a vector of secret values, wiping the old allocation when it grows (see
/// [`extend_zeroizing`]).
pub fn push_zeroizing<T: Zeroize>(v: &mut Vec<T>, item: T) {
    if v.len() == v.capacity() {
        let mut bigger = Vec::with_capacity((v.capacity() * 2).max(4));
        bigger.append(v);
        // Moved out bitwise: the old allocation still holds copies, wiped here.
        v.zeroize();
        *v = bigger;
    }
    v.push(item);
}

/// Fills `buf` from the operating system's CSPRNG (via `rand`'s thread RNG, which is
/// seeded from and periodically reseeded by the OS).
pub fn fill_random(buf: &mut [u8]) {
    use rand::Rng;
    rand::rng().fill_bytes(buf);
}

/// `N` random bytes.
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut a = [0u8; N];
    fill_random(&mut a);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growing_secret_buffers_keep_their_contents() {
        let mut buf = PlainBuf::default();
        let mut expect = Vec::new();
        for i in 0..200u8 {
            let piece = vec![i; usize::from(i % 7)];
            extend_zeroizing(&mut buf, &piece);
            expect.extend_from_slice(&piece);
        }
        assert_eq!(*buf, expect);
        let mut v: Vec<u64> = Vec::new();
        for i in 0..1000 {
            push_zeroizing(&mut v, i);
            assert!(v.capacity() >= v.len());
        }
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let k = Key32::from_slice_zeroizing(&mut [0xAB; 32]).unwrap();
        let s = format!("{k:?}");
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("ab,"),
            "{s}"
        );
    }

    #[test]
    fn source_buffer_is_zeroized() {
        let mut buf = [7u8; 32];
        let _k = Key32::from_slice_zeroizing(&mut buf).unwrap();
        assert_eq!(buf, [0u8; 32]);
        let mut short = [7u8; 31];
        assert!(Key32::from_slice_zeroizing(&mut short).is_none());
        assert_eq!(short, [0u8; 31]);
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(Key32::generate().expose(), Key32::generate().expose());
    }
}
