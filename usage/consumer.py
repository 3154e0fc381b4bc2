"""The usage stream consumer: tg:usage → Postgres, in batches, acknowledged after commit.

Delivery is at least once (a message is acknowledged only after its transaction commits;
a consumer that dies leaves it pending, and another consumer claims it with XAUTOCLAIM);
the idempotent insert in usage.ingest makes the count exactly once.
"""

import logging
import signal
import time
from dataclasses import dataclass, field

import orjson
import redis
from django.conf import settings
from django.db import close_old_connections
from prometheus_client import Counter, Gauge, Histogram

from usage.ingest import Event, InvalidEvent, KeyDirectory, event_from_edge, usage_events_ingest

logger = logging.getLogger("tollgate.usage.consumer")

BATCH_SIZE = Histogram(
    "tollgate_ingest_batch_size", "Events per ingested batch", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000)
)
INSERTED = Counter("tollgate_ingest_events_inserted_total", "Events inserted (new)")
DUPLICATES = Counter("tollgate_ingest_events_duplicate_total", "Events already counted")
DEAD_LETTERS = Counter("tollgate_ingest_dead_letters_total", "Events moved to the dead-letter stream")
STREAM_LENGTH = Gauge("tollgate_ingest_stream_length", "Entries in the usage stream")
PENDING = Gauge("tollgate_ingest_pending", "Delivered but unacknowledged entries of the group")


@dataclass
class BatchResult:
    inserted: int = 0
    duplicates: int = 0
    dead: int = 0
    acked: list = field(default_factory=list)


class UsageConsumer:
    def __init__(
        self,
        client: redis.Redis,
        *,
        name: str,
        stream: str | None = None,
        group: str | None = None,
        dead_stream: str | None = None,
        batch_size: int | None = None,
        max_wait_ms: int | None = None,
        claim_idle_ms: int | None = None,
    ):
        self.redis = client
        self.name = name
        self.stream = stream or settings.USAGE_STREAM
        self.group = group or settings.USAGE_CONSUMER_GROUP
        self.dead_stream = dead_stream or settings.USAGE_DEAD_LETTER_STREAM
        self.batch_size = batch_size or settings.USAGE_BATCH_SIZE
        self.max_wait_ms = max_wait_ms or settings.USAGE_BATCH_MAX_WAIT_MS
        self.claim_idle_ms = claim_idle_ms or settings.USAGE_CLAIM_IDLE_MS
        self.keys = KeyDirectory()
        self.stopping = False
        self._last_trim = 0.0

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def stop(self, *_args) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self.stopping = True

    def run(self, *, install_signals: bool = True) -> None:
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        self.ensure_group()
        logger.info("usage consumer started", extra={"consumer": self.name, "stream": self.stream})
        while not self.stopping:
            close_old_connections()  # a long-running process must not keep a broken connection
            self.step()
        logger.info("usage consumer stopped", extra={"consumer": self.name})

    def step(self) -> BatchResult:
        """Claim stale messages or read new ones, ingest them, acknowledge. One batch."""
        messages = self._claim() or self._read()
        result = self.process(messages)
        if time.monotonic() - self._last_trim > 10:
            self.trim()
            self._observe()
            self._last_trim = time.monotonic()
        return result

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
        result = BatchResult()
        if not messages:
            return result
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
        result.inserted = len(inserted)
        result.duplicates = len(events) - len(inserted)
        result.dead = len(dead)
        with self.redis.pipeline(transaction=False) as pipe:
            for message_id, raw, reason in dead:
                pipe.xadd(
                    self.dead_stream,
                    {"data": raw or b"", "reason": reason, "message_id": message_id, "consumer": self.name},
                )
            pipe.xack(self.stream, self.group, *[message_id for message_id, _fields in messages])
            pipe.execute()
        result.acked = [message_id for message_id, _fields in messages]
        BATCH_SIZE.observe(len(messages))
        INSERTED.inc(result.inserted)
        DUPLICATES.inc(result.duplicates)
        DEAD_LETTERS.inc(result.dead)
        if dead:
            logger.warning("usage events dead-lettered", extra={"count": len(dead), "reason": dead[0][2]})
        return result

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

    def _observe(self) -> None:
        try:
            STREAM_LENGTH.set(self.redis.xlen(self.stream))
            summary = self.redis.xpending(self.stream, self.group)
            PENDING.set(summary.get("pending", 0) if summary else 0)
        except redis.RedisError:
            pass


def _parse_id(value) -> tuple[int, int]:
    if isinstance(value, bytes):
        value = value.decode()
    milliseconds, _, sequence = str(value).partition("-")
    return int(milliseconds), int(sequence or 0)
