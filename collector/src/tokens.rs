//! Enrollment tokens: random text handed to device administrators, stored only as
//! their SHA-256, with a number of uses and an optional expiry.

use crate::db::Db;
use crate::error::ApiError;

const TOKEN_PREFIX: &str = "cvtoken-";

/// The stored form of a token: lower-case hex SHA-256 of its text.
pub fn hash(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
    data_encoding::HEXLOWER.encode(d.as_ref())
}

/// Creates a token with `uses` uses that expires at `expires_us` (if given), stores
/// its hash and returns its text (shown once, never stored).
pub async fn create(db: &Db, uses: u32, expires_us: Option<i64>) -> Result<String, ApiError> {
    if uses == 0 {
        return Err(ApiError::BadRequest(
            "a token needs at least one use".into(),
        ));
    }
    let mut raw = [0u8; 20];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| ApiError::Operational("the system random generator failed".into()))?;
    let mut spec = data_encoding::Specification::new();
    spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
    let enc = spec.encoding().expect("a valid base32 specification");
    let token = format!("{TOKEN_PREFIX}{}", enc.encode(&raw));
    db.add_token(&hash(&token), uses, expires_us, crate::config::now_us())
        .await?;
    Ok(token)
}

/// A token's id, for `token list` and `token revoke`: the first 12 hex digits of its
/// hash (the token itself is never shown again).
pub fn id(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The one stored hash whose id starts with `prefix` (at least 8 hex digits).
pub async fn find(db: &Db, prefix: &str) -> Result<String, ApiError> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.len() < 8 || !prefix.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(
            "a token id is at least 8 hex digits (see `token list`)".into(),
        ));
    }
    let mut found = db
        .tokens()
        .await?
        .into_iter()
        .filter(|t| t.hash.starts_with(&prefix));
    match (found.next(), found.next()) {
        (Some(t), None) => Ok(t.hash),
        (None, _) => Err(ApiError::Operational(format!(
            "no token has the id {prefix}"
        ))),
        (Some(_), Some(_)) => Err(ApiError::Operational(format!(
            "more than one token has an id starting {prefix}: give more digits"
        ))),
    }
}
