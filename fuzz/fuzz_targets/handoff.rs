//! Hand-off request files, parsed as the serving vault does under a fixed id. An
//! accepted request names that id and the protocol version, and its JSON form parses
//! back to the same request.
#![no_main]

use capvault::handoff::VERSION;
use capvault_fuzz::HANDOFF_ID;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(req) = capvault::fuzzing::handoff_request(data, HANDOFF_ID) else {
        return;
    };
    assert_eq!((req.v, req.id.as_str()), (VERSION, HANDOFF_ID));
    let json = serde_json::to_vec(&req).expect("requests serialize");
    let again = capvault::fuzzing::handoff_request(&json, HANDOFF_ID).expect("re-parses");
    assert_eq!(format!("{again:?}"), format!("{req:?}"));
    // Under another id the same bytes are refused.
    assert!(capvault::fuzzing::handoff_request(data, "ffffffffffffffffffffffffffffffff").is_none());
});
