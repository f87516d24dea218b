#!/usr/bin/env python3
"""Builds a capvault version 2 bundle from scratch, as an attacker who never touches the
device can: with pyhpke (an independent RFC 9180 implementation), an Ed25519 key of the
attacker's own, the collector's public recipient and a device id, all from
docs/FORMAT.md alone. Used by the test suite to check that collectors refuse such
bundles (SPEC R10).

usage: forge_bundle.py OUT RECIPIENT DEVICE_ID_HEX STREAM_ID_HEX SEQ PREV_DIGEST_HEX
                       FIRST_RECORD USER N_EVENTS [ATTACKER_SEED_HEX]
writes OUT (the bundle) and prints "id <bundle id>" and "digest <hex>"; exits 2 when
pyhpke is missing, 1 on any other failure.
"""
import base64
import hashlib
import os
import struct
import sys

try:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey
except ImportError as e:
    print(f"pyhpke is not importable ({e}); run: pip install pyhpke", file=sys.stderr)
    sys.exit(2)

RECIPIENT_PREFIX = "cvrecip-x25519-1"
INFO = b"capvault bundle v2"
RCHECK_CONTEXT = b"capvault bundle recipient check v2"
SIG_CONTEXT = b"capvault bundle signature v2\0"
PURPOSE = b"activity-capture"


def recipient_key(text: str) -> bytes:
    assert text.startswith(RECIPIENT_PREFIX), "not an X25519 recipient"
    body = text[len(RECIPIENT_PREFIX):].upper()
    raw = base64.b32decode(body + "=" * (-len(body) % 8))
    payload, checksum = raw[:-4], raw[-4:]
    assert hashlib.sha256(RECIPIENT_PREFIX.encode() + payload).digest()[:4] == checksum
    assert len(payload) == 32
    return payload


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n: int) -> bytes:
    return varint((n << 1) ^ (n >> 63))


def payload(user: str, first_seq: int, n: int, ts0: int) -> bytes:
    """postcard(BundlePayload { user, events: n mouse moves, audit: [] })."""
    out = bytearray(varint(len(user.encode())) + user.encode())
    out += varint(n)
    for i in range(n):
        out += varint(first_seq + i)  # SeqEvent.seq
        out += varint(0)  # Event::MouseMove
        out += zigzag(ts0 + i) + zigzag(6666) + zigzag(7777 + i)
    out += varint(0)  # no audit entries
    return bytes(out)


def main() -> int:
    (out, recip, device_id, stream_id, seq, prev, first_record, user, n) = sys.argv[1:10]
    seed = bytes.fromhex(sys.argv[10]) if len(sys.argv) > 10 else os.urandom(32)
    seq, first_record, n = int(seq), int(first_record), int(n)
    attacker = Ed25519PrivateKey.from_private_bytes(seed)
    device_key = attacker.public_key().public_bytes_raw()
    ts0 = 1_764_000_000_000_000
    header = b"CVBUNDLE" + struct.pack(">HHHH", 2, 0x0020, 0x0001, 0x0003)
    header += bytes.fromhex(device_id) + device_key + bytes.fromhex(stream_id)
    header += struct.pack(">QQQQ", seq, first_record, first_record, 0)
    header += struct.pack(">QQQ", 1, n, n)  # event range 1..n, n events
    header += bytes.fromhex(prev) + struct.pack(">q", ts0)
    header += struct.pack(">H", len(PURPOSE)) + PURPOSE
    assert len(header) == 178 + len(PURPOSE)
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256,
                            AEADId.CHACHA20_POLY1305)
    pk = KEMKey.from_pyca_cryptography_key(
        X25519PublicKey.from_public_bytes(recipient_key(recip)))
    enc, ctx = suite.create_sender_context(pk, info=INFO)
    rcheck = ctx.export(RCHECK_CONTEXT, 16)
    ct = ctx.seal(payload(user, 1, n, ts0), aad=header)
    body = header + struct.pack(">H", len(enc)) + enc + rcheck + struct.pack(">Q", len(ct)) + ct
    sig = attacker.sign(SIG_CONTEXT + hashlib.sha256(body).digest())
    bundle = body + sig
    open(out, "wb").write(bundle)
    digest = hashlib.sha256(bundle).digest()
    bid = "cvb1" + base64.b32encode(digest[:20]).decode().lower().rstrip("=")
    print("id", bid)
    print("digest", digest.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
