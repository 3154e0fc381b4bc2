"""Who is calling: the key's shape, its record (cached, else read from Redis), its standing.

A record read from Redis is cached for ``auth_cache.ttl_seconds``; an unknown key is cached
apart, so that a flood of invented keys cannot push valid ones out. When Redis cannot be
reached, or has lost its data and the portal is rebuilding it, a key this process knew keeps
working from its last record for ``auth_cache.stale_seconds``; anything else is answered
503 with ``Retry-After``, never 401: the key may well be valid.

A key this process does not know costs a Redis look-up, so those look-ups are rationed per
client address (``unknown_keys``): a token bucket that a look-up takes from and a key found
gives back. An address that keeps presenting keys nobody issued is answered 429 without a
look-up once its bucket is empty; keys this process knows are never held back.
"""

import asyncio
import logging
import math
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


class LookupThrottle:
    """Token buckets per client address, in a bounded LRU: look-ups of keys this process does
    not know, ``burst`` at once, then ``per_second``.

    The least recently seen address is forgotten first; forgotten, it starts again with a full
    bucket, so the memory stays bounded whatever the number of addresses.
    """

    def __init__(self, burst: int, per_second: float, size: int):
        self.burst = burst
        self.per_second = per_second
        self.size = size
        # address -> [tokens, when they were counted]
        self._buckets: OrderedDict[str | None, list[float]] = OrderedDict()

    def take(self, address: str | None, now: float) -> float:
        """Take a token for ``address``; return 0, or the seconds until one is there."""
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = [float(self.burst), now]
            if len(self._buckets) > self.size:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.per_second)
            bucket[1] = now
        if bucket[0] < 1:
            return (1 - bucket[0]) / self.per_second
        bucket[0] -= 1
        return 0.0

    def give_back(self, address: str | None) -> None:
        """The look-up found a key: it does not count against the address."""
        bucket = self._buckets.get(address)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + 1)

    def __len__(self) -> int:
        return len(self._buckets)


class Authenticator:
    def __init__(self, config: EdgeConfig, data_plane: DataPlane):
        self.config = config
        self.data_plane = data_plane
        self.known = AuthCache(config.auth_cache_size)
        self.unknown = AuthCache(max(config.auth_cache_size // 10, 1000))
        self.throttle = LookupThrottle(
            config.unknown_key_burst, config.unknown_key_per_second, config.unknown_key_addresses
        )
        # Look-ups of keys this process has never seen, by hash, while they run.
        self._pending: dict[str, asyncio.Future] = {}

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
        client_ip = self.client_ip(scope)
        record = await self._record(keyformat.key_hash(token, self.config.pepper), client_ip)
        if record is None:
            raise invalid_key()
        try:
            _check_standing(record)
            if not record.allows_ip(client_ip):
                raise EdgeError(
                    403,
                    f"Requests from {client_ip} are not allowed for this API key.",
                    type="permission_error",
                    code="ip_not_allowed",
                    refusal="ip_not_allowed",
                )
        except EdgeError as error:
            error.record = record  # a known key: the caller meters the refusal
            raise
        return record

    async def _record(self, secret_hash: str, client_ip: str | None) -> KeyRecord | None:
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
            pending = self._pending.get(secret_hash)
            if pending is not None:
                # A burst of one new key: one look-up, one token, whoever else asks waits for it.
                return await asyncio.shield(pending)
            # Taken before the look-up, so that a burst of concurrent requests is rationed too.
            wait = self.throttle.take(client_ip, now)
            if wait:
                metrics.UNKNOWN_KEY_THROTTLED.inc()
                raise _throttled(wait)
            pending = self._pending[secret_hash] = asyncio.ensure_future(
                self._look_up(secret_hash, entry, now)
            )
            pending.add_done_callback(lambda _done: self._pending.pop(secret_hash, None))
            record = await asyncio.shield(pending)
            if record is not None:
                self.throttle.give_back(client_ip)
            return record
        return await self._look_up(secret_hash, entry, now)

    async def _look_up(self, secret_hash: str, entry: CacheEntry | None, now: float) -> KeyRecord | None:
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


def _throttled(wait: float) -> EdgeError:
    retry_after = str(max(1, math.ceil(wait)))
    return EdgeError(
        429,
        "Too many requests with unknown API keys from this address. "
        f"Check the key and retry after {retry_after}s.",
        type="requests",
        code="rate_limit_exceeded",
        headers=[(b"retry-after", retry_after.encode())],
    )


def _check_standing(record: KeyRecord) -> None:
    reason = record.refusal()
    if reason == "revoked":
        raise invalid_key("This API key has been revoked.", refusal="key_revoked")
    if reason == "expired":
        raise invalid_key("This API key has expired.", refusal="key_expired")
    if reason == "rotated":
        raise invalid_key(
            "This API key secret was rotated and its grace period has ended. Use the new secret.",
            refusal="secret_rotated",
        )
    if reason == "suspended":
        raise EdgeError(
            402,
            "Your organization is suspended. Settle the outstanding balance in the Tollgate console to resume.",
            type="insufficient_quota",
            code="organization_suspended",
            refusal="organization_suspended",
        )
    if reason == "billing_suspended":
        where = f" at {record.org_billing_url}" if record.org_billing_url else " in the Tollgate console"
        raise EdgeError(
            402,
            "Your organization is suspended for unpaid invoices. "
            f"Pay them on the Billing page{where} and requests resume within a second.",
            type="insufficient_quota",
            code="billing_suspended",
            refusal="billing_suspended",
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
