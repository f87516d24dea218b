//! Telling a child process after `fork()` from the process that opened a handle.
//!
//! A forked child has a copy of the parent's memory but not its threads: the vault's
//! writer and uploader threads, and any lock they held, are gone, and the files are
//! shared with the parent. A handle used there must fail at once
//! (`CAPVAULT_ERR_FORKED`), never block. Comparing `getpid()` on every call would cost
//! a system call per append; instead a `pthread_atfork` child handler bumps a process
//! generation, and every call compares it with the generation the handle was opened in
//! (one relaxed atomic load).
//!
//! The storage engine's process-wide state (a thread pool whose queue may be locked by
//! a thread that does not exist in the child) does not survive a fork either, so a
//! child of a process that opened a vault cannot open one: `capvault_open` says so
//! instead of blocking. Fork (daemonize) before the first open, or exec.
//!
//! The same handlers hold the library's own tables (handle registry, bundle registry)
//! across the fork, so a child never inherits one locked by a thread that does not
//! exist there: a child may open vaults of its own and free bundles it inherited.

use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

extern "C" {
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> c_int;
}

/// The number of forks between the first process that loaded the library and this one.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The generation in which a vault was first opened (`u64::MAX`: never). The storage
/// engine keeps process-wide state (a thread pool and its queue) that does not survive
/// a fork, so a child of a process that opened a vault cannot open one either.
static FIRST_OPEN: AtomicU64 = AtomicU64::new(u64::MAX);

/// Whether this process may open a vault: true unless a vault was opened before one of
/// the forks that made it. Call before opening; records that a vault is being opened.
pub(crate) fn may_open() -> bool {
    let now = generation();
    match FIRST_OPEN.compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => true,
        Err(first) => first == now,
    }
}

/// This process's generation; registers the fork handlers on first use.
pub(crate) fn generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the handlers are plain functions that live as long as the process.
        let rc = unsafe { pthread_atfork(Some(prepare), Some(parent), Some(child)) };
        // Only ENOMEM is possible; without the handlers a child is not detected, so
        // say so rather than fail every open.
        if rc != 0 {
            eprintln!("capvault: pthread_atfork failed ({rc}): handles are not fork-checked");
        }
    });
    current()
}

/// This process's generation (no registration).
#[inline]
pub(crate) fn current() -> u64 {
    GENERATION.load(Ordering::Relaxed)
}

unsafe extern "C" fn prepare() {
    crate::vault::lock_registry();
    crate::bundle::lock_registry();
}

unsafe extern "C" fn parent() {
    // SAFETY: `prepare` locked both on this thread.
    unsafe {
        crate::bundle::unlock_registry();
        crate::vault::unlock_registry();
    }
}

unsafe extern "C" fn child() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `prepare` locked both on the thread that forked, the only one here.
    unsafe {
        crate::bundle::unlock_registry();
        crate::vault::unlock_registry();
    }
}
