"""The console's Usage page, its CSV and the dashboard's usage panel, from rollups in real Postgres.

Rollup rows are written directly; every number the pages show is checked against sums
computed here from the same rows.
"""

import csv
import io
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import time_machine
from django.urls import reverse
from django.utils.html import escape

from keys import services as key_services
from keys.models import ApiKey
from portal.audit import Actor
from portal.models import Organization
from portal.roles import ROLE_PERMISSIONS, Perm, Role
from tests.factories import add_member, make_org, make_user
from usage.colors import OTHER_ERRORS_COLOR, PALETTE, REFUSALS_COLOR
from usage.models import UsageRollup

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
HOUR = NOW.replace(minute=0)  # the hour in progress
CSV_HEADER = [
    "period",
    "model",
    "key_id",
    "key_name",
    "requests",
    "errors",
    "refusals",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "estimated_requests",
    "cost_minor",
    "currency",
]
# No model has a price on these pages: every cost is zero (test_usage_costs.py prices usage).
UNPRICED = ["0", "usd"]
LLAMA = "llama-3.1-8b-instruct"
QWEN = "qwen-2.5-72b"
# (key name, model, hours before the hour in progress, requests, errors, refusals (among the
# errors), input, output, cached, estimated)
ACME_ROWS = [
    ("Search backend", LLAMA, 0, 5, 1, 1, 1_000, 400, 100, 0),
    ("Search backend", QWEN, 1, 3, 0, 0, 900, 300, 0, 1),
    ("Batch jobs", LLAMA, 1, 7, 2, 1, 2_100, 700, 50, 0),
    ("Batch jobs", QWEN, 5, 2, 0, 0, 640, 160, 0, 0),
    ("Search backend", LLAMA, 30, 4, 0, 0, 800, 200, 20, 0),
    ("Batch jobs", LLAMA, 72, 9, 1, 0, 2_700, 900, 0, 2),
    ("Search backend", QWEN, 24 * 20, 8, 0, 0, 1_200, 600, 0, 0),
    ("Batch jobs", LLAMA, 24 * 45, 11, 0, 0, 3_300, 1_100, 0, 0),
]
OTHER_ROWS = [
    ("Intruder key", LLAMA, 0, 1_000, 10, 10, 500_000, 250_000, 0, 0),
    ("Intruder key", QWEN, 1, 2_000, 20, 0, 900_000, 450_000, 0, 0),
]


@dataclass(frozen=True)
class Seeded:
    key: ApiKey
    model: str
    hour: datetime
    requests: int
    errors: int
    refusals: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    estimated_requests: int


@dataclass
class Tenant:
    organization: Organization
    owner: object
    keys: dict[str, ApiKey]
    rows: list[Seeded]


@pytest.fixture(autouse=True)
def _frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def _seed(organization, owner, rows) -> Tenant:
    keys: dict[str, ApiKey] = {}
    seeded = []
    for name, model, hours_ago, *metrics in rows:
        if name not in keys:
            keys[name], _secret = key_services.api_key_create(
                actor=Actor(user=owner), organization=organization, name=name
            )
        seeded.append(Seeded(keys[name], model, HOUR - timedelta(hours=hours_ago), *metrics))
    UsageRollup.unscoped.bulk_create(
        UsageRollup(
            organization=organization,
            key=row.key,
            model=row.model,
            hour=row.hour,
            billed_period=row.hour.date().replace(day=1),
            requests=row.requests,
            errors=row.errors,
            refusals=row.refusals,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cached_tokens=row.cached_tokens,
            estimated_requests=row.estimated_requests,
        )
        for row in seeded
    )
    return Tenant(organization, owner, keys, seeded)


@pytest.fixture
def acme() -> Tenant:
    owner = make_user("owner@acme.example")
    return _seed(make_org(owner, name="Acme AI"), owner, ACME_ROWS)


@pytest.fixture
def other() -> Tenant:
    owner = make_user("owner@other.example")
    return _seed(make_org(owner, name="Other Co"), owner, OTHER_ROWS)


def _url(organization, name="org-usage") -> str:
    return reverse(name, args=[organization.slug])


def _chart(content: bytes, element_id: str = "usage-chart") -> dict:
    match = re.search(
        rf'<script id="{element_id}" type="application/json">(.*?)</script>', content.decode(), re.S
    )
    assert match, f"no #{element_id} JSON in the page"
    return json.loads(match.group(1))


def _period(hour: datetime, granularity: str) -> datetime:
    return hour if granularity == "hour" else hour.replace(hour=0)


def _expected_chart(rows, start, end, granularity) -> dict:
    """Sum the seeded rows per (model, period): (requests, input tokens, output tokens)."""
    sums = defaultdict(lambda: [0, 0, 0])
    for row in rows:
        if start <= row.hour < end:
            cell = sums[(row.model, _period(row.hour, granularity).isoformat())]
            cell[0] += row.requests
            cell[1] += row.input_tokens
            cell[2] += row.output_tokens
    return {cell: tuple(values) for cell, values in sums.items()}


def _chart_cells(chart: dict) -> dict:
    """Read the page's chart back into the same shape, leaving out the zero-filled periods."""
    cells = {}
    for series in chart["models"]:
        for position, period in enumerate(chart["periods"]):
            values = (
                series["requests"][position],
                series["input_tokens"][position],
                series["output_tokens"][position],
            )
            if any(values):
                cells[(series["model"], period)] = values
    return cells


def _expected_totals(rows, start, end) -> dict:
    inside = [row for row in rows if start <= row.hour < end]
    return {
        metric: sum(getattr(row, metric) for row in inside)
        for metric in ("requests", "errors", "refusals", "input_tokens", "output_tokens", "cached_tokens")
    }


def _expected_csv(rows, start, end, granularity) -> list[list[str]]:
    sums = defaultdict(lambda: [0] * 7)
    for row in rows:
        if start <= row.hour < end:
            cell = sums[(_period(row.hour, granularity), row.model, row.key.public_id, row.key.name)]
            for index, metric in enumerate(CSV_HEADER[4:11]):
                cell[index] += getattr(row, metric)
    return [
        [period.isoformat(), model, key_id, key_name, *map(str, values), *UNPRICED]
        for (period, model, key_id, key_name), values in sorted(sums.items())
    ]


def _expected_top_keys(rows, start, end) -> list[tuple]:
    per_key = defaultdict(lambda: [0, 0, set()])
    for row in rows:
        if start <= row.hour < end:
            entry = per_key[(row.key.public_id, row.key.name)]
            entry[0] += row.requests
            entry[1] += row.input_tokens + row.output_tokens
            entry[2].add(row.model)
    return sorted(
        (
            (key_id, name, requests, tokens, len(models))
            for (key_id, name), (requests, tokens, models) in per_key.items()
        ),
        key=lambda entry: -entry[2],
    )


def _top_keys(context) -> list[tuple]:
    return [
        (row["key_public_id"], row["key_name"], row["requests"], row["tokens"], row["models"])
        for row in context["top_keys"]
    ]


def _csv_rows(response) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))


def _total_in_page(content: bytes, metric: str) -> str:
    match = re.search(rf'<strong data-total="{metric}">([^<]*)</strong>', content.decode())
    assert match, f"no total for {metric}"
    return match.group(1)


def test_default_week_charts_totals_and_top_keys_equal_the_rollups(client, acme, other):
    client.force_login(acme.owner)
    response = client.get(_url(acme.organization))
    assert response.status_code == 200
    # The week is seven whole days by day, today's included, every day present.
    start, end = datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)
    chart = _chart(response.content)
    assert chart["granularity"] == "day"
    assert chart["periods"] == [f"2026-03-{day:02d}T00:00:00+00:00" for day in range(4, 11)]
    assert chart["labels"] == [f"2026-03-{day:02d}" for day in range(4, 11)]
    assert _chart_cells(chart) == _expected_chart(acme.rows, start, end, "day")
    # Busiest model first (llama 25 requests in the week, qwen 5), days without usage as zeros,
    # each model in its own colour.
    assert chart["models"] == [
        {
            "model": LLAMA,
            "color": "#edc948",
            "requests": [0, 0, 0, 9, 0, 4, 12],
            "input_tokens": [0, 0, 0, 2_700, 0, 800, 3_100],
            "output_tokens": [0, 0, 0, 900, 0, 200, 1_100],
        },
        {
            "model": QWEN,
            "color": "#76b7b2",
            "requests": [0, 0, 0, 0, 0, 0, 5],
            "input_tokens": [0, 0, 0, 0, 0, 0, 1_540],
            "output_tokens": [0, 0, 0, 0, 0, 0, 460],
        },
    ]
    totals = _expected_totals(acme.rows, start, end)
    assert totals == {
        "requests": 30,
        "errors": 4,
        "refusals": 2,
        "input_tokens": 8_140,
        "output_tokens": 2_660,
        "cached_tokens": 170,
    }
    for metric, value in totals.items():
        assert response.context["totals"][metric] == value
        assert _total_in_page(response.content, metric) == f"{value:,}"
    assert _top_keys(response.context) == _expected_top_keys(acme.rows, start, end)
    batch = acme.keys["Batch jobs"]
    assert f'<a href="?range=7d&amp;key={batch.public_id}">Batch jobs</a>' in response.content.decode()
    assert 'aria-current="true">Last 7 days</a>' in response.content.decode()
    assert b'<canvas id="chart-requests"' in response.content
    assert b'<canvas id="chart-tokens"' in response.content
    assert b"vendor/chartjs/chart.umd.min.js" in response.content
    assert b"No usage in this range yet" not in response.content
    # Another organization's usage appears nowhere.
    assert b"Intruder key" not in response.content
    assert other.keys["Intruder key"].public_id.encode() not in response.content


@pytest.mark.parametrize(
    ("query", "start", "end", "granularity", "periods"),
    [
        ("range=24h", HOUR - timedelta(hours=23), HOUR + timedelta(hours=1), "hour", 24),
        (
            "start=2026-03-09&end=2026-03-10",
            datetime(2026, 3, 9, tzinfo=UTC),
            datetime(2026, 3, 11, tzinfo=UTC),
            "hour",
            48,
        ),
        (
            "start=2026-03-08&end=2026-03-10",
            datetime(2026, 3, 8, tzinfo=UTC),
            datetime(2026, 3, 11, tzinfo=UTC),
            "day",
            3,
        ),
        ("range=7d", datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC), "day", 7),
        ("range=30d", datetime(2026, 2, 9, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC), "day", 30),
    ],
)
def test_up_to_48_hours_are_charted_by_hour_and_longer_ranges_by_whole_day(
    client, acme, other, query, start, end, granularity, periods
):
    client.force_login(acme.owner)
    response = client.get(f"{_url(acme.organization)}?{query}")
    assert response.status_code == 200
    chart = _chart(response.content)
    assert chart["granularity"] == granularity
    step = timedelta(hours=1) if granularity == "hour" else timedelta(days=1)
    assert chart["periods"] == [(start + step * n).isoformat() for n in range(periods)]
    assert start + step * periods == end
    assert all(
        len(series[metric]) == periods
        for series in chart["models"]
        for metric in ("requests", "input_tokens", "output_tokens")
    )
    expected = _expected_chart(acme.rows, start, end, granularity)
    assert expected  # every window here holds some of the seeded rows
    assert _chart_cells(chart) == expected
    assert {
        metric: response.context["totals"][metric] for metric in _expected_totals(acme.rows, start, end)
    } == (_expected_totals(acme.rows, start, end))
    assert _top_keys(response.context) == _expected_top_keys(acme.rows, start, end)


def _errors_series(chart: dict) -> list[tuple]:
    return [
        (series["name"], series["label"], series["color"], series["counts"]) for series in chart["series"]
    ]


def _expected_errors(rows, periods: list[str], granularity: str) -> tuple[list[int], list[int]]:
    """Sum the seeded rows' refusals and other errors (errors less refusals) per period."""
    refusals, other_errors = [0] * len(periods), [0] * len(periods)
    for row in rows:
        period = _period(row.hour, granularity).isoformat()
        if period in periods:
            refusals[periods.index(period)] += row.refusals
            other_errors[periods.index(period)] += row.errors - row.refusals
    return refusals, other_errors


@pytest.mark.parametrize(
    ("query", "key_name", "refusals", "other_errors"),
    [
        # By day: today's hour in progress (1 refusal) and last hour (2 errors, 1 a refusal), and
        # three days ago 1 upstream error; the other organization's 10 refusals nowhere.
        ("range=7d", None, [0, 0, 0, 0, 0, 0, 2], [0, 0, 0, 1, 0, 0, 1]),
        # By hour: the two hours apart, the 24 hours zero-filled.
        ("range=24h", None, [0] * 22 + [1, 1], [0] * 22 + [1, 0]),
        ("range=7d", "Batch jobs", [0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0, 1]),
        ("range=30d", "Search backend", [0] * 29 + [1], [0] * 30),
    ],
)
def test_errors_chart_splits_refusals_from_other_errors_in_the_charts_buckets(
    client, acme, other, query, key_name, refusals, other_errors
):
    client.force_login(acme.owner)
    if key_name:
        query += f"&key={acme.keys[key_name].public_id}"
    response = client.get(f"{_url(acme.organization)}?{query}")
    assert response.status_code == 200
    chart = _chart(response.content)
    errors = _chart(response.content, "usage-errors-chart")
    assert errors == {
        "labels": chart["labels"],
        "series": [
            {"name": "refusals", "label": "Refused", "color": REFUSALS_COLOR, "counts": refusals},
            {
                "name": "other_errors",
                "label": "Other errors",
                "color": OTHER_ERRORS_COLOR,
                "counts": other_errors,
            },
        ],
    }
    rows = [row for row in acme.rows if key_name is None or row.key.name == key_name]
    assert (refusals, other_errors) == _expected_errors(rows, chart["periods"], chart["granularity"])
    # The two add up to the Errors total; neither colour is a model's.
    assert sum(refusals) + sum(other_errors) == response.context["totals"]["errors"]
    assert sum(refusals) == response.context["totals"]["refusals"]
    assert {REFUSALS_COLOR, OTHER_ERRORS_COLOR}.isdisjoint(PALETTE)
    assert REFUSALS_COLOR != OTHER_ERRORS_COLOR
    assert (
        '<canvas id="chart-errors" data-chart="errors" data-source="usage-errors-chart"'
        in response.content.decode()
    )


def test_dates_over_months_are_charted_by_day(client, acme, other):
    client.force_login(acme.owner)
    response = client.get(f"{_url(acme.organization)}?start=2026-01-01&end=2026-03-10")
    assert response.status_code == 200
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)
    chart = _chart(response.content)
    assert chart["granularity"] == "day"
    assert len(chart["periods"]) == 69
    assert chart["labels"][0] == "2026-01-01"
    assert chart["labels"][-1] == "2026-03-10"
    assert _chart_cells(chart) == _expected_chart(acme.rows, start, end, "day")
    # All eight seeded rows fall in the range, the one from 45 days ago included.
    assert response.context["totals"]["requests"] == sum(row.requests for row in acme.rows) == 49
    assert b"by day" in response.content


def test_csv_download_equals_the_rollups_by_period_model_and_key(client, acme, other):
    client.force_login(acme.owner)
    page = client.get(_url(acme.organization))
    csv_url = page.context["csv_url"]
    assert csv_url == f"{_url(acme.organization, 'org-usage-export')}?range=7d"
    assert f'href="{escape(csv_url)}"' in page.content.decode()
    response = client.get(csv_url)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"] == 'attachment; filename="usage-acme-ai-20260304-20260310.csv"'
    rows = _csv_rows(response)
    assert rows[0] == CSV_HEADER
    start, end = datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)
    assert rows[1:] == _expected_csv(acme.rows, start, end, "day")
    assert len(rows) == 1 + 6


def test_console_csv_is_the_api_csv_for_the_same_window(client, acme, other):
    client.force_login(acme.owner)
    page = client.get(f"{_url(acme.organization)}?start=2026-01-01&end=2026-03-10")
    api_url = urlsplit(page.context["api_csv_url"])
    assert api_url.path == "/api/v1/usage"
    from_api = client.get(f"{api_url.path}?{api_url.query}")
    from_console = client.get(page.context["csv_url"])
    assert from_api.status_code == from_console.status_code == 200
    assert from_console.content == from_api.content
    expected = _expected_csv(
        acme.rows, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC), "day"
    )
    assert _csv_rows(from_console)[1:] == expected


def test_key_drill_down_shows_only_that_key_with_its_name(client, acme, other):
    client.force_login(acme.owner)
    batch = acme.keys["Batch jobs"]
    response = client.get(f"{_url(acme.organization)}?range=30d&key={batch.public_id}")
    assert response.status_code == 200
    content = response.content.decode()
    assert "<h1>Usage · Batch jobs</h1>" in content
    assert f"<code>{batch.public_id}</code>" in content
    assert '<a href="?range=30d">All keys</a>' in content
    assert f'<input type="hidden" name="key" value="{batch.public_id}">' in content
    assert f'href="?range=24h&amp;key={batch.public_id}"' in content
    start, end = datetime(2026, 2, 9, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)
    only_batch = [row for row in acme.rows if row.key == batch]
    assert _chart_cells(_chart(response.content)) == _expected_chart(only_batch, start, end, "day")
    assert response.context["totals"]["requests"] == 7 + 2 + 9 == 18
    assert f'<tr id="top-key-{batch.public_id}" aria-current="true">' in content
    csv_response = client.get(response.context["csv_url"])
    assert response.context["csv_url"].endswith(f"?range=30d&key={batch.public_id}")
    assert csv_response["Content-Disposition"] == (
        f'attachment; filename="usage-acme-ai-{batch.public_id}-20260209-20260310.csv"'
    )
    assert _csv_rows(csv_response)[1:] == _expected_csv(only_batch, start, end, "day")


def test_another_organizations_key_reads_exactly_like_a_missing_one(client, acme, other):
    client.force_login(acme.owner)
    theirs = client.get(f"{_url(acme.organization)}?key={other.keys['Intruder key'].public_id}")
    missing = client.get(f"{_url(acme.organization)}?key=key_doesnotexist")
    for response in (theirs, missing):
        assert response.status_code == 400
        assert "Key: No such key in this organization." in response.content.decode()
        assert b"Intruder key" not in response.content
        assert b'id="usage-chart"' not in response.content
    export = client.get(
        f"{_url(acme.organization, 'org-usage-export')}?key={other.keys['Intruder key'].public_id}"
    )
    assert export.status_code == 302
    assert export["Location"] == f"{_url(acme.organization)}?key={other.keys['Intruder key'].public_id}"


def test_each_organization_sees_only_its_own_usage(client, acme, other):
    client.force_login(other.owner)
    response = client.get(_url(other.organization))
    assert response.status_code == 200
    assert response.context["totals"]["requests"] == 3_000
    assert [row[1] for row in _top_keys(response.context)] == ["Intruder key"]
    assert b"Search backend" not in response.content and b"Batch jobs" not in response.content
    rows = _csv_rows(client.get(response.context["csv_url"]))
    assert {row[3] for row in rows[1:]} == {"Intruder key"}
    # A user who is not a member gets the 404 of an organization that does not exist.
    assert client.get(_url(acme.organization)).status_code == 404
    assert client.get(_url(acme.organization, "org-usage-export")).status_code == 404


@pytest.mark.parametrize("role", Role.values)
def test_each_role_sees_usage_exactly_when_the_role_table_allows(client, acme, role):
    user = add_member(acme.organization, role) if role != Role.OWNER else acme.owner
    client.force_login(user)
    allowed = Perm.USAGE_VIEW in ROLE_PERMISSIONS[role]
    assert client.get(_url(acme.organization)).status_code == (200 if allowed else 403)
    assert client.get(_url(acme.organization, "org-usage-export")).status_code == (200 if allowed else 403)
    dashboard = client.get(_url(acme.organization, "org-dashboard"))
    assert dashboard.status_code == 200
    assert (b'id="usage-overview"' in dashboard.content) is allowed


def test_a_role_without_usage_view_gets_403_and_the_plain_dashboard(client, acme, monkeypatch):
    monkeypatch.setitem(ROLE_PERMISSIONS, Role.VIEWER, ROLE_PERMISSIONS[Role.VIEWER] - {Perm.USAGE_VIEW})
    viewer = add_member(acme.organization, Role.VIEWER)
    client.force_login(viewer)
    page = client.get(_url(acme.organization))
    assert page.status_code == 403
    assert b"You can't do that here" in page.content
    assert b"Your role (Viewer) cannot do this." in page.content
    assert client.get(_url(acme.organization, "org-usage-export")).status_code == 403
    dashboard = client.get(_url(acme.organization, "org-dashboard"))
    assert dashboard.status_code == 200
    assert "usage" not in dashboard.context
    assert b'id="usage-overview"' not in dashboard.content
    assert b"dashboard-usage-chart" not in dashboard.content
    assert b"<h3>API keys</h3>" in dashboard.content


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("start=2026-02-30&end=2026-03-01", "From: Enter a valid date."),
        ("start=yesterday", "From: Enter a valid date."),
        ("start=2026-03-01&end=03/09/2026x", "To: Enter a valid date."),
        ("start=2026-03-09&end=2026-03-01", "The start date must be on or before the end date."),
        ("start=2020-01-01&end=2026-03-01", "Choose at most two years at a time."),
        ("start=9999-12-01&end=9999-12-31", "The end date is too far in the future."),
        ("range=90d", "Range: Select a valid choice. 90d is not one of the available choices."),
    ],
)
def test_bad_dates_show_a_readable_message_with_400(client, acme, query, message):
    client.force_login(acme.owner)
    response = client.get(f"{_url(acme.organization)}?{query}")
    assert response.status_code == 400
    content = response.content.decode()
    assert (
        f'<article class="message error" role="alert" id="usage-errors">\n  <div>{escape(message)}</div>\n'
        in content
    )
    assert 'id="usage-chart"' not in content
    assert 'id="usage-range"' in content  # the picker is still there to fix the range
    export = client.get(f"{_url(acme.organization, 'org-usage-export')}?{query}")
    assert export.status_code == 302
    assert export["Location"] == f"{_url(acme.organization)}?{query}"


def test_a_csv_over_the_row_limit_sends_back_to_the_page_with_the_reason(client, acme, monkeypatch):
    monkeypatch.setattr("usage.export.MAX_ROWS", 2)
    client.force_login(acme.owner)
    response = client.get(f"{_url(acme.organization, 'org-usage-export')}?range=24h", follow=True)
    assert response.redirect_chain == [(f"{_url(acme.organization)}?range=24h", 302)]
    assert response.status_code == 200
    assert "More than 2 rows: narrow the range or use day granularity." in response.content.decode()


def test_a_range_without_usage_shows_the_empty_state(client, acme):
    client.force_login(acme.owner)
    response = client.get(f"{_url(acme.organization)}?start=2025-01-01&end=2025-01-31")
    assert response.status_code == 200
    content = response.content.decode()
    assert "No usage in this range yet." in content
    assert "Send a request through the edge" in content
    assert "<canvas" not in content
    assert _total_in_page(response.content, "requests") == "0"
    assert "No key was used in this range." in content


def test_dashboard_shows_the_last_seven_days_by_day_and_the_top_five_keys(client, acme, other):
    # Four more keys used today, so that the top five leaves one out.
    extra = _seed(
        acme.organization,
        acme.owner,
        [(f"Extra {n}", LLAMA, 2, 20 + n, 0, 0, 100 * n, 10 * n, 0, 0) for n in range(1, 5)],
    )
    rows = acme.rows + extra.rows
    client.force_login(acme.owner)
    response = client.get(_url(acme.organization, "org-dashboard"))
    assert response.status_code == 200
    start, end = datetime(2026, 3, 4, tzinfo=UTC), datetime(2026, 3, 11, tzinfo=UTC)
    chart = _chart(response.content, "dashboard-usage-chart")
    assert chart["granularity"] == "day"
    assert chart["labels"] == [f"2026-03-{day:02d}" for day in range(4, 11)]
    assert _chart_cells(chart) == _expected_chart(rows, start, end, "day")
    usage = response.context["usage"]
    totals = _expected_totals(rows, start, end)
    assert {metric: usage["totals"][metric] for metric in totals} == totals
    # The week's errors and refusals next to its requests.
    assert (totals["requests"], totals["errors"], totals["refusals"]) == (120, 4, 2)
    for metric in ("requests", "errors", "refusals"):
        assert _total_in_page(response.content, metric) == f"{totals[metric]:,}"
    top = _expected_top_keys(rows, start, end)
    assert len(top) == 6
    assert [row[:3] for row in _top_keys(usage)] == [row[:3] for row in top[:5]]
    assert [row[1] for row in top[:5]] == ["Extra 4", "Extra 3", "Extra 2", "Extra 1", "Batch jobs"]
    content = response.content.decode()
    usage_url = _url(acme.organization)
    assert f'<a href="{usage_url}?start=2026-03-04&amp;end=2026-03-10">See usage</a>' in content
    extra_4 = extra.keys["Extra 4"].public_id
    assert (
        f'<a href="{usage_url}?start=2026-03-04&amp;end=2026-03-10&amp;key={extra_4}">Extra 4</a>' in content
    )
    assert "Search backend" not in content  # sixth of six keys
    assert '<canvas id="chart-overview"' in content
    assert "Intruder key" not in content
    # The dashboard's link opens the usage page on the same days, with the same totals.
    page = client.get(f"{usage_url}?start=2026-03-04&end=2026-03-10")
    assert page.context["totals"]["requests"] == usage["totals"]["requests"]


def test_dashboard_without_usage_says_how_to_get_some(client):
    owner = make_user()
    organization = make_org(owner, name="Quiet Co")
    client.force_login(owner)
    response = client.get(_url(organization, "org-dashboard"))
    assert response.status_code == 200
    assert b'id="usage-overview"' in response.content
    assert b"No usage in this range yet." in response.content
    assert b"<canvas" not in response.content
    assert response.context["usage"]["window"].first_day == date(2026, 3, 4)
