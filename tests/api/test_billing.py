"""The billing API: the month so far priced from the rollups, and invoices with their lines."""

from datetime import UTC, date, datetime, time, timedelta

import pytest
from django.utils import timezone

from billing.closing import invoice_store
from billing.models import Invoice, Plan, PlanAssignment
from billing.rating import Line, Rating
from billing.services import model_price_set
from keys import services as key_services
from portal.audit import Actor
from portal.roles import ROLE_PERMISSIONS, Perm, Role
from tests.api.support import (
    assert_matches_schema,
    assert_problem,
    call,
    invoice_json,
    iso,
    openapi_schema,
    session_client,
)
from usage.models import UsageRollup
from usage.partitions import add_months, month_start

pytestmark = pytest.mark.django_db

UPCOMING = "/api/v1/billing/upcoming"
INVOICES = "/api/v1/invoices"
SEPTEMBER, OCTOBER = date(2026, 9, 1), date(2026, 10, 1)


def invoice_url(invoice_id: str) -> str:
    return f"{INVOICES}/{invoice_id}"


def get(user, path, **query):
    return call(session_client(user), "get", path, query=query)


def build_invoice(organization, period, lines) -> Invoice:
    plan = Plan.objects.get(is_default=True)
    return invoice_store(
        organization_id=organization.pk, period=period, plan=plan, rating=Rating(tuple(lines))
    )


@pytest.fixture
def invoices(world):
    """Two months of invoices for Acme (one with usage, one fee-only) and one for Globex."""
    september = build_invoice(
        world.org,
        SEPTEMBER,
        [Line("usage", "m-a", "input", 1_500_000, None, 150, "m-a · 1,500,000 input tokens")],
    )
    october = build_invoice(
        world.org,
        OCTOBER,
        [
            Line("usage", "m-a", "output", 10_001, 300, 3, "m-a · 10,001 output tokens"),
            Line("fee", "", "", 1, None, 4900, "Standard plan, October 2026"),
        ],
    )
    theirs = build_invoice(world.other, OCTOBER, [Line("fee", "", "", 1, None, 100, "fee")])
    return {"september": september, "october": october, "theirs": theirs}


def test_an_invoice_reads_with_its_lines_to_the_cent(world, invoices):
    response = get(world.users[Role.OWNER], invoice_url(invoices["october"].public_id))

    assert response.status_code == 200
    october = invoices["october"]
    assert october.public_id.startswith("inv_")
    assert response.json() == {
        "id": october.public_id,
        "period": "2026-10-01",
        "plan": "Standard",
        "status": "draft",
        "currency": "usd",
        "total_minor": 4903,
        "no_charge_reason": "",
        "hosted_invoice_url": "",
        "lines": [
            {
                "position": 1,
                "kind": "usage",
                "model": "m-a",
                "tokens": "output",
                "quantity": 10_001,
                "unit_price_per_mtok_minor": "300.000000",
                "amount_minor": 3,
                "description": "m-a · 10,001 output tokens",
            },
            {
                "position": 2,
                "kind": "fee",
                "model": "",
                "tokens": "",
                "quantity": 1,
                "unit_price_per_mtok_minor": None,
                "amount_minor": 4900,
                "description": "Standard plan, October 2026",
            },
        ],
        "created_at": iso(october.created_at),
        "finalized_at": None,
        "paid_at": None,
        "voided_at": None,
    }
    assert_matches_schema(openapi_schema(), "/api/v1/invoices/{invoice_id}", "get", response)


def test_invoices_list_newest_first_with_lines_and_pages(world, invoices):
    owner = world.users[Role.OWNER]

    everything = get(owner, INVOICES)
    first = get(owner, INVOICES, limit=1)

    assert everything.status_code == 200
    assert everything.json() == {
        "next": None,
        "previous": None,
        "results": [invoice_json(invoices["october"]), invoice_json(invoices["september"])],
    }
    assert_matches_schema(openapi_schema(), INVOICES, "get", everything)
    assert first.json()["results"] == [invoice_json(invoices["october"])]
    second = session_client(owner).get(first.json()["next"])
    assert second.json()["results"] == [invoice_json(invoices["september"])]
    assert second.json()["next"] is None


def test_another_organizations_invoice_answers_404_like_a_missing_one(world, invoices):
    owner = world.users[Role.OWNER]

    for invoice_id in (invoices["theirs"].public_id, "inv_00000000000000000000000000", "42"):
        assert_problem(get(owner, invoice_url(invoice_id)), 404, "not_found", "Not found.")
    assert invoices["theirs"].public_id not in {row["id"] for row in get(owner, INVOICES).json()["results"]}


@pytest.mark.parametrize("role", Role.values)
@pytest.mark.parametrize("path", [UPCOMING, INVOICES, "invoice"])
def test_each_role_reads_billing_exactly_when_it_has_billing_view(world, invoices, role, path):
    if path == "invoice":
        path = invoice_url(invoices["september"].public_id)

    response = get(world.users[role], path)

    if Perm.BILLING_VIEW in ROLE_PERMISSIONS[role]:
        assert response.status_code == 200
    else:
        assert_problem(
            response, 403, "permission_denied", f"Your role ({role}) lacks the billing.view permission."
        )


def test_billing_needs_a_credential(world):
    for path in (UPCOMING, INVOICES, invoice_url("inv_x")):
        response = call(session_client(), "get", path)
        assert_problem(response, 401, "not_authenticated", "Authentication credentials were not provided.")


# --- the month so far --------------------------------------------------------------------


def _rollup(organization, key, model, hour, *, period, input_=0, cached=0, output=0):
    UsageRollup.unscoped.create(
        organization=organization,
        key=key,
        model=model,
        hour=hour,
        billed_period=period,
        requests=1,
        input_tokens=input_,
        cached_tokens=cached,
        output_tokens=output,
    )


@pytest.mark.clock
def test_upcoming_prices_this_months_rollups_so_far_with_the_plan_fee(world, frozen_now):
    period = month_start(frozen_now.date())
    first_hour = datetime.combine(period, time.min, tzinfo=UTC)
    this_hour = frozen_now.replace(minute=0, second=0)
    actor = Actor.system()
    key_a, _ = key_services.api_key_create(actor=actor, organization=world.org, name="a")
    key_b, _ = key_services.api_key_create(actor=actor, organization=world.org, name="b")
    theirs, _ = key_services.api_key_create(actor=actor, organization=world.other, name="theirs")
    model_price_set(
        actor=actor,
        model="m-a",
        input_per_mtok_minor="100",
        cached_input_per_mtok_minor="50",
        output_per_mtok_minor="300",
        effective_from=first_hour,
    )
    pro = Plan.objects.create(name="Pro", monthly_fee_minor=4900)
    PlanAssignment.objects.create(organization=world.org, plan=pro, period=period)
    _rollup(
        world.org, key_a, "m-a", first_hour, period=period, input_=1_000_000, cached=200_000, output=10_001
    )
    _rollup(world.org, key_b, "m-a", this_hour, period=period, input_=500_000)
    _rollup(world.org, key_b, "zz-free", this_hour, period=period, output=7)
    # Last month's usage (billed there) and another organization's are not this month's.
    _rollup(
        world.org, key_a, "m-a", first_hour - timedelta(hours=1), period=add_months(period, -1), input_=10**9
    )
    _rollup(world.other, theirs, "m-a", this_hour, period=period, input_=10**9)

    response = get(world.users[Role.BILLING], UPCOMING)

    assert response.status_code == 200
    assert response.json() == {
        "period": period.isoformat(),
        "period_start": iso(first_hour),
        "period_end": iso(datetime.combine(add_months(period, 1), time.min, tzinfo=UTC)),
        "plan": "Pro",
        "currency": "usd",
        "lines": [
            {
                "position": 1,
                "kind": "usage",
                "model": "m-a",
                "tokens": "input",
                "quantity": 1_300_000,
                "unit_price_per_mtok_minor": "100.000000",
                "amount_minor": 130,
                "description": "m-a · 1,300,000 input tokens",
            },
            {
                "position": 2,
                "kind": "usage",
                "model": "m-a",
                "tokens": "cached_input",
                "quantity": 200_000,
                "unit_price_per_mtok_minor": "50.000000",
                "amount_minor": 10,
                "description": "m-a · 200,000 cached input tokens",
            },
            {
                # 10,001 × 300 / 1,000,000 = 3.0003, rounded once.
                "position": 3,
                "kind": "usage",
                "model": "m-a",
                "tokens": "output",
                "quantity": 10_001,
                "unit_price_per_mtok_minor": "300.000000",
                "amount_minor": 3,
                "description": "m-a · 10,001 output tokens",
            },
            {
                "position": 4,
                "kind": "usage",
                "model": "zz-free",
                "tokens": "output",
                "quantity": 7,
                "unit_price_per_mtok_minor": "0.000000",
                "amount_minor": 0,
                "description": "zz-free · 7 output tokens (no price set)",
            },
            {
                "position": 5,
                "kind": "fee",
                "model": "",
                "tokens": "",
                "quantity": 1,
                "unit_price_per_mtok_minor": None,
                "amount_minor": 4900,
                "description": f"Pro plan, {period:%B %Y}",
            },
        ],
        "by_model": [{"model": "m-a", "amount_minor": 143}, {"model": "zz-free", "amount_minor": 0}],
        "fee_minor": 4900,
        "total_minor": 5043,
    }
    assert_matches_schema(openapi_schema(), UPCOMING, "get", response)


@pytest.mark.clock
def test_upcoming_without_usage_is_the_default_plan_at_zero(world, frozen_now):
    period = month_start(timezone.now().date())

    body = get(world.users[Role.VIEWER], UPCOMING).json()

    assert body == {
        "period": period.isoformat(),
        "period_start": iso(datetime.combine(period, time.min, tzinfo=UTC)),
        "period_end": iso(datetime.combine(add_months(period, 1), time.min, tzinfo=UTC)),
        "plan": "Standard",
        "currency": "usd",
        "lines": [],
        "by_model": [],
        "fee_minor": 0,
        "total_minor": 0,
    }
