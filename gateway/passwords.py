"""Password hashes for the users of our servers, so that no config holds a plain password.

Format: ``scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>``. The cost parameters travel with
the hash, so raising them later keeps old hashes verifiable. n=2**14, r=8 (16 MiB, ~50 ms) is
the common interactive-login setting: slow for a guesser, fine for a session handshake.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

N, R, P = 2**14, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
PREFIX = "scrypt"
_MAX_N = 2**20  # refuse absurd costs from a tampered config rather than exhaust memory


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=length,
        maxmem=256 * r * n + 1024 * 1024,  # 128*r*n is needed; OpenSSL's 32 MiB default is not
    )


# NIST SP 800-63B's minimum for a password a user chooses; `hash-password` refuses shorter ones.
MIN_PASSWORD = 8


def hash_password(password: str) -> str:
    """A new hash of ``password`` with a random salt."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, N, R, P, HASH_BYTES)
    b64 = base64.b64encode
    return f"{PREFIX}${N}${R}${P}${b64(salt).decode()}${b64(digest).decode()}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """``(n, r, p, salt, hash)`` of a stored hash; ValueError saying what is wrong with it."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise ValueError("not scrypt$N$r$p$salt$hash (make one with `gateway hash-password`)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        raise ValueError("N, r and p must be integers") from None
    try:
        salt = base64.b64decode(parts[4], validate=True)
        expected = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise ValueError("the salt and the hash must be base64") from None
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= 32 and 0 < p <= 16 and expected):
        raise ValueError(f"cost parameters out of range (N a power of 2 up to {_MAX_N})")
    return n, r, p, salt, expected


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (False for a malformed hash, never an error)."""
    try:
        n, r, p, salt, expected = parse_hash(stored)
        actual = _scrypt(password, salt, n, r, p, len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)
