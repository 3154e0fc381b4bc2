"""Compare what the edge served (its per-key, per-hour counters in Redis) with Postgres."""

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncHour

from usage.models import UsageEvent

SERVED_PATTERN = "tg:served:*"


@dataclass(frozen=True)
class Difference:
    organization_id: int
    key_id: str
    hour: datetime
    metric: str
    edge: int
    postgres: int


def _edge_counts(client, since: datetime) -> dict[tuple[int, str, datetime], dict[str, int]]:
    counts: dict[tuple[int, str, datetime], dict[str, int]] = defaultdict(
        lambda: {"requests": 0, "tokens": 0}
    )
    since_hour = int(since.timestamp()) // 3600
    for name in client.scan_iter(match=SERVED_PATTERN, count=1000):
        text = name.decode()
        # tg:served:{o:<org>}:<hour>
        try:
            org_part, hour_part = text.removeprefix("tg:served:{o:").split("}:")
            org_id, hour_index = int(org_part), int(hour_part)
        except ValueError:
            continue
        if hour_index < since_hour:
            continue
        hour = datetime.fromtimestamp(hour_index * 3600, tz=UTC)
        for field, value in client.hgetall(name).items():
            key_id, _, metric = field.decode().rpartition(":")
            if metric in ("requests", "tokens"):
                counts[(org_id, key_id, hour)][metric] += int(value)
    return counts


def _postgres_counts(since: datetime) -> dict[tuple[int, str, datetime], dict[str, int]]:
    """What Postgres holds of the edge's traffic: raw events from the edge, per key and hour.

    Events posted through the API have no edge counter, so only ``source = 'edge'`` counts.
    """
    rows = (
        UsageEvent.objects.all_tenants()
        .filter(occurred_at__gte=since, source="edge")
        .annotate(hour=TruncHour("occurred_at"))
        .values("organization_id", "hour", public_id=F("key__public_id"))
        .annotate(requests=Count("event_id"), tokens=Sum(F("input_tokens") + F("output_tokens")))
    )
    return {
        (row["organization_id"], row["public_id"], row["hour"]): {
            "requests": row["requests"],
            "tokens": row["tokens"],
        }
        for row in rows
    }


def usage_reconcile(*, client, since: datetime, until: datetime | None = None) -> list[Difference]:
    """Every (key, hour, metric) where the edge's count and the rollups differ.

    Only edge traffic is compared: keys that only ever posted usage through the API are
    counted in Postgres without an edge counter, so Postgres-only rows are reported too.
    """
    # Counters are per hour: compare the hour that holds ``since`` whole, on both sides.
    since = datetime.fromtimestamp(int(since.timestamp()) // 3600 * 3600, tz=UTC)
    edge = _edge_counts(client, since)
    postgres = _postgres_counts(since)
    differences = []
    for slot in sorted(set(edge) | set(postgres), key=lambda s: (s[0], s[2], s[1])):
        if until is not None and slot[2] >= until:
            continue
        served = edge.get(slot, {"requests": 0, "tokens": 0})
        stored = postgres.get(slot, {"requests": 0, "tokens": 0})
        for metric in ("requests", "tokens"):
            if served[metric] != stored[metric]:
                differences.append(
                    Difference(slot[0], slot[1], slot[2], metric, served[metric], stored[metric])
                )
    return differences
