"""The request log end to end: the openai client → a real edge with a low rpm limit → the
tg:usage stream → the ingest consumer → Postgres → the console's request log, usage totals
and rating.

One request is served and the next is refused with a 429; both are on the page with their
fields, the refusal is counted in the totals, and only the served one is billed.
"""

import io
import re
import time
from datetime import timedelta

import openai
import pytest
import redis
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing.services import model_price_set
from portal.audit import Actor
from portal.models import Membership
from portal.roles import Role
from tests.usage.test_request_log import request_rows
from usage.consumer import UsageConsumer
from usage.export import usage_cost_total
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

MESSAGES = [
    {"role": "system", "content": "answer in plain words"},
    {"role": "user", "content": "count the cars at the gate"},
]
PROMPT_WORDS = 10  # the mock counts whitespace-separated words as tokens
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LATENCY = re.compile(r"^\d+\.\d ms$")


def test_a_served_and_a_refused_request_are_on_the_request_log_and_only_the_served_one_is_billed(
    edge, make_key, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        # 0.1 cent an input token and 1 cent an output token.
        model_price_set(
            actor=Actor.system(),
            model="mock-model",
            input_per_mtok_minor=100_000,
            output_per_mtok_minor=1_000_000,
        )
    key, secret = make_key(name="app", rpm_limit=1)
    client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key=secret, max_retries=0)

    raw = client.chat.completions.with_raw_response.create(
        model="mock-model", messages=MESSAGES, extra_headers={"x-mock-words": "5"}
    )
    served_id = raw.headers["x-request-id"]
    assert raw.parse().usage.completion_tokens == 5
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mock-model", messages=MESSAGES)
    refused_id = caught.value.response.headers["x-request-id"]

    stream = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + 10
    while stream.xlen("tg:usage") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    consumer = UsageConsumer(stream, name="ingest-request-log", max_wait_ms=50)
    consumer.ensure_group()
    result = consumer.step()
    assert (result.inserted, result.dead) == (2, 0)

    owner = Membership.objects.for_organization(key.organization).get(role=Role.OWNER).user
    session = Client()
    session.force_login(owner)
    response = session.get(reverse("org-usage-requests", args=[key.organization.slug]))
    assert response.status_code == 200
    refused, served = request_rows(response)
    key_url = reverse("org-key", args=[key.organization.slug, key.public_id])
    assert TIME.match(refused["cells"][0]) and TIME.match(served["cells"][0])
    assert refused["cells"][0] >= served["cells"][0]
    assert LATENCY.match(refused["cells"][4]) and LATENCY.match(served["cells"][4])
    assert LATENCY.match(served["cells"][5])
    assert refused["cells"][1:4] + refused["cells"][5:] == [
        "app", "mock-model", "429 refused: rate_limit_rpm", "", "0", "0", "0", "0.00 USD", refused_id,
    ]  # fmt: skip
    # 10 input tokens at 0.1 cent and 5 output tokens at 1 cent: 6 cents.
    assert served["cells"][1:4] + served["cells"][6:] == [
        "app", "mock-model", "200", str(PROMPT_WORDS), "5", "0", "0.06 USD", served_id,
    ]  # fmt: skip
    assert served["links"] == refused["links"] == [key_url]
    assert sorted(UsageEvent.objects.for_organization(key.organization).values_list("status", "refusal")) == [
        (200, ""),
        (429, "rate_limit_rpm"),
    ]

    now = timezone.now()
    usage = session.get(reverse("org-usage", args=[key.organization.slug]), {"range": "24h"})
    totals = usage.context["totals"]
    assert (totals["requests"], totals["errors"], totals["refusals"]) == (2, 1, 1)
    assert '<strong data-total="refusals">1</strong>' in usage.content.decode()
    # Rating reads tokens only: the refusal adds nothing to what the served request costs.
    rated = usage_cost_total(
        organization=key.organization, start=now - timedelta(hours=1), end=now + timedelta(hours=1)
    )
    assert rated == {"cost_minor": 6, "currency": "usd"}
    out = io.StringIO()
    call_command("usage_reconcile", "--since", "24h", "--settle-minutes", "0", stdout=out)
    assert out.getvalue().startswith("usage_reconcile: 0 difference(s) since ")
    stream.close()
