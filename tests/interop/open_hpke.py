#!/usr/bin/env python3
"""Opens the HPKE layer of a capvault X25519 bundle with pyhpke, an independent
RFC 9180 implementation, using only docs/FORMAT.md ("Bundles", "Text key encodings").

usage: open_hpke.py BUNDLE_FILE IDENTITY_TEXT
       (BUNDLE_FILE may be a test vector: its header up to the first empty line is skipped)
prints: "payload_sha256 <hex>" and "payload_len <n>"; exits 1 on any failure.
"""
import base64
import hashlib
import struct
import sys

try:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey
except ImportError as e:  # the Rust driver turns this into a failing test
    print(f"pyhpke is not importable ({e}); run: pip install pyhpke", file=sys.stderr)
    sys.exit(2)

# Per format version: HPKE info, recipient-check context, header length before the
# purpose string (docs/FORMAT.md, "Bundles").
VERSIONS = {
    1: (b"capvault bundle v1", b"capvault bundle recipient check v1", 154),
    2: (b"capvault bundle v2", b"capvault bundle recipient check v2", 178),
}
IDENTITY_PREFIX = "CVSECRET-X25519-1"


def identity_secret(text: str) -> bytes:
    text = text.strip()
    assert text.startswith(IDENTITY_PREFIX), "not an X25519 identity"
    body = text[len(IDENTITY_PREFIX):]
    raw = base64.b32decode(body + "=" * (-len(body) % 8))
    payload, checksum = raw[:-4], raw[-4:]
    assert hashlib.sha256(IDENTITY_PREFIX.encode() + payload).digest()[:4] == checksum, "checksum"
    assert len(payload) == 64
    return payload[:32]  # the X25519 private key; the rest is the receipt seed


def parse(bundle: bytes):
    assert bundle[:8] == b"CVBUNDLE", "magic"
    version, kem, kdf, aead = struct.unpack(">HHHH", bundle[8:16])
    assert version in VERSIONS and (kem, kdf, aead) == (0x0020, 0x0001, 0x0003), "suite"
    fixed = VERSIONS[version][2]
    (purpose_len,) = struct.unpack(">H", bundle[fixed - 2:fixed])
    pos = fixed + purpose_len
    header = bundle[:pos]
    (enc_len,) = struct.unpack(">H", bundle[pos:pos + 2])
    pos += 2
    enc = bundle[pos:pos + enc_len]
    pos += enc_len
    rcheck = bundle[pos:pos + 16]
    pos += 16
    (ct_len,) = struct.unpack(">Q", bundle[pos:pos + 8])
    pos += 8
    ct = bundle[pos:pos + ct_len]
    pos += ct_len
    assert len(bundle) == pos + 64, "length"
    return version, header, enc, rcheck, ct


def main() -> int:
    data = open(sys.argv[1], "rb").read()
    if data.startswith(b"capvault bundle test vector\n"):
        data = data[data.index(b"\n\n") + 2:]
    version, header, enc, rcheck, ct = parse(data)
    info, rcheck_context, _ = VERSIONS[version]
    sk = KEMKey.from_pyca_cryptography_key(
        X25519PrivateKey.from_private_bytes(identity_secret(sys.argv[2])))
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256,
                            AEADId.CHACHA20_POLY1305)
    ctx = suite.create_recipient_context(enc, sk, info=info)
    if ctx.export(rcheck_context, 16) != rcheck:
        print("recipient check differs: not sealed to this identity", file=sys.stderr)
        return 1
    payload = ctx.open(ct, aad=header)
    print("payload_sha256", hashlib.sha256(payload).hexdigest())
    print("payload_len", len(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
