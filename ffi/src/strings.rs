//! Strings: the library version, the last error message, and freeing strings the
//! library returned (`capvault_status_json`).

use std::ffi::{c_char, CString};

use crate::error::{boundary, last_error_ptr};

/// The library version, for example "0.1.0".
///
/// Returns a static NUL-terminated string: never free it; it is valid for the life of
/// the process. Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_version() -> *const c_char {
    boundary(|| Ok(concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()))
}

/// This thread's last failure message, or "" when the last capvault call on this
/// thread succeeded.
///
/// Every failing call (a return value other than `CAPVAULT_OK`, `CAPVAULT_PAUSED` or
/// `CAPVAULT_FILTERED`, or NULL from a function returning a pointer) sets the message;
/// every successful call resets it to "" (`capvault_version` and this function leave it
/// as it is). The message is per thread, so read it on
/// the thread that made the failing call. It never contains key bytes or captured
/// content.
///
/// Never returns NULL. The string is owned by the library: do not free it. It stays
/// valid until the next capvault call on the same thread (copy it to keep it).
#[no_mangle]
pub extern "C" fn capvault_last_error() -> *const c_char {
    // Not through `boundary`: reading the message must not reset it.
    std::panic::catch_unwind(last_error_ptr).unwrap_or(c"".as_ptr())
}

/// Frees a string returned by the library (`capvault_status_json`). NULL is fine.
///
/// # Safety
/// `s` is NULL or a string returned by the library that was not freed yet; do not use
/// it afterwards. Do not pass strings from anywhere else (not `capvault_version`,
/// `capvault_last_error` or `capvault_bundle_id`, which the library owns).
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
