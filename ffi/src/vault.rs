//! The `capvault` handle: one open vault for one user.
//!
//! A handle is shared by reference between C threads. The pointer handed to C is the
//! address of a `capvault` that is never freed (a closed handle keeps its small
//! allocation for the life of the process), so its address is never
//! given to a later `capvault_open`: a stale pointer stays CLOSED instead of reaching
//! another vault. A process-wide registry lists every address handed out; a call checks
//! its pointer there before dereferencing it, and each thread remembers the last
//! pointer it checked, so the common case (one handle, many calls) takes no shared
//! lock. The vault itself is `Shared` (see `inflight`): `capvault_close` takes it once
//! the calls in flight on other threads have left it, and calls after that find it
//! gone, so closing on one thread while others are calling is safe.
//!
//! Each handle also keeps its last failure (code and message), for runtimes whose
//! calls hop between threads (Go, C#, Swift), and the fork generation it was opened in
//! (see `fork`).

use std::cell::Cell;
use std::collections::BTreeSet;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use capvault_core::{Appended, Event, Recipient, Vault, VaultOptions};

use crate::bundle::capvault_bundle;
use crate::error::{boundary, boundary_noting, copy_out, describe, Fail, FfiReturn};
use crate::fork;
use crate::inflight::{self, Shared, Slot, Taken};
use crate::ptr::{opt_str, out_ptr, req_str, slice, write_out};
use crate::*;

/// An open vault (opaque). Create it with `capvault_open`, release it with
/// `capvault_close`. One handle may be used from many threads at once.
pub struct capvault {
    vault: Shared<Vault>,
    /// `max_payload_bytes` of the options the vault was opened with, checked before a
    /// payload buffer is read.
    max_payload: usize,
    /// The fork generation of the process that opened it.
    generation: u64,
    /// The last failure of a call on this handle, from any thread.
    last_error: parking_lot::Mutex<Option<CString>>,
    /// The vault directory, canonical, to tell a second open of it in this process.
    dir: Option<PathBuf>,
}

impl capvault {
    fn record(&self, fail: &Fail) {
        let msg = fail.c_msg();
        *self.last_error.lock() = Some(msg);
    }

    /// True while the handle holds its vault (a close in progress counts as holding).
    fn holds(&self) -> bool {
        self.vault.holds()
    }
}

/// `InUse` from opening `dir`: when a handle of this process holds that directory,
/// say so (the other process the core's message names does not exist).
fn in_use(dir: &str) -> Fail {
    let canonical = std::fs::canonicalize(dir).ok();
    let mine = canonical.is_some() && {
        let handles = HANDLES.read();
        handles.iter().any(|&addr| {
            // SAFETY: every address in `HANDLES` is a `capvault` leaked by `capvault_open`.
            let h = unsafe { &*(addr as *const capvault) };
            h.generation == fork::current() && h.dir == canonical && h.holds()
        })
    };
    if mine {
        Fail::new(
            CAPVAULT_ERR_IN_USE,
            format!(
                "the vault in {dir} is already open in this process (a handle from an \
                 earlier capvault_open that was not closed): use that handle, one handle \
                 serves every thread, or close it before opening the vault again"
            ),
        )
    } else {
        Fail::from(capvault_core::Error::InUse)
    }
}

/// The address of every handle this process handed out (none is ever freed).
static HANDLES: parking_lot::RwLock<BTreeSet<usize>> = parking_lot::const_rwlock(BTreeSet::new());

/// Held by the fork handlers across `fork()` (see `fork`).
pub(crate) fn lock_registry() {
    std::mem::forget(HANDLES.write());
}

/// # Safety
/// Only after `lock_registry` on this thread (or on the thread that forked, in the child).
pub(crate) unsafe fn unlock_registry() {
    // SAFETY: per the contract, the lock is held exclusively and its guard forgotten.
    unsafe { HANDLES.force_unlock_write() };
}

/// The handle behind `v`, checked against the registry before it is dereferenced.
/// `mine` is this thread's slot, which keeps the last address this thread found there.
#[inline]
fn lookup(v: *const capvault, mine: Option<&Slot>) -> Result<&'static capvault, Fail> {
    if v.is_null() {
        return Err(Fail::null("v"));
    }
    let addr = v as usize;
    if mine.map(Slot::memo) != Some(addr) {
        registered(addr, mine)?;
    }
    // SAFETY: every address in `HANDLES` is a `capvault` leaked by `capvault_open`.
    let handle = unsafe { &*v };
    if handle.generation != fork::current() {
        return Err(Fail::forked());
    }
    Ok(handle)
}

/// Whether `addr` is a handle's, noted in `mine` when it is.
#[cold]
#[inline(never)]
fn registered(addr: usize, mine: Option<&Slot>) -> Result<(), Fail> {
    if !HANDLES.read().contains(&addr) {
        return Err(Fail::closed());
    }
    if let Some(slot) = mine {
        slot.set_memo(addr);
    }
    Ok(())
}

/// The body of an exported function on a vault: runs `f` on the open vault behind `v`
/// (a close waits for it), inside the panic boundary. A failure (or panic) is also
/// recorded as the handle's last error, while the handle is open: a call on a closed
/// handle leaves its last failure (say, that of the final flush in `capvault_close`) as
/// it was.
#[inline]
fn on_vault<R: FfiReturn>(
    v: *const capvault,
    f: impl FnOnce(&Vault, &capvault) -> Result<R, Fail>,
) -> R {
    let open_handle: Cell<Option<&capvault>> = Cell::new(None);
    boundary_noting(
        || {
            let mine = inflight::this_thread();
            let handle = lookup(v, mine)?;
            handle
                .vault
                .with(mine, |vault| {
                    open_handle.set(Some(handle));
                    f(vault, handle)
                })
                .unwrap_or_else(|| Err(Fail::closed()))
        },
        |fail| {
            // Only while the handle is still open: a close on another thread since the
            // body ran has recorded its own outcome, which this must not overwrite.
            if let Some(handle) = open_handle.get() {
                handle.vault.while_there(|| handle.record(fail));
            }
        },
    )
}

/// The C code of an append outcome.
fn appended(a: Appended) -> capvault_result {
    match a {
        Appended::Stored => CAPVAULT_OK,
        Appended::Paused => CAPVAULT_PAUSED,
        Appended::Filtered => CAPVAULT_FILTERED,
    }
}

/// Rejects a payload length above the vault's `max_payload_bytes` before the buffer is
/// read.
fn check_payload(handle: &capvault, len: usize, arg: &str) -> Result<(), Fail> {
    if len > handle.max_payload {
        return Err(Fail::invalid(format!(
            "`{arg}` of {len} bytes exceeds max_payload_bytes ({})",
            handle.max_payload
        )));
    }
    Ok(())
}

/// Parses `options_json`. The core's message names an unknown key but not the key
/// holding a value of the wrong type, so on failure the offending key is found by
/// parsing each key on its own, and named.
fn parse_options(json: &str) -> Result<VaultOptions, Fail> {
    VaultOptions::from_json(json).map_err(|e| {
        let msg = e.to_string();
        match bad_option_key(json) {
            Some(key) if !msg.contains(&format!("`{key}`")) => Fail::new(
                CAPVAULT_ERR_INVALID_ARGUMENT,
                format!("{msg} (key `{key}`)"),
            ),
            _ => Fail::from(e),
        }
    })
}

/// The first key of the `options_json` object (`policy.x` inside `policy`) whose value
/// does not parse on its own.
fn bad_option_key(json: &str) -> Option<String> {
    use serde_json::{Map, Value};
    fn alone<T: serde::de::DeserializeOwned>(key: &str, value: &Value) -> bool {
        let mut one = Map::new();
        one.insert(key.to_string(), value.clone());
        serde_json::from_value::<T>(Value::Object(one)).is_ok()
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(json) else {
        return None;
    };
    for (key, value) in &map {
        if alone::<VaultOptions>(key, value) {
            continue;
        }
        if let ("policy", Value::Object(policy)) = (key.as_str(), value) {
            if let Some((k, _)) = policy
                .iter()
                .find(|(k, v)| !alone::<capvault_core::Policy>(k, v))
            {
                return Some(format!("policy.{k}"));
            }
        }
        return Some(key.clone());
    }
    None
}

/// Opens (creating on first use) the vault in directory `dir` for user `user`.
///
/// On success writes the new handle to `*out` and returns `CAPVAULT_OK`; on failure
/// `*out` is left untouched. The caller owns the handle and releases it with
/// `capvault_close`. Keys come from the OS keychain chosen in the options; if it is
/// unusable the vault does not open (`CAPVAULT_ERR_KEYCHAIN`) and nothing is written.
/// A vault open in another process gives `CAPVAULT_ERR_IN_USE`; so does a vault already
/// open in this process through a handle not yet closed (the message then says so:
/// share that handle between threads instead).
///
/// `dir`, `user` and `out` must not be NULL. `dir` and `user` are UTF-8 (`user`: 1 to
/// 128 bytes, no control characters).
///
/// `options_json` may be NULL for the defaults, or a JSON object with any of these
/// keys (unknown keys and wrong types give `CAPVAULT_ERR_INVALID_ARGUMENT` with a
/// message naming the key):
///
/// - `keystore` (string, default "auto"): "auto", "secret-service", "keyutils",
///   "macos-keychain", "windows-credential";
/// - `frame_max_bytes` (integer, default 65536, 256..16777216) and `frame_max_ms`
///   (integer, default 100, 1..60000): small events are sealed into one encrypted
///   frame once it holds this many bytes or its oldest event is this old;
/// - `chunk_bytes` (integer, default 65536): chunk size for large payloads;
/// - `max_payload_bytes` (integer, default 67108864, at most 1073741824): largest
///   screenshot or custom payload accepted;
/// - `fsync` (bool, default true): `capvault_flush` makes data survive power loss
///   (false: a process crash only);
/// - `dek_epoch_hours` (integer, default 24; 0 = only on demand): automatic data-key
///   rotation;
/// - `cache_bytes` (integer, default 16777216, at least 1048576): storage cache;
/// - `collector_receipt_key` (string "cvreceipt-ed25519-1...", default null): when set,
///   `capvault_ack` releases data only with a receipt signed by that collector. The
///   vault keeps the key: later opens without it still require its receipts; another
///   key replaces it and "none" removes it (both recorded in the audit ledger);
/// - `policy` (object): `version` (integer, default 1), `purpose` (string, default
///   "activity-capture"), `keystrokes` ("none", "timing", "categories" (default),
///   "codes", "text"), `deny_apps` (array of app names), `deny_titles` (array of
///   window-title patterns, `*` is a wildcard), `screenshots` (bool, default true),
///   `max_pause_secs` (integer, default 1800), `retention_secs` (integer, default
///   2592000; 0 = keep until released), `budget_bytes` (integer, default 0 = none;
///   otherwise at least 1048576), `on_budget` ("evict-oldest" (default), "refuse");
/// - `upload` (object, default null): the built-in uploader. When set, the open vault
///   enrolls with the collector once and uploads its bundles on a background thread
///   (no agent code; `capvault_seal_next`/`capvault_ack` stay available for agents
///   with their own transport). Requires `collector_receipt_key`. Keys: `url` (string,
///   required: "https://..."; "http://" only to 127.0.0.0/8, ::1 or localhost),
///   `recipient` (string, required: the collector's "cvrecip-..."), `token` (string,
///   default null: enrollment token, sent once, never logged or reported),
///   `max_bundle_bytes` (integer, default 8388608, 65536..67108864; a larger event goes
///   alone, and one too large for a bundle of the larger of this and 16 MiB is refused
///   when appended), `max_bytes_per_sec` (integer,
///   default 0 = unlimited, else at least 65536), `interval_secs` (integer,
///   default 30, 1..86400: how often to look for new data while idle).
///   `capvault_status_json` then reports `upload`.
///
/// Thread-safe.
///
/// # Safety
/// Each string argument is NULL or a NUL-terminated string; `out` is NULL or points
/// to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn capvault_open(
    dir: *const c_char,
    user: *const c_char,
    options_json: *const c_char,
    out: *mut *mut capvault,
) -> capvault_result {
    boundary(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: NULL or NUL-terminated strings (caller contract).
        let dir = unsafe { req_str(dir, "dir") }?;
        let user = unsafe { req_str(user, "user") }?;
        let options = match unsafe { opt_str(options_json, "options_json") }? {
            None => VaultOptions::default(),
            Some(json) => parse_options(json)?,
        };
        let max_payload = options.max_payload_bytes;
        if !fork::may_open() {
            return Err(Fail::new(
                CAPVAULT_ERR_FORKED,
                "this process was forked from one that had opened a vault, and the storage \
                 engine's background state does not survive fork(): open vaults only in a \
                 process that has not forked since its first capvault_open (fork before \
                 opening, or exec)",
            ));
        }
        let generation = fork::generation();
        let vault = match Vault::open(dir, user, options) {
            Ok(vault) => vault,
            Err(capvault_core::Error::InUse) => return Err(in_use(dir)),
            Err(e) => return Err(e.into()),
        };
        let handle: &'static capvault = Box::leak(Box::new(capvault {
            vault: Shared::new(vault),
            max_payload,
            generation,
            last_error: parking_lot::Mutex::new(None),
            dir: std::fs::canonicalize(dir).ok(),
        }));
        let ptr = std::ptr::from_ref(handle).cast_mut();
        HANDLES.write().insert(ptr as usize);
        // SAFETY: checked by `out_ptr`; writable per the caller contract.
        unsafe { write_out(out, ptr) };
        Ok(CAPVAULT_OK)
    })
}

/// Flushes and closes the vault, and releases the handle. NULL is fine.
///
/// Waits for calls in flight on other threads to finish. If the final flush fails the
/// data appended since the last successful `capvault_flush` may be lost, and the
/// failure is recorded like any other: `capvault_last_error()` on this thread and
/// `capvault_handle_last_error(v, ...)` (still callable on the closed handle) say why.
/// To know whether everything reached the disk, call `capvault_flush` first and check
/// its result. After this call every use of `v` returns `CAPVAULT_ERR_CLOSED`; closing
/// it again is harmless. Safe from an `atexit` handler, a C++ static destructor or a
/// thread that is exiting. In a child process after `fork()` it releases nothing and
/// records `CAPVAULT_ERR_FORKED` (the parent still owns the vault).
#[no_mangle]
pub extern "C" fn capvault_close(v: *mut capvault) {
    boundary(|| {
        if v.is_null() {
            return Ok(());
        }
        let handle = lookup(v, inflight::this_thread())?;
        handle.vault.close(|taken| {
            let fail = match taken {
                Taken::Gone => return Ok(()),
                Taken::Value(vault) => match vault.close() {
                    Ok(()) => return Ok(()),
                    Err(e) => Fail::from(e),
                },
                Taken::Stuck(vault) => {
                    let flushed = match vault.flush() {
                        Ok(()) => "everything appended was flushed".to_string(),
                        Err(e) => format!("the final flush failed too ({e})"),
                    };
                    Fail::new(
                        CAPVAULT_ERR_STORAGE,
                        format!(
                            "the kernel refused membarrier(2) after this process had \
                             registered for it (a seccomp filter installed since the \
                             vault was opened?), so calls in flight on other threads \
                             could not be waited for: {flushed}, new calls on the handle \
                             fail, and the vault stays open until the process exits"
                        ),
                    )
                }
                // Not recorded on the handle: the handle is still open and fine.
                Taken::Inside => {
                    return Err(Fail::invalid(
                        "capvault_close was called from inside a call on the same handle \
                         on this thread (a signal handler?), which it would wait for \
                         forever: the handle stays open; close it outside that call",
                    ))
                }
            };
            handle.record(&fail);
            Err(fail)
        })
    })
}

/// Copies the last failure message of a call on handle `v`, from any thread, into
/// `buf` (`len` bytes, truncated and NUL-terminated; nothing is written when `len` is
/// 0) and returns the message's full length in bytes (it was truncated if that is
/// `len` or more). The message is "" while no call on `v` has failed.
///
/// For runtimes whose calls move between threads (Go goroutines, C# and Swift async
/// code), where the per-thread `capvault_last_error()` may belong to another call.
/// Failures on a handle stay recorded on it after `capvault_close`: a failed final
/// flush can be read here, and calls on the closed handle (which return
/// `CAPVAULT_ERR_CLOSED` and set the thread's message) do not replace it. For a NULL `v`, a pointer that is not a handle, or a handle
/// from before a `fork()`, the message says so. Never sets the last error. Thread-safe.
///
/// # Safety
/// `buf` is NULL (with `len` 0) or points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn capvault_handle_last_error(
    v: *const capvault,
    buf: *mut c_char,
    len: usize,
) -> usize {
    let body = || {
        let msg = match lookup(v, inflight::this_thread()) {
            Ok(handle) => handle.last_error.lock().clone().unwrap_or_default(),
            Err(fail) => fail.c_msg(),
        };
        // SAFETY: forwarded caller contract.
        unsafe { copy_out(&msg, buf, len) }
    };
    // Not through `boundary`: reading a message must not set one.
    // SAFETY: as above.
    catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|_| unsafe { copy_out(describe(CAPVAULT_ERR_PANIC), buf, len) })
}

/// Appends a mouse move to (`x`, `y`) at `ts_us` (microseconds since the Unix epoch).
///
/// Returns `CAPVAULT_OK` (stored), `CAPVAULT_PAUSED` or `CAPVAULT_FILTERED` (dropped by
/// a pause or the policy; not errors), or an error code. Returns once the event is
/// accepted; it is durable after the next successful `capvault_flush`. Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_append_mouse_move(
    v: *mut capvault,
    ts_us: i64,
    x: i32,
    y: i32,
) -> capvault_result {
    // `Vault::append` itself, not `append_mouse_move`: the typed helpers are not inlined
    // across crates, and skipping one is a tenth of what this function adds per event.
    on_vault(v, |vault, _| {
        Ok(appended(vault.append(Event::MouseMove { ts_us, x, y })?))
    })
}

/// Appends a mouse button press (`pressed` true) or release at (`x`, `y`). `button`:
/// 1 left, 2 middle, 3 right, ... Results as for `capvault_append_mouse_move`.
#[no_mangle]
pub extern "C" fn capvault_append_mouse_button(
    v: *mut capvault,
    ts_us: i64,
    button: u32,
    pressed: bool,
    x: i32,
    y: i32,
) -> capvault_result {
    on_vault(v, |vault, _| {
        Ok(appended(vault.append(Event::MouseButton {
            ts_us,
            button,
            pressed,
            x,
            y,
        })?))
    })
}

/// Appends a scroll by (`dx`, `dy`). Results as for `capvault_append_mouse_move`.
#[no_mangle]
pub extern "C" fn capvault_append_scroll(
    v: *mut capvault,
    ts_us: i64,
    dx: i32,
    dy: i32,
) -> capvault_result {
    on_vault(v, |vault, _| {
        Ok(appended(vault.append(Event::Scroll { ts_us, dx, dy })?))
    })
}

/// Appends a key press or release. `key_code` is the USB HID usage id; `text` is the
/// UTF-8 text the key produced, or NULL. The keystroke policy decides what is kept
/// (by default only a coarse category). Results as for `capvault_append_mouse_move`.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string, read only during the call.
#[no_mangle]
pub unsafe extern "C" fn capvault_append_key(
    v: *mut capvault,
    ts_us: i64,
    key_code: u32,
    pressed: bool,
    text: *const c_char,
) -> capvault_result {
    on_vault(v, |vault, _| {
        // SAFETY: NULL or NUL-terminated (caller contract).
        let text = unsafe { opt_str(text, "text") }?;
        Ok(appended(vault.append_key(ts_us, key_code, pressed, text)?))
    })
}

/// Appends a change of input focus to application `app`, window title `title` (both
/// UTF-8, not NULL; "" is allowed). While a denied app or title has focus, nothing is
/// stored. Results as for `capvault_append_mouse_move`.
///
/// # Safety
/// `app` and `title` are NULL or NUL-terminated strings, read only during the call.
#[no_mangle]
pub unsafe extern "C" fn capvault_append_window_focus(
    v: *mut capvault,
    ts_us: i64,
    app: *const c_char,
    title: *const c_char,
) -> capvault_result {
    on_vault(v, |vault, _| {
        // SAFETY: NULL or NUL-terminated (caller contract).
        let app = unsafe { req_str(app, "app") }?;
        let title = unsafe { req_str(title, "title") }?;
        Ok(appended(vault.append_window_focus(ts_us, app, title)?))
    })
}

/// Appends a screenshot: `len` bytes at `data`, an image of `width` x `height` pixels
/// in `format` (UTF-8, for example "png"; not NULL).
///
/// `data` may be NULL only when `len` is 0. A `len` above the vault's
/// `max_payload_bytes` gives `CAPVAULT_ERR_INVALID_ARGUMENT` before `data` is read.
/// The bytes are copied before the call returns. Results as for
/// `capvault_append_mouse_move`.
///
/// # Safety
/// `format` is NULL or a NUL-terminated string; `data` is NULL or points to `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn capvault_append_screenshot(
    v: *mut capvault,
    ts_us: i64,
    width: u32,
    height: u32,
    format: *const c_char,
    data: *const u8,
    len: usize,
) -> capvault_result {
    on_vault(v, |vault, handle| {
        check_payload(handle, len, "len")?;
        // SAFETY: per the caller contract; `len` was checked above.
        let format = unsafe { req_str(format, "format") }?;
        let data = unsafe { slice(data, len, "data") }?;
        Ok(appended(
            vault.append_screenshot(ts_us, width, height, format, data)?,
        ))
    })
}

/// Appends an agent-defined event of kind `kind` (UTF-8, not NULL) with `len` bytes
/// of payload at `data`. Buffer rules and results as for `capvault_append_screenshot`.
///
/// # Safety
/// `kind` is NULL or a NUL-terminated string; `data` is NULL or points to `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn capvault_append_custom(
    v: *mut capvault,
    ts_us: i64,
    kind: *const c_char,
    data: *const u8,
    len: usize,
) -> capvault_result {
    on_vault(v, |vault, handle| {
        check_payload(handle, len, "len")?;
        // SAFETY: per the caller contract; `len` was checked above.
        let kind = unsafe { req_str(kind, "kind") }?;
        let data = unsafe { slice(data, len, "data") }?;
        Ok(appended(vault.append_custom(ts_us, kind, data)?))
    })
}

/// Returns once everything appended before the call is on disk: with the default
/// `fsync: true` it survives a crash or power loss. Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_flush(v: *mut capvault) -> capvault_result {
    on_vault(v, |vault, _| {
        vault.flush()?;
        Ok(CAPVAULT_OK)
    })
}

/// Pauses capture for `seconds` (at least 1; capped by the policy's `max_pause_secs`).
/// Events appended during the pause return `CAPVAULT_PAUSED` and are not stored. The
/// pause survives restarts. Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_pause(v: *mut capvault, seconds: u32) -> capvault_result {
    on_vault(v, |vault, _| {
        vault.pause(Duration::from_secs(seconds.into()))?;
        Ok(CAPVAULT_OK)
    })
}

/// Ends a pause early. Resuming when not paused is harmless. Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_resume(v: *mut capvault) -> capvault_result {
    on_vault(v, |vault, _| {
        vault.resume()?;
        Ok(CAPVAULT_OK)
    })
}

/// Starts a new data-key epoch: later records are encrypted under a new key.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_rotate_key(v: *mut capvault) -> capvault_result {
    on_vault(v, |vault, _| {
        vault.rotate_dek()?;
        Ok(CAPVAULT_OK)
    })
}

/// Writes a JSON object describing the vault (directory, ids, user, keychain, key
/// epochs, record counts, disk use, pause state, policy; with the `upload` option also
/// `upload`: `url`, `pending_bundles`, `pending_bytes`, `last_success_us`,
/// `last_attempt_us`, `last_error`, `next_attempt_us`, `idle`, `enrolled`,
/// `consecutive_failures`, `uploaded_bundles`, `uploaded_bytes`; never keys, tokens or
/// captured content) to `*out_json`.
///
/// `out_json` must not be NULL; it is written only on success. The caller owns the
/// string and frees it with `capvault_string_free`. Thread-safe.
///
/// # Safety
/// `out_json` is NULL or points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn capvault_status_json(
    v: *mut capvault,
    out_json: *mut *mut c_char,
) -> capvault_result {
    on_vault(v, |vault, _| {
        let out = out_ptr(out_json, "out_json")?;
        let status = vault.status()?;
        let json = serde_json::to_string(&status)
            .map_err(|e| Fail::new(CAPVAULT_ERR_STORAGE, format!("status: {e}")))?;
        // serde_json escapes control characters, so the text has no NUL byte.
        let json = CString::new(json)
            .map_err(|_| Fail::new(CAPVAULT_ERR_STORAGE, "status: unexpected NUL byte"))?;
        // SAFETY: checked by `out_ptr`; writable per the caller contract.
        unsafe { write_out(out, json.into_raw()) };
        Ok(CAPVAULT_OK)
    })
}

/// Seals the oldest records not yet acknowledged into one bundle for `recipient` (a
/// recipient string such as "cvrecip-x25519-1..."), at most about `max_bytes` of
/// records (at least one record is always included).
///
/// On success `*out` is the new bundle, or NULL when nothing is pending. The vault keeps
/// a sealed bundle until it is acknowledged with `capvault_ack`: every call until then
/// returns the same bytes and id (also after a crash or reopen, whatever `max_bytes`
/// is); another recipient meanwhile gives `CAPVAULT_ERR_INVALID_ARGUMENT`. The caller
/// owns the bundle and frees it with `capvault_bundle_free`.
///
/// `recipient` and `out` must not be NULL. A malformed recipient (wrong prefix,
/// checksum, or length) gives `CAPVAULT_ERR_INVALID_ARGUMENT`. `*out` is written only
/// on success. Thread-safe.
///
/// # Safety
/// `recipient` is NULL or a NUL-terminated string; `out` is NULL or points to
/// writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn capvault_seal_next(
    v: *mut capvault,
    recipient: *const c_char,
    max_bytes: usize,
    out: *mut *mut capvault_bundle,
) -> capvault_result {
    on_vault(v, |vault, _| {
        let out = out_ptr(out, "out")?;
        // SAFETY: NULL or NUL-terminated (caller contract).
        let recipient: Recipient = unsafe { req_str(recipient, "recipient") }?
            .parse::<Recipient>()
            .map_err(capvault_core::Error::from)?;
        let ptr = match vault.seal_next(&recipient, max_bytes)? {
            Some(b) => capvault_bundle::new(b)?,
            None => std::ptr::null_mut(),
        };
        // SAFETY: checked by `out_ptr`; writable per the caller contract.
        unsafe { write_out(out, ptr) };
        Ok(CAPVAULT_OK)
    })
}

/// Acknowledges that bundle `bundle_id` (from `capvault_bundle_id`) reached the
/// collector, so its records are released (pruned) from the vault.
///
/// `receipt` is the collector's receipt (`receipt_len` bytes); it may be NULL with
/// length 0. If the vault was opened with `collector_receipt_key`, a valid receipt is
/// required (`CAPVAULT_ERR_TAMPERED` if it does not verify). An unknown bundle id
/// gives `CAPVAULT_ERR_NOT_FOUND`. `bundle_id` must not be NULL. Thread-safe.
///
/// # Safety
/// `bundle_id` is NULL or a NUL-terminated string; `receipt` is NULL or points to
/// `receipt_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn capvault_ack(
    v: *mut capvault,
    bundle_id: *const c_char,
    receipt: *const u8,
    receipt_len: usize,
) -> capvault_result {
    on_vault(v, |vault, _| {
        // SAFETY: per the caller contract.
        let id = unsafe { req_str(bundle_id, "bundle_id") }?;
        let receipt = unsafe { slice(receipt, receipt_len, "receipt") }?;
        let receipt = (!receipt.is_empty()).then_some(receipt);
        vault.ack(id, receipt)?;
        Ok(CAPVAULT_OK)
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;
    use crate::{CAPVAULT_ERR_CLOSED, CAPVAULT_ERR_INVALID_ARGUMENT, CAPVAULT_ERR_PANIC};

    fn open(dir: &std::path::Path) -> *mut capvault {
        let d = CString::new(dir.to_str().unwrap()).unwrap();
        let u = CString::new("alice").unwrap();
        let o = CString::new(r#"{"keystore": "keyutils"}"#).unwrap();
        let mut v = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings and a pointer to write the handle to.
        let rc = unsafe { capvault_open(d.as_ptr(), u.as_ptr(), o.as_ptr(), &mut v) };
        assert_eq!(rc, CAPVAULT_OK);
        v
    }

    fn handle_error(v: *const capvault) -> String {
        let mut buf = [0u8; 512];
        // SAFETY: a handle from `open` and a buffer of `buf.len()` bytes.
        unsafe { capvault_handle_last_error(v, buf.as_mut_ptr().cast(), buf.len()) };
        CStr::from_bytes_until_nul(&buf)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// The rules `on_vault` keeps with one `catch_unwind`: a failure or a panic of the
    /// body is the call's result and the handle's last error, a panic never unwinds out
    /// of it, a success leaves the last error, and a call on a closed handle leaves what
    /// the close left.
    #[test]
    fn failures_and_panics_on_an_open_handle_are_its_last_error_and_never_unwind() {
        let tmp = tempfile::tempdir().unwrap();
        let v = open(&tmp.path().join("v"));
        assert_eq!(handle_error(v), "");

        let rc: capvault_result = on_vault(v, |_, _| panic!("boom in the body"));
        assert_eq!(rc, CAPVAULT_ERR_PANIC);
        assert!(
            handle_error(v).contains("boom in the body"),
            "{}",
            handle_error(v)
        );

        let rc = on_vault(v, |_, _| {
            Err::<capvault_result, _>(Fail::invalid("bad thing"))
        });
        assert_eq!(rc, CAPVAULT_ERR_INVALID_ARGUMENT);
        assert!(handle_error(v).contains("bad thing"));

        assert_eq!(on_vault(v, |_, _| Ok(CAPVAULT_OK)), CAPVAULT_OK);
        assert!(handle_error(v).contains("bad thing"));

        // A failed lookup is not the handle's: a NULL handle names no handle at all.
        let rc = on_vault(std::ptr::null(), |_, _| Ok(CAPVAULT_OK));
        assert_ne!(rc, CAPVAULT_OK);

        capvault_close(v);
        let after_close = handle_error(v);
        let ran = std::cell::Cell::new(false);
        let rc = on_vault(v, |_, _| {
            ran.set(true);
            Err::<capvault_result, _>(Fail::invalid("after close"))
        });
        assert_eq!(rc, CAPVAULT_ERR_CLOSED);
        assert!(!ran.get(), "the body ran on a closed handle");
        assert_eq!(handle_error(v), after_close);
    }

    /// `capvault_close` while 4 threads append: each append is accepted or CLOSED, and
    /// the vault, reopened, holds exactly the accepted ones (none was lost by the final
    /// flush or went into a vault that was no longer flushed). That the close waits for
    /// calls in flight is tested in `inflight`: the window here is too short for a
    /// close that skipped the wait to be caught.
    #[test]
    fn a_close_while_threads_append_keeps_exactly_the_accepted_events() {
        use capvault_core::{open_bundle, Event, Identity, KeyStoreKind, Suite};
        use std::collections::BTreeSet;

        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        let v = open(&dir) as usize;
        let threads: Vec<_> = (0..4i64)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut accepted = Vec::new();
                    for i in 0.. {
                        let ts = 1_764_000_000_000_000 + i * 4 + t;
                        match capvault_append_mouse_move(v as *mut capvault, ts, 1, 2) {
                            CAPVAULT_OK => accepted.push(ts),
                            CAPVAULT_ERR_CLOSED => return accepted,
                            rc => panic!("append returned {rc}"),
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        capvault_close(v as *mut capvault);
        let accepted: BTreeSet<i64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert!(
            accepted.len() > 100,
            "{} appends before the close",
            accepted.len()
        );

        let mut o = VaultOptions::default();
        o.keystore = KeyStoreKind::Keyutils;
        let vault = Vault::open(&dir, "alice", o.clone()).unwrap();
        let identity = Identity::generate(Suite::X25519);
        let mut stored = BTreeSet::new();
        while let Some(b) = vault.seal_next(&identity.recipient(), 64 << 20).unwrap() {
            for e in &open_bundle(b.bytes(), &identity).unwrap().events {
                if let Event::MouseMove { ts_us, .. } = e.event {
                    assert!(stored.insert(ts_us), "{ts_us} stored twice");
                }
            }
            vault.ack(b.id(), None).unwrap();
        }
        vault.erase_open().unwrap();
        assert_eq!(stored, accepted);
    }
}
