"""The capvault C library (libcapvault) from Python, through ctypes.

    import capvault
    with capvault.Vault.open("/var/lib/capvault/alice", "alice", {"keystore": "auto"}) as v:
        v.append_mouse_move(1764000000000000, 640, 480)
        v.flush()
        bundle = v.seal_next("cvrecip-x25519-1...", 8 << 20)
        if bundle is not None:
            ...  # upload bundle.data, then:
            v.ack(bundle.id)

Failures raise CapvaultError (code, message, description). Appends return OK, PAUSED or
FILTERED (not errors). The library is found at the path given to load(), else
$CAPVAULT_LIB, else the system's libcapvault (ldconfig), else libcapvault.so.ABI.

SIGNATURES mirrors include/capvault.h; tests/ffi/check_python_signatures.py checks it
(and the constants below) against the header.
"""
import ctypes
import ctypes.util
import json
import os

# Result codes and versions (include/capvault.h).
OK = 0
ERR_NULL_ARGUMENT = 1
ERR_INVALID_ARGUMENT = 2
ERR_KEYCHAIN = 3
ERR_STORAGE = 4
ERR_STORAGE_FULL = 5
ERR_TAMPERED = 6
ERR_IN_USE = 7
ERR_ERASED = 8
ERR_NOT_FOUND = 9
ERR_CLOSED = 10
ERR_PANIC = 11
ERR_FORKED = 12
ERR_BAD_BUNDLE = 13
PAUSED = 100
FILTERED = 101
VERSION_MAJOR = 0
VERSION_MINOR = 2
VERSION_PATCH = 0
ABI_VERSION = 1


def is_error(rc):
    """CAPVAULT_IS_ERROR: 1-99 (and anything outside 0 and 100-199) are errors; 0 and
    the outcomes 100-199 (PAUSED, FILTERED) are not."""
    return rc != OK and not 100 <= rc <= 199


_handle = ctypes.c_void_p  # capvault *
_bundle = ctypes.c_void_p  # capvault_bundle *
_res = ctypes.c_int32  # capvault_result
_str = ctypes.c_char_p  # const char * (in), NUL-terminated UTF-8
_buf = ctypes.c_char_p  # const uint8_t * (in): a bytes object
_u8p = ctypes.POINTER(ctypes.c_uint8)  # const uint8_t * (out)
_size = ctypes.c_size_t
_i64, _i32, _u32, _bool = ctypes.c_int64, ctypes.c_int32, ctypes.c_uint32, ctypes.c_bool

# name: (restype, argtypes), in header order.
SIGNATURES = {
    "capvault_bundle_data": (_u8p, [_bundle, ctypes.POINTER(_size)]),
    "capvault_bundle_id": (_str, [_bundle]),
    "capvault_bundle_free": (None, [_bundle]),
    "capvault_version": (_str, []),
    "capvault_abi_version": (_u32, []),
    "capvault_result_str": (_str, [_res]),
    "capvault_last_error": (_str, []),
    "capvault_last_error_copy": (_size, [ctypes.c_char_p, _size]),
    # char *: a c_void_p, so the pointer can be handed back to string_free.
    "capvault_string_free": (None, [ctypes.c_void_p]),
    "capvault_open": (_res, [_str, _str, _str, ctypes.POINTER(_handle)]),
    "capvault_close": (None, [_handle]),
    "capvault_handle_last_error": (_size, [_handle, ctypes.c_char_p, _size]),
    "capvault_append_mouse_move": (_res, [_handle, _i64, _i32, _i32]),
    "capvault_append_mouse_button": (_res, [_handle, _i64, _u32, _bool, _i32, _i32]),
    "capvault_append_scroll": (_res, [_handle, _i64, _i32, _i32]),
    "capvault_append_key": (_res, [_handle, _i64, _u32, _bool, _str]),
    "capvault_append_window_focus": (_res, [_handle, _i64, _str, _str]),
    "capvault_append_screenshot": (_res, [_handle, _i64, _u32, _u32, _str, _buf, _size]),
    "capvault_append_custom": (_res, [_handle, _i64, _str, _buf, _size]),
    "capvault_flush": (_res, [_handle]),
    "capvault_pause": (_res, [_handle, _u32]),
    "capvault_resume": (_res, [_handle]),
    "capvault_rotate_key": (_res, [_handle]),
    "capvault_status_json": (_res, [_handle, ctypes.POINTER(ctypes.c_void_p)]),
    "capvault_seal_next": (_res, [_handle, _str, _size, ctypes.POINTER(_bundle)]),
    "capvault_ack": (_res, [_handle, _str, _buf, _size]),
}


class CapvaultError(Exception):
    """A failed call: `code` (a CAPVAULT_ERR_* value), `message` (what the library said),
    `description` (the static description of the code)."""

    def __init__(self, what, code, message, description):
        super().__init__(f"{what} failed ({code}, {description}): {message}")
        self.code = code
        self.message = message
        self.description = description


_lib = None


def load(path=None):
    """Loads libcapvault (once per process), declares every signature, and checks that
    the library speaks this module's ABI."""
    global _lib
    if _lib is not None:
        return _lib
    path = (path or os.environ.get("CAPVAULT_LIB") or ctypes.util.find_library("capvault")
            or f"libcapvault.so.{ABI_VERSION}")
    lib = ctypes.CDLL(path)
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    abi = lib.capvault_abi_version()
    if abi != ABI_VERSION:
        raise ImportError(f"{path} has ABI {abi}; this module needs {ABI_VERSION}")
    _lib = lib
    return lib


def version():
    return load().capvault_version().decode()


def result_str(rc):
    return load().capvault_result_str(rc).decode()


def _cstr(text, what):
    """UTF-8 for a C string argument. A NUL would silently cut the string short in C,
    storing something other than what was given, so it is refused."""
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character")
    return text.encode()


def _check(what, rc):
    """Returns rc unless it is an error; then raises with the message of the failure
    (read on this thread, right after the call)."""
    if not is_error(rc):
        return rc
    lib = load()
    message = lib.capvault_last_error().decode("utf-8", "replace")
    raise CapvaultError(what, rc, message, result_str(rc))


def _handle_error(v):
    """The last failure recorded on handle v (from any thread), or ""."""
    lib = load()
    buf = ctypes.create_string_buffer(256)
    n = lib.capvault_handle_last_error(v, buf, len(buf))
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        lib.capvault_handle_last_error(v, buf, len(buf))
    return buf.value.decode("utf-8", "replace")


class Bundle:
    """A sealed bundle: `data` (bytes to upload) and `id` (for Vault.ack)."""

    def __init__(self, bundle_id, data):
        self.id = bundle_id
        self.data = data


class Vault:
    """An open vault. Use Vault.open(); close() (or a with block) releases it."""

    def __init__(self, handle):
        self._v = handle

    @classmethod
    def open(cls, directory, user, options=None):
        lib = load()
        v = _handle()
        opts = None if options is None else json.dumps(options).encode()
        _check("capvault_open", lib.capvault_open(os.fsencode(directory), _cstr(user, "user"), opts,
                                                  ctypes.byref(v)))
        return cls(v)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Flushes (raising if that fails) and closes; raises if the close's own final
        flush failed. Closing twice is harmless."""
        if self._v is None:
            return
        lib, v = load(), self._v
        try:
            self.flush()
        finally:
            before = _handle_error(v)
            self._v = None
            lib.capvault_close(v)
        after = _handle_error(v)
        if after != before:
            raise CapvaultError("capvault_close", ERR_STORAGE, after, result_str(ERR_STORAGE))

    def _call(self, name, *args):
        if self._v is None:
            raise CapvaultError(name, ERR_CLOSED, "the vault is closed", result_str(ERR_CLOSED))
        return _check(name, getattr(load(), name)(self._v, *args))

    def append_mouse_move(self, ts_us, x, y):
        return self._call("capvault_append_mouse_move", ts_us, x, y)

    def append_mouse_button(self, ts_us, button, pressed, x, y):
        return self._call("capvault_append_mouse_button", ts_us, button, pressed, x, y)

    def append_scroll(self, ts_us, dx, dy):
        return self._call("capvault_append_scroll", ts_us, dx, dy)

    def append_key(self, ts_us, key_code, pressed, text=None):
        return self._call("capvault_append_key", ts_us, key_code, pressed,
                          None if text is None else _cstr(text, "text"))

    def append_window_focus(self, ts_us, app, title):
        return self._call("capvault_append_window_focus", ts_us, _cstr(app, "app"), _cstr(title, "title"))

    def append_screenshot(self, ts_us, width, height, fmt, data):
        return self._call("capvault_append_screenshot", ts_us, width, height, _cstr(fmt, "format"),
                          bytes(data), len(data))

    def append_custom(self, ts_us, kind, data):
        return self._call("capvault_append_custom", ts_us, _cstr(kind, "kind"), bytes(data), len(data))

    def flush(self):
        self._call("capvault_flush")

    def pause(self, seconds):
        self._call("capvault_pause", seconds)

    def resume(self):
        self._call("capvault_resume")

    def rotate_key(self):
        self._call("capvault_rotate_key")

    def status(self):
        """The status object (dict)."""
        lib = load()
        out = ctypes.c_void_p()
        self._call("capvault_status_json", ctypes.byref(out))
        try:
            return json.loads(ctypes.string_at(out.value).decode())
        finally:
            lib.capvault_string_free(out)

    def seal_next(self, recipient, max_bytes):
        """The next sealed bundle (a Bundle), or None when nothing is pending."""
        lib = load()
        b = _bundle()
        self._call("capvault_seal_next", _cstr(recipient, "recipient"), max_bytes, ctypes.byref(b))
        if not b.value:
            return None
        try:
            n = _size()
            data = lib.capvault_bundle_data(b, ctypes.byref(n))
            bundle_id = lib.capvault_bundle_id(b)
            if not data or bundle_id is None:
                raise CapvaultError("capvault_bundle_data", ERR_BAD_BUNDLE,
                                    lib.capvault_last_error().decode(),
                                    result_str(ERR_BAD_BUNDLE))
            return Bundle(bundle_id.decode(), ctypes.string_at(data, n.value))
        finally:
            lib.capvault_bundle_free(b)

    def ack(self, bundle_id, receipt=None):
        receipt = b"" if receipt is None else bytes(receipt)
        self._call("capvault_ack", _cstr(bundle_id, "bundle id"), receipt or None, len(receipt))
