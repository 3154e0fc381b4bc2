"""Write key records to Redis for the edge, and keep Redis in step with Postgres."""

import json
import logging
from functools import cache

import redis
from django.conf import settings
from django.db import transaction
from redis.cluster import RedisCluster

from keys import edge_record

logger = logging.getLogger(__name__)
BATCH = 500
RESYNC_LOCK = "tg:resync:lock"
RESYNC_LOCK_MS = 60_000
# Delete the lock only while it is still the caller's: a resync slower than the lock's life
# must not release the lock of the one that took over.
_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def edge_redis_connect(**options) -> redis.Redis | RedisCluster:
    """Open a new client on the edge's data plane: one Redis, or a Redis Cluster
    (``EDGE_REDIS_CLUSTER``, whose nodes are discovered from the one ``EDGE_REDIS_URL`` names)."""
    url = settings.EDGE_REDIS_URL or settings.REDIS_URL
    if settings.EDGE_REDIS_CLUSTER:
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


@cache
def _client(url: str, cluster: bool) -> redis.Redis | RedisCluster:
    # The arguments key the cache: a process whose settings change gets a client of the new ones.
    return edge_redis_connect(socket_timeout=5, socket_connect_timeout=5)


def edge_redis() -> redis.Redis | RedisCluster:
    """The process's shared client on the edge's data plane (thread-safe, pooled)."""
    return _client(settings.EDGE_REDIS_URL or settings.REDIS_URL, settings.EDGE_REDIS_CLUSTER)


def _mget(client: redis.Redis | RedisCluster, names: list[bytes]) -> list[bytes | None]:
    """MGET, split by slot on a cluster (the records of one batch live on every master)."""
    if isinstance(client, RedisCluster):
        return client.mget_nonatomic(names)
    return client.mget(names)


def _write(pipe, key, secret, now) -> str:
    name = edge_record.redis_key(secret.secret_hash)
    if edge_record.is_gone(key, secret, now):
        pipe.delete(name)
    else:
        pipe.set(name, json.dumps(edge_record.key_record(key, secret), separators=(",", ":")))
        expiry = edge_record.record_expiry(key, secret)
        if expiry is not None:
            # Relative to our clock: Redis's may differ, and is_gone above judged by ours.
            pipe.expire(name, max(expiry - int(now.timestamp()), 1))
    return secret.secret_hash


def keys_publish(key_ids: list[int]) -> int:
    """Rewrite the records of these keys' secrets and tell every edge process. Return count."""
    from django.utils import timezone

    from keys.models import ApiKey

    now = timezone.now()
    published = 0
    client = edge_redis()
    for start in range(0, len(key_ids), BATCH):
        keys = (
            ApiKey.unscoped.filter(pk__in=key_ids[start : start + BATCH])
            .select_related("organization")
            .prefetch_related("secrets")
        )
        hashes = []
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                for secret in key.secrets.all():
                    hashes.append(_write(pipe, key, secret, now))
            pipe.execute()
        # After the records are written (a cluster pipeline cannot carry PUBLISH): an edge that
        # drops its entry reads the new record. PUBLISH reaches every node of a cluster.
        if hashes:
            client.publish(edge_record.INVALIDATE_CHANNEL, json.dumps({"v": 1, "hashes": hashes}))
        published += len(hashes)
    return published


def key_publish_on_commit(key_id: int) -> None:
    """Publish after the surrounding transaction commits; on failure the reconcile job repairs."""

    def publish():
        try:
            keys_publish([key_id])
        except redis.RedisError:
            logger.exception("key publication failed; reconcile will repair", extra={"key_id": key_id})
            from keys.tasks import publish_keys

            publish_keys.apply_async(args=[[key_id]], countdown=5)

    transaction.on_commit(publish)


def organization_publish(organization_id: int) -> int:
    from keys.models import ApiKey

    ids = list(ApiKey.unscoped.filter(organization_id=organization_id).values_list("pk", flat=True))
    return keys_publish(ids)


def edge_sync() -> int:
    """Rebuild every record from Postgres, then drop records Postgres does not know."""
    from keys.models import ApiKey

    ids = list(ApiKey.unscoped.order_by("pk").values_list("pk", flat=True))
    written = keys_publish(ids)
    edge_reconcile()
    return written


def edge_resync() -> tuple[int, int]:
    """Rebuild every key record and price from Postgres, then write the synced marker.

    Return the number of key records and of prices written.
    """
    from billing.edge_prices import prices_publish

    written = edge_sync()
    prices = prices_publish()
    from django.utils import timezone

    marker = json.dumps({"v": 1, "at": int(timezone.now().timestamp())}, separators=(",", ":"))
    edge_redis().set(edge_record.SYNCED_KEY, marker)
    return written, prices


def edge_resync_if_missing(*, owner: str) -> bool:
    """Run ``edge_resync`` if the synced marker is gone and no one else is; return whether it ran.

    Cheap when the marker exists (one EXISTS), so every consumer replica can ask each second.
    """
    client = edge_redis()
    if client.exists(edge_record.SYNCED_KEY):
        return False
    if not client.set(RESYNC_LOCK, owner, nx=True, px=RESYNC_LOCK_MS):
        return False
    try:
        # Another replica may have finished between our EXISTS and our lock.
        if client.exists(edge_record.SYNCED_KEY):
            return False
        edge_resync()
        return True
    finally:
        client.eval(_RELEASE_LOCK, 1, RESYNC_LOCK, owner)


def _decoded(stored: bytes | None) -> dict | None:
    """Parse a stored record; a missing or corrupt one reads as None, so it gets rewritten."""
    if stored is None:
        return None
    try:
        return json.loads(stored)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        return None


def edge_reconcile() -> dict:
    """Compare Redis with Postgres in batches: delete unknown records, repair drifted ones."""
    from django.utils import timezone

    from keys.models import ApiKeySecret

    client = edge_redis()
    now = timezone.now()
    removed = repaired = checked = 0
    batch: list[bytes] = []

    def flush(names: list[bytes]):
        nonlocal removed, repaired, checked
        hashes = [name.decode()[len(edge_record.KEY_PREFIX) :] for name in names]
        secrets = {
            secret.secret_hash: secret
            for secret in ApiKeySecret.objects.filter(secret_hash__in=hashes).select_related(
                "key__organization"
            )
        }
        current = _mget(client, names)
        stale, drifted = [], []
        for name, secret_hash, stored in zip(names, hashes, current, strict=True):
            checked += 1
            secret = secrets.get(secret_hash)
            if secret is None or edge_record.is_gone(secret.key, secret, now):
                stale.append(name)
                continue
            if _decoded(stored) != edge_record.key_record(secret.key, secret):
                drifted.append(secret.key_id)
        if stale:
            client.delete(*stale)
            removed += len(stale)
        if drifted:
            keys_publish(sorted(set(drifted)))
            repaired += len(drifted)

    for name in client.scan_iter(match=edge_record.KEY_PREFIX + "*", count=BATCH):
        batch.append(name)
        if len(batch) >= BATCH:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    restored = _restore_missing(client, now)
    return {"checked": checked, "removed": removed, "repaired": repaired, "restored": restored}


def _restore_missing(client, now) -> int:
    """Republish keys whose live secret has no record at all (a publication that was lost)."""
    from keys.models import ApiKeySecret

    missing: set[int] = set()
    secrets = ApiKeySecret.objects.live(now).filter(key__revoked_at=None).values_list("secret_hash", "key_id")
    chunk: list[tuple[str, int]] = []

    def check(rows):
        with client.pipeline(transaction=False) as pipe:
            for secret_hash, _ in rows:
                pipe.exists(edge_record.redis_key(secret_hash))
            found = pipe.execute()
        missing.update(key_id for (_, key_id), exists in zip(rows, found, strict=True) if not exists)

    for row in secrets.iterator(chunk_size=BATCH):
        chunk.append(row)
        if len(chunk) >= BATCH:
            check(chunk)
            chunk = []
    if chunk:
        check(chunk)
    if missing:
        keys_publish(sorted(missing))
    return len(missing)
