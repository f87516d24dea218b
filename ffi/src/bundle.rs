//! The `capvault_bundle`: one sealed bundle returned by `capvault_seal_next`.

use std::collections::{BTreeSet, VecDeque};
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
    /// The id and bytes; `None` once freed (the empty shell waits in quarantine).
    content: Option<(CString, SealedBundle)>,
}

/// How many freed bundles keep their (empty, 24-byte) allocation before it is given
/// back, so a stale pointer to one of them cannot meet a new bundle at the same address.
const QUARANTINE: usize = 1024;

/// Live bundles by address, and the shells of the last freed ones.
struct Registry {
    live: BTreeSet<usize>,
    freed: VecDeque<Box<capvault_bundle>>,
}

static BUNDLES: parking_lot::Mutex<Registry> = parking_lot::const_mutex(Registry {
    live: BTreeSet::new(),
    freed: VecDeque::new(),
});

/// Held by the fork handlers across `fork()` (see `fork`).
pub(crate) fn lock_registry() {
    std::mem::forget(BUNDLES.lock());
}

/// # Safety
/// Only after `lock_registry` on this thread (or on the thread that forked, in the child).
pub(crate) unsafe fn unlock_registry() {
    // SAFETY: per the contract, the lock is held and its guard forgotten.
    unsafe { BUNDLES.force_unlock() };
}

fn not_live() -> Fail {
    Fail::new(
        CAPVAULT_ERR_BAD_BUNDLE,
        "not a live bundle: it was already freed with capvault_bundle_free, or was never \
         returned by capvault_seal_next",
    )
}

/// Runs `f` on the live bundle `b`, holding the registry lock so that it cannot be
/// freed meanwhile.
fn with_bundle<R>(
    b: *const capvault_bundle,
    f: impl FnOnce(&CString, &SealedBundle) -> Result<R, Fail>,
) -> Result<R, Fail> {
    if b.is_null() {
        return Err(Fail::null("b"));
    }
    let registry = BUNDLES.lock();
    if !registry.live.contains(&(b as usize)) {
        return Err(not_live());
    }
    // SAFETY: a live address is a boxed bundle that only `capvault_bundle_free` (which
    // needs the lock we hold) can release.
    let bundle = unsafe { &*b };
    let (id, sealed) = bundle.content.as_ref().ok_or_else(not_live)?;
    f(id, sealed)
}

impl capvault_bundle {
    /// Boxes a sealed bundle for C.
    pub(crate) fn new(bundle: SealedBundle) -> Result<*mut capvault_bundle, Fail> {
        let id = CString::new(bundle.id())
            .map_err(|_| Fail::new(CAPVAULT_ERR_STORAGE, "bundle id contains a NUL byte"))?;
        let ptr = Box::into_raw(Box::new(capvault_bundle {
            content: Some((id, bundle)),
        }));
        BUNDLES.lock().live.insert(ptr as usize);
        Ok(ptr)
    }
}

/// The bundle's bytes: returns a pointer to them and writes their length to
/// `*out_len`.
///
/// The bytes are owned by the bundle and stay valid, unchanged, until
/// `capvault_bundle_free(b)`. Returns NULL (and leaves `*out_len` untouched) if `b` or
/// `out_len` is NULL, or `b` is not a live bundle (`CAPVAULT_ERR_BAD_BUNDLE`);
/// `capvault_last_error()` then says which.
///
/// # Safety
/// `out_len` is NULL or points to writable storage for one `size_t`.
#[no_mangle]
pub unsafe extern "C" fn capvault_bundle_data(
    b: *const capvault_bundle,
    out_len: *mut usize,
) -> *const u8 {
    boundary(|| {
        with_bundle(b, |_, sealed| {
            let out_len = out_ptr(out_len, "out_len")?;
            let bytes = sealed.bytes();
            // SAFETY: checked by `out_ptr`; writable per the caller contract.
            unsafe { write_out(out_len, bytes.len()) };
            Ok(bytes.as_ptr())
        })
    })
}

/// The bundle's id (a NUL-terminated ASCII string) to pass to `capvault_ack`.
///
/// The string is owned by the bundle and stays valid until `capvault_bundle_free(b)`.
/// Returns NULL if `b` is NULL or not a live bundle.
#[no_mangle]
pub extern "C" fn capvault_bundle_id(b: *const capvault_bundle) -> *const c_char {
    boundary(|| with_bundle(b, |id, _| Ok(id.as_ptr())))
}

/// Frees a bundle. NULL is fine. Pointers returned by `capvault_bundle_data` and
/// `capvault_bundle_id` for it are invalid afterwards.
///
/// Freeing a bundle twice, or a pointer that no `capvault_seal_next` returned, frees
/// nothing and records `CAPVAULT_ERR_BAD_BUNDLE` as the last error. This is detected for
/// as long as the freed bundle's address is not reused, which the library guarantees
/// for the next 1024 bundle frees; a pointer freed longer ago than that may meet a new
/// bundle at the same address and then frees that one. Do not free a bundle while
/// another thread is still using the pointers its accessors returned.
#[no_mangle]
// `b` is looked up in the registry before it is touched, so any value is safe to pass.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn capvault_bundle_free(b: *mut capvault_bundle) {
    boundary(|| {
        if b.is_null() {
            return Ok(());
        }
        let old = {
            let mut registry = BUNDLES.lock();
            if !registry.live.remove(&(b as usize)) {
                return Err(not_live());
            }
            // SAFETY: a live address came from `Box::into_raw` in `capvault_bundle::new`
            // and was removed from the live set just now, under the lock: it is ours.
            let mut shell = unsafe { Box::from_raw(b) };
            let content = shell.content.take();
            registry.freed.push_back(shell);
            let old = (registry.freed.len() > QUARANTINE).then(|| registry.freed.pop_front());
            (content, old)
        };
        // The bytes and the oldest shell are dropped outside the lock.
        drop(old);
        Ok(())
    })
}
