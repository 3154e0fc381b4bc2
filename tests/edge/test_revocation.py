"""A running edge stops accepting a key within one second of its revocation.

The edge keeps key records in a per-process cache, here for 60 seconds, so only the
invalidation the portal publishes on commit can make it refuse in time. It runs two
worker processes, each with its own cache; every request opens a new connection, so both
serve some of them, and once one request is refused every later one must be too.
"""

import time

import httpx
import pytest

from keys import services as key_services
from portal import services as portal_services
from portal.audit import Actor

pytestmark = pytest.mark.django_db

BOUND_SECONDS = 1.0
POLL_SECONDS = 0.05


@pytest.fixture(scope="module")
def cached_edge(start_module_edge, mock_upstream):
    return start_module_edge(
        [{"model": "*", "upstreams": [mock_upstream.url]}],
        workers=2,
        extra_config={"auth_cache": {"ttl_seconds": 60}},
    )


@pytest.fixture
def status_of(cached_edge):
    """Send one chat request on a new connection; return its status."""

    def send(secret: str) -> int:
        body = {
            "model": "mock-model",
            "messages": [{"role": "user", "content": "still there?"}],
            "max_tokens": 1,
        }
        headers = {"authorization": f"Bearer {secret}"}
        return httpx.post(f"{cached_edge.url}/v1/chat/completions", json=body, headers=headers).status_code

    return send


def warm(cached_edge, secret, status_of, edge_metric) -> None:
    """Serve the key several times, so that the edge answers it from its cache."""
    # The key's creation was announced on tg:invalidate; on a busy machine that message can reach
    # a worker after its first look-up and drop the entry once. Let it arrive first.
    time.sleep(0.3)
    hits = edge_metric(cached_edge, "tollgate_edge_auth_cache_total", result="hit")
    assert [status_of(secret) for _ in range(10)] == [200] * 10
    assert edge_metric(cached_edge, "tollgate_edge_auth_cache_total", result="hit") >= hits + 8


def seconds_until(status: int, secret: str, status_of, started: float) -> float:
    """Poll every 50 ms until the edge answers ``status``; return the time since ``started``."""
    while (current := status_of(secret)) != status:
        assert current == 200
        assert time.monotonic() - started < 5, "the edge kept accepting the key"
        time.sleep(POLL_SECONDS)
    return time.monotonic() - started


def test_revoked_key_is_refused_within_one_second(
    cached_edge, make_key, status_of, edge_metric, django_capture_on_commit_callbacks
):
    key, secret = make_key()
    warm(cached_edge, secret, status_of, edge_metric)

    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        key_services.api_key_revoke(actor=Actor(user=key.created_by), key=key)
    elapsed = seconds_until(401, secret, status_of, started)

    assert elapsed < BOUND_SECONDS
    assert [status_of(secret) for _ in range(10)] == [401] * 10


def test_key_of_a_suspended_organization_is_refused_within_one_second(
    cached_edge, make_key, status_of, edge_metric, django_capture_on_commit_callbacks
):
    key, secret = make_key()
    warm(cached_edge, secret, status_of, edge_metric)

    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        portal_services.organization_set_status(
            actor=Actor(user=key.created_by), organization=key.organization, status="suspended"
        )
    elapsed = seconds_until(402, secret, status_of, started)

    assert elapsed < BOUND_SECONDS
    assert [status_of(secret) for _ in range(10)] == [402] * 10
