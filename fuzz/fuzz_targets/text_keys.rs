//! The `text_keys` target: [`capvault_fuzz::text_keys`] (the checks live in fuzz/src/lib.rs, where
//! the stable corpus replay runs them too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    capvault_fuzz::text_keys(data);
});
