"""Every way the edge refuses a request: exact status, OpenAI error body and headers.

Keys, organizations and prices change through the portal's services (side effects on
commit executed), so the edge reads what the portal really publishes.
"""

import re
import threading
import time
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from edge import keyformat
from keys import services as key_services
from keys.models import ApiKey
from keys.publication import keys_publish
from portal import services as portal_services
from portal.audit import Actor
from tests.edge.sliding import fresh_window, redis_ms, retry_afters

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "hello there"}]
RESET = re.compile(r"^(\d+ms|\d+s|\d+m\d+s)$")
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def refusal_edge(start_module_edge, mock_upstream):
    return start_module_edge(
        [
            {"model": "mock-model", "upstreams": [mock_upstream.url]},
            {"model": "gpt-*", "upstreams": [mock_upstream.url]},
        ]
    )


@pytest.fixture(scope="module")
def base_client(refusal_edge):
    client = openai.OpenAI(base_url=refusal_edge.url + "/v1", api_key="unset", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def client_for(base_client):
    """Return a client for a secret; clients share one connection pool."""

    def make(secret: str) -> openai.OpenAI:
        return base_client.with_options(api_key=secret)

    return make


@pytest.fixture
def post(refusal_edge):
    """POST a chat completion with raw httpx; return the response."""

    def send(secret: str | None, *, model: str = "mock-model", **extra) -> httpx.Response:
        headers = {"authorization": f"Bearer {secret}"} if secret is not None else {}
        body = {"model": model, "messages": HELLO, "max_tokens": 4, **extra}
        return httpx.post(f"{refusal_edge.url}/v1/chat/completions", json=body, headers=headers, timeout=10)

    return send


def error(message: str, *, type: str = "invalid_request_error", code: str, param: str | None = None) -> dict:
    return {"message": message, "type": type, "param": param, "code": code}


def chat(client: openai.OpenAI, **extra):
    return client.chat.completions.create(model=extra.pop("model", "mock-model"), messages=HELLO, **extra)


def test_missing_key_is_401(post):
    response = post(None)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert UUID7.match(response.headers["x-request-id"])
    assert response.json() == {
        "error": error(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    }


def test_malformed_keys_are_refused_without_a_key_lookup(
    refusal_edge, make_key, client_for, post, edge_metric
):
    _, secret = make_key()
    position = len("tg_live_") + 5
    typo = secret[:position] + ("b" if secret[position] == "a" else "a") + secret[position + 1 :]
    assert keyformat.PATTERN.match(typo)  # the right shape; only the checksum is wrong
    lookups = edge_metric(refusal_edge, "tollgate_edge_auth_cache_total")
    expected = error(
        "Incorrect API key provided: it is not a Tollgate key (tg_live_… or tg_test_…).",
        code="invalid_api_key",
    )

    for bad in ("tg_live_short", "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789", typo):
        with pytest.raises(openai.AuthenticationError) as caught:
            chat(client_for(bad))
        assert caught.value.status_code == 401
        assert caught.value.body == expected
        assert post(bad).json() == {"error": expected}

    assert edge_metric(refusal_edge, "tollgate_edge_auth_cache_total") == lookups


def test_unknown_well_formed_key_is_401_after_a_lookup(refusal_edge, client_for, edge_metric):
    lookups = edge_metric(refusal_edge, "tollgate_edge_auth_cache_total")

    with pytest.raises(openai.AuthenticationError) as caught:
        chat(client_for(keyformat.generate("live")))

    assert caught.value.status_code == 401
    assert caught.value.body == error("Incorrect API key provided.", code="invalid_api_key")
    assert edge_metric(refusal_edge, "tollgate_edge_auth_cache_total") == lookups + 1


def test_revoked_key_is_401(make_key, client_for, django_capture_on_commit_callbacks):
    key, secret = make_key()
    with django_capture_on_commit_callbacks(execute=True):
        key_services.api_key_revoke(actor=Actor(user=key.created_by), key=key)

    with pytest.raises(openai.AuthenticationError) as caught:
        chat(client_for(secret))

    assert caught.value.body == error("This API key has been revoked.", code="invalid_api_key")


def test_expired_key_is_401_once_its_expiry_passes(make_key, client_for):
    key, secret = make_key(expires_at=timezone.now() + timedelta(days=1))
    client = client_for(secret)
    assert chat(client).choices[0].message.content  # served before its expiry

    # The test decides when the expiry has passed instead of sleeping through a real one:
    # the row as time would leave it (the service refuses a past expiry), then published.
    # The edge compares the expiry with its own clock on every request, cached or not.
    ApiKey.unscoped.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    keys_publish([key.pk])
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(client)

    assert caught.value.body == error("This API key has expired.", code="invalid_api_key")


def test_rotated_out_secret_is_401_when_the_grace_is_zero(
    make_key, client_for, django_capture_on_commit_callbacks
):
    key, old = make_key()
    with django_capture_on_commit_callbacks(execute=True):
        _, new, _ = key_services.api_key_rotate(
            actor=Actor(user=key.created_by), key=key, grace_period=timedelta(0)
        )

    with pytest.raises(openai.AuthenticationError) as caught:
        chat(client_for(old))

    assert caught.value.body == error(
        "This API key secret was rotated and its grace period has ended. Use the new secret.",
        code="invalid_api_key",
    )
    assert chat(client_for(new)).choices[0].message.content


def test_suspended_organization_is_402(make_key, client_for, post, django_capture_on_commit_callbacks):
    key, secret = make_key()
    with django_capture_on_commit_callbacks(execute=True):
        portal_services.organization_set_status(
            actor=Actor(user=key.created_by), organization=key.organization, status="suspended"
        )
    expected = error(
        "Your organization is suspended. Settle the outstanding balance in the Tollgate console to resume.",
        type="insufficient_quota",
        code="organization_suspended",
    )

    with pytest.raises(openai.APIStatusError) as caught:
        chat(client_for(secret))

    assert caught.value.status_code == 402
    assert caught.value.body == expected
    assert post(secret).json() == {"error": expected}


def test_model_outside_the_keys_allowed_models_is_403(make_key, client_for):
    _, secret = make_key(allowed_models=["gpt-*"])

    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(client_for(secret))

    assert caught.value.status_code == 403
    assert caught.value.body == error(
        "This API key is not allowed to use the model `mock-model`.",
        type="permission_error",
        param="model",
        code="model_not_allowed",
    )
    assert chat(client_for(secret), model="gpt-small").choices[0].message.content


def test_unknown_model_is_404(make_key, client_for):
    _, secret = make_key()

    with pytest.raises(openai.NotFoundError) as caught:
        chat(client_for(secret), model="no-such-model")

    assert caught.value.status_code == 404
    assert caught.value.body == error(
        "The model `no-such-model` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def test_address_outside_the_allow_list_is_403_and_inside_is_served(make_key, client_for):
    _, outside = make_key(allowed_ips=["10.0.0.0/8"])
    _, inside = make_key(allowed_ips=["127.0.0.1/32"])

    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(client_for(outside))

    assert caught.value.status_code == 403
    assert caught.value.body == error(
        "Requests from 127.0.0.1 are not allowed for this API key.",
        type="permission_error",
        code="ip_not_allowed",
    )
    assert chat(client_for(inside)).choices[0].message.content


def test_rpm_limit_refuses_the_third_request_with_rate_limit_headers(
    make_key, client_for, post, redis_client
):
    _, secret = make_key(rpm_limit=2)
    fresh_window(redis_client, margin_ms=5_000)

    first = client_for(secret).chat.completions.with_raw_response.create(model="mock-model", messages=HELLO)
    second = post(secret)
    before = redis_ms(redis_client)
    third = post(secret)
    after = redis_ms(redis_client)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client_for(secret))

    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert RESET.match(first.headers["x-ratelimit-reset-requests"])
    assert second.status_code == 200
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-limit-tokens" not in second.headers
    assert third.status_code == 429
    retry_after = third.headers["retry-after"]
    # Not the next minute: there the two still weigh 2 * (1 - elapsed/60000), leaving room for a
    # third only half-way through it.
    assert retry_after in retry_afters(2, 0, 1, 2, before, after)
    assert third.headers["x-ratelimit-limit-requests"] == "2"
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-reset-requests"] == f"{retry_after}s"
    assert third.json() == {
        "error": error(
            f"Rate limit reached for this API key: 2 requests per minute. Retry after {retry_after}s.",
            type="requests",
            code="rate_limit_exceeded",
        )
    }
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"


def test_tpm_limit_refuses_a_request_whose_tokens_do_not_fit_yet(make_key, post, redis_client, usage_events):
    key, secret = make_key(tpm_limit=100)
    win = fresh_window(redis_client, margin_ms=5_000)

    served = post(secret, max_tokens=10)
    usage_events(1)  # settled: the mock answered 2 prompt and 10 completion tokens
    rate = f"tg:rl:{{o:{key.organization_id}}}:k:{key.public_id}"
    assert redis_client.hget(rate, f"t:{win}") == b"12"
    before = redis_ms(redis_client)
    refused = post(secret, max_tokens=90)
    after = redis_ms(redis_client)

    assert served.status_code == 200
    assert served.headers["x-ratelimit-limit-tokens"] == "100"
    # 10 output tokens plus the edge's prompt estimate: prompt bytes // 3 + 4 per message + 1.
    assert served.headers["x-ratelimit-remaining-tokens"] == str(100 - 10 - (len(b"hello there") // 3 + 5))
    assert "x-ratelimit-limit-requests" not in served.headers
    assert refused.status_code == 429
    retry_after = refused.headers["retry-after"]
    # 12 + 98 estimated is over 100 this minute; next minute the 12 decay until 98 fit.
    assert retry_after in retry_afters(12, 0, 90 + len(b"hello there") // 3 + 5, 100, before, after)
    assert refused.json() == {
        "error": error(
            f"Rate limit reached for this API key: 100 tokens per minute. Retry after {retry_after}s.",
            type="tokens",
            code="rate_limit_exceeded",
        )
    }
    assert refused.headers["x-ratelimit-limit-tokens"] == "100"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "88"
    assert refused.headers["x-ratelimit-reset-tokens"] == f"{retry_after}s"


def test_concurrency_limit_refuses_a_second_request_while_one_is_in_flight(
    make_key, client_for, post, mock_upstream
):
    _, secret = make_key(concurrency_limit=1)
    mock_upstream.reset()
    results = {}

    def slow():
        results["slow"] = chat(client_for(secret), extra_headers={"x-mock-latency-ms": "1500"})

    thread = threading.Thread(target=slow)
    thread.start()
    deadline = time.monotonic() + 5
    while mock_upstream.stats()["requests"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    second = post(secret)
    thread.join(timeout=10)

    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert second.json() == {
        "error": error(
            "Too many concurrent requests for this API key (limit 1). Retry shortly.",
            type="requests",
            code="rate_limit_exceeded",
        )
    }
    assert results["slow"].choices[0].message.content == "hello there " * 7 + "hello there"
    # The lease is released when the slow request settles.
    deadline = time.monotonic() + 2
    while (third := post(secret)).status_code == 429 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert third.status_code == 200


def test_budget_refuses_a_request_whose_worst_case_cost_does_not_fit(
    make_key, client_for, post, django_capture_on_commit_callbacks
):
    from billing.services import model_price_set

    key, secret = make_key(budget_monthly_minor=5)
    with django_capture_on_commit_callbacks(execute=True):
        model_price_set(
            actor=Actor(user=key.created_by),
            model="gpt-budget",
            input_per_mtok_minor=100,
            output_per_mtok_minor=100,
        )

    with pytest.raises(openai.RateLimitError) as caught:
        chat(client_for(secret), model="gpt-budget", max_tokens=100_000)
    served = post(secret, model="gpt-budget", max_tokens=10)

    assert caught.value.status_code == 429
    assert caught.value.body == error(
        "This request would exceed the API key's monthly budget of 0.05: "
        "the edge reserves a request's worst-case cost (prompt and max_tokens) until it ends. "
        "Lower max_tokens, raise the budget in the Tollgate console, or wait for the next month.",
        type="insufficient_quota",
        code="insufficient_quota",
    )
    assert served.status_code == 200
