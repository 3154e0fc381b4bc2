"""Usage end to end: the openai client → a real edge → the mock model server; the edge's usage
events → the tg:usage stream → the ingest consumer → rollups → GET /api/v1/usage, and the
reconcile command agreeing with the edge's own counters.

The mock counts a prompt's whitespace-separated words and answers ``x-mock-words`` words (or
``max_tokens`` if fewer), so every expected token count is known before the request is sent.
"""

import io
import time
from collections import defaultdict
from datetime import timedelta

import openai
import pytest
import redis
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from keys.models import ApiKey
from portal.models import Membership
from portal.roles import Role
from usage.consumer import UsageConsumer
from usage.models import UsageEvent, UsageRollup

pytestmark = pytest.mark.django_db

MESSAGES = [
    {"role": "system", "content": "answer in plain words"},
    {"role": "user", "content": "count the cars at the gate"},
]
PROMPT_WORDS = 10
METRICS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "estimated_requests")


def _wait_for_events(client: redis.Redis, count: int, timeout: float = 10) -> None:
    """The edge publishes after answering: wait until every event and counter is in Redis."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        served = sum(
            int(value)
            for name in client.scan_iter(match="tg:served:*")
            for field, value in client.hgetall(name).items()
            if field.endswith(b":requests")
        )
        if client.xlen("tg:usage") >= count and served >= count:
            return
        time.sleep(0.02)
    pytest.fail(f"the edge published {client.xlen('tg:usage')} of {count} usage events")


def test_tokens_reported_by_the_model_server_reach_the_usage_api_exactly(edge, make_key, settings):
    key, secret = make_key(name="app")
    second, second_secret = make_key(name="batch jobs")
    expected: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))

    def count(key: ApiKey, model: str, *, output: int, cached: int = 0, error: bool = False) -> None:
        row = expected[(model, key.public_id)]
        row["requests"] += 1
        row["errors"] += int(error)
        row["input_tokens"] += 0 if error else PROMPT_WORDS
        row["output_tokens"] += output
        row["cached_tokens"] += cached

    app = openai.OpenAI(base_url=f"{edge.url}/v1", api_key=secret, max_retries=0)
    jobs = openai.OpenAI(base_url=f"{edge.url}/v1", api_key=second_secret, max_retries=0)

    for words in (5, 8, 16):
        completion = app.chat.completions.create(
            model="mock-model", messages=MESSAGES, extra_headers={"x-mock-words": str(words)}
        )
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT_WORDS, words)
        count(key, "mock-model", output=words)
    completion = app.chat.completions.create(
        model="mock-model", messages=MESSAGES, max_tokens=3, extra_headers={"x-mock-cached-tokens": "4"}
    )
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    count(key, "mock-model", output=3, cached=4)

    # Streams: one without asking for usage (the edge asks the server for it), one asking.
    chunks = list(
        app.chat.completions.create(
            model="mock-model", messages=MESSAGES, stream=True, extra_headers={"x-mock-words": "4"}
        )
    )
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "count the cars at"
    count(key, "mock-model", output=4)
    chunks = list(
        app.chat.completions.create(
            model="mock-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-words": "7"},
        )
    )
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (PROMPT_WORDS, 7)
    count(key, "mock-model", output=7)

    for words in (2, 9):
        completion = jobs.chat.completions.create(
            model="other-model", messages=MESSAGES, extra_headers={"x-mock-words": str(words)}
        )
        assert completion.usage.completion_tokens == words
        count(second, "other-model", output=words)
    with pytest.raises(openai.InternalServerError):
        jobs.chat.completions.create(
            model="other-model", messages=MESSAGES, extra_headers={"x-mock-status": "500"}
        )
    count(second, "other-model", output=0, error=True)

    client = redis.Redis.from_url(settings.REDIS_URL)
    _wait_for_events(client, 9)
    consumer = UsageConsumer(client, name="ingest-e2e", max_wait_ms=50)
    consumer.ensure_group()
    result = consumer.step()

    assert (result.inserted, result.duplicates, result.dead) == (9, 0, 0)
    assert UsageEvent.unscoped.count() == 9
    assert sum(UsageRollup.unscoped.values_list("requests", flat=True)) == 9

    owner = Membership.objects.for_organization(key.organization).get(role=Role.OWNER).user
    session = Client()
    session.force_login(owner)
    now = timezone.now()
    response = session.get(
        "/api/v1/usage",
        {
            "granularity": "hour",
            "group_by": "model,key",
            "start": (now - timedelta(hours=2)).isoformat(),
            "end": (now + timedelta(hours=1)).isoformat(),
        },
    )

    assert response.status_code == 200, response.content
    body = response.json()
    # Requests made across an hour boundary fall in two hourly rows: add the rows up.
    reported: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))
    for row in body["data"]:
        for metric in METRICS:
            reported[(row["model"], row["key_id"])][metric] += row[metric]
    assert reported == expected
    assert expected[("mock-model", key.public_id)] == {
        "requests": 6,
        "errors": 0,
        "input_tokens": 60,
        "output_tokens": 43,
        "cached_tokens": 4,
        "estimated_requests": 0,
    }
    assert body["totals"] == {
        "requests": 9,
        "errors": 1,
        "refusals": 0,
        "input_tokens": 80,
        "output_tokens": 54,
        "cached_tokens": 4,
        "estimated_requests": 0,
        # No price is set for these models: they cost nothing.
        "cost_minor": 0,
        "currency": "usd",
    }
    assert {row["key_name"] for row in body["data"]} == {"app", "batch jobs"}
    for used in (key, second):
        used.refresh_from_db()
        assert now - timedelta(minutes=1) < used.last_used_at <= now

    out = io.StringIO()
    call_command("usage_reconcile", "--since", "24h", "--settle-minutes", "0", stdout=out)
    assert out.getvalue().startswith("usage_reconcile: 0 difference(s) since ")
    client.close()
