//! What the fuzz targets and the seed generator (`examples/seeds.rs`) share: the fixed
//! keys the targets decode under, and the framing of multi-part inputs.

use capvault_format::Identity;

/// The X25519 identity of the bundle vectors in tests/vectors/bundles.
pub const X25519_IDENTITY: &str = "CVSECRET-X25519-1IJBEEQSCIJBEEQSCIJBEEQSCIJBEEQSCIJBEEQSCIJBEEQSCIJBEGQ2DINBUGQ2DINBUGQ2DINBUGQ2DINBUGQ2DINBUGQ2DINBUGQ55YQF2E";
/// The X-Wing identity of the bundle vectors.
pub const XWING_IDENTITY: &str = "CVSECRET-XWING-1IRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEIRCEKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKRKFIVCUKRJOWSTIC";
/// An X25519 identity no vector is sealed to.
pub const OTHER_IDENTITY: &str = "CVSECRET-X25519-1O53XO53XO53XO53XO53XO53XO53XO53XO53XO53XO53XO53XO53XQ6DYPB4HQ6DYPB4HQ6DYPB4HQ6DYPB4HQ6DYPB4HQ6DYPB4HQ6D2OKFUA";
/// The request id the hand-off target parses under (the file name's id).
pub const HANDOFF_ID: &str = "0123456789abcdef0123456789abcdef";

/// Parses one of the identities above.
pub fn identity(text: &str) -> Identity {
    text.parse().expect("a fixed identity parses")
}

/// Splits `data` into parts framed as `len:u16 BE || bytes` (a short last part takes
/// what is left), so one input can carry several records.
pub fn parts(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let n = u16::from_be_bytes([data[0], data[1]]) as usize;
        let rest = &data[2..];
        let n = n.min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// The framing [`parts`] reads.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u16).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}
