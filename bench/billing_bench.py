"""Measure billing at scale: rate a month, close it, and push invoices to Stripe (localstripe).

``.venv/bin/python -m bench.billing_bench`` (``--help`` for every option). It creates its own
database (``tollgate_billbench``), migrates it, and loads one month of hourly rollups for
``--orgs`` organizations × ``--models`` models × ``--hours`` hours, generated inside Postgres
(``INSERT … SELECT … generate_series``, hour after hour and by organization within an hour, with the
rollup table's indexes and foreign keys dropped during the load and rebuilt after it, then
``VACUUM ANALYZE``). A quarter of the models change price in the middle of the month, so usage
is summed between price changes. Then, in this order:

1. Rating (``--rounds`` rounds, each way of ``--rating`` in every round): ``one-pass`` is
   ``period_ratings_one_pass`` over every organization, as ``invoice_close_period`` rates (one
   query over the month, read as a stream); ``batches`` is ``period_ratings`` in batches of
   ``BATCH`` organizations, one query each, as the close rated before. The SQL part is the
   usage reader (``usage_by_organization`` or ``usage_for_rating``: the aggregation query and
   the rows it returns), the Python part the rest (plans, price books, ``rate``). The first
   round also checks the token totals of all the lines against a plain ``SUM`` over the table,
   and the ways must agree on every total.
2. Closing (``--close-rounds``): ``invoice_close_period``, which closes the usage month and
   stores every invoice with its lines and audit row. Afterwards invoices == organizations and
   the sum of their totals == the sum of the rating totals and one ``invoice.built`` audit row
   was appended per invoice, or the run fails. Between rounds the invoices, their lines and the
   closed month are deleted (audit rows are append-only and stay).
3. Stripe push: localstripe with the test tree's extension (``tests/billing/localstripe_ext.py``,
   started as the tests start it) on a free loopback port; ``--push-sample`` invoices get a
   customer with a good card first (not timed), then ``invoice_push`` runs on each in turn.

Results are printed as markdown and written to the "## Billing" section of bench/RESULTS.md
(a hand-written "### Notes" subsection at its end is kept). The database is dropped at the end
unless ``--keep``; ``--reuse`` measures on a database kept by an earlier run with the same shape.
"""

import argparse
import os
import platform
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Billing: rating, closing and pushing a month"
NOTES = "### Notes"
EXTENSION = ROOT / "tests" / "billing" / "localstripe_ext.py"
STRIPE_KEY = "sk_test_tollgate"
ROLLUPS = "usage_usagerollup"


def configure_environment(args, stripe_url: str) -> None:
    """Point Django at the benchmark database, Redis db and localstripe, DEBUG off."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    os.environ["DATABASE_URL"] = args.database_url
    os.environ["REDIS_URL"] = args.redis_url
    os.environ["EDGE_REDIS_URL"] = args.redis_url
    os.environ["STRIPE_SECRET_KEY"] = STRIPE_KEY
    os.environ["STRIPE_API_BASE"] = stripe_url
    # DEBUG off as in production: DEBUG wraps every cursor to record its SQL.
    os.environ["DEBUG"] = "false"
    os.environ.setdefault("SECRET_KEY", "bench-" + secrets.token_hex(24))
    os.environ.setdefault("KEY_PEPPER", "bench-" + secrets.token_hex(24))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def maintenance(database_url: str, statement: str) -> None:
    """Run one statement on the server's ``postgres`` database (CREATE/DROP DATABASE)."""
    import psycopg

    url = urlparse(database_url)
    with psycopg.connect(url._replace(path="/postgres").geturl(), autocommit=True) as connection:
        connection.execute(statement)


def database_name(database_url: str) -> str:
    return urlparse(database_url).path.lstrip("/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sql(statement: str, params=None):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else None


def timed(what: str, function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    seconds = time.perf_counter() - started
    print(f"  {what}: {seconds:.1f} s", flush=True)
    return result, seconds


# --- data --------------------------------------------------------------------------------


def model_names(n_models: int) -> list[str]:
    return [f"bench-model-{index:02d}" for index in range(n_models)]


def seed_prices(period: date, n_models: int, hours: int) -> int:
    """Price every model from the period's start; every fourth changes price half-way.

    Prices carry six decimals, so lines round. Return how many price changes fall in the period.
    """
    from billing.models import ModelPrice

    start = datetime.combine(period, datetime.min.time(), tzinfo=UTC)
    middle = start + timedelta(hours=hours // 2)
    rows = []
    for index, model in enumerate(model_names(n_models)):
        base = Decimal(100 + 25 * index) + Decimal("0.123457")
        rows.append(
            ModelPrice(
                model=model,
                input_per_mtok_minor=base,
                output_per_mtok_minor=base * 4,
                cached_input_per_mtok_minor=base / 2,
                effective_from=start,
            )
        )
        if index % 4 == 0:
            rows.append(
                ModelPrice(
                    model=model,
                    input_per_mtok_minor=base * Decimal("0.8"),
                    output_per_mtok_minor=base * Decimal("3.2"),
                    cached_input_per_mtok_minor=base * Decimal("0.4"),
                    effective_from=middle,
                )
            )
    ModelPrice.objects.bulk_create(rows)
    return len(rows) - n_models


def seed_organizations(period: date, n_orgs: int) -> tuple[int, int]:
    """Insert the organizations and one live key each in two statements (not through the
    services: 10,000 organizations through ``organization_create`` would dominate the run).
    Return the first organization id and the first key id; both run on without gaps."""
    created = datetime.combine(period, datetime.min.time(), tzinfo=UTC) - timedelta(days=30)
    sql(
        """
        INSERT INTO portal_organization (name, slug, status, require_mfa, created_at)
        SELECT 'Bench org ' || i, 'bench-org-' || i, 'active', false, %(created)s
        FROM generate_series(1, %(n)s) AS i ORDER BY i
        """,
        {"n": n_orgs, "created": created},
    )
    sql(
        """
        INSERT INTO keys_apikey (public_id, organization_id, name, environment, created_at, updated_at,
            allowed_models, allowed_ips, budget_alert_percent, metadata)
        SELECT 'key_bench_' || o.id, o.id, 'bench key', 'live', %(created)s, %(created)s,
            '{}', '{}', 80, '{}'
        FROM portal_organization o ORDER BY o.id
        """,
        {"created": created},
    )
    (first_org, last_org, first_key, last_key, pairs) = sql(
        """
        SELECT min(o.id), max(o.id), min(k.id), max(k.id), count(*)
        FROM portal_organization o JOIN keys_apikey k ON k.organization_id = o.id
        """
    )[0]
    if (
        not (last_org - first_org + 1 == last_key - first_key + 1 == pairs == n_orgs)
        or sql(
            "SELECT count(*) FROM keys_apikey WHERE id - %s <> organization_id - %s", [first_key, first_org]
        )[0][0]
    ):
        raise SystemExit("organization and key ids are not contiguous: start from an empty database")
    return first_org, first_key


# Deterministic, uneven usage without random(): x mixes organization, model and hour.
_LOAD_SQL = """
    INSERT INTO usage_usagerollup (organization_id, key_id, model, hour, billed_period, requests, errors,
        input_tokens, output_tokens, cached_tokens, estimated_requests, cost_micro_minor)
    SELECT %(first_org)s + o, %(first_key)s + o, m.name, %(start)s + h * interval '1 hour', %(period)s,
        1 + x %% 50, 0,
        1000 + (x * 48271) %% 400000,
        (x * 69621) %% 100000,
        CASE WHEN x %% 3 = 0 THEN (1000 + (x * 48271) %% 400000) / 4 ELSE 0 END,
        0, 0
    FROM generate_series(%(h0)s, %(h1)s) AS h
    CROSS JOIN generate_series(0, %(n_orgs)s - 1) AS o
    CROSS JOIN unnest(%(models)s::text[]) WITH ORDINALITY AS m(name, i)
    CROSS JOIN LATERAL (SELECT o::bigint * 7919 + m.i * 104729 + h * 31 AS x) AS mix
"""


def schema_objects() -> tuple[list[tuple[str, str]], list[str]]:
    """Return the rollup table's constraints (name, definition), PK first and foreign keys
    last, and the CREATE statements of its indexes that back no constraint."""
    constraints = sql(
        """
        SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE conrelid = %s::regclass AND contype IN ('p', 'u', 'f')
        ORDER BY CASE contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 ELSE 2 END, conname
        """,
        [ROLLUPS],
    )
    indexes = sql(
        """
        SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
        WHERE i.indrelid = %s::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        ORDER BY i.indexrelid
        """,
        [ROLLUPS],
    )
    return constraints, [row[0] for row in indexes]


def load_rollups(args, period: date, first_org: int, first_key: int) -> dict:
    """Load the month's rollups with the table's indexes and foreign keys off; rebuild them."""
    constraints, indexes = schema_objects()
    figures = {}
    started = time.perf_counter()
    sql("SET synchronous_commit = off")
    sql(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
    for name, _definition in reversed(constraints):
        sql(f"ALTER TABLE {ROLLUPS} DROP CONSTRAINT {name}")
    for statement in indexes:
        sql(f"DROP INDEX {statement.split()[2]}")
    start = datetime.combine(period, datetime.min.time(), tzinfo=UTC)
    step = 24
    for h0 in range(0, args.hours, step):
        h1 = min(h0 + step, args.hours) - 1
        sql(
            _LOAD_SQL,
            {
                "first_org": first_org,
                "first_key": first_key,
                "start": start,
                "period": period,
                "h0": h0,
                "h1": h1,
                "n_orgs": args.orgs,
                "models": model_names(args.models),
            },
        )
        elapsed = time.perf_counter() - started
        print(f"  rows of hours {h0}–{h1} in, {elapsed:.0f} s", flush=True)
    figures["insert"] = time.perf_counter() - started
    phase = time.perf_counter()
    for name, definition in constraints:
        if not definition.startswith("FOREIGN KEY"):
            sql(f"ALTER TABLE {ROLLUPS} ADD CONSTRAINT {name} {definition}")
    for statement in indexes:
        sql(statement)
    figures["indexes"] = time.perf_counter() - phase
    phase = time.perf_counter()
    for name, definition in constraints:
        if definition.startswith("FOREIGN KEY"):
            sql(f"ALTER TABLE {ROLLUPS} ADD CONSTRAINT {name} {definition}")
    figures["foreign_keys"] = time.perf_counter() - phase
    phase = time.perf_counter()
    sql(f"VACUUM (ANALYZE) {ROLLUPS}")
    figures["vacuum"] = time.perf_counter() - phase
    figures["total"] = time.perf_counter() - started
    sql("SET synchronous_commit = on")
    print(
        f"  load: insert {figures['insert']:.0f} s, indexes {figures['indexes']:.0f} s, "
        f"foreign keys {figures['foreign_keys']:.0f} s, vacuum analyze {figures['vacuum']:.0f} s",
        flush=True,
    )
    return figures


def table_sizes() -> dict:
    rows, heap, indexes = sql(
        "SELECT (SELECT count(*) FROM usage_usagerollup), pg_table_size(%s), pg_indexes_size(%s)",
        [ROLLUPS, ROLLUPS],
    )[0]
    return {"rows": rows, "heap": heap, "indexes": indexes}


# --- measurements ------------------------------------------------------------------------


# The close rated organizations in batches of this many, one query per batch, until it rated
# the month in one pass; the bench still measures that way beside the close's.
BATCH = 500
MODES = ("one-pass", "batches")


def _rate_one_pass(period: date, organization_ids: list[int]):
    from billing import selectors

    for _organization_id, _plan, rating in selectors.period_ratings_one_pass(
        period=period, organization_ids=organization_ids
    ):
        yield rating


def _rate_in_batches(period: date, organization_ids: list[int]):
    from billing import selectors

    for start in range(0, len(organization_ids), BATCH):
        chunk = organization_ids[start : start + BATCH]
        for _plan, rating in selectors.period_ratings(period=period, organization_ids=chunk).values():
            yield rating


def _timing_sql(spent: dict):
    """Patch the usage readers of ``billing.selectors`` to add their time and rows to ``spent``;
    return a function that restores them."""
    from billing import selectors

    batch_query = selectors.usage_for_rating
    stream_query = selectors.usage_by_organization

    def usage_for_rating(**kwargs):
        started = time.perf_counter()
        usage = batch_query(**kwargs)
        spent["sql"] += time.perf_counter() - started
        spent["groups"] += sum(len(slices) for slices in usage.values())
        return usage

    def usage_by_organization(**kwargs):
        stream = stream_query(**kwargs)
        try:
            while True:
                started = time.perf_counter()
                item = next(stream, None)
                spent["sql"] += time.perf_counter() - started
                if item is None:
                    return
                spent["groups"] += len(item[1])
                yield item
        finally:
            stream.close()

    selectors.usage_for_rating = usage_for_rating
    selectors.usage_by_organization = usage_by_organization

    def restore():
        selectors.usage_for_rating = batch_query
        selectors.usage_by_organization = stream_query

    return restore


def measure_rating(period: date, mode: str, check: bool) -> dict:
    """Rate every organization, in one pass (as the close does) or in batches of ``BATCH`` (one
    query each); split the time into SQL (reading the summed usage) and Python (the rest)."""
    from billing.closing import _organizations

    organization_ids = list(_organizations(period).order_by("pk").values_list("pk", flat=True))
    totals = {"lines": 0, "total_minor": 0, "input": 0, "cached_input": 0, "output": 0}
    spent = {"sql": 0.0, "groups": 0}
    ratings = _rate_one_pass if mode == "one-pass" else _rate_in_batches
    restore = _timing_sql(spent)
    try:
        started = time.perf_counter()
        for rating in ratings(period, organization_ids):
            totals["lines"] += len(rating.lines)
            totals["total_minor"] += rating.total_minor
            for line in rating.lines:
                if line.kind == "usage":
                    totals[line.tokens] += line.quantity
        seconds = time.perf_counter() - started
    finally:
        restore()
    result = {
        "mode": mode,
        "seconds": seconds,
        "sql": spent["sql"],
        "python": seconds - spent["sql"],
        "groups": spent["groups"],
        "organizations": len(organization_ids),
        "batches": -(-len(organization_ids) // BATCH),
        **totals,
    }
    if check:
        expected = sql(
            "SELECT sum(input_tokens - cached_tokens), sum(cached_tokens), sum(output_tokens) "
            "FROM usage_usagerollup WHERE billed_period = %s",
            [period],
        )[0]
        result["ok"] = tuple(int(value) for value in expected) == (
            totals["input"],
            totals["cached_input"],
            totals["output"],
        )
    return result


def close_reset(period: date) -> None:
    sql(
        "DELETE FROM billing_invoiceline WHERE invoice_id IN (SELECT id FROM billing_invoice WHERE period = %s)",
        [period],
    )
    sql("DELETE FROM billing_invoice WHERE period = %s", [period])
    sql("DELETE FROM usage_closedperiod WHERE period = %s", [period])


def measure_close(period: date, expected_total: int, n_orgs: int) -> dict:
    from billing.closing import invoice_close_period

    audited = "SELECT count(*) FROM portal_auditevent WHERE action = 'invoice.built'"
    audits_before = sql(audited)[0][0]
    started = time.perf_counter()
    drafts = invoice_close_period(period=period)
    seconds = time.perf_counter() - started
    invoices, lines, total = sql(
        """
        SELECT (SELECT count(*) FROM billing_invoice WHERE period = %(p)s),
               (SELECT count(*) FROM billing_invoiceline l JOIN billing_invoice i ON i.id = l.invoice_id
                WHERE i.period = %(p)s),
               (SELECT coalesce(sum(total_minor), 0) FROM billing_invoice WHERE period = %(p)s)
        """,
        {"p": period},
    )[0]
    audits = sql(audited)[0][0] - audits_before
    return {
        "seconds": seconds,
        "invoices": invoices,
        "lines": lines,
        "audits": audits,
        "drafts": len(drafts),
        "ok": invoices == n_orgs == audits and int(total) == expected_total,
    }


def start_localstripe(port: int, log: Path) -> subprocess.Popen:
    """Start localstripe with the test tree's extension, as the billing tests do; wait for it."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(EXTENSION), "--port", str(port)], stdout=output, stderr=subprocess.STDOUT
        )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/customers?limit=1", headers={"Authorization": f"Bearer {STRIPE_KEY}"}
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"localstripe exited ({process.returncode}); see {log}")
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"localstripe did not answer within 30 s; see {log}")


def measure_push(period: date, sample: int) -> dict:
    """Give ``sample`` organizations a customer with a good card, then push their invoices."""
    import stripe
    from django.conf import settings

    from billing import stripe_adapter
    from billing.models import Customer, Invoice
    from billing.services import invoice_push

    client = stripe.StripeClient(STRIPE_KEY, base_addresses={"api": settings.STRIPE_API_BASE})
    invoices = list(
        Invoice.objects.filter(period=period, status=Invoice.Status.DRAFT)
        .select_related("organization")
        .order_by("pk")[:sample]
    )
    started = time.perf_counter()
    for invoice in invoices:
        organization = invoice.organization
        customer = stripe_adapter.customer_create(
            organization_id=organization.pk, slug=organization.slug, name=organization.name, email=""
        )
        method = client.v1.payment_methods.attach("pm_card_visa", params={"customer": customer})
        client.v1.customers.update(
            customer, params={"invoice_settings": {"default_payment_method": method.id}}
        )
        Customer.objects.create(organization=organization, stripe_customer_id=customer)
    setup = time.perf_counter() - started
    print(f"  {len(invoices)} customers with a card: {setup:.1f} s", flush=True)
    latencies = []
    started = time.perf_counter()
    for invoice in invoices:
        begun = time.perf_counter()
        invoice_push(invoice=invoice)
        latencies.append(time.perf_counter() - begun)
    seconds = time.perf_counter() - started
    paid = Invoice.objects.filter(
        pk__in=[invoice.pk for invoice in invoices], status=Invoice.Status.PAID
    ).count()
    lines = sum(invoice.lines.count() for invoice in invoices)
    return {
        "invoices": len(invoices),
        "lines": lines,
        "seconds": seconds,
        "setup": setup,
        "rate": len(invoices) / seconds if seconds else 0.0,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies, default=0.0),
        "paid": paid,
        "ok": paid == len(invoices),
    }


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- report ------------------------------------------------------------------------------


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def gigabytes(size: int) -> str:
    return f"{size / 1024**3:.1f} GB"


def commit() -> str:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "billing", "usage", "bench/billing_bench.py"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head + (" with uncommitted changes in billing/, usage/ or the benchmark" if dirty else "")


def same_ratings(ratings: dict) -> bool:
    """Whether every way of rating gave the same lines and totals in every round."""
    keys = ("lines", "total_minor", "input", "cached_input", "output")
    return len({tuple(run[key] for key in keys) for runs in ratings.values() for run in runs}) == 1


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def spread(runs: list[dict], key: str, unit: str = "s") -> str:
    values = [run[key] for run in runs]
    if len(values) == 1:
        return f"{values[0]:.1f} {unit}"
    return f"{statistics.median(values):.1f} {unit} ({min(values):.1f}–{max(values):.1f})"


def report(args, command: str, results: dict) -> str:
    from django.db import connection

    server = sql("SHOW server_version")[0][0]
    settings_line = ", ".join(
        f"{name}={sql(f'SHOW {name}')[0][0]}"
        for name in ("shared_buffers", "work_mem", "max_parallel_workers_per_gather", "jit")
    )
    sizes = results["sizes"]
    load = results.get("load")
    ratings = results["rating"]
    closes = results["close"]
    push = results.get("push")
    n_rows = sizes["rows"]
    full = args.orgs * args.models * args.hours
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; commit {commit()}",
        f"- Machine: {os.cpu_count()} CPUs (nproc), {platform.processor() or platform.machine()}; "
        f"Linux {platform.release()}; {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024**3:.0f} GB RAM; "
        "Postgres, localstripe and the benchmark share these CPUs with other work",
        f"- Load average (1/5/15 min) at start: {results['load_start']}; at the end: {load_average()}",
        f"- Python {platform.python_version()}; PostgreSQL {server} ({settings_line}); "
        f"database `{database_name(args.database_url)}` on loopback",
        f"- Data: {args.orgs:,} organizations × {args.models} models × {args.hours} hours = "
        f"{full:,} hourly rollup rows (counted: {n_rows:,}), one key each, billed period "
        f"{results['period']:%Y-%m}; {results['changes']} of the {args.models} models change price "
        f"at hour {args.hours // 2}, so each organization's usage sums to up to "
        f"{args.models + results['changes']} slices before rating. Rows are inserted hour after hour, in "
        "organization order within an hour.",
        f"- Table `usage_usagerollup`: {gigabytes(sizes['heap'])} heap + {gigabytes(sizes['indexes'])} indexes.",
    ]
    if load:
        lines.append(
            f"- Load (generated in Postgres, `INSERT … SELECT … generate_series`, one statement per day, "
            f"synchronous_commit off, indexes and foreign keys dropped): insert {load['insert']:.0f} s, "
            f"rebuild primary key, unique constraint and indexes {load['indexes']:.0f} s, foreign keys "
            f"{load['foreign_keys']:.0f} s, `VACUUM ANALYZE` {load['vacuum']:.0f} s; total {load['total']:.0f} s "
            f"({n_rows / load['insert']:,.0f} rows/s inserted)."
        )
    else:
        lines.append("- Load: the database of an earlier run (`--reuse`), not reloaded.")
    lines += ["", "| Phase | time | figures | check |", "| --- | ---: | --- | --- |"]
    for mode, runs in ratings.items():
        rating = runs[0]
        how = (
            "`period_ratings_one_pass`, one query over the month, as the close rates"
            if mode == "one-pass"
            else f"`period_ratings` in {rating['batches']} batches of {BATCH}, one query each, as the close rated before"
        )
        reader = "usage_by_organization" if mode == "one-pass" else "usage_for_rating"
        lines.append(
            f"| Rating, all {rating['organizations']:,} organizations ({how}), {len(runs)} round(s) | "
            f"{spread(runs, 'seconds')} | SQL (`{reader}`) {spread(runs, 'sql')}, Python {spread(runs, 'python')}; "
            f"{rating['groups']:,} summed rows returned, {rating['lines']:,} lines, total "
            f"{rating['total_minor']:,} minor units | {'PASS' if rating.get('ok') else 'FAIL'}: tokens of all "
            "lines == SUM over the table"
            + (
                f"; {'PASS' if same_ratings(ratings) else 'FAIL'}: both ways give the same totals"
                if len(ratings) > 1
                else ""
            )
            + " |"
        )
    for index, close in enumerate(closes, start=1):
        lines.append(
            f"| Close (`invoice_close_period`), round {index} | {close['seconds']:.1f} s | "
            f"{close['invoices']:,} invoices, {close['lines']:,} lines, {close['audits']:,} audit rows; "
            f"{close['invoices'] / close['seconds']:,.0f} invoices/s | {'PASS' if close['ok'] else 'FAIL'}: "
            "one invoice per organization, Σ totals == Σ rating totals |"
        )
    if push:
        lines.append(
            f"| Stripe push (`invoice_push`, one after another) of {push['invoices']} invoices, localstripe | "
            f"{push['seconds']:.1f} s | {push['rate']:.2f} invoices/s; per invoice p50 {push['p50'] * 1000:.0f} ms, "
            f"p99 {push['p99'] * 1000:.0f} ms, max {push['max'] * 1000:.0f} ms; "
            f"{push['lines'] / max(push['invoices'], 1):.0f} lines per invoice | "
            f"{'PASS' if push['ok'] else 'FAIL'}: {push['paid']} of {push['invoices']} paid |"
        )
    close_way = ratings.get("one-pass") or next(iter(ratings.values()))
    target = median_of(close_way, "seconds")
    verdict = "met" if target < 60 and args.orgs >= 10_000 else "not met" if target >= 60 else "not shown"
    lines += [
        "",
        *(
            f"- Rating rounds, {mode}: " + ", ".join(f"{run['seconds']:.1f} s" for run in runs) + "."
            for mode, runs in ratings.items()
        ),
        "- Push: each invoice is create, one invoice item per line, retrieve (totals compared), finalize and "
        "pay, every call with its idempotency key; the customers and their cards were created beforehand "
        f"({push['setup']:.1f} s, not in the figure)."
        if push
        else "- Push: not run (`--push-sample 0`).",
        f"- Target (issue 11): rating all 10,000 organizations in under 60 s: {verdict} "
        f"(median {target:.1f} s for {args.orgs:,} organizations, {close_way[0]['mode']}).",
    ]
    connection.close()
    return "\n".join(lines)


def kept_notes(path: Path) -> str:
    """Return the hand-written notes at the end of this benchmark's section, to keep them."""
    if not path.exists():
        return ""
    lines = path.read_text().splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "# "))), len(lines))
    section = lines[start:end]
    if NOTES not in section:
        return ""
    return "\n".join(section[section.index(NOTES) :]).strip()


# --- main --------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench.billing_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--hours", type=int, default=720, help="hours of the month with usage (at most 720)")
    parser.add_argument("--period", default="2026-11", help="billed month, YYYY-MM (30 days: 720 hours)")
    parser.add_argument("--rounds", type=int, default=3, help="rating rounds; the median is shown")
    parser.add_argument(
        "--rating",
        type=lambda value: value.split(","),
        default=list(MODES),
        help="how to rate, each in every round: one-pass (the close's way), batches (of 500, one "
        "query each, the close's former way); comma-separated",
    )
    parser.add_argument("--close-rounds", type=int, default=1)
    parser.add_argument("--push-sample", type=int, default=200, help="invoices pushed to localstripe")
    parser.add_argument("--maintenance-work-mem", default="1GB", help="for rebuilding the indexes")
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--reuse", action="store_true", help="measure on a database kept by an earlier run")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_billbench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--command", default="", help="the command line to record in the results")
    args = parser.parse_args(argv)
    if "bench" not in database_name(args.database_url):
        parser.error(
            "--database-url must name a benchmark database (its name contains 'bench'): it is dropped"
        )
    if not args.rating or set(args.rating) - set(MODES):
        parser.error(f"--rating takes {', '.join(MODES)}")
    if not 1 <= args.hours <= 720:
        parser.error("--hours must be 1 to 720")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = args.command or shlex.join(["python", "-m", "bench.billing_bench", *argv])
    period = datetime.strptime(args.period, "%Y-%m").date()
    name = database_name(args.database_url)
    results: dict = {"load_start": load_average(), "period": period, "close": []}
    print(
        f"billing bench: {args.orgs:,} orgs × {args.models} models × {args.hours} hours; load {load_average()}"
    )
    port = free_port()
    localstripe = None
    try:
        if not args.reuse:
            maintenance(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            maintenance(args.database_url, f'CREATE DATABASE "{name}"')
        configure_environment(args, f"http://127.0.0.1:{port}")
        from django.core.management import call_command

        from billing.selectors import plan_default

        if args.reuse:
            call_command("migrate", verbosity=0)
            results["changes"] = sql("SELECT count(*) - count(DISTINCT model) FROM billing_modelprice")[0][0]
            close_reset(period)
            sql("DELETE FROM billing_customer")
        else:
            print("migrate, seed", flush=True)
            call_command("migrate", verbosity=0)
            plan_default()
            results["changes"] = seed_prices(period, args.models, args.hours)
            first_org, first_key = seed_organizations(period, args.orgs)
            print("load rollups", flush=True)
            results["load"] = load_rollups(args, period, first_org, first_key)
        results["sizes"] = table_sizes()
        print(
            f"  {results['sizes']['rows']:,} rows; heap {gigabytes(results['sizes']['heap'])}, "
            f"indexes {gigabytes(results['sizes']['indexes'])}",
            flush=True,
        )
        results["rating"] = {mode: [] for mode in args.rating}
        for round_number in range(1, args.rounds + 1):
            for mode in args.rating:
                rating = measure_rating(period, mode, check=round_number == 1)
                results["rating"][mode].append(rating)
                print(
                    f"rating round {round_number}, {mode}: {rating['seconds']:.1f} s (SQL {rating['sql']:.1f} s, "
                    f"Python {rating['python']:.1f} s) {rating['groups']:,} rows"
                    + (f" check {'PASS' if rating['ok'] else 'FAIL'}" if "ok" in rating else ""),
                    flush=True,
                )
        expected_total = results["rating"][args.rating[0]][0]["total_minor"]
        for round_number in range(1, args.close_rounds + 1):
            if round_number > 1:
                close_reset(period)
            close = measure_close(period, expected_total, args.orgs)
            results["close"].append(close)
            print(
                f"close round {round_number}: {close['seconds']:.1f} s, {close['invoices']:,} invoices, "
                f"{close['lines']:,} lines {'PASS' if close['ok'] else 'FAIL'}",
                flush=True,
            )
        if args.push_sample:
            localstripe = start_localstripe(port, Path(f"/tmp/billing_bench_localstripe_{port}.log"))
            push = measure_push(period, args.push_sample)
            results["push"] = push
            print(
                f"push: {push['invoices']} invoices in {push['seconds']:.1f} s, {push['rate']:.2f}/s, "
                f"p50 {push['p50'] * 1000:.0f} ms, p99 {push['p99'] * 1000:.0f} ms "
                f"{'PASS' if push['ok'] else 'FAIL'}",
                flush=True,
            )
        text = report(args, command, results)
        print()
        print(text)
        if not args.no_write:
            from bench.results import write_section

            notes = kept_notes(Path(args.output))
            write_section(Path(args.output), SECTION, text + ("\n\n" + notes if notes else ""))
    finally:
        if localstripe is not None:
            localstripe.send_signal(signal.SIGTERM)
            try:
                localstripe.wait(10)
            except subprocess.TimeoutExpired:
                localstripe.kill()
                localstripe.wait()
        if "django" in sys.modules:
            from django.db import connections

            connections.close_all()
        if not args.keep:
            maintenance(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print(f"database {name} dropped", flush=True)
    checks = [
        *(runs[0].get("ok") for runs in results["rating"].values()),
        same_ratings(results["rating"]),
        *(close["ok"] for close in results["close"]),
    ]
    if "push" in results:
        checks.append(results["push"]["ok"])
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
