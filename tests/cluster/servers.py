"""A local Redis Cluster of three masters on free ports, for tests and benchmarks.

Each master is a ``redis-server --cluster-enabled yes`` in its own directory; ``redis-cli
--cluster create`` gives them the 16384 slots (no replicas). Every wait is bounded; ``stop()``
kills the servers and removes nothing but what they wrote in ``directory``.
"""

import random
import socket
import subprocess
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from tests.servers import _answers, _reap, wait_for


def cluster_port() -> int:
    """A free port whose cluster bus port (10000 above it, at most 65535) is free too."""
    while True:
        port = random.randint(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class LocalRedisCluster:
    def __init__(self, directory: Path, masters: int = 3):
        self.directory = Path(directory)
        self.ports = [cluster_port() for _ in range(masters)]
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        """A URL of one node: clients discover the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def client(self, **options) -> RedisCluster:
        return RedisCluster.from_url(self.url, **options)

    def start(self, timeout: float = 30) -> None:
        for port in self.ports:
            node = self.directory / str(port)
            node.mkdir(parents=True, exist_ok=True)
            process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(node),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    # Redis's default: a node stalled by a busy machine is not failed (and with
                    # no replicas, the whole cluster taken down) for a few seconds' pause.
                    "--cluster-node-timeout",
                    "15000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--logfile",
                    "redis.log",
                ],
                cwd=node,
                stdout=subprocess.DEVNULL,
            )
            self.processes.append(process)
            client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
            try:
                wait_for(
                    lambda c=client: _answers(c.ping),
                    what=f"cluster node {port}",
                    timeout=10,
                    process=process,
                )
            finally:
                client.close()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{port}" for port in self.ports],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=timeout,
        )
        wait_for(self._ok, what="the cluster to serve every slot", timeout=timeout)

    def _ok(self) -> bool:
        for port in self.ports:
            client = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)
            try:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
            finally:
                client.close()
        return True

    def flush(self) -> None:
        for port in self.ports:
            client = redis.Redis(port=port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for process in self.processes:
            _reap(process, 9, 10)
        self.processes = []
