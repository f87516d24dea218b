//! The C library for capvault: `libcapvault.so` / `libcapvault.a` and the header
//! `include/capvault.h` (generated from this crate by cbindgen).
//!
//! The functions, types and result values are the C API contract of the product
//! specification (section 8). One module per C object:
//!
//! - [`vault`]: the `capvault` handle (open, append, flush, pause, status, seal, ack, close);
//! - [`bundle`]: the `capvault_bundle` returned by `capvault_seal_next`;
//! - [`strings`]: the library and ABI versions, result descriptions, the last error
//!   message and strings the library hands out.
//!
//! Private helpers: `error` (result codes, thread-local last error, the panic boundary
//! every exported body runs inside), `fork` (telling a child process after `fork()`
//! from the process that opened a handle) and `ptr` (checked pointer, string and buffer
//! arguments). All `unsafe` code of the project lives in this crate.
#![allow(non_camel_case_types)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

// Declared in the order the header lists them.
pub mod bundle;
mod error;
mod fork;
mod inflight;
mod ptr;
pub mod strings;
pub mod vault;

pub use bundle::capvault_bundle;
pub use vault::capvault;

/// The result of a capvault call. The values are fixed and never reused, in three
/// ranges:
///
/// - 0, `CAPVAULT_OK`: success;
/// - 1 to 99, `CAPVAULT_ERR_*`: the call failed and `capvault_last_error()` says why
///   (a code from this range that a program does not know is still an error);
/// - 100 to 199: the call succeeded with an outcome worth knowing (`CAPVAULT_PAUSED`,
///   `CAPVAULT_FILTERED` from appends); not errors.
///
/// `CAPVAULT_IS_ERROR(rc)` tells the two apart (every value outside 0 and 100-199 is an
/// error), so `if (CAPVAULT_IS_ERROR(rc))`, not `if (rc)`.
pub type capvault_result = i32;

/// Major version of the library (`capvault_version()` is the full version).
pub const CAPVAULT_VERSION_MAJOR: u32 = 0;
/// Minor version of the library.
pub const CAPVAULT_VERSION_MINOR: u32 = 2;
/// Patch version of the library.
pub const CAPVAULT_VERSION_PATCH: u32 = 0;
/// The ABI this header describes. It changes whenever a program built against an older
/// header could misbehave with the library (a removed or changed function, type or
/// result code, or changed behaviour), and is the number in the library's SONAME
/// (`libcapvault.so.1`). Check it at start-up against `capvault_abi_version()`.
pub const CAPVAULT_ABI_VERSION: u32 = 1;

// The version macros follow the crate version (checked at compile time) ...
const _: () = {
    const fn num(s: &str) -> u32 {
        let b = s.as_bytes();
        let mut i = 0;
        let mut n = 0;
        while i < b.len() {
            n = n * 10 + (b[i] - b'0') as u32;
            i += 1;
        }
        n
    }
    assert!(num(env!("CARGO_PKG_VERSION_MAJOR")) == CAPVAULT_VERSION_MAJOR);
    assert!(num(env!("CARGO_PKG_VERSION_MINOR")) == CAPVAULT_VERSION_MINOR);
    assert!(num(env!("CARGO_PKG_VERSION_PATCH")) == CAPVAULT_VERSION_PATCH);
    // ... and the SONAME that build.rs gives the shared library follows the ABI.
    assert!(num(env!("CAPVAULT_SONAME_ABI")) == CAPVAULT_ABI_VERSION);
};

/// Success.
pub const CAPVAULT_OK: capvault_result = 0;
/// A required pointer argument was NULL.
pub const CAPVAULT_ERR_NULL_ARGUMENT: capvault_result = 1;
/// Bad UTF-8, a bad JSON option, a bad recipient, or a value out of range.
pub const CAPVAULT_ERR_INVALID_ARGUMENT: capvault_result = 2;
/// The keychain is unavailable or locked, or a key is missing from it.
pub const CAPVAULT_ERR_KEYCHAIN: capvault_result = 3;
/// An I/O or database error.
pub const CAPVAULT_ERR_STORAGE: capvault_result = 4;
/// The disk is full or the byte budget is exhausted.
pub const CAPVAULT_ERR_STORAGE_FULL: capvault_result = 5;
/// An integrity check failed (the vault was modified, truncated or rolled back).
pub const CAPVAULT_ERR_TAMPERED: capvault_result = 6;
/// The vault is open in another process, or already open in this one through a handle
/// that was not closed.
pub const CAPVAULT_ERR_IN_USE: capvault_result = 7;
/// The vault was erased (its keys were destroyed).
pub const CAPVAULT_ERR_ERASED: capvault_result = 8;
/// An unknown bundle id or user.
pub const CAPVAULT_ERR_NOT_FOUND: capvault_result = 9;
/// The handle was already closed (or is not a handle returned by `capvault_open`).
pub const CAPVAULT_ERR_CLOSED: capvault_result = 10;
/// An internal bug (a caught panic). The handle stays usable where possible.
pub const CAPVAULT_ERR_PANIC: capvault_result = 11;
/// The handle was opened in another process: this process is a child created by
/// `fork()` after the open. Also from `capvault_open` in such a child: the storage
/// engine's background state does not survive a fork, so only a process that has not
/// forked since its first `capvault_open` (or a new program after `exec`) can open a
/// vault. Fork (daemonize) before opening.
pub const CAPVAULT_ERR_FORKED: capvault_result = 12;
/// The bundle pointer is not a live bundle: it was already freed, or never returned by
/// `capvault_seal_next`.
pub const CAPVAULT_ERR_BAD_BUNDLE: capvault_result = 13;
/// Not an error: capture is paused, so the event was dropped (and counted).
pub const CAPVAULT_PAUSED: capvault_result = 100;
/// Not an error: the privacy policy dropped the event.
pub const CAPVAULT_FILTERED: capvault_result = 101;
