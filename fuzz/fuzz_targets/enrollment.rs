//! The `enrollment` target: [`capvault_fuzz::enrollment`] (the checks live in fuzz/src/lib.rs, where
//! the stable corpus replay runs them too).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    capvault_fuzz::enrollment(data);
});
