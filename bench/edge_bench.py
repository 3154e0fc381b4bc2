"""Measure what the edge adds: the mock upstream directly, the edge, nginx and LiteLLM's proxy.

Run ``bash bench/run_edge_bench.sh`` (it installs wrk, nginx and LiteLLM's venv when missing),
or ``.venv/bin/python -m bench.edge_bench --help``. Everything listens on 127.0.0.1 and every
phase has a fixed length, so the run stops by itself. Three phases:

1. latency at moderate load: wrk, N connections each pausing between requests (paced);
2. throughput at high concurrency: wrk, many connections, no pause;
3. streaming: an asyncio client keeps N streams open and times the first SSE event.

All targets run at once; the phases run on each target in turn, and the whole sequence is
repeated ``--rounds`` times, so that other load on the machine falls on every target alike.
Each run is a warm-up, then the measured period; the medians over the rounds are printed as
markdown and written, with the command, the machine and the versions, to this benchmark's
section of bench/RESULTS.md (other sections are left as they are).
"""

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.results import write_section

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MODEL = "bench-model"
WORDS = 16
PROMPT = "Say hello to the benchmark in a few short words please"
CHAT_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": WORDS},
    separators=(",", ":"),
)
STREAM_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": WORDS, "stream": True},
    separators=(",", ":"),
)
EXPECTED_REPLY = " ".join(PROMPT.split()[i % len(PROMPT.split())] for i in range(WORDS))
PATH = "/v1/chat/completions"
SECTION = "## Edge overhead: direct, edge, nginx, LiteLLM"
LITELLM_VERSION = "1.106.2"
UNLIMITED = 10**12
LABELS = {
    "direct": "mock upstream, direct",
    "edge": "Tollgate edge (auth, limits, metering)",
    "nginx": "nginx proxy_pass",
    "litellm": "LiteLLM proxy",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(command: list[str], cpus: str) -> list[str]:
    """Prefix a command with taskset when CPUs are given and taskset exists."""
    if cpus and shutil.which("taskset"):
        return ["taskset", "-c", cpus, *command]
    return command


def http_get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def post_json(url: str, body: str, authorization: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": authorization},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(pct / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class Process:
    """A server started in its own process group, stopped by its id."""

    def __init__(
        self, name: str, command: list[str], log_dir: Path, env: dict | None = None, unset=(), cwd=ROOT
    ):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**{k: v for k, v in os.environ.items() if k not in unset}, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not http_get_ok(url):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(f"{self.name} was not ready within {timeout:.0f}s: {tail}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._log.close()


@dataclass
class Target:
    name: str
    label: str
    url: str = ""
    authorization: str = "Bearer sk-bench"
    skipped: str = ""
    processes: list[Process] = field(default_factory=list)
    results: dict = field(default_factory=dict)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


# --- the targets -------------------------------------------------------------------------


def start_mock(args, work: Path) -> Target:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "edge.mock_upstream",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--words",
        str(WORDS),
        "--models",
        MODEL,
        "--stream-chunk-delay-ms",
        str(args.stream_chunk_delay_ms),
    ]
    target = Target("direct", LABELS["direct"], url=f"http://127.0.0.1:{port}")
    process = Process("mock", pinned(command, args.mock_cpus), work)
    target.processes.append(process)
    process.wait_ready(f"{target.url}/healthz", 20)
    return target


def publish_bench_key(client) -> tuple[str, str]:
    """Write the benchmark key's record (no limits that bind) and the model's price through
    ``client`` (a Redis or a Redis Cluster client); return the key and the pepper it is hashed with."""
    from edge import keyformat

    pepper = secrets.token_urlsafe(36)
    key = keyformat.generate("test")
    limits = {"rpm": UNLIMITED, "tpm": UNLIMITED, "concurrency": 100_000}
    budget = {"monthly_minor": UNLIMITED, "alert_minor": None}
    record = {
        "v": 1,
        "key_id": "key_bench",
        "org_id": 1,
        "org_status": "active",
        "environment": "test",
        "status": "active",
        "expires_at": None,
        "secret_expires_at": None,
        "allowed_models": [MODEL],
        "allowed_ips": [],
        "limits": limits,
        "budget": budget,
        "org_limits": limits,
        "org_budget": budget,
    }
    client.set("tg:key:" + keyformat.key_hash(key, pepper.encode()), json.dumps(record))
    price = {
        "v": 1,
        "input_per_mtok_minor": "100",
        "output_per_mtok_minor": "300",
        "cached_input_per_mtok_minor": "50",
    }
    client.set(f"tg:price:{MODEL}", json.dumps(price))
    return key, pepper


def start_edge(
    args,
    work: Path,
    upstream: str,
    *,
    name: str = "edge",
    source: Path = ROOT,
    redis_url: str = "",
    key_pepper: tuple[str, str] | None = None,
    extra_config: dict | None = None,
) -> Target:
    """The edge from this checkout, or (``source``) from another commit's tree.

    Without ``key_pepper`` (a key already published, and its pepper) the Redis db is emptied
    and a new key published; ``extra_config`` is merged into the edge's YAML.
    """
    redis_url = redis_url or args.redis_url
    target = Target(name, LABELS.get(name) or f"Tollgate edge at {args.baseline}")
    if importlib.util.find_spec("edge.app") is None or importlib.util.find_spec("edge.__main__") is None:
        target.skipped = "pending: the edge module (edge/app.py, edge/__main__.py) does not exist yet"
        return target
    import yaml

    if key_pepper is None:
        import redis

        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        key_pepper = publish_bench_key(client)
        client.close()
    key, pepper = key_pepper
    port = free_port()
    config = {
        "listen": {"host": "127.0.0.1", "port": port},
        "workers": args.proxy_workers,
        "spool": {"dir": str(work / f"{name}-spool")},
        "routes": [{"model": MODEL, "upstreams": [{"url": upstream, "api_key": "sk-upstream"}]}],
        **(extra_config or {}),
    }
    config_path = work / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = shlex.split(
        args.edge_cmd.format(python=shlex.quote(sys.executable), config=shlex.quote(str(config_path)))
    )
    target.url = f"http://127.0.0.1:{port}"
    target.authorization = f"Bearer {key}"
    process = Process(
        name,
        pinned(command, args.proxy_cpus),
        work,
        env={"KEY_PEPPER": pepper, "EDGE_REDIS_URL": redis_url, "PYTHONPATH": str(source)},
        cwd=source,
    )
    target.processes.append(process)
    process.wait_ready(f"{target.url}/healthz", 30)
    return target


def start_baseline_edge(args, work: Path, upstream: str) -> Target:
    """The edge as it was at ``--baseline`` (a commit), from that commit's tree, on its own Redis db."""
    source = work / "baseline"
    source.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.baseline, "edge"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    base, _, db = args.redis_url.rpartition("/")
    return start_edge(
        args, work, upstream, name="baseline", source=source, redis_url=f"{base}/{int(db or 0) + 1}"
    )


def start_nginx(args, work: Path, upstream_port: int) -> Target:
    target = Target("nginx", LABELS["nginx"])
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        target.skipped = "skipped: nginx is not installed (bench/run_edge_bench.sh installs it)"
        return target
    port = free_port()
    directory = work / "nginx"
    directory.mkdir()
    # As root, nginx hands requests to an unprivileged worker user; it needs to read the config.
    directory.chmod(0o755)
    work.chmod(0o755)
    user = "user nobody nogroup;" if os.geteuid() == 0 else ""
    config = (
        (BENCH / "nginx.conf.template")
        .read_text()
        .replace("@PORT@", str(port))
        .replace("@UPSTREAM_PORT@", str(upstream_port))
        .replace("@DIR@", str(directory))
        .replace("@USER@", user)
    )
    config_path = directory / "nginx.conf"
    config_path.write_text(config)
    target.url = f"http://127.0.0.1:{port}"
    command = [binary, "-c", str(config_path), "-p", str(directory), "-e", str(directory / "error.log")]
    process = Process("nginx", pinned(command, args.proxy_cpus), work)
    target.processes.append(process)
    process.wait_ready(f"{target.url}/healthz", 20)
    return target


def start_litellm(args, work: Path, upstream: str) -> Target:
    target = Target("litellm", f"{LABELS['litellm']} {litellm_version(args) or ''}".strip())
    binary = Path(args.litellm).resolve()
    if not binary.exists():
        target.skipped = f"skipped: {binary} does not exist (bench/run_edge_bench.sh creates it)"
        return target
    port = free_port()
    target.url = f"http://127.0.0.1:{port}"
    target.authorization = "Bearer sk-bench"
    command = [
        str(binary),
        "--config",
        str(BENCH / "litellm_config.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        str(args.proxy_workers),
    ]
    env = {
        "LITELLM_MASTER_KEY": "sk-bench",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "BENCH_MOCK_API_BASE": f"{upstream}/v1",
        "LITELLM_LOG": "ERROR",
    }
    # No database and no Redis cache: none may be inherited from the developer's shell.
    unset = ("DATABASE_URL", "REDIS_URL", "REDIS_HOST")
    process = Process("litellm", pinned(command, args.proxy_cpus), work, env=env, unset=unset, cwd=work)
    target.processes.append(process)
    process.wait_ready(f"{target.url}/health/liveliness", 180)
    return target


def litellm_version(args) -> str | None:
    python = Path(args.litellm).parent / "python"
    if not python.exists():
        return None
    found = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or None


# --- load ----------------------------------------------------------------------------------


def check_target(target: Target) -> None:
    """Send one request and check the reply, so that no phase measures error pages."""
    status, body = post_json(target.url + PATH, CHAT_BODY, target.authorization)
    if status != 200:
        raise RuntimeError(f"{target.name} answered {status}: {body[:300]!r}")
    content = json.loads(body)["choices"][0]["message"]["content"]
    if content != EXPECTED_REPLY:
        raise RuntimeError(f"{target.name} answered unexpected content {content!r}")


def run_wrk(args, target: Target, *, connections: int, delay_ms: float, seconds: float) -> dict:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(BENCH / "wrk_post.lua"),
        target.url + PATH,
    ]
    env = {
        **os.environ,
        "BENCH_BODY": CHAT_BODY,
        "BENCH_AUTH": target.authorization,
        "BENCH_DELAY_MS": str(delay_ms),
    }
    done = subprocess.run(
        pinned(command, args.load_cpus), env=env, capture_output=True, text=True, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result = json.loads(line.removeprefix("BENCH_JSON "))
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            result["error_count"] = sum(result["errors"].values())
            return result
    raise RuntimeError(f"wrk printed no result: {done.stdout}\n{done.stderr}")


def process_group_cpu_seconds(leaders: list[int]) -> float:
    """User + system CPU of every live process in these process groups (a server and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in leaders:  # field 5 of stat: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def redis_cpu_seconds(url: str) -> float:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def wrk_phase(args, target: Target, *, connections: int, delay_ms: float) -> dict:
    """Run wrk; also measure the CPU the target (all its processes) and the Redis server spent
    per request, from /proc and INFO (Redis serves only the edges, one phase at a time)."""
    run_wrk(args, target, connections=connections, delay_ms=delay_ms, seconds=args.warmup)
    leaders = [process.process.pid for process in target.processes]
    cpu_before, redis_before = process_group_cpu_seconds(leaders), redis_cpu_seconds(args.redis_url)
    result = run_wrk(args, target, connections=connections, delay_ms=delay_ms, seconds=args.duration)
    cpu = process_group_cpu_seconds(leaders) - cpu_before
    redis_cpu = redis_cpu_seconds(args.redis_url) - redis_before
    if result["requests"]:
        result["cpu_us_per_request"] = cpu / result["requests"] * 1e6
        result["redis_us_per_request"] = redis_cpu / result["requests"] * 1e6
    return result


def stream_phase(args, target: Target) -> dict:
    command = [
        sys.executable,
        "-m",
        "bench.edge_bench",
        "stream-client",
        "--url",
        target.url + PATH,
        "--authorization",
        target.authorization,
        "--connections",
        str(args.stream_connections),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
    ]
    done = subprocess.run(
        pinned(command, args.load_cpus), capture_output=True, text=True, cwd=ROOT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"stream client failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


# --- the streaming client (runs in its own process, pinned like wrk) -------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, float | None, bytes]:
    """Read one HTTP/1.1 response; return status, keep-alive, first-event time, body."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    first_event = None
    body = bytearray()
    if headers.get(b"transfer-encoding") == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += (await reader.readexactly(size + 2))[:-2]
            if first_event is None and b"data:" in body:
                first_event = time.perf_counter()
    else:
        body += await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers.get(b"connection") != b"close", first_event, bytes(body)


async def _stream_worker(url, authorization, starts_at, ends_at, samples, errors):
    parsed = urllib.request.urlparse(url)
    request = (
        f"POST {parsed.path} HTTP/1.1\r\nHost: {parsed.netloc}\r\nContent-Type: application/json\r\n"
        f"Authorization: {authorization}\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(STREAM_BODY)}\r\n\r\n{STREAM_BODY}"
    ).encode()
    reader = writer = None
    while time.perf_counter() < ends_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
            started = time.perf_counter()
            writer.write(request)
            status, keep_alive, first_event, body = await asyncio.wait_for(_read_response(reader), 60)
            finished = time.perf_counter()
            ok = status == 200 and first_event is not None and body.rstrip().endswith(b"data: [DONE]")
            if started >= starts_at and finished <= ends_at:
                if ok:
                    samples.append((first_event - started, finished - started))
                else:
                    errors.append(status)
            if not keep_alive:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
            errors.append(0)
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


async def stream_client(
    url: str, authorization: str, connections: int, warmup: float, duration: float
) -> dict:
    now = time.perf_counter()
    starts_at, ends_at = now + warmup, now + warmup + duration
    samples: list[tuple[float, float]] = []
    errors: list[int] = []
    await asyncio.gather(
        *(_stream_worker(url, authorization, starts_at, ends_at, samples, errors) for _ in range(connections))
    )
    ttft = sorted(s[0] for s in samples)
    total = sorted(s[1] for s in samples)
    return {
        "streams": len(samples),
        "streams_per_s": len(samples) / duration,
        "ttft_p50_us": percentile(ttft, 50) * 1e6,
        "ttft_p90_us": percentile(ttft, 90) * 1e6,
        "ttft_p99_us": percentile(ttft, 99) * 1e6,
        "total_p50_us": percentile(total, 50) * 1e6,
        "error_count": len(errors),
    }


def stream_client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="edge_bench stream-client")
    parser.add_argument("--url", required=True)
    parser.add_argument("--authorization", required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--duration", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        stream_client(args.url, args.authorization, args.connections, args.warmup, args.duration)
    )
    print(json.dumps(result))


def start_target(name: str, starter, notes: list[str]) -> Target:
    """Start one target and check its answer; a target that fails is reported, not fatal."""
    print(f"== starting {name}", file=sys.stderr, flush=True)
    target = None
    try:
        target = starter()
        if not target.skipped:
            check_target(target)
    except Exception as error:  # noqa: BLE001 - one target failing must not end the run
        if target is not None:
            target.stop()
        notes.append(f"{name}: {error}")
        target = Target(name, LABELS[name], skipped=f"failed to start: {str(error).splitlines()[0][:200]}")
    if target.skipped:
        print(f"   {target.skipped}", file=sys.stderr, flush=True)
    return target


def run_rounds(args, targets: list[Target], notes: list[str]) -> None:
    """Run every phase on every target, interleaved, ``--rounds`` times; keep the medians.

    Interleaving spreads any other load on the machine evenly over the targets.
    """
    phases = {
        "latency": lambda t: wrk_phase(
            args, t, connections=args.connections, delay_ms=args.connections / args.rate * 1000
        ),
        "throughput": lambda t: wrk_phase(args, t, connections=args.high_connections, delay_ms=0),
        "stream": lambda t: stream_phase(args, t),
    }
    runs: dict[tuple[str, str], list[dict]] = {}
    for round_number in range(1, args.rounds + 1):
        for phase, run in phases.items():
            for target in targets:
                if target.skipped:
                    continue
                try:
                    result = run(target)
                except Exception as error:  # noqa: BLE001 - report it and go on with the others
                    target.skipped = f"failed: {str(error).splitlines()[0][:200]}"
                    notes.append(f"{target.name}: {error}")
                    print(f"   {target.name} failed: {error}", file=sys.stderr, flush=True)
                    continue
                runs.setdefault((target.name, phase), []).append(result)
                print(f"   round {round_number} {phase} {target.name}: {result}", file=sys.stderr, flush=True)
    for target in targets:
        for phase in phases:
            results = runs.get((target.name, phase))
            if results and not target.skipped:
                target.results[phase] = median_result(results)


def median_result(results: list[dict]) -> dict:
    """Take the median of every figure over the rounds, and the sum of the errors."""
    merged = {}
    for name, value in results[0].items():
        if name == "error_count":
            merged[name] = sum(r[name] for r in results)
        elif isinstance(value, int | float):
            merged[name] = statistics.median(r[name] for r in results)
    if merged.get("requests", merged.get("streams")) == 0:
        # Nothing finished inside the window: there is no latency to show.
        merged.update({name: None for name in merged if name.endswith("_us")})
    return merged


# --- report ----------------------------------------------------------------------------------


def ms(value_us: float | None) -> str:
    return "–" if value_us is None else f"{value_us / 1000:.2f}"


def added(result: dict, direct: dict | None, name: str) -> str:
    if direct is None or result[name] is None or direct[name] is None:
        return "–"
    return f"{(result[name] - direct[name]) / 1000:+.2f}"


def machine_info(args) -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def output(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError:
            return "not installed"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else ""
        )

    commit = output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; commit {commit}",
        f"- Machine: {os.cpu_count()} CPUs (nproc), {cpu}; {platform.system()} {platform.release()}; "
        f"load average at the end {load} (1/5/15 min; other work on the machine shows here)",
        f"- Python {platform.python_version()}, uvicorn {importlib.metadata.version('uvicorn')}, "
        f"{output(['nginx', '-v']).replace('nginx version: ', '')}, "
        f"wrk {output(['wrk', '-v']).split()[1] if shutil.which('wrk') else 'missing'}, "
        f"LiteLLM {litellm_version(args) or 'missing'}",
    ]


def report(args, targets: list[Target], notes: list[str], command: str) -> str:
    direct = targets[0].results
    rate = args.rate
    delay_ms = args.connections / rate * 1000
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        *machine_info(args),
        f"- Placement: mock upstream 1 worker on CPU {args.mock_cpus or 'any'}; load generators on CPU "
        f"{args.load_cpus or 'any'}; proxies with {args.proxy_workers} workers on CPU {args.proxy_cpus or 'any'}.",
        f"- Each phase: {args.warmup:g} s warm-up, then {args.duration:g} s measured; every figure is the median "
        f"of {args.rounds} rounds, the targets interleaved (errors: the sum). Request: chat completion, "
        f"{len(PROMPT.split())}-word prompt, {WORDS}-word answer; streams send one word per event"
        f" ({args.stream_chunk_delay_ms:g} ms apart).",
        "",
        f"### Latency at moderate load (wrk, {args.connections} connections, each pausing {delay_ms:.0f} ms "
        f"between requests: at most {rate} req/s)",
        "",
        "| target | req/s | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in targets:
        result = target.results.get("latency")
        if result is None:
            lines.append(f"| {target.label} | {target.skipped or 'failed'} | | | | | | |")
            continue
        lines.append(
            f"| {target.label} | {result['rps']:.0f} | {ms(result['p50_us'])} | {ms(result['p90_us'])} | "
            f"{ms(result['p99_us'])} | {added(result, direct.get('latency'), 'p50_us')} | "
            f"{added(result, direct.get('latency'), 'p99_us')} | {result['error_count']} |"
        )
    lines += [
        "",
        "### CPU per request at moderate load (the latency phase: all of the target's processes, "
        "from /proc; the Redis server, from INFO cpu)",
        "",
        "| target | CPU µs/request | Redis CPU µs/request |",
        "| --- | ---: | ---: |",
    ]
    for target in targets:
        result = target.results.get("latency") or {}
        if "cpu_us_per_request" not in result:
            continue
        lines.append(
            f"| {target.label} | {result['cpu_us_per_request']:.0f} | {result['redis_us_per_request']:.1f} |"
        )
    lines += [
        "",
        f"### Throughput at high concurrency (wrk, {args.high_connections} connections, no pause)",
        "",
        "| target | req/s | p50 ms | p90 ms | p99 ms | CPU µs/request | Redis CPU µs/request | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in targets:
        result = target.results.get("throughput")
        if result is None:
            lines.append(f"| {target.label} | {target.skipped or 'failed'} | | | | | | |")
            continue
        lines.append(
            f"| {target.label} | {result['rps']:.0f} | {ms(result['p50_us'])} | {ms(result['p90_us'])} | "
            f"{ms(result['p99_us'])} | {result.get('cpu_us_per_request', 0):.0f} | "
            f"{result.get('redis_us_per_request', 0):.1f} | {result['error_count']} |"
        )
    lines += [
        "",
        f"### Streaming: time to first token ({args.stream_connections} concurrent streams, asyncio client; "
        "TTFT = request written → first SSE event read)",
        "",
        "| target | streams/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | added p50 ms | added p99 ms "
        "| stream p50 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for target in targets:
        result = target.results.get("stream")
        if result is None:
            lines.append(f"| {target.label} | {target.skipped or 'failed'} | | | | | | | |")
            continue
        lines.append(
            f"| {target.label} | {result['streams_per_s']:.0f} | {ms(result['ttft_p50_us'])} | "
            f"{ms(result['ttft_p90_us'])} | {ms(result['ttft_p99_us'])} | "
            f"{added(result, direct.get('stream'), 'ttft_p50_us')} | "
            f"{added(result, direct.get('stream'), 'ttft_p99_us')} | "
            f"{ms(result['total_p50_us'])} | {result['error_count']} |"
        )
    if notes:
        lines += ["", "### Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--targets",
        default="direct,edge,nginx,litellm",
        help="comma-separated, in order; 'baseline' is the edge at --baseline",
    )
    parser.add_argument(
        "--baseline", default="", help="a commit whose edge runs as the 'baseline' target, for before/after"
    )
    parser.add_argument("--rounds", type=int, default=3, help="runs of every phase; the median is reported")
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per phase")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each phase")
    parser.add_argument("--connections", type=int, default=16, help="connections of the latency phase")
    parser.add_argument("--rate", type=int, default=1000, help="upper bound of the latency phase, req/s")
    parser.add_argument(
        "--high-connections", type=int, default=128, help="connections of the throughput phase"
    )
    parser.add_argument("--stream-connections", type=int, default=16, help="concurrent streams")
    parser.add_argument(
        "--stream-chunk-delay-ms", type=float, default=5, help="mock pause between SSE events"
    )
    parser.add_argument("--proxy-workers", type=int, default=2, help="workers of the edge, nginx and LiteLLM")
    parser.add_argument("--mock-cpus", default="0", help="taskset CPU list of the mock ('' = any)")
    parser.add_argument("--load-cpus", default="1", help="taskset CPU list of wrk and the stream client")
    parser.add_argument("--proxy-cpus", default="", help="taskset CPU list of the proxies ('' = any)")
    parser.add_argument(
        "--edge-cmd",
        default="{python} -m edge --config {config}",
        help="command that starts the edge; {python} and {config} are filled in",
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/12", help="Redis db for the edge (flushed!)"
    )
    parser.add_argument("--litellm", default=str(BENCH / ".venv-litellm" / "bin" / "litellm"))
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"))
    parser.add_argument("--command", default="", help="the command line to record in the results")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["stream-client"]:
        stream_client_main(argv[1:])
        return 0
    args = parse_args(argv)
    command = args.command or shlex.join(["python", "-m", "bench.edge_bench", *argv])
    for tool in ("wrk",):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: run bench/run_edge_bench.sh, which installs it", file=sys.stderr)
            return 2
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    if "baseline" in names and not args.baseline:
        print("the 'baseline' target needs --baseline <commit>", file=sys.stderr)
        return 2
    if names[:1] != ["direct"]:
        names.insert(0, "direct")  # every other row is compared with it
    notes: list[str] = []
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
        work = Path(tmp)
        mock = start_mock(args, work)
        upstream_port = int(mock.url.rsplit(":", 1)[1])
        starters = {
            "direct": lambda: mock,
            "edge": lambda: start_edge(args, work, mock.url),
            "baseline": lambda: start_baseline_edge(args, work, mock.url),
            "nginx": lambda: start_nginx(args, work, upstream_port),
            "litellm": lambda: start_litellm(args, work, mock.url),
        }
        try:
            for name in names:
                targets.append(start_target(name, starters[name], notes))
            run_rounds(args, [t for t in targets if not t.skipped], notes)
        finally:
            for target in targets:
                if target is not mock:
                    target.stop()
            mock.stop()
            if "edge" in names:
                try:
                    import redis

                    redis.Redis.from_url(args.redis_url).flushdb()
                    if "baseline" in names:
                        base, _, db = args.redis_url.rpartition("/")
                        redis.Redis.from_url(f"{base}/{int(db or 0) + 1}").flushdb()
                except Exception:  # noqa: BLE001 - Redis may be down; the run is over anyway
                    pass
    if "edge" not in names:
        targets.insert(1, Target("edge", LABELS["edge"], skipped="pending: not measured in this run"))
    if "direct" not in [t.name for t in targets if t.results.get("latency")]:
        print("the direct run failed; nothing to compare with", file=sys.stderr)
        return 1
    text = report(args, targets, notes, command)
    print(text)
    write_section(Path(args.output), SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
