"""Dunning against localstripe: a declined card makes the organization past due, retries run on
their days, a warning comes once three days before the suspension, a payment restores only what
billing set, and staff settle an invoice outside Stripe or forgive it."""

from datetime import timedelta

import pytest
from django.core import mail
from django.core.exceptions import ImproperlyConfigured

from billing.dunning import dunning_card_added, dunning_invoice_settled, dunning_payment_failed
from billing.models import Dunning, Invoice
from billing.services import invoice_forgive, invoice_mark_paid
from billing.tasks import dunning_run
from billing.tasks import invoice_push as invoice_push_task
from portal.audit import Actor
from portal.env import env_days
from portal.errors import Conflict
from portal.models import AuditEvent, Organization
from portal.roles import Role
from portal.services import organization_set_status
from tests.billing.test_stripe_push import stripe_state
from tests.factories import add_member

pytestmark = pytest.mark.django_db

DECLINED = "Stripe: Your card was declined."


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run a callable and what it scheduled on commit (publication, tasks, emails)."""

    def run(call, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return call(*args, **kwargs)

    return run


@pytest.fixture
def declined(billed_month, stripe_customer, committed, frozen_now):
    """November's invoice pushed to a customer whose card is declined; a billing member, a developer."""
    organization, owner, invoice = billed_month
    billing_member = add_member(organization, Role.BILLING)
    add_member(organization, Role.DEVELOPER)
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")
    assert committed(invoice_push_task.apply, args=[invoice.pk]).get() == "open"
    invoice.refresh_from_db()
    recipients = sorted([owner.email, billing_member.email])
    return organization, owner, invoice, customer, recipients


def outbox() -> list[tuple[str, list[str]]]:
    return [(message.subject, message.to) for message in mail.outbox]


def standing(organization) -> tuple[str, str]:
    organization.refresh_from_db()
    return organization.status, organization.status_reason


@pytest.mark.clock
def test_a_declined_payment_makes_the_organization_past_due_and_tells_owners_and_billing_members(declined):
    organization, _owner, invoice, _customer, recipients = declined

    assert standing(organization) == ("past_due", "billing")
    dunning = Dunning.objects.get(organization=organization)
    assert (
        dunning.reason,
        dunning.retries_made,
        dunning.warned_at,
        dunning.suspended_at,
        dunning.ended_at,
    ) == (
        DECLINED,
        0,
        None,
        None,
        None,
    )
    assert outbox() == [
        (f"[Tollgate] Invoice {invoice.public_id} for November 2026: 6.48 USD", recipients),
        (f"[Tollgate] Payment failed for {organization.name}", recipients),
    ]
    failed = mail.outbox[1]
    start = dunning.started_at
    retry_days = ", ".join(f"{start + timedelta(days=day):%Y-%m-%d}" for day in (1, 3, 5, 7))
    assert (
        f"We could not collect 6.48 USD for invoice {invoice.public_id} of {organization.name}: {DECLINED}"
        in failed.body
    )
    assert (
        f"We will charge the card on file again on {retry_days}, and at once when you add a card."
        in failed.body
    )
    assert f"still unpaid on {start + timedelta(days=14):%Y-%m-%d}" in failed.body
    assert f"http://testserver/o/{organization.slug}/billing/" in failed.body
    assert failed.alternatives[0][1] == "text/html"
    assert f"http://testserver/o/{organization.slug}/billing/" in failed.alternatives[0][0]
    assert list(
        AuditEvent.objects.filter(
            organization=organization, action__in=["dunning.started", "organization.status_changed"]
        )
        .order_by("pk")
        .values_list("action", "metadata")
    ) == [
        ("dunning.started", {"invoice": invoice.public_id, "reason": DECLINED}),
        ("organization.status_changed", {"from": "active", "to": "past_due", "reason": "billing"}),
    ]


@pytest.mark.clock
def test_a_failure_reported_again_keeps_one_dunning_and_sends_no_second_email(declined, committed):
    organization, _owner, invoice, _customer, _recipients = declined
    mail.outbox.clear()

    # Stripe's invoice.payment_failed webhook reports the decline the push already reported.
    committed(dunning_payment_failed, invoice=invoice, reason="Your card has insufficient funds.")

    assert Dunning.objects.filter(organization=organization).values_list("reason", flat=True).get() == (
        "Your card has insufficient funds."
    )
    assert AuditEvent.objects.filter(action="dunning.started").count() == 1
    assert mail.outbox == []


@pytest.mark.clock
def test_retries_run_on_their_days_the_warning_once_then_the_suspension_and_a_payment_restores(
    declined, committed, stripe_customer, stripe_api, time_machine
):
    organization, owner, invoice, customer, recipients = declined
    start = Dunning.objects.get(organization=organization).started_at
    mail.outbox.clear()

    def run_at(days: float) -> None:
        time_machine.move_to(start + timedelta(days=days), tick=False)
        assert committed(dunning_run.apply).get() == 1

    run_at(0.5)  # before the first retry day: nothing
    assert stripe_state(stripe_api, customer)[1] == [("failed", 648)]
    # A run late by days (5.5: the retries of days 3 and 5) charges once for the days it missed.
    for days, retries in ((1, 1), (1.5, 1), (5.5, 3), (7, 4), (10.9, 4)):
        run_at(days)
        assert Dunning.objects.get(organization=organization).retries_made == retries
    assert stripe_state(stripe_api, customer)[1] == [("failed", 648)] * 4
    assert standing(organization) == ("past_due", "billing")
    assert mail.outbox == []

    run_at(11)
    run_at(12)
    suspends_at = start + timedelta(days=14)
    assert outbox() == [
        (f"[Tollgate] {organization.name} will be suspended on {suspends_at:%Y-%m-%d}", recipients)
    ]
    assert (
        f"(6.48 USD). Unless they are paid, its API keys will be refused from {suspends_at:%Y-%m-%d %H:%M} UTC."
        in (mail.outbox[0].body)
    )
    assert standing(organization) == ("past_due", "billing")

    run_at(13.99)
    assert standing(organization) == ("past_due", "billing")
    run_at(14)
    run_at(15)
    assert standing(organization) == ("suspended", "billing")
    assert outbox()[1:] == [(f"[Tollgate] {organization.name} is suspended for unpaid invoices", recipients)]

    stripe_customer(organization, owner)  # the same customer, now with a good default card
    committed(dunning_card_added, organization=organization)

    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert standing(organization) == ("active", "")
    assert outbox()[2:] == [
        (f"[Tollgate] Payment received: {organization.name} is in good standing", recipients)
    ]
    assert "Its API keys work again." in mail.outbox[2].body
    dunning = Dunning.objects.get(organization=organization)
    assert (dunning.retries_made, dunning.warned_at, dunning.suspended_at, dunning.ended_at) == (
        4,
        start + timedelta(days=11),
        start + timedelta(days=14),
        start + timedelta(days=15),
    )
    assert sorted(stripe_state(stripe_api, customer)[1]) == [("failed", 648)] * 4 + [("succeeded", 648)]
    assert list(
        AuditEvent.objects.filter(organization=organization, action__startswith="dunning.")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == ["dunning.started"] + ["dunning.charge_attempted"] * 3 + [
        "dunning.warned",
        "dunning.charge_attempted",
        "dunning.ended",
    ]
    assert AuditEvent.objects.filter(action="dunning.charge_attempted").order_by("pk").last().metadata == {
        "trigger": "card_added",
        "invoices": [invoice.public_id],
    }
    # Nothing is left to do: a later run finds no open dunning and changes nothing.
    time_machine.move_to(start + timedelta(days=30), tick=False)
    assert committed(dunning_run.apply).get() == 0
    assert standing(organization) == ("active", "")
    assert len(mail.outbox) == 3


@pytest.mark.clock
def test_a_staff_suspension_survives_a_payment(declined, committed, stripe_customer, time_machine):
    organization, owner, invoice, _customer, _recipients = declined
    staff = Actor.system()
    committed(organization_set_status, actor=staff, organization=organization, status="suspended")
    assert standing(organization) == ("suspended", "staff")
    start = Dunning.objects.get(organization=organization).started_at
    mail.outbox.clear()

    # The grace passing does not turn staff's suspension into a billing one, nor warn.
    for days in (11, 14, 15):
        time_machine.move_to(start + timedelta(days=days), tick=False)
        committed(dunning_run.apply)
    assert standing(organization) == ("suspended", "staff")
    assert Dunning.objects.get(organization=organization).suspended_at is None

    stripe_customer(organization, owner)
    committed(dunning_card_added, organization=organization)

    invoice.refresh_from_db()
    assert invoice.status == "paid"
    assert standing(organization) == ("suspended", "staff")
    assert Dunning.objects.get(organization=organization).ended_at == start + timedelta(days=15)
    assert mail.outbox == []


def test_a_failure_on_an_organization_staff_suspended_leaves_its_standing(
    billed_month, stripe_customer, committed
):
    organization, owner, invoice = billed_month
    committed(organization_set_status, actor=Actor.system(), organization=organization, status="suspended")
    stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")

    committed(invoice_push_task.apply, args=[invoice.pk])

    assert standing(organization) == ("suspended", "staff")
    assert Dunning.objects.filter(organization=organization, ended_at=None).count() == 1


def test_a_failure_reported_for_an_invoice_no_longer_open_changes_nothing(billed_month, committed):
    organization, _owner, invoice = billed_month
    Invoice.objects.filter(pk=invoice.pk).update(status="paid")

    committed(dunning_payment_failed, invoice=invoice, reason="late event")

    assert standing(organization) == ("active", "")
    assert not Dunning.objects.exists()
    assert mail.outbox == []


@pytest.mark.parametrize(
    ("settle", "status", "stripe_status", "action"),
    [
        (invoice_mark_paid, "paid", "paid", "invoice.paid_out_of_band"),
        (invoice_forgive, "uncollectible", "uncollectible", "invoice.forgiven"),
    ],
)
@pytest.mark.clock
def test_staff_settling_the_invoice_outside_stripe_ends_the_dunning_without_a_charge(
    declined, committed, stripe_api, settle, status, stripe_status, action
):
    organization, owner, invoice, customer, recipients = declined
    mail.outbox.clear()

    committed(settle, actor=Actor(user=owner), invoice=invoice)

    invoice.refresh_from_db()
    assert invoice.status == status
    invoices, charges = stripe_state(stripe_api, customer)
    assert [(remote_status, total) for remote_status, total, _lines in invoices] == [(stripe_status, 648)]
    assert charges == [("failed", 648)]
    event = AuditEvent.objects.get(action=action)
    assert (event.organization_id, event.actor_id, event.metadata) == (
        organization.pk,
        owner.pk,
        {"stripe_invoice_id": invoice.stripe_invoice_id, "total_minor": 648},
    )
    assert standing(organization) == ("active", "")
    assert Dunning.objects.get(organization=organization).ended_at is not None
    assert outbox() == [(f"[Tollgate] Payment received: {organization.name} is in good standing", recipients)]
    assert "Nothing more is needed." in mail.outbox[0].body


@pytest.mark.parametrize("settle", [invoice_mark_paid, invoice_forgive])
def test_only_an_open_invoice_can_be_settled_by_staff(billed_month, settle):
    _organization, owner, invoice = billed_month
    with pytest.raises(Conflict, match="Only an open invoice can be .*; this one is draft."):
        settle(actor=Actor(user=owner), invoice=invoice)


def test_staff_settle_invoices_from_the_admin(declined, client, committed):
    organization, owner, invoice, _customer, _recipients = declined
    owner.is_staff = owner.is_superuser = True
    owner.save()
    client.force_login(owner)

    response = committed(
        client.post,
        "/admin/billing/invoice/",
        {"action": "mark_paid", "_selected_action": [invoice.pk]},
    )

    assert response.status_code == 302
    assert Invoice.objects.get(pk=invoice.pk).status == "paid"
    assert AuditEvent.objects.get(action="invoice.paid_out_of_band").actor_type == "staff"
    assert standing(organization) == ("active", "")


def test_a_card_added_without_open_invoices_charges_nothing(billed_month, committed):
    organization, _owner, _invoice = billed_month
    committed(dunning_card_added, organization=organization)
    assert not AuditEvent.objects.filter(action="dunning.charge_attempted").exists()


def test_settling_an_organization_that_still_owes_another_invoice_keeps_it_past_due(declined, committed):
    organization, _owner, invoice, _customer, _recipients = declined
    Invoice.objects.filter(pk=invoice.pk).update(status="void")
    other = Invoice.objects.create(
        organization=organization,
        period=invoice.period.replace(month=10),
        plan=invoice.plan,
        currency="usd",
        status="open",
    )

    committed(dunning_invoice_settled, invoice=invoice)

    assert standing(organization) == ("past_due", "billing")
    Invoice.objects.filter(pk=other.pk).update(status="paid")
    committed(dunning_invoice_settled, invoice=other)
    assert standing(organization) == ("active", "")


@pytest.mark.clock
def test_members_see_a_banner_while_past_due_and_suspended_and_none_once_restored(
    declined, client, committed
):
    organization, owner, _invoice, _customer, _recipients = declined
    start = Dunning.objects.get(organization=organization).started_at
    client.force_login(owner)
    url = f"/o/{organization.slug}/keys/"

    past_due = client.get(url)
    assert past_due.status_code == 200
    assert (
        f"A payment failed: {organization.name} has unpaid invoices. Unless they are paid by "
        f"{start + timedelta(days=14):%Y-%m-%d %H:%M} UTC, its API keys will be refused."
    ) in " ".join(past_due.content.decode().split())

    committed(
        organization_set_status,
        actor=Actor.system(),
        organization=organization,
        status="suspended",
        reason=Organization.StatusReason.BILLING,
    )
    suspended = " ".join(client.get(url).content.decode().split())
    assert f"{organization.name} is suspended for unpaid invoices: its API keys are refused." in suspended
    assert f'<a href="/o/{organization.slug}/billing/">Pay on the Billing page</a>' in suspended

    committed(organization_set_status, actor=Actor.system(), organization=organization, status="active")
    assert 'id="billing-banner"' not in client.get(url).content.decode()


def test_a_staff_standing_shows_no_billing_banner(billed_month, client, committed):
    organization, owner, _invoice = billed_month
    committed(organization_set_status, actor=Actor.system(), organization=organization, status="past_due")
    client.force_login(owner)
    response = client.get(f"/o/{organization.slug}/keys/")
    assert response.status_code == 200
    assert 'id="billing-banner"' not in response.content.decode()


@pytest.mark.parametrize(
    ("value", "days"),
    [(None, (1, 3, 5, 7)), ("2", (2,)), (" 1, 2 ,13", (1, 2, 13)), ("", ())],
)
def test_retry_days_parse_strictly(monkeypatch, value, days):
    if value is None:
        monkeypatch.delenv("BILLING_RETRY_DAYS", raising=False)
    else:
        monkeypatch.setenv("BILLING_RETRY_DAYS", value)
    assert env_days("BILLING_RETRY_DAYS", ["1", "3", "5", "7"], before=14) == days


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("1,x", "BILLING_RETRY_DAYS must be whole days separated by commas, got ['1', 'x']"),
        ("1,,3", "BILLING_RETRY_DAYS must be a comma-separated list without empty items, got '1,,3'"),
        ("0,3", "BILLING_RETRY_DAYS must be days from 1 to 13, got (0, 3)"),
        ("1,14", "BILLING_RETRY_DAYS must be days from 1 to 13, got (1, 14)"),
        ("3,1", "BILLING_RETRY_DAYS must be in increasing order without repeats, got (3, 1)"),
        ("3,3", "BILLING_RETRY_DAYS must be in increasing order without repeats, got (3, 3)"),
        ("1.5", "BILLING_RETRY_DAYS must be whole days separated by commas, got ['1.5']"),
    ],
)
def test_a_bad_retry_schedule_is_a_start_up_error(monkeypatch, value, error):
    monkeypatch.setenv("BILLING_RETRY_DAYS", value)
    with pytest.raises(ImproperlyConfigured) as caught:
        env_days("BILLING_RETRY_DAYS", ["1", "3", "5", "7"], before=14)
    assert str(caught.value) == error
