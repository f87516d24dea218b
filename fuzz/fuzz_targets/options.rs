//! Options JSON (the C API's options_json). Accepted options are valid and survive a
//! round trip through their JSON form unchanged.
#![no_main]

use capvault::VaultOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(opts) = VaultOptions::from_json(text) else {
        return;
    };
    opts.validate().expect("accepted options validate");
    let json = serde_json::to_string(&opts).expect("options serialize");
    let again = VaultOptions::from_json(&json).expect("serialized options parse");
    assert_eq!(again, opts);
});
