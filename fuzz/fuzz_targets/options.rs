//! The `options` target: [`capvault_fuzz::options`] (the checks live in fuzz/src/lib.rs, where
//! the stable corpus replay runs them too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    capvault_fuzz::options(data);
});
