#!/usr/bin/env python3
"""A minimal capture agent using the capvault C library through ctypes.

    agent.py [--lib PATH] VAULT_DIR USER RECIPIENT OUT_DIR

The same flow as examples/c/agent.c: open the vault (keychain from
$CAPVAULT_KEYSTORE, default "auto"), append one event of every type, pause and
resume, flush, print the status, rotate the data key, seal everything pending to
RECIPIENT (bundle-1.cvb, ... in OUT_DIR), acknowledge each bundle, close.
"""
import argparse
import ctypes
import ctypes.util
import json
import os
import sys

# Result codes (include/capvault.h).
OK, PAUSED, FILTERED = 0, 100, 101


class CapvaultError(Exception):
    def __init__(self, what, code, message):
        super().__init__(f"{what} failed ({code}): {message}")
        self.code = code


def load(path=None):
    """Loads libcapvault and declares the signatures of the functions used here."""
    lib = ctypes.CDLL(path or ctypes.util.find_library("capvault") or "libcapvault.so")
    c_handle = ctypes.c_void_p
    c_bundle = ctypes.c_void_p
    res = ctypes.c_int32
    u8p = ctypes.POINTER(ctypes.c_uint8)
    sigs = {
        "capvault_version": (ctypes.c_char_p, []),
        "capvault_last_error": (ctypes.c_char_p, []),
        "capvault_open": (res, [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.POINTER(c_handle)]),
        "capvault_close": (None, [c_handle]),
        "capvault_append_mouse_move": (res, [c_handle, ctypes.c_int64, ctypes.c_int32,
                                             ctypes.c_int32]),
        "capvault_append_mouse_button": (res, [c_handle, ctypes.c_int64, ctypes.c_uint32,
                                               ctypes.c_bool, ctypes.c_int32, ctypes.c_int32]),
        "capvault_append_scroll": (res, [c_handle, ctypes.c_int64, ctypes.c_int32,
                                         ctypes.c_int32]),
        "capvault_append_key": (res, [c_handle, ctypes.c_int64, ctypes.c_uint32, ctypes.c_bool,
                                      ctypes.c_char_p]),
        "capvault_append_window_focus": (res, [c_handle, ctypes.c_int64, ctypes.c_char_p,
                                               ctypes.c_char_p]),
        "capvault_append_screenshot": (res, [c_handle, ctypes.c_int64, ctypes.c_uint32,
                                             ctypes.c_uint32, ctypes.c_char_p, ctypes.c_char_p,
                                             ctypes.c_size_t]),
        "capvault_append_custom": (res, [c_handle, ctypes.c_int64, ctypes.c_char_p,
                                         ctypes.c_char_p, ctypes.c_size_t]),
        "capvault_flush": (res, [c_handle]),
        "capvault_pause": (res, [c_handle, ctypes.c_uint32]),
        "capvault_resume": (res, [c_handle]),
        "capvault_rotate_key": (res, [c_handle]),
        # char ** out: a c_void_p so the pointer can be handed back to string_free.
        "capvault_status_json": (res, [c_handle, ctypes.POINTER(ctypes.c_void_p)]),
        "capvault_string_free": (None, [ctypes.c_void_p]),
        "capvault_seal_next": (res, [c_handle, ctypes.c_char_p, ctypes.c_size_t,
                                     ctypes.POINTER(c_bundle)]),
        "capvault_bundle_data": (u8p, [c_bundle, ctypes.POINTER(ctypes.c_size_t)]),
        "capvault_bundle_id": (ctypes.c_char_p, [c_bundle]),
        "capvault_ack": (res, [c_handle, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]),
        "capvault_bundle_free": (None, [c_bundle]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def check(lib, what, code, expected=OK):
    if code != expected:
        raise CapvaultError(what, code, lib.capvault_last_error().decode())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", help="path to libcapvault.so (default: the system library)")
    ap.add_argument("vault_dir")
    ap.add_argument("user")
    ap.add_argument("recipient")
    ap.add_argument("out_dir")
    args = ap.parse_args()

    lib = load(args.lib)
    print("capvault", lib.capvault_version().decode())
    keystore = os.environ.get("CAPVAULT_KEYSTORE") or "auto"
    # keystrokes "text" keeps typed text; the default keeps only key categories.
    options = json.dumps({"keystore": keystore, "policy": {"keystrokes": "text"}})

    v = ctypes.c_void_p()
    check(lib, "open", lib.capvault_open(args.vault_dir.encode(), args.user.encode(),
                                         options.encode(), ctypes.byref(v)))
    try:
        t = 1764000000000000  # microseconds since the Unix epoch
        check(lib, "mouse_move", lib.capvault_append_mouse_move(v, t + 1, 640, 480))
        check(lib, "mouse_button", lib.capvault_append_mouse_button(v, t + 2, 1, True, 641, 481))
        check(lib, "scroll", lib.capvault_append_scroll(v, t + 3, 0, -120))
        check(lib, "key", lib.capvault_append_key(v, t + 4, 4, True, b"a"))
        check(lib, "key", lib.capvault_append_key(v, t + 5, 4, False, None))
        check(lib, "focus", lib.capvault_append_window_focus(v, t + 6, b"editor", b"notes.txt"))
        shot = bytes((i * 7 + 3) & 0xFF for i in range(200000))
        check(lib, "screenshot",
              lib.capvault_append_screenshot(v, t + 7, 1920, 1080, b"png", shot, len(shot)))
        meta = b"\xde\xad\xbe\xef"
        check(lib, "custom", lib.capvault_append_custom(v, t + 8, b"clipboard-meta", meta,
                                                        len(meta)))

        check(lib, "pause", lib.capvault_pause(v, 60))
        check(lib, "mouse_move while paused", lib.capvault_append_mouse_move(v, t + 9, 1, 1),
              PAUSED)
        check(lib, "resume", lib.capvault_resume(v))
        check(lib, "mouse_move", lib.capvault_append_mouse_move(v, t + 10, 700, 500))
        check(lib, "flush", lib.capvault_flush(v))

        out = ctypes.c_void_p()
        check(lib, "status", lib.capvault_status_json(v, ctypes.byref(out)))
        status = json.loads(ctypes.string_at(out.value).decode())
        lib.capvault_string_free(out)
        print("status:", json.dumps(status, sort_keys=True))

        check(lib, "rotate_key", lib.capvault_rotate_key(v))

        bundles = 0
        while bundles <= 100:
            b = ctypes.c_void_p()
            check(lib, "seal_next", lib.capvault_seal_next(v, args.recipient.encode(), 1 << 20,
                                                           ctypes.byref(b)))
            if not b.value:
                break  # nothing pending
            try:
                n = ctypes.c_size_t()
                data = lib.capvault_bundle_data(b, ctypes.byref(n))
                bundle_id = lib.capvault_bundle_id(b)
                if not data or bundle_id is None:
                    raise CapvaultError("bundle accessors", -1, lib.capvault_last_error().decode())
                bundles += 1
                path = os.path.join(args.out_dir, f"bundle-{bundles}.cvb")
                with open(path, "wb") as f:
                    f.write(ctypes.string_at(data, n.value))
                print(f"bundle {bundle_id.decode()}: {n.value} bytes -> {path}")
                # Without a collector_receipt_key option, acknowledging by id is enough.
                check(lib, "ack", lib.capvault_ack(v, bundle_id, None, 0))
            finally:
                lib.capvault_bundle_free(b)
        print(f"sealed {bundles} bundle(s)")
        if bundles == 0:
            return 1
    finally:
        lib.capvault_close(v)  # flushes
    if lib.capvault_last_error():
        print("close:", lib.capvault_last_error().decode(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CapvaultError as e:
        print(f"agent.py: {e}", file=sys.stderr)
        sys.exit(1)
