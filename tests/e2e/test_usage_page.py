"""The Usage page and the dashboard in the browser: Chart.js draws the rollups, the range and
key pickers narrow them, and the CSV link downloads them."""

import csv
import io
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from keys import services as key_services
from portal.audit import Actor
from tests.e2e.conftest import log_in
from tests.factories import make_org, make_user
from usage.colors import OTHER_ERRORS_COLOR, REFUSALS_COLOR
from usage.models import UsageRollup

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LLAMA = "llama-3.1-8b-instruct"
QWEN = "qwen-2.5-72b"
CSV_HEADER = "period,model,key_id,key_name,requests,errors,refusals,input_tokens,output_tokens,cached_tokens,estimated_requests,cost_minor,currency"
DATASETS = "(id) => Chart.getChart(document.getElementById(id)).data.datasets.map((dataset) => dataset.label)"
SUM = "(id) => Chart.getChart(document.getElementById(id)).data.datasets.flatMap((d) => d.data).reduce((a, b) => a + b, 0)"
LABELS = "(id) => Chart.getChart(document.getElementById(id)).data.labels"
# The value of every tick Chart.js drew on the chart's count axes (requests, tokens).
TICKS = """(id) => {
  const scales = Chart.getChart(document.getElementById(id)).scales;
  return Object.keys(scales).filter((axis) => axis !== "x").flatMap((axis) => scales[axis].ticks.map((t) => t.value));
}"""
# Each model's colour as the chart drew it, the token line left out.
COLORS = """(id) => Object.fromEntries(Chart.getChart(document.getElementById(id)).data.datasets
  .filter((d) => d.label !== "Tokens").map((d) => [d.label, d.backgroundColor]))"""


@pytest.fixture
def acme():
    """Acme AI with two keys: 12 requests in the last two hours and 9 three days ago."""
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    keys = {}
    for name in ("Search backend", "Batch jobs"):
        keys[name], _secret = key_services.api_key_create(
            actor=Actor(user=owner), organization=organization, name=name
        )
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    rows = [
        ("Search backend", LLAMA, hour, 5, 1_000, 400),
        ("Batch jobs", QWEN, hour - timedelta(hours=1), 7, 2_100, 700),
        ("Batch jobs", LLAMA, hour - timedelta(days=3), 9, 2_700, 900),
    ]
    UsageRollup.unscoped.bulk_create(
        UsageRollup(
            organization=organization,
            key=keys[name],
            model=model,
            hour=at,
            billed_period=at.date().replace(day=1),
            requests=requests,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
        for name, model, at, requests, input_tokens, output_tokens in rows
    )
    return organization, keys


def _assert_whole_ticks(page, canvas_id: str) -> None:
    ticks = page.evaluate(TICKS, canvas_id)
    assert ticks
    assert [tick for tick in ticks if tick != int(tick)] == []


def _rgb(hex_color: str) -> str:
    """Return ``#rrggbb`` as a browser reports a computed colour."""
    red, green, blue = (int(hex_color[at : at + 2], 16) for at in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def _wait_for_chart(page, canvas_id: str) -> None:
    page.wait_for_function(
        "(id) => window.Chart !== undefined && Chart.getChart(document.getElementById(id)) !== undefined",
        arg=canvas_id,
    )


def test_usage_page_draws_charts_narrows_range_and_key_and_downloads_csv(page, live_server, acme):
    organization, keys = acme
    base = live_server.url
    log_in(page, base, "owner@example.com")
    page.locator("aside.sidenav").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Usage")

    # The default week: both charts drawn by day, seven whole days, one dataset per model (two
    # per model for tokens), whole numbers on every axis.
    _wait_for_chart(page, "chart-requests")
    _wait_for_chart(page, "chart-tokens")
    today = timezone.now().date()
    week = [(today - timedelta(days=6 - n)).isoformat() for n in range(7)]
    assert page.evaluate(LABELS, "chart-requests") == week
    assert page.evaluate(LABELS, "chart-tokens") == week
    expect(page.locator("#usage-window")).to_contain_text("by day")
    assert page.evaluate("typeof window.Chart") == "function"
    assert page.evaluate(DATASETS, "chart-requests") == [LLAMA, QWEN]
    assert page.evaluate(DATASETS, "chart-tokens") == [
        f"{LLAMA} · input",
        f"{LLAMA} · output",
        f"{QWEN} · input",
        f"{QWEN} · output",
    ]
    assert page.evaluate(SUM, "chart-requests") == 21
    assert page.evaluate(SUM, "chart-tokens") == 1_400 + 2_800 + 3_600
    expect(page.locator('[data-total="requests"]')).to_have_text("21")
    expect(page.get_by_role("button", name="Last 7 days")).to_have_attribute("aria-current", "true")
    _assert_whole_ticks(page, "chart-requests")
    _assert_whole_ticks(page, "chart-tokens")
    # The per-model table: each model's swatch in its colour on the chart.
    colors = page.evaluate(COLORS, "chart-requests")
    assert set(colors) == {LLAMA, QWEN}
    for model, color in colors.items():
        swatch = page.locator(f'#usage-by-model tr[data-model="{model}"] .swatch')
        expect(swatch).to_have_css("background-color", _rgb(color))

    # The last 24 hours leave out the requests of three days ago.
    page.get_by_role("button", name="Last 24 hours").click()
    expect(page).to_have_url(f"{base}/o/{organization.slug}/usage/?range=24h")
    expect(page.get_by_role("button", name="Last 24 hours")).to_have_attribute("aria-current", "true")
    expect(page.locator('[data-total="requests"]')).to_have_text("12")
    _wait_for_chart(page, "chart-requests")
    assert len(page.evaluate(LABELS, "chart-requests")) == 24
    assert page.evaluate(SUM, "chart-requests") == 12
    _assert_whole_ticks(page, "chart-requests")
    expect(page.locator("#top-keys tbody tr td:first-child a")).to_have_text(["Batch jobs", "Search backend"])

    # One key: its name in the heading, only its model on the charts.
    page.locator("#top-keys").get_by_role("link", name="Batch jobs").click()
    batch = keys["Batch jobs"]
    expect(page).to_have_url(f"{base}/o/{organization.slug}/usage/?range=24h&key={batch.public_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Usage · Batch jobs")
    expect(page.locator("#usage-key")).to_contain_text(batch.public_id)
    expect(page.locator('[data-total="requests"]')).to_have_text("7")
    _wait_for_chart(page, "chart-requests")
    assert page.evaluate(DATASETS, "chart-requests") == [QWEN]
    assert page.evaluate(DATASETS, "chart-tokens") == [f"{QWEN} · input", f"{QWEN} · output"]
    # Alone on the chart, the model keeps its colour.
    assert page.evaluate(COLORS, "chart-requests") == {QWEN: colors[QWEN]}

    # The CSV of what is on screen.
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download CSV").click()
    download = download_info.value
    assert download.suggested_filename.startswith(f"usage-acme-ai-{batch.public_id}-")
    with open(download.path(), newline="") as file:
        text = file.read()
    assert text.splitlines()[0] == CSV_HEADER
    records = list(csv.DictReader(io.StringIO(text)))
    assert [(r["model"], r["key_id"], r["key_name"], r["requests"]) for r in records] == [
        (QWEN, batch.public_id, "Batch jobs", "7")
    ]

    # Back to every key, then dates chosen by hand: more than two days are shown by day.
    page.get_by_role("link", name="All keys").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Usage")
    today = timezone.now().date()
    page.get_by_label("From", exact=True).fill((today - timedelta(days=40)).isoformat())
    page.get_by_label("To", exact=True).fill(today.isoformat())
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#usage-window")).to_contain_text("by day")
    expect(page.locator('[data-total="requests"]')).to_have_text("21")
    _wait_for_chart(page, "chart-requests")
    assert page.evaluate("Chart.getChart(document.getElementById('chart-requests')).data.labels.length") == 41


def test_usage_page_draws_refusals_and_other_errors_per_hour_without_a_console_error(page, live_server, acme):
    organization, keys = acme
    # In the hour in progress the edge refused 2 of Search backend's 5 requests; the hour before,
    # 3 of Batch jobs' 7 answers were errors, 1 of them a refusal.
    UsageRollup.unscoped.filter(key=keys["Search backend"]).update(errors=2, refusals=2)
    UsageRollup.unscoped.filter(key=keys["Batch jobs"], model=QWEN).update(errors=3, refusals=1)
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    base = live_server.url
    log_in(page, base, "owner@example.com")
    page.goto(f"{base}/o/{organization.slug}/usage/?range=24h")
    expect(page.get_by_role("heading", name="Errors and refusals")).to_be_visible()
    _wait_for_chart(page, "chart-errors")
    canvas = page.locator("#chart-errors")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    assert box["width"] > 0 and box["height"] > 0
    assert page.evaluate(DATASETS, "chart-errors") == ["Refused", "Other errors"]
    assert page.evaluate(LABELS, "chart-errors") == page.evaluate(LABELS, "chart-requests")
    drawn = page.evaluate(
        """(id) => Chart.getChart(document.getElementById(id)).data.datasets
          .map((d) => [d.backgroundColor, d.data])""",
        "chart-errors",
    )
    assert drawn == [
        [REFUSALS_COLOR, [0] * 22 + [1, 2]],
        [OTHER_ERRORS_COLOR, [0] * 22 + [2, 0]],
    ]
    _assert_whole_ticks(page, "chart-errors")
    expect(page.locator('[data-total="errors"]')).to_have_text("5")
    expect(page.locator('[data-total="refusals"]')).to_have_text("3")
    assert problems == []


def test_bad_dates_show_the_reason_in_the_page(page, live_server, acme):
    organization, _keys = acme
    base = live_server.url
    log_in(page, base, "owner@example.com")
    response = page.goto(f"{base}/o/{organization.slug}/usage/?start=2026-03-09&end=2026-03-01")
    assert response.status == 400
    expect(page.get_by_role("alert")).to_have_text("The start date must be on or before the end date.")
    expect(page.locator("canvas")).to_have_count(0)


def test_dashboard_draws_the_weeks_requests_and_tokens_and_top_keys(page, live_server, acme):
    organization, keys = acme
    base = live_server.url
    log_in(page, base, "owner@example.com")
    page.goto(f"{base}/o/{organization.slug}/")
    _wait_for_chart(page, "chart-overview")
    # Requests stacked by model, then the day's tokens as one line.
    assert page.evaluate(DATASETS, "chart-overview") == [LLAMA, QWEN, "Tokens"]
    today = timezone.now().date()
    assert page.evaluate(LABELS, "chart-overview") == [
        (today - timedelta(days=6 - n)).isoformat() for n in range(7)
    ]
    requests_per_model = page.evaluate(
        "Chart.getChart(document.getElementById('chart-overview')).data.datasets.slice(0, 2).map((d) => d.data)"
    )
    assert sum(map(sum, requests_per_model)) == 21
    _assert_whole_ticks(page, "chart-overview")
    dashboard_colors = page.evaluate(COLORS, "chart-overview")
    expect(page.locator("#usage-overview [data-total='requests']")).to_have_text("21")
    expect(page.locator("#top-keys tbody tr td:first-child a")).to_have_text(["Batch jobs", "Search backend"])
    page.locator("#top-keys").get_by_role("link", name="Search backend").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Usage · Search backend")
    expect(page.locator('[data-total="requests"]')).to_have_text("5")
    # The usage page draws the model in the dashboard's colour; five requests at most a day
    # still have whole-number ticks (Chart.js would step by 0.5).
    _wait_for_chart(page, "chart-requests")
    _assert_whole_ticks(page, "chart-requests")
    assert page.evaluate(COLORS, "chart-requests") == {LLAMA: dashboard_colors[LLAMA]}
    page.get_by_role("link", name="All keys").click()
    _wait_for_chart(page, "chart-requests")
    assert page.evaluate(COLORS, "chart-requests") == dashboard_colors
