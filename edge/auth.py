"""Who is calling: the key's shape, its record (cached, else read from Redis), its standing.

A record read from Redis is cached for ``auth_cache.ttl_seconds``; an unknown key is cached
apart, so that a flood of invented keys cannot push valid ones out. When Redis cannot be
reached, or has lost its data and the portal is rebuilding it, a key this process knew keeps
working from its last record for ``auth_cache.stale_seconds``; anything else is answered
503 with ``Retry-After``, never 401: the key may well be valid.
"""

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from edge import keyformat, metrics
from edge.config import EdgeConfig
from edge.errors import EdgeError, invalid_key, service_unavailable
from edge.records import KEY_PREFIX, KeyRecord, RecordError, address_in, parse_key_record
from edge.resp import RespError, unreachable
from edge.store import DataPlane

logger = logging.getLogger("tollgate.edge")


@dataclass(slots=True)
class CacheEntry:
    record: KeyRecord | None
    at: float


class AuthCache:
    """A bounded LRU of key records, dropped on invalidation."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[str, CacheEntry] = OrderedDict()

    def get(self, secret_hash: str) -> CacheEntry | None:
        entry = self._data.get(secret_hash)
        if entry is not None:
            self._data.move_to_end(secret_hash)
        return entry

    def put(self, secret_hash: str, record: KeyRecord | None) -> None:
        self._data[secret_hash] = CacheEntry(record, time.monotonic())
        self._data.move_to_end(secret_hash)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def drop(self, hashes) -> None:
        for secret_hash in hashes:
            self._data.pop(secret_hash, None)

    def expire(self, ttl: float) -> None:
        """Make every entry older than ``ttl``: each is read again before it is trusted, and
        stays a stale fallback meanwhile (for a Redis that comes back without it)."""
        oldest = time.monotonic() - ttl
        for entry in self._data.values():
            entry.at = min(entry.at, oldest)


class Authenticator:
    def __init__(self, config: EdgeConfig, data_plane: DataPlane):
        self.config = config
        self.data_plane = data_plane
        self.known = AuthCache(config.auth_cache_size)
        self.unknown = AuthCache(max(config.auth_cache_size // 10, 1000))

    def drop(self, hashes) -> None:
        self.known.drop(hashes)
        self.unknown.drop(hashes)

    def expire(self) -> None:
        """Invalidations may have been missed: read every key again before trusting it."""
        self.known.expire(self.config.auth_cache_ttl)
        self.unknown.expire(self.config.auth_cache_ttl)

    async def authenticate(self, scope) -> KeyRecord:
        """Return the caller's key record, or raise the EdgeError to answer."""
        token = bearer(scope)
        if token is None:
            raise EdgeError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        if not keyformat.is_well_formed(token):
            raise invalid_key(
                "Incorrect API key provided: it is not a Tollgate key (tg_live_… or tg_test_…)."
            )
        record = await self._record(keyformat.key_hash(token, self.config.pepper))
        if record is None:
            raise invalid_key()
        _check_standing(record)
        client_ip = self.client_ip(scope)
        if not record.allows_ip(client_ip):
            raise EdgeError(
                403,
                f"Requests from {client_ip} are not allowed for this API key.",
                type="permission_error",
                code="ip_not_allowed",
            )
        return record

    async def _record(self, secret_hash: str) -> KeyRecord | None:
        now = time.monotonic()
        entry = self.known.get(secret_hash)
        if entry is not None and now - entry.at < self.config.auth_cache_ttl:
            metrics.AUTH_CACHE_HIT.inc()
            return entry.record
        if entry is None:
            negative = self.unknown.get(secret_hash)
            if negative is not None and now - negative.at < self.config.auth_cache_ttl:
                metrics.AUTH_CACHE_HIT.inc()
                return None
        try:
            raw, synced = await self.data_plane.read(KEY_PREFIX + secret_hash)
        except (OSError, RespError) as exc:
            if entry is not None and now - entry.at < self.config.stale_auth_seconds:
                metrics.AUTH_CACHE.labels("stale").inc()
                return entry.record
            if not unreachable(exc):
                logger.error("key look-up failed: %s", exc)
            raise service_unavailable("The key store is unreachable; retry shortly.") from None
        metrics.AUTH_CACHE.labels("miss").inc()
        if raw is None and not synced:
            # Redis lost its data and the portal is writing it back: this key may be valid.
            if entry is not None and now - entry.at < self.config.stale_auth_seconds:
                metrics.AUTH_CACHE.labels("stale").inc()
                return entry.record
            raise service_unavailable("The key store is being restored; retry shortly.")
        if raw is None:
            self.known.drop((secret_hash,))
            self.unknown.put(secret_hash, None)
            return None
        try:
            record = parse_key_record(raw)
        except RecordError:
            logger.exception("unreadable key record")
            return None
        self.unknown.drop((secret_hash,))
        self.known.put(secret_hash, record)
        return record

    def client_ip(self, scope) -> str | None:
        client = scope.get("client")
        peer = client[0] if client else None
        trusted = self.config.trusted_proxies
        if not trusted:
            return peer
        forwarded = [value for key, value in scope["headers"] if key == b"x-forwarded-for"]
        return client_address(peer, b",".join(forwarded).decode("latin-1"), trusted)


def client_address(peer: str | None, forwarded: str, trusted) -> str | None:
    """Return the client's address: the peer's, unless the peer is a trusted proxy.

    Behind trusted proxies, walk ``X-Forwarded-For`` from the right (each proxy appends the
    address it saw) and take the first entry that is not itself a trusted proxy; anything left
    of it was written by the client and proves nothing. An entry that is not an address stops
    the walk and is the answer, so that it fails every allow-list. If all are trusted, the
    leftmost; empty entries are skipped, and with none left the peer is the client. The rule
    of uvicorn's ProxyHeadersMiddleware and Werkzeug's ProxyFix.
    """
    if not address_in(peer, trusted):
        return peer
    entries = [entry for entry in (part.strip() for part in forwarded.split(",")) if entry]
    if not entries:
        return peer
    for entry in reversed(entries):
        if not address_in(entry, trusted):
            return entry
    return entries[0]


def _check_standing(record: KeyRecord) -> None:
    reason = record.refusal()
    if reason == "revoked":
        raise invalid_key("This API key has been revoked.")
    if reason == "expired":
        raise invalid_key("This API key has expired.")
    if reason == "rotated":
        raise invalid_key(
            "This API key secret was rotated and its grace period has ended. Use the new secret."
        )
    if reason == "suspended":
        raise EdgeError(
            402,
            "Your organization is suspended. Settle the outstanding balance in the Tollgate console to resume.",
            type="insufficient_quota",
            code="organization_suspended",
        )


def header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def bearer(scope) -> str | None:
    authorization = header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return ""
    api_key = header(scope, b"x-api-key")
    return api_key.strip() if api_key else None
