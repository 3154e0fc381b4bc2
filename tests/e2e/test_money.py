"""Money in the browser: the usage page's cost chart drawn per model in the models' colours with
amounts in the currency, and the dashboard's spend and the key list's budget bars fitting at 1280
and 390 px without a console error."""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from billing.services import model_price_set
from keys import services as key_services
from portal.audit import Actor
from tests.e2e.conftest import log_in
from tests.factories import make_org, make_user
from usage.colors import model_color
from usage.models import UsageRollup

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

LLAMA, QWEN = "llama-3.1-8b-instruct", "qwen-2.5-72b"
FITS = "document.documentElement.scrollWidth <= window.innerWidth"
COST = """(id) => Chart.getChart(document.getElementById(id)).data.datasets
  .map((d) => [d.label, d.backgroundColor, d.data.reduce((a, b) => a + b, 0)])"""
TICK_LABELS = "(id) => Chart.getChart(document.getElementById(id)).scales.y.ticks.map((t) => t.label)"


@pytest.fixture
def acme():
    """Acme AI: two priced models used this hour by a budgeted key."""
    owner = make_user("owner@example.com")
    organization = make_org(owner, name="Acme AI")
    key, _secret = key_services.api_key_create(
        actor=Actor(user=owner), organization=organization, name="Search backend", budget_monthly_minor=1000
    )
    for model, input_price in ((LLAMA, "200"), (QWEN, "100")):
        model_price_set(
            actor=Actor.system(),
            model=model,
            input_per_mtok_minor=input_price,
            output_per_mtok_minor="0",
            effective_from=datetime(2020, 1, 1, tzinfo=UTC),
        )
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    # 1,000,000 × 200 = 2.00 USD and 1,500,000 × 100 = 1.50 USD, this hour.
    for model, tokens in ((LLAMA, 1_000_000), (QWEN, 1_500_000)):
        UsageRollup.unscoped.create(
            organization=organization,
            key=key,
            model=model,
            hour=hour,
            billed_period=hour.date().replace(day=1),
            requests=3,
            input_tokens=tokens,
        )
    return organization, key


def _watch(page) -> list[str]:
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed {request.url}"))
    return problems


def test_the_usage_page_charts_cost_per_model_in_the_currency(page, live_server, acme):
    organization, _key = acme
    problems = _watch(page)
    log_in(page, live_server.url, "owner@example.com")
    page.goto(f"{live_server.url}/o/{organization.slug}/usage/?range=24h")

    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('chart-cost'))")
    assert page.evaluate(COST, "chart-cost") == [
        [LLAMA, model_color(LLAMA), 2.0],
        [QWEN, model_color(QWEN), 1.5],
    ]
    labels = page.evaluate(TICK_LABELS, "chart-cost")
    assert labels[0] == "0.00 USD"
    assert all(label.endswith(" USD") for label in labels)
    assert (
        len(page.evaluate("(id) => Chart.getChart(document.getElementById(id)).data.labels", "chart-cost"))
        == 24
    )
    expect(page.locator("#chart-cost")).to_be_visible()
    assert problems == []


@pytest.mark.parametrize("width", [1280, 390])
def test_the_dashboard_and_key_list_show_spend_and_fit(new_context, live_server, acme, width):
    organization, key = acme
    page = new_context().new_page()
    page.set_viewport_size({"width": width, "height": 900})
    problems = _watch(page)
    log_in(page, live_server.url, "owner@example.com")

    page.goto(f"{live_server.url}/o/{organization.slug}/")
    expect(page.locator('[data-money="month-to-date"]')).to_have_text("3.50 USD")
    expect(page.locator(f'#money-by-model tr[data-model="{LLAMA}"] td.number')).to_have_text("2.00 USD")
    expect(page.locator(f'#money-by-model tr[data-model="{QWEN}"] .swatch')).to_have_css(
        "background-color",
        "rgb({}, {}, {})".format(*(int(model_color(QWEN)[at : at + 2], 16) for at in (1, 3, 5))),
    )
    assert page.evaluate(FITS)

    page.goto(f"{live_server.url}/o/{organization.slug}/keys/")
    cell = page.locator(f"#key-{key.public_id} td.key-spend")
    expect(cell).to_contain_text("3.50 USD")
    expect(cell).to_contain_text("of 10.00 USD · 35%")
    expect(cell.locator("progress")).to_have_attribute("value", "350")
    assert page.evaluate(FITS)
    assert problems == []


def test_the_forecast_text_names_the_days_it_averages(page, live_server, acme):
    organization, _key = acme
    log_in(page, live_server.url, "owner@example.com")
    page.goto(f"{live_server.url}/o/{organization.slug}/")
    today = timezone.now().astimezone(UTC).date()
    expect(page.locator("#forecast-method")).to_contain_text(
        f"(used {today - timedelta(days=7):%Y-%m-%d} to {today - timedelta(days=1):%Y-%m-%d}) ÷ 7 a day"
    )
