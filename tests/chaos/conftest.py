"""The chaos suite's own world: a private Postgres and Redis, an edge, consumers, all killable.

Nothing here touches the suite's shared servers: the tenant is seeded into the private
database through the real services (in a subprocess, so the test's own Django connection
is never pointed elsewhere), the edge and the consumers read the private Redis, and every
process started here is stopped at teardown, whatever the test did.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.edge.conftest import MockUpstream, wait_http
from tests.servers import ROOT, PrivatePostgres, free_port, wait_for

PRICED = "priced-model"
FREE = "mock-model"
# 100000 minor units per million output tokens: 10 output tokens cost 1 cent, 10**6 micro-minor.
OUTPUT_PER_MTOK_MINOR = 100_000
BURST_BUDGET_MINOR = 100  # the burst key's monthly budget: 100 answers of 1 cent


def django_env(postgres, redis_server) -> dict:
    """Return the environment of a Django process (seed, consumer) bound to the private servers."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": postgres.url,
        "EDGE_REDIS_URL": redis_server.url,
        # tests/settings.py derives REDIS_URL (cache, Celery) from this: keep it private too.
        "TEST_REDIS_SERVER": f"redis://127.0.0.1:{redis_server.port}",
        "LOG_LEVEL": "WARNING",
    }


SEED = textwrap.dedent(
    f"""
    import json

    import django

    django.setup()

    import redis
    from django.core.management import call_command

    from billing.services import model_price_set
    from edge.records import SYNCED_KEY
    from keys.publication import edge_redis
    from keys.services import api_key_create
    from portal.audit import Actor
    from tests.factories import make_org, make_user

    owner = make_user()
    organization = make_org(owner)
    model_price_set(
        actor=Actor.system(),
        model={PRICED!r},
        input_per_mtok_minor=0,
        output_per_mtok_minor={OUTPUT_PER_MTOK_MINOR},
    )
    load_key, load_secret = api_key_create(
        actor=Actor(user=owner), organization=organization, name="chaos load"
    )
    burst_key, burst_secret = api_key_create(
        actor=Actor(user=owner),
        organization=organization,
        name="chaos burst",
        budget_monthly_minor={BURST_BUDGET_MINOR},
    )
    call_command("edge_sync", stdout=open("/dev/null", "w"))
    # The full resync's marker (a missing key record then means "no such key"), if edge_sync
    # did not write it.
    edge_redis().set(SYNCED_KEY, '{{"v":1,"at":0}}', nx=True)
    print(json.dumps({{
        "organization_id": organization.pk,
        "load_secret": load_secret,
        "burst_secret": burst_secret,
        "burst_key_id": burst_key.pk,
    }}))
    """
)


@pytest.fixture
def chaos_postgres(tmp_path):
    """A started, migrated Postgres cluster of the test's own, to kill and restart."""
    server = PrivatePostgres(tmp_path / "postgres")
    try:
        server.start(timeout=60)
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def tenant(chaos_postgres, private_redis_aof) -> dict:
    """Seed an organization, a priced model and two keys in the private database; publish them."""
    done = subprocess.run(
        [sys.executable, "-c", SEED],
        cwd=ROOT,
        env=django_env(chaos_postgres, private_redis_aof),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"seeding the private database failed:\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def mock_upstream():
    upstream = MockUpstream()
    try:
        yield upstream
    finally:
        upstream.stop()


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


class ChaosEdge:
    """``python -m edge`` in its own process group, restartable on the same port and spool."""

    def __init__(self, directory: Path, *, redis_url: str, pepper: str, upstream_url: str, workers: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.spool_dir = directory / "spool"
        self.config_path = directory / "edge.yaml"
        self.config_path.write_text(
            yaml.safe_dump(
                {
                    "listen": {"host": "127.0.0.1", "port": self.port},
                    "workers": workers,
                    "spool": {"dir": str(self.spool_dir), "fsync_ms": 20},
                    "routes": [{"model": "*", "upstreams": [{"url": upstream_url}]}],
                }
            )
        )
        self.log_path = directory / "edge.log"
        self.env = {**os.environ, "KEY_PEPPER": pepper, "EDGE_REDIS_URL": redis_url}
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge", "--config", str(self.config_path)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # master and workers in one group: killpg takes them all
            )
        self.starts += 1
        wait_http(f"{self.url}/healthz", self.process, f"edge (log: {self.log_path})", timeout=30)

    def kill(self) -> None:
        """SIGKILL the master and its workers at once; return once the port is free."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        wait_for(lambda: _refuses(self.port), what="the killed edge's port to close", timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def start_chaos_edge(tmp_path, private_redis_aof, mock_upstream):
    """Start edges on the private Redis; every one is stopped (its whole group) at teardown."""
    from django.conf import settings

    started: list[ChaosEdge] = []

    def start(name: str) -> ChaosEdge:
        edge = ChaosEdge(
            tmp_path / name,
            redis_url=private_redis_aof.url,
            pepper=settings.KEY_PEPPER,
            upstream_url=mock_upstream.url,
        )
        started.append(edge)
        edge.start()
        return edge

    try:
        yield start
    finally:
        for edge in started:
            try:
                edge.stop()
            except ProcessLookupError:
                pass


class Consumers:
    """``manage.py ingest_usage --name chaos-<i>`` processes and the supervisor that watches them.

    A consumer the test kills on purpose is restarted by the test, by name, as a supervisor
    would. Any other exit is a consumer that did not survive a fault: the watcher records it
    against the phase in progress ("restarts needed") with the tail of its log, and restarts
    it by name so that the later phases can still be measured.
    """

    def __init__(self, directory: Path, env: dict, count: int = 2):
        self.directory = directory
        self.env = env
        self.names = [f"chaos-{index}" for index in range(count)]
        self.processes: dict[str, subprocess.Popen] = {}
        self.deliberately_down: set[str] = set()
        self.unexpected_exits: list[dict] = []
        self.restarts_needed: Counter = Counter()
        self.phase = "setup"
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="consumer-supervisor", daemon=True)

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self, name: str) -> None:
        with self.log_path(name).open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "ingest_usage",
                    "--name",
                    name,
                    "--claim-idle-ms",
                    "2000",
                    "--max-wait-ms",
                    "100",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.deliberately_down.discard(name)

    def start_all(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            self.start(name)
        self._watcher.start()

    def kill(self, name: str) -> None:
        """SIGKILL one consumer on purpose; the test restarts it with ``start(name)``."""
        with self._lock:
            self.deliberately_down.add(name)
            self.processes[name].kill()
        self.processes[name].wait(10)

    def alive(self) -> dict[str, bool]:
        return {name: process.poll() is None for name, process in self.processes.items()}

    def _watch(self) -> None:
        while not self._stopping.wait(0.1):
            for name, process in list(self.processes.items()):
                with self._lock:
                    if name in self.deliberately_down or process.poll() is None:
                        continue
                    self.unexpected_exits.append(
                        {
                            "phase": self.phase,
                            "consumer": name,
                            "returncode": process.returncode,
                            "log": _last_error(self.log_path(name)),
                        }
                    )
                    self.restarts_needed[self.phase] += 1
                    self.deliberately_down.add(name)  # until restarted below
                time.sleep(0.5)  # a supervisor's back-off: no tight crash loop
                if not self._stopping.is_set():
                    self.start(name)

    def stop_all(self) -> None:
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join(5)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _last_error(path: Path) -> str:
    """Return the last line of a consumer's log that names an exception (or its last line)."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or ["(empty log)"])[-1].strip()[:200]


@pytest.fixture
def consumers(tmp_path, chaos_postgres, private_redis_aof):
    supervised = Consumers(tmp_path / "consumers", django_env(chaos_postgres, private_redis_aof))
    try:
        yield supervised
    finally:
        supervised.stop_all()
