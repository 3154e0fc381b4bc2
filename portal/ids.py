"""Public identifiers: a prefix and a time-ordered, URL-safe body (ULID layout)."""

import secrets

from django.utils import timezone

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def public_id(prefix: str) -> str:
    """Return ``<prefix>_`` + 26 characters: 48 bits of milliseconds then 80 random bits.

    Identifiers sort by creation time, as strings and in indexes.
    """
    value = (int(timezone.now().timestamp() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(_CROCKFORD[index])
    return f"{prefix}_{''.join(reversed(chars))}"
