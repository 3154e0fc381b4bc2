"""The usage stream consumer: tg:usage → raw events and rollups in Postgres, exactly once.

Everything is real: the events are XADDed to the test's Redis database in the edge's format,
the consumer reads them in its consumer group and writes to the test's Postgres.
"""

import time
import uuid
from datetime import timedelta

import orjson
import pytest
import redis
from django.utils import timezone

from keys.models import ApiKey
from tests.usage.processes import ConsumerProcess, current_database_url, wait
from tests.usage.support import (
    DEAD_STREAM,
    GROUP,
    STREAM,
    at_ms,
    edge_event,
    pending,
    publish,
    raw_sums,
    rollup_rows,
)
from usage.consumer import UsageConsumer
from usage.models import UsageEvent, UsageRollup

pytestmark = pytest.mark.django_db


def consumer(client, name: str = "ingest-a", **options) -> UsageConsumer:
    options.setdefault("max_wait_ms", 50)
    result = UsageConsumer(client, name=name, **options)
    result.ensure_group()
    return result


def deliver(client, name: str, count: int) -> list:
    """Read entries for a consumer of the group, as any consumer does, without acknowledging."""
    [(_stream, entries)] = client.xreadgroup(GROUP, name, {STREAM: ">"}, count=count)
    return entries


def consumer_names(client) -> set[str]:
    return {entry["name"].decode() for entry in client.xinfo_consumers(STREAM, GROUP)}


class AcknowledgementLost(redis.Redis):
    """A client whose pipelines never reach Redis: the consumer dies after its commit."""

    def pipeline(self, *args, **kwargs):
        pipe = super().pipeline(*args, **kwargs)

        def execute(*_args, **_kwargs):
            raise redis.ConnectionError("connection lost before the acknowledgement")

        pipe.execute = execute
        return pipe


@pytest.mark.clock
def test_rollups_equal_the_sum_of_raw_events_per_key_model_and_hour(tenant, other_tenant, redis_client):
    build, batch = tenant.key("build"), tenant.key("batch")
    foreign = other_tenant.key("foreign")
    base = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    events = [
        edge_event(build, ended_at=base + timedelta(minutes=5), input_tokens=10, output_tokens=16),
        edge_event(
            build, ended_at=base + timedelta(minutes=59), input_tokens=7, output_tokens=3, cached_tokens=2
        ),
        edge_event(build, ended_at=base + timedelta(minutes=30), model="big-model", input_tokens=100),
        edge_event(build, ended_at=base + timedelta(hours=1, minutes=1), input_tokens=1, output_tokens=1),
        edge_event(
            batch,
            ended_at=base + timedelta(minutes=10),
            status=500,
            input_tokens=0,
            output_tokens=0,
            cost_micro_minor=0,
        ),
        edge_event(
            batch,
            ended_at=base + timedelta(minutes=11),
            estimated=True,
            input_tokens=40,
            output_tokens=9,
            cost_micro_minor=1234,
        ),
        edge_event(foreign, ended_at=base + timedelta(minutes=12), input_tokens=5, output_tokens=6),
    ]
    publish(redis_client, *events)

    result = consumer(redis_client).step()

    assert (result.inserted, result.duplicates, result.dead, len(result.acked)) == (7, 0, 0, 7)
    assert UsageEvent.unscoped.count() == 7
    period = base.date().replace(day=1)
    next_hour_period = (base + timedelta(hours=1)).date().replace(day=1)
    expected = {
        (tenant.org.pk, build.pk, "mock-model", base, period): {
            "requests": 2,
            "errors": 0,
            "refusals": 0,
            "input_tokens": 17,
            "output_tokens": 19,
            "cached_tokens": 2,
            "estimated_requests": 0,
            "cost_micro_minor": 0,
        },
        (tenant.org.pk, build.pk, "big-model", base, period): {
            "requests": 1,
            "errors": 0,
            "refusals": 0,
            "input_tokens": 100,
            "output_tokens": 16,
            "cached_tokens": 0,
            "estimated_requests": 0,
            "cost_micro_minor": 0,
        },
        # The next hour may open a new month (the 1st, just after midnight): its own period.
        (tenant.org.pk, build.pk, "mock-model", base + timedelta(hours=1), next_hour_period): {
            "requests": 1,
            "errors": 0,
            "refusals": 0,
            "input_tokens": 1,
            "output_tokens": 1,
            "cached_tokens": 0,
            "estimated_requests": 0,
            "cost_micro_minor": 0,
        },
        (tenant.org.pk, batch.pk, "mock-model", base, period): {
            "requests": 2,
            "errors": 1,
            "refusals": 0,
            "input_tokens": 40,
            "output_tokens": 9,
            "cached_tokens": 0,
            "estimated_requests": 1,
            "cost_micro_minor": 1234,
        },
        (other_tenant.org.pk, foreign.pk, "mock-model", base, period): {
            "requests": 1,
            "errors": 0,
            "refusals": 0,
            "input_tokens": 5,
            "output_tokens": 6,
            "cached_tokens": 0,
            "estimated_requests": 0,
            "cost_micro_minor": 0,
        },
    }
    assert rollup_rows() == expected
    assert raw_sums() == expected
    assert pending(redis_client) == {}


def test_raw_rows_keep_every_field_of_the_edge_event(tenant, redis_client):
    key = tenant.key()
    event = edge_event(
        key,
        endpoint="completions",
        status=201,
        input_tokens=11,
        output_tokens=22,
        cached_tokens=3,
        cost_micro_minor=77,
        latency_ms=41.25,
        ttft_ms=9.5,
        request_id="req-abc",
    )
    publish(redis_client, event)

    consumer(redis_client).step()

    row = UsageEvent.unscoped.values().get()
    assert row == {
        "event_id": uuid.UUID(event["event_id"]),
        "occurred_at": at_ms(event["ended_at_ms"]),
        "organization_id": tenant.org.pk,
        "key_id": key.pk,
        "model": "mock-model",
        "endpoint": "completions",
        "status": 201,
        "input_tokens": 11,
        "output_tokens": 22,
        "cached_tokens": 3,
        "estimated": False,
        "cost_micro_minor": 77,
        "latency_ms": 41.25,
        "ttft_ms": 9.5,
        "request_id": "req-abc",
        "source": "edge",
        "billed_period": at_ms(event["ended_at_ms"]).date().replace(day=1),
        "late": False,
        "ingested_at": row["ingested_at"],
        "refusal": "",
        "secret_id": None,
    }
    assert timezone.now() - timedelta(seconds=30) < row["ingested_at"] <= timezone.now()


def per_organization(tenant, other_tenant) -> tuple[ApiKey, ApiKey, dict, dict]:
    """Two organizations' edge events that share an id and a time, as a replay could make them."""
    acme, globex = tenant.key(), other_tenant.key()
    ended = timezone.now().replace(microsecond=0) - timedelta(minutes=2)
    ours = edge_event(acme, ended_at=ended, input_tokens=5, output_tokens=6)
    theirs = edge_event(globex, ended_at=ended, input_tokens=70, output_tokens=80, event_id=ours["event_id"])
    return acme, globex, ours, theirs


def both_counted_once(acme: ApiKey, globex: ApiKey, ours: dict, theirs: dict) -> None:
    event_id = uuid.UUID(ours["event_id"])
    assert sorted(
        UsageEvent.unscoped.values_list(
            "organization_id", "event_id", "key_id", "input_tokens", "output_tokens"
        )
    ) == sorted(
        [
            (acme.organization_id, event_id, acme.pk, 5, 6),
            (globex.organization_id, event_id, globex.pk, 70, 80),
        ]
    )
    hour = at_ms(ours["ended_at_ms"]).replace(minute=0, second=0)
    period = hour.date().replace(day=1)
    totals = dict.fromkeys(
        ("errors", "refusals", "cached_tokens", "estimated_requests", "cost_micro_minor"), 0
    )
    assert rollup_rows() == {
        (acme.organization_id, acme.pk, "mock-model", hour, period): {
            **totals,
            "requests": 1,
            "input_tokens": 5,
            "output_tokens": 6,
        },
        (globex.organization_id, globex.pk, "mock-model", hour, period): {
            **totals,
            "requests": 1,
            "input_tokens": 70,
            "output_tokens": 80,
        },
    }


@pytest.mark.clock
def test_two_organizations_events_with_one_id_in_one_batch_are_each_counted_once(
    tenant, other_tenant, redis_client
):
    acme, globex, ours, theirs = per_organization(tenant, other_tenant)
    publish(redis_client, ours, theirs)

    first = consumer(redis_client).step()
    publish(redis_client, theirs, ours)  # both redelivered, as a replayed spool would
    again = consumer(redis_client).step()

    assert (first.inserted, first.duplicates, first.dead) == (2, 0, 0)
    assert (again.inserted, again.duplicates, again.dead) == (0, 2, 0)
    both_counted_once(acme, globex, ours, theirs)
    assert pending(redis_client) == {}


@pytest.mark.clock
def test_an_id_another_organization_already_counted_is_no_duplicate_on_the_stream(
    tenant, other_tenant, redis_client
):
    acme, globex, ours, theirs = per_organization(tenant, other_tenant)
    publish(redis_client, ours)
    first = consumer(redis_client).step()

    publish(redis_client, theirs, ours)
    second = consumer(redis_client).step()

    assert (first.inserted, first.duplicates) == (1, 0)
    assert (second.inserted, second.duplicates) == (1, 1)
    both_counted_once(acme, globex, ours, theirs)


def test_events_redelivered_after_a_consumer_dies_between_commit_and_ack_count_once(
    tenant, redis_client, settings
):
    key = tenant.key()
    events = [edge_event(key, input_tokens=n, output_tokens=1) for n in range(1, 6)]
    ids = publish(redis_client, *events)
    dying = consumer(AcknowledgementLost.from_url(settings.REDIS_URL), name="ingest-dies")

    with pytest.raises(redis.ConnectionError, match="connection lost before the acknowledgement"):
        dying.step()

    # The transaction committed: the events are counted, but Redis still holds them as pending.
    assert UsageEvent.unscoped.count() == 5
    before = rollup_rows()
    assert [row["requests"] for row in before.values()] == [5]
    assert pending(redis_client) == {"ingest-dies": 5}

    survivor = consumer(redis_client, name="ingest-survivor", claim_idle_ms=1)
    time.sleep(0.01)
    result = survivor.step()

    assert (result.inserted, result.duplicates, result.dead) == (0, 5, 0)
    assert sorted(result.acked) == sorted(ids)
    assert UsageEvent.unscoped.count() == 5
    assert rollup_rows() == before
    assert list(before.values())[0]["input_tokens"] == 15
    assert pending(redis_client) == {}


def test_a_message_read_twice_by_two_consumers_is_counted_once(tenant, redis_client):
    key = tenant.key()
    ids = publish(redis_client, *(edge_event(key) for _ in range(3)))
    first = consumer(redis_client, name="ingest-first")
    messages = deliver(redis_client, "ingest-first", 10)
    assert [message_id for message_id, _fields in messages] == ids

    second = consumer(redis_client, name="ingest-second", claim_idle_ms=1)
    time.sleep(0.01)
    claimed = second.step()  # takes the messages over while the first still holds them
    late = first.process(messages)

    assert (claimed.inserted, claimed.duplicates) == (3, 0)
    assert (late.inserted, late.duplicates) == (0, 3)
    assert UsageEvent.unscoped.count() == 3
    assert [row["requests"] for row in rollup_rows().values()] == [3]


def test_a_poison_event_is_dead_lettered_with_its_reason_and_the_rest_of_the_batch_is_ingested(
    tenant, other_tenant, redis_client
):
    key = tenant.key()
    first, last = edge_event(key, input_tokens=3), edge_event(key, input_tokens=4)
    poison = [
        b"{not json",
        orjson.dumps(edge_event(key, key_id="key_00000000000000000000000000")),
        orjson.dumps(edge_event(key, org_id=other_tenant.org.pk)),
        orjson.dumps(edge_event(key, output_tokens=-5)),
        orjson.dumps(edge_event(key, v=2)),
        orjson.dumps({"event_id": "x"}),
    ]
    ids = publish(redis_client, first, *poison, last)

    result = consumer(redis_client, name="ingest-a").step()

    assert (result.inserted, result.duplicates, result.dead, len(result.acked)) == (2, 0, 6, 8)
    assert sorted(UsageEvent.unscoped.values_list("input_tokens", flat=True)) == [3, 4]
    dead = [
        {name.decode(): value.decode() for name, value in fields.items()}
        for _id, fields in redis_client.xrange(DEAD_STREAM)
    ]
    reasons = [
        "not JSON in field 'data'",
        "unknown key_id 'key_00000000000000000000000000'",
        f"org_id {other_tenant.org.pk} does not own key {key.public_id!r}",
        "output_tokens must be an integer from 0 to 1000000000000",
        "not a version 1 usage event",
        "not a version 1 usage event",
    ]
    assert dead == [
        {"data": raw.decode(), "reason": reason, "message_id": message_id.decode(), "consumer": "ingest-a"}
        for raw, reason, message_id in zip(poison, reasons, ids[1:-1], strict=True)
    ]
    assert pending(redis_client) == {}
    # The stream keeps flowing: the next event is ingested by the next step.
    publish(redis_client, edge_event(key, input_tokens=5))
    assert consumer(redis_client, name="ingest-a").step().inserted == 1
    assert UsageEvent.unscoped.count() == 3


def test_trimming_drops_acknowledged_entries_and_keeps_pending_and_unread_ones(tenant, redis_client):
    key = tenant.key()
    worker = consumer(redis_client, name="ingest-worker")
    ids = publish(redis_client, *(edge_event(key) for _ in range(3)))
    assert len(worker.process(deliver(redis_client, "ingest-worker", 3)).acked) == 3
    ids += publish(redis_client, edge_event(key))
    [(stalled_id, _fields)] = deliver(redis_client, "ingest-stalled", 1)  # never acknowledged
    ids += publish(redis_client, *(edge_event(key) for _ in range(2)))
    assert len(worker.process(deliver(redis_client, "ingest-worker", 2)).acked) == 2
    ids += publish(redis_client, edge_event(key))  # not delivered to anyone yet

    trimmed = worker.trim()

    assert trimmed == 3
    assert [entry_id for entry_id, _fields in redis_client.xrange(STREAM)] == ids[3:]
    assert stalled_id == ids[3]
    assert pending(redis_client) == {"ingest-stalled": 1}
    assert worker.trim() == 0

    # The pending entry is still there to be claimed, and the unread one to be read.
    rescuer = consumer(redis_client, name="ingest-rescuer", claim_idle_ms=1)
    time.sleep(0.01)
    assert rescuer.step().acked == [stalled_id]
    assert rescuer.step().acked == [ids[6]]
    assert UsageEvent.unscoped.count() == 7
    assert pending(redis_client) == {}
    rescuer.trim()
    assert [entry_id for entry_id, _fields in redis_client.xrange(STREAM)] == [ids[6]]


def test_last_used_at_follows_the_newest_event_and_never_moves_back(tenant, redis_client):
    key, idle = tenant.key("used"), tenant.key("idle")
    now = timezone.now().replace(microsecond=0)
    newest = now - timedelta(minutes=2)
    publish(
        redis_client,
        edge_event(key, ended_at=now - timedelta(minutes=9)),
        edge_event(key, ended_at=newest),
        edge_event(key, ended_at=now - timedelta(minutes=5)),
    )
    worker = consumer(redis_client)
    worker.step()
    assert ApiKey.unscoped.get(pk=key.pk).last_used_at == newest
    assert ApiKey.unscoped.get(pk=idle.pk).last_used_at is None

    publish(redis_client, edge_event(key, ended_at=now - timedelta(hours=1)))  # older, arrives later
    assert worker.step().inserted == 1
    assert ApiKey.unscoped.get(pk=key.pk).last_used_at == newest

    publish(redis_client, edge_event(key, ended_at=now - timedelta(seconds=30)))
    worker.step()
    assert ApiKey.unscoped.get(pk=key.pk).last_used_at == now - timedelta(seconds=30)


def test_dead_consumers_are_removed_but_never_the_live_one_nor_one_holding_entries(tenant, redis_client):
    key = tenant.key()
    publish(redis_client, edge_event(key))
    live = consumer(redis_client, name="ingest-live", dead_consumer_idle_ms=300)
    redis_client.xgroup_createconsumer(STREAM, GROUP, "ingest-gone")
    deliver(redis_client, "ingest-holding", 1)  # a consumer that died holding an entry
    time.sleep(0.4)
    redis_client.xgroup_createconsumer(STREAM, GROUP, "ingest-recent")

    live.step()  # its first step does the housekeeping

    assert consumer_names(redis_client) == {"ingest-live", "ingest-holding", "ingest-recent"}
    # Idle past the threshold now, the live consumer itself is still kept; its entry is claimed, not dropped.
    time.sleep(0.4)
    assert live.consumers_remove_dead() == ["ingest-recent"]
    assert consumer_names(redis_client) == {"ingest-live", "ingest-holding"}
    assert pending(redis_client) == {"ingest-holding": 1}


# --- two real consumer processes ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_consumer_processes_count_every_event_once_and_stop_after_their_batch_on_sigterm(
    tenant, redis_client, settings, tmp_path, raw_events_cleared
):
    keys = [tenant.key(f"key {n}") for n in range(4)]
    consumers = [
        ConsumerProcess(
            tmp_path,
            name=name,
            database_url=current_database_url(),
            redis_url=settings.REDIS_URL,
            args=["--batch-size", "100", "--max-wait-ms", "50"],
        )
        for name in ("ingest-1", "ingest-2")
    ]
    try:
        # Both consumers are up (metrics served, group created) before the events arrive.
        wait(
            lambda: (
                all(c.serving() for c in consumers)
                and redis_client.exists(STREAM)
                and [group["name"] for group in redis_client.xinfo_groups(STREAM)] == [GROUP.encode()]
            ),
            "both consumers to start",
            consumers,
            timeout=60,
        )
        base = timezone.now() - timedelta(hours=2)
        events = [
            edge_event(
                keys[n % 4],
                ended_at=base + timedelta(seconds=n),
                input_tokens=n % 7,
                output_tokens=n % 11,
            )
            for n in range(5000)
        ]
        # First half: both consumers share it; their counters add up to exactly the events.
        for start in range(0, 2500, 500):
            publish(redis_client, *events[start : start + 500])
        wait(lambda: UsageEvent.unscoped.count() == 2500, "2,500 raw events", consumers, timeout=60)
        wait(lambda: pending(redis_client) == {}, "every entry acknowledged", consumers, timeout=60)
        inserted = [c.metric("tollgate_ingest_events_inserted_total") for c in consumers]
        duplicates = [c.metric("tollgate_ingest_events_duplicate_total") for c in consumers]

        # Second half: SIGTERM arrives while the consumers are busy with it.
        for start in range(2500, 5000, 500):
            publish(redis_client, *events[start : start + 500])
        wait(
            lambda: UsageEvent.unscoped.count() > 2600, "ingestion of the second half", consumers, timeout=60
        )
    finally:
        for c in consumers:
            c.signal_stop()  # both at once, while they are busy
        codes = [c.terminate() for c in consumers]

    assert codes == [0, 0]
    for c in consumers:
        assert "ingest_usage: stopped after finishing its batch" in c.output()
    assert sum(inserted) == 2500
    assert duplicates == [0, 0]
    assert all(count > 0 for count in inserted), inserted
    # Each consumer committed and acknowledged the batch it held: nothing is left half done.
    assert pending(redis_client) == {}
    ingested = UsageEvent.unscoped.count()
    assert sum(UsageRollup.unscoped.values_list("requests", flat=True)) == ingested
    # Whatever they had not read yet is still in the stream for the next consumer.
    rest = consumer(redis_client, name="ingest-3", batch_size=5000).step()
    assert (rest.inserted, rest.duplicates, rest.dead) == (5000 - ingested, 0, 0)

    assert UsageEvent.unscoped.count() == 5000
    assert UsageEvent.unscoped.values("event_id").distinct().count() == 5000
    rollups = rollup_rows()
    assert sum(row["requests"] for row in rollups.values()) == 5000
    assert sum(row["input_tokens"] for row in rollups.values()) == sum(n % 7 for n in range(5000))
    assert sum(row["output_tokens"] for row in rollups.values()) == sum(n % 11 for n in range(5000))
    assert rollups == raw_sums()
    hours = {
        (n % 4, (base + timedelta(seconds=n)).replace(minute=0, second=0, microsecond=0)) for n in range(5000)
    }
    assert UsageRollup.unscoped.count() == len(hours)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"model": "mock\u0000model"}, "model must not contain NUL characters"),
        ({"ended_at_ms": 10**15}, "ended_at_ms must be an integer from 1 to 253402300799999"),
        ({"request_id": "req\u0000"}, "request_id must not contain NUL characters"),
        ({"key_id": ["key_00000000000000000000000000"]}, "unknown key_id ['key_00000000000000000000000000']"),
        ({"key_id": {"id": 1}}, "unknown key_id {'id': 1}"),
    ],
)
def test_an_event_the_database_cannot_store_is_dead_lettered_without_blocking_the_batch(
    tenant, redis_client, fields, reason
):
    key = tenant.key()
    poison = edge_event(key, **fields)
    publish(redis_client, edge_event(key), poison, edge_event(key))

    result = consumer(redis_client).step()

    assert (result.inserted, result.dead) == (2, 1)
    [(_id, dead)] = redis_client.xrange(DEAD_STREAM)
    assert dead[b"reason"].decode() == reason
    assert orjson.loads(dead[b"data"]) == poison
    assert pending(redis_client) == {}
