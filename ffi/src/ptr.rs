//! Checked conversions of C arguments. Every raw pointer an exported function reads
//! goes through one of these: NULL is rejected with `CAPVAULT_ERR_NULL_ARGUMENT` (a
//! buffer may be NULL only when its length is 0), text must be UTF-8
//! (`CAPVAULT_ERR_INVALID_ARGUMENT` otherwise), and outputs are written only through
//! [`write_out`] once the call has succeeded.

use std::ffi::{c_char, CStr};

use crate::error::Fail;

/// A required NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn req_str<'a>(p: *const c_char, arg: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::null(arg));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|_| Fail::invalid(format!("`{arg}` is not valid UTF-8")))
}

/// An optional string argument: NULL is `None`.
///
/// # Safety
/// As for [`req_str`].
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, arg: &str) -> Result<Option<&'a str>, Fail> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { req_str(p, arg) }.map(Some)
    }
}

/// A buffer argument `(p, len)`. NULL with length 0 is the empty buffer; NULL with a
/// non-zero length is `CAPVAULT_ERR_NULL_ARGUMENT`. Callers check `len` against their
/// limits before calling this, so an oversized length is rejected before anything is
/// read.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that outlive `'a`.
pub(crate) unsafe fn slice<'a>(p: *const u8, len: usize, arg: &str) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Fail::null(arg));
    }
    if len > isize::MAX as usize {
        return Err(Fail::invalid(format!("`{arg}` length {len} is too large")));
    }
    // SAFETY: non-NULL, `len` readable bytes per the caller's contract, len <= isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Checks an output pointer before any work is done.
pub(crate) fn out_ptr<T>(p: *mut T, arg: &str) -> Result<*mut T, Fail> {
    if p.is_null() {
        Err(Fail::null(arg))
    } else {
        Ok(p)
    }
}

/// Writes an output. Call only once the call has succeeded.
///
/// # Safety
/// `p` was checked by [`out_ptr`] and points to writable memory for a `T`.
pub(crate) unsafe fn write_out<T>(p: *mut T, value: T) {
    // SAFETY: per the caller's contract; `write` does not drop the old (C) value.
    unsafe { p.write(value) }
}
