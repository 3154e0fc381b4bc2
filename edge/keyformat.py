"""The Tollgate API key format, shared by the portal (minting) and the edge (checking).

A key reads ``tg_<env>_<32 random base62><6 base62 checksum>``, e.g.
``tg_live_7Qx...``. The checksum is CRC32 over everything before it, so a typo or a
truncated key is refused without a lookup, and secret scanners can match
``tg_(live|test)_[0-9A-Za-z]{38}`` with few false positives.

Only an HMAC-SHA256 of the key under a server-side pepper is ever stored; the portal and
the edge compute the same hash to find a key's record.
"""

import hashlib
import hmac
import re
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
ENVIRONMENTS = ("live", "test")
PATTERN = re.compile(r"^tg_(live|test)_([0-9A-Za-z]{32})([0-9A-Za-z]{6})$")


def _base62(number: int, length: int) -> str:
    chars = []
    for _ in range(length):
        number, index = divmod(number, 62)
        chars.append(ALPHABET[index])
    return "".join(reversed(chars))


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def generate(environment: str) -> str:
    """Mint a new key for ``live`` or ``test``."""
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment must be one of {ENVIRONMENTS}")
    body = f"tg_{environment}_" + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH))
    return body + checksum(body)


def is_well_formed(key: str) -> bool:
    """Check shape and checksum, without any lookup."""
    match = PATTERN.match(key)
    if match is None:
        return False
    return hmac.compare_digest(checksum(key[:-CHECKSUM_LENGTH]), match.group(3))


def key_hash(key: str, pepper: bytes) -> str:
    """Return the hex HMAC-SHA256 of a key under the pepper: the only stored form."""
    return hmac.new(pepper, key.encode("ascii"), hashlib.sha256).hexdigest()


def display_parts(key: str) -> tuple[str, str]:
    """Return the display prefix (``tg_live_AbCd``) and the last four characters."""
    return key[: len("tg_live_") + 4], key[-4:]
