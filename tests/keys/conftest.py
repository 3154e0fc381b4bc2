"""Fixtures shared by the key tests: a frozen clock, an owner and their organization."""

from datetime import UTC, datetime

import pytest

from portal.audit import Actor
from tests.factories import make_org, make_user


@pytest.fixture
def start(time_machine):
    """Freeze the clock at a whole second near the real time (Redis expiries use real time)."""
    moment = datetime.now(UTC).replace(microsecond=0)
    time_machine.move_to(moment, tick=False)
    return moment


@pytest.fixture
def owner():
    return make_user("owner@example.com")


@pytest.fixture
def organization(owner):
    return make_org(owner, name="Acme")


@pytest.fixture
def actor(owner):
    return Actor(user=owner)


@pytest.fixture
def publish(django_capture_on_commit_callbacks):
    """Run the on-commit publication of whatever the block does."""
    return lambda: django_capture_on_commit_callbacks(execute=True)
