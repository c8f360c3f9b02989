"""X25519 (RFC 7748) in pure Python, for onion client-authorization key pairs only.

Internal and unstable. CPCP's venv has no ``cryptography`` package, stem's helpers for these
keys need it, and tor has no command that prints a client key pair; this is the RFC's
Montgomery ladder, checked against the RFC's test vectors (tests/test_onion.py) and against tor
itself (tests/test_tor_e2e.py). It runs once per officer workstation on the admin's machine:
Python integers are not constant-time, so it must never serve a network peer.
"""

from __future__ import annotations

_P = 2**255 - 19
_A24 = 121665
BASE_POINT = (9).to_bytes(32, "little")


def clamp(scalar: bytes) -> bytes:
    """The RFC's decodeScalar25519 bit-fixing, as bytes (what tor stores is already clamped)."""
    if len(scalar) != 32:
        raise ValueError("an X25519 scalar has 32 bytes")
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return bytes(k)


def x25519(scalar: bytes, u: bytes) -> bytes:
    """X25519(scalar, u): the u-coordinate of scalar * u, both little-endian 32 bytes."""
    if len(u) != 32:
        raise ValueError("an X25519 u-coordinate has 32 bytes")
    k = int.from_bytes(clamp(scalar), "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3 = 1, 0, x1, 1
    swap = 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a = (x2 + z2) % _P
        aa = a * a % _P
        b = (x2 - z2) % _P
        bb = b * b % _P
        e = (aa - bb) % _P
        c = (x3 + z3) % _P
        d = (x3 - z3) % _P
        da = d * a % _P
        cb = c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key."""
    return x25519(private, BASE_POINT)
