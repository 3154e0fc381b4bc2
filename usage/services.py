"""Usage posted by another gateway through the API: validated per item, ingested exactly once."""

import uuid
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from usage.ingest import Event, KeyDirectory, late_window, usage_events_ingest

MAX_BATCH = 1000
ADVISORY_LOCK_CLASS = 7401  # pg_advisory_xact_lock(class, organization id) for posted usage
FUTURE_TOLERANCE_SECONDS = 300


def _reject(event_id, reason: str) -> dict:
    return {
        "event_id": str(event_id) if event_id is not None else None,
        "status": "rejected",
        "reason": reason,
    }


def usage_events_post(*, organization, items: list[dict]) -> list[dict]:
    """Ingest up to 1,000 events for the organization; return one result per item, in order.

    Each item is ``accepted`` (counted now), ``duplicate`` (the organization already had its
    event_id counted; not an error) or ``rejected`` with the reason (nothing stored). Another
    organization's event with the same id is no duplicate: ids are unique per organization.
    """
    now = timezone.now()
    earliest = now - late_window()
    latest = now + timezone.timedelta(seconds=FUTURE_TOLERANCE_SECONDS)
    public_ids = {item.get("key_id") for item in items if isinstance(item.get("key_id"), str)}
    keys = {
        public_id: value
        for public_id, value in KeyDirectory().resolve(public_ids).items()
        if value[1] == organization.pk  # another organization's key looks like no key at all
    }
    results: list[dict | None] = [None] * len(items)
    candidates: list[tuple[int, Event]] = []
    seen: set[uuid.UUID] = set()
    for index, item in enumerate(items):
        event_id = item["event_id"]
        occurred: datetime = item["timestamp"]
        if occurred > latest:
            results[index] = _reject(event_id, "timestamp is more than 5 minutes in the future")
            continue
        if occurred < earliest:
            results[index] = _reject(
                event_id, f"timestamp is older than the late window ({late_window().days} days)"
            )
            continue
        key = keys.get(item["key_id"])
        if key is None:
            results[index] = _reject(event_id, f"unknown key_id {item['key_id']!r}")
            continue
        if item["cached_tokens"] > item["input_tokens"]:
            results[index] = _reject(event_id, "cached_tokens cannot exceed input_tokens")
            continue
        if event_id in seen:
            results[index] = {"event_id": str(event_id), "status": "duplicate"}
            continue
        seen.add(event_id)
        candidates.append(
            (
                index,
                Event(
                    event_id=event_id,
                    occurred_at=occurred,
                    organization_id=organization.pk,
                    key_id=key[0],
                    model=item["model"],
                    endpoint=item.get("endpoint") or "",
                    status=item.get("status", 200),
                    input_tokens=item["input_tokens"],
                    output_tokens=item["output_tokens"],
                    cached_tokens=item["cached_tokens"],
                    estimated=item.get("estimated", False),
                    cost_micro_minor=0,
                    latency_ms=item.get("latency_ms"),
                    ttft_ms=None,
                    request_id=item.get("request_id") or "",
                    source="api",
                ),
            )
        )
    # An event id counts once whatever timestamp a retry carries: look it up in the
    # organization's rows across partitions (the raw key leads with organization and id).
    # The organization's advisory lock makes look-up and insert one step for concurrent posts.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK_CLASS, organization.pk])
        cursor.execute(
            "SELECT event_id FROM usage_event WHERE organization_id = %s AND event_id = ANY(%s::uuid[])",
            [organization.pk, [event.event_id for _, event in candidates]],
        )
        existing = {row[0] for row in cursor.fetchall()}
        fresh = [(index, event) for index, event in candidates if event.event_id not in existing]
        inserted = usage_events_ingest([event for _, event in fresh])
    for index, event in candidates:
        status = "accepted" if (organization.pk, event.event_id) in inserted else "duplicate"
        results[index] = {"event_id": str(event.event_id), "status": status}
    return results
