"""Password and client-secret hashes: scrypt (RFC 7914) from the standard library, a random salt per hash.

Stored as ``scrypt$<n>$<r>$<p>$<salt, base64>$<key, base64>`` so the cost can be raised later without
invalidating the hashes already stored.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

#: scrypt cost: N=2^14, r=8, p=1 (16 MiB, tens of milliseconds) — the parameters RFC 7914 §2 suggests for
#: interactive logins.
_N, _R, _P = 1 << 14, 8, 1
_DKLEN = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_DKLEN,
                          maxmem=128 * r * n * p * 2)


def hash_secret(secret: str) -> str:
    """A salted scrypt hash of ``secret`` in the stored form."""
    salt = secrets.token_bytes(16)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(_derive(secret, salt, _N, _R, _P))}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when ``secret`` hashes to ``stored`` (compared in constant time); False for a malformed hash."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = _derive(secret, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(derived, base64.b64decode(key))
    except (ValueError, TypeError):
        return False


@functools.cache
def dummy_hash() -> str:
    """A hash to check against when the user does not exist, so that an unknown name takes as long as a
    wrong password."""
    return hash_secret(secrets.token_urlsafe(16))


def token_hash(value: str) -> str:
    """SHA-256 (hex) of a high-entropy value we hand out (a code, a refresh token, a session id): the form
    it is stored and looked up in."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()
