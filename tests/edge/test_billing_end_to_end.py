"""Money end to end: the openai client → a real edge → the mock model server; the usage events
→ the ingest consumer → rollups → the month's close → a Stripe invoice (localstripe) paid with
the demo card, whose amounts are the token counts times the prices, to the cent."""

import openai
import pytest
import redis

from billing.closing import invoice_close_period
from billing.models import Invoice
from billing.services import model_price_set
from billing.tasks import invoice_push
from portal.audit import Actor
from tests.billing.test_stripe_push import stripe_state
from tests.edge.test_usage_end_to_end import _wait_for_events
from usage.consumer import UsageConsumer
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

MESSAGES = [{"role": "user", "content": "count the cars at the gate of the old town"}]
PROMPT_TOKENS = 10  # the mock counts the prompt's words


def test_requests_through_the_edge_become_a_paid_stripe_invoice_of_the_exact_amount(
    edge, make_key, settings, stripe_customer, stripe_api
):
    # Minor units per million tokens, large enough for a few requests to be worth cents.
    model_price_set(
        actor=Actor.system(),
        model="mock-model",
        input_per_mtok_minor="2000000",
        cached_input_per_mtok_minor="1000000",
        output_per_mtok_minor="6000000",
    )
    key, secret = make_key(name="app")
    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key=secret, max_retries=0)
    for words in (5, 8, 16):
        client.chat.completions.create(
            model="mock-model", messages=MESSAGES, extra_headers={"x-mock-words": str(words)}
        )
    client.chat.completions.create(
        model="mock-model", messages=MESSAGES, max_tokens=3, extra_headers={"x-mock-cached-tokens": "4"}
    )
    streamed = client.chat.completions.create(
        model="mock-model", messages=MESSAGES, stream=True, extra_headers={"x-mock-words": "7"}
    )
    assert len(list(streamed)) > 1

    events = redis.Redis.from_url(settings.REDIS_URL)
    _wait_for_events(events, 5)
    consumer = UsageConsumer(events, name="ingest-billing-e2e", max_wait_ms=50)
    consumer.ensure_group()
    assert consumer.step().inserted == 5

    # Close the month(s) the events were billed in (two only if the test straddles a month end).
    periods = sorted(set(UsageEvent.objects.all_tenants().values_list("billed_period", flat=True)))
    for period in periods:
        invoice_close_period(period=period)
    customer = stripe_customer(key.organization, key.organization.memberships.first().user)
    for invoice in Invoice.objects.filter(organization=key.organization, status=Invoice.Status.DRAFT):
        invoice_push.delay(invoice.pk).get()

    # 5 requests of 10 prompt tokens, 4 of them cached; 5 + 8 + 16 + 3 + 7 = 39 output tokens:
    # input 46 x 2 = 92, cached input 4 x 1 = 4, output 39 x 6 = 234 cents.
    invoices = list(Invoice.objects.filter(organization=key.organization).order_by("period"))
    lines = [line for invoice in invoices for line in invoice.lines.order_by("position")]
    assert sum(line.quantity for line in lines if line.tokens == "input") == 5 * PROMPT_TOKENS - 4
    assert sum(line.quantity for line in lines if line.tokens == "cached_input") == 4
    assert sum(line.quantity for line in lines if line.tokens == "output") == 39
    assert sum(invoice.total_minor for invoice in invoices) == 92 + 4 + 234
    assert {invoice.status for invoice in invoices} == {"paid"}

    remote, charges = stripe_state(stripe_api, customer)
    assert sorted((status, total) for status, total, _lines in remote) == sorted(
        ("paid", invoice.total_minor) for invoice in invoices
    )
    assert sorted(charges) == sorted(("succeeded", invoice.total_minor) for invoice in invoices)
    assert sorted(
        amount for _status, _total, items in remote for _description, amount, _id in items
    ) == sorted(line.amount_minor for line in lines)
