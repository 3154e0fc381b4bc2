"""Cost columns of the usage API and CSV: token counts priced with the organization's prices,
in minor units, one rounding per row (never the events' cost field)."""

import csv
import io
import re
from datetime import UTC, date, datetime

import pytest
from django.urls import reverse

from billing.models import Plan, PlanAssignment
from billing.services import model_price_set, plan_price_set
from portal.audit import Actor
from tests.api.support import assert_problem, call, iso, session_client
from usage.models import UsageRollup

pytestmark = pytest.mark.django_db

USAGE = "/api/v1/usage"
OCTOBER, NOVEMBER = date(2026, 10, 1), date(2026, 11, 1)
START, END = datetime(2026, 10, 31, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)


def at(hour: int) -> datetime:
    return START.replace(hour=hour)


def rollup(tenant, key, model, hour, *, period=OCTOBER, input_=0, cached=0, output=0):
    UsageRollup.unscoped.create(
        organization=tenant.org,
        key=key,
        model=model,
        hour=hour,
        billed_period=period,
        requests=1,
        input_tokens=input_,
        cached_tokens=cached,
        output_tokens=output,
        # The stored cost is never read: a gateway posting without it leaves it at zero.
        cost_micro_minor=10**12,
    )


@pytest.fixture
def priced(tenant, other_tenant):
    """A price that changes at noon, a model without a price, a late event priced by next month's
    plan, and another organization's usage."""
    build, batch = tenant.key("build"), tenant.key("batch")
    actor = Actor.system()
    model_price_set(
        actor=actor,
        model="m",
        input_per_mtok_minor="100",
        cached_input_per_mtok_minor="10",
        output_per_mtok_minor="1000",
        effective_from=datetime(2026, 10, 1, tzinfo=UTC),
    )
    model_price_set(
        actor=actor,
        model="m",
        input_per_mtok_minor="200",
        cached_input_per_mtok_minor="10",
        output_per_mtok_minor="1000",
        effective_from=at(12),
    )
    pro = Plan.objects.create(name="Pro")
    plan_price_set(
        actor=actor,
        plan=pro,
        model="m",
        input_per_mtok_minor="1000",
        output_per_mtok_minor="0",
        effective_from=datetime(2026, 10, 1, tzinfo=UTC),
    )
    PlanAssignment.objects.create(organization=tenant.org, plan=pro, period=NOVEMBER)
    # 900,000 × 100 + 100,000 × 10 + 2,001 × 1,000 = 93.001 cents
    rollup(tenant, build, "m", at(10), input_=1_000_000, cached=100_000, output=2_001)
    # 500,005 × 200 = 100.001 cents (the noon price)
    rollup(tenant, build, "m", at(13), input_=500_005)
    # 2,500 × 200 = 0.5 cents
    rollup(tenant, batch, "m", at(13), input_=2_500)
    rollup(tenant, batch, "free", at(13), output=1_000_000)
    # October's hour carried by November (its month had closed): Pro's price, 1,000 × 1,000 = 1 cent.
    rollup(tenant, build, "m", at(14), period=NOVEMBER, input_=1_000)
    foreign = other_tenant.key("foreign")
    rollup(other_tenant, foreign, "m", at(10), input_=10**9)
    return {"build": build, "batch": batch}


def get_usage(user, **query):
    return call(session_client(user), "get", USAGE, query={"start": iso(START), "end": iso(END), **query})


def test_each_row_costs_its_tokens_rounded_once_per_row(tenant, priced):
    body = get_usage(tenant.owner, granularity="hour", group_by="model").json()

    assert [(row["period"], row["model"], row["cost_minor"], row["currency"]) for row in body["data"]] == [
        (iso(at(10)), "m", 93, "usd"),
        (iso(at(13)), "free", 0, "usd"),
        (iso(at(13)), "m", 101, "usd"),  # 100.001 + 0.5 = 100.501
        (iso(at(14)), "m", 1, "usd"),
    ]
    # The window's total is rounded once: 93.001 + 100.501 + 1 = 194.502.
    assert (body["totals"]["cost_minor"], body["totals"]["currency"]) == (195, "usd")


def test_cost_per_key_and_model_by_day(tenant, priced):
    body = get_usage(tenant.owner, granularity="day", group_by="model,key").json()

    build, batch = priced["build"].public_id, priced["batch"].public_id
    assert [(row["model"], row["key_id"], row["cost_minor"]) for row in body["data"]] == [
        ("free", batch, 0),
        ("m", build, 194),  # 93.001 + 100.001 + 1
        ("m", batch, 1),  # 0.5 rounds half-up
    ]


def test_filtered_by_key_the_cost_is_that_keys(tenant, priced):
    body = get_usage(tenant.owner, granularity="day", key=priced["batch"].public_id).json()

    assert [(row["period"], row["cost_minor"]) for row in body["data"]] == [(iso(START), 1)]
    assert body["totals"]["cost_minor"] == 1


def test_csv_has_the_cost_columns(tenant, priced):
    response = get_usage(tenant.owner, granularity="day", group_by="key", format="csv")

    table = list(csv.reader(io.StringIO(response.content.decode())))
    assert table == [
        [
            "period",
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
        ],
        [
            START.isoformat(),
            priced["build"].public_id,
            "build",
            "3",
            "0",
            "0",
            "1501005",
            "2001",
            "100000",
            "0",
            "194",
            "usd",
        ],
        [
            START.isoformat(),
            priced["batch"].public_id,
            "batch",
            "2",
            "0",
            "0",
            "2500",
            "1000000",
            "0",
            "0",
            "1",
            "usd",
        ],
    ]


def test_a_range_over_plans_in_two_currencies_is_refused(tenant):
    key = tenant.key("build")
    euro = Plan.objects.create(name="Euro", currency="eur")
    PlanAssignment.objects.create(organization=tenant.org, plan=euro, period=NOVEMBER)
    rollup(tenant, key, "m", at(10), input_=1)
    rollup(tenant, key, "m", datetime(2026, 11, 1, 1, tzinfo=UTC), period=NOVEMBER, input_=1)

    response = get_usage(tenant.owner, end=iso(datetime(2026, 11, 2, tzinfo=UTC)))

    message = "This range spans plans in different currencies; choose a range within one of them."
    assert_problem(response, 400, "validation_error", message, {"start": [message]})


def _by_model_cells(content: str) -> list[tuple[str, str, str]]:
    """Read the usage page's per-model table: (model, cost_minor, cost as shown)."""
    return re.findall(r'<tr data-model="([^"]+)">.*?data-cost-minor="([^"]*)">([^<]*)</td>', content, re.S)


def test_usage_page_shows_tokens_and_cost_per_model(client, tenant, priced):
    client.force_login(tenant.owner)
    response = client.get(
        reverse("org-usage", args=[tenant.org.slug]), {"start": "2026-10-31", "end": "2026-10-31"}
    )

    assert response.status_code == 200
    by_model = response.context["by_model"]
    # One rounding per model: 93.001 + 100.001 + 0.5 + 1 = 194.502 cents for "m".
    assert [
        (row["model"], row["requests"], row["input_tokens"], row["output_tokens"], row["cost_minor"])
        for row in by_model["rows"]
    ] == [("m", 4, 1_503_505, 2_001, 195), ("free", 1, 0, 1_000_000, 0)]
    assert (by_model["currency"], by_model["cost_error"]) == ("usd", "")
    assert _by_model_cells(response.content.decode()) == [("m", "195", "1.95 USD"), ("free", "0", "0.00 USD")]


def test_usage_page_over_two_currencies_shows_usage_without_cost(client, tenant):
    key = tenant.key("build")
    euro = Plan.objects.create(name="Euro", currency="eur")
    PlanAssignment.objects.create(organization=tenant.org, plan=euro, period=NOVEMBER)
    rollup(tenant, key, "m", at(10), input_=1)
    rollup(tenant, key, "m", datetime(2026, 11, 1, 1, tzinfo=UTC), period=NOVEMBER, input_=1)
    client.force_login(tenant.owner)

    response = client.get(
        reverse("org-usage", args=[tenant.org.slug]), {"start": "2026-10-31", "end": "2026-11-01"}
    )

    assert response.status_code == 200
    content = response.content.decode()
    assert _by_model_cells(content) == [("m", "", "—")]
    message = "This range spans plans in different currencies; choose a range within one of them."
    assert f'<p class="muted" id="usage-cost-error"><small>{message}</small></p>' in content
    assert response.context["totals"]["requests"] == 2
