"""Real ``manage.py ingest_usage`` processes for the consumer tests, and waits bounded in time.

A consumer process gets its stores from the environment exactly as in production
(``DATABASE_URL``, ``REDIS_URL``) and serves its Prometheus counters, which the tests read.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from tests.servers import free_port


def current_database_url() -> str:
    """Return the URL of the database this test runs against, for a child process."""
    db = connection.settings_dict
    user = db["USER"] or "postgres"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    return f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class ConsumerProcess:
    """``manage.py ingest_usage`` in a subprocess, its output in ``directory/<name>.log``."""

    def __init__(
        self,
        directory: Path,
        *,
        name: str,
        database_url: str,
        redis_url: str,
        args=(),
        env: dict | None = None,
    ):
        self.name = name
        self._signalled = False
        self.port = free_port()
        self.log = Path(directory) / f"{name}-{self.port}.log"
        extra_env = env
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DEBUG": "false",
        }
        env.pop("EDGE_REDIS_URL", None)
        env.pop("USAGE_CONSUMER_NAME", None)
        env.update(extra_env or {})
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "ingest_usage",
                    "--name",
                    name,
                    "--metrics-port",
                    str(self.port),
                    *args,
                ],
                cwd=settings.BASE_DIR,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def serving(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def metric(self, series: str) -> float:
        """Return the value of one exported series, e.g. ``name{store="redis"}``."""
        for line in httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == series:
                return float(value)
        raise AssertionError(f"{series} not exported by {self.name}")

    def output(self) -> str:
        return self.log.read_text()

    def messages(self) -> list[str]:
        """Return the messages of the JSON log lines the process wrote."""
        found = []
        for line in self.output().splitlines():
            try:
                found.append(json.loads(line)["message"])
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def kill(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def signal_stop(self) -> None:
        """Send SIGTERM, once.

        A second one could land while the process exits, after Python restored the default
        action, and kill it with -15.
        """
        if self.alive and not self._signalled:
            self.process.send_signal(signal.SIGTERM)
            self._signalled = True

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM, then wait; a process that does not stop in time is killed and fails the test."""
        self.signal_stop()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise AssertionError(f"{self.name} did not stop within {timeout}s on SIGTERM") from None


def wait(condition, what: str, consumers=(), timeout: float = 20) -> float:
    """Wait for ``condition``; fail at once if a consumer exits. Return the seconds waited."""
    started = time.monotonic()
    while not condition():
        for consumer in consumers:
            if not consumer.alive:
                pytest.fail(
                    f"{consumer.name} exited with {consumer.process.returncode}:\n{consumer.output()}"
                )
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started
