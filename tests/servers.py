"""Throwaway real servers for tests that kill and restart them: Redis and Postgres on free ports.

The suite's shared Postgres and Redis must never be killed; a test that needs a crash starts
its own server here, in its own directory, on a free port, and the fixture stops it again.
Every wait is bounded: a server that does not come up fails the test instead of hanging it.

The fixtures (``private_redis``, ``private_redis_aof``, ``private_postgres``) are a pytest
plugin of the whole suite (``pytest_plugins`` in tests/conftest.py); use the classes directly
for other lifetimes, and call ``cleanup()`` when done.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
# Postgres refuses to run as root; as root, private clusters run as this system user.
POSTGRES_OS_USER = "postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], object],
    *,
    what: str,
    timeout: float,
    process: subprocess.Popen | None = None,
    interval: float = 0.02,
):
    """Return the first truthy value of ``predicate``; fail after ``timeout`` or if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _reap(process: subprocess.Popen | None, sig: int, timeout: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class PrivateRedis:
    """A redis-server of the test's own, in ``directory``.

    Without ``appendonly`` nothing is persisted: a restart comes back empty, as a Redis without
    persistence does in production. With it, the append-only file is written with
    ``appendfsync everysec``; an acknowledged write has reached the file (the kernel's cache)
    before the reply, so it survives a SIGKILL of the server (not a power cut).
    """

    def __init__(self, directory: Path, appendonly: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options) -> redis.Redis:
        return redis.Redis.from_url(self.url, **options)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10) -> None:
        """Start the server (again) on the same port and directory; return once it answers PING."""
        assert not self.running, "redis-server is already running"
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--logfile",
            "redis.log",
        ]
        self.process = subprocess.Popen(command, cwd=self.directory, stdout=subprocess.DEVNULL)
        client = self.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            # A server still loading its append-only file answers LOADING (a ConnectionError).
            wait_for(
                lambda: _answers(client.ping),
                what=f"redis-server on port {self.port}",
                timeout=timeout,
                process=self.process,
            )
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, no final write, as in a crash."""
        _reap(self.process, signal.SIGKILL, 10)

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM)."""
        _reap(self.process, signal.SIGTERM, 10)

    def restart(self, timeout: float = 10) -> None:
        """Kill the server if it runs, then start it again on the same port and directory."""
        self.kill()
        self.start(timeout=timeout)

    def cleanup(self) -> None:
        self.kill()


def _answers(call: Callable[[], object]) -> bool:
    try:
        call()
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    return True


def postgres_bindir() -> Path:
    """Return the directory of the newest Postgres server binaries installed on the machine."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            return Path(found).parent
    raise RuntimeError("no Postgres server binaries (initdb) on this machine")


class PrivatePostgres:
    """A Postgres cluster of the test's own on a free port, migrated for Tollgate.

    ``start()`` creates the cluster (``initdb``), starts the postmaster, and the first time
    creates the database and runs ``manage.py migrate`` in a subprocess (settings
    ``tests.settings``). ``kill()`` SIGKILLs the postmaster, as in a crash; ``restart()``
    starts it again on the same port and data, and Postgres recovers from its WAL.

    As root the cluster runs as the ``postgres`` system user, and its data directory is a
    fresh one under the system temporary directory: pytest's own directories are private to
    root, so that user could not reach them. The server log is ``directory/postgres.log``.
    """

    database = "tollgate"

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.bindir = postgres_bindir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            self.data = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
            shutil.chown(self.data, POSTGRES_OS_USER, POSTGRES_OS_USER)
        else:
            self.data = self.directory / "pgdata"
            self.data.mkdir(mode=0o700)
        self.log = self.directory / "postgres.log"
        self.process: subprocess.Popen | None = None
        self._migrated = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _as_server_user(self) -> dict:
        if not self.as_root:
            return {}
        return {"user": POSTGRES_OS_USER, "group": POSTGRES_OS_USER, "extra_groups": []}

    def _environment(self) -> dict:
        env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def start(self, timeout: float = 30) -> None:
        """Start the postmaster (creating the cluster and the migrated database the first time)."""
        assert not self.running, "postgres is already running"
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-instructions",
                    "--no-sync",
                ],
                check=True,
                cwd=self.data,
                env=self._environment(),
                stdout=subprocess.DEVNULL,
                timeout=60,
                **self._as_server_user(),
            )
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.data),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={self.port}",
                    # TCP on loopback only: no socket file, whatever the length of the path.
                    "-c",
                    "unix_socket_directories=",
                    # A killed process loses nothing the kernel holds; fsync only guards power cuts.
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=50",
                ],
                cwd=self.data,
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as_server_user(),
            )
        wait_for(self._accepts, what=f"postgres on port {self.port}", timeout=timeout, process=self.process)
        if not self._migrated:
            self._migrate()

    def _accepts(self) -> bool:
        try:
            psycopg.connect(
                host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=2
            ).close()
        except psycopg.OperationalError:
            return False
        return True

    def _migrate(self) -> None:
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            check=True,
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": self.url, "DJANGO_SETTINGS_MODULE": "tests.settings"},
            timeout=120,
        )
        self._migrated = True

    def _children(self) -> list[int]:
        """Return the pids of the postmaster's processes (backends, checkpointer, ...)."""
        if not self.running:
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return children

    def kill(self, timeout: float = 15) -> None:
        """SIGKILL the postmaster, as in a crash; return once its children have exited too.

        The backends notice the postmaster's death and exit on their own; a new postmaster
        cannot start while one of them still holds the old shared memory.
        """
        children = self._children()
        _reap(self.process, signal.SIGKILL, 10)
        try:
            wait_for(
                lambda: not any(Path(f"/proc/{pid}").exists() for pid in children),
                what="the killed postmaster's processes to exit",
                timeout=timeout,
            )
        except TimeoutError:
            for pid in children:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            raise

    def stop(self) -> None:
        """Shut down cleanly (SIGINT: fast shutdown, clients are disconnected)."""
        _reap(self.process, signal.SIGINT, 30)

    def restart(self, timeout: float = 30) -> None:
        """Kill the postmaster if it runs, then start it again on the same port and data."""
        self.kill()
        self.start(timeout=timeout)

    def cleanup(self) -> None:
        if self.running:
            self.kill()
        if self.as_root:
            shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path):
    """Yield a started redis-server without persistence, killed at teardown."""
    server = PrivateRedis(tmp_path / "redis")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def private_redis_aof(tmp_path):
    """Yield a started redis-server with an append-only file, killed at teardown."""
    server = PrivateRedis(tmp_path / "redis-aof", appendonly=True)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def private_postgres(tmp_path):
    """Yield a started, migrated Postgres cluster of the test's own, removed at teardown."""
    server = PrivatePostgres(tmp_path / "postgres")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
