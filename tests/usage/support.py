"""Helpers for the usage tests: edge-shaped events on the stream, raw sums beside the rollups.

Events are built by the edge's own ``new_event`` with the fields ``edge/app.py`` meters, so
the consumer under test reads exactly what a real edge writes to ``tg:usage``.
"""

import uuid
from datetime import UTC, datetime

import orjson
import redis
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from edge.metering import new_event
from keys.models import ApiKey
from usage.consumer import UsageConsumer
from usage.models import UsageEvent, UsageRollup

STREAM = "tg:usage"
DEAD_STREAM = "tg:usage:dead"
GROUP = "ingest"


def edge_event(key: ApiKey, *, ended_at: datetime | None = None, **fields) -> dict:
    """Return a usage event with the fields edge/app.py ``_meter`` publishes."""
    ended_ms = int((ended_at or timezone.now()).timestamp() * 1000)
    event = new_event(
        request_id=uuid.uuid4().hex,
        key_id=key.public_id,
        org_id=key.organization_id,
        environment=key.environment,
        endpoint="chat.completions",
        model="mock-model",
        stream=False,
        status=200,
        input_tokens=10,
        output_tokens=16,
        cached_tokens=0,
        estimated=False,
        cost_micro_minor=0,
        latency_ms=12.5,
        ttft_ms=None,
        upstream="http://127.0.0.1:9001",
        started_at_ms=ended_ms - 13,
        ended_at_ms=ended_ms,
    )
    event.update(fields)
    return event


def publish(client: redis.Redis, *events) -> list[bytes]:
    """XADD each event (a dict, or raw bytes for a malformed one) as the edge does."""
    with client.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(STREAM, {"data": event if isinstance(event, bytes) else orjson.dumps(event)})
        return pipe.execute()


def ingest(client: redis.Redis, *events: dict) -> None:
    """Publish edge events and ingest them with one consumer step; every one must be new."""
    publish(client, *events)
    consumer = UsageConsumer(client, name="ingest-test", max_wait_ms=50)
    consumer.ensure_group()
    result = consumer.step()
    assert (result.inserted, result.dead) == (len(events), 0)


def pending(client: redis.Redis) -> dict[str, int]:
    """Unacknowledged entries of the group, per consumer."""
    return {
        entry["name"].decode(): entry["pending"]
        for entry in client.xinfo_consumers(STREAM, GROUP)
        if entry["pending"]
    }


def at_ms(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, tz=UTC)


_METRICS = {
    "requests": Count("event_id"),
    "errors": Count("event_id", filter=Q(status__gte=400)),
    "refusals": Count("event_id", filter=~Q(refusal="")),
    "input_tokens": Sum("input_tokens"),
    "output_tokens": Sum("output_tokens"),
    "cached_tokens": Sum("cached_tokens"),
    "estimated_requests": Count("event_id", filter=Q(estimated=True)),
    "cost_micro_minor": Sum("cost_micro_minor"),
}
_SLOT = ("organization_id", "key_id", "model", "hour", "billed_period")


def raw_sums() -> dict[tuple, dict[str, int]]:
    """Sum the raw events per organization, key, model, hour and billed period (SQL GROUP BY)."""
    rows = (
        UsageEvent.unscoped.annotate(hour=TruncHour("occurred_at", tzinfo=UTC))
        .values(*_SLOT)
        .annotate(**_METRICS)
        .order_by()
    )
    return {tuple(row[f] for f in _SLOT): {m: row[m] for m in _METRICS} for row in rows}


def rollup_rows() -> dict[tuple, dict[str, int]]:
    return {
        tuple(row[f] for f in _SLOT): {m: row[m] for m in _METRICS}
        for row in UsageRollup.unscoped.values(*_SLOT, *_METRICS)
    }
