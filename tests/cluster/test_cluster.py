"""Two edges and two consumers on a local 3-master Redis Cluster.

Each edge is given a different node as its seed, so that what one learns from the cluster
(limits, revocations) cannot come from a node the other happens to share. The usage stream
is split into four shards by organization; one consumer reads shards 0 and 1, the other 2
and 3. Requests go through the official ``openai`` client.
"""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from django.db.models import Count

from keys import services as key_services
from portal.audit import Actor
from tests.cluster.conftest import SHARDS
from tests.edge.conftest import EdgeProcess
from tests.factories import make_org, make_user
from tests.usage.processes import ConsumerProcess, current_database_url, wait
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "mock-model"


@pytest.fixture
def edges(cluster, mock_upstream, settings, tmp_path):
    """Two edges, seeded with different nodes; a key record stays in their caches for a minute."""
    started = []
    for index, port in enumerate(cluster.ports[:2]):
        started.append(
            EdgeProcess(
                redis_url=f"redis://127.0.0.1:{port}",
                pepper=settings.KEY_PEPPER,
                routes=[{"model": "*", "upstreams": [{"url": mock_upstream.url}]}],
                spool_dir=tmp_path / f"spool-{index}",
                extra_config={
                    "redis_cluster": True,
                    "usage_stream_shards": SHARDS,
                    "auth_cache": {"ttl_seconds": 60},
                },
            )
        )
    yield started
    for edge in started:
        edge.stop()


def client(edge: EdgeProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{edge.url}/v1", api_key=secret, max_retries=0, timeout=10)


def chat(edge: EdgeProcess, secret: str, request_id: str | None = None) -> int:
    """Send one chat completion; return the status the edge answered."""
    headers = {"x-request-id": request_id} if request_id else {}
    try:
        client(edge, secret).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}], extra_headers=headers
        )
    except openai.APIStatusError as error:
        return error.status_code
    return 200


def test_a_key_rpm_limit_holds_across_two_edges(edges, make_key):
    _key, secret = make_key(rpm_limit=10)

    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda i: chat(edges[i % 2], secret), range(30)))

    assert sorted(statuses) == [200] * 10 + [429] * 20
    # Both edges served some: the one limit is shared through the cluster, not per edge.
    served_by = {i % 2 for i, status in enumerate(statuses) if status == 200}
    assert served_by == {0, 1}


def test_a_revocation_through_the_portal_reaches_both_edges_within_a_second(edges, make_key):
    key, secret = make_key()
    assert [chat(edge, secret) for edge in edges] == [200, 200]  # both edges have it cached now

    started = time.monotonic()
    key_services.api_key_revoke(actor=Actor(user=key.created_by), key=key)
    refused_after = {}
    while len(refused_after) < 2:
        for index, edge in enumerate(edges):
            if index not in refused_after and chat(edge, secret) == 401:
                refused_after[index] = time.monotonic() - started
        assert time.monotonic() - started < 5, f"edges still serving a revoked key: {refused_after}"
        time.sleep(0.05)

    assert max(refused_after.values()) < 1.0
    assert [chat(edge, secret) for edge in edges for _ in range(5)] == [401] * 10


def test_every_event_is_ingested_exactly_once_across_shards_and_two_consumers(
    edges, cluster, tmp_path, raw_events_cleared
):
    owner = make_user()
    organizations = [make_org(owner) for _ in range(SHARDS)]
    secrets = []
    for organization in organizations:
        _key, secret = key_services.api_key_create(
            actor=Actor(user=owner), organization=organization, name="cluster"
        )
        secrets.append(secret)
    env = {
        "EDGE_REDIS_URL": cluster.url,
        "EDGE_REDIS_CLUSTER": "true",
        "USAGE_STREAM_SHARDS": str(SHARDS),
    }
    consumers = [
        ConsumerProcess(
            tmp_path,
            name=f"ingest-{shards.replace(',', '')}",
            database_url=current_database_url(),
            redis_url=cluster.url,
            args=["--shards", shards, "--max-wait-ms", "50"],
            env=env,
        )
        for shards in ("0,1", "2,3")
    ]
    try:
        sent = [(f"cluster-{uuid.uuid4()}", secrets[i % SHARDS], edges[i // SHARDS % 2]) for i in range(48)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda item: chat(item[2], item[1], request_id=item[0]), sent))
        assert statuses == [200] * 48

        request_ids = [request_id for request_id, _secret, _edge in sent]
        wait(
            lambda: UsageEvent.unscoped.filter(request_id__in=request_ids).count() >= 48,
            "48 events ingested",
            consumers,
        )
        time.sleep(1)  # a duplicate would be inserted by now
        rows = dict(
            UsageEvent.unscoped.filter(request_id__in=request_ids)
            .values_list("request_id")
            .annotate(n=Count("*"))
            .values_list("request_id", "n")
        )
        by_org = dict(
            UsageEvent.unscoped.filter(request_id__in=request_ids)
            .values_list("organization_id")
            .annotate(n=Count("*"))
            .values_list("organization_id", "n")
        )
        client = cluster.client()
        read = [
            [group["entries-read"] for group in client.xinfo_groups(f"tg:usage:{{s{shard}}}")]
            for shard in range(SHARDS)
        ]
        unsharded = client.exists("tg:usage")
        client.close()
        inserted = [consumer.metric("tollgate_ingest_events_inserted_total") for consumer in consumers]
    finally:
        for consumer in consumers:
            consumer.terminate()

    assert rows == {request_id: 1 for request_id in request_ids}
    assert by_org == {organization.pk: 12 for organization in organizations}
    # Each organization's events went to its own shard, read by one group; none to tg:usage.
    assert read == [[12]] * SHARDS
    assert unsharded == 0
    # Each consumer ingested the events of its two shards.
    assert inserted == [24.0, 24.0]
