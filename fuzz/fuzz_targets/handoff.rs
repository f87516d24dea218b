//! The `handoff` target: [`capvault_fuzz::handoff`] (the checks live in fuzz/src/lib.rs, where
//! the stable corpus replay runs them too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    capvault_fuzz::handoff(data);
});
