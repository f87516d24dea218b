//! The C library for capvault: `libcapvault.so` / `libcapvault.a` and the header
//! `include/capvault.h` (generated from this crate by cbindgen).
//!
//! The functions, types and result values are the C API contract of the product
//! specification (section 8). One module per C object:
//!
//! - [`vault`]: the `capvault` handle (open, append, flush, pause, status, seal, ack, close);
//! - [`bundle`]: the `capvault_bundle` returned by `capvault_seal_next`;
//! - [`strings`]: the library version, the last error message and strings the library
//!   hands out.
//!
//! Private helpers: `error` (result codes, thread-local last error, the panic boundary
//! every exported body runs inside) and `ptr` (checked pointer, string and buffer
//! arguments). All `unsafe` code of the project lives in this crate.
#![allow(non_camel_case_types)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

// Declared in the order the header lists them.
pub mod bundle;
mod error;
mod ptr;
pub mod strings;
pub mod vault;

pub use bundle::capvault_bundle;
pub use vault::capvault;

/// The result of a capvault call: `CAPVAULT_OK` (0) on success, one of the
/// `CAPVAULT_ERR_*` codes on failure, or one of the two non-error outcomes of an
/// append (`CAPVAULT_PAUSED`, `CAPVAULT_FILTERED`). On failure,
/// `capvault_last_error()` describes it. The values are fixed and never reused.
pub type capvault_result = i32;

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
/// The vault is open in another process.
pub const CAPVAULT_ERR_IN_USE: capvault_result = 7;
/// The vault was erased (its keys were destroyed).
pub const CAPVAULT_ERR_ERASED: capvault_result = 8;
/// An unknown bundle id or user.
pub const CAPVAULT_ERR_NOT_FOUND: capvault_result = 9;
/// The handle was already closed (or is not a handle returned by `capvault_open`).
pub const CAPVAULT_ERR_CLOSED: capvault_result = 10;
/// An internal bug (a caught panic). The handle stays usable where possible.
pub const CAPVAULT_ERR_PANIC: capvault_result = 11;
/// Not an error: capture is paused, so the event was dropped (and counted).
pub const CAPVAULT_PAUSED: capvault_result = 100;
/// Not an error: the privacy policy dropped the event.
pub const CAPVAULT_FILTERED: capvault_result = 101;
