"""Two edge processes sharing one Redis hold a key's and an organization's limits together."""

import asyncio
import time
from collections import Counter

import httpx
import orjson
import pytest

from portal.audit import Actor
from tests.edge.sliding import retry_afters

pytestmark = pytest.mark.django_db

BUDGET_MODEL = "budget-model"


@pytest.fixture(scope="module")
def edge_pair(start_module_edge, mock_upstream):
    """Two edge processes, each its own process, in front of the same mock model server."""
    routes = [{"model": "*", "upstreams": [{"url": mock_upstream.url}]}]
    return [start_module_edge(routes), start_module_edge(routes)]


@pytest.fixture
def edges(edge_pair, mock_upstream):
    """The pair, with the model server's counters at zero; every test uses fresh keys."""
    mock_upstream.reset()
    return edge_pair


def chat(model: str = "mock-model", max_tokens: int | None = None) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def _fire(calls, sample=None) -> tuple[list[httpx.Response], list]:
    async def one(client, url, key, body, headers):
        return await client.post(
            f"{url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}", **headers}
        )

    samples = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=None)) as client:
        task = asyncio.ensure_future(asyncio.gather(*(one(client, *call) for call in calls)))
        while sample is not None and not task.done():
            samples.append(sample())
            await asyncio.sleep(0.02)
        return await task, samples


def fire(calls: list[tuple[str, str, dict, dict]]) -> list[httpx.Response]:
    """POST every (edge url, key, body, headers) at once; return the responses in call order."""
    return asyncio.run(_fire(calls))[0]


def fire_sampling(calls, sample) -> tuple[list[httpx.Response], list]:
    """Like ``fire``, also calling ``sample()`` every 20 ms while the requests are in flight."""
    return asyncio.run(_fire(calls, sample))


def redis_ms(client) -> int:
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000


def fresh_window(client, margin_seconds: float) -> int:
    """Return the current minute window, first waiting for the next one when it ends soon."""
    now = redis_ms(client)
    if 60_000 - now % 60_000 < margin_seconds * 1000:
        time.sleep((60_000 - now % 60_000) / 1000 + 0.05)
        now = redis_ms(client)
    return now // 60_000


def rate_hash(client, key) -> dict[str, int]:
    name = f"tg:rl:{{o:{key.organization_id}}}:k:{key.public_id}"
    return {k.decode(): int(v) for k, v in client.hgetall(name).items()}


def stream_events(client) -> list[dict]:
    return [orjson.loads(fields[b"data"]) for _id, fields in client.xrange("tg:usage")]


def wait_for_events(
    client, served: int, refused: dict[str, int] | None = None, timeout: float = 10
) -> list[dict]:
    """Wait until the usage stream holds the events of ``served`` requests and of the refused
    ones (reason -> count; settlement rides in the same pipeline); return the served ones.

    Each refusal's event is a 429 with its reason, no tokens and no cost.
    """
    refused = refused or {}
    count = served + sum(refused.values())
    deadline = time.monotonic() + timeout
    while client.xlen("tg:usage") < count:
        assert time.monotonic() < deadline, f"{client.xlen('tg:usage')} usage events, expected {count}"
        time.sleep(0.02)
    time.sleep(0.1)
    events = stream_events(client)
    assert len(events) == count
    refusals = [event for event in events if "refusal" in event]
    assert Counter(event["refusal"] for event in refusals) == Counter(refused)
    assert [
        (e["status"], e["input_tokens"], e["output_tokens"], e["cached_tokens"], e["cost_micro_minor"])
        for e in refusals
    ] == [(429, 0, 0, 0, 0)] * len(refusals)
    return [event for event in events if "refusal" not in event]


def statuses(responses) -> list[int]:
    return sorted(response.status_code for response in responses)


def rate_limit_body(scope: str, limit: int, unit: str, retry_after: str) -> dict:
    return {
        "error": {
            "message": f"Rate limit reached for this {scope}: {limit} {unit} per minute. "
            f"Retry after {retry_after}s.",
            "type": unit,
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_two_edges_admit_exactly_the_key_requests_per_minute(edges, make_key, mock_upstream, redis_client):
    key, secret = make_key(rpm_limit=10)
    win = fresh_window(redis_client, margin_seconds=5)

    before = redis_ms(redis_client)
    responses = fire([(edges[i % 2].url, secret, chat(), {}) for i in range(30)])
    after = redis_ms(redis_client)

    assert statuses(responses) == [200] * 10 + [429] * 20
    served = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    # One shared counter: every admitted request saw a different remaining count.
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in served) == list(range(10))
    assert {r.headers["x-ratelimit-limit-requests"] for r in served} == {"10"}
    # The ten fill this window; in the next they still weigh 10 * (1 - elapsed/60000), so an
    # eleventh fits 6 s into it.
    expected_retry_after = retry_afters(10, 0, 1, 10, before, after)
    for response in refused:
        retry_after = response.headers["retry-after"]
        assert retry_after in expected_retry_after
        assert response.json() == rate_limit_body("API key", 10, "requests", retry_after)
        assert response.headers["x-ratelimit-limit-requests"] == "10"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.headers["x-ratelimit-reset-requests"] == f"{retry_after}s"
    # Both edges answered; only the admitted requests reached the model server or were counted
    # (the refused ones have events of their own, with no tokens).
    assert {str(r.url).rsplit("/v1", 1)[0] for r in responses} == {edges[0].url, edges[1].url}
    assert mock_upstream.stats()["by_path"] == {"/v1/chat/completions": 10}
    assert rate_hash(redis_client, key)[f"r:{win}"] == 10
    assert len(wait_for_events(redis_client, 10, {"rate_limit_rpm": 20})) == 10


def test_two_edges_hold_tokens_per_minute_and_settlement_frees_the_unused_estimate(
    edges, make_key, mock_upstream, redis_client
):
    key, secret = make_key(tpm_limit=1000)
    win = fresh_window(redis_client, margin_seconds=8)
    # "hi" with max_tokens=300 is estimated at 305 tokens; 1000 fit three of them.
    slow = {"x-mock-latency-ms": "1000"}

    responses = fire([(edges[i % 2].url, secret, chat(max_tokens=300), slow) for i in range(8)])

    assert statuses(responses) == [200] * 3 + [429] * 5
    served = [r for r in responses if r.status_code == 200]
    assert sorted(int(r.headers["x-ratelimit-remaining-tokens"]) for r in served) == [85, 390, 695]
    for response in (r for r in responses if r.status_code == 429):
        retry_after = response.headers["retry-after"]
        assert response.json() == rate_limit_body("API key", 1000, "tokens", retry_after)
        assert response.headers["x-ratelimit-limit-tokens"] == "1000"
        assert response.headers["x-ratelimit-remaining-tokens"] == "85"

    # The mock answered 1 prompt + 16 completion tokens each: 3 x 17 == 51 once settled.
    events = wait_for_events(redis_client, 3, {"rate_limit_tpm": 5})
    assert {(e["input_tokens"], e["output_tokens"]) for e in events} == {(1, 16)}
    assert rate_hash(redis_client, key) == {f"r:{win}": 3, f"t:{win}": 51}

    # 51 + 3 x 305 == 966: three more fit in the same minute only because the estimates settled.
    again = fire([(edges[i % 2].url, secret, chat(max_tokens=300), slow) for i in range(3)])
    assert statuses(again) == [200] * 3
    assert sorted(int(r.headers["x-ratelimit-remaining-tokens"]) for r in again) == [34, 339, 644]
    wait_for_events(redis_client, 6, {"rate_limit_tpm": 5})
    assert rate_hash(redis_client, key) == {f"r:{win}": 6, f"t:{win}": 102}
    assert mock_upstream.stats()["by_path"] == {"/v1/chat/completions": 6}


def test_organization_requests_per_minute_hold_across_its_keys_and_edges(
    edges, make_key, mock_upstream, redis_client, django_capture_on_commit_callbacks
):
    from portal.services import organization_set_limits

    first, first_secret = make_key(name="first")
    second, second_secret = make_key(name="second")
    assert first.organization_id == second.organization_id
    with django_capture_on_commit_callbacks(execute=True):
        organization_set_limits(actor=Actor.system(), organization=first.organization, rpm_limit=10)
    win = fresh_window(redis_client, margin_seconds=5)

    calls = [(edges[0].url, first_secret, chat(), {}), (edges[1].url, second_secret, chat(), {})] * 15
    responses = fire(calls)

    assert statuses(responses) == [200] * 10 + [429] * 20
    served = [r for r in responses if r.status_code == 200]
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in served) == list(range(10))
    for response in (r for r in responses if r.status_code == 429):
        retry_after = response.headers["retry-after"]
        assert response.json() == rate_limit_body("organization", 10, "requests", retry_after)
    org_rl = f"tg:rl:{{o:{first.organization_id}}}:org"
    assert int(redis_client.hget(org_rl, f"r:{win}")) == 10
    # Each key counted only its own admitted requests.
    counted = [rate_hash(redis_client, key).get(f"r:{win}", 0) for key in (first, second)]
    assert sum(counted) == 10
    assert mock_upstream.stats()["by_path"] == {"/v1/chat/completions": 10}


@pytest.fixture
def priced_model(django_capture_on_commit_callbacks, redis_client):
    """Output at 100000 cents per million tokens: 0.1 cent a token, 100000 millionths of a cent."""
    from billing.services import model_price_set

    with django_capture_on_commit_callbacks(execute=True):
        model_price_set(
            actor=Actor.system(), model=BUDGET_MODEL, input_per_mtok_minor=0, output_per_mtok_minor=100000
        )
    assert redis_client.exists(f"tg:price:{BUDGET_MODEL}")
    return BUDGET_MODEL


def budget_spent(client, key) -> int:
    field = time.strftime("%Y%m", time.gmtime(client.time()[0]))  # the admission script's clock
    value = client.hget(f"tg:budget:{{o:{key.organization_id}}}:k:{key.public_id}", field)
    return int(value or 0)


def budget_body(cents: int) -> dict:
    return {
        "error": {
            "message": f"This request would exceed the API key's monthly budget of {cents / 100:.2f}: "
            "the edge reserves a request's worst-case cost (prompt and max_tokens) until it ends. "
            "Lower max_tokens, raise the budget in the Tollgate console, or wait for the next month.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }


RESERVATION = 100 * 100_000  # max_tokens=100 at 100000 millionths of a cent each: 10 cents


def test_parallel_requests_on_two_edges_cannot_overshoot_the_key_budget(
    edges, make_key, priced_model, redis_client
):
    cap = 45  # cents: four 10-cent reservations fit, a fifth does not
    key, secret = make_key(budget_monthly_minor=cap)
    # Each answer costs exactly its reservation (100 output tokens): nothing comes back on settlement.
    headers = {"x-mock-latency-ms": "500", "x-mock-words": "100"}
    calls = [(edges[i % 2].url, secret, chat(priced_model, max_tokens=100), headers) for i in range(12)]

    responses = fire(calls)

    assert statuses(responses) == [200] * 4 + [429] * 8
    for response in (r for r in responses if r.status_code == 429):
        assert response.json() == budget_body(cap)
    events = wait_for_events(redis_client, 4, {"budget_exceeded": 8})
    assert [e["cost_micro_minor"] for e in events] == [RESERVATION] * 4
    spent = budget_spent(redis_client, key)
    assert spent == sum(e["cost_micro_minor"] for e in events) == 40_000_000
    assert spent <= cap * 1_000_000
    # The cap holds afterwards too.
    late = fire([(edges[0].url, secret, chat(priced_model, max_tokens=100), headers)])
    assert late[0].status_code == 429
    assert late[0].json() == budget_body(cap)


def test_settlement_returns_the_unspent_reservation_and_the_budget_fills_without_overshoot(
    edges, make_key, priced_model, redis_client
):
    cap = 45
    key, secret = make_key(budget_monthly_minor=cap)
    # 50 output tokens: each answer costs 5 cents against its 10-cent reservation.
    headers = {"x-mock-latency-ms": "500", "x-mock-words": "50"}
    admitted_per_burst = []
    served = refused = 0
    while not admitted_per_burst or admitted_per_burst[-1]:
        assert len(admitted_per_burst) < 10, admitted_per_burst
        calls = [(edges[i % 2].url, secret, chat(priced_model, max_tokens=100), headers) for i in range(12)]
        responses = fire(calls)
        admitted = sum(r.status_code == 200 for r in responses)
        assert all(r.json() == budget_body(cap) for r in responses if r.status_code == 429)
        admitted_per_burst.append(admitted)
        served += admitted
        refused += len(responses) - admitted
        events = wait_for_events(redis_client, served, {"budget_exceeded": refused})
        spent = budget_spent(redis_client, key)
        assert spent == sum(e["cost_micro_minor"] for e in events) == served * 5_000_000
        assert spent <= cap * 1_000_000

    # 0 -> 20 (4 admitted) -> 30 (2) -> 35 (1) -> 40 (1) -> no 10-cent reservation fits in 45.
    assert admitted_per_burst == [4, 2, 1, 1, 0]
    assert budget_spent(redis_client, key) == 40_000_000


def test_concurrency_limit_holds_across_two_edges_and_leases_are_released(
    edges, make_key, mock_upstream, redis_client
):
    key, secret = make_key(concurrency_limit=2)
    leases = f"tg:conc:{{o:{key.organization_id}}}:k:{key.public_id}"
    slow = {"x-mock-latency-ms": "1500"}

    responses, leases_seen = fire_sampling(
        [(edges[i % 2].url, secret, chat(), slow) for i in range(8)], lambda: redis_client.zcard(leases)
    )

    assert statuses(responses) == [200] * 2 + [429] * 6
    # Never more than two leases; two were held while the slow answers were on their way.
    assert max(leases_seen) == 2
    assert all(r.elapsed.total_seconds() >= 1.5 for r in responses if r.status_code == 200)
    for response in (r for r in responses if r.status_code == 429):
        assert response.json() == {
            "error": {
                "message": "Too many concurrent requests for this API key (limit 2). Retry shortly.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        assert response.headers["retry-after"] == "1"
    assert mock_upstream.stats()["by_path"] == {"/v1/chat/completions": 2}
    wait_for_events(redis_client, 2, {"concurrency_limit": 6})
    assert redis_client.zcard(leases) == 0
    # The released slots are usable again, from either edge.
    again = fire([(edges[i % 2].url, secret, chat(), {}) for i in range(2)])
    assert statuses(again) == [200, 200]
    wait_for_events(redis_client, 4, {"concurrency_limit": 6})
    assert redis_client.zcard(leases) == 0
