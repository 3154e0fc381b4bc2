"""The console's Billing page: the plan, the month so far by model and line, the invoices."""

from datetime import UTC, date, datetime, time

import pytest
from django.urls import reverse

from billing.closing import invoice_store
from billing.models import Plan
from billing.rating import Line, Rating
from billing.services import model_price_set
from keys import services as key_services
from portal.audit import Actor
from portal.roles import Role
from tests.factories import add_member, make_org, make_user
from usage.models import UsageRollup
from usage.partitions import month_start

pytestmark = pytest.mark.django_db


def _page(client, user, organization):
    client.force_login(user)
    return client.get(reverse("org-billing", args=[organization.slug]))


@pytest.mark.clock
def test_owner_sees_plan_running_total_by_model_and_invoices_with_lines(client, frozen_now):
    owner = make_user()
    organization = make_org(owner, name="Acme")
    period = month_start(frozen_now.date())
    first_hour = datetime.combine(period, time.min, tzinfo=UTC)
    key, _ = key_services.api_key_create(actor=Actor.system(), organization=organization, name="k")
    model_price_set(
        actor=Actor.system(),
        model="m-a",
        input_per_mtok_minor="100",
        output_per_mtok_minor="300",
        effective_from=first_hour,
    )
    UsageRollup.unscoped.create(
        organization=organization,
        key=key,
        model="m-a",
        hour=first_hour,
        billed_period=period,
        requests=1,
        input_tokens=1_250_000,
        output_tokens=10_000,
    )
    plan = Plan.objects.get(is_default=True)
    invoice = invoice_store(
        organization_id=organization.pk,
        period=date(2026, 10, 1),
        plan=plan,
        rating=Rating(
            (Line("usage", "m-b", "input", 2_000_000, None, 1999, "m-b · 2,000,000 input tokens"),)
        ),
    )

    response = _page(client, owner, organization)

    assert response.status_code == 200
    html = response.content.decode()
    assert "<strong>Standard</strong> · platform fee 0.00 USD a month · billed in USD" in html
    assert response.context["by_model"] == [{"model": "m-a", "amount_minor": 128}]
    assert '<tr><td>m-a</td><td class="number" data-amount="128">1.28 USD</td></tr>' in html
    assert "m-a · 1,250,000 input tokens" in html and "m-a · 10,000 output tokens" in html
    assert '<td class="number">1.00 USD / 1M</td>' in html and '<td class="number">3.00 USD / 1M</td>' in html
    assert '<th class="number" data-total="128">1.28 USD</th>' in html
    assert f'id="invoice-{invoice.public_id}"' in html
    assert 'October 2026 · <span data-status="draft">Draft</span> · <strong>19.99 USD</strong>' in html
    assert "m-b · 2,000,000 input tokens" in html
    assert '<th class="number" data-total="1999">19.99 USD</th>' in html
    assert "<script" not in html.split("</head>")[1]
    assert " on" + "click=" not in html


def test_an_organization_without_usage_or_invoices_says_so(client):
    owner = make_user()
    response = _page(client, owner, make_org(owner))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="billing-no-usage"' in html and 'id="billing-no-invoices"' in html
    assert '<th class="number" data-total="0">0.00 USD</th>' in html


@pytest.mark.parametrize("role", [Role.DEVELOPER])
def test_a_role_without_billing_view_gets_403(client, role):
    organization = make_org()
    response = _page(client, add_member(organization, role), organization)
    assert response.status_code == 403


def test_another_organizations_billing_page_is_404_and_shows_nothing_of_it(client):
    mine, theirs = make_org(), make_org()
    invoice_store(
        organization_id=theirs.pk,
        period=date(2026, 10, 1),
        plan=Plan.objects.get(is_default=True),
        rating=Rating((Line("fee", "", "", 1, None, 100, "secret fee"),)),
    )
    stranger = add_member(mine, Role.OWNER)

    response = _page(client, stranger, theirs)

    assert response.status_code == 404
    assert b"secret fee" not in response.content
