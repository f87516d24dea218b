//! The device signing key: Ed25519 (ring), derived from a 32-byte seed kept in the
//! keychain. It signs every sealed bundle so the collector can tell bundles of one
//! device apart and see any change to them.

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::{Error, Result};
use crate::secret::Key32;

/// An Ed25519 signing key. `Debug` shows the public key only.
pub struct DeviceKey {
    pair: Ed25519KeyPair,
}

impl DeviceKey {
    /// The key pair whose RFC 8032 private key is `seed`.
    pub fn from_seed(seed: &Key32) -> Result<Self> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.expose())
            .map_err(|_| Error::invalid("the Ed25519 seed was rejected"))?;
        Ok(DeviceKey { pair })
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// A 64-byte Ed25519 signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey(public {})", hex(&self.public_key()))
    }
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Checks an Ed25519 signature. Any failure (bad key encoding, bad signature) is
/// `Error::Tampered`: the caller decides what the signed thing was.
pub fn verify_ed25519(public: &[u8; 32], msg: &[u8], sig: &[u8]) -> Result<()> {
    UnparsedPublicKey::new(&signature::ED25519, public)
        .verify(msg, sig)
        .map_err(|_| Error::tampered("an Ed25519 signature does not verify"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject() {
        let k = DeviceKey::from_seed(&Key32::generate()).unwrap();
        let sig = k.sign(b"hello");
        verify_ed25519(&k.public_key(), b"hello", &sig).unwrap();
        assert!(verify_ed25519(&k.public_key(), b"hellp", &sig).is_err());
        let mut bad = sig;
        bad[3] ^= 1;
        assert!(verify_ed25519(&k.public_key(), b"hello", &bad).is_err());
        assert!(verify_ed25519(&k.public_key(), b"hello", &sig[..63]).is_err());
    }

    #[test]
    fn rfc8032_test_1() {
        // RFC 8032 section 7.1, TEST 1.
        let mut seed = data_encoding::HEXLOWER
            .decode(b"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let k = DeviceKey::from_seed(&Key32::from_slice_zeroizing(&mut seed).unwrap()).unwrap();
        assert_eq!(
            hex(&k.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(
            hex(&k.sign(b"")),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert!(!format!("{k:?}").contains("9d61b1"));
    }
}
