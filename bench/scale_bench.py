"""Measure what one more replica buys: 1 and 2 edges, 1 and 2 consumers, one Redis and a cluster.

Run ``.venv/bin/python -m bench.scale_bench`` (``--help`` for the options). Everything listens on
127.0.0.1, every phase has a fixed length or ends when its work is done, and everything started
is stopped at the end. It needs ``wrk`` (``bash bench/run_edge_bench.sh`` installs it), Postgres
and Redis on loopback, and ``redis-server``/``redis-cli`` to start a local 3-master Redis Cluster
(tests/cluster/servers.py) in a temporary directory.

1. Edge: the mock upstream directly, then 1 and 2 edge processes (one worker each: one core
   each at most) on one private redis-server and on the cluster, with a real key record, price
   and limits
   (bench/edge_bench.py's machinery). Two phases, each a warm-up then a measured period:
   latency at a paced load (``--connections`` in all, at most ``--rate`` req/s) and throughput
   (``--high-connections`` in all, no pause). With two edges the connections are split between
   two ``wrk`` processes, one per edge; requests/s are summed and the latency is the worse
   edge's. "Added" latency subtracts the direct figure. Phases interleave over ``--rounds``.
   The CPU the edges and the Redis servers spend per request (from /proc) gives requests/s per
   edge core and per Redis core, which moves less than the rates when the machine is shared.
2. Ingest: ``--events`` usage events of ``--orgs`` organizations are XADDed as the edge writes
   them, while 1 or 2 ``manage.py ingest_usage`` processes wait for them; events/s run from the
   first XADD to the moment every group has nothing pending or undelivered. One Redis has one
   stream (both consumers share its group); the cluster has ``--shards`` streams (one consumer
   reads all; two split them). The consumers' CPU per event is read from /proc; Postgres's
   transactions and row writes per event come from
   ``pg_stat_database`` of the benchmark database; raw rows must equal the events, or the run fails.

The table is printed and written to the "## Scale" section of bench/RESULTS.md.
"""

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from bench import edge_bench, ingest_bench
from bench.results import write_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Scale: edges, consumers, one Redis and a Redis Cluster"


# --- edges -------------------------------------------------------------------------------


def publish_key(redis_url: str, cluster: bool) -> tuple[str, str]:
    """Empty the data plane and publish the benchmark key; return it and its pepper.

    Once per store: every edge on it serves the same key (emptying it again would leave the
    edges started before without their record once their caches go stale).
    """
    import redis
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(redis_url) if cluster else redis.Redis.from_url(redis_url)
    client.flushdb()
    key_pepper = edge_bench.publish_bench_key(client)
    client.close()
    return key_pepper


def start_edges(
    args, work: Path, upstream: str, redis_url: str, count: int, cluster: bool, key_pepper: tuple[str, str]
) -> list:
    """Start ``count`` edges on the store at ``redis_url``; return their targets."""
    mode = "cluster" if cluster else "redis"
    extra = {"redis_cluster": True, "usage_stream_shards": args.shards} if cluster else {}
    return [
        edge_bench.start_edge(
            args,
            work,
            upstream,
            name=f"edge-{mode}-{count}-{index}",
            redis_url=redis_url,
            key_pepper=key_pepper,
            extra_config=extra,
        )
        for index in range(count)
    ]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (from /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def load(args, targets: list, redis_pids: list[int], *, connections: int, rate: float | None) -> dict:
    """Run wrk on every target at once (the connections split between them); warm up first.

    Besides req/s and latency, the CPU the targets (every process of their groups) and the Redis
    servers spent per request: it moves less than the rates when other work shares the machine.
    """
    share = max(1, connections // len(targets))
    delay_ms = share * len(targets) / rate * 1000 if rate else 0

    def run_all(seconds: float) -> list[dict]:
        results: list[dict | None] = [None] * len(targets)

        def run(index: int) -> None:
            results[index] = edge_bench.run_wrk(
                args, targets[index], connections=share, delay_ms=delay_ms, seconds=seconds
            )

        threads = [threading.Thread(target=run, args=(index,)) for index in range(len(targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if any(result is None for result in results):
            raise RuntimeError("a wrk run failed")
        return results

    run_all(args.warmup)
    leaders = [process.process.pid for target in targets for process in target.processes]
    cpu, redis_cpu = edge_bench.process_group_cpu_seconds(leaders), cpu_seconds(redis_pids)
    results = run_all(args.duration)
    cpu = edge_bench.process_group_cpu_seconds(leaders) - cpu
    redis_cpu = cpu_seconds(redis_pids) - redis_cpu
    requests = max(sum(result["requests"] for result in results), 1)
    if any(result["error_count"] for result in results):
        for target in targets:
            for process in target.processes:
                print(
                    f"   errors: {results} -- {process.name}:\n{process.log_tail()}",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        "rps": sum(result["rps"] for result in results),
        "p50_us": max(result["p50_us"] for result in results),
        "p99_us": max(result["p99_us"] for result in results),
        "cpu_us": cpu / requests * 1e6,
        "redis_cpu_us": redis_cpu / requests * 1e6,
        "errors": sum(result["error_count"] for result in results),
    }


def edge_phases(args, work: Path, single, cluster) -> dict:
    """Every edge set-up, phases interleaved over the rounds; return the median of each figure."""
    mock = edge_bench.start_mock(args, work)
    setups = {"direct": [mock]}
    redis_pids = {"direct": [], "redis": [single.process.pid], "cluster": [p.pid for p in cluster.processes]}
    try:
        for mode, url, is_cluster in (("redis", single.url, False), ("cluster", cluster.url, True)):
            key_pepper = publish_key(url, is_cluster)
            for count in (1, 2):
                print(f"== starting {count} edge(s) on {mode}", file=sys.stderr, flush=True)
                setups[f"{mode}-{count}"] = start_edges(
                    args, work, mock.url, url, count, is_cluster, key_pepper
                )
                for target in setups[f"{mode}-{count}"]:
                    edge_bench.check_target(target)
        runs: dict[tuple[str, str], list[dict]] = {}
        for round_number in range(1, args.rounds + 1):
            for phase, connections, rate in (
                ("latency", args.connections, args.rate),
                ("throughput", args.high_connections, None),
            ):
                for name, targets in setups.items():
                    pids = redis_pids[name.partition("-")[0]]
                    result = load(args, targets, pids, connections=connections, rate=rate)
                    runs.setdefault((name, phase), []).append(result)
                    print(f"   round {round_number} {phase} {name}: {result}", file=sys.stderr, flush=True)
    finally:
        for name, targets in setups.items():
            if name != "direct":
                for target in targets:
                    target.stop()
        mock.stop()
    return {
        key: {figure: statistics.median(run[figure] for run in results) for figure in results[0]}
        | {"errors": sum(run["errors"] for run in results)}
        for key, results in runs.items()
    }


# --- ingest ------------------------------------------------------------------------------


def pg_counters() -> tuple[int, int]:
    """(committed transactions, rows inserted + updated) of the benchmark database so far.

    A backend reports its counts when idle for a while or when it exits: this process's own
    connection is closed first (the other writers, the consumers, have exited or not started).
    """
    from django.db import connection

    connection.close()
    time.sleep(0.5)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT xact_commit, tup_inserted + tup_updated FROM pg_stat_database WHERE datname = current_database()"
        )
        commits, rows = cursor.fetchone()
    return int(commits), int(rows)


def start_consumers(args, work: Path, redis_url: str, cluster: bool, count: int) -> list[subprocess.Popen]:
    shards = args.shards if cluster else 1
    assignment = [",".join(str(s) for s in range(shards) if s % count == index) for index in range(count)]
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "REDIS_URL": args.redis_url,
        "EDGE_REDIS_URL": redis_url,
        "EDGE_REDIS_CLUSTER": "true" if cluster else "false",
        "USAGE_STREAM_SHARDS": str(shards),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    env.pop("USAGE_CONSUMER_SHARDS", None)
    processes = []
    for index, shard_list in enumerate(assignment):
        log = (work / f"consumer-{'cluster' if cluster else 'redis'}-{count}-{index}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "ingest_usage",
                    "--name",
                    f"scale-{index}",
                    "--shards",
                    shard_list,
                    "--batch-size",
                    str(args.batch_size),
                    "--max-wait-ms",
                    "50",
                    "--no-edge-resync",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return processes


def groups_ready(client, streams: list[str], consumers: int) -> bool:
    """Whether every stream's group exists and (all together) every consumer has read once."""
    names = set()
    for stream in streams:
        if not client.exists(stream):
            return False
        for group in client.xinfo_groups(stream):
            names.update(consumer["name"] for consumer in client.xinfo_consumers(stream, group["name"]))
    return len(names) >= consumers


def drained(client, streams: list[str]) -> bool:
    return all(ingest_bench.drained(client, stream, "ingest") for stream in streams)


def ingest_phase(args, work: Path, client, redis_url: str, cluster: bool, count: int, payloads) -> dict:
    """Drain ``payloads`` (per shard) with ``count`` consumer processes; time first XADD to last ack."""
    from edge.streams import usage_stream

    shards = args.shards if cluster else 1
    streams = [usage_stream(shard, shards) for shard in range(shards)]
    ingest_bench.reset(client)
    processes = start_consumers(args, work, redis_url, cluster, count)
    try:
        deadline = time.monotonic() + 60
        while not groups_ready(client, streams, count):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"consumers did not start; see {work}/consumer-*.log")
            time.sleep(0.1)
        commits, rows = pg_counters()
        consumer_cpu = cpu_seconds([process.pid for process in processes])
        started = time.perf_counter()
        for shard, shard_payloads in payloads(shards).items():
            ingest_bench.produce(client, shard_payloads, usage_stream(shard, shards))
        deadline = started + args.timeout
        while not drained(client, streams):
            if time.perf_counter() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError(f"the streams were not drained; see {work}/consumer-*.log")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        consumer_cpu = cpu_seconds([process.pid for process in processes]) - consumer_cpu
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    commits_after, rows_after = pg_counters()
    raw, requests, rollup_rows = ingest_bench.counts()
    n = args.events
    return {
        "rate": n / elapsed,
        "cpu_us": consumer_cpu / n * 1e6,
        "transactions_per_event": (commits_after - commits) / n,
        "rows_per_event": (rows_after - rows) / n,
        "rollup_rows": rollup_rows,
        "ok": raw == n and requests == n,
    }


def ingest_phases(args, work: Path, single, cluster) -> dict:
    """Both stores, 1 and 2 consumers, over the rounds; the median of each figure."""
    import redis

    from edge.streams import shard_of

    organizations = [
        ingest_bench.setup_tenant(args.keys, name=f"Scale benchmark {index + 1}")
        for index in range(args.orgs)
    ]
    per_org = args.events // args.orgs
    events = {
        organization.pk: ingest_bench.make_events(per_org, organization, keys, 10, index, spread="hour")
        for index, (organization, keys) in enumerate(organizations)
    }
    args.events = per_org * args.orgs

    def payloads(shards: int) -> dict[int, list[bytes]]:
        by_shard: dict[int, list[bytes]] = {}
        for org_id, org_events in events.items():
            by_shard.setdefault(shard_of(org_id, shards), []).extend(org_events)
        return by_shard

    stores = {"redis": (redis.Redis.from_url(single.url), single.url, False)}
    stores["cluster"] = (cluster.client(), cluster.url, True)
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_number in range(1, args.rounds + 1):
        for mode, (client, url, is_cluster) in stores.items():
            for count in (1, 2):
                result = ingest_phase(args, work, client, url, is_cluster, count, payloads)
                runs.setdefault((mode, count), []).append(result)
                print(
                    f"   round {round_number} ingest {mode} x{count}: {result}", file=sys.stderr, flush=True
                )
    for client, _url, _cluster in stores.values():
        client.close()
    return {
        key: {
            figure: statistics.median(run[figure] for run in results)
            for figure in results[0]
            if figure != "ok"
        }
        | {"ok": all(run["ok"] for run in results)}
        for key, results in runs.items()
    }


# --- report ------------------------------------------------------------------------------


def report(args, command: str, edges: dict, ingest: dict, load_before, load_after) -> str:
    direct = {phase: edges[("direct", phase)] for phase in ("latency", "throughput")}

    def added(name: str, figure: str) -> str:
        return f"{(edges[(name, 'latency')][figure] - direct['latency'][figure]) / 1000:+.2f}"

    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        *edge_bench.machine_info(args)[:2],
        f"- Load average before the run {' / '.join(f'{v:.2f}' for v in load_before)}, after "
        f"{' / '.join(f'{v:.2f}' for v in load_after)} (anything else running on the machine "
        "lowers every rate: compare these before comparing runs).",
        f"- Edge phases: {args.rounds} rounds, {args.warmup} s warm-up + {args.duration} s measured; "
        f"latency at {args.connections} connections paced to {args.rate} req/s in all, throughput at "
        f"{args.high_connections} connections; 1 worker per edge; mock pinned to CPU {args.mock_cpus}, "
        f"wrk to CPU {args.load_cpus}, edges and Redis on any CPU. One Redis: a private redis-server; "
        f"cluster: 3 private masters; {args.shards} usage stream shards on the cluster. CPU per request is "
        "from /proc (the edges' processes; the Redis servers) during the throughput phase.",
        f"- Ingest: {args.events:,} events of {args.orgs} organizations ({args.keys} keys each), end "
        f"times over the last hour, batches of {args.batch_size}; median of {args.rounds} rounds.",
        "",
        "| edge set-up | req/s (throughput) | × 1 edge | p50 added ms | p99 added ms | edge CPU µs/req | "
        "req/s per edge core | Redis CPU µs/req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| mock upstream, direct | {direct['throughput']['rps']:,.0f} | | "
        f"{direct['latency']['p50_us'] / 1000:.2f} (abs.) | {direct['latency']['p99_us'] / 1000:.2f} (abs.) | "
        f"| | | {direct['throughput']['errors'] + direct['latency']['errors']:.0f} |",
    ]
    for mode, label in (("redis", "one Redis"), ("cluster", "Redis Cluster")):
        one = edges[(f"{mode}-1", "throughput")]["rps"]
        for count in (1, 2):
            name = f"{mode}-{count}"
            rps = edges[(name, "throughput")]["rps"]
            errors = edges[(name, "throughput")]["errors"] + edges[(name, "latency")]["errors"]
            cpu = edges[(name, "throughput")]["cpu_us"]
            lines.append(
                f"| {count} edge{'s' if count > 1 else ''}, {label} | {rps:,.0f} | {rps / one:.2f} | "
                f"{added(name, 'p50_us')} | {added(name, 'p99_us')} | {cpu:.0f} | {1e6 / cpu:,.0f} | "
                f"{edges[(name, 'throughput')]['redis_cpu_us']:.0f} | {errors:.0f} |"
            )
    lines += [
        "",
        "| ingest set-up | events/s | × 1 consumer | consumer CPU µs/event | events/s per consumer core | "
        "Postgres transactions / event | rows written / event | raw rows == events |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode, label in (
        ("redis", "one Redis, 1 stream"),
        ("cluster", f"Redis Cluster, {args.shards} shards"),
    ):
        one = ingest[(mode, 1)]["rate"]
        for count in (1, 2):
            result = ingest[(mode, count)]
            lines.append(
                f"| {count} consumer{'s' if count > 1 else ''}, {label} | {result['rate']:,.0f} | "
                f"{result['rate'] / one:.2f} | {result['cpu_us']:.0f} | {1e6 / result['cpu_us']:,.0f} | "
                f"{result['transactions_per_event']:.4f} | "
                f"{result['rows_per_event']:.2f} | {'yes' if result['ok'] else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every phase; medians are reported")
    parser.add_argument("--duration", type=int, default=8, help="measured seconds per edge phase")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each edge phase")
    parser.add_argument("--connections", type=int, default=16, help="connections of the latency phase")
    parser.add_argument("--rate", type=int, default=1000, help="upper bound of the latency phase, req/s")
    parser.add_argument(
        "--high-connections", type=int, default=64, help="connections of the throughput phase"
    )
    parser.add_argument("--mock-cpus", default="0", help="taskset CPU list of the mock ('' = any)")
    parser.add_argument("--load-cpus", default="1", help="taskset CPU list of wrk ('' = any)")
    parser.add_argument("--proxy-cpus", default="", help="taskset CPU list of the edges ('' = any)")
    parser.add_argument("--shards", type=int, default=4, help="usage stream shards on the cluster")
    parser.add_argument("--events", type=int, default=40_000, help="events per ingest phase")
    parser.add_argument("--orgs", type=int, default=8, help="organizations the events belong to")
    parser.add_argument("--keys", type=int, default=5, help="keys per organization")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=300, help="seconds an ingest phase may take")
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/tollgate_scale_bench",
        help="benchmark database, created and migrated when missing (its usage tables are emptied!)",
    )
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    if "bench" not in urlparse(args.database_url).path:
        parser.error("--database-url must name a benchmark database (its name contains 'bench')")
    # What bench/edge_bench.py's machinery reads: one worker per edge, the mock's settings.
    args.proxy_workers = 1
    args.edge_cmd = "{python} -m edge --config {config}"
    args.stream_chunk_delay_ms = 5
    args.baseline = ""
    args.litellm = ""
    return args


def prepare_database(url: str) -> None:
    """Create the benchmark database when missing, and migrate it."""
    import psycopg
    from psycopg import sql

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    with psycopg.connect(parsed._replace(path="/postgres").geturl(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url, "DEBUG": "true"},
        check=True,
        timeout=300,
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench.scale_bench", *argv])
    if not all(map(edge_bench.shutil.which, ("wrk", "redis-server", "redis-cli"))):
        print(
            "wrk, redis-server and redis-cli are needed (bench/run_edge_bench.sh installs wrk)",
            file=sys.stderr,
        )
        return 2
    load_before = os.getloadavg()
    prepare_database(args.database_url)
    from tests.cluster.servers import LocalRedisCluster
    from tests.servers import PrivateRedis

    with tempfile.TemporaryDirectory(prefix="tollgate-scale-") as tmp:
        work = Path(tmp)
        single = PrivateRedis(work / "redis")
        cluster = LocalRedisCluster(work / "cluster")
        try:
            single.start()
            cluster.start()
            args.redis_url = single.url
            ingest_bench.configure_environment(args)
            from usage.partitions import partitions_ensure

            partitions_ensure()
            edges = edge_phases(args, work, single, cluster)
            ingest = ingest_phases(args, work, single, cluster)
        finally:
            cluster.stop()
            single.cleanup()
    text = report(args, command, edges, ingest, load_before, os.getloadavg())
    print(text)
    if not args.no_write:
        write_section(Path(args.output), SECTION, text)
    return 0 if all(result["ok"] for result in ingest.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
