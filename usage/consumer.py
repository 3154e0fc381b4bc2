"""The usage stream consumer: tg:usage → Postgres, in batches, acknowledged after commit.

The stream may be sharded by organization (edge/streams.py): a process then runs one
consumer per shard it reads (``shard_consumers``), stepped in turn, each with its own group,
dead letters and pending entries, all on the shard's slot of a Redis Cluster.

Delivery is at least once (a message is acknowledged only after its transaction commits;
a consumer that dies leaves it pending, and another consumer claims it with XAUTOCLAIM);
the idempotent insert in usage.ingest makes the count exactly once.

A running consumer (``run``) rides out restarts of Postgres and Redis: it retries with a
capped, jittered exponential backoff and keeps the batch in hand, so the same messages are
ingested once the store is back (the insert is idempotent on event_id). It re-creates its
group when Redis comes back empty, re-reads its own pending entries on start, removes
consumers that have long been gone, and re-publishes the edge's data plane when Redis lost it.
"""

import logging
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import orjson
import redis
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections, connection
from prometheus_client import Counter, Gauge, Histogram
from redis.cluster import RedisCluster

from edge.streams import dead_letter_stream, usage_stream
from usage.ingest import Event, InvalidEvent, KeyDirectory, event_from_edge, usage_events_ingest
from usage.lag import ingest_lag_seconds

logger = logging.getLogger("tollgate.usage.consumer")

BATCH_SIZE = Histogram(
    "tollgate_ingest_batch_size", "Events per ingested batch", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000)
)
INSERTED = Counter("tollgate_ingest_events_inserted_total", "Events inserted (new)")
DUPLICATES = Counter("tollgate_ingest_events_duplicate_total", "Events already counted")
DEAD_LETTERS = Counter("tollgate_ingest_dead_letters_total", "Events moved to the dead-letter stream")
STREAM_LENGTH = Gauge("tollgate_ingest_stream_length", "Entries in the usage stream")
PENDING = Gauge("tollgate_ingest_pending", "Delivered but unacknowledged entries of the group")
LAG = Gauge("tollgate_ingest_lag_seconds", "Age of the oldest unacknowledged or unread entry of the group")
OUTAGES = Counter(
    "tollgate_ingest_store_outages_total", "Outages of a store the consumer waited out, once each", ["store"]
)
RETRIES = Counter("tollgate_ingest_store_retries_total", "Failed attempts retried after a backoff", ["store"])
GROUPS_RECREATED = Counter("tollgate_ingest_group_recreated_total", "Consumer groups re-created (Redis lost)")
CONSUMERS_REMOVED = Counter("tollgate_ingest_dead_consumers_removed_total", "Dead consumers deleted")
EDGE_RESYNCS = Counter("tollgate_ingest_edge_resyncs_total", "Full edge resyncs run after Redis lost them")
# Per stream this process reads: its length and the group's pending entries, last observed.
_OBSERVED: dict[str, tuple[int, int]] = {}
for _store in ("postgres", "redis"):
    OUTAGES.labels(_store)
    RETRIES.labels(_store)

# A store that is restarting refuses connections, drops them, or answers "loading"/"read-only"
# for a while; everything else is a bug and stops the consumer.
POSTGRES_ERRORS = (OperationalError, InterfaceError)
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)
RETRY_FIRST_SECONDS = 0.1
RETRY_CAP_SECONDS = 5.0
HOUSEKEEPING_SECONDS = 10
EDGE_WATCH_SECONDS = 1

# Atomic, so that a consumer that reads in between keeps its pending entries: XGROUP
# DELCONSUMER drops them with the consumer.
_REMOVE_DEAD_CONSUMERS = """
local removed = {}
for _, entry in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
    local info = {}
    for i = 1, #entry, 2 do info[entry[i]] = entry[i + 1] end
    if info['name'] ~= ARGV[2] and info['pending'] == 0 and info['idle'] > tonumber(ARGV[3]) then
        redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
        table.insert(removed, info['name'])
    end
end
return removed
"""

T = TypeVar("T")


@dataclass
class BatchResult:
    inserted: int = 0
    duplicates: int = 0
    dead: int = 0
    acked: list = field(default_factory=list)


@dataclass
class Backoff:
    """Capped exponential delays with jitter, so that N replicas do not retry in step."""

    first: float = RETRY_FIRST_SECONDS
    cap: float = RETRY_CAP_SECONDS
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)


class Stopped(Exception):
    """SIGTERM arrived while a store was down: the batch in hand stays pending for a re-read."""


def _once(operation: Callable[[], T]) -> T:
    return operation()


def _group_lost(exc: redis.ResponseError) -> bool:
    # NOGROUP answers a command; UNBLOCKED ends a blocked read when the stream is deleted.
    return str(exc).startswith(("NOGROUP", "UNBLOCKED"))


class UsageConsumer:
    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        name: str,
        stream: str | None = None,
        group: str | None = None,
        dead_stream: str | None = None,
        batch_size: int | None = None,
        max_wait_ms: int | None = None,
        claim_idle_ms: int | None = None,
        dead_consumer_idle_ms: int | None = None,
        edge_resync: bool = False,
    ):
        self.redis = client
        self.name = name
        self.stream = stream or settings.USAGE_STREAM
        self.group = group or settings.USAGE_CONSUMER_GROUP
        self.dead_stream = dead_stream or settings.USAGE_DEAD_LETTER_STREAM
        self.batch_size = batch_size or settings.USAGE_BATCH_SIZE
        self.max_wait_ms = max_wait_ms or settings.USAGE_BATCH_MAX_WAIT_MS
        self.claim_idle_ms = claim_idle_ms or settings.USAGE_CLAIM_IDLE_MS
        self.dead_consumer_idle_ms = dead_consumer_idle_ms or settings.USAGE_DEAD_CONSUMER_IDLE_MS
        self.edge_resync = edge_resync
        self.keys = KeyDirectory()
        self.stopping = False
        self._last_trim = 0.0
        self._last_edge_watch = 0.0
        self._edge_resync_failing = False
        # Entries this consumer read before it was restarted (or before Redis dropped the reply)
        # are re-read from its own pending list first: nobody else would touch them for a while.
        self._own_pending = True
        # Direct calls (tests, tools) fail fast; run() waits store outages out.
        self._attempt: Callable[[Callable[[], T]], T] = _once
        self._remove_dead = client.register_script(_REMOVE_DEAD_CONSUMERS)

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self, *_args) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self.stopping = True

    def run(self, *, install_signals: bool = True) -> bool:
        """Consume this stream alone until stopped (see ``ShardConsumers.run``)."""
        return ShardConsumers([self]).run(install_signals=install_signals)

    def step(self) -> BatchResult:
        """Re-read own pending, claim stale or read new messages, ingest, acknowledge. One batch."""
        messages = self._attempt(self._fetch)
        result = self.process(messages)
        now = time.monotonic()
        if self.edge_resync and now - self._last_edge_watch >= EDGE_WATCH_SECONDS:
            self._last_edge_watch = now
            self._watch_edge()
        if now - self._last_trim > HOUSEKEEPING_SECONDS:
            self._last_trim = now
            self._housekeeping()
        return result

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Call ``operation`` until no store error stops it; log each outage once."""
        backoff = Backoff()
        failing: dict[str, float] = {}
        group_missing: bool | None = None  # None: not lost yet during this operation
        while True:
            try:
                if group_missing:
                    self.ensure_group()
                    group_missing = False
                value = operation()
            except REDIS_ERRORS as exc:
                self._failed("redis", exc, failing)
                # Redis may have executed a read whose reply was lost: those entries are ours now.
                self._own_pending = True
            except redis.ResponseError as exc:
                if not _group_lost(exc):
                    raise
                # Redis came back empty (or the group was deleted): make it again, at id 0 so
                # that whatever the edge wrote since is read, and carry on.
                logger.warning(
                    "consumer group missing; re-creating it",
                    extra={"consumer": self.name, "stream": self.stream, "group": self.group},
                )
                GROUPS_RECREATED.inc()
                if group_missing is None:
                    group_missing = True
                    continue  # at once the first time; should it keep vanishing, back off
                group_missing = True
            except POSTGRES_ERRORS as exc:
                self._failed("postgres", exc, failing)
                connection.close()  # the next attempt opens a fresh connection
            else:
                for store, since in failing.items():
                    logger.warning(
                        f"{store} is back; the consumer carries on",
                        extra={
                            "consumer": self.name,
                            "store": store,
                            "seconds": round(time.monotonic() - since, 3),
                        },
                    )
                return value
            self._pause(backoff.next_delay())

    def _failed(self, store: str, exc: Exception, failing: dict[str, float]) -> None:
        RETRIES.labels(store).inc()
        if store in failing:
            return
        failing[store] = time.monotonic()
        OUTAGES.labels(store).inc()
        logger.warning(
            f"{store} unavailable; retrying with the batch in hand",
            extra={"consumer": self.name, "store": store, "error": f"{type(exc).__name__}: {exc}"},
        )

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, 0.05))
        if self.stopping:
            raise Stopped

    def _fetch(self) -> list:
        if self._own_pending:
            messages = self._read_own_pending()
            if messages:
                return messages
            self._own_pending = False
        return self._claim() or self._read()

    def _read_own_pending(self) -> list:
        """Read this consumer's pending entries again (id 0 reads the consumer's own list)."""
        while True:
            response = self.redis.xreadgroup(self.group, self.name, {self.stream: "0"}, count=self.batch_size)
            entries = response[0][1] if response else []
            # An entry deleted from the stream while pending comes back without fields.
            gone = [message_id for message_id, fields in entries if not fields]
            if gone:
                self.redis.xack(self.stream, self.group, *gone)
            if len(gone) < len(entries) or not entries:
                return [(message_id, fields) for message_id, fields in entries if fields]

    def _claim(self) -> list:
        """Take over messages another consumer left pending for longer than claim_idle_ms."""
        _next, claimed, *_ = self.redis.xautoclaim(
            self.stream,
            self.group,
            self.name,
            min_idle_time=self.claim_idle_ms,
            start_id="0-0",
            count=self.batch_size,
        )
        return [(message_id, fields) for message_id, fields in claimed if fields is not None]

    def _read(self) -> list:
        messages: list = []
        deadline = time.monotonic() + self.max_wait_ms / 1000
        while len(messages) < self.batch_size and not self.stopping:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            response = self.redis.xreadgroup(
                self.group,
                self.name,
                {self.stream: ">"},
                count=self.batch_size - len(messages),
                block=remaining_ms,
            )
            if not response:
                break
            for _stream, entries in response:
                messages.extend(entries)
        return messages

    def process(self, messages: list) -> BatchResult:
        """Ingest the batch, then dead-letter and acknowledge it; each half retried on its own."""
        result = BatchResult()
        if not messages:
            return result
        # Retrying the insert alone keeps an outage of Postgres from touching Redis, and the
        # other way round: a lost acknowledgement never re-runs an insert that committed.
        result.inserted, result.duplicates, dead = self._attempt(lambda: self._ingest(messages))
        self._attempt(lambda: self._acknowledge(messages, dead))
        result.dead = len(dead)
        result.acked = [message_id for message_id, _fields in messages]
        BATCH_SIZE.observe(len(messages))
        INSERTED.inc(result.inserted)
        DUPLICATES.inc(result.duplicates)
        DEAD_LETTERS.inc(result.dead)
        if dead:
            logger.warning("usage events dead-lettered", extra={"count": len(dead), "reason": dead[0][2]})
        return result

    def _ingest(self, messages: list) -> tuple[int, int, list[tuple[bytes, bytes | None, str]]]:
        """Insert the valid events in one transaction; return inserted, duplicates and the dead."""
        decoded = []
        for message_id, fields in messages:
            raw = fields.get(b"data") if fields else None
            try:
                data = orjson.loads(raw) if raw is not None else None
            except orjson.JSONDecodeError:
                data = None
            decoded.append((message_id, raw, data))
        public_ids = {
            data["key_id"]
            for _, _, data in decoded
            if isinstance(data, dict) and isinstance(data.get("key_id"), str)
        }
        keys = self.keys.resolve(public_ids)
        events: list[Event] = []
        dead: list[tuple[bytes, bytes | None, str]] = []
        for message_id, raw, data in decoded:
            if data is None:
                dead.append((message_id, raw, "not JSON in field 'data'"))
                continue
            try:
                events.append(event_from_edge(data, keys))
            except InvalidEvent as exc:
                dead.append((message_id, raw, str(exc)))
        inserted = usage_events_ingest(events)
        return len(inserted), len(events) - len(inserted), dead

    def _acknowledge(self, messages: list, dead: list[tuple[bytes, bytes | None, str]]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for message_id, raw, reason in dead:
                pipe.xadd(
                    self.dead_stream,
                    {"data": raw or b"", "reason": reason, "message_id": message_id, "consumer": self.name},
                )
            pipe.xack(self.stream, self.group, *[message_id for message_id, _fields in messages])
            pipe.execute()

    def trim(self) -> int:
        """Drop entries every group has acknowledged: older than any pending or undelivered one."""
        groups = self.redis.xinfo_groups(self.stream)
        if not groups:
            return 0
        floors = []
        for group in groups:
            last = group["last-delivered-id"]
            floors.append(_parse_id(last))
            if group["pending"]:
                summary = self.redis.xpending(self.stream, group["name"])
                if summary and summary.get("min"):
                    floors.append(_parse_id(summary["min"]))
        floor = min(floors)
        if floor == (0, 0):
            return 0
        # MINID keeps entries >= floor; the floor entry itself may be pending or undelivered.
        return self.redis.xtrim(self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False)

    def consumers_remove_dead(self) -> list[str]:
        """Delete the group's consumers with nothing pending, idle for dead_consumer_idle_ms.

        Never this consumer, and never one holding entries: those are claimed, not dropped.
        Return the names removed.
        """
        removed = [
            name.decode()
            for name in self._remove_dead(
                keys=[self.stream], args=[self.group, self.name, self.dead_consumer_idle_ms]
            )
        ]
        if removed:
            CONSUMERS_REMOVED.inc(len(removed))
            logger.info("dead consumers removed", extra={"consumer": self.name, "removed": removed})
        return removed

    def _housekeeping(self) -> None:
        """Trim, observe, remove dead consumers; a failure here waits for the next round."""
        for task in (self.trim, self.observe, self.consumers_remove_dead):
            try:
                task()
            except redis.RedisError as exc:
                logger.warning(
                    "usage stream housekeeping failed",
                    extra={"consumer": self.name, "task": task.__name__, "error": str(exc)},
                )

    def _watch_edge(self) -> None:
        """Re-publish the edge's data plane if Redis lost it; a failure is retried next second."""
        from keys.publication import edge_resync_if_missing

        try:
            if edge_resync_if_missing(owner=self.name):
                EDGE_RESYNCS.inc()
                logger.warning(
                    "edge data plane was missing in Redis; resynced", extra={"consumer": self.name}
                )
        # A resync must never stop ingestion, whatever went wrong in it.
        except Exception as exc:
            if isinstance(exc, POSTGRES_ERRORS):
                connection.close()
            if not self._edge_resync_failing:
                logger.warning(
                    "edge resync failed; retrying",
                    extra={"consumer": self.name, "error": f"{type(exc).__name__}: {exc}"},
                    exc_info=not isinstance(exc, (*POSTGRES_ERRORS, *REDIS_ERRORS)),
                )
            self._edge_resync_failing = True
        else:
            self._edge_resync_failing = False

    def observe(self) -> float | None:
        """Set this process's stream gauges from its shard's stream; return the shard's lag.

        None when Redis did not answer (the gauges keep their last values).
        """
        try:
            length = self.redis.xlen(self.stream)
            summary = self.redis.xpending(self.stream, self.group)
            lag = ingest_lag_seconds(self.redis, stream=self.stream, group=self.group)
        except redis.RedisError:
            return None
        # The process's gauges cover every shard it reads: counts add up, the lag is the worst.
        _OBSERVED[self.stream] = (length, summary.get("pending", 0) if summary else 0, lag)
        STREAM_LENGTH.set(sum(length for length, _pending, _lag in _OBSERVED.values()))
        PENDING.set(sum(pending for _length, pending, _lag in _OBSERVED.values()))
        LAG.set(max(lag for _length, _pending, lag in _OBSERVED.values()))
        return lag


class ShardConsumers:
    """One process's consumers, one per usage stream shard it reads, each stepped in turn.

    Each is a consumer of its shard's group under the process's name: consumers of other
    processes on the same shard share its entries, and claim those a dead one left pending.
    """

    def __init__(self, consumers: list[UsageConsumer]):
        self.consumers = consumers

    @property
    def stopping(self) -> bool:
        return any(consumer.stopping for consumer in self.consumers)

    def stop(self, *_args) -> None:
        """Finish the batch in hand, then return from ``run``."""
        for consumer in self.consumers:
            consumer.stop()

    def run(self, *, install_signals: bool = True) -> bool:
        """Consume until stopped, waiting out store outages; return whether the last batch finished.

        A SIGTERM during an outage returns at once without the batch in hand: it stays pending,
        and this consumer's next start (same name) reads it again first.
        """
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        name = self.consumers[0].name
        streams = [consumer.stream for consumer in self.consumers]
        for consumer in self.consumers:
            consumer._attempt = consumer._retrying
        logger.info("usage consumer started", extra={"consumer": name, "streams": streams})
        try:
            for consumer in self.consumers:
                consumer._attempt(consumer.ensure_group)
            while not self.stopping:
                for consumer in self.consumers:
                    close_old_connections()  # a long-running process must not keep a broken connection
                    consumer.step()
                    if self.stopping:
                        break
        except Stopped:
            logger.warning(
                "usage consumer stopped during an outage; its batch stays pending",
                extra={"consumer": name},
            )
            return False
        logger.info("usage consumer stopped", extra={"consumer": name})
        return True


def shard_consumers(
    client: redis.Redis | RedisCluster, *, name: str, shards: tuple[int, ...] | None = None, **options
) -> ShardConsumers:
    """The consumers of the shards ``shards`` (default ``USAGE_CONSUMER_SHARDS``, else all).

    Each shard's blocking read waits ``max_wait_ms`` divided among the shards, so that an idle
    shard holds a busy one up no longer than one consumer of both would. Only the first
    watches the edge's data plane: one resync per process is enough.
    """
    count = settings.USAGE_STREAM_SHARDS
    shards = shards if shards is not None else settings.USAGE_CONSUMER_SHARDS or tuple(range(count))
    max_wait_ms = options.pop("max_wait_ms", None) or settings.USAGE_BATCH_MAX_WAIT_MS
    edge_resync = options.pop("edge_resync", False)
    return ShardConsumers(
        [
            UsageConsumer(
                client,
                name=name,
                stream=usage_stream(shard, count),
                dead_stream=dead_letter_stream(shard, count),
                max_wait_ms=max(1, max_wait_ms // len(shards)),
                edge_resync=edge_resync and index == 0,
                **options,
            )
            for index, shard in enumerate(shards)
        ]
    )


def _parse_id(value) -> tuple[int, int]:
    if isinstance(value, bytes):
        value = value.decode()
    milliseconds, _, sequence = str(value).partition("-")
    return int(milliseconds), int(sequence or 0)
