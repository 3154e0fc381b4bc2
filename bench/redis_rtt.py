"""What one Redis round trip costs on this machine, which bounds what the edge's admission costs.

Run ``.venv/bin/python -m bench.redis_rtt [--redis-url redis://127.0.0.1:6379/0]``. It sends
PING back to back and after idle gaps, first over a blocking socket, then from an event loop
(uvloop, as the edge runs), then the edge's own admission script through ``Limiter.admit``,
and prints the medians. Loopback only; it stops by itself after a few seconds.
"""

import argparse
import asyncio
import socket
import statistics
import time
from urllib.parse import urlparse

import uvloop

from edge.batching import ScriptBatcher
from edge.limits import SCRIPTS, Limiter
from edge.records import KeyRecord, Limits
from edge.resp import RespConnection

PING = b"*1\r\n$4\r\nPING\r\n"
GAPS_MS = (0, 0.5, 5, 20)
SAMPLES = 1000


def blocking(host: str, port: int, gap: float) -> float:
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(SAMPLES):
            if gap:
                time.sleep(gap)
            started = time.perf_counter()
            sock.sendall(PING)
            sock.recv(64)
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


async def looped(url: str, gap: float) -> tuple[float, float]:
    connection = RespConnection(url)
    limiter = Limiter(ScriptBatcher(connection, SCRIPTS), 600)
    await limiter.batcher.load()
    unlimited = Limits(rpm=10**9, tpm=10**12, concurrency=10**6, budget_minor=10**12)
    record = KeyRecord("key_rtt", 0, "active", "test", "active", None, None, (), (), unlimited, unlimited)
    pings, admits = [], []
    for _ in range(SAMPLES):
        if gap:
            await asyncio.sleep(gap)
        started = time.perf_counter()
        await connection.execute([("PING",)])
        pings.append(time.perf_counter() - started)
        if gap:
            await asyncio.sleep(gap)
        started = time.perf_counter()
        await limiter.admit(record, estimated_tokens=30, reserved_cost=100)
        admits.append(time.perf_counter() - started)
    keys, _args = limiter_plan(record)
    await connection.execute([("DEL", *keys)])
    connection.close()
    return statistics.median(pings) * 1e6, statistics.median(admits) * 1e6


def limiter_plan(record: KeyRecord):
    from edge.limits import _plan

    return _plan(record.org_id, record.key_id, record.key_limits, record.org_limits)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args(argv)
    parsed = urlparse(args.redis_url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    blocking(host, port, 0)  # warm up: the first calls of a process are slower
    uvloop.run(looped(args.redis_url, 0))
    print("| idle gap before each call | PING, blocking socket | PING, event loop | edge admission script |")
    print("| ---: | ---: | ---: | ---: |")
    for gap_ms in GAPS_MS:
        gap = gap_ms / 1000
        ping_blocking = blocking(host, port, gap)
        ping_loop, admit = uvloop.run(looped(args.redis_url, gap))
        print(f"| {gap_ms:g} ms | {ping_blocking:.0f} µs | {ping_loop:.0f} µs | {admit:.0f} µs |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
