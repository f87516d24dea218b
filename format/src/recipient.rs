//! Collector keys as text: recipients (public, given to vaults), identities (secret,
//! kept by the collector) and receipt keys (public, given to vaults that check receipts).
//!
//! Every key string is `PREFIX || BASE32(payload || checksum)`, where the checksum is the
//! first 4 bytes of `SHA-256(PREFIX || payload)`. Public keys use lower-case base32,
//! secret keys upper-case (as age does), so a secret is hard to mistake for a recipient.
//! The byte layouts are specified in docs/FORMAT.md, "Text key encodings".

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use hpke::{Deserializable, Kem as _, Serializable};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::secret::Key32;

pub(crate) type X25519Kem = hpke::kem::X25519HkdfSha256;
pub(crate) type XWingKem = hpke::kem::XWing;

/// Prefix of an X25519 recipient.
pub(crate) const RECIPIENT_X25519: &str = "cvrecip-x25519-1";
/// Prefix of an X-Wing recipient.
pub(crate) const RECIPIENT_XWING: &str = "cvrecip-xwing-1";
/// Prefix of an X25519 identity.
pub(crate) const IDENTITY_X25519: &str = "CVSECRET-X25519-1";
/// Prefix of an X-Wing identity.
pub(crate) const IDENTITY_XWING: &str = "CVSECRET-XWING-1";
/// Prefix of a receipt verification key.
pub(crate) const RECEIPT_KEY: &str = "cvreceipt-ed25519-1";

const CHECKSUM_LEN: usize = 4;

/// The HPKE cipher suite a bundle is sealed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Suite {
    /// RFC 9180 DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305. Any RFC 9180
    /// implementation opens it. The default.
    X25519,
    /// Hybrid post-quantum: X-Wing (ML-KEM-768 + X25519) KEM, HKDF-SHA256,
    /// ChaCha20-Poly1305.
    XWing,
}

impl Suite {
    /// The RFC 9180 KEM identifier (0x0020 for X25519, 0x647a for X-Wing).
    pub fn kem_id(self) -> u16 {
        match self {
            Suite::X25519 => X25519Kem::KEM_ID,
            Suite::XWing => XWingKem::KEM_ID,
        }
    }

    /// The RFC 9180 KDF identifier: HKDF-SHA256 (0x0001).
    pub fn kdf_id(self) -> u16 {
        0x0001
    }

    /// The RFC 9180 AEAD identifier: ChaCha20-Poly1305 (0x0003).
    pub fn aead_id(self) -> u16 {
        0x0003
    }

    /// The suite with these RFC 9180 identifiers, if capvault uses it.
    pub fn from_ids(kem: u16, kdf: u16, aead: u16) -> Option<Suite> {
        [Suite::X25519, Suite::XWing]
            .into_iter()
            .find(|s| s.kem_id() == kem && s.kdf_id() == kdf && s.aead_id() == aead)
    }

    /// A short name: "x25519" or "xwing".
    pub fn name(self) -> &'static str {
        match self {
            Suite::X25519 => "x25519",
            Suite::XWing => "xwing",
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "x25519" => Ok(Suite::X25519),
            "xwing" | "x-wing" | "pq" => Ok(Suite::XWing),
            _ => Err(Error::invalid(format!(
                "unknown suite {s:?}: use \"x25519\" or \"xwing\""
            ))),
        }
    }
}

// ----- the text encoding -----

fn checksum(prefix: &str, payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prefix.as_bytes());
    ctx.update(payload);
    let d = ctx.finish();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&d.as_ref()[..CHECKSUM_LEN]);
    out
}

fn base32(upper: bool) -> data_encoding::Encoding {
    if upper {
        data_encoding::BASE32_NOPAD
    } else {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        spec.encoding().expect("a valid base32 specification")
    }
}

/// `prefix || base32(payload || checksum)`. Secret payloads are encoded into a
/// zeroizing string.
pub(crate) fn encode_key(prefix: &str, payload: &[u8], upper: bool) -> Zeroizing<String> {
    let mut body = Zeroizing::new(Vec::with_capacity(payload.len() + CHECKSUM_LEN));
    body.extend_from_slice(payload);
    body.extend_from_slice(&checksum(prefix, payload));
    let mut out = Zeroizing::new(String::with_capacity(prefix.len() + body.len() * 8 / 5 + 8));
    out.push_str(prefix);
    base32(upper).encode_append(&body, &mut out);
    out
}

/// Decodes a key string whose prefix must be one of `prefixes`; returns the index of
/// the prefix and the payload (checksum verified).
pub(crate) fn decode_key(
    what: &str,
    s: &str,
    prefixes: &[&str],
    upper: bool,
) -> Result<(usize, Zeroizing<Vec<u8>>)> {
    let s = s.trim();
    let Some((idx, prefix)) = prefixes
        .iter()
        .enumerate()
        .find(|(_, p)| s.starts_with(**p))
    else {
        let hint = if prefixes
            .iter()
            .any(|p| s.eq_ignore_ascii_case(p) || s.len() < p.len())
        {
            " (it is empty or too short)"
        } else {
            ""
        };
        return Err(Error::invalid(format!(
            "this is not a capvault {what}{hint}: it must start with {}",
            prefixes.join(" or ")
        )));
    };
    let body = &s[prefix.len()..];
    let alphabet: &[u8] = if upper {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    } else {
        b"abcdefghijklmnopqrstuvwxyz234567"
    };
    if body.bytes().any(|c| !alphabet.contains(&c)) {
        return Err(Error::invalid(format!(
            "the {what} is not valid: its text after {prefix} is not {} base32",
            if upper { "upper-case" } else { "lower-case" }
        )));
    }
    // Every symbol is valid, so a decoding error is a length that no payload has.
    let decoded = Zeroizing::new(base32(upper).decode(body.as_bytes()).map_err(|_| {
        Error::invalid(format!(
            "the {what} checksum failed: the text was truncated or has extra characters"
        ))
    })?);
    if decoded.len() < CHECKSUM_LEN {
        return Err(Error::invalid(format!("the {what} is too short")));
    }
    let (payload, sum) = decoded.split_at(decoded.len() - CHECKSUM_LEN);
    if checksum(prefix, payload)[..] != sum[..] {
        return Err(Error::invalid(format!(
            "the {what} checksum failed: the text was mistyped or truncated"
        )));
    }
    Ok((idx, Zeroizing::new(payload.to_vec())))
}

// ----- recipients -----

#[derive(Clone)]
pub(crate) enum RecipientKey {
    X25519(<X25519Kem as hpke::Kem>::PublicKey),
    XWing(Box<<XWingKem as hpke::Kem>::PublicKey>),
}

/// A collector's public key that bundles are sealed to, as text
/// (`cvrecip-x25519-1…` or `cvrecip-xwing-1…`).
#[derive(Clone)]
pub struct Recipient {
    pub(crate) key: RecipientKey,
}

impl Recipient {
    /// The HPKE suite bundles sealed to this recipient use.
    pub fn suite(&self) -> Suite {
        match self.key {
            RecipientKey::X25519(_) => Suite::X25519,
            RecipientKey::XWing(_) => Suite::XWing,
        }
    }

    /// The KEM public key bytes (32 bytes for X25519, 1216 for X-Wing).
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.key {
            RecipientKey::X25519(pk) => pk.to_bytes().to_vec(),
            RecipientKey::XWing(pk) => pk.to_bytes().to_vec(),
        }
    }
}

impl PartialEq for Recipient {
    fn eq(&self, other: &Self) -> bool {
        self.suite() == other.suite() && self.public_key_bytes() == other.public_key_bytes()
    }
}
impl Eq for Recipient {}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = match self.suite() {
            Suite::X25519 => RECIPIENT_X25519,
            Suite::XWing => RECIPIENT_XWING,
        };
        f.write_str(&encode_key(prefix, &self.public_key_bytes(), false))
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        // The whole X-Wing key is ~2,000 characters; a prefix identifies it.
        let end = s.len().min(40);
        write!(f, "Recipient({}…)", &s[..end])
    }
}

impl FromStr for Recipient {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (idx, payload) =
            decode_key("recipient", s, &[RECIPIENT_X25519, RECIPIENT_XWING], false)?;
        let bad = |_| Error::invalid("the recipient's public key is not a valid key");
        let key = match idx {
            0 => RecipientKey::X25519(
                <X25519Kem as hpke::Kem>::PublicKey::from_bytes(&payload).map_err(bad)?,
            ),
            _ => RecipientKey::XWing(Box::new(
                <XWingKem as hpke::Kem>::PublicKey::from_bytes(&payload).map_err(bad)?,
            )),
        };
        Ok(Recipient { key })
    }
}

// ----- receipt keys -----

/// The collector's Ed25519 receipt verification key, as text (`cvreceipt-ed25519-1…`).
/// A vault configured with it accepts an `ack` only with a receipt signed by the
/// matching identity.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReceiptKey {
    pub(crate) public: [u8; 32],
}

impl ReceiptKey {
    /// The 32-byte Ed25519 public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.public
    }
}

impl fmt::Display for ReceiptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encode_key(RECEIPT_KEY, &self.public, false))
    }
}

impl fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReceiptKey({self})")
    }
}

impl FromStr for ReceiptKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (_, payload) = decode_key("receipt key", s, &[RECEIPT_KEY], false)?;
        let public: [u8; 32] = payload[..]
            .try_into()
            .map_err(|_| Error::invalid("the receipt key has the wrong length"))?;
        Ok(ReceiptKey { public })
    }
}

// ----- identities -----

/// True when `s` holds an identity with key material (`CVSECRET-X25519-1` or
/// `CVSECRET-XWING-1` followed by more, in any letter case): text that must not be
/// echoed, such as an identity given where the path of its file belongs.
pub fn holds_identity(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    [IDENTITY_X25519, IDENTITY_XWING].iter().any(|prefix| {
        upper
            .match_indices(prefix)
            .any(|(at, _)| upper.len() > at + prefix.len())
    })
}

/// A collector's secret key, as text (`CVSECRET-X25519-1…` or `CVSECRET-XWING-1…`): the
/// KEM private key that opens bundles and the Ed25519 seed that signs receipts.
///
/// `Display` (and [`Identity::to_secret_string`]) is the only way to print the secret;
/// `Debug` shows the recipient only.
pub struct Identity {
    suite: Suite,
    kem_secret: Key32,
    receipt_seed: Key32,
}

impl Identity {
    /// A new random identity for `suite`.
    pub fn generate(suite: Suite) -> Identity {
        Identity {
            suite,
            kem_secret: Key32::generate(),
            receipt_seed: Key32::generate(),
        }
    }

    /// An identity from its raw parts (deterministic test vectors).
    #[cfg(test)]
    pub(crate) fn from_raw(suite: Suite, kem_secret: [u8; 32], receipt_seed: [u8; 32]) -> Identity {
        let (mut a, mut b) = (kem_secret, receipt_seed);
        Identity {
            suite,
            kem_secret: Key32::from_slice_zeroizing(&mut a).expect("32 bytes"),
            receipt_seed: Key32::from_slice_zeroizing(&mut b).expect("32 bytes"),
        }
    }

    /// The suite of this identity.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The public recipient that vaults seal to.
    pub fn recipient(&self) -> Recipient {
        let key = match self.suite {
            Suite::X25519 => RecipientKey::X25519(X25519Kem::sk_to_pk(&self.x25519_secret())),
            Suite::XWing => RecipientKey::XWing(Box::new(XWingKem::sk_to_pk(&self.xwing_secret()))),
        };
        Recipient { key }
    }

    /// The public key that checks this identity's receipts.
    pub fn receipt_key(&self) -> ReceiptKey {
        self.receipt_signer().receipt_key()
    }

    /// The secret text, in a string that is zeroized when dropped.
    pub fn to_secret_string(&self) -> Zeroizing<String> {
        let mut payload = Zeroizing::new([0u8; 64]);
        payload[..32].copy_from_slice(self.kem_secret.expose());
        payload[32..].copy_from_slice(self.receipt_seed.expose());
        let prefix = match self.suite {
            Suite::X25519 => IDENTITY_X25519,
            Suite::XWing => IDENTITY_XWING,
        };
        encode_key(prefix, &payload[..], true)
    }

    /// Writes the identity to a new file readable by its owner only (0600 on Unix),
    /// with the recipient and receipt key as `#` comment lines. Refuses to overwrite an
    /// existing file.
    pub fn write_to_file(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut file = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::invalid(format!(
                    "{} already exists; capvault does not overwrite identity files",
                    path.display()
                ))
            } else {
                Error::from(e)
            }
        })?;
        file.write_all(self.to_file_text().as_bytes())?;
        file.sync_all()?;
        Ok(())
    }

    /// The text of an identity file: the recipient and receipt key as `#` comment lines,
    /// then the secret line (what [`Identity::write_to_file`] writes).
    pub fn to_file_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::new());
        text.push_str("# capvault collector identity: keep this file secret\n");
        text.push_str(&format!("# suite: {}\n", self.suite));
        text.push_str(&format!("# recipient: {}\n", self.recipient()));
        text.push_str(&format!("# receipt key: {}\n", self.receipt_key()));
        text.push_str(&self.to_secret_string());
        text.push('\n');
        text
    }

    /// Reads an identity file written by [`Identity::write_to_file`] (blank lines and
    /// `#` comments are skipped; exactly one identity line is expected).
    pub fn read_from_file(path: &Path) -> Result<Identity> {
        let text = path.to_string_lossy();
        if holds_identity(&text) {
            // Never echoed: it is the secret itself.
            return Err(Error::invalid(
                "an identity was given where the path of its file belongs: pass the file \
                 that holds it (the identity given is not shown)",
            ));
        }
        // A path with a long base32 run may be a key without its prefix: a file of that
        // name that is not there is not named.
        let base32_run = text.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
            w.len() >= 40
                && w.bytes()
                    .all(|b| matches!(b.to_ascii_uppercase(), b'A'..=b'Z' | b'2'..=b'7'))
        });
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if base32_run => Error::NotFound(
                "identity file (its name looks like a key, so it is not shown)".into(),
            ),
            std::io::ErrorKind::NotFound => {
                Error::NotFound(format!("identity file {}", path.display()))
            }
            _ => Error::from(e),
        })?);
        Self::from_file_text(&text, &path.display().to_string())
    }

    /// Parses the text of an identity file (blank lines and `#` comments are skipped;
    /// exactly one identity line is expected). `source` names it in errors.
    pub fn from_file_text(text: &str, source: &str) -> Result<Identity> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let first = lines
            .next()
            .ok_or_else(|| Error::invalid(format!("{source} holds no identity")))?;
        if lines.next().is_some() {
            return Err(Error::invalid(format!(
                "{source} holds more than one identity line"
            )));
        }
        first.parse()
    }

    pub(crate) fn x25519_secret(&self) -> <X25519Kem as hpke::Kem>::PrivateKey {
        <X25519Kem as hpke::Kem>::PrivateKey::from_bytes(self.kem_secret.expose())
            .expect("any 32 bytes are an X25519 private key")
    }

    pub(crate) fn xwing_secret(&self) -> <XWingKem as hpke::Kem>::PrivateKey {
        <XWingKem as hpke::Kem>::PrivateKey::from_bytes(self.kem_secret.expose())
            .expect("any 32 bytes are an X-Wing decapsulation key seed")
    }

    pub(crate) fn receipt_signer(&self) -> crate::receipt::ReceiptSigner {
        crate::receipt::ReceiptSigner::from_seed(self.receipt_seed.clone())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_secret_string())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({}, secret <redacted>)", self.suite)
    }
}

impl FromStr for Identity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (idx, mut payload) =
            decode_key("identity", s, &[IDENTITY_X25519, IDENTITY_XWING], true)?;
        if payload.len() != 64 {
            return Err(Error::invalid("the identity has the wrong length"));
        }
        let suite = if idx == 0 {
            Suite::X25519
        } else {
            Suite::XWing
        };
        let kem_secret = Key32::from_slice_zeroizing(&mut payload[..32]).expect("32 bytes");
        let receipt_seed = Key32::from_slice_zeroizing(&mut payload[32..]).expect("32 bytes");
        Ok(Identity {
            suite,
            kem_secret,
            receipt_seed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_for_both_suites() {
        for suite in [Suite::X25519, Suite::XWing] {
            let id = Identity::generate(suite);
            let text = id.to_string();
            assert!(text.starts_with("CVSECRET-"), "{text}");
            let back: Identity = text.parse().unwrap();
            assert_eq!(back.recipient(), id.recipient());
            assert_eq!(back.receipt_key(), id.receipt_key());
            let r = id.recipient().to_string();
            assert!(r.starts_with("cvrecip-"));
            assert_eq!(r.parse::<Recipient>().unwrap(), id.recipient());
            assert_eq!(r.parse::<Recipient>().unwrap().suite(), suite);
            let k = id.receipt_key().to_string();
            assert_eq!(k.parse::<ReceiptKey>().unwrap(), id.receipt_key());
        }
        assert_eq!(
            Identity::generate(Suite::X25519)
                .recipient()
                .to_string()
                .len(),
            RECIPIENT_X25519.len() + 58
        );
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        let r = Identity::generate(Suite::X25519).recipient().to_string();
        let mut bytes = r.clone().into_bytes();
        let i = RECIPIENT_X25519.len() + 5;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        let e = typo.parse::<Recipient>().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        assert!(e.to_string().contains("checksum failed"), "{e}");
        let e = r[..r.len() - 3].parse::<Recipient>().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = r.to_uppercase().parse::<Recipient>().unwrap_err();
        assert!(e.to_string().contains("must start with"), "{e}");
        let e = "".parse::<Recipient>().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        let e = format!("{}!!", &r).parse::<Recipient>().unwrap_err();
        assert!(e.to_string().contains("base32"), "{e}");
        // A recipient is not an identity and vice versa.
        assert!(r.parse::<Identity>().is_err());
        let id = Identity::generate(Suite::XWing).to_string();
        assert!(id.parse::<Recipient>().is_err());
        assert!(id.parse::<ReceiptKey>().is_err());
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let id = Identity::generate(Suite::X25519);
        let secret = id.to_string();
        let body = &secret[IDENTITY_X25519.len()..];
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&body[..10]), "{dbg}");
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn identity_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.txt");
        let id = Identity::generate(Suite::XWing);
        id.write_to_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = Identity::read_from_file(&path).unwrap();
        // The secret given as a path is refused, and not echoed.
        let secret = id.to_secret_string();
        for given in [
            secret.to_string(),
            secret.to_ascii_lowercase(),
            format!("./{}", &*secret),
        ] {
            let e = Identity::read_from_file(Path::new(&given))
                .unwrap_err()
                .to_string();
            assert!(!holds_identity(&e) && e.contains("not shown"), "{e}");
        }
        assert!(
            !holds_identity("CVSECRET-X25519-1"),
            "a bare label is a hint"
        );
        // The key without its prefix, as a path that is not there: not echoed.
        let body = secret[IDENTITY_X25519.len()..].to_string();
        let e = Identity::read_from_file(Path::new(&body))
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&body[..30]) && e.contains("not shown"), "{e}");
        assert_eq!(back.recipient(), id.recipient());
        let e = Identity::generate(Suite::X25519)
            .write_to_file(&path)
            .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(
            Identity::read_from_file(&path).unwrap().recipient(),
            id.recipient()
        );
    }
}
