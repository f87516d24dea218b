#!/usr/bin/env python3
"""A minimal capture agent using the capvault C library from Python (python/capvault.py).

    agent.py [--lib PATH] VAULT_DIR USER RECIPIENT OUT_DIR

The same flow as examples/c/agent.c: open the vault (keychain from
$CAPVAULT_KEYSTORE, default "auto"), append one event of every type, pause and
resume, flush, print the status, rotate the data key, seal everything pending to
RECIPIENT (bundle-1.cvb, ... in OUT_DIR), acknowledge each bundle, close.
"""
import argparse
import json
import os
import sys

# The module lives in the repository's python/ directory (or anywhere on sys.path).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import capvault  # noqa: E402


def expect(what, got, want):
    if got != want:
        raise SystemExit(f"agent.py: {what} returned {got} ({capvault.result_str(got)}), "
                         f"expected {want}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", help="path to libcapvault.so (default: the system library)")
    ap.add_argument("vault_dir")
    ap.add_argument("user")
    ap.add_argument("recipient")
    ap.add_argument("out_dir")
    args = ap.parse_args()

    capvault.load(args.lib)
    print("capvault", capvault.version())
    keystore = os.environ.get("CAPVAULT_KEYSTORE") or "auto"
    # keystrokes "text" keeps typed text; the default keeps only key categories.
    options = {"keystore": keystore, "policy": {"keystrokes": "text"}}

    bundles = 0
    with capvault.Vault.open(args.vault_dir, args.user, options) as v:
        t = 1764000000000000  # microseconds since the Unix epoch
        v.append_mouse_move(t + 1, 640, 480)
        v.append_mouse_button(t + 2, 1, True, 641, 481)
        v.append_scroll(t + 3, 0, -120)
        v.append_key(t + 4, 4, True, "a")
        v.append_key(t + 5, 4, False)
        v.append_window_focus(t + 6, "editor", "notes.txt")
        v.append_screenshot(t + 7, 1920, 1080, "png", bytes((i * 7 + 3) & 0xFF
                                                            for i in range(200000)))
        v.append_custom(t + 8, "clipboard-meta", b"\xde\xad\xbe\xef")

        # While paused, events are dropped (and counted), not stored: not an error.
        v.pause(60)
        expect("append while paused", v.append_mouse_move(t + 9, 1, 1), capvault.PAUSED)
        v.resume()
        expect("append", v.append_mouse_move(t + 10, 700, 500), capvault.OK)
        v.flush()

        print("status:", json.dumps(v.status(), sort_keys=True))
        v.rotate_key()

        while bundles <= 100:
            bundle = v.seal_next(args.recipient, 1 << 20)
            if bundle is None:
                break  # nothing pending
            bundles += 1
            path = os.path.join(args.out_dir, f"bundle-{bundles}.cvb")
            with open(path, "wb") as f:
                f.write(bundle.data)
            print(f"bundle {bundle.id}: {len(bundle.data)} bytes -> {path}")
            # Without a collector_receipt_key option, acknowledging by id is enough.
            v.ack(bundle.id)
    print(f"sealed {bundles} bundle(s)")
    return 0 if bundles else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except capvault.CapvaultError as e:
        print(f"agent.py: {e}", file=sys.stderr)
        sys.exit(1)
