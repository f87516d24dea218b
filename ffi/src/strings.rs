//! Strings and numbers about the library: its version and ABI, the description of a
//! result code, this thread's last error message, and freeing strings the library
//! returned (`capvault_status_json`).

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{boundary, copy_out, describe, last_error_ptr};
use crate::*;

/// The library version, for example "0.2.0" (`CAPVAULT_VERSION_MAJOR`, `_MINOR` and
/// `_PATCH` are the version of the header).
///
/// Returns a static NUL-terminated string: never free it; it is valid for the life of
/// the process. Thread-safe; never touches the last error.
#[no_mangle]
pub extern "C" fn capvault_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The ABI version of the library, to compare with `CAPVAULT_ABI_VERSION` from the
/// header the program was built with: if they differ, the program must not use the
/// library. Thread-safe; never touches the last error.
#[no_mangle]
pub extern "C" fn capvault_abi_version() -> u32 {
    CAPVAULT_ABI_VERSION
}

/// A static description of result code `rc`, for example "the vault is open in another
/// process". Never NULL, never to be freed, valid for the life of the process. Codes
/// this library does not know get a description of their range ("unknown error",
/// "unknown outcome, not an error"). Thread-safe; never touches the last error.
#[no_mangle]
pub extern "C" fn capvault_result_str(rc: capvault_result) -> *const c_char {
    describe(rc).as_ptr()
}

/// This thread's last failure message, or "" if no capvault call on this thread has
/// failed yet.
///
/// errno-style: every failing call (a return value for which `CAPVAULT_IS_ERROR` is
/// true, or NULL from a function returning a pointer, or a failing `capvault_close` or
/// `capvault_bundle_free`) replaces the message; successful calls never change it. So
/// read it right after the failing call, on the thread that made it. It never contains
/// key bytes or captured content.
///
/// Never returns NULL. The string is owned by the library: do not free it. It stays
/// valid until the next failing capvault call on the same thread (copy it, or use
/// `capvault_last_error_copy`, to keep it). When a call fails while the thread is
/// exiting (its thread-local storage already released), the message is the static
/// description of the code (`capvault_result_str`).
///
/// Runtimes whose calls move between OS threads (Go, C#, Swift async) should use
/// `capvault_handle_last_error` instead (or keep the two calls on one thread).
#[no_mangle]
pub extern "C" fn capvault_last_error() -> *const c_char {
    // Not through `boundary`: reading the message must not set one.
    catch_unwind(last_error_ptr).unwrap_or(c"".as_ptr())
}

/// Copies this thread's last failure message (as `capvault_last_error()`) into `buf`
/// (`len` bytes, truncated and NUL-terminated; nothing is written when `len` is 0) and
/// returns the message's full length in bytes: it was truncated if that is `len` or
/// more. Thread-safe; never touches the last error.
///
/// # Safety
/// `buf` is NULL (with `len` 0) or points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn capvault_last_error_copy(buf: *mut c_char, len: usize) -> usize {
    let body = || {
        // SAFETY: `last_error_ptr` returns a NUL-terminated string that stays in place
        // until the next failure on this thread; none happens during the copy.
        let msg = unsafe { CStr::from_ptr(last_error_ptr()) };
        // SAFETY: forwarded caller contract.
        unsafe { copy_out(msg, buf, len) }
    };
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(0)
}

/// Frees a string returned by the library (`capvault_status_json`). NULL is fine.
///
/// # Safety
/// `s` is NULL or a string returned by the library that was not freed yet; do not use
/// it afterwards. Do not pass strings from anywhere else (not `capvault_version`,
/// `capvault_last_error`, `capvault_result_str` or `capvault_bundle_id`, which the
/// library owns).
#[no_mangle]
pub unsafe extern "C" fn capvault_string_free(s: *mut c_char) {
    boundary(|| {
        if !s.is_null() {
            // SAFETY: `s` came from `CString::into_raw` in this library (caller contract).
            drop(unsafe { CString::from_raw(s) });
        }
        Ok(())
    })
}
