//! Fixed-size secret keys that zeroize on drop and never print their bytes.

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

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

/// A plaintext buffer of captured data: zeroized when dropped.
pub type PlainBuf = Zeroizing<Vec<u8>>;

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
