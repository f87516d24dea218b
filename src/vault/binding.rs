//! What ties a keychain file to the vault it describes, beyond the path it names.
//!
//! A path can be reused: a vault moved away and another made in its place, or the
//! files of one moved out of a directory another then uses. A keychain file copied
//! from the first into the second verifies and names the right path, so erase (which
//! takes its word when the database cannot be read) would delete the first vault's
//! keys. Two bindings, both under the file's MAC (docs/FORMAT.md, "Keychain file"):
//!
//! - the vault's binding value, random, written into the database when the vault is
//!   made; the file holds its hash. erase finds the value in the database, through sled
//!   or, when sled does not open (damaged, or held by another process), by looking for
//!   it in the bytes of sled's data file ([`scan`]);
//! - the directory's inode, for a database damaged beyond recognition: a directory
//!   moved away keeps its inode, so another directory at the same path has another. And
//!   so that an older file of a vault, put back into the very directory it was written
//!   in after the vault's files moved elsewhere, does not pass, the keychain remembers
//!   where each vault's file was last bound ([`home_name`]).

use std::io::Read;
use std::path::Path;

use ring::digest;

/// The database key (default tree) of the binding value.
pub(crate) const META_BIND: &[u8] = b"keychain_bind";
/// Starts every binding value, so a scan of sled's raw file finds it.
const MAGIC: &[u8] = b"capvault-keychain-bind-v1:";
const RANDOM: usize = 32;
/// A check of the value against itself: a damaged copy in a damaged file is not taken
/// for another vault's.
const CHECK: usize = 8;
const LEN: usize = MAGIC.len() + RANDOM + CHECK;

fn digest_of(magic_and_random: &[u8]) -> digest::Digest {
    digest::digest(&digest::SHA256, magic_and_random)
}

/// A fresh binding value: the magic, random bytes and their check.
pub(crate) fn new_value() -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&capvault_format::secret::random_array::<RANDOM>());
    let check = digest_of(&v);
    v.extend_from_slice(&check.as_ref()[..CHECK]);
    v
}

/// The hash the keychain file records for binding `value`, if it is one.
pub(crate) fn hash_of(value: &[u8]) -> Option<String> {
    if value.len() != LEN || !value.starts_with(MAGIC) {
        return None;
    }
    let (body, check) = value.split_at(MAGIC.len() + RANDOM);
    let d = digest_of(body);
    (d.as_ref()[..CHECK] == *check).then(|| data_encoding::HEXLOWER.encode(d.as_ref()))
}

/// The hashes of the binding values found in the bytes of sled's data file in `dir`
/// (none when there is no file, or nothing in it is recognisable). Only a regular file
/// is read: a link is not followed (the vault's `db` is its own file), and a FIFO in
/// its place is neither waited on nor read.
pub(crate) fn scan(dir: &Path) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let Ok(Some(mut f)) = crate::files::open_regular(&dir.join("db")) else {
        return found;
    };
    let finder = memchr::memmem::Finder::new(MAGIC);
    // Chunks that overlap by a value's length less one, so none is cut in two unseen.
    let mut buf = vec![0u8; 4 << 20];
    let mut kept = 0;
    loop {
        let n = match f.read(&mut buf[kept..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let end = kept + n;
        for at in finder.find_iter(&buf[..end]) {
            if let Some(h) = buf
                .get(at..at + LEN)
                .filter(|_| at + LEN <= end)
                .and_then(hash_of)
            {
                if !found.contains(&h) {
                    found.push(h);
                }
            }
        }
        // A value cut at the end starts in its last LEN - 1 bytes.
        let keep_from = end.saturating_sub(LEN - 1);
        buf.copy_within(keep_from..end, 0);
        kept = end - keep_from;
    }
    found
}

/// The keychain entry that says where the keychain file of vault `vault_hex` was last
/// bound (by an open that proved the database with its keys). An older file of the same
/// vault, bound to a directory the vault has since left, does not match it.
pub(crate) fn home_name(vault_hex: &str) -> String {
    format!("home/{vault_hex}")
}

/// The value of [`home_name`] for a file bound to `bind`, `dir` and `dir_inode`.
pub(crate) fn home_value(bind: &str, dir: &str, dir_inode: Option<u64>) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [
        "capvault-keychain-home-v1",
        bind,
        dir,
        &dir_inode.map(|i| i.to_string()).unwrap_or_default(),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish().as_ref().to_vec()
}

/// The inode of directory `dir` (`None` where there are none, or it cannot be read).
pub(crate) fn dir_inode(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir).ok().map(|m| m.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// True when both paths name one directory (say, the vault reached through a bind mount):
/// same device, same inode.
pub(crate) fn same_dir(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_found_wherever_it_sits_and_a_damaged_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let v = new_value();
        let h = hash_of(&v).unwrap();
        // Across the boundary of the first chunk, and again later.
        let mut bytes = vec![7u8; (4 << 20) - 20];
        bytes.extend_from_slice(&v);
        bytes.extend_from_slice(&[1u8; 1000]);
        let mut damaged = new_value();
        damaged[MAGIC.len() + 3] ^= 1;
        bytes.extend_from_slice(&damaged);
        std::fs::write(d.path().join("db"), &bytes).unwrap();
        assert_eq!(scan(d.path()), vec![h]);
        assert_eq!(hash_of(&damaged), None);
        assert!(scan(tempfile::tempdir().unwrap().path()).is_empty());
    }
}
