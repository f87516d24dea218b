//! The `capvault` handle: one open vault for one user.
//!
//! A handle is shared by reference between C threads. The pointer handed to C is the
//! address of an `Arc<capvault>` held in a global registry of live handles; every call
//! looks the address up there first (never dereferencing the raw pointer), so a call on
//! a closed handle gets `CAPVAULT_ERR_CLOSED` instead of touching freed memory. The
//! vault itself sits behind an `RwLock<Option<Vault>>`: every call holds the read lock
//! for its duration, and `capvault_close` takes it out under the write lock, so closing
//! on one thread while others are calling is safe (close waits for calls in flight).
//!
//! A closed handle's (small) allocation is kept for the life of the process, so its
//! address is never given to a later `capvault_open`: a stale pointer stays CLOSED
//! instead of reaching another vault. That costs about 100 bytes per closed handle.

use std::collections::HashMap;
use std::ffi::c_char;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::time::Duration;

use capvault_core::{Appended, Recipient, Vault, VaultOptions};

use crate::bundle::capvault_bundle;
use crate::error::{boundary, Fail};
use crate::ptr::{opt_str, out_ptr, req_str, slice, write_out};
use crate::*;

/// An open vault (opaque). Create it with `capvault_open`, release it with
/// `capvault_close`. One handle may be used from many threads at once.
pub struct capvault {
    vault: RwLock<Option<Vault>>,
    /// `max_payload_bytes` of the options the vault was opened with, checked before a
    /// payload buffer is read.
    max_payload: usize,
}

/// Live handles by address.
static HANDLES: LazyLock<Mutex<HashMap<usize, Arc<capvault>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Closed handles, kept so their addresses are never reused.
static RETIRED: Mutex<Vec<Arc<capvault>>> = Mutex::new(Vec::new());

fn handles() -> std::sync::MutexGuard<'static, HashMap<usize, Arc<capvault>>> {
    HANDLES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the open vault behind `v`, holding the handle's read lock.
fn with_vault<R>(
    v: *const capvault,
    f: impl FnOnce(&Vault, &capvault) -> Result<R, Fail>,
) -> Result<R, Fail> {
    if v.is_null() {
        return Err(Fail::null("v"));
    }
    let handle = handles()
        .get(&(v as usize))
        .cloned()
        .ok_or_else(Fail::closed)?;
    let guard = handle.vault.read().unwrap_or_else(PoisonError::into_inner);
    let vault = guard.as_ref().ok_or_else(Fail::closed)?;
    f(vault, &handle)
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
/// A vault open in another process gives `CAPVAULT_ERR_IN_USE`.
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
///   `max_bundle_bytes` (integer, default 8388608, 65536..1073741824),
///   `max_bytes_per_sec` (integer, default 0 = unlimited), `interval_secs` (integer,
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
        let vault = Vault::open(dir, user, options)?;
        let handle = Arc::new(capvault {
            vault: RwLock::new(Some(vault)),
            max_payload,
        });
        let ptr = Arc::as_ptr(&handle).cast_mut();
        handles().insert(ptr as usize, handle);
        // SAFETY: checked by `out_ptr`; writable per the caller contract.
        unsafe { write_out(out, ptr) };
        Ok(CAPVAULT_OK)
    })
}

/// Flushes and closes the vault, and releases the handle. NULL is fine.
///
/// Waits for calls in flight on other threads to finish. If the final flush fails the
/// data appended since the last successful `capvault_flush` may be lost, and
/// `capvault_last_error()` on this thread says why (it is "" after a clean close).
/// After this call every use of `v` returns `CAPVAULT_ERR_CLOSED`; closing it again is
/// harmless.
#[no_mangle]
pub extern "C" fn capvault_close(v: *mut capvault) {
    boundary(|| {
        if v.is_null() {
            return Ok(());
        }
        let handle = {
            let mut handles = handles();
            let handle = handles.remove(&(v as usize));
            if handles.is_empty() {
                // Give the table's memory back when the last vault is closed, so a
                // program that closes everything ends with nothing allocated here.
                handles.shrink_to_fit();
            }
            handle
        };
        let Some(handle) = handle else {
            return Ok(());
        };
        let vault = handle
            .vault
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        RETIRED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
        if let Some(vault) = vault {
            if let Err(e) = vault.close() {
                return Err(Fail::from(e));
            }
        }
        Ok(())
    })
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
    boundary(|| {
        with_vault(v, |vault, _| {
            Ok(appended(vault.append_mouse_move(ts_us, x, y)?))
        })
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
    boundary(|| {
        with_vault(v, |vault, _| {
            Ok(appended(
                vault.append_mouse_button(ts_us, button, pressed, x, y)?,
            ))
        })
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
    boundary(|| {
        with_vault(v, |vault, _| {
            Ok(appended(vault.append_scroll(ts_us, dx, dy)?))
        })
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
    boundary(|| {
        with_vault(v, |vault, _| {
            // SAFETY: NULL or NUL-terminated (caller contract).
            let text = unsafe { opt_str(text, "text") }?;
            Ok(appended(vault.append_key(ts_us, key_code, pressed, text)?))
        })
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
    boundary(|| {
        with_vault(v, |vault, _| {
            // SAFETY: NULL or NUL-terminated (caller contract).
            let app = unsafe { req_str(app, "app") }?;
            let title = unsafe { req_str(title, "title") }?;
            Ok(appended(vault.append_window_focus(ts_us, app, title)?))
        })
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
    boundary(|| {
        with_vault(v, |vault, handle| {
            check_payload(handle, len, "len")?;
            // SAFETY: per the caller contract; `len` was checked above.
            let format = unsafe { req_str(format, "format") }?;
            let data = unsafe { slice(data, len, "data") }?;
            Ok(appended(
                vault.append_screenshot(ts_us, width, height, format, data)?,
            ))
        })
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
    boundary(|| {
        with_vault(v, |vault, handle| {
            check_payload(handle, len, "len")?;
            // SAFETY: per the caller contract; `len` was checked above.
            let kind = unsafe { req_str(kind, "kind") }?;
            let data = unsafe { slice(data, len, "data") }?;
            Ok(appended(vault.append_custom(ts_us, kind, data)?))
        })
    })
}

/// Returns once everything appended before the call is on disk: with the default
/// `fsync: true` it survives a crash or power loss. Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_flush(v: *mut capvault) -> capvault_result {
    boundary(|| {
        with_vault(v, |vault, _| {
            vault.flush()?;
            Ok(CAPVAULT_OK)
        })
    })
}

/// Pauses capture for `seconds` (at least 1; capped by the policy's `max_pause_secs`).
/// Events appended during the pause return `CAPVAULT_PAUSED` and are not stored. The
/// pause survives restarts. Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_pause(v: *mut capvault, seconds: u32) -> capvault_result {
    boundary(|| {
        with_vault(v, |vault, _| {
            vault.pause(Duration::from_secs(seconds.into()))?;
            Ok(CAPVAULT_OK)
        })
    })
}

/// Ends a pause early. Resuming when not paused is harmless. Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_resume(v: *mut capvault) -> capvault_result {
    boundary(|| {
        with_vault(v, |vault, _| {
            vault.resume()?;
            Ok(CAPVAULT_OK)
        })
    })
}

/// Starts a new data-key epoch: later records are encrypted under a new key.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn capvault_rotate_key(v: *mut capvault) -> capvault_result {
    boundary(|| {
        with_vault(v, |vault, _| {
            vault.rotate_dek()?;
            Ok(CAPVAULT_OK)
        })
    })
}

/// Writes a JSON object describing the vault (directory, ids, user, keychain, key
/// epochs, record counts, disk use, pause state, policy; with the `upload` option also
/// `upload`: `url`, `pending_bundles`, `pending_bytes`, `last_success_us`,
/// `last_attempt_us`, `last_error`, `next_attempt_us`, `enrolled`,
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
    boundary(|| {
        let out = out_ptr(out_json, "out_json")?;
        let json = with_vault(v, |vault, _| {
            let status = vault.status()?;
            serde_json::to_string(&status)
                .map_err(|e| Fail::new(CAPVAULT_ERR_STORAGE, format!("status: {e}")))
        })?;
        // serde_json escapes control characters, so the text has no NUL byte.
        let json = std::ffi::CString::new(json)
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
    boundary(|| {
        let out = out_ptr(out, "out")?;
        let sealed = with_vault(v, |vault, _| {
            // SAFETY: NULL or NUL-terminated (caller contract).
            let recipient: Recipient = unsafe { req_str(recipient, "recipient") }?
                .parse::<Recipient>()
                .map_err(capvault_core::Error::from)?;
            Ok(vault.seal_next(&recipient, max_bytes)?)
        })?;
        let ptr = match sealed {
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
    boundary(|| {
        with_vault(v, |vault, _| {
            // SAFETY: per the caller contract.
            let id = unsafe { req_str(bundle_id, "bundle_id") }?;
            let receipt = unsafe { slice(receipt, receipt_len, "receipt") }?;
            let receipt = (!receipt.is_empty()).then_some(receipt);
            vault.ack(id, receipt)?;
            Ok(CAPVAULT_OK)
        })
    })
}
