"""Money everywhere in the console: the dashboard, the usage page and its CSV, the key list and the
key page show, to the cent, what the rating functions make of the same rollups.

The expected amounts are computed here from the rollups with ``billing.rating`` (each rollup
priced at its hour's price, summed exactly, rounded once per figure as the console rounds it),
and the main figures are also worked out by hand in the comments, so that neither side can drift.
"""

import csv
import io
import json
import re
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.currency import format_minor
from billing.models import Plan, PlanAssignment
from billing.rating import Price, PriceBook, Usage, rate, round_minor, usage_amount
from billing.services import model_price_set
from keys import services as key_services
from portal.audit import Actor
from portal.roles import ROLE_PERMISSIONS, Perm, Role
from tests.factories import add_member, make_org, make_user
from usage.colors import model_color
from usage.models import UsageRollup

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
OCTOBER, NOVEMBER = date(2026, 10, 1), date(2026, 11, 1)
CHANGE = datetime(2026, 11, 10, tzinfo=UTC)
LLAMA, QWEN, FREE = "llama-3.1-8b-instruct", "qwen2.5-7b", "free-model"
# Minor units per million tokens: input, cached input, output. Llama's price doubles on the 10th.
PRICES = {
    LLAMA: [
        (datetime(2026, 10, 1, tzinfo=UTC), "150", "15", "600"),
        (CHANGE, "300", "30", "1200"),
    ],
    QWEN: [(datetime(2026, 10, 1, tzinfo=UTC), "70", "0", "280")],
}
BOOK = PriceBook(
    base={
        model: [Price(moment, Decimal(i), Decimal(c), Decimal(o)) for moment, i, c, o in versions]
        for model, versions in PRICES.items()
    }
)
FEE = 4900


def at(day: int, hour: int, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


# (key, model, hour, billed period, input tokens (cached included), cached, output)
ROLLUPS = [
    # 1,000,003 × 150 + 250,001 × 600 = 300.00105 cents (the old price)
    ("Search", LLAMA, at(5, 10), NOVEMBER, 1_000_003, 0, 250_001),
    # 400,000 × 300 + 100,000 × 30 + 100,000 × 1,200 = 243 (the new price)
    ("Search", LLAMA, at(15, 9), NOVEMBER, 500_000, 100_000, 100_000),
    # 2,000,005 × 300 = 600.0015
    ("Batch", LLAMA, at(18, 20), NOVEMBER, 2_000_005, 0, 0),
    # 3,000,007 × 70 + 1,000,003 × 280 = 490.00133
    ("Batch", QWEN, at(18, 21), NOVEMBER, 3_000_007, 0, 1_000_003),
    # 1,000,000 × 70 + 500,000 × 280 = 210, today
    ("Search", QWEN, at(20, 14), NOVEMBER, 1_000_000, 0, 500_000),
    # 7,143 × 70 = 0.50001
    ("Search", QWEN, at(12, 8), NOVEMBER, 7_143, 0, 0),
    # No price: free.
    ("Batch", FREE, at(19, 12), NOVEMBER, 10_000, 0, 0),
    # Last month's usage is not this month's spend.
    ("Search", LLAMA, at(31, 23, month=10), OCTOBER, 10_000_000, 0, 0),
    # October's hour that arrived after October closed: on November's invoice (70), in no
    # month-to-date figure (its hour is October's).
    ("Batch", QWEN, at(30, 10, month=10), NOVEMBER, 1_000_000, 0, 0),
]


@pytest.fixture
def clock(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


@pytest.fixture
def acme(clock):
    """An organization on a plan with a fee, two keys with usage over two models and a price
    change, one idle key, and another organization's far bigger usage."""
    owner = make_user("owner@acme.test")
    organization = make_org(owner, name="Acme AI")
    actor = Actor(user=owner)
    keys = {
        "Search": key_services.api_key_create(
            actor=actor, organization=organization, name="Search", budget_monthly_minor=1000
        )[0],
        "Batch": key_services.api_key_create(actor=actor, organization=organization, name="Batch")[0],
        "Idle": key_services.api_key_create(
            actor=actor, organization=organization, name="Idle", budget_monthly_minor=500
        )[0],
    }
    for model, versions in PRICES.items():
        for moment, input_, cached, output in versions:
            model_price_set(
                actor=Actor.system(),
                model=model,
                input_per_mtok_minor=input_,
                cached_input_per_mtok_minor=cached,
                output_per_mtok_minor=output,
                effective_from=moment,
            )
    pro = Plan.objects.create(name="Pro", monthly_fee_minor=FEE)
    PlanAssignment.objects.create(organization=organization, plan=pro, period=OCTOBER)
    for name, model, hour, period, input_, cached, output in ROLLUPS:
        _rollup(keys[name], model, hour, period, input_, cached, output)
    other_owner = make_user("owner@globex.test")
    other = make_org(other_owner, name="Globex")
    intruder, _ = key_services.api_key_create(
        actor=Actor(user=other_owner), organization=other, name="Intruder"
    )
    _rollup(intruder, LLAMA, at(18, 20), NOVEMBER, 10**9, 0, 10**9)
    return organization, owner, keys


def _rollup(key, model, hour, period, input_, cached, output):
    UsageRollup.unscoped.create(
        organization=key.organization,
        key=key,
        model=model,
        hour=hour,
        billed_period=period,
        requests=1,
        input_tokens=input_,
        cached_tokens=cached,
        output_tokens=output,
    )


def _expected(group, *, start=datetime(2026, 11, 1, tzinfo=UTC), end=datetime(2026, 12, 1, tzinfo=UTC)):
    """Rate the rollups of ``[start, end)`` hour by hour and round once per ``group(row)``."""
    exact = defaultdict(Decimal)
    for row in ROLLUPS:
        name, model, hour, _period, input_, cached, output = row
        if start <= hour < end:
            exact[group(row)] += usage_amount(Usage(model, hour, input_, cached, output), BOOK)
    return {key: round_minor(amount) for key, amount in exact.items()}


def _get(client, user, name, *args, **query):
    client.force_login(user)
    response = client.get(reverse(name, args=args), query)
    assert response.status_code == 200
    return response


def _json(content: bytes, element_id: str):
    match = re.search(
        rf'<script id="{element_id}" type="application/json">(.*?)</script>', content.decode(), re.S
    )
    assert match, f"no #{element_id} JSON in the page"
    return json.loads(match.group(1))


def test_the_expected_figures_are_the_ones_worked_out_by_hand():
    assert _expected(lambda row: ()) == {(): 1844}  # 1,843.50389
    assert _expected(lambda row: row[1]) == {LLAMA: 1143, QWEN: 701, FREE: 0}
    assert _expected(lambda row: row[0]) == {"Search": 754, "Batch": 1090}
    # The forecast's run rate: the 7 complete days before the 20th, the 13th to the 19th.
    assert _expected(lambda row: (), start=at(13, 0), end=at(20, 0)) == {(): 1333}


def test_the_dashboard_shows_the_month_to_date_by_model_the_forecast_the_fee_and_the_invoice(client, acme):
    organization, owner, _keys = acme
    html = _get(client, owner, "org-dashboard", organization.slug).content.decode()

    assert _expected(lambda row: ()) == {(): 1844}
    assert '<h2 id="money-overview-title">Spend in November 2026</h2>' in html
    assert '<strong data-money="month-to-date">18.44 USD</strong>' in html
    for model, amount in _expected(lambda row: row[1]).items():
        assert (
            f'<tr data-model="{model}"><td><span class="swatch" data-color="{model_color(model)}" aria-hidden="true">'
            f'</span> {model}</td><td class="number" data-cost-minor="{amount}">{format_minor(amount, "usd")}</td></tr>'
        ) in html
    # Most expensive first.
    assert (
        html.index(f'data-model="{LLAMA}"')
        < html.index(f'data-model="{QWEN}"')
        < html.index(f'data-model="{FREE}"')
    )
    # 1,844 + 1,333 ÷ 7 × 10.354166… days left (10 days 8½ hours to December 1st) = 1,844 + 1,971.72 → 3,816.
    forecast = 1844 + round_minor(Decimal(1333) / 7 * (Decimal(248.5) / 24))
    assert forecast == 3816
    assert '<strong data-money="forecast">38.16 USD</strong>' in html
    assert (
        "the month to date, plus 13.33 USD (used 2026-11-13 to 2026-11-19) ÷ 7 a day times the 10.4 days left, UTC"
        in html
    )
    assert '<small>Pro plan fee</small><strong data-money="fee">49.00 USD</strong>' in html
    # The invoice rates the month's lines (the late October hour included) and adds the fee.
    invoice = rate(
        usage=[
            Usage(model, hour, input_, cached, output)
            for _name, model, hour, period, input_, cached, output in ROLLUPS
            if period == NOVEMBER
        ],
        book=BOOK,
        fee_minor=FEE,
    )
    # Lines: llama input 870.00195 → 870, cached 3, output 270.0006 → 270; qwen input 350.5005 → 351,
    # output 420.00084 → 420; free 0; the fee 4,900.
    assert invoice.total_minor == 6814
    assert '<strong data-money="invoice">68.14 USD</strong>' in html
    # Another organization's usage counts nowhere.
    assert "Intruder" not in html


def test_the_usage_page_costs_by_model_and_the_cost_chart_per_day_equal_the_rating(client, acme):
    organization, owner, _keys = acme
    response = _get(client, owner, "org-usage", organization.slug, start="2026-11-01", end="2026-11-30")
    html = response.content.decode()

    for model, amount in _expected(lambda row: row[1]).items():
        assert f'<td class="number" data-cost-minor="{amount}">{format_minor(amount, "usd")}</td>' in html
    assert '<td class="number" data-cost-minor="1143">11.43 USD</td>' in html

    chart = _json(response.content, "usage-cost-chart")
    assert chart["labels"] == [f"2026-11-{day:02d}" for day in range(1, 31)]
    assert (chart["currency"], chart["exponent"]) == ("USD", 2)
    by_day = _expected(lambda row: (row[2].day, row[1]))
    # The chart's order and colours are the requests chart's.
    requests_chart = _json(response.content, "usage-chart")
    assert [(s["model"], s["color"]) for s in chart["models"]] == [
        (s["model"], s["color"]) for s in requests_chart["models"]
    ]
    assert {series["model"]: series["cost_minor"] for series in chart["models"]} == {
        model: [by_day.get((day, model), 0) for day in range(1, 31)] for model in (LLAMA, QWEN, FREE)
    }
    # The 18th: llama 600.0015 → 600, qwen 490.00133 → 490.
    assert (chart["models"][0]["cost_minor"][17], by_day[(18, QWEN)]) == (600, 490)
    assert '<canvas id="chart-cost" data-chart="cost" data-source="usage-cost-chart"' in html


def test_up_to_48_hours_the_cost_chart_is_by_hour_zero_filled(client, acme):
    organization, owner, keys = acme
    response = _get(client, owner, "org-usage", organization.slug, range="24h", key=keys["Search"].public_id)

    chart = _json(response.content, "usage-cost-chart")
    # The 24 hours up to the end of the hour in progress (15:00): 16:00 yesterday to 15:00 today.
    assert chart["labels"] == [
        (at(19, 16) + timedelta(hours=n)).strftime("%Y-%m-%d %H:00") for n in range(24)
    ]
    assert chart["models"] == [
        {"model": QWEN, "color": model_color(QWEN), "cost_minor": [0] * 22 + [210, 0]},
    ]


def test_the_key_list_shows_each_keys_month_to_date_spend_against_its_budget(client, acme):
    organization, owner, keys = acme
    html = _get(client, owner, "org-keys", organization.slug).content.decode()
    by_key = _expected(lambda row: row[0])
    assert by_key == {"Search": 754, "Batch": 1090}

    def cell(key):
        start = html.index('<td class="key-spend">', html.index(f'id="key-{key.public_id}"'))
        return re.sub(r"\s+", " ", html[start : html.index("</td>", start)])

    assert "<th>Spend in November / budget</th>" in html
    assert cell(keys["Search"]) == (
        '<td class="key-spend"> <span class="nowrap" data-spend-minor="754">7.54 USD</span>'
        ' <small class="muted nowrap">of 10.00 USD · 75%</small>'
        ' <progress value="754" max="1000" aria-label="Search: budget used in November"></progress>'
        ' <small class="muted nowrap">alert at 80%</small> '
    )
    # No budget: the amount alone.
    assert cell(keys["Batch"]) == (
        '<td class="key-spend"> <span class="nowrap" data-spend-minor="1090">10.90 USD</span>'
        ' <small class="muted nowrap">No cap</small> '
    )
    assert cell(keys["Idle"]) == (
        '<td class="key-spend"> <span class="nowrap" data-spend-minor="0">0.00 USD</span>'
        ' <small class="muted nowrap">of 5.00 USD · 0%</small>'
        ' <progress value="0" max="500" aria-label="Idle: budget used in November"></progress>'
        ' <small class="muted nowrap">alert at 80%</small> '
    )


def test_the_key_list_rates_the_month_once_for_the_page_however_many_keys(client, acme):
    organization, owner, keys = acme
    client.force_login(owner)
    url = reverse("org-keys", args=[organization.slug])
    client.get(url)  # warm the session and caches

    with CaptureQueriesContext(connection) as three:
        assert client.get(url).status_code == 200
    for number in range(5):
        key, _ = key_services.api_key_create(
            actor=Actor(user=owner), organization=organization, name=f"More {number}"
        )
        _rollup(key, QWEN, at(19, number), NOVEMBER, 1_000_000, 0, 0)
    with CaptureQueriesContext(connection) as eight:
        response = client.get(url)
    assert response.status_code == 200
    assert response.content.decode().count('data-spend-minor="70">0.70 USD</span>') == 5
    assert len(eight.captured_queries) == len(three.captured_queries)


def test_the_key_page_shows_the_same_spend_as_the_key_list(client, acme):
    organization, owner, keys = acme
    html = _get(client, owner, "org-key", organization.slug, keys["Search"].public_id).content.decode()

    assert "<h2>Spend in November 2026</h2>" in html
    assert '<strong data-spend-minor="754">7.54 USD</strong>' in html
    assert "of a 10.00 USD monthly budget (75%)" in html
    assert '<progress id="key-budget-bar" value="754" max="1000"' in html
    # Its last 7 days' cost chart: this key's cost per day and model, as the rating rounds it.
    chart = _json(html.encode(), "key-cost-chart")
    days = [NOW.day - offset for offset in range(6, -1, -1)]
    assert chart["labels"] == [f"2026-11-{day:02d}" for day in days]
    by_day = _expected(lambda row: (row[0], row[2].day, row[1]))
    assert {series["model"]: series["cost_minor"] for series in chart["models"]} == {
        series["model"]: [by_day.get(("Search", day, series["model"]), 0) for day in days]
        for series in _json(html.encode(), "key-usage-chart")["models"]
    }
    assert sum(sum(series["cost_minor"]) for series in chart["models"]) > 0
    assert '<canvas id="chart-cost" data-chart="cost" data-source="key-cost-chart"' in html


def test_the_csv_costs_each_day_model_and_key_as_the_rating_does(client, acme):
    organization, owner, keys = acme
    response = _get(
        client, owner, "org-usage-export", organization.slug, start="2026-11-01", end="2026-11-30"
    )
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))

    public_id = {key.public_id: name for name, key in keys.items()}
    shown = {
        (datetime.fromisoformat(row["period"]).day, row["model"], public_id[row["key_id"]]): int(
            row["cost_minor"]
        )
        for row in rows
    }
    assert shown == _expected(lambda row: (row[2].day, row[1], row[0]))
    assert {row["currency"] for row in rows} == {"usd"}
    # The CSV's rows per key add up, here, to the key list's figures.
    assert sum(amount for (_day, _model, name), amount in shown.items() if name == "Search") == 754


def test_a_developer_sees_the_spend_but_not_the_plan_or_the_invoice(client, acme):
    organization, _owner, _keys = acme
    developer = add_member(organization, Role.DEVELOPER, make_user("dev@acme.test"))
    html = _get(client, developer, "org-dashboard", organization.slug).content.decode()

    assert '<strong data-money="month-to-date">18.44 USD</strong>' in html
    assert '<strong data-money="forecast">38.16 USD</strong>' in html
    assert 'data-money="fee"' not in html
    assert 'data-money="invoice"' not in html
    assert "See billing" not in html


def test_a_role_without_usage_view_sees_no_money_on_the_dashboard(client, acme, monkeypatch):
    organization, _owner, _keys = acme
    monkeypatch.setitem(ROLE_PERMISSIONS, Role.VIEWER, ROLE_PERMISSIONS[Role.VIEWER] - {Perm.USAGE_VIEW})
    viewer = add_member(organization, Role.VIEWER, make_user("viewer@acme.test"))
    response = _get(client, viewer, "org-dashboard", organization.slug)

    assert "money" not in response.context
    assert b'id="money-overview"' not in response.content
    assert b"USD" not in response.content


# The forecast at the edges of a month, on a clock the test moves.


def _daily_llama(organization, key, first: date, days: int, tokens: int):
    for offset in range(days):
        hour = datetime.combine(first + timedelta(days=offset), datetime.min.time(), UTC).replace(hour=12)
        _rollup(key, LLAMA, hour, hour.date().replace(day=1), tokens, 0, 0)


@pytest.fixture
def quiet():
    """An organization on the default plan whose only usage the test writes, at llama's new price."""
    owner = make_user("owner@quiet.test")
    organization = make_org(owner, name="Quiet")
    key, _ = key_services.api_key_create(actor=Actor(user=owner), organization=organization, name="Only")
    for model, versions in PRICES.items():
        for moment, input_, cached, output in versions:
            model_price_set(
                actor=Actor.system(),
                model=model,
                input_per_mtok_minor=input_,
                cached_input_per_mtok_minor=cached,
                output_per_mtok_minor=output,
                effective_from=moment,
            )
    return organization, owner, key


def _dashboard_money(client, owner, organization) -> dict[str, str]:
    html = _get(client, owner, "org-dashboard", organization.slug).content.decode()
    return dict(re.findall(r'<strong data-money="([a-z-]+)">([^<]*)</strong>', html)) | {
        "method": re.search(r'<p class="muted usage-window" id="forecast-method">([^<]*)', html).group(1)
    }


def test_at_the_months_last_second_the_forecast_is_the_month_to_date(client, quiet):
    organization, owner, key = quiet
    with time_machine.travel(datetime(2026, 11, 30, 23, 59, 59, tzinfo=UTC), tick=False):
        # 1,000,000 × 300 = 3.00 USD a day on the 23rd to the 30th.
        _daily_llama(organization, key, date(2026, 11, 23), 8, 1_000_000)
        money = _dashboard_money(client, owner, organization)

    assert money["month-to-date"] == "24.00 USD"
    # 21.00 ÷ 7 a day × 1 second left (1/86,400 day) = 0.0035 cents: nothing left to add.
    assert money["forecast"] == "24.00 USD"
    assert (
        "plus 21.00 USD (used 2026-11-23 to 2026-11-29) ÷ 7 a day times the 0.0 days left" in money["method"]
    )


def test_at_the_months_first_instant_the_forecast_is_the_last_weeks_pace_over_the_whole_month(client, quiet):
    organization, owner, key = quiet
    with time_machine.travel(datetime(2026, 12, 1, tzinfo=UTC), tick=False):
        _daily_llama(organization, key, date(2026, 11, 24), 7, 1_000_000)
        money = _dashboard_money(client, owner, organization)

    # Nothing yet in December; 21.00 ÷ 7 × 31 days = 93.00.
    assert money["month-to-date"] == "0.00 USD"
    assert money["forecast"] == "93.00 USD"
    assert (
        "plus 21.00 USD (used 2026-11-24 to 2026-11-30) ÷ 7 a day times the 31.0 days left" in money["method"]
    )


@pytest.mark.clock
def test_at_the_sessions_clock_the_forecast_adds_the_weeks_pace_for_the_time_left(client, quiet, frozen_now):
    """Under ``make test``'s ``--clock`` this runs at a month's, a leap February's and a year's
    last second."""
    organization, owner, key = quiet
    today = frozen_now.date()
    # 1,000,003 tokens a day (300.0009 cents at the new price) on each of the last 7 days, and today.
    _daily_llama(organization, key, today - timedelta(days=7), 7, 1_000_003)
    _rollup(key, LLAMA, frozen_now.replace(minute=0, second=0), today.replace(day=1), 1_000_003, 0, 0)
    money = _dashboard_money(client, owner, organization)

    month_start = datetime.combine(today.replace(day=1), datetime.min.time(), UTC)
    hours = [frozen_now.replace(minute=0, second=0)] + [
        datetime.combine(today - timedelta(days=offset), datetime.min.time(), UTC).replace(hour=12)
        for offset in range(1, 8)
    ]
    month_to_date = round_minor(
        sum(Decimal(1_000_003 * 300) / 1_000_000 for hour in hours if hour >= month_start)
    )
    # The last 7 days: 7 × 300.0009 = 2,100.0063 → 2,100, at a seventh of it a day.
    recent = round_minor(Decimal(7 * 1_000_003 * 300) / 1_000_000)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    left = Decimal((next_month - frozen_now) // timedelta(seconds=1)) / 86_400
    forecast = month_to_date + round_minor(Decimal(recent) / 7 * left)
    assert money["month-to-date"] == format_minor(month_to_date, "usd")
    assert money["forecast"] == format_minor(forecast, "usd")


def test_a_plan_in_another_currency_from_the_months_start_leaves_the_forecast_out_and_says_why(client, quiet):
    organization, owner, key = quiet
    euro = Plan.objects.create(name="Euro", currency="eur")
    PlanAssignment.objects.create(organization=organization, plan=euro, period=date(2026, 12, 1))
    with time_machine.travel(datetime(2026, 12, 3, 9, tzinfo=UTC), tick=False):
        _daily_llama(organization, key, date(2026, 11, 26), 5, 1_000_000)
        money = _dashboard_money(client, owner, organization)

    # December has no usage yet, in euros; November's dollars cannot be added to it.
    assert money["month-to-date"] == "0.00 EUR"
    assert money["forecast"] == "—"
    assert money["method"].startswith(
        "The last days were billed in another currency: no forecast this month."
    )


def test_a_range_over_plans_in_two_currencies_has_no_cost_chart_and_says_why(client, quiet):
    organization, owner, key = quiet
    euro = Plan.objects.create(name="Euro", currency="eur")
    PlanAssignment.objects.create(organization=organization, plan=euro, period=date(2026, 12, 1))
    with time_machine.travel(datetime(2026, 12, 3, 9, tzinfo=UTC), tick=False):
        _daily_llama(organization, key, date(2026, 11, 29), 4, 1_000_000)
        response = _get(client, owner, "org-usage", organization.slug, range="7d")
    html = response.content.decode()

    assert 'id="usage-cost-chart"' not in html
    assert 'id="chart-cost"' not in html
    assert 'id="chart-requests"' in html
    assert "This range spans plans in different currencies; choose a range within one of them." in html
