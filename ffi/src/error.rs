//! Result codes, the mapping from [`capvault_core::Error`] to them, this thread's last
//! error message, and the panic boundary that every exported function runs inside.
//!
//! The message channel is errno-style: a failure sets it, a success leaves it alone.
//! Thread-locals are reached only through `try_with` (the message) or a const `Cell`
//! without a destructor (the code), so a call made while the thread's storage is being
//! torn down (an `atexit` handler, a C++ static destructor, a pthread key destructor)
//! still works: it then reports the static description of the code instead of the
//! full message.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::capvault_result;
use crate::*;

/// A failure on its way to the C caller: a result code and a message for
/// `capvault_last_error`.
///
/// Boxed: a call's `Result<capvault_result, Fail>` then fits in two registers, and the
/// success path of every call stays out of memory.
#[derive(Debug)]
pub(crate) struct Fail(Box<Failure>);

#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: capvault_result,
    pub(crate) msg: String,
}

impl std::ops::Deref for Fail {
    type Target = Failure;

    fn deref(&self) -> &Failure {
        &self.0
    }
}

impl Fail {
    pub(crate) fn new(code: capvault_result, msg: impl Into<String>) -> Fail {
        Fail(Box::new(Failure {
            code,
            msg: msg.into(),
        }))
    }

    /// A required pointer argument was NULL.
    pub(crate) fn null(arg: &str) -> Fail {
        Fail::new(
            CAPVAULT_ERR_NULL_ARGUMENT,
            format!("argument `{arg}` must not be NULL"),
        )
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Fail {
        Fail::new(
            CAPVAULT_ERR_INVALID_ARGUMENT,
            format!("invalid argument: {}", msg.into()),
        )
    }

    pub(crate) fn closed() -> Fail {
        Fail::new(
            CAPVAULT_ERR_CLOSED,
            "the vault handle is closed (or was never returned by capvault_open)",
        )
    }

    pub(crate) fn forked() -> Fail {
        Fail::new(
            CAPVAULT_ERR_FORKED,
            "the vault handle was opened in the parent process before fork(); \
             open the vault again in this process",
        )
    }

    /// A caught panic.
    pub(crate) fn panic(payload: Box<dyn std::any::Any + Send>) -> Fail {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        // Dropping a panic payload can itself panic; keep that inside too.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
        Fail::new(
            CAPVAULT_ERR_PANIC,
            format!("internal error (a bug in capvault, please report it): {what}"),
        )
    }

    /// The message as a C string (a NUL byte, which none of ours holds, is escaped).
    pub(crate) fn c_msg(&self) -> CString {
        CString::new(self.msg.replace('\0', "\\0")).unwrap_or_default()
    }
}

impl From<capvault_core::Error> for Fail {
    fn from(e: capvault_core::Error) -> Fail {
        use capvault_core::Error as E;
        let code = match &e {
            E::InvalidArgument(_) => CAPVAULT_ERR_INVALID_ARGUMENT,
            E::Keychain(_) => CAPVAULT_ERR_KEYCHAIN,
            E::Storage(_) => CAPVAULT_ERR_STORAGE,
            E::StorageFull(_) => CAPVAULT_ERR_STORAGE_FULL,
            E::Tampered(_) => CAPVAULT_ERR_TAMPERED,
            E::InUse => CAPVAULT_ERR_IN_USE,
            E::Erased => CAPVAULT_ERR_ERASED,
            E::NotFound(_) => CAPVAULT_ERR_NOT_FOUND,
            E::Closed => CAPVAULT_ERR_CLOSED,
            // `Error` is non-exhaustive. A variant added later without a C code of its
            // own is reported as a storage error (the most general failure) with its
            // full message, until the C API gains a code for it.
            _ => CAPVAULT_ERR_STORAGE,
        };
        Fail::new(code, e.to_string())
    }
}

/// The static description of a result code (`capvault_result_str`).
// Named codes first; the ranges after them describe codes of newer libraries.
#[allow(clippy::match_overlapping_arm)]
pub(crate) fn describe(rc: capvault_result) -> &'static CStr {
    match rc {
        CAPVAULT_OK => c"success",
        CAPVAULT_ERR_NULL_ARGUMENT => c"a required pointer argument was NULL",
        CAPVAULT_ERR_INVALID_ARGUMENT => {
            c"invalid argument (bad UTF-8, bad JSON option, bad recipient or value out of range)"
        }
        CAPVAULT_ERR_KEYCHAIN => c"the keychain is unavailable or locked, or a key is missing",
        CAPVAULT_ERR_STORAGE => c"I/O or database error",
        CAPVAULT_ERR_STORAGE_FULL => c"the disk is full or the byte budget is exhausted",
        CAPVAULT_ERR_TAMPERED => c"an integrity check failed",
        CAPVAULT_ERR_IN_USE => {
            c"the vault is open in another process, or already open in this one through another handle"
        }
        CAPVAULT_ERR_ERASED => c"the vault was erased",
        CAPVAULT_ERR_NOT_FOUND => c"unknown bundle id or user",
        CAPVAULT_ERR_CLOSED => c"the handle is closed or was never returned by capvault_open",
        CAPVAULT_ERR_PANIC => c"internal error (a bug in capvault)",
        CAPVAULT_ERR_FORKED => c"the handle was opened in another process (before a fork)",
        CAPVAULT_ERR_BAD_BUNDLE => {
            c"not a live bundle (already freed, or never returned by capvault_seal_next)"
        }
        CAPVAULT_PAUSED => c"not an error: capture is paused, the event was not stored",
        CAPVAULT_FILTERED => c"not an error: the privacy policy dropped the event",
        1..=99 => c"unknown error (a code from a newer capvault)",
        100..=199 => c"unknown outcome, not an error (a code from a newer capvault)",
        _ => c"not a capvault result code",
    }
}

thread_local! {
    /// This thread's last failure message. Has a destructor, so it is reached only
    /// through `try_with`.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// This thread's last failure code (0: none yet). No destructor: always reachable.
    static LAST_CODE: Cell<capvault_result> = const { Cell::new(CAPVAULT_OK) };
}

/// Records a failure as this thread's last error. Never panics.
pub(crate) fn set_last_error(fail: &Fail) {
    LAST_CODE.set(fail.code);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let msg = fail.c_msg();
        // Unavailable while the thread's storage is torn down: the code then stands
        // for the message (see `last_error_ptr`).
        let _ = LAST_ERROR.try_with(|l| {
            if let Ok(mut l) = l.try_borrow_mut() {
                *l = Some(msg);
            }
        });
    }));
}

/// Pointer to this thread's last failure message ("" if none yet). The message stays
/// in place until the next failure on this thread replaces it. While the thread's
/// storage is torn down, the static description of the last failure code.
pub(crate) fn last_error_ptr() -> *const c_char {
    let code = LAST_CODE.get();
    if code == CAPVAULT_OK {
        return c"".as_ptr();
    }
    LAST_ERROR
        .try_with(|l| match l.try_borrow().as_deref() {
            Ok(Some(c)) => Some(c.as_ptr()),
            _ => None,
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| describe(code).as_ptr())
}

/// Copies `src` into the caller's buffer `(buf, len)`, truncated and NUL-terminated
/// (nothing is written when `len` is 0), and returns the length of `src` in bytes: the
/// message was complete if that is less than `len`.
///
/// # Safety
/// `buf` is NULL (then `len` must be 0) or points to `len` writable bytes.
pub(crate) unsafe fn copy_out(src: &CStr, buf: *mut c_char, len: usize) -> usize {
    let bytes = src.to_bytes();
    if !buf.is_null() && len > 0 {
        let n = bytes.len().min(len - 1);
        // SAFETY: `buf` has `len` writable bytes (caller contract) and n + 1 <= len;
        // the source is ours and does not overlap a caller buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), n);
            buf.add(n).write(0);
        }
    }
    bytes.len()
}

/// What an exported function returns when its body fails or panics.
pub(crate) trait FfiReturn: Sized {
    /// The value for a failure (the result code, or NULL).
    fn failed(fail: &Fail) -> Self;
}

impl FfiReturn for capvault_result {
    fn failed(fail: &Fail) -> Self {
        fail.code
    }
}

impl<T> FfiReturn for *const T {
    fn failed(_: &Fail) -> Self {
        std::ptr::null()
    }
}

impl FfiReturn for () {
    fn failed(_: &Fail) -> Self {}
}

/// The panic boundary. Every exported function's body runs inside it: a failure sets
/// this thread's last error and returns its code (or NULL); a panic is caught, never
/// unwinds into C, and becomes `CAPVAULT_ERR_PANIC` (or NULL). A success leaves the
/// last error as it was.
pub(crate) fn boundary<R: FfiReturn>(body: impl FnOnce() -> Result<R, Fail>) -> R {
    boundary_noting(body, |_| {})
}

/// [`boundary`], and a failure (or panic) is also handed to `note` (outside the body, so
/// after everything the body held is released). One `catch_unwind` per call: a second
/// one nested inside kept the body from being compiled into the exported function and
/// made a C call a third slower than the same call from Rust. Compiled into each
/// exported function, with the failure path (`failed`) out of line.
#[inline(always)]
pub(crate) fn boundary_noting<R: FfiReturn>(
    body: impl FnOnce() -> Result<R, Fail>,
    note: impl FnOnce(&Fail),
) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => value,
        Ok(Err(fail)) => failed(fail, note),
        Err(payload) => failed(Fail::panic(payload), note),
    }
}

#[cold]
#[inline(never)]
fn failed<R: FfiReturn>(fail: Fail, note: impl FnOnce(&Fail)) -> R {
    // Whatever `note` does never unwinds into C either (and a payload is forgotten, not
    // dropped: its drop could panic again).
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| note(&fail))) {
        std::mem::forget(payload);
    }
    set_last_error(&fail);
    R::failed(&fail)
}
