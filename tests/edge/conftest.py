"""Fixtures for the edge: real processes (mock model server, edge), real Redis, real Postgres.

The portal publishes key records to the test's Redis database; edge processes started
here read the same database, exactly as in production.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, process: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{what} did not start within {timeout}s")
        time.sleep(0.05)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class MockUpstream:
    def __init__(self, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge.mock_upstream",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *extra,
            ],
            cwd=ROOT,
        )
        wait_http(f"{self.url}/healthz", self.process, "mock upstream")

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/mock/stats").json()

    def last(self) -> dict:
        return httpx.get(f"{self.url}/mock/last").json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/mock/reset")

    def stop(self) -> None:
        stop(self.process)


def serve_http(handler: type[BaseHTTPRequestHandler]):
    """Run a threaded HTTP server on a free loopback port for the fixture's lifetime."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.hits = 0
    server.lock = threading.Lock()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


class TornAnswer(BaseHTTPRequestHandler):
    """Promise 200 bytes of JSON, send 10, and hang up."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "200")
        self.end_headers()
        self.wfile.write(b'{"id":"cha')
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


class EdgeProcess:
    """``python -m edge`` with a generated config; one worker unless told otherwise."""

    def __init__(
        self,
        *,
        redis_url: str,
        pepper: str,
        routes: list[dict],
        spool_dir: Path,
        workers: int = 1,
        extra_config: dict | None = None,
        env: dict | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spool_dir = spool_dir
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "workers": workers,
            "spool": {"dir": str(spool_dir), "fsync_ms": 20},
            "routes": routes,
            **(extra_config or {}),
        }
        self.config_path = spool_dir.parent / f"edge-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = spool_dir.parent / f"edge-{self.port}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge", "--config", str(self.config_path)],
            cwd=ROOT,
            env={**os.environ, "KEY_PEPPER": pepper, "EDGE_REDIS_URL": redis_url, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a test can kill the master and its workers
        )
        wait_http(f"{self.url}/healthz", self.process, f"edge (log: {self.log_path})")

    def stop(self) -> None:
        stop(self.process)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def mock_upstream():
    upstream = MockUpstream()
    yield upstream
    upstream.stop()


@pytest.fixture
def start_edge(settings, tmp_path):
    """Start edge processes against the test's Redis; all are stopped after the test."""
    started: list[EdgeProcess] = []

    def start(
        routes, *, workers: int = 1, redis_url: str | None = None, spool_dir: Path | None = None, **kwargs
    ):
        spool = spool_dir or tmp_path / f"spool-{len(started)}"
        edge = EdgeProcess(
            redis_url=redis_url or settings.REDIS_URL,
            pepper=settings.KEY_PEPPER,
            routes=routes,
            spool_dir=spool,
            workers=workers,
            **kwargs,
        )
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.stop()


@pytest.fixture
def edge(start_edge, mock_upstream):
    """One edge routing every model to the mock upstream."""
    return start_edge([{"model": "*", "upstreams": [{"url": mock_upstream.url}]}])


@pytest.fixture
def make_key(django_capture_on_commit_callbacks):
    """Create an org (once per test) and keys in it through the real services; publish on commit."""
    from keys import services
    from portal.audit import Actor
    from tests.factories import make_org, make_user

    state = {}

    def make(organization=None, **fields):
        if organization is None:
            if "org" not in state:
                owner = make_user()
                state["owner"] = owner
                state["org"] = make_org(owner)
            organization = state["org"]
        owner = state.get("owner")
        fields.setdefault("name", "test key")
        with django_capture_on_commit_callbacks(execute=True):
            key, secret = services.api_key_create(
                actor=Actor(user=owner), organization=organization, **fields
            )
        return key, secret

    return make


@pytest.fixture(scope="module")
def start_module_edge(tmp_path_factory):
    """Start edge processes that serve every test of a module; they are stopped after it.

    Starting a process costs most of a second, so a module shares one. Each test still
    begins with an empty Redis database, which the edge reads on every request.
    """
    from django.conf import settings

    started: list[EdgeProcess] = []

    def start(routes, *, workers: int = 1, **kwargs):
        edge = EdgeProcess(
            redis_url=settings.REDIS_URL,
            pepper=settings.KEY_PEPPER,
            routes=routes,
            spool_dir=tmp_path_factory.mktemp("edge") / "spool",
            workers=workers,
            **kwargs,
        )
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.stop()


@pytest.fixture
def usage_events(settings):
    """Return ``read(count)``: the usage events on ``tg:usage`` once ``count`` have arrived.

    The edge publishes after the response, so this waits (up to ``timeout``) for ``count``
    events, then a moment longer so that an extra event would be seen too.
    """
    import json

    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)

    def read(count: int, *, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while client.xlen("tg:usage") < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        return [json.loads(fields[b"data"]) for _, fields in client.xrange("tg:usage")]

    yield read
    client.close()


@pytest.fixture
def edge_metric():
    """Return ``read(edge, name, **labels)``: the sum of a counter's series on the edge's /metrics.

    Only series carrying every given label value are summed.
    """

    def read(edge: EdgeProcess, name: str, **labels: str) -> float:
        text = httpx.get(f"{edge.url}/metrics").text
        wanted = [f'{label}="{value}"' for label, value in labels.items()]
        total = 0.0
        for line in text.splitlines():
            series, _, number = line.rpartition(" ")
            if series.split("{")[0] == name and all(label in series for label in wanted):
                total += float(number)
        return total

    return read


@pytest.fixture(autouse=True)
def _data_plane_synced(_fresh_redis, settings):
    """The portal's full resync has run (``tg:synced``): a missing key record means no such key.

    Without the marker the edge takes a missing record for data Redis lost, and answers 503
    rather than 401 (tests/edge/test_redis_restart.py covers that).
    """
    import redis

    from edge.records import SYNCED_KEY

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(SYNCED_KEY, '{"v":1,"at":0}')
    client.close()
