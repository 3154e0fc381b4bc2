"""One-time secrets on the console: stashed by the POST that mints them, read once by the GET after.

A form that creates a secret (a new or rotated API key, a service account's client secret)
redirects after success; the page it redirects to takes the secret out of the stash and
shows it. A reload finds the stash empty: the action is not repeated and the secret is not
shown again.

The stash is the cache (Redis), for ``REVEAL_TTL``. That Redis may be shared with the edge
and is persisted to disk, so the entry is encrypted, and both its key and its name are
derived from SECRET_KEY together with what only the browser that made the secret holds: its
session key and the random id in the redirect URL. The entry is also bound to the
organization and the object the page is about. Neither the session, the URL nor a log line
holds the secret.
"""

import base64
import json
import secrets
from datetime import timedelta

from cryptography.fernet import Fernet
from django.core.cache import cache
from django.http import HttpRequest
from django.utils.crypto import salted_hmac

from portal.models import Organization

REVEAL_TTL = timedelta(minutes=10)
_SALT = "portal.reveal"


def _entry(*, session_key: str, organization: Organization, page: str, object_id: str, reveal_id: str):
    """Return the cache name and the cipher of one stash entry."""
    binding = "\x00".join([session_key, str(organization.pk), page, object_id, reveal_id])
    name = salted_hmac(f"{_SALT}.name", binding, algorithm="sha256").hexdigest()
    key = salted_hmac(f"{_SALT}.key", binding, algorithm="sha256").digest()
    return f"reveal:{name}", Fernet(base64.urlsafe_b64encode(key))


def reveal_stash(
    *, request: HttpRequest, organization: Organization, page: str, object_id: str, payload: dict
) -> str:
    """Keep ``payload`` for one read by this session on ``page``; return the id for its URL."""
    if request.session.session_key is None:
        request.session.save()
    reveal_id = secrets.token_urlsafe(16)
    name, cipher = _entry(
        session_key=request.session.session_key,
        organization=organization,
        page=page,
        object_id=object_id,
        reveal_id=reveal_id,
    )
    cache.set(name, cipher.encrypt(json.dumps(payload).encode()), timeout=int(REVEAL_TTL.total_seconds()))
    return reveal_id


def reveal_take(
    *, request: HttpRequest, organization: Organization, page: str, object_id: str, reveal_id: str
) -> dict | None:
    """Return the stashed payload and forget it.

    None once it was read, after ``REVEAL_TTL``, or for any other session, organization or
    object: another browser that learns the URL neither sees the secret nor uses it up.
    """
    if request.session.session_key is None:
        return None
    name, cipher = _entry(
        session_key=request.session.session_key,
        organization=organization,
        page=page,
        object_id=object_id,
        reveal_id=reveal_id,
    )
    token = cache.get(name)
    # Of two reads racing (a double-clicked link), only the one whose delete removed the
    # entry shows the secret.
    if token is None or not cache.delete(name):
        return None
    return json.loads(cipher.decrypt(token))
