"""Keys nobody issued: their look-ups are rationed per client address, so a client inventing
keys costs Redis a bounded number of reads and is answered 429, while keys the edge knows keep
being served and other addresses are not affected."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from edge import keyformat
from edge.auth import LookupThrottle
from edge.records import SYNCED_KEY

pytestmark = pytest.mark.django_db

FLOODER = "198.51.100.9"
NEIGHBOUR = "203.0.113.7"
BURST = 20


def test_a_bucket_allows_its_burst_then_says_how_long_until_the_next_token():
    throttle = LookupThrottle(burst=3, per_second=2, size=10)

    assert [throttle.take("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.take("a", 100.0) == 0.5
    assert throttle.take("a", 100.25) == 0.25  # half a token has come back
    assert throttle.take("a", 100.5) == 0.0
    assert throttle.take("b", 100.5) == 0.0  # another address has its own bucket


def test_a_key_that_was_found_gives_its_token_back():
    throttle = LookupThrottle(burst=1, per_second=0.001, size=10)

    assert throttle.take("a", 0.0) == 0.0
    throttle.give_back("a")
    assert throttle.take("a", 0.0) == 0.0
    assert throttle.take("a", 0.0) == 1000.0


def test_the_buckets_are_bounded_and_the_least_recent_address_is_forgotten_first():
    throttle = LookupThrottle(burst=1, per_second=0.001, size=100)
    throttle.take("kept", 0.0)

    for n in range(1000):
        throttle.take(f"10.0.{n // 256}.{n % 256}", 0.0)
        throttle.take("kept", 0.0)  # seen again and again: never the least recent

    assert len(throttle) == 100
    assert throttle.take("kept", 0.0) > 0  # still remembered, its bucket still empty
    assert throttle.take("10.0.0.0", 0.0) == 0.0  # forgotten: a full bucket again


@pytest.fixture
def own_redis(private_redis, settings):
    """A Redis of this test alone, so that its command counts are the edge's look-ups only."""
    settings.EDGE_REDIS_URL = private_redis.url  # the portal publishes where the edge reads
    client = private_redis.client()
    client.set(SYNCED_KEY, '{"v":1,"at":0}')
    yield client
    client.close()


def get_calls(client) -> int:
    return int(client.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def chat(client: httpx.Client, edge, secret: str, address: str) -> httpx.Response:
    return client.post(
        f"{edge.url}/v1/chat/completions",
        json={"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"authorization": f"Bearer {secret}", "x-forwarded-for": address},
    )


def test_a_thousand_invented_keys_from_one_address_cost_one_burst_of_look_ups(
    start_edge, mock_upstream, make_key, private_redis, own_redis, edge_metric
):
    _, seen = make_key()
    edge = start_edge(
        [{"model": "*", "upstreams": [mock_upstream.url]}],
        redis_url=private_redis.url,
        extra_config={
            "trusted_proxies": ["127.0.0.1/32"],  # the test's requests say which address they come from
            "unknown_keys": {"burst": BURST, "per_second": 0.001},
        },
    )
    with httpx.Client(timeout=10) as client:
        assert chat(client, edge, seen, FLOODER).status_code == 200
        before = get_calls(own_redis)

        with ThreadPoolExecutor(16) as pool:
            answers = list(
                pool.map(lambda _: chat(client, edge, keyformat.generate("live"), FLOODER), range(1000))
            )

        assert Counter(answer.status_code for answer in answers) == {401: BURST, 429: 1000 - BURST}
        assert get_calls(own_redis) - before == BURST
        for answer in (answer for answer in answers if answer.status_code == 429):
            retry_after = answer.headers["retry-after"]
            assert 1 <= int(retry_after) <= 1000
            assert answer.json() == {
                "error": {
                    "message": "Too many requests with unknown API keys from this address. "
                    f"Check the key and retry after {retry_after}s.",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            }
        assert edge_metric(edge, "tollgate_edge_unknown_key_throttled_total") == 1000 - BURST
        assert (
            edge_metric(edge, "tollgate_edge_requests_total", status="429", model="", org="") == 1000 - BURST
        )

        # A key the edge knows is served to the same address; one it has never seen waits too.
        assert chat(client, edge, seen, FLOODER).status_code == 200
        _, unseen = make_key()
        assert chat(client, edge, unseen, FLOODER).status_code == 429
        # Another address has its own bucket.
        assert chat(client, edge, keyformat.generate("live"), NEIGHBOUR).status_code == 401
        assert chat(client, edge, unseen, NEIGHBOUR).status_code == 200
