"""Exactly-once ingestion: raw events and their rollups in one transaction.

Raw rows are inserted with ``ON CONFLICT DO NOTHING``; only the rows the database actually
inserted (``RETURNING``) are added to the hourly rollups, in the same transaction. A
redelivered event therefore changes nothing, and two consumers racing on one event are
serialised by the primary key: the second waits for the first to commit, then skips it.
"""

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from usage.models import ClosedPeriod
from usage.partitions import add_months

MAX_TOKENS = 10**12


class InvalidEvent(ValueError):
    """An event that can never be ingested; it goes to the dead letters with this reason."""


@dataclass(frozen=True, slots=True)
class Event:
    event_id: uuid.UUID
    occurred_at: datetime
    organization_id: int
    key_id: int
    model: str
    endpoint: str
    status: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    estimated: bool
    cost_micro_minor: int
    latency_ms: float | None
    ttft_ms: float | None
    request_id: str
    source: str


class KeyDirectory:
    """Resolve public key ids (``key_…``) to (key pk, organization pk), cached per process."""

    def __init__(self, max_entries: int = 100_000):
        self._cache: dict[str, tuple[int, int]] = {}
        self.max_entries = max_entries

    def resolve(self, public_ids: set[str]) -> dict[str, tuple[int, int]]:
        from keys.models import ApiKey

        missing = [pid for pid in public_ids if pid not in self._cache]
        if missing:
            if len(self._cache) > self.max_entries:
                self._cache.clear()
            for public_id, pk, org_id in ApiKey.unscoped.filter(public_id__in=missing).values_list(
                "public_id", "pk", "organization_id"
            ):
                self._cache[public_id] = (pk, org_id)
        return {pid: self._cache[pid] for pid in public_ids if pid in self._cache}


def _int(data: dict, field: str, *, minimum: int = 0, maximum: int = MAX_TOKENS) -> int:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidEvent(f"{field} must be an integer from {minimum} to {maximum}")
    return value


def _optional_float(data: dict, field: str) -> float | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidEvent(f"{field} must be a non-negative number or null")
    return float(value)


def event_from_edge(data: dict, keys: dict[str, tuple[int, int]]) -> Event:
    """Validate one event of the tg:usage stream (schema v1). Raise InvalidEvent."""
    if not isinstance(data, dict) or data.get("v") != 1:
        raise InvalidEvent("not a version 1 usage event")
    try:
        event_id = uuid.UUID(str(data.get("event_id")))
    except ValueError:
        raise InvalidEvent("event_id must be a UUID") from None
    key = keys.get(data.get("key_id"))
    if key is None:
        raise InvalidEvent(f"unknown key_id {data.get('key_id')!r}")
    key_pk, org_id = key
    if data.get("org_id") != org_id:
        raise InvalidEvent(f"org_id {data.get('org_id')!r} does not own key {data.get('key_id')!r}")
    ended_ms = _int(data, "ended_at_ms", minimum=1, maximum=2**53)
    model = data.get("model")
    if not isinstance(model, str) or not model or len(model) > 200:
        raise InvalidEvent("model must be a string of 1 to 200 characters")
    input_tokens = _int(data, "input_tokens")
    cached = _int(data, "cached_tokens")
    if cached > input_tokens:
        raise InvalidEvent("cached_tokens cannot exceed input_tokens")
    return Event(
        event_id=event_id,
        occurred_at=datetime.fromtimestamp(ended_ms / 1000, tz=UTC),
        organization_id=org_id,
        key_id=key_pk,
        model=model,
        endpoint=str(data.get("endpoint") or "")[:32],
        status=_int(data, "status", minimum=0, maximum=999),
        input_tokens=input_tokens,
        output_tokens=_int(data, "output_tokens"),
        cached_tokens=cached,
        estimated=bool(data.get("estimated", False)),
        cost_micro_minor=_int(data, "cost_micro_minor", maximum=2**62) if "cost_micro_minor" in data else 0,
        latency_ms=_optional_float(data, "latency_ms"),
        ttft_ms=_optional_float(data, "ttft_ms"),
        request_id=str(data.get("request_id") or "")[:128],
        source="edge",
    )


def billed_period_for(occurred: datetime, closed: set[date]) -> date:
    """The month whose invoice carries an event: its own, or the next open one if closed."""
    period = occurred.date().replace(day=1)
    while period in closed:
        period = add_months(period, 1)
    return period


_INSERT = """
INSERT INTO usage_event (
    event_id, occurred_at, organization_id, key_id, model, endpoint, status, input_tokens,
    output_tokens, cached_tokens, estimated, cost_micro_minor, latency_ms, ttft_ms, request_id,
    source, billed_period, late, ingested_at
)
SELECT * FROM unnest(
    %s::uuid[], %s::timestamptz[], %s::bigint[], %s::bigint[], %s::varchar[], %s::varchar[],
    %s::smallint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::boolean[], %s::bigint[],
    %s::float8[], %s::float8[], %s::varchar[], %s::varchar[], %s::date[], %s::boolean[],
    %s::timestamptz[]
)
ON CONFLICT DO NOTHING
RETURNING event_id
"""

_ROLLUP = """
INSERT INTO usage_usagerollup (
    organization_id, key_id, model, hour, billed_period, requests, errors, input_tokens,
    output_tokens, cached_tokens, estimated_requests, cost_micro_minor
)
SELECT * FROM unnest(
    %s::bigint[], %s::bigint[], %s::varchar[], %s::timestamptz[], %s::date[], %s::bigint[],
    %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]
)
ON CONFLICT (organization_id, key_id, model, hour, billed_period) DO UPDATE SET
    requests = usage_usagerollup.requests + EXCLUDED.requests,
    errors = usage_usagerollup.errors + EXCLUDED.errors,
    input_tokens = usage_usagerollup.input_tokens + EXCLUDED.input_tokens,
    output_tokens = usage_usagerollup.output_tokens + EXCLUDED.output_tokens,
    cached_tokens = usage_usagerollup.cached_tokens + EXCLUDED.cached_tokens,
    estimated_requests = usage_usagerollup.estimated_requests + EXCLUDED.estimated_requests,
    cost_micro_minor = usage_usagerollup.cost_micro_minor + EXCLUDED.cost_micro_minor
"""

_LAST_USED = """
UPDATE keys_apikey SET last_used_at = batch.used_at
FROM unnest(%s::bigint[], %s::timestamptz[]) AS batch(key_id, used_at)
WHERE keys_apikey.id = batch.key_id
  AND (keys_apikey.last_used_at IS NULL OR keys_apikey.last_used_at < batch.used_at)
"""


def usage_events_ingest(events: list[Event]) -> set[uuid.UUID]:
    """Insert events and update rollups and keys' last use, in one transaction.

    Return the ids that were new; the others were already counted.
    """
    if not events:
        return set()
    # One event id at most once per statement (ON CONFLICT cannot see its own rows twice).
    unique: dict[uuid.UUID, Event] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    events = list(unique.values())
    now = timezone.now()
    closed = set(ClosedPeriod.objects.values_list("period", flat=True))
    periods = [billed_period_for(event.occurred_at, closed) for event in events]
    columns = [
        [e.event_id for e in events],
        [e.occurred_at for e in events],
        [e.organization_id for e in events],
        [e.key_id for e in events],
        [e.model for e in events],
        [e.endpoint for e in events],
        [e.status for e in events],
        [e.input_tokens for e in events],
        [e.output_tokens for e in events],
        [e.cached_tokens for e in events],
        [e.estimated for e in events],
        [e.cost_micro_minor for e in events],
        [e.latency_ms for e in events],
        [e.ttft_ms for e in events],
        [e.request_id for e in events],
        [e.source for e in events],
        periods,
        [period != e.occurred_at.date().replace(day=1) for e, period in zip(events, periods, strict=True)],
        [now] * len(events),
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_INSERT, columns)
        inserted = {row[0] for row in cursor.fetchall()}
        if not inserted:
            return inserted
        totals: dict[tuple, list[int]] = defaultdict(lambda: [0] * 7)
        last_used: dict[int, datetime] = {}
        for event, period in zip(events, periods, strict=True):
            if event.event_id not in inserted:
                continue
            hour = event.occurred_at.replace(minute=0, second=0, microsecond=0)
            row = totals[(event.organization_id, event.key_id, event.model, hour, period)]
            row[0] += 1
            row[1] += 1 if event.status >= 400 else 0
            row[2] += event.input_tokens
            row[3] += event.output_tokens
            row[4] += event.cached_tokens
            row[5] += 1 if event.estimated else 0
            row[6] += event.cost_micro_minor
            if event.key_id not in last_used or last_used[event.key_id] < event.occurred_at:
                last_used[event.key_id] = event.occurred_at
        keys = list(totals)
        cursor.execute(
            _ROLLUP,
            [
                [k[0] for k in keys],
                [k[1] for k in keys],
                [k[2] for k in keys],
                [k[3] for k in keys],
                [k[4] for k in keys],
                *([totals[k][i] for k in keys] for i in range(7)),
            ],
        )
        cursor.execute(_LAST_USED, [list(last_used), list(last_used.values())])
    return inserted


def late_window() -> timedelta:
    from django.conf import settings

    return timedelta(days=settings.USAGE_LATE_WINDOW_DAYS)
