"""Redis restarted empty (no persistence): valid keys are served again within seconds, with no
one running edge_sync: the edge never answers 401 for them, and a consumer rewrites the data
plane when it finds the resync marker gone."""

import threading
import time

import httpx
import pytest

from tests.servers import PrivateRedis
from tests.usage.processes import ConsumerProcess, current_database_url

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_redis_restarted_empty_serves_valid_keys_again_within_seconds_without_edge_sync(
    tmp_path, settings, start_edge, mock_upstream, make_key, raw_events_cleared
):
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    settings.EDGE_REDIS_URL = server.url  # the portal publishes where the edge reads
    consumer = None
    try:
        _seen_key, seen = make_key()
        _unseen_key, unseen = make_key()
        consumer = ConsumerProcess(
            tmp_path, name="ingest-restart", database_url=current_database_url(), redis_url=server.url
        )
        edge = start_edge(
            [{"model": "*", "upstreams": [{"url": mock_upstream.url}]}],
            redis_url=server.url,
            extra_config={"auth_cache": {"ttl_seconds": 0.5, "stale_seconds": 60}},
        )

        def call(secret: str) -> int:
            try:
                return httpx.post(
                    f"{edge.url}/v1/chat/completions",
                    json={"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"authorization": f"Bearer {secret}"},
                    timeout=5,
                ).status_code
            except httpx.HTTPError:
                return 0

        deadline = time.monotonic() + 20
        while call(seen) != 200:  # the consumer's first resync has run; the edge knows this key
            assert time.monotonic() < deadline, "the seen key never worked"
            time.sleep(0.1)

        statuses: dict[str, list[tuple[float, int]]] = {"seen": [], "unseen": []}
        stop = threading.Event()

        def probe(name: str, secret: str) -> None:
            while not stop.is_set():
                statuses[name].append((time.monotonic(), call(secret)))
                time.sleep(0.05)

        server.restart()  # SIGKILL, then the same port with nothing in it
        restarted = time.monotonic()
        probes = [threading.Thread(target=probe, args=item) for item in (("seen", seen), ("unseen", unseen))]
        for thread in probes:
            thread.start()
        deadline = time.monotonic() + 15
        while not any(status == 200 for _at, status in statuses["unseen"]):
            assert time.monotonic() < deadline, (
                f"the unseen key never worked again: {statuses['unseen'][-5:]}"
            )
            time.sleep(0.05)
        time.sleep(0.5)
        stop.set()
        for thread in probes:
            thread.join(10)

        first_ok = min(at for at, status in statuses["unseen"] if status == 200) - restarted
        print(f"unseen key served again {first_ok:.2f}s after the restart, without edge_sync")
        # Never 401 for either valid key; the one the edge knew was served throughout.
        assert 401 not in {status for _at, status in statuses["seen"] + statuses["unseen"]}
        assert {status for _at, status in statuses["seen"]} == {200}
        assert first_ok < 10
        assert consumer.alive
    finally:
        if consumer is not None:
            consumer.terminate()
        server.cleanup()
