"""Chaos: paced load through the edge while its consumers, Postgres, Redis and the edge die.

One test, in phases of a few seconds, against servers and processes of its own:

    baseline          nothing breaks
    consumer-kill     kill -9 one consumer, restart it by name 2 s later
    postgres-restart  kill -9 the postmaster, start it again 1.5 s later
    redis-kill        kill -9 Redis (AOF, everysec), start it again on the same directory
    edge-kill-1, -2   kill -9 the edge's process group, restart it on the same spool
    cold-burst        300 concurrent requests at a priced model, budget for 100, on a fresh edge

Afterwards, once the stream is drained: every answer a client received is one raw row
(client successes ⊆ raw rows, one row per request id, event ids unique), the rollups add up
to the raw rows, no 200 at the priced model cost 0, the burst got exactly the answers its
budget pays for, and the consumers never needed a restart they were not given on purpose.
Request ids are the client's (``x-request-id``, ``<phase>.<uuid>``), so every raw row is
attributed to the phase that sent it.
"""

import asyncio
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import httpx
import openai
import psycopg
import pytest
import redis

from tests.chaos.conftest import BURST_BUDGET_MINOR, FREE, OUTPUT_PER_MTOK_MINOR, PRICED
from tests.servers import wait_for

pytestmark = pytest.mark.chaos

LOAD_THREADS = 4
LOAD_RATE_PER_THREAD = 15  # requests per second: 60 in all
BURST = 300
RESERVATION = 10 * OUTPUT_PER_MTOK_MINOR  # max_tokens=10, 10 words: the answer costs its reservation
BURST_SERVED = BURST_BUDGET_MINOR * 1_000_000 // RESERVATION  # 100
PHASES = (
    "baseline",
    "consumer-kill",
    "postgres-restart",
    "redis-kill",
    "edge-kill-1",
    "edge-kill-2",
    "cold-burst",
    "burst",  # the 300 requests themselves, sent during cold-burst
)
DRAIN_TIMEOUT = 45


@dataclass
class PhaseFigures:
    sent: int = 0
    succeeded: set[str] = field(default_factory=set)
    other: Counter = field(default_factory=Counter)


class Ledger:
    """What the clients saw, per phase: requests sent, request ids answered 200, other outcomes."""

    def __init__(self):
        self.phases: dict[str, PhaseFigures] = {name: PhaseFigures() for name in PHASES}
        self.mismatched_ids: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def sent(self, phase: str) -> str:
        with self._lock:
            self.phases[phase].sent += 1
        return f"{phase}.{uuid.uuid4().hex}"

    def outcome(self, phase: str, request_id: str, status: int | str, echoed: str | None = None) -> None:
        with self._lock:
            if status == 200:
                self.phases[phase].succeeded.add(request_id)
                if echoed != request_id:
                    self.mismatched_ids.append((request_id, echoed))
            else:
                self.phases[phase].other[str(status)] += 1

    def successes(self) -> set[str]:
        return set().union(*(figures.succeeded for figures in self.phases.values()))


def _chat(client: openai.OpenAI, model: str, request_id: str):
    return client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "chaos"}],
        max_tokens=10,
        extra_headers={"x-request-id": request_id, "x-mock-words": "10"},
    )


def _failure(error: openai.OpenAIError) -> int | str:
    if isinstance(error, openai.APIStatusError):
        return error.status_code
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    return "connection"


class PacedLoad:
    """A few threads, each sending at a fixed rate through the official client; half at the priced model."""

    def __init__(self, url: str, secret: str, ledger: Ledger):
        self.url = url
        self.secret = secret
        self.ledger = ledger
        self.phase = "baseline"
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(index,), name=f"load-{index}", daemon=True)
            for index in range(LOAD_THREADS)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> bool:
        """Stop sending; return whether every thread finished (each request times out in 5 s)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        return not any(thread.is_alive() for thread in self._threads)

    def _run(self, index: int) -> None:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.secret, max_retries=0, timeout=5)
        interval = 1 / LOAD_RATE_PER_THREAD
        next_at = time.monotonic() + index * interval / LOAD_THREADS
        sent = 0
        try:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at = max(next_at + interval, time.monotonic() - interval)
                phase = self.phase
                request_id = self.ledger.sent(phase)
                model = PRICED if sent % 2 == 0 else FREE
                sent += 1
                try:
                    response = _chat(client, model, request_id)
                except openai.OpenAIError as error:
                    self.ledger.outcome(phase, request_id, _failure(error))
                    continue
                self.ledger.outcome(
                    phase, request_id, response.http_response.status_code, response.request_id
                )
        finally:
            client.close()


async def _burst(url: str, secret: str, ledger: Ledger) -> None:
    """Fire BURST concurrent requests at the priced model and record each outcome."""
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=secret, max_retries=0, timeout=60) as client:

        async def one() -> None:
            request_id = ledger.sent("burst")
            try:
                response = await client.chat.completions.with_raw_response.create(
                    model=PRICED,
                    messages=[{"role": "user", "content": "chaos"}],
                    max_tokens=10,
                    extra_headers={"x-request-id": request_id, "x-mock-words": "10"},
                )
            except openai.APIStatusError as error:
                code = (error.body or {}).get("code") if isinstance(error.body, dict) else None
                ledger.outcome(
                    "burst", request_id, f"{error.status_code} {code}" if code else error.status_code
                )
                return
            except openai.OpenAIError as error:
                ledger.outcome("burst", request_id, _failure(error))
                return
            ledger.outcome("burst", request_id, response.http_response.status_code, response.request_id)

        await asyncio.gather(*(one() for _ in range(BURST)))


class Metered:
    """Reads of the private database: raw usage events and hourly rollups."""

    def __init__(self, postgres_url: str):
        self.url = postgres_url

    def _query(self, sql: str, *params):
        with psycopg.connect(self.url, connect_timeout=5) as connection:
            return connection.execute(sql, params).fetchall()

    def request_ids(self) -> set[str]:
        return {row[0] for row in self._query("SELECT DISTINCT request_id FROM usage_event")}

    def rows(self) -> list[tuple]:
        return self._query("SELECT event_id, request_id, model, status, cost_micro_minor FROM usage_event")

    def totals(self) -> tuple[tuple, tuple]:
        """Return (raw, rollup) totals: requests, input, output tokens, cost. One statement, one snapshot."""
        (row,) = self._query(
            """
            SELECT
                (SELECT count(*) FROM usage_event),
                (SELECT coalesce(sum(input_tokens), 0) FROM usage_event),
                (SELECT coalesce(sum(output_tokens), 0) FROM usage_event),
                (SELECT coalesce(sum(cost_micro_minor), 0) FROM usage_event),
                (SELECT coalesce(sum(requests), 0) FROM usage_usagerollup),
                (SELECT coalesce(sum(input_tokens), 0) FROM usage_usagerollup),
                (SELECT coalesce(sum(output_tokens), 0) FROM usage_usagerollup),
                (SELECT coalesce(sum(cost_micro_minor), 0) FROM usage_usagerollup)
            """
        )
        return tuple(int(v) for v in row[:4]), tuple(int(v) for v in row[4:])

    def per_model(self) -> tuple[dict, dict]:
        """Return raw and rollup (requests, output tokens, cost) per model."""
        raw = self._query(
            "SELECT model, count(*), sum(output_tokens), sum(cost_micro_minor) FROM usage_event GROUP BY model"
        )
        rolled = self._query(
            "SELECT model, sum(requests), sum(output_tokens), sum(cost_micro_minor) "
            "FROM usage_usagerollup GROUP BY model"
        )
        return (
            {model: tuple(int(v) for v in rest) for model, *rest in raw},
            {model: tuple(int(v) for v in rest) for model, *rest in rolled},
        )


def _edge_counter(url: str, name: str) -> float:
    """Return the sum of a counter's series on an edge's /metrics (every worker's)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line.split("{")[0].split(" ")[0] == name
    )


def _journal_recoveries(log: str) -> int:
    """Return how many usage events edge processes recovered from dead processes' journals."""
    found = re.findall(r"recovered (\d+) usage events from the journal", log)
    return sum(int(count) for count in found)


def _stream_drained(client: redis.Redis) -> bool:
    """Every entry of tg:usage was delivered to the group and acknowledged."""
    try:
        groups = client.xinfo_groups("tg:usage")
        last = client.xinfo_stream("tg:usage")["last-generated-id"]
    except redis.RedisError:
        return False
    return bool(groups) and all(g["pending"] == 0 and g["last-delivered-id"] == last for g in groups)


def _metered_all(metered: Metered, wanted: set[str]) -> bool:
    try:
        return wanted <= metered.request_ids()
    except psycopg.OperationalError:
        return False


def test_paced_load_through_consumer_postgres_redis_and_edge_kills_meters_every_answer_once(
    tenant, chaos_postgres, private_redis_aof, start_chaos_edge, consumers, capsys
):
    started = time.monotonic()
    ledger = Ledger()
    metered = Metered(chaos_postgres.url)
    stream = private_redis_aof.client(socket_timeout=2, socket_connect_timeout=2)

    consumers.start_all()
    edge = start_chaos_edge("edge")
    load = PacedLoad(edge.url, tenant["load_secret"], ledger)

    def enter(phase: str) -> None:
        load.phase = phase
        consumers.phase = phase

    burst_edge = None
    try:
        enter("baseline")
        load.start()
        time.sleep(3)

        enter("consumer-kill")
        time.sleep(1)
        consumers.kill("chaos-0")
        time.sleep(2)
        consumers.start("chaos-0")  # the same name: what a supervisor does
        time.sleep(2)

        enter("postgres-restart")
        time.sleep(1)
        chaos_postgres.kill()
        time.sleep(1.5)
        chaos_postgres.start()
        time.sleep(3)

        enter("redis-kill")
        time.sleep(1)
        private_redis_aof.kill()
        time.sleep(1.5)
        private_redis_aof.start()
        time.sleep(3)
        # Evidence that the outage bit: events spooled, admissions made without Redis.
        outage = {
            "spooled": _edge_counter(edge.url, "tollgate_edge_spooled_events_total"),
            "unchecked": _edge_counter(edge.url, "tollgate_edge_unchecked_admissions_total"),
        }

        for phase in ("edge-kill-1", "edge-kill-2"):
            enter(phase)
            time.sleep(1)
            edge.kill()
            edge.start()  # same port, same spool directory: it recovers the dead one's journals
            time.sleep(2)

        enter("cold-burst")
        burst_edge = start_chaos_edge("burst-edge")  # fresh: no key, no price cached
        burst_started = time.monotonic()
        asyncio.run(asyncio.wait_for(_burst(burst_edge.url, tenant["burst_secret"], ledger), 90))
        burst_seconds = time.monotonic() - burst_started
        time.sleep(1)
    finally:
        load_stopped = load.stop()
    enter("drain")

    successes = ledger.successes()
    drained_at = time.monotonic()
    try:
        wait_for(
            lambda: _stream_drained(stream) and _metered_all(metered, successes),
            what="the stream to drain and every client success to reach Postgres",
            timeout=DRAIN_TIMEOUT,
            interval=0.25,
        )
        time.sleep(1.5)  # one more replay round of the edges' spools: a late duplicate would show
        wait_for(lambda: _stream_drained(stream), what="the stream to drain again", timeout=15, interval=0.25)
        drain_error = None
    except TimeoutError as error:
        drain_error = str(error)
    drain_seconds = time.monotonic() - drained_at

    rows = metered.rows()
    (raw_totals, rollup_totals) = metered.totals()
    raw_models, rollup_models = metered.per_model()
    alive = consumers.alive()

    by_request: dict[str, list[tuple]] = defaultdict(list)
    for row in rows:
        by_request[row[1]].append(row)
    table = []
    broken: list[str] = []
    for phase in PHASES:
        figures = ledger.phases[phase]
        phase_rows = [
            row for rid, found in by_request.items() if rid.startswith(f"{phase}.") for row in found
        ]
        in_postgres = {row[1] for row in phase_rows}
        missing = figures.succeeded - in_postgres
        duplicates = len(phase_rows) - len(in_postgres)
        zero_cost = sum(1 for row in phase_rows if row[2] == PRICED and row[3] == 200 and row[4] == 0)
        restarts = consumers.restarts_needed[phase]
        table.append(
            (
                phase,
                figures.sent,
                len(figures.succeeded),
                _statuses(figures.other),
                len(phase_rows),
                duplicates,
                zero_cost,
                restarts,
            )
        )
        if missing:
            broken.append(
                f"{phase}: {len(missing)} of {len(figures.succeeded)} client successes have no raw row "
                f"in Postgres (answered but never metered), e.g. {sorted(missing)[:3]}"
            )
        if duplicates:
            broken.append(f"{phase}: {duplicates} request(s) metered more than once")
        if zero_cost:
            broken.append(f"{phase}: {zero_cost} answer(s) at the priced model charged 0")
        if restarts:
            exits = [e for e in consumers.unexpected_exits if e["phase"] == phase]
            broken.append(
                f"{phase}: consumers needed {restarts} restart(s) they were not given on purpose "
                f"(consumers must survive on their own); first exit: {exits[0]}"
            )
    report = _render(table)
    report += (
        f"\nraw totals (requests, input, output, cost) {raw_totals}; rollup totals {rollup_totals}"
        f"\nredis outage: {outage['spooled']:.0f} events spooled, {outage['unchecked']:.0f} admissions "
        f"unchecked; edge kills: {_journal_recoveries(edge.log())} events recovered from journals"
        f"\nburst: {burst_seconds:.2f}s; drain: {drain_seconds:.1f}s; whole test: "
        f"{time.monotonic() - started:.1f}s; consumers alive: {alive}"
    )
    with capsys.disabled():
        print("\n" + report)

    if not load_stopped:
        broken.append("load: a client thread was still sending 15 s after the load stopped")
    if drain_error:
        broken.append(f"drain: {drain_error}")
    if len(rows) != len({row[0] for row in rows}):
        broken.append(f"raw rows: {len(rows) - len({row[0] for row in rows})} event_id(s) stored twice")
    if raw_totals != rollup_totals:
        broken.append(f"rollups {rollup_totals} != raw rows {raw_totals} (requests, input, output, cost)")
    if raw_models != rollup_models:
        broken.append(f"rollups per model {rollup_models} != raw rows per model {raw_models}")
    stray = {rid for rid in by_request if rid.partition(".")[0] not in PHASES}
    if stray:
        broken.append(f"raw rows with request ids no client sent: {sorted(stray)[:3]}")
    if ledger.mismatched_ids:
        broken.append(f"answers echoing another x-request-id: {ledger.mismatched_ids[:3]}")
    burst = ledger.phases["burst"]
    burst_statuses = Counter({"200": len(burst.succeeded), **burst.other})
    if burst_statuses != Counter({"200": BURST_SERVED, "429 insufficient_quota": BURST - BURST_SERVED}):
        broken.append(
            f"burst: the budget pays for exactly {BURST_SERVED} answers of {RESERVATION} micro-minor "
            f"and refuses the rest (429 insufficient_quota); got {dict(burst_statuses)}"
        )
    burst_costs = Counter(row[4] for rid in burst.succeeded for row in by_request.get(rid, []))
    if burst_costs and set(burst_costs) != {RESERVATION}:
        broken.append(
            f"burst: served requests cost {dict(burst_costs)} micro-minor, each should cost {RESERVATION}"
        )
    elsewhere = [e for e in consumers.unexpected_exits if e["phase"] not in PHASES]
    if elsewhere:
        broken.append(f"consumers exited outside the phases (setup or drain): {elsewhere[:2]}")
    dead = [name for name, running in alive.items() if not running]
    if dead:
        broken.append(f"consumers not running at the end: {dead}")
    total_successes = len(successes)
    if total_successes < 500:
        broken.append(f"the load did not really run: only {total_successes} successes")

    assert not broken, "chaos invariants broken:\n  " + "\n  ".join(broken) + "\n\n" + report


def _statuses(counter: Counter) -> str:
    return ", ".join(f"{status}×{count}" for status, count in sorted(counter.items())) or "-"


def _render(table: list[tuple]) -> str:
    header = (
        "phase",
        "sent",
        "200",
        "other statuses",
        "events in PG",
        "dups",
        "zero-cost priced",
        "restarts needed",
    )
    rows = [header, *[tuple(str(cell) for cell in row) for row in table]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)
