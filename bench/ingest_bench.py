"""Measure usage ingestion: the stream into Postgres with rollups, beside the raw COPY ceiling.

Run ``bash bench/run_ingest_bench.sh`` (it creates and migrates the ``tollgate_bench``
database), or ``.venv/bin/python -m bench.ingest_bench --help``. Everything is on loopback and
every phase ends when its work is done. One run, side by side, on the same N events:

1. COPY ceiling: psycopg ``cursor.copy()`` of the same rows into a plain copy of the raw table
   (no partitions, no index but the primary key), one statement.
2. Insert path: ``usage_events_ingest`` on batches decoded and validated beforehand (no Redis).
3. Stream: the events are XADDed to ``tg:usage`` exactly as the edge writes them, then K
   consumer processes (``UsageConsumer.run``, as ``manage.py ingest_usage`` runs it) drain the
   stream; the clock runs from the start signal until the group has no pending and no
   undelivered entry. Afterwards raw rows == N and SUM(rollup requests) == N, or the run fails.

The paths run in rounds (``--repeat``, interleaved, so that a burst of load elsewhere hits one
run of each) and the median run of each is reported. Besides events/s, the CPU time per event
of the Python processes and of the Postgres backends serving them is read from /proc: it moves
less than the rates when other work shares the machine.

The database is emptied (usage tables truncated) and the Redis db flushed: give it its own.
Results are printed as markdown and written to the "## Usage ingestion" section of
bench/RESULTS.md (bench/results.py); a hand-written "### Notes" subsection at its end is kept.
"""

import argparse
import os
import platform
import random
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Usage ingestion"
NOTES = "### Notes"
ORG_NAME = "Ingest benchmark"
OWNER_EMAIL = "ingest-bench@example.invalid"
COPY_TABLE = "bench_usage_event_copy"
ENDPOINTS = ("chat.completions", "chat.completions", "chat.completions", "completions", "embeddings")


def configure_environment(args) -> None:
    """Point Django at the benchmark database and Redis db, with production-like settings."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["REDIS_URL"] = args.redis_url
    os.environ["EDGE_REDIS_URL"] = args.redis_url
    # DEBUG off as in production: DEBUG wraps every cursor to record its SQL.
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_hex(24))
    os.environ.setdefault("KEY_PEPPER", "bench-" + secrets.token_hex(24))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    django_setup()


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


class BackendClock:
    """CPU seconds spent by the Postgres backends serving this process's Django connection.

    Read from /proc (the server runs on this machine); the connection may be reopened by
    ``close_old_connections``, so every backend seen is followed from its first sample.
    """

    def __init__(self):
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}

    def sample(self) -> None:
        from django.db import connection

        if connection.connection is None:
            return
        pid = connection.connection.info.backend_pid
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        self.first.setdefault(pid, seconds)
        self.last[pid] = seconds

    @property
    def seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


# --- consumer process --------------------------------------------------------------------


def consumer_main(argv: list[str]) -> int:
    """Run one UsageConsumer: report ready, wait for "go" on stdin, run until SIGTERM."""
    parser = argparse.ArgumentParser(prog="ingest_bench consumer")
    parser.add_argument("--name", required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-wait-ms", type=int, required=True)
    args = parser.parse_args(argv)
    django_setup()  # the environment comes from the parent process
    import orjson
    import redis
    from django.conf import settings
    from django.db import connection

    from usage.consumer import UsageConsumer

    class TimedConsumer(UsageConsumer):
        """Record how long each batch takes from read to acknowledgement."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.latencies: list[float] = []
            self.sizes: list[int] = []
            self.backend = BackendClock()

        def process(self, messages):
            if not messages:
                return super().process(messages)
            started = time.perf_counter()
            result = super().process(messages)
            ended = time.perf_counter()
            self.backend.sample()
            self.latencies.append(ended - started)
            self.sizes.append(len(messages))
            return result

    client = redis.Redis.from_url(settings.EDGE_REDIS_URL, socket_timeout=30)
    consumer = TimedConsumer(client, name=args.name, batch_size=args.batch_size, max_wait_ms=args.max_wait_ms)
    consumer.ensure_group()
    connection.ensure_connection()  # before the clock starts
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1
    consumer.backend.sample()
    cpu = time.process_time()
    consumer.run(install_signals=True)
    cpu = time.process_time() - cpu
    print(
        orjson.dumps(
            {
                "name": args.name,
                "latencies": consumer.latencies,
                "sizes": consumer.sizes,
                "busy": sum(consumer.latencies),
                "cpu": cpu,
                "backend_cpu": consumer.backend.seconds,
            }
        ).decode(),
        flush=True,
    )
    return 0


# --- set-up ------------------------------------------------------------------------------


def setup_tenant(n_keys: int, name: str = ORG_NAME):
    """Return the benchmark organization ``name`` and its keys, creating what is missing."""
    from keys.models import ApiKey
    from keys.services import api_key_create
    from portal.audit import Actor
    from portal.models import Organization, User
    from portal.services import organization_create

    owner = User.objects.filter(email=OWNER_EMAIL).first() or User.objects.create_user(
        email=OWNER_EMAIL, password=secrets.token_urlsafe(16)
    )
    actor = Actor(user=owner)
    organization = Organization.objects.filter(name=name).first() or organization_create(
        actor=actor, name=name
    )
    keys = list(ApiKey.objects.for_organization(organization).order_by("pk"))
    for index in range(len(keys), n_keys):
        key, _secret = api_key_create(actor=actor, organization=organization, name=f"bench key {index + 1}")
        keys.append(key)
    return organization, keys[:n_keys]


def make_events(n: int, organization, keys, n_models: int, seed: int, spread: str = "month") -> list[bytes]:
    """Build N edge usage events (the JSON edge/app.py ``_meter`` writes).

    Their end times are spread over this month's hours so far (``month``: nearly every event
    opens a rollup row of its own, the rollups' worst case) or over the last hour (``hour``:
    the steady state of a running system, where a batch mostly adds to existing rollup rows).
    """
    import orjson

    from edge.metering import new_event
    from edge.records import Price

    rng = random.Random(seed)
    price = Price(input=Decimal(150), output=Decimal(600), cached_input=Decimal(75))
    models = [f"bench-model-{index:02d}" for index in range(n_models)]
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    first = month_start if spread == "month" else now - timedelta(hours=1)
    first_ms = int(first.timestamp() * 1000)
    last_ms = max(int((now - timedelta(seconds=1)).timestamp() * 1000), first_ms + 1)
    payloads = []
    for _ in range(n):
        key = rng.choice(keys)
        endpoint = rng.choice(ENDPOINTS)
        status = rng.choices((200, 429, 500, 499), weights=(96, 2, 1, 1))[0]
        ok = status == 200
        input_tokens = rng.randint(8, 4000) if status != 429 else 0
        output_tokens = rng.randint(1, 1000) if ok and endpoint != "embeddings" else 0
        cached = rng.choice((0, 0, 0, input_tokens // 2))
        ended_ms = rng.randint(first_ms, last_ms)
        latency = rng.uniform(20, 8000)
        stream = endpoint == "chat.completions" and rng.random() < 0.5
        event = new_event(
            request_id=str(uuid.UUID(int=rng.getrandbits(128))),
            key_id=key.public_id,
            org_id=organization.pk,
            environment=key.environment,
            endpoint=endpoint,
            model=rng.choice(models),
            stream=stream,
            status=status,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached,
            estimated=ok and rng.random() < 0.01,
            cost_micro_minor=price.cost_micro_minor(input_tokens, output_tokens, cached),
            latency_ms=round(latency, 3),
            ttft_ms=round(latency * rng.uniform(0.05, 0.5), 3) if ok else None,
            upstream="http://127.0.0.1:8000",
            started_at_ms=ended_ms - int(latency),
            ended_at_ms=ended_ms,
        )
        payloads.append(orjson.dumps(event))
    return payloads


def reset(client) -> None:
    """Empty the usage tables and the Redis db, so that every phase starts from the same state."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE usage_event, usage_usagerollup")
        cursor.execute("UPDATE keys_apikey SET last_used_at = NULL")
        cursor.execute("CHECKPOINT")  # keep one phase's dirty pages out of the next one's timing
    client.flushdb()


def counts() -> tuple[int, int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_event")
        raw = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(sum(requests), 0), count(*) FROM usage_usagerollup")
        requests, rollup_rows = cursor.fetchone()
    return raw, int(requests), rollup_rows


def decode(payloads: list[bytes]):
    """Decode and validate the payloads as the consumer does; return the events."""
    import orjson

    from usage.ingest import KeyDirectory, event_from_edge

    data = [orjson.loads(raw) for raw in payloads]
    keys = KeyDirectory().resolve({item["key_id"] for item in data})
    return [event_from_edge(item, keys) for item in data]


def chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


# --- phases ------------------------------------------------------------------------------


def phase_copy(events) -> dict:
    """COPY the same rows into a plain table with only the primary key: the ceiling."""
    from django.db import connection
    from django.utils import timezone

    now = timezone.now()
    rows = [
        (
            e.event_id,
            e.occurred_at,
            e.organization_id,
            e.key_id,
            e.model,
            e.endpoint,
            e.status,
            e.input_tokens,
            e.output_tokens,
            e.cached_tokens,
            e.estimated,
            e.cost_micro_minor,
            e.latency_ms,
            e.ttft_ms,
            e.request_id,
            e.source,
            e.occurred_at.date().replace(day=1),
            False,
            now,
        )
        for e in events
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {COPY_TABLE}")
        cursor.execute(f"CREATE TABLE {COPY_TABLE} (LIKE usage_event INCLUDING DEFAULTS)")
        cursor.execute(f"ALTER TABLE {COPY_TABLE} ADD PRIMARY KEY (organization_id, event_id, occurred_at)")
        cursor.execute("CHECKPOINT")
    connection.ensure_connection()
    pg = connection.connection
    backend = BackendClock()
    backend.sample()
    cpu = time.process_time()
    started = time.perf_counter()
    with pg.transaction(), pg.cursor() as cursor, cursor.copy(f"COPY {COPY_TABLE} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    backend.sample()
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {COPY_TABLE}")
        copied = cursor.fetchone()[0]
        cursor.execute(f"DROP TABLE {COPY_TABLE}")
    return {
        "seconds": elapsed,
        "rate": len(rows) / elapsed,
        "ok": copied == len(rows),
        "cpu_us": cpu / len(rows) * 1e6,
        "backend_us": backend.seconds / len(rows) * 1e6,
    }


def phase_insert(events, batch_size: int) -> dict:
    """usage_events_ingest on batches decoded beforehand: the database side alone."""
    from django.db import connection

    from usage.ingest import usage_events_ingest

    latencies = []
    backend = BackendClock()
    connection.ensure_connection()
    backend.sample()
    cpu = time.process_time()
    started = time.perf_counter()
    for batch in chunks(events, batch_size):
        t = time.perf_counter()
        usage_events_ingest(batch)
        latencies.append(time.perf_counter() - t)
        backend.sample()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {
        "seconds": elapsed,
        "rate": len(events) / elapsed,
        "latencies": latencies,
        "cpu_us": cpu / len(events) * 1e6,
        "backend_us": backend.seconds / len(events) * 1e6,
    }


def produce(client, payloads: list[bytes], stream: str) -> float:
    """XADD every payload, pipelined; return the seconds it took."""
    started = time.perf_counter()
    for chunk in chunks(payloads, 2000):
        with client.pipeline(transaction=False) as pipe:
            for raw in chunk:
                pipe.xadd(stream, {"data": raw})
            pipe.execute()
    return time.perf_counter() - started


def drained(client, stream: str, group: str) -> bool:
    info = client.xinfo_stream(stream)
    for entry in client.xinfo_groups(stream):
        if entry["name"].decode() == group:
            return entry["pending"] == 0 and entry["last-delivered-id"] == info["last-generated-id"]
    return False


def phase_stream(args, client, payloads: list[bytes], n_consumers: int) -> dict:
    """Drain N events from the stream with K consumer processes; time start to last ack."""
    import orjson
    from django.conf import settings

    procs = []
    try:
        for index in range(n_consumers):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.ingest_bench",
                        "consumer",
                        "--name",
                        f"bench-{n_consumers}-{index + 1}",
                        "--batch-size",
                        str(args.batch_size),
                        "--max-wait-ms",
                        str(args.max_wait_ms),
                    ],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"consumer did not start (said {line!r})")
        produce_seconds = produce(client, payloads, settings.USAGE_STREAM)
        started = time.perf_counter()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        deadline = started + args.timeout
        while not drained(client, settings.USAGE_STREAM, settings.USAGE_CONSUMER_GROUP):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the stream was not drained within {args.timeout} s")
            if any(proc.poll() is not None for proc in procs):
                raise RuntimeError("a consumer exited before the stream was drained")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        stats = []
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            stats.append(orjson.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    raw, requests, rollup_rows = counts()
    dead = client.xlen(settings.USAGE_DEAD_LETTER_STREAM)
    n = len(payloads)
    latencies = [value for stat in stats for value in stat["latencies"]]
    sizes = [value for stat in stats for value in stat["sizes"]]
    return {
        "consumers": n_consumers,
        "seconds": elapsed,
        "rate": n / elapsed,
        "per_consumer": [sum(stat["sizes"]) / elapsed for stat in stats],
        "busy": [stat["busy"] / elapsed for stat in stats],
        "cpu_us": sum(stat["cpu"] for stat in stats) / n * 1e6,
        "backend_us": sum(stat["backend_cpu"] for stat in stats) / n * 1e6,
        "latencies": latencies,
        "sizes": sizes,
        "produce_rate": n / produce_seconds,
        "raw": raw,
        "requests": requests,
        "rollup_rows": rollup_rows,
        "dead": dead,
        "ok": raw == n and requests == n and dead == 0,
    }


# --- report ------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def machine_info() -> list[str]:
    from django.db import connection

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
        cursor.execute("SHOW synchronous_commit")
        sync = cursor.fetchone()[0]
        cursor.execute("SHOW shared_buffers")
        shared = cursor.fetchone()[0]
    import redis
    from django.conf import settings

    redis_version = redis.Redis.from_url(settings.EDGE_REDIS_URL).info("server")["redis_version"]
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "usage", "bench/ingest_bench.py"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if commit and changed:
            commit += " with uncommitted changes in usage/ or the benchmark"
    except OSError:
        commit = "unknown"
    return [
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; commit {commit or 'unknown'}",
        f"- Machine: {os.cpu_count()} CPUs (nproc), {cpu}; {platform.system()} {platform.release()}; "
        "Postgres, Redis and the consumers share these CPUs",
        f"- Python {platform.python_version()}; PostgreSQL {pg_version.split()[0]} "
        f"(synchronous_commit={sync}, shared_buffers={shared}); Redis {redis_version}",
    ]


def median_run(runs: list[dict]) -> dict:
    """The run with the median rate (the lower middle one for an even count)."""
    return sorted(runs, key=lambda run: run["rate"])[(len(runs) - 1) // 2]


def report(args, command: str, n: int, results: dict) -> str:
    copy_runs, insert_runs, stream_runs = results["copy"], results["insert"], results["streams"]
    ceiling = median_run(copy_runs)["rate"]

    def rate(runs):
        middle = median_run(runs)["rate"]
        if len(runs) == 1:
            return f"{middle:,.0f}"
        rates = [run["rate"] for run in runs]
        return f"{middle:,.0f} ({min(rates):,.0f}–{max(rates):,.0f})"

    def ms(values, fraction):
        return f"{percentile(values, fraction) * 1000:.0f} ms"

    def cpu(runs):
        row = median_run(runs)
        return f"{row['cpu_us']:.1f} + {row['backend_us']:.1f}"

    def check(runs):
        return f"{sum(run['ok'] for run in runs)}/{len(runs)} PASS"

    def consumers(count):
        return f"{count} consumer{'s' if count > 1 else ''}"

    insert = median_run(insert_runs)
    best = max(median_run(runs)["rate"] for runs in stream_runs.values())
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        *machine_info(),
        f"- Load average (1 min) at start and end: {results['load'][0]:.2f}, {os.getloadavg()[0]:.2f} "
        "(other processes on the machine take CPU from the run).",
        f"- Data: {n:,} events (the edge's `tg:usage` JSON) from 1 organization, {args.keys} keys, "
        f"{args.models} models, end times spread uniformly over "
        + (
            f"this month's hours so far ({results['rollup_rows']:,} rollup rows, nearly one per event: "
            "the rollups' worst case); "
            if args.spread == "month"
            else f"the last hour ({results['rollup_rows']:,} rollup rows: the steady state); "
        )
        + f"batch size {args.batch_size}, max wait {args.max_wait_ms} ms. "
        f"{args.repeat} rounds; each figure is the median run, (min–max) beside it.",
        "",
        "| Path | events/s | per consumer | vs COPY ceiling | batch p50 | batch p95 "
        "| CPU µs/event (Python + Postgres) | check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| COPY ceiling: `cursor.copy()` into a plain table (PK only), one statement | {rate(copy_runs)} | | 1.00 "
        f"| | | {cpu(copy_runs)} | {check(copy_runs)} |",
        f"| Insert path alone: `usage_events_ingest` on decoded batches, no Redis | {rate(insert_runs)} | "
        f"| {insert['rate'] / ceiling:.2f} | {ms(insert['latencies'], 0.5)} | {ms(insert['latencies'], 0.95)} "
        f"| {cpu(insert_runs)} | {check(insert_runs)} |",
    ]
    for count, runs in stream_runs.items():
        stream = median_run(runs)
        per = " + ".join(f"{value:,.0f}" for value in stream["per_consumer"])
        lines.append(
            f"| Stream → raw rows + rollups, {consumers(count)} | {rate(runs)} | {per} "
            f"| {stream['rate'] / ceiling:.2f} | {ms(stream['latencies'], 0.5)} | {ms(stream['latencies'], 0.95)} "
            f"| {cpu(runs)} | {check(runs)} |"
        )
    medians = [median_run(runs) for runs in stream_runs.values()]
    lines += [
        "",
        "- Stream events/s: from the start signal to the moment the group has no pending and no "
        "undelivered entry (every event committed, then acknowledged). The consumers are "
        "`UsageConsumer.run()` processes, as `manage.py ingest_usage` runs them; the events were "
        "XADDed (pipelined) before the start "
        f"({', '.join(format(s['produce_rate'], ',.0f') for s in medians)} events/s to produce).",
        "- check: after every run, raw rows == N and SUM(rollup requests) == N (each event counted "
        "exactly once) and nothing dead-lettered.",
        "- Batch p50/p95: one batch from read to acknowledgement (decode, validate, COPY to the "
        "staging table, insert raw rows, fold into rollups and keys' last use, commit, XACK). "
        "Mean batch size: "
        + ", ".join(
            f"{statistics.mean(s['sizes']):,.0f} ({consumers(count)})"
            for count, s in zip(stream_runs, medians, strict=True)
        )
        + ".",
        "- CPU µs/event: the Python process(es) and the Postgres backend(s) serving them, from "
        "/proc; it moves less than the rates when other work shares the machine. Redis and "
        "Postgres's background writers are not counted. Decoding and validating alone (orjson + "
        "`event_from_edge`): "
        f"{1e6 / results['decode_rate']:.1f} µs/event.",
        "- Consumer busy share (time inside a batch / wall time): "
        + "; ".join(
            f"{consumers(count)}: " + ", ".join(f"{b:.0%}" for b in s["busy"])
            for count, s in zip(stream_runs, medians, strict=True)
        )
        + ".",
        f"- Target (issue 5), at least 20,000 events/s sustained: {'met' if best >= 20_000 else 'NOT met'} "
        f"(best median {best:,.0f} events/s).",
    ]
    return "\n".join(lines) + "\n"


def kept_notes(path: Path) -> str:
    """Return the hand-written "### Notes" subsection of this benchmark's section, if any."""
    lines = path.read_text().splitlines() if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## "))), len(lines))
    notes = next((i for i in range(start + 1, end) if lines[i].strip() == NOTES), end)
    return "\n".join(lines[notes:end]).strip()


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per phase")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--consumers", default="1,2", help="consumer counts to compare, e.g. 1,2")
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--max-wait-ms", type=int, default=200)
    parser.add_argument(
        "--spread",
        choices=("month", "hour"),
        default="month",
        help="spread event end times over this month so far (rollups' worst case) or the last hour",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median run of each path is shown")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600, help="seconds a stream phase may take")
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/tollgate_bench",
        help="benchmark database (its usage tables are truncated!)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="Redis db (flushed!)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--command", default="", help="the command line to record in the results")
    args = parser.parse_args(argv)
    if "bench" not in urlparse(args.database_url).path:
        parser.error("--database-url must name a benchmark database (its name contains 'bench')")
    if urlparse(args.redis_url).path.strip("/") in ("", "0"):
        parser.error("--redis-url must name a dedicated Redis db (not db 0): it is flushed")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["consumer"]:
        return consumer_main(argv[1:])
    args = parse_args(argv)
    command = args.command or shlex.join(["python", "-m", "bench.ingest_bench", *argv])
    configure_environment(args)
    import redis
    from django.conf import settings

    from usage.partitions import partitions_ensure

    client = redis.Redis.from_url(settings.EDGE_REDIS_URL)
    client.flushdb()
    partitions_ensure()
    organization, keys = setup_tenant(args.keys)
    consumer_counts = [int(value) for value in args.consumers.split(",") if value.strip()]
    print(f"ingest bench: {args.events:,} events, {len(keys)} keys, {args.models} models", flush=True)
    payloads = make_events(args.events, organization, keys, args.models, args.seed, args.spread)
    n = len(payloads)

    started = time.process_time()
    events = decode(payloads)
    decode_rate = n / (time.process_time() - started)
    print(f"decode + validate: {1e6 / decode_rate:.1f} µs/event of CPU", flush=True)

    # Rounds interleave the paths, so that a burst of load elsewhere hits one run of each.
    results: dict = {"decode_rate": decode_rate, "load": os.getloadavg(), "copy": [], "insert": []}
    results["streams"] = {count: [] for count in consumer_counts}
    for round_number in range(1, args.repeat + 1):
        print(f"round {round_number} of {args.repeat}", flush=True)
        reset(client)
        copy = phase_copy(events)
        results["copy"].append(copy)
        print(f"  COPY ceiling: {copy['rate']:,.0f} rows/s", flush=True)

        reset(client)
        insert = phase_insert(events, args.batch_size)
        raw, requests, results["rollup_rows"] = counts()
        insert["ok"] = raw == n and requests == n
        results["insert"].append(insert)
        print(
            f"  insert path: {insert['rate']:,.0f} events/s "
            f"(p50 batch {percentile(insert['latencies'], 0.5) * 1000:.0f} ms) "
            f"raw {raw:,} Σ requests {requests:,} {'PASS' if insert['ok'] else 'FAIL'}",
            flush=True,
        )

        for count in consumer_counts:
            reset(client)
            stream = phase_stream(args, client, payloads, count)
            results["streams"][count].append(stream)
            print(
                f"  stream, {count} consumer(s): {stream['rate']:,.0f} events/s "
                f"(p50 batch {percentile(stream['latencies'], 0.5) * 1000:.0f} ms) "
                f"raw {stream['raw']:,} Σ requests {stream['requests']:,} dead {stream['dead']} "
                f"{'PASS' if stream['ok'] else 'FAIL'}",
                flush=True,
            )
    reset(client)
    text = report(args, command, n, results)
    print()
    print(text)
    if not args.no_write:
        from bench.results import write_section

        notes = kept_notes(Path(args.output))
        write_section(Path(args.output), SECTION, text + ("\n" + notes if notes else ""))
    runs = [*results["copy"], *results["insert"], *(run for rs in results["streams"].values() for run in rs)]
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
