"""Billing in the Django admin: prices added on the hour, plan changes, credits on drafts only."""

from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.contrib.messages import get_messages

from billing.closing import invoice_store
from billing.models import Invoice, InvoiceLine, ModelPrice, Plan, PlanAssignment, PlanPrice
from billing.rating import Line, Rating
from portal.models import AuditEvent, Organization
from tests.factories import make_org, make_user

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 14, 9, 37, tzinfo=UTC)


@pytest.fixture
def staff(client):
    user = make_user("staff@example.com")
    user.is_staff = user.is_superuser = True
    user.save()
    client.force_login(user)
    return user


@pytest.fixture
def draft():
    organization = make_org(name="Customer")
    return invoice_store(
        organization_id=organization.pk,
        period=date(2026, 10, 1),
        plan=Plan.objects.get(is_default=True),
        rating=Rating(
            (
                Line("usage", "m", "input", 1_000_000, None, 1500, "m · 1,000,000 input tokens"),
                Line("fee", "", "", 1, None, 900, "Standard plan, October 2026"),
            )
        ),
    )


def _messages(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_staff_credit_a_draft_invoice_its_total_drops_and_it_is_audited(client, staff, draft):
    url = f"/admin/billing/invoice/{draft.pk}/credit/"
    assert client.get(url).status_code == 200

    response = client.post(url, {"amount_minor": "400", "description": "Outage on 3 October"})

    assert response.status_code == 302
    assert response["Location"] == f"/admin/billing/invoice/{draft.pk}/change/"
    assert _messages(response) == [f"Credited 4.00 USD to {draft.public_id}."]
    assert list(
        InvoiceLine.objects.filter(invoice=draft).values_list(
            "position", "kind", "quantity", "amount_minor", "description"
        )
    ) == [
        (1, "usage", 1_000_000, 1500, "m · 1,000,000 input tokens"),
        (2, "fee", 1, 900, "Standard plan, October 2026"),
        (3, "credit", 1, -400, "Outage on 3 October"),
    ]
    assert Invoice.objects.get(pk=draft.pk).total_minor == 2000
    event = AuditEvent.objects.get(action="invoice.credit_added")
    assert (event.actor, event.actor_type, event.organization_id, event.target_id) == (
        staff,
        "staff",
        draft.organization_id,
        draft.public_id,
    )
    assert event.metadata == {
        "amount_minor": 400,
        "currency": "usd",
        "description": "Outage on 3 October",
        "total_minor": 2000,
    }


def test_a_credit_on_an_open_invoice_is_refused_with_a_message(client, staff, draft):
    Invoice.objects.filter(pk=draft.pk).update(status=Invoice.Status.OPEN)

    response = client.post(
        f"/admin/billing/invoice/{draft.pk}/credit/", {"amount_minor": "400", "description": "Too late"}
    )

    assert response.status_code == 302
    assert _messages(response) == ["Only a draft invoice takes a credit; this one is open."]
    assert InvoiceLine.objects.filter(invoice=draft).count() == 2
    assert Invoice.objects.get(pk=draft.pk).total_minor == 2400
    assert not AuditEvent.objects.filter(action="invoice.credit_added").exists()


def test_a_credit_larger_than_the_total_shows_on_the_field(client, staff, draft):
    response = client.post(
        f"/admin/billing/invoice/{draft.pk}/credit/", {"amount_minor": "2401", "description": "Too much"}
    )

    assert response.status_code == 200
    assert response.context["form"].errors == {
        "amount_minor": ["A credit cannot exceed the invoice total (24.00 USD)."]
    }
    assert Invoice.objects.get(pk=draft.pk).total_minor == 2400


def test_invoices_cannot_be_added_changed_or_deleted_in_the_admin(client, staff, draft):
    assert client.get(f"/admin/billing/invoice/{draft.pk}/change/").status_code == 200
    assert client.get(f"/admin/billing/invoice/{draft.pk}/delete/").status_code == 403
    assert client.get("/admin/billing/invoice/add/").status_code == 403
    listing = client.get("/admin/billing/invoice/", {"status__exact": "draft", "period": "2026-10-01"})
    assert listing.status_code == 200
    assert list(listing.context["cl"].result_list) == [draft]


def _price_form(effective_from: datetime, **extra) -> dict:
    return {
        "model": "m",
        "input_per_mtok_minor": "100",
        "output_per_mtok_minor": "300",
        "cached_input_per_mtok_minor": "50",
        "effective_from_0": effective_from.strftime("%Y-%m-%d"),
        "effective_from_1": effective_from.strftime("%H:%M:%S"),
        **extra,
    }


@time_machine.travel(NOW, tick=False)
def test_a_model_price_defaults_to_the_next_hour_and_a_start_off_the_hour_is_a_field_error(client, staff):
    form = client.get("/admin/billing/modelprice/add/").context["adminform"].form
    assert form.initial["effective_from"] == datetime(2026, 11, 14, 10, tzinfo=UTC)

    refused = client.post("/admin/billing/modelprice/add/", _price_form(NOW))
    added = client.post(
        "/admin/billing/modelprice/add/", _price_form(NOW.replace(minute=0) + timedelta(hours=1))
    )

    assert refused.status_code == 200
    assert refused.context["adminform"].form.errors == {
        "effective_from": ["A price takes effect on the hour (minutes and seconds zero)."]
    }
    assert added.status_code == 302
    assert list(ModelPrice.objects.values_list("model", "effective_from")) == [
        ("m", datetime(2026, 11, 14, 10, tzinfo=UTC))
    ]
    assert AuditEvent.objects.filter(action="price.set").count() == 1


def _plan_form(plan: Plan, price: dict) -> dict:
    data = {
        "name": plan.name,
        "currency": plan.currency,
        "monthly_fee_minor": str(plan.monthly_fee_minor),
        "prices-TOTAL_FORMS": "1",
        "prices-INITIAL_FORMS": "0",
        "prices-MIN_NUM_FORMS": "0",
        "prices-MAX_NUM_FORMS": "1000",
    }
    data.update({f"prices-0-{field}": value for field, value in price.items()})
    return data


@time_machine.travel(NOW, tick=False)
def test_a_plan_price_is_added_through_the_service_and_refused_off_the_hour(client, staff):
    plan = Plan.objects.create(name="Pro", monthly_fee_minor=4900)
    url = f"/admin/billing/plan/{plan.pk}/change/"

    refused = client.post(url, _plan_form(plan, _price_form(NOW)))

    assert refused.status_code == 200
    assert refused.context["inline_admin_formsets"][0].formset.errors == [
        {"effective_from": ["A price takes effect on the hour (minutes and seconds zero)."]}
    ]
    assert not PlanPrice.objects.exists()

    added = client.post(url, _plan_form(plan, _price_form(datetime(2026, 11, 15, tzinfo=UTC))))

    assert added.status_code == 302
    assert list(PlanPrice.objects.values_list("plan", "model", "input_per_mtok_minor", "effective_from")) == [
        (plan.pk, "m", 100, datetime(2026, 11, 15, tzinfo=UTC))
    ]
    event = AuditEvent.objects.get(action="plan.price_set")
    assert (event.actor, event.metadata["plan"], event.metadata["effective_from"]) == (
        staff,
        "Pro",
        "2026-11-15T00:00:00+00:00",
    )


@time_machine.travel(NOW, tick=False)
def test_staff_change_an_organizations_plan_from_next_month_audited(client, staff):
    organization = make_org(name="Customer")
    pro = Plan.objects.create(name="Pro")

    response = client.post(
        "/admin/billing/planassignment/add/", {"organization": organization.pk, "plan": pro.pk}
    )

    assert response.status_code == 302
    assert list(PlanAssignment.objects.values_list("organization", "plan", "period")) == [
        (organization.pk, pro.pk, date(2026, 12, 1))
    ]
    event = AuditEvent.objects.get(action="organization.plan_changed")
    assert (event.actor, event.actor_type, event.organization) == (staff, "staff", organization)
    assert event.metadata == {"plan": "Pro", "from_period": "2026-12-01"}


def test_customers_are_read_only(client, staff):
    assert client.get("/admin/billing/customer/").status_code == 200
    assert client.get("/admin/billing/customer/add/").status_code == 403


def test_a_new_organization_starts_with_the_default_plans_limits():
    Plan.objects.filter(is_default=True).update(
        rpm_limit=60, tpm_limit=None, concurrency_limit=4, budget_monthly_minor=500
    )

    organization = Organization.objects.get(pk=make_org().pk)

    assert (
        organization.rpm_limit,
        organization.tpm_limit,
        organization.concurrency_limit,
        organization.budget_monthly_minor,
    ) == (60, None, 4, 500)


def test_staff_void_an_open_invoice_and_a_draft_is_refused_by_name(client, staff, draft):
    opened = invoice_store(
        organization_id=make_org(name="Opened").pk,
        period=date(2026, 10, 1),
        plan=Plan.objects.get(is_default=True),
        rating=Rating((Line("fee", "", "", 1, None, 900, "Standard plan, October 2026"),)),
    )
    Invoice.objects.filter(pk=opened.pk).update(status=Invoice.Status.OPEN)  # never reached Stripe

    response = client.post(
        "/admin/billing/invoice/",
        {"action": "void", "_selected_action": [draft.pk, opened.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert _messages(response) == [
        f"{draft.public_id}: Only an open invoice can be voided; this one is draft.",
        "Voided: 1 invoice(s).",
    ]
    assert dict(Invoice.objects.values_list("pk", "status")) == {draft.pk: "draft", opened.pk: "void"}
    assert list(
        AuditEvent.objects.filter(action="invoice.voided").values_list("target_id", "actor_label")
    ) == [(opened.public_id, "staff@example.com")]


def test_staff_queue_another_push_of_a_draft(
    client, staff, draft, django_capture_on_commit_callbacks, stripe_customer
):
    stripe_customer(draft.organization, draft.organization.memberships.get().user)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/billing/invoice/", {"action": "push_again", "_selected_action": [draft.pk]}, follow=True
        )

    assert _messages(response) == ["Push queued: 1 invoice(s)."]
    draft.refresh_from_db()
    assert (draft.status, draft.push_attempts, draft.last_push_error, draft.total_minor) == (
        "paid",
        1,
        "",
        2400,
    )
    assert AuditEvent.objects.filter(action="invoice.push_requested", target_id=draft.public_id).count() == 1
