"""The per-credential rate limit of the REST API."""

import pytest

from portal.api.throttling import CredentialRateThrottle
from portal.roles import Role
from tests.api.support import assert_problem, call, session_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_per_minute(settings, monkeypatch):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"credential": "3/min"},
    }
    # DRF reads the rates once, into a class attribute.
    monkeypatch.setattr(CredentialRateThrottle, "THROTTLE_RATES", {"credential": "3/min"})


def _refused(response) -> int:
    """Assert a 429 problem and return its Retry-After seconds."""
    retry_after = response["Retry-After"]
    assert retry_after.isdigit()
    assert_problem(response, 429, "rate_limited", f"Too many requests. Retry in {retry_after} seconds.")
    return int(retry_after)


def test_fourth_request_in_a_minute_gets_429_with_retry_after(world, three_per_minute):
    client = session_client(world.users[Role.DEVELOPER])
    for _ in range(3):
        assert call(client, "GET", "/api/v1/organization").status_code == 200
    assert 1 <= _refused(call(client, "GET", "/api/v1/organization")) <= 60
    # Writes share the same budget.
    _refused(call(client, "POST", "/api/v1/keys", {"name": "ci"}))


def test_another_user_is_not_affected(world, three_per_minute):
    busy = session_client(world.users[Role.DEVELOPER])
    for _ in range(3):
        assert call(busy, "GET", "/api/v1/organization").status_code == 200
    _refused(call(busy, "GET", "/api/v1/organization"))
    other = session_client(world.users[Role.VIEWER])
    assert [call(other, "GET", "/api/v1/organization").status_code for _ in range(3)] == [200, 200, 200]


def test_retrying_after_retry_after_seconds_succeeds_and_not_before(world, three_per_minute, time_machine):
    time_machine.move_to("2030-01-01T12:00:00Z", tick=False)
    client = session_client(world.users[Role.DEVELOPER])
    for _ in range(3):
        assert call(client, "GET", "/api/v1/organization").status_code == 200
    time_machine.shift(0.4)
    wait = _refused(call(client, "GET", "/api/v1/organization"))
    assert wait == 60  # 59.6 seconds left, rounded up
    time_machine.shift(wait - 1)
    _refused(call(client, "GET", "/api/v1/organization"))
    time_machine.shift(1)
    assert call(client, "GET", "/api/v1/organization").status_code == 200
