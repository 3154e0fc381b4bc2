"""The edge under bursts and faults: nothing served free, nothing answered lost.

A burst of cache misses on a cold edge; Redis losing its data; the edge killed with SIGKILL
under load, its master alone or the whole process group.
"""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from portal.audit import Actor
from tests.edge.conftest import EdgeProcess

pytestmark = pytest.mark.django_db

PRICED = "priced-model"
RESERVATION = 10 * 100_000  # max_tokens=10 at 100000 millionths of a cent per output token


@pytest.fixture
def priced_model(django_capture_on_commit_callbacks, redis_client):
    from billing.services import model_price_set

    with django_capture_on_commit_callbacks(execute=True):
        model_price_set(
            actor=Actor.system(), model=PRICED, input_per_mtok_minor=0, output_per_mtok_minor=100000
        )
    assert redis_client.exists(f"tg:price:{PRICED}")
    return PRICED


def body(model: str = "mock-model", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def _burst(url: str, secret: str, payload: dict, count: int, headers: dict) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{url}/v1/chat/completions",
                    json=payload,
                    headers={"authorization": f"Bearer {secret}", **headers},
                )
                for _ in range(count)
            )
        )


def events(client) -> list[dict]:
    import orjson

    return [orjson.loads(fields[b"data"]) for _id, fields in client.xrange("tg:usage")]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_burst_on_a_cold_edge_charges_every_served_request_and_holds_the_budget(
    start_edge, mock_upstream, make_key, priced_model, redis_client
):
    """300 parallel requests, nothing cached: no 503 while Redis is healthy, none served free."""
    key, secret = make_key(budget_monthly_minor=100)  # 100 reservations of 1 cent fit, no more
    edge = start_edge([{"model": "*", "upstreams": [{"url": mock_upstream.url}]}], workers=2)
    # Each answer costs exactly its reservation (10 output tokens): a settlement frees nothing.
    responses = asyncio.run(
        _burst(edge.url, secret, body(priced_model, max_tokens=10), 300, {"x-mock-words": "10"})
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 100 + [429] * 200
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "insufficient_quota"
    # The 200 refusals have events too: no tokens, no cost, the reason.
    wait_until(lambda: len(events(redis_client)) >= 300, 10, "300 events")
    time.sleep(0.3)
    published = events(redis_client)
    assert len(published) == 300
    served = [e for e in published if "refusal" not in e]
    assert len(served) == 100
    assert {(e["refusal"], e["status"], e["cost_micro_minor"]) for e in published if "refusal" in e} == {
        ("budget_exceeded", 429, 0)
    }
    assert [e["cost_micro_minor"] for e in served] == [RESERVATION] * 100
    assert {e["request_id"] for e in served} == {
        r.headers["x-request-id"] for r in responses if r.status_code == 200
    }
    month = time.strftime("%Y%m", time.gmtime(redis_client.time()[0]))
    spent = int(redis_client.hget(f"tg:budget:{{o:{key.organization_id}}}:k:{key.public_id}", month))
    assert spent == 100 * RESERVATION == 100_000_000


def test_redis_losing_its_data_never_answers_401_for_a_valid_key(
    start_edge, mock_upstream, make_key, priced_model, redis_client
):
    """Known keys keep working from the cache; others wait (503, Retry-After) for the resync."""
    from keys.publication import edge_resync

    _known_key, known = make_key()
    _other_key, other = make_key()
    edge = start_edge(
        [{"model": "*", "upstreams": [{"url": mock_upstream.url}]}],
        extra_config={"auth_cache": {"ttl_seconds": 0.1, "stale_seconds": 60}},
    )
    first = httpx.post(
        f"{edge.url}/v1/chat/completions",
        json=body(priced_model, max_tokens=10),
        headers={"authorization": f"Bearer {known}"},
    )
    assert first.status_code == 200

    redis_client.flushdb()  # what a restart without persistence leaves: no records, no marker
    time.sleep(0.2)  # past the cache's freshness: every look-up goes to Redis

    again = httpx.post(
        f"{edge.url}/v1/chat/completions",
        json=body(priced_model, max_tokens=10),
        headers={"authorization": f"Bearer {known}"},
    )
    assert again.status_code == 200  # the last record and price this process knew
    unseen = httpx.post(
        f"{edge.url}/v1/chat/completions", json=body(), headers={"authorization": f"Bearer {other}"}
    )
    assert unseen.status_code == 503
    assert unseen.headers["retry-after"] == "1"
    assert unseen.json() == {
        "error": {
            "message": "The key store is being restored; retry shortly.",
            "type": "server_error",
            "param": None,
            "code": "service_unavailable",
        }
    }

    edge_resync()  # what a consumer runs when it finds the marker gone
    restored = httpx.post(
        f"{edge.url}/v1/chat/completions", json=body(), headers={"authorization": f"Bearer {other}"}
    )
    assert restored.status_code == 200
    # Once the data plane is whole again, a key that is not there is refused as unknown.
    redis_client.delete(*redis_client.keys("tg:key:*"))
    time.sleep(0.2)
    gone = httpx.post(
        f"{edge.url}/v1/chat/completions", json=body(), headers={"authorization": f"Bearer {other}"}
    )
    assert gone.status_code == 401


def _load(url: str, secret: str, stop: threading.Event, answered: list[str]) -> None:
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            try:
                response = client.post(
                    f"{url}/v1/chat/completions", json=body(), headers={"authorization": f"Bearer {secret}"}
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                answered.append(response.headers["x-request-id"])


@pytest.mark.parametrize("kills", [2])
def test_sigkill_of_the_whole_edge_under_load_loses_no_answered_request(
    tmp_path, settings, mock_upstream, make_key, redis_client, kills
):
    """Every answer a client received has its usage event, once, across SIGKILLs of the edge."""
    _key, secret = make_key()
    spool = tmp_path / "spool"
    answered: list[str] = []
    for _round in range(kills):
        edge = EdgeProcess(
            redis_url=settings.REDIS_URL,
            pepper=settings.KEY_PEPPER,
            routes=[{"model": "*", "upstreams": [{"url": mock_upstream.url}]}],
            spool_dir=spool,
            workers=2,
        )
        stop = threading.Event()
        clients = [threading.Thread(target=_load, args=(edge.url, secret, stop, answered)) for _ in range(8)]
        for thread in clients:
            thread.start()
        # Kill mid-load, once enough answers came back (bounded: a loaded machine is slower).
        goal = len(answered) + 60
        wait_until(lambda: len(answered) >= goal, 20, "answers under load")
        time.sleep(0.3)
        os.killpg(edge.process.pid, signal.SIGKILL)
        stop.set()
        for thread in clients:
            thread.join(10)
        edge.process.wait(5)
        edge._log.close()
    # A new edge on the same spool directory recovers what the killed ones had not published.
    survivor = EdgeProcess(
        redis_url=settings.REDIS_URL,
        pepper=settings.KEY_PEPPER,
        routes=[{"model": "*", "upstreams": [{"url": mock_upstream.url}]}],
        spool_dir=spool,
    )
    try:
        wanted = set(answered)
        assert len(wanted) > 100  # the load really ran
        wait_until(
            lambda: wanted <= {e["request_id"] for e in events(redis_client)}, 15, "every answered event"
        )
        time.sleep(1.5)  # another replay round: nothing more arrives
        recorded = events(redis_client)
        by_request: dict[str, set[str]] = {}
        for event in recorded:
            by_request.setdefault(event["request_id"], set()).add(event["event_id"])
        # One event per request (a replay may send an event again; ingestion keeps one per id).
        assert all(len(ids) == 1 for ids in by_request.values())
        assert wanted <= by_request.keys()
        recovered = [line for line in survivor.log().splitlines() if "from the journal" in line]
        print(f"answered {len(wanted)}, events {len(by_request)}, journal recoveries: {recovered}")
        assert not list(spool.glob("journal-*.jsonl")) or all(
            p.stat().st_size == 0 for p in spool.glob("*.jsonl")
        )
    finally:
        survivor.stop()


def test_killing_the_master_stops_its_workers_and_frees_the_port(start_edge, mock_upstream, make_key):
    edge = start_edge([{"model": "*", "upstreams": [{"url": mock_upstream.url}]}], workers=2)
    workers = [int(pid) for pid in subprocess.check_output(["pgrep", "-P", str(edge.process.pid)]).split()]
    workers = [pid for pid in workers if "spawn_main" in _cmdline(pid)]
    assert len(workers) == 2
    edge.process.kill()
    edge.process.wait(5)

    def gone() -> bool:
        return all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in workers)

    wait_until(gone, 30, "the workers to exit")
    # The port is free again: a new edge starts on it.
    config = edge.config_path.read_text()
    restarted = subprocess.Popen(
        [sys.executable, "-m", "edge", "--config", str(edge.config_path)],
        env={**os.environ, "KEY_PEPPER": edge_pepper(), "EDGE_REDIS_URL": edge_redis_url()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: _healthy(edge.url), 15, "the restarted edge")
        assert str(edge.port) in config
    finally:
        restarted.terminate()
        restarted.wait(15)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def edge_pepper() -> str:
    from django.conf import settings

    return settings.KEY_PEPPER


def edge_redis_url() -> str:
    from django.conf import settings

    return settings.REDIS_URL


def test_sigterm_lets_requests_in_flight_finish_and_publishes_their_events(
    start_edge, mock_upstream, make_key, redis_client
):
    _key, secret = make_key()
    edge = start_edge([{"model": "*", "upstreams": [{"url": mock_upstream.url}]}], workers=2)
    results: list[httpx.Response] = []

    def slow_request():
        results.append(
            httpx.post(
                f"{edge.url}/v1/chat/completions",
                json=body(),
                headers={"authorization": f"Bearer {secret}", "x-mock-latency-ms": "1500"},
                timeout=30,
            )
        )

    mock_upstream.reset()
    threads = [threading.Thread(target=slow_request) for _ in range(6)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: mock_upstream.stats()["by_path"].get("/v1/chat/completions") == 6,
        15,
        "all six requests at the model server",
    )
    os.killpg(edge.process.pid, signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    assert edge.process.wait(20) == 0

    assert [r.status_code for r in results] == [200] * 6
    assert sorted(e["request_id"] for e in events(redis_client)) == sorted(
        r.headers["x-request-id"] for r in results
    )
    assert not list(edge.spool_dir.glob("journal-*.jsonl"))  # a clean stop leaves no journal
