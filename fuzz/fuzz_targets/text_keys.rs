//! Text keys: recipients, identities, receipt keys, receipt signing keys and suite names.
//! Whatever parses prints to text that parses to the same key.
#![no_main]

use capvault_format::{Identity, ReceiptKey, ReceiptSigner, Recipient, Suite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = text.parse::<Recipient>() {
        let again: Recipient = r.to_string().parse().expect("printed recipient parses");
        assert_eq!(again, r);
        assert_eq!(again.to_string(), r.to_string());
    }
    if let Ok(id) = text.parse::<Identity>() {
        let printed = id.to_secret_string();
        let again: Identity = printed.parse().expect("printed identity parses");
        assert_eq!(*again.to_secret_string(), *printed);
        assert_eq!(again.recipient(), id.recipient());
        assert_eq!(again.receipt_key(), id.receipt_key());
        // Debug never prints the secret.
        let body = &printed[printed.len() - 20..];
        assert!(!format!("{id:?}").contains(body));
    }
    if let Ok(k) = text.parse::<ReceiptKey>() {
        let again: ReceiptKey = k.to_string().parse().expect("printed receipt key parses");
        assert_eq!(again, k);
    }
    if let Ok(s) = text.parse::<ReceiptSigner>() {
        let printed = s.to_secret_string();
        let again: ReceiptSigner = printed.parse().expect("printed signer parses");
        assert_eq!(again.receipt_key(), s.receipt_key());
    }
    if let Ok(suite) = text.parse::<Suite>() {
        assert_eq!(suite.name().parse::<Suite>().unwrap(), suite);
    }
});
