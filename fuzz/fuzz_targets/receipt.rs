//! Receipt verification under the receipt key of the X25519 vector identity. Input:
//! bundle digest (32) || receipt. Ed25519 signatures are unique under ring's strict
//! checks: a receipt is accepted only if it is the collector's own for that digest.
#![no_main]

use std::sync::LazyLock;

use capvault_format::{verify_receipt, Identity, RECEIPT_LEN};
use capvault_fuzz::{identity, X25519_IDENTITY};
use libfuzzer_sys::fuzz_target;

static ID: LazyLock<Identity> = LazyLock::new(|| identity(X25519_IDENTITY));

fuzz_target!(|data: &[u8]| {
    if data.len() < 32 {
        return;
    }
    let digest: [u8; 32] = data[..32].try_into().unwrap();
    let receipt = &data[32..];
    if verify_receipt(&ID.receipt_key(), &digest, receipt).is_ok() {
        let own = ID.receipt_for(&digest);
        match receipt.len() {
            RECEIPT_LEN => assert_eq!(receipt, &own[..]),
            64 => assert_eq!(receipt, &own[32..]),
            n => panic!("a receipt of {n} bytes was accepted"),
        }
    }
});
