"""Rating a period from the database: rollups summed between price changes, each organization
priced with its plan's book, and the plan change applying from the next period."""

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import time_machine

from billing import selectors
from billing.models import ModelPrice, Plan, PlanAssignment
from billing.selectors import period_ratings, period_ratings_one_pass, plan_for
from billing.services import model_price_set, organization_plan_change, plan_price_set
from keys import services as key_services
from portal.audit import Actor
from portal.errors import DomainError
from portal.models import AuditEvent
from tests.factories import make_org, make_user
from usage.models import UsageRollup

pytestmark = pytest.mark.django_db

NOV = date(2026, 11, 1)


def at(day, hour=0):
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def rollup(organization, key, model, hour, input_=0, cached=0, output=0, period=NOV):
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


@pytest.fixture
def org_with_key():
    owner = make_user()
    organization = make_org(owner)
    key, _secret = key_services.api_key_create(actor=Actor(user=owner), organization=organization, name="k")
    return organization, key


def test_usage_is_priced_by_the_version_in_effect_each_hour_and_plans_override(org_with_key):
    organization, key = org_with_key
    model_price_set(
        actor=Actor.system(),
        model="m",
        input_per_mtok_minor="100",
        output_per_mtok_minor="0",
        effective_from=at(1),
    )
    model_price_set(
        actor=Actor.system(),
        model="m",
        input_per_mtok_minor="300",
        output_per_mtok_minor="0",
        effective_from=at(15, 12),
    )
    for hour in (at(2, 5), at(15, 11)):
        rollup(organization, key, "m", hour, input_=1_000_000)
    for hour in (at(15, 12), at(30, 23)):
        rollup(organization, key, "m", hour, input_=1_000_000)
    # A late event of October billed in November is priced at its own hour: no price then.
    rollup(organization, key, "m", datetime(2026, 10, 31, 23, tzinfo=UTC), input_=7)
    # Another period's rollups are not November's.
    rollup(organization, key, "m", at(3), input_=10**9, period=date(2026, 12, 1))

    plan, rating = period_ratings(period=NOV, organization_ids=[organization.pk])[organization.pk]

    assert plan.is_default
    assert [(line.quantity, line.unit_price, line.amount_minor) for line in rating.lines] == [
        (4_000_007, None, 2 * 100 + 2 * 300)
    ]


def test_a_plan_with_a_fee_and_its_own_price(org_with_key):
    organization, key = org_with_key
    model_price_set(
        actor=Actor.system(),
        model="m",
        input_per_mtok_minor="100",
        output_per_mtok_minor="0",
        effective_from=at(1),
    )
    pro = Plan.objects.create(name="Pro", monthly_fee_minor=4900)
    plan_price_set(
        actor=Actor.system(),
        plan=pro,
        model="m",
        input_per_mtok_minor="10",
        output_per_mtok_minor="0",
        effective_from=at(1),
    )
    PlanAssignment.objects.create(organization=organization, plan=pro, period=NOV)
    rollup(organization, key, "m", at(4), input_=2_000_000)

    plan, rating = period_ratings(period=NOV, organization_ids=[organization.pk])[organization.pk]

    assert plan == pro
    assert [(line.kind, line.amount_minor, line.description) for line in rating.lines] == [
        ("usage", 20, "m · 2,000,000 input tokens"),
        ("fee", 4900, "Pro plan, November 2026"),
    ]


def test_an_organization_without_usage_or_fee_rates_to_zero(org_with_key):
    organization, _key = org_with_key
    plan, rating = period_ratings(period=NOV, organization_ids=[organization.pk])[organization.pk]
    assert (plan.name, rating.lines, rating.total_minor) == ("Standard", (), 0)


def test_one_pass_over_the_month_rates_each_organization_asked_for_as_it_is_rated_alone(monkeypatch):
    model_price_set(
        actor=Actor.system(),
        model="m",
        input_per_mtok_minor="100",
        output_per_mtok_minor="400",
        effective_from=at(1),
    )
    pro = Plan.objects.create(name="Pro", monthly_fee_minor=4900)
    # Only Pro's price changes mid-month, so the one pass splits everyone's usage there.
    for price, start in (("10", at(1)), ("30", at(15, 12))):
        plan_price_set(
            actor=Actor.system(),
            plan=pro,
            model="m",
            input_per_mtok_minor=price,
            output_per_mtok_minor="0",
            effective_from=start,
        )
    organizations = []
    for name in ("Standard busy", "Pro busy", "Idle", "Not asked for"):
        owner = make_user()
        organization = make_org(owner, name=name)
        key, _secret = key_services.api_key_create(
            actor=Actor(user=owner), organization=organization, name="k"
        )
        organizations.append((organization, key))
    (standard, standard_key), (paying, paying_key), (idle, _), (other, other_key) = organizations
    PlanAssignment.objects.create(organization=paying, plan=pro, period=NOV)
    for hour in (at(2, 5), at(15, 11), at(15, 12), at(30, 23)):
        rollup(standard, standard_key, "m", hour, input_=1_000_000, cached=250_000, output=10_000)
        rollup(standard, standard_key, "n", hour, input_=3)
        rollup(paying, paying_key, "m", hour, input_=1_000_000)
        rollup(other, other_key, "m", hour, input_=10**9)
    rollup(paying, paying_key, "m", at(3), input_=10**9, period=date(2026, 12, 1))
    # One row per fetch: each organization's slices arrive over several fetches.
    monkeypatch.setattr(selectors, "FETCH", 1)
    asked = [paying.pk, idle.pk, standard.pk]

    rated = list(period_ratings_one_pass(period=NOV, organization_ids=asked))

    assert [organization_id for organization_id, _plan, _rating in rated] == sorted(asked)
    alone = {pk: period_ratings(period=NOV, organization_ids=[pk])[pk] for pk in asked}
    assert {organization_id: (plan, rating) for organization_id, plan, rating in rated} == alone
    lines = {
        organization_id: [
            (line.model, line.tokens, line.quantity, line.amount_minor) for line in rating.lines
        ]
        for organization_id, _plan, rating in rated
    }
    assert lines == {
        standard.pk: [
            ("m", "input", 3_000_000, 300),
            ("m", "cached_input", 1_000_000, 100),
            ("m", "output", 40_000, 16),
            ("n", "input", 12, 0),
        ],
        paying.pk: [("m", "input", 4_000_000, 2 * 10 + 2 * 30), ("", "", 1, 4900)],
        idle.pk: [],
    }


def test_a_plan_change_applies_from_the_next_period_and_is_audited(org_with_key):
    organization, _key = org_with_key
    pro = Plan.objects.create(name="Pro", monthly_fee_minor=4900)
    with time_machine.travel(datetime(2026, 11, 20, 10, tzinfo=UTC), tick=False):
        organization_plan_change(actor=Actor.system(), organization=organization, plan=pro)
    assert plan_for(organization_id=organization.pk, period=NOV).name == "Standard"
    assert plan_for(organization_id=organization.pk, period=date(2026, 12, 1)) == pro
    assert plan_for(organization_id=organization.pk, period=date(2027, 3, 1)) == pro
    event = AuditEvent.objects.get(action="organization.plan_changed")
    assert event.metadata == {"plan": "Pro", "from_period": "2026-12-01"}


def test_a_price_that_does_not_start_on_the_hour_is_refused():
    with pytest.raises(DomainError, match="A price takes effect on the hour"):
        model_price_set(
            actor=Actor.system(),
            model="m",
            input_per_mtok_minor="1",
            output_per_mtok_minor="1",
            effective_from=datetime(2026, 11, 3, 10, 30, tzinfo=UTC),
        )
    assert not ModelPrice.objects.exists()
    with time_machine.travel(datetime(2026, 11, 3, 10, 42, 7, tzinfo=UTC), tick=False):
        price = model_price_set(
            actor=Actor.system(), model="m", input_per_mtok_minor="1", output_per_mtok_minor="1"
        )
    assert price.effective_from == datetime(2026, 11, 3, 10, tzinfo=UTC)
    assert price.input_per_mtok_minor == Decimal("1")
