"""Exactly-once ingestion: raw events and their rollups in one transaction.

Raw rows are inserted with ``ON CONFLICT DO NOTHING``; only the rows the database actually
inserted (``RETURNING``) are added to the hourly rollups, in the same transaction. A
redelivered event therefore changes nothing, and two consumers racing on one event are
serialised by the primary key: the second waits for the first to commit, then skips it.
Event ids are unique per organization: the key is ``(organization_id, event_id,
occurred_at)``, so one tenant's id never makes another tenant's event a duplicate.

A batch travels by binary COPY into a session-local staging table, and one statement moves
it into the raw table and folds the inserted rows into the rollups: no per-row work in
Python beyond writing the row, one round trip for the SQL (see bench/RESULTS.md).
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from edge.events import REFUSAL_REASONS, SCHEMA_VERSION, UsageEvent
from usage.partitions import add_months
from usage.periods import closed_periods_locked

MAX_TOKENS = 10**12
MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant Python can hold


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
    refusal: str = ""  # why the edge refused it (edge/events.py REFUSAL_REASONS); "" when served
    secret_id: int | None = None  # the key's secret that was presented, when the edge named it


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


def _text(data: dict, field: str, limit: int) -> str:
    text = str(data.get(field) or "")[:limit]
    if "\x00" in text:  # Postgres text cannot hold NUL: the whole batch would fail on it
        raise InvalidEvent(f"{field} must not contain NUL characters")
    return text


def _optional_float(data: dict, field: str) -> float | None:
    value = data.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidEvent(f"{field} must be a non-negative number or null")
    return float(value)


def event_from_edge(data: UsageEvent, keys: dict[str, tuple[int, int]]) -> Event:
    """Validate one event of the tg:usage stream (edge/events.py; anything may arrive). Raise
    InvalidEvent."""
    if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
        raise InvalidEvent("not a version 1 usage event")
    try:
        event_id = uuid.UUID(str(data.get("event_id")))
    except ValueError:
        raise InvalidEvent("event_id must be a UUID") from None
    public_id = data.get("key_id")
    key = keys.get(public_id) if isinstance(public_id, str) else None
    if key is None:
        raise InvalidEvent(f"unknown key_id {public_id!r}")
    key_pk, org_id = key
    if data.get("org_id") != org_id:
        raise InvalidEvent(f"org_id {data.get('org_id')!r} does not own key {data.get('key_id')!r}")
    ended_ms = _int(data, "ended_at_ms", minimum=1, maximum=MAX_TIMESTAMP_MS)
    # Absent in events written before refusals were metered: those were all served.
    refusal = data.get("refusal", "")
    if refusal and (not isinstance(refusal, str) or refusal not in REFUSAL_REASONS):
        raise InvalidEvent(f"unknown refusal reason {refusal!r}")
    model = data.get("model")
    # A refused request may not have named a model the edge knows (it was refused before).
    if not isinstance(model, str) or not (model or refusal) or len(model) > 200:
        raise InvalidEvent("model must be a string of 1 to 200 characters")
    model = _text(data, "model", 200)
    input_tokens = _int(data, "input_tokens")
    cached = _int(data, "cached_tokens")
    if cached > input_tokens:
        raise InvalidEvent("cached_tokens cannot exceed input_tokens")
    cost = _int(data, "cost_micro_minor", maximum=2**62) if "cost_micro_minor" in data else 0
    output_tokens = _int(data, "output_tokens")
    secret_id = (
        _int(data, "secret_id", minimum=1, maximum=2**63 - 1) if data.get("secret_id") is not None else None
    )
    if refusal and (input_tokens or output_tokens or cost):
        raise InvalidEvent("a refused request carries no tokens and no cost")
    return Event(
        event_id=event_id,
        occurred_at=datetime.fromtimestamp(ended_ms / 1000, tz=UTC),
        organization_id=org_id,
        key_id=key_pk,
        model=model,
        endpoint=_text(data, "endpoint", 32),
        status=_int(data, "status", minimum=0, maximum=999),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached,
        estimated=bool(data.get("estimated", False)),
        cost_micro_minor=cost,
        latency_ms=_optional_float(data, "latency_ms"),
        ttft_ms=_optional_float(data, "ttft_ms"),
        request_id=_text(data, "request_id", 128),
        source="edge",
        refusal=refusal,
        secret_id=secret_id,
    )


def billed_period_for(occurred: datetime, closed: set[date]) -> date:
    """The month whose invoice carries an event: its own, or the next open one if closed."""
    period = occurred.date().replace(day=1)
    while period in closed:
        period = add_months(period, 1)
    return period


_COLUMNS = (
    "event_id, occurred_at, organization_id, key_id, model, endpoint, status, input_tokens, "
    "output_tokens, cached_tokens, estimated, cost_micro_minor, latency_ms, ttft_ms, request_id, "
    "source, billed_period, late, ingested_at, refusal, secret_id"
)
# Binary COPY needs each column's type, in _COLUMNS order.
_COPY_TYPES = (
    "uuid", "timestamptz", "int8", "int8", "varchar", "varchar", "int2", "int8",
    "int8", "int8", "bool", "int8", "float8", "float8", "varchar",
    "varchar", "date", "bool", "timestamptz", "varchar", "int8",
)  # fmt: skip

# A session-local staging table: the batch arrives by binary COPY, the cheapest way in for
# both sides. The statement below empties it (a caller's outer transaction may ingest again);
# ON COMMIT DELETE ROWS truncates its file at commit, so the deleted rows never pile up.
_STAGE = "CREATE TEMP TABLE IF NOT EXISTS usage_event_stage (LIKE usage_event) ON COMMIT DELETE ROWS"
_COPY = f"COPY usage_event_stage ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"

# One statement: move the staged rows into the raw table, skipping events already there,
# and fold only the rows actually inserted into the hourly rollups and keys' and secrets' last use.
# Rows are taken in key order so that concurrent consumers lock them in the same order. The
# conflict target names the key, so the insert fails loudly on a table without it.
_INGEST = f"""
WITH staged AS (
    DELETE FROM usage_event_stage RETURNING *
), inserted AS (
    INSERT INTO usage_event ({_COLUMNS})
    SELECT {_COLUMNS} FROM staged ORDER BY organization_id, event_id, occurred_at
    ON CONFLICT (organization_id, event_id, occurred_at) DO NOTHING
    RETURNING event_id, occurred_at, organization_id, key_id, model, status, input_tokens,
        output_tokens, cached_tokens, estimated, cost_micro_minor, billed_period, refusal, secret_id
), rollup AS (
    INSERT INTO usage_usagerollup (
        organization_id, key_id, model, hour, billed_period, requests, errors, refusals,
        input_tokens, output_tokens, cached_tokens, estimated_requests, cost_micro_minor
    )
    SELECT organization_id, key_id, model, date_trunc('hour', occurred_at, 'UTC'), billed_period,
        count(*), count(*) FILTER (WHERE status >= 400), count(*) FILTER (WHERE refusal <> ''),
        sum(input_tokens), sum(output_tokens),
        sum(cached_tokens), count(*) FILTER (WHERE estimated), sum(cost_micro_minor)
    FROM inserted
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (organization_id, key_id, model, hour, billed_period) DO UPDATE SET
        requests = usage_usagerollup.requests + EXCLUDED.requests,
        errors = usage_usagerollup.errors + EXCLUDED.errors,
        refusals = usage_usagerollup.refusals + EXCLUDED.refusals,
        input_tokens = usage_usagerollup.input_tokens + EXCLUDED.input_tokens,
        output_tokens = usage_usagerollup.output_tokens + EXCLUDED.output_tokens,
        cached_tokens = usage_usagerollup.cached_tokens + EXCLUDED.cached_tokens,
        estimated_requests = usage_usagerollup.estimated_requests + EXCLUDED.estimated_requests,
        cost_micro_minor = usage_usagerollup.cost_micro_minor + EXCLUDED.cost_micro_minor
), last_used AS (
    UPDATE keys_apikey SET last_used_at = batch.used_at
    FROM (
        SELECT key_id, max(occurred_at) AS used_at FROM inserted GROUP BY key_id ORDER BY key_id
    ) AS batch
    WHERE keys_apikey.id = batch.key_id
      AND (keys_apikey.last_used_at IS NULL OR keys_apikey.last_used_at < batch.used_at)
), secret_used AS (
    -- Only a secret of the event's own key: an event cannot move another key's secret.
    UPDATE keys_apikeysecret SET last_used_at = batch.used_at
    FROM (
        SELECT secret_id, key_id, max(occurred_at) AS used_at FROM inserted
        WHERE secret_id IS NOT NULL GROUP BY secret_id, key_id ORDER BY secret_id
    ) AS batch
    WHERE keys_apikeysecret.id = batch.secret_id AND keys_apikeysecret.key_id = batch.key_id
      AND (keys_apikeysecret.last_used_at IS NULL OR keys_apikeysecret.last_used_at < batch.used_at)
)
SELECT organization_id, event_id FROM inserted
"""  # noqa: S608 - no input is formatted into the SQL, only the column list above


def usage_events_ingest(events: list[Event]) -> set[tuple[int, uuid.UUID]]:
    """Insert events and update rollups and keys' and secrets' last use, in one transaction.

    Return the (organization id, event id) pairs that were new; the others were already counted.
    """
    if not events:
        return set()
    # An organization's event id once per batch, whatever timestamps its copies carry.
    unique: dict[tuple[int, uuid.UUID], Event] = {}
    for event in events:
        unique.setdefault((event.organization_id, event.event_id), event)
    now = timezone.now()
    periods: dict[tuple[int, int], tuple[date, bool]] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        closed = closed_periods_locked()
        cursor.execute(_STAGE)
        with cursor.copy(_COPY) as copy:
            copy.set_types(_COPY_TYPES)
            for e in unique.values():
                occurred = e.occurred_at
                month = (occurred.year, occurred.month)
                if month not in periods:
                    period = billed_period_for(occurred, closed)
                    periods[month] = (period, period != occurred.date().replace(day=1))
                period, late = periods[month]
                copy.write_row(
                    (
                        e.event_id, occurred, e.organization_id, e.key_id, e.model, e.endpoint,
                        e.status, e.input_tokens, e.output_tokens, e.cached_tokens, e.estimated,
                        e.cost_micro_minor, e.latency_ms, e.ttft_ms, e.request_id, e.source,
                        period, late, now, e.refusal, e.secret_id,
                    )
                )  # fmt: skip
        cursor.execute(_INGEST)
        return {(organization_id, event_id) for organization_id, event_id in cursor.fetchall()}


def late_window() -> timedelta:
    from django.conf import settings

    return timedelta(days=settings.USAGE_LATE_WINDOW_DAYS)
