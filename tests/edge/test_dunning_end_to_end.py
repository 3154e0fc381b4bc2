"""Dunning end to end with a real edge: a declined card, the retries on their days, the
suspension after the grace (the edge answers 402 billing_suspended within a second), a good
card, the payment (the edge serves again within a second), and the email of every step."""

import time
from datetime import timedelta

import openai
import pytest
from django.core import mail

from billing.dunning import dunning_card_added
from billing.models import Dunning
from billing.tasks import dunning_run
from billing.tasks import invoice_push as invoice_push_task
from keys import services as key_services
from portal.audit import Actor
from portal.roles import Role
from tests.billing.test_stripe_push import stripe_state
from tests.factories import add_member

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

HELLO = [{"role": "user", "content": "hello there"}]
# Publication reaches every edge process within this.
WITHIN_SECONDS = 1.0


def answer_within(client: openai.OpenAI, expected_status: int) -> openai.APIStatusError | None:
    """Call the edge until it answers ``expected_status`` or a second has passed; return the error."""
    deadline = time.monotonic() + WITHIN_SECONDS
    while True:
        try:
            client.chat.completions.create(model="mock-model", messages=HELLO, max_tokens=2)
            status, error = 200, None
        except openai.APIStatusError as caught:
            status, error = caught.status_code, caught
        if status == expected_status or time.monotonic() > deadline:
            assert status == expected_status
            return error


def test_a_declined_card_is_suspended_at_the_edge_after_the_grace_and_restored_when_paid(
    edge,
    billed_month,
    stripe_customer,
    stripe_api,
    django_capture_on_commit_callbacks,
    time_machine,
    frozen_now,
):
    organization, owner, invoice = billed_month
    billing_member = add_member(organization, Role.BILLING)
    recipients = sorted([owner.email, billing_member.email])
    with django_capture_on_commit_callbacks(execute=True):
        _key, secret = key_services.api_key_create(
            actor=Actor(user=owner), organization=organization, name="app"
        )
    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key=secret, max_retries=0)
    customer = stripe_customer(organization, owner, card="pm_card_chargeCustomerFail")

    def step(call, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return call(*args, **kwargs)

    def subjects() -> list[tuple[str, list[str]]]:
        subjects = [(message.subject, message.to) for message in mail.outbox]
        mail.outbox.clear()
        return subjects

    # The month's invoice is issued and the card declined: past due, and the edge still serves.
    assert step(invoice_push_task.apply, args=[invoice.pk]).get() == "open"
    organization.refresh_from_db()
    assert (organization.status, organization.status_reason) == ("past_due", "billing")
    assert subjects() == [
        (f"[Tollgate] Invoice {invoice.public_id} for November 2026: 6.48 USD", recipients),
        (f"[Tollgate] Payment failed for {organization.name}", recipients),
    ]
    assert answer_within(client, 200) is None

    # The retries on days 1, 3, 5 and 7 are declined too; nothing is emailed for them.
    start = Dunning.objects.get(organization=organization).started_at
    for day in (1, 3, 5, 7):
        time_machine.move_to(start + timedelta(days=day), tick=False)
        step(dunning_run.apply)
    assert stripe_state(stripe_api, customer)[1] == [("failed", 648)] * 5
    assert subjects() == []
    assert answer_within(client, 200) is None

    # Three days before the grace ends: the warning; at its end: suspended, and the edge refuses.
    time_machine.move_to(start + timedelta(days=11), tick=False)
    step(dunning_run.apply)
    assert subjects() == [
        (
            f"[Tollgate] {organization.name} will be suspended on {start + timedelta(days=14):%Y-%m-%d}",
            recipients,
        )
    ]
    assert answer_within(client, 200) is None
    time_machine.move_to(start + timedelta(days=14), tick=False)
    step(dunning_run.apply)
    assert subjects() == [(f"[Tollgate] {organization.name} is suspended for unpaid invoices", recipients)]

    refused = answer_within(client, 402)
    assert refused.body == {
        "message": "Your organization is suspended for unpaid invoices. Pay them on the Billing page at "
        f"http://testserver/o/{organization.slug}/billing/ and requests resume within a second.",
        "type": "insufficient_quota",
        "param": None,
        "code": "billing_suspended",
    }

    # A good card: the open invoice is charged at once, the organization restored, the edge serves.
    time_machine.move_to(start + timedelta(days=15), tick=False)
    stripe_customer(organization, owner)
    step(dunning_card_added, organization=organization)

    assert answer_within(client, 200) is None
    invoice.refresh_from_db()
    organization.refresh_from_db()
    assert (invoice.status, organization.status, organization.status_reason) == ("paid", "active", "")
    assert subjects() == [
        (f"[Tollgate] Payment received: {organization.name} is in good standing", recipients)
    ]
    assert sorted(stripe_state(stripe_api, customer)[1]) == [("failed", 648)] * 5 + [("succeeded", 648)]
