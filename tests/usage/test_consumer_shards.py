"""Sharded usage streams (edge/streams.py) on one Redis: one consumer per shard a process reads,
each with its own group, dead letters and recovery. tests/cluster runs them on a Redis Cluster."""

import orjson
import pytest

from edge.streams import dead_letter_stream, shard_of, usage_stream
from tests.usage.support import GROUP, edge_event
from usage.consumer import shard_consumers
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

SHARDS = 2


@pytest.fixture
def sharded(settings):
    settings.USAGE_STREAM_SHARDS = SHARDS
    settings.USAGE_CONSUMER_SHARDS = None


def publish_to_shard(client, org_id: int, payload) -> str:
    stream = usage_stream(shard_of(org_id, SHARDS), SHARDS)
    client.xadd(stream, {"data": payload if isinstance(payload, bytes) else orjson.dumps(payload)})
    return stream


def test_a_process_reads_every_shard_by_default_and_each_shard_keeps_its_dead_letters(
    sharded, tenant, other_tenant, redis_client
):
    key, other_key = tenant.key("a"), other_tenant.key("b")
    events = [edge_event(key), edge_event(other_key)]
    streams = [publish_to_shard(redis_client, event["org_id"], event) for event in events]
    poisoned = publish_to_shard(redis_client, other_tenant.org.pk, b"not json")
    consumers = shard_consumers(redis_client, name="ingest-a", max_wait_ms=50)

    for consumer in consumers.consumers:
        consumer.ensure_group()
        consumer.step()

    assert [consumer.stream for consumer in consumers.consumers] == ["tg:usage:{s0}", "tg:usage:{s1}"]
    assert [consumer.max_wait_ms for consumer in consumers.consumers] == [25, 25]
    assert [consumer.edge_resync for consumer in consumers.consumers] == [False, False]
    assert sorted(streams) == ["tg:usage:{s0}", "tg:usage:{s1}"]
    rows = UsageEvent.unscoped.filter(event_id__in=[event["event_id"] for event in events])
    assert sorted(str(row.event_id) for row in rows) == sorted(event["event_id"] for event in events)
    shard = shard_of(other_tenant.org.pk, SHARDS)
    [(_id, dead)] = redis_client.xrange(dead_letter_stream(shard, SHARDS))
    assert (dead[b"data"], dead[b"reason"]) == (b"not json", b"not JSON in field 'data'")
    assert redis_client.xlen(dead_letter_stream(1 - shard, SHARDS)) == 0
    assert redis_client.exists("tg:usage", "tg:usage:dead") == 0
    assert all(redis_client.xpending(stream, GROUP)["pending"] == 0 for stream in {*streams, poisoned})


def test_a_process_pinned_to_a_shard_reads_only_that_one(sharded, redis_client):
    consumers = shard_consumers(redis_client, name="ingest-b", shards=(1,), max_wait_ms=50, edge_resync=True)

    assert [(c.stream, c.dead_stream, c.max_wait_ms) for c in consumers.consumers] == [
        ("tg:usage:{s1}", "tg:usage:dead:{s1}", 50)
    ]
    assert consumers.consumers[0].edge_resync is True


def test_a_shard_whose_group_was_lost_gets_it_back_and_its_events_are_ingested(
    sharded, tenant, other_tenant, redis_client
):
    consumers = shard_consumers(redis_client, name="ingest-c", max_wait_ms=50)
    for consumer in consumers.consumers:
        consumer._attempt = consumer._retrying  # as run() does: wait out a store's loss
        consumer._attempt(consumer.ensure_group)
    event = edge_event(other_tenant.key("c"))
    lost = usage_stream(shard_of(event["org_id"], SHARDS), SHARDS)
    redis_client.delete(lost)  # the shard's stream and group are gone, as after a Redis restart
    publish_to_shard(redis_client, event["org_id"], event)

    results = [consumer.step() for consumer in consumers.consumers]

    assert sorted(result.inserted for result in results) == [0, 1]
    assert UsageEvent.unscoped.filter(event_id=event["event_id"]).count() == 1
    assert [group["name"] for group in redis_client.xinfo_groups(lost)] == [GROUP.encode()]
