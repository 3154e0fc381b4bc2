"""A known key's request that the edge refuses has a usage event: its status, its reason from
the fixed set, the model it asked for, no tokens and no cost. An unknown key's has none.

Keys and organizations change through the portal's services (side effects on commit
executed), so the edge reads what the portal really publishes; requests go through the
``openai`` client, events are read from the test's tg:usage stream.
"""

import time
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone

from edge import keyformat
from edge.events import REFUSAL_REASONS
from keys import services as key_services
from keys.models import ApiKey
from keys.publication import keys_publish
from portal import services as portal_services
from portal.audit import Actor
from portal.models import Organization

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def refusal_edge(start_module_edge, mock_upstream):
    return start_module_edge(
        [
            {"model": "mock-model", "upstreams": [mock_upstream.url]},
            {"model": "gpt-*", "upstreams": [mock_upstream.url]},
        ]
    )


@pytest.fixture
def client_for(refusal_edge):
    def make(secret: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=refusal_edge.url + "/v1", api_key=secret, max_retries=0)

    return make


def refused_event(
    key: ApiKey,
    event: dict,
    *,
    status: int,
    reason: str,
    model: str = "mock-model",
    secret_id: int | None = None,
) -> dict:
    """The event as the edge must write it; times and ids are taken from the event itself."""
    assert reason in REFUSAL_REASONS
    assert 0 <= event["latency_ms"] < 5000
    assert event["ended_at_ms"] - event["started_at_ms"] in (
        int(event["latency_ms"]),
        int(event["latency_ms"]) + 1,
    )
    assert abs(event["ended_at_ms"] - time.time() * 1000) < 10_000
    return {
        "v": 1,
        "event_id": event["event_id"],
        "request_id": event["request_id"],
        "key_id": key.public_id,
        "org_id": key.organization_id,
        "environment": "live",
        "endpoint": "chat.completions",
        "model": model,
        "stream": False,
        "status": status,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "estimated": False,
        "cost_micro_minor": 0,
        "latency_ms": event["latency_ms"],
        "ttft_ms": None,
        "upstream": "",
        "started_at_ms": event["started_at_ms"],
        "ended_at_ms": event["ended_at_ms"],
        "refusal": reason,
        "secret_id": key.secrets.get().pk if secret_id is None else secret_id,
    }


def refuse(client: openai.OpenAI, error: type[openai.APIStatusError], **extra) -> str:
    """Send one chat completion that must be refused with ``error``; return its request id."""
    with pytest.raises(error) as caught:
        client.chat.completions.create(
            model=extra.pop("model", "mock-model"), messages=HELLO, max_tokens=4, **extra
        )
    return caught.value.response.headers["x-request-id"]


def test_a_revoked_keys_request_is_a_401_event_with_the_model_it_asked_for(
    make_key, client_for, usage_events, django_capture_on_commit_callbacks
):
    key, secret = make_key()
    with django_capture_on_commit_callbacks(execute=True):
        key_services.api_key_revoke(actor=Actor(user=key.created_by), key=key)

    request_id = refuse(client_for(secret), openai.AuthenticationError, model="gpt-small")

    [event] = usage_events(1)
    assert event == refused_event(key, event, status=401, reason="key_revoked", model="gpt-small")
    assert event["request_id"] == request_id


def test_an_expired_keys_request_is_a_401_event(make_key, client_for, usage_events):
    key, secret = make_key(expires_at=timezone.now() + timedelta(days=1))
    ApiKey.unscoped.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    keys_publish([key.pk])

    refuse(client_for(secret), openai.AuthenticationError)

    [event] = usage_events(1)
    assert event == refused_event(key, event, status=401, reason="key_expired")


def test_a_rotated_out_secrets_request_is_a_401_event(
    make_key, client_for, usage_events, django_capture_on_commit_callbacks
):
    key, old = make_key()
    with django_capture_on_commit_callbacks(execute=True):
        key_services.api_key_rotate(actor=Actor(user=key.created_by), key=key, grace_period=timedelta(0))

    refuse(client_for(old), openai.AuthenticationError)

    [event] = usage_events(1)
    old_secret = key.secrets.order_by("created_at", "id").first()
    assert event == refused_event(key, event, status=401, reason="secret_rotated", secret_id=old_secret.pk)


@pytest.mark.parametrize(
    ("reason", "refusal"),
    [
        (Organization.StatusReason.STAFF, "organization_suspended"),
        (Organization.StatusReason.BILLING, "billing_suspended"),
    ],
)
def test_a_suspended_organizations_request_is_a_402_event(
    make_key, client_for, usage_events, django_capture_on_commit_callbacks, reason, refusal
):
    key, secret = make_key()
    with django_capture_on_commit_callbacks(execute=True):
        portal_services.organization_set_status(
            actor=Actor(user=key.created_by), organization=key.organization, status="suspended", reason=reason
        )

    refuse(client_for(secret), openai.APIStatusError)

    [event] = usage_events(1)
    assert event == refused_event(key, event, status=402, reason=refusal)


def test_a_model_the_key_may_not_use_is_a_403_event(make_key, client_for, usage_events):
    key, secret = make_key(allowed_models=["gpt-*"])

    refuse(client_for(secret), openai.PermissionDeniedError)

    [event] = usage_events(1)
    assert event == refused_event(key, event, status=403, reason="model_not_allowed")


def test_an_address_outside_the_allow_list_is_a_403_event(make_key, client_for, usage_events):
    key, secret = make_key(allowed_ips=["10.0.0.0/8"])

    refuse(client_for(secret), openai.PermissionDeniedError)

    [event] = usage_events(1)
    assert event == refused_event(key, event, status=403, reason="ip_not_allowed")


def test_the_request_over_the_rpm_limit_is_a_429_event_beside_the_served_one(
    make_key, client_for, usage_events
):
    key, secret = make_key(rpm_limit=1)
    client = client_for(secret)
    served = client.chat.completions.create(model="mock-model", messages=HELLO, max_tokens=4)
    assert served.choices[0].message.content

    refuse(client, openai.RateLimitError)

    first, second = usage_events(2)
    assert (first["status"], first["output_tokens"], "refusal" in first) == (200, 4, False)
    assert second == refused_event(key, second, status=429, reason="rate_limit_rpm")


def test_a_refused_request_without_a_readable_model_has_an_empty_model(
    make_key, refusal_edge, usage_events, django_capture_on_commit_callbacks
):
    key, secret = make_key()
    with django_capture_on_commit_callbacks(execute=True):
        key_services.api_key_revoke(actor=Actor(user=key.created_by), key=key)

    response = httpx.post(
        f"{refusal_edge.url}/v1/chat/completions",
        content=b"{not json",
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
    )

    assert response.status_code == 401
    [event] = usage_events(1)
    assert event == refused_event(key, event, status=401, reason="key_revoked", model="")


def test_unknown_keys_and_models_have_no_event(make_key, client_for, usage_events):
    _, secret = make_key()

    with pytest.raises(openai.AuthenticationError):
        client_for(keyformat.generate("live")).chat.completions.create(model="mock-model", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        client_for(secret).chat.completions.create(model="no-such-model", messages=HELLO)

    assert usage_events(0, timeout=0.5) == []
