//! The `capvault_bundle`: one sealed bundle returned by `capvault_seal_next`.

use std::ffi::{c_char, CString};

use capvault_core::SealedBundle;

use crate::error::{boundary, Fail};
use crate::ptr::{out_ptr, write_out};
use crate::*;

/// A sealed bundle (opaque), ready to upload. Returned by `capvault_seal_next`, freed
/// with `capvault_bundle_free`. It holds only ciphertext; it is independent of the
/// vault handle (it stays valid after `capvault_close`). Its functions are read-only,
/// so one bundle may be read from several threads at once.
pub struct capvault_bundle {
    id: CString,
    bundle: SealedBundle,
}

impl capvault_bundle {
    /// Boxes a sealed bundle for C.
    pub(crate) fn new(bundle: SealedBundle) -> Result<*mut capvault_bundle, Fail> {
        let id = CString::new(bundle.id())
            .map_err(|_| Fail::new(CAPVAULT_ERR_STORAGE, "bundle id contains a NUL byte"))?;
        Ok(Box::into_raw(Box::new(capvault_bundle { id, bundle })))
    }
}

/// The bundle's bytes: returns a pointer to them and writes their length to
/// `*out_len`.
///
/// The bytes are owned by the bundle and stay valid, unchanged, until
/// `capvault_bundle_free(b)`. Returns NULL (and leaves `*out_len` untouched) if `b` or
/// `out_len` is NULL; `capvault_last_error()` then says which.
///
/// # Safety
/// `b` is NULL or a live bundle from `capvault_seal_next`; `out_len` is NULL or points
/// to writable storage for one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn capvault_bundle_data(
    b: *const capvault_bundle,
    out_len: *mut usize,
) -> *const u8 {
    boundary(|| {
        // SAFETY: NULL or a live bundle (caller contract).
        let b = unsafe { b.as_ref() }.ok_or_else(|| Fail::null("b"))?;
        let out_len = out_ptr(out_len, "out_len")?;
        let bytes = b.bundle.bytes();
        // SAFETY: checked by `out_ptr`; writable per the caller contract.
        unsafe { write_out(out_len, bytes.len()) };
        Ok(bytes.as_ptr())
    })
}

/// The bundle's id (a NUL-terminated ASCII string) to pass to `capvault_ack`.
///
/// The string is owned by the bundle and stays valid until `capvault_bundle_free(b)`.
/// Returns NULL if `b` is NULL.
///
/// # Safety
/// `b` is NULL or a live bundle from `capvault_seal_next`.
#[no_mangle]
pub unsafe extern "C" fn capvault_bundle_id(b: *const capvault_bundle) -> *const c_char {
    boundary(|| {
        // SAFETY: NULL or a live bundle (caller contract).
        let b = unsafe { b.as_ref() }.ok_or_else(|| Fail::null("b"))?;
        Ok(b.id.as_ptr())
    })
}

/// Frees a bundle. NULL is fine. Pointers returned by `capvault_bundle_data` and
/// `capvault_bundle_id` for it are invalid afterwards.
///
/// # Safety
/// `b` is NULL or a bundle from `capvault_seal_next` that was not freed yet; no other
/// thread may be using it.
#[no_mangle]
pub unsafe extern "C" fn capvault_bundle_free(b: *mut capvault_bundle) {
    boundary(|| {
        if !b.is_null() {
            // SAFETY: `b` came from `Box::into_raw` in `capvault_bundle::new`.
            drop(unsafe { Box::from_raw(b) });
        }
        Ok(())
    })
}
