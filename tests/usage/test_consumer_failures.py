"""Consumers that survive: Postgres and Redis crashes, their own restart, and a Redis that lost
the edge's data plane.

Every store killed here is a real server the test owns (tests/servers.py), killed with SIGKILL
as in a crash; every consumer is a real ``manage.py ingest_usage`` process.
"""

import io
import json
import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import psycopg
import pytest
import redis
from django.conf import settings as django_settings
from django.core.management import call_command

from billing import services as billing_services
from keys.edge_record import SYNCED_KEY
from keys.publication import RESYNC_LOCK
from portal.audit import Actor
from tests.usage.processes import ConsumerProcess, current_database_url, wait
from tests.usage.support import GROUP, STREAM, edge_event, pending, publish, raw_sums, rollup_rows
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

CONSUMER_ARGS = ["--batch-size", "20", "--max-wait-ms", "50"]
POSTGRES_DOWN = "postgres unavailable; retrying with the batch in hand"
POSTGRES_BACK = "postgres is back; the consumer carries on"


def caught_up(client: redis.Redis) -> bool:
    """Whether the group exists, has been delivered the stream's last entry, and holds nothing."""
    try:
        groups = client.xinfo_groups(STREAM)
        last = client.xinfo_stream(STREAM)["last-generated-id"]
    except redis.ResponseError:  # no stream yet
        return False
    return [(group["pending"], group["last-delivered-id"]) for group in groups] == [(0, last)]


def group_exists(client: redis.Redis) -> bool:
    try:
        return [group["name"] for group in client.xinfo_groups(STREAM)] == [GROUP.encode()]
    except redis.ResponseError:
        return False


def chunks(events: list, size: int):
    for start in range(0, len(events), size):
        yield events[start : start + size]


# --- Postgres crashes -------------------------------------------------------------------

SEED = """
import json
from keys import services
from portal.audit import Actor
from tests.factories import make_org, make_user
owner = make_user()
organization = make_org(owner, name="Acme")
keys = [
    services.api_key_create(actor=Actor(user=owner), organization=organization, name=f"key {n}")[0]
    for n in range(3)
]
print(json.dumps([[key.public_id, key.organization_id, key.environment] for key in keys]))
"""

TALLY = """
import json
from tests.usage.support import raw_sums, rollup_rows
from usage.models import UsageEvent
rollups = rollup_rows()
print(json.dumps({
    "event_ids": [str(event_id) for event_id in UsageEvent.unscoped.values_list("event_id", flat=True)],
    "rollup_requests": sum(row["requests"] for row in rollups.values()),
    "rollups_equal_raw": rollups == raw_sums(),
}))
"""


def private_django(database_url: str, redis_url: str, code: str):
    """Run Django code against a private database (``manage.py shell``); return its JSON output."""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=django_settings.BASE_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url,
            "EDGE_REDIS_URL": redis_url,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


class SteadyPublisher(threading.Thread):
    """XADD events at a steady pace, as an edge under constant traffic does."""

    def __init__(self, client: redis.Redis, events: list, *, per_tick: int, tick: float):
        super().__init__(daemon=True)
        self.client, self.events, self.per_tick, self.tick = client, events, per_tick, tick
        self.error: redis.RedisError | None = None

    def run(self):
        try:
            for chunk in chunks(self.events, self.per_tick):
                publish(self.client, *chunk)
                time.sleep(self.tick)
        except redis.RedisError as exc:  # reported by finish()
            self.error = exc

    def finish(self, timeout: float = 20) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the publisher did not finish"
        if self.error:
            raise self.error


def test_a_consumer_waits_out_a_postgres_crash_and_counts_every_event_exactly_once(
    private_postgres, private_redis, tmp_path
):
    keys = [
        SimpleNamespace(public_id=public_id, organization_id=org_id, environment=environment)
        for public_id, org_id, environment in private_django(private_postgres.url, private_redis.url, SEED)
    ]
    client = private_redis.client()
    ingest = ConsumerProcess(
        tmp_path,
        name="ingest-pg",
        database_url=private_postgres.url,
        redis_url=private_redis.url,
        args=CONSUMER_ARGS,
    )
    events = [edge_event(keys[n % 3], input_tokens=n % 5, output_tokens=n % 7) for n in range(1600)]
    try:
        wait(lambda: ingest.serving() and group_exists(client), "the consumer to start", [ingest])
        publisher = SteadyPublisher(client, events, per_tick=10, tick=0.025)  # 400 events a second
        publisher.start()
        wait(
            lambda: ingest.metric("tollgate_ingest_events_inserted_total") >= 100,
            "ingestion under way",
            [ingest],
        )

        private_postgres.kill()
        time.sleep(0.5)  # events keep coming; the consumer holds a batch it cannot insert
        assert ingest.alive
        private_postgres.restart()
        publisher.finish()

        wait(lambda: caught_up(client), "every event ingested and acknowledged", [ingest])
        outages = ingest.metric('tollgate_ingest_store_outages_total{store="postgres"}')
        redis_outages = ingest.metric('tollgate_ingest_store_outages_total{store="redis"}')
    finally:
        code = ingest.terminate()

    assert code == 0
    tally = private_django(private_postgres.url, private_redis.url, TALLY)
    assert len(tally["event_ids"]) == 1600
    assert sorted(tally["event_ids"]) == sorted(event["event_id"] for event in events)
    assert tally["rollup_requests"] == 1600
    assert tally["rollups_equal_raw"] is True
    assert (outages, redis_outages) == (1.0, 0.0)
    messages = ingest.messages()
    assert (messages.count(POSTGRES_DOWN), messages.count(POSTGRES_BACK)) == (1, 1)


# --- Redis crashes ----------------------------------------------------------------------


def ingest_across_a_redis_crash(server, tenant, tmp_path) -> tuple[list, list, dict]:
    """Publish, SIGKILL Redis mid-ingestion, restart it, publish again; wait for the consumer.

    Return the events published before and after the crash, and the consumer's counters.
    """
    keys = [tenant.key(f"key {n}") for n in range(3)]
    ingest = ConsumerProcess(
        tmp_path,
        name="ingest-redis",
        database_url=current_database_url(),
        redis_url=server.url,
        args=CONSUMER_ARGS,
    )
    before = [edge_event(keys[n % 3], input_tokens=n % 5) for n in range(400)]
    after = [edge_event(keys[n % 3], output_tokens=n % 5) for n in range(400)]
    try:
        client = server.client()
        wait(lambda: ingest.serving() and group_exists(client), "the consumer to start", [ingest])
        for chunk in chunks(before, 20):
            publish(client, *chunk)
            time.sleep(0.01)

        server.kill()  # the consumer is still busy with the events just published
        time.sleep(0.5)
        assert ingest.alive
        server.restart()

        client = server.client()
        for chunk in chunks(after, 20):
            publish(client, *chunk)
            time.sleep(0.01)
        wait(lambda: caught_up(client), "every event after the restart acknowledged", [ingest])
        assert pending(client) == {}
        counters = {
            "group_recreated": ingest.metric("tollgate_ingest_group_recreated_total"),
            "duplicates": ingest.metric("tollgate_ingest_events_duplicate_total"),
        }
    finally:
        code = ingest.terminate()
    assert code == 0
    assert "ingest_usage: stopped after finishing its batch" in ingest.output()
    return before, after, counters


def ingested_ids() -> list[str]:
    return [str(event_id) for event_id in UsageEvent.unscoped.values_list("event_id", flat=True)]


def test_a_redis_restarted_empty_loses_only_what_it_held_and_the_consumer_makes_its_group_again(
    private_redis, tenant, tmp_path, raw_events_cleared
):
    before, after, counters = ingest_across_a_redis_crash(private_redis, tenant, tmp_path)

    ingested = ingested_ids()
    assert len(ingested) == len(set(ingested))
    assert {event["event_id"] for event in after} <= set(ingested)
    assert set(ingested) <= {event["event_id"] for event in before + after}
    assert rollup_rows() == raw_sums()
    assert counters["group_recreated"] == 1.0


def test_with_an_append_only_file_every_event_survives_a_redis_crash_and_counts_once(
    private_redis_aof, tenant, tmp_path, raw_events_cleared
):
    before, after, counters = ingest_across_a_redis_crash(private_redis_aof, tenant, tmp_path)

    ingested = ingested_ids()
    assert len(ingested) == 800
    assert sorted(ingested) == sorted(event["event_id"] for event in before + after)
    assert sum(row["requests"] for row in rollup_rows().values()) == 800
    assert rollup_rows() == raw_sums()
    assert counters["group_recreated"] == 0.0


# --- the consumer's own restart ---------------------------------------------------------


def waiting_on_a_lock() -> bool:
    """Whether a session of the test database waits for a lock (the consumer's insert)."""
    with psycopg.connect(current_database_url(), autocommit=True) as conn:
        [(count,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchall()
    return count > 0


def test_a_consumer_killed_with_pending_entries_takes_them_back_at_once_under_its_name(
    tenant, redis_client, settings, tmp_path, raw_events_cleared
):
    key = tenant.key()
    events = [edge_event(key, input_tokens=n) for n in range(1, 31)]
    args = [*CONSUMER_ARGS, "--claim-idle-ms", "60000", "--no-edge-resync"]

    def start() -> ConsumerProcess:
        return ConsumerProcess(
            tmp_path,
            name="ingest-stable",
            database_url=current_database_url(),
            redis_url=settings.REDIS_URL,
            args=args,
        )

    first = start()
    blocker = psycopg.connect(current_database_url())
    try:
        wait(lambda: first.serving() and group_exists(redis_client), "the consumer to start", [first])
        # Its insert waits on this lock: the consumer holds a batch it has read, not acknowledged.
        blocker.execute("LOCK TABLE usage_event IN ACCESS EXCLUSIVE MODE")
        publish(redis_client, *events)
        wait(lambda: waiting_on_a_lock(), "the consumer's insert to wait", [first])
        held = pending(redis_client)
    finally:
        first.kill()  # SIGKILL while it waits: no chance to finish or acknowledge
        blocker.rollback()
        blocker.close()
    assert 0 < held["ingest-stable"] <= 20
    assert pending(redis_client) == held

    second = start()
    try:
        seconds = wait(
            lambda: pending(redis_client) == {} and UsageEvent.unscoped.count() == 30,
            "the restarted consumer to ingest the entries",
            [second],
        )
        inserted = second.metric("tollgate_ingest_events_inserted_total")
    finally:
        second.terminate()

    # Start-up included, far below the 60 s after which another consumer would claim them.
    assert seconds < 15
    assert inserted == 30.0
    assert sum(UsageEvent.unscoped.values_list("input_tokens", flat=True)) == sum(range(1, 31))
    assert rollup_rows() == raw_sums()


# --- the edge's data plane --------------------------------------------------------------


def data_plane(client: redis.Redis) -> dict[str, tuple[dict, bool]]:
    """Return every key record and price: the parsed value and whether it expires."""
    return {
        name.decode(): (json.loads(client.get(name)), client.ttl(name) > 0)
        for pattern in ("tg:key:*", "tg:price:*")
        for name in client.scan_iter(match=pattern)
    }


def test_after_a_flushall_one_of_two_consumers_republishes_what_edge_sync_writes(
    private_redis, tenant, settings, tmp_path
):
    settings.EDGE_REDIS_URL = private_redis.url  # the portal publishes where the consumers watch
    tenant.key("build")
    tenant.key("batch")
    billing_services.model_price_set(
        actor=Actor(user=tenant.owner),
        model="mock-model",
        input_per_mtok_minor="250",
        output_per_mtok_minor="1000",
    )
    client = private_redis.client()
    call_command("edge_sync", stdout=io.StringIO())
    expected = data_plane(client)
    assert sorted(name.split(":")[1] for name in expected) == ["key", "key", "price"]
    consumers = [
        ConsumerProcess(
            tmp_path,
            name=name,
            database_url=current_database_url(),
            redis_url=private_redis.url,
            args=CONSUMER_ARGS,
        )
        for name in ("ingest-1", "ingest-2")
    ]
    try:
        wait(
            lambda: all(c.serving() for c in consumers) and group_exists(client),
            "both consumers to start",
            consumers,
        )
        time.sleep(1.1)  # each has looked for the marker at least once; edge_sync wrote it

        client.flushall()
        flushed_at = int(time.time())
        seconds = wait(lambda: client.exists(SYNCED_KEY), "the synced marker again", consumers)
        time.sleep(1.1)  # both have looked again since
        resyncs = sorted(c.metric("tollgate_ingest_edge_resyncs_total") for c in consumers)
    finally:
        codes = [c.terminate() for c in consumers]

    assert codes == [0, 0]
    assert seconds < 3
    assert data_plane(client) == expected
    marker = json.loads(client.get(SYNCED_KEY))
    assert marker == {"v": 1, "at": marker["at"]}
    assert flushed_at <= marker["at"] <= time.time()
    assert client.ttl(SYNCED_KEY) == -1
    assert resyncs == [0.0, 1.0]
    assert client.exists(RESYNC_LOCK) == 0
    assert group_exists(client)
