"""``manage.py usage_reconcile``: the edge's served counters in Redis against the rollups."""

import io
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from tests.usage.support import STREAM, edge_event, ingest

pytestmark = [pytest.mark.django_db, pytest.mark.clock]


def served(client, event: dict) -> None:
    """Count a served request in Redis exactly as the edge does when it publishes the event."""
    hour = event["ended_at_ms"] // 3_600_000
    counter = f"tg:served:{{o:{event['org_id']}}}:{hour}"
    with client.pipeline(transaction=False) as pipe:
        pipe.hincrby(counter, f"{event['key_id']}:requests", 1)
        pipe.hincrby(counter, f"{event['key_id']}:tokens", event["input_tokens"] + event["output_tokens"])
        pipe.expire(counter, 8 * 24 * 3600)
        pipe.execute()


def serve_and_ingest(client, *events: dict) -> None:
    for event in events:
        served(client, event)
    ingest(client, *events)


def reconcile(*args: str) -> tuple[str, int]:
    """Run the command; return its output and exit status."""
    out = io.StringIO()
    try:
        call_command("usage_reconcile", *args, stdout=out)
    except SystemExit as exit_:
        return out.getvalue(), exit_.code
    return out.getvalue(), 0


def hour_text(moment: datetime) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H}:00"


@pytest.fixture
def traffic(tenant, other_tenant, redis_client):
    """Served and ingested traffic of two organizations over the last hours."""
    build, batch, foreign = tenant.key("build"), tenant.key("batch"), other_tenant.key("foreign")
    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    events = [
        edge_event(build, ended_at=hour - timedelta(hours=2, minutes=-10), input_tokens=10, output_tokens=5),
        edge_event(build, ended_at=hour - timedelta(hours=2, minutes=-20), input_tokens=1, output_tokens=2),
        edge_event(
            build, ended_at=hour - timedelta(hours=5), model="big-model", input_tokens=7, output_tokens=0
        ),
        edge_event(batch, ended_at=hour - timedelta(hours=2), status=502, input_tokens=0, output_tokens=0),
        edge_event(foreign, ended_at=hour - timedelta(hours=3), input_tokens=40, output_tokens=2),
    ]
    serve_and_ingest(redis_client, *events)
    return {"build": build, "batch": batch, "foreign": foreign, "events": events, "now": now, "hour": hour}


def test_matching_counters_report_no_difference(traffic):
    output, status = reconcile("--since", "24h", "--settle-minutes", "0")

    assert status == 0
    assert output.startswith("usage_reconcile: 0 difference(s) since ")
    assert output.count("\n") == 1


def test_an_edge_counter_that_differs_is_reported_and_the_command_fails(traffic, redis_client):
    build = traffic["build"]
    first = traffic["events"][0]
    counter = f"tg:served:{{o:{build.organization_id}}}:{first['ended_at_ms'] // 3_600_000}"
    redis_client.hincrby(counter, f"{build.public_id}:tokens", 4)

    output, status = reconcile("--since", "24h", "--settle-minutes", "0")

    assert status == 1
    lines = output.splitlines()
    assert lines[0] == (
        f"org {build.organization_id} key {build.public_id} "
        f"{hour_text(traffic['hour'] - timedelta(hours=2))} tokens: edge 22 postgres 18 (diff +4)"
    )
    assert lines[1].startswith("usage_reconcile: 1 difference(s) since ")
    assert len(lines) == 2


def test_served_events_that_never_reached_postgres_are_reported(traffic, tenant, redis_client):
    key = tenant.key("lost")
    lost = edge_event(key, ended_at=traffic["hour"] - timedelta(minutes=50), input_tokens=3, output_tokens=3)
    served(redis_client, lost)
    redis_client.xadd(STREAM, {"data": orjson.dumps(lost)})  # in the stream, not yet ingested

    output, status = reconcile("--since", "24h", "--settle-minutes", "0")

    assert status == 1
    hour = hour_text(traffic["hour"] - timedelta(hours=1))
    assert output.splitlines()[:2] == [
        f"org {tenant.org.pk} key {key.public_id} {hour} requests: edge 1 postgres 0 (diff +1)",
        f"org {tenant.org.pk} key {key.public_id} {hour} tokens: edge 6 postgres 0 (diff +6)",
    ]
    assert "usage_reconcile: 2 difference(s) since " in output


def test_hours_still_settling_and_hours_before_since_are_not_compared(traffic, tenant, redis_client):
    key = tenant.key("busy")
    now = traffic["now"]
    served(redis_client, edge_event(key, ended_at=now))  # this hour: the consumer may not have run yet
    served(redis_client, edge_event(key, ended_at=now - timedelta(hours=30)))  # before --since

    assert reconcile("--since", "24h")[1] == 0
    output, status = reconcile("--since", "24h", "--settle-minutes", "0")
    assert status == 1
    assert "usage_reconcile: 2 difference(s) since " in output
    assert reconcile("--since", "2d", "--settle-minutes", "0")[1] == 1
    assert "usage_reconcile: 4 difference(s) since " in reconcile("--since", "2d", "--settle-minutes", "0")[0]


def test_since_in_the_middle_of_an_hour_compares_that_whole_hour_on_both_sides(tenant, redis_client):
    key = tenant.key()
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    serve_and_ingest(redis_client, edge_event(key, ended_at=hour + timedelta(minutes=45)))

    output, status = reconcile("--since", (hour + timedelta(minutes=30)).isoformat(), "--settle-minutes", "0")

    assert (output.splitlines()[0].split(" since ")[0], status) == ("usage_reconcile: 0 difference(s)", 0)


def test_a_bad_since_is_refused():
    with pytest.raises(CommandError, match="--since must be an ISO time or like 24h / 7d, got 'yesterday'"):
        call_command("usage_reconcile", "--since", "yesterday")
