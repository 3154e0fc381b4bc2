"""The request id rule, shared by the web (portal/observability.py) and the edge (edge/app.py).

A client's ``X-Request-ID`` is echoed in the response, written to logs and forwarded upstream,
so only a short id of letters, digits and ``._:-`` is taken; anything else is replaced by one
the server mints.
"""

import re

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def client_request_id(value: str | None) -> str | None:
    """Return the client's request id when it follows the rule, else None (mint one instead)."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return None
