"""Redis goes away: known keys work from the cache for a bounded time, served requests are
spooled to disk, and the spool is replayed into the usage stream exactly once when Redis returns.

Each test runs its own redis-server, so that killing it touches nothing else.
"""

import os
import time

import httpx
import orjson
import pytest

from edge import keyformat
from edge.metering import new_event
from edge.records import SYNCED_KEY
from keys.publication import edge_resync
from tests.servers import PrivateRedis

pytestmark = pytest.mark.django_db

STALE_SECONDS = 3
UNAVAILABLE = {
    "error": {
        "message": "The key store is unreachable; retry shortly.",
        "type": "server_error",
        "param": None,
        "code": "service_unavailable",
    }
}


@pytest.fixture
def private_redis(tmp_path, settings):
    server = PrivateRedis(tmp_path)
    server.start()
    # The portal publishes key records where this edge reads them.
    settings.EDGE_REDIS_URL = server.url
    mark_synced(server)
    yield server
    server.cleanup()


def mark_synced(server: PrivateRedis) -> None:
    """What the portal's full resync leaves behind (tests/edge/conftest.py)."""
    client = server.client()
    client.set(SYNCED_KEY, '{"v":1,"at":0}')
    client.close()


def chat(secret: str, edge_url: str) -> httpx.Response:
    return httpx.post(
        f"{edge_url}/v1/chat/completions",
        json={"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {secret}"},
        timeout=30,
    )


def spool_lines(directory) -> list[dict]:
    return [
        orjson.loads(line)
        for path in sorted(directory.glob("spool-*.jsonl"))
        for line in path.read_bytes().splitlines()
        if line.strip()
    ]


def stream_events(client) -> list[dict]:
    return [orjson.loads(fields[b"data"]) for _id, fields in client.xrange("tg:usage")]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_redis_outage_serves_known_keys_from_cache_for_a_bounded_time_and_replays_the_spool_once(
    private_redis, start_edge, mock_upstream, make_key
):
    key, secret = make_key()
    edge = start_edge(
        [{"model": "*", "upstreams": [{"url": mock_upstream.url}]}],
        redis_url=private_redis.url,
        extra_config={"auth_cache": {"ttl_seconds": 0.2, "stale_seconds": STALE_SECONDS}},
    )
    first = chat(secret, edge.url)
    assert first.status_code == 200
    cached_at = time.monotonic()  # the edge read the record no later than this
    # Its usage event reaches Redis off the response path; let it land before the outage.
    before = private_redis.client()
    wait_until(lambda: before.xlen("tg:usage") == 1, 5, "the first usage event")
    before.close()

    private_redis.kill()

    # The known key keeps working from the cache (its 0.2 s TTL is over: these are stale reads).
    time.sleep(0.3)
    served = [chat(secret, edge.url) for _ in range(3)]
    assert [r.status_code for r in served] == [200, 200, 200]
    assert time.monotonic() - cached_at < STALE_SECONDS
    request_ids = [r.headers["x-request-id"] for r in served]

    # Every served request is in the spool, one line each, in order.
    spooled = wait_until(
        lambda: (lines := spool_lines(edge.spool_dir)) and len(lines) >= 3 and lines, 5, "the spool"
    )
    assert [path.name for path in edge.spool_dir.glob("spool-*.jsonl")] == [f"spool-{edge.process.pid}.jsonl"]
    assert [e["request_id"] for e in spooled] == request_ids
    assert {(e["key_id"], e["org_id"], e["status"]) for e in spooled} == {
        (key.public_id, key.organization_id, 200)
    }
    assert len({e["event_id"] for e in spooled}) == 3

    # A key this edge never saw cannot be checked: refused, not served.
    unknown = chat(keyformat.generate("live"), edge.url)
    assert unknown.status_code == 503
    assert unknown.json() == UNAVAILABLE
    assert unknown.headers["retry-after"] == "1"

    # Past stale_seconds the known key is refused too.
    time.sleep(max(0.0, cached_at + STALE_SECONDS + 0.3 - time.monotonic()))
    expired = chat(secret, edge.url)
    assert expired.status_code == 503
    assert expired.json() == UNAVAILABLE
    assert len(spool_lines(edge.spool_dir)) == 3  # refusals are not usage

    private_redis.start()  # same port, empty
    client = private_redis.client()
    wait_until(lambda: client.xlen("tg:usage") >= 3, 10, "the replay")
    wait_until(
        lambda: (
            not list(edge.spool_dir.glob("spool-*.jsonl")) and not list(edge.spool_dir.glob("replay-*.jsonl"))
        ),
        5,
        "the spool files to go",
    )
    time.sleep(2.5)  # two more replay rounds: nothing is sent twice
    replayed = stream_events(client)
    assert [e["event_id"] for e in replayed] == [e["event_id"] for e in spooled]
    # Each spooled with the release of the lease its lost admission may hold: no counter moves.
    assert [e["_settle"][1][:3] + e["_settle"][1][4:] for e in spooled] == [[2, 0, 0, "", 0]] * 3
    assert replayed == [{k: v for k, v in e.items() if k != "_settle"} for e in spooled]

    # The empty Redis is refilled by the portal's resync; then the edge admits and meters
    # again (its scripts are loaded anew into the restarted server).
    edge_resync()
    after = wait_until(
        lambda: (r := chat(secret, edge.url)).status_code == 200 and r, 5, "the key to work again"
    )
    wait_until(lambda: client.xlen("tg:usage") == 4, 5, "the new usage event")
    assert stream_events(client)[-1]["request_id"] == after.headers["x-request-id"]
    client.close()


def spool_event(index: int) -> dict:
    return new_event(
        request_id=f"req-{index}",
        key_id="key_crashed",
        org_id=1,
        environment="live",
        endpoint="chat.completions",
        model="mock-model",
        stream=False,
        status=200,
        input_tokens=3,
        output_tokens=16,
        cached_tokens=0,
        estimated=False,
        cost_micro_minor=0,
        latency_ms=1.0,
        ttft_ms=1.0,
        upstream="http://127.0.0.1:1",
        started_at_ms=1_700_000_000_000 + index,
        ended_at_ms=1_700_000_000_001 + index,
    )


def write_spool(path, records: list[dict]) -> None:
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))


def replaying_edge(start_edge, mock_upstream, private_redis, spool_dir, **kwargs):
    """An edge on the private Redis whose spool directory holds what a dead process left."""
    return start_edge(
        [{"model": "*", "upstreams": [{"url": mock_upstream.url}]}],
        redis_url=private_redis.url,
        spool_dir=spool_dir,
        **kwargs,
    )


def dead_pid() -> int:
    pid = 999_999
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def test_spool_left_by_a_dead_process_is_replayed_exactly_once(
    tmp_path, private_redis, start_edge, mock_upstream
):
    spool_dir = tmp_path / "crashed"
    spool_dir.mkdir()
    events = [spool_event(i) for i in range(3)]
    write_spool(spool_dir / f"spool-{dead_pid()}.jsonl", events)

    # Two workers share the directory; only one of them may claim the file.
    edge = replaying_edge(start_edge, mock_upstream, private_redis, spool_dir, workers=2)
    client = private_redis.client()
    wait_until(lambda: client.xlen("tg:usage") >= 3, 10, "the replay")
    wait_until(lambda: not list(spool_dir.glob("*.jsonl")), 5, "the spool files to go")
    time.sleep(2.5)
    assert stream_events(client) == events
    assert edge.process.poll() is None
    client.close()


def test_replay_file_left_by_a_process_that_died_while_replaying_is_replayed(
    tmp_path, private_redis, start_edge, mock_upstream
):
    spool_dir = tmp_path / "crashed"
    spool_dir.mkdir()
    older = [spool_event(i) for i in range(2)]
    newer = [spool_event(i) for i in range(2, 4)]
    pid = dead_pid()
    # It had claimed a file for replay, and spooled more, before it died.
    write_spool(spool_dir / f"replay-{pid}-1.jsonl", older)
    write_spool(spool_dir / f"spool-{pid}.jsonl", newer)

    replaying_edge(start_edge, mock_upstream, private_redis, spool_dir)
    client = private_redis.client()
    wait_until(lambda: client.xlen("tg:usage") >= 4, 10, "the replay")
    wait_until(lambda: not list(spool_dir.glob("*.jsonl")), 5, "the spool files to go")
    time.sleep(1.5)
    assert stream_events(client) == older + newer
    client.close()


def test_a_batch_cut_off_midway_spools_only_what_redis_did_not_confirm():
    from edge.publication import spool_records as _spool_records
    from edge.resp import RespError

    settles = [[["k"], [n]] for n in range(4)]
    batch = [({"event_id": str(n)}, settles[n]) for n in range(4)]
    lost = ConnectionError("lost the connection to Redis")
    results = [
        1, b"1-0",  # request 0: settled and recorded
        lost, b"1-1",  # request 1: recorded, its settlement unconfirmed
        1, lost,  # request 2: settled, its event unconfirmed
        lost, lost,  # request 3: nothing confirmed
    ]  # fmt: skip

    assert _spool_records(batch, results) == [
        {"event_id": "1", "_settle": settles[1]},  # the event again is harmless: ingest dedups by id
        {"event_id": "2", "_settled": True},  # the settlement must not run twice
        {"event_id": "3", "_settle": settles[3]},
    ]
    # Scripts Redis forgot (NOSCRIPT) did not run: their requests are spooled whole.
    noscript = RespError("NOSCRIPT No matching script")
    assert _spool_records(batch[:1], [noscript, b"1-0"]) == [{"event_id": "0", "_settle": settles[0]}]
    # Without replies (the write itself failed) every request is spooled whole.
    assert _spool_records(batch, None) == [{"event_id": str(n), "_settle": settles[n]} for n in range(4)]


def test_a_spooled_event_whose_settlement_took_effect_is_replayed_without_it(
    tmp_path, private_redis, start_edge, mock_upstream
):
    from edge.limits import served_key

    spool_dir = tmp_path / "crashed"
    spool_dir.mkdir()
    settled, unsettled = spool_event(0), spool_event(1)
    write_spool(spool_dir / f"spool-{dead_pid()}.jsonl", [{**settled, "_settled": True}, unsettled])

    replaying_edge(start_edge, mock_upstream, private_redis, spool_dir)
    client = private_redis.client()
    wait_until(lambda: client.xlen("tg:usage") >= 2, 10, "the replay")
    assert stream_events(client) == [settled, unsettled]
    # Only the request that was not settled yet is counted as served now.
    counters = client.hgetall(served_key(1, unsettled["ended_at_ms"]))
    assert counters == {b"key_crashed:requests": b"1", b"key_crashed:tokens": b"19"}
    client.close()


def test_readyz_follows_redis_while_healthz_stays_up(private_redis, start_edge, mock_upstream):
    edge = start_edge(
        [{"model": "*", "upstreams": [{"url": mock_upstream.url}]}], redis_url=private_redis.url
    )

    ready = httpx.get(f"{edge.url}/readyz", timeout=5)
    assert (ready.status_code, ready.json()) == (200, {"status": "ok", "redis": "ok"})

    private_redis.kill()
    down = wait_until(
        lambda: (response := httpx.get(f"{edge.url}/readyz", timeout=10)).status_code == 503 and response,
        10,
        "/readyz to report Redis down",
    )
    assert down.json() == {"status": "unavailable", "redis": "error"}
    alive = httpx.get(f"{edge.url}/healthz", timeout=5)
    assert (alive.status_code, alive.json()) == (200, {"status": "ok"})

    private_redis.start()
    wait_until(
        lambda: httpx.get(f"{edge.url}/readyz", timeout=10).status_code == 200, 10, "/readyz to recover"
    )
