"""The ingest lag gauge against a real Redis stream and the real consumer loop.

The web's /metrics reads the lag from Redis at scrape time, so it rises while no consumer
runs; each consumer exports the same gauge for its group.
"""

import time

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from keys import services as key_services
from portal.audit import Actor
from tests.factories import make_org, make_user
from tests.usage.support import GROUP, STREAM, edge_event, publish
from usage.consumer import UsageConsumer
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db


def web_lag(client) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    [value] = [
        sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
        # The test process also holds the consumer's gauge; the web's series comes last.
        if sample.name == "tollgate_ingest_lag_seconds"
    ][-1:]
    return value


@pytest.fixture
def key():
    owner = make_user()
    organization = make_org(owner, name="Acme")
    key, _secret = key_services.api_key_create(actor=Actor(user=owner), organization=organization, name="k")
    return key


def drain(consumer: UsageConsumer, redis_client) -> None:
    deadline = time.monotonic() + 10
    while redis_client.xpending(STREAM, GROUP)["pending"] or consumer.observe():
        assert time.monotonic() < deadline, "the consumer did not drain the stream"
        consumer.step()


def test_ingest_lag_rises_while_consumers_are_stopped_and_falls_when_they_return(client, key, redis_client):
    consumer = UsageConsumer(redis_client, name="lag-1", max_wait_ms=50)
    consumer.ensure_group()
    assert web_lag(client) == 0.0
    assert consumer.observe() == 0.0

    publish(redis_client, edge_event(key), edge_event(key))
    time.sleep(1.0)
    first = web_lag(client)
    time.sleep(0.5)
    second = web_lag(client)

    assert 1.0 <= first < 5.0
    assert second >= first + 0.5
    assert consumer.observe() >= second
    assert REGISTRY.get_sample_value("tollgate_ingest_lag_seconds") >= second

    drain(consumer, redis_client)

    assert web_lag(client) == 0.0
    assert REGISTRY.get_sample_value("tollgate_ingest_lag_seconds") == 0.0
    assert UsageEvent.objects.for_organization(key.organization).count() == 2


def test_entries_a_dead_consumer_left_unacknowledged_count_until_another_claims_them(
    client, key, redis_client
):
    publish(redis_client, edge_event(key))
    survivor = UsageConsumer(redis_client, name="survivor", max_wait_ms=50, claim_idle_ms=1000)
    survivor.ensure_group()
    # A consumer reads the entry and dies before acknowledging it: nothing is unread any more.
    [[_stream, [(entry_id, _fields)]]] = redis_client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=10)
    time.sleep(1.1)

    assert redis_client.xpending(STREAM, GROUP)["pending"] == 1
    assert web_lag(client) >= 1.1
    assert survivor.observe() >= 1.1

    drain(survivor, redis_client)

    assert web_lag(client) == 0.0
    assert redis_client.xpending(STREAM, GROUP)["pending"] == 0


def test_events_count_as_lag_before_any_consumer_created_the_group(client, key, redis_client):
    publish(redis_client, edge_event(key))
    time.sleep(0.5)

    assert redis_client.exists(STREAM) == 1
    assert redis_client.xinfo_groups(STREAM) == []
    assert 0.5 <= web_lag(client) < 5.0


def test_an_absent_stream_is_no_lag(client, redis_client):
    assert redis_client.exists(STREAM) == 0
    assert web_lag(client) == 0.0
