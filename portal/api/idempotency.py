"""Idempotent POSTs: a replay returns the stored response; a changed body is refused.

The first request with a key inserts a row inside the request's transaction. A concurrent
duplicate blocks on that row's unique index until the first commits, then reads and
replays its result; if the first rolls back (5xx), the duplicate proceeds as new.
"""

import hashlib
import hmac
import json
import os
from datetime import timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.db import connection
from django.utils import timezone

from portal.errors import DomainError
from portal.models import IdempotencyRecord

MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(DomainError):
    status = 422
    code = "idempotency_key_reused"


def _secret() -> bytes:
    return settings.SECRET_KEY.encode()


def _lookup(credential: str, key: str) -> str:
    return hmac.new(_secret(), f"{credential}\x00{key}".encode(), hashlib.sha256).hexdigest()


def _cipher(credential: str, key: str) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"tollgate-idempotency",
        info=f"{credential}\x00{key}".encode(),
    ).derive(_secret())
    return AESGCM(derived)


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(method.encode() + b"\x00" + path.encode() + b"\x00" + body).hexdigest()


class Claim:
    """The outcome of claiming a key: either new (``record``) or a stored ``replay``."""

    def __init__(self, *, credential: str, key: str, record=None, replay=None):
        self.credential = credential
        self.key = key
        self.record = record
        self.replay = replay

    def store(self, status: int, data) -> None:
        nonce = os.urandom(12)
        payload = json.dumps(data, default=str).encode()
        body = nonce + _cipher(self.credential, self.key).encrypt(nonce, payload, None)
        IdempotencyRecord.objects.filter(pk=self.record.pk).update(response_status=status, response_body=body)


def idempotency_claim(*, credential: str, key: str, request_fingerprint: str) -> Claim:
    """Claim the key inside the caller's transaction, or return the stored replay."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise DomainError(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.", code="invalid_idempotency_key"
        )
    lookup = _lookup(credential, key)
    cutoff = timezone.now() - timedelta(hours=settings.API_IDEMPOTENCY_TTL_HOURS)
    IdempotencyRecord.objects.filter(lookup=lookup, created_at__lt=cutoff).delete()
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO portal_idempotencyrecord (lookup, fingerprint, created_at) VALUES (%s, %s, %s) "
            "ON CONFLICT (lookup) DO NOTHING RETURNING id",
            [lookup, request_fingerprint, timezone.now()],
        )
        row = cursor.fetchone()
    if row is not None:
        return Claim(credential=credential, key=key, record=IdempotencyRecord(pk=row[0]))
    existing = IdempotencyRecord.objects.get(lookup=lookup)
    if existing.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used with a different request. Use a new key for a new request."
        )
    body = bytes(existing.response_body)
    data = json.loads(_cipher(credential, key).decrypt(body[:12], body[12:], None))
    return Claim(credential=credential, key=key, replay=(existing.response_status, data))


def idempotency_purge() -> int:
    """Delete records past their retention. Return how many."""
    cutoff = timezone.now() - timedelta(hours=settings.API_IDEMPOTENCY_TTL_HOURS)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted
