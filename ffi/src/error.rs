//! Result codes, the mapping from [`capvault_core::Error`] to them, the thread-local last
//! error message, and the panic boundary that every exported function runs inside.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::capvault_result;
use crate::*;

/// A failure on its way to the C caller: a result code and a message for
/// `capvault_last_error`.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) code: capvault_result,
    pub(crate) msg: String,
}

impl Fail {
    pub(crate) fn new(code: capvault_result, msg: impl Into<String>) -> Fail {
        Fail {
            code,
            msg: msg.into(),
        }
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

thread_local! {
    /// This thread's last failure message. `None` reads as "".
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

pub(crate) fn set_last_error(msg: &str) {
    // A message cannot hold NUL bytes in C; none of ours do, but never fail here.
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = Some(c));
}

fn clear_last_error() {
    LAST_ERROR.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            if l.is_some() {
                *l = None;
            }
        }
    });
}

/// Pointer to this thread's last message (or a static ""), valid until the next
/// capvault call on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|l| match &*l.borrow() {
        Some(c) => c.as_ptr(),
        None => c"".as_ptr(),
    })
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
/// unwinds into C, and becomes `CAPVAULT_ERR_PANIC` (or NULL). A success clears the
/// last error.
pub(crate) fn boundary<R: FfiReturn>(body: impl FnOnce() -> Result<R, Fail>) -> R {
    let fail = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => {
            clear_last_error();
            return value;
        }
        Ok(Err(fail)) => fail,
        Err(payload) => {
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
    };
    // Setting the message allocates; even that must not unwind into C.
    let _ = catch_unwind(|| set_last_error(&fail.msg));
    R::failed(&fail)
}
