"""Fixtures shared by the key tests: a frozen clock, an owner and their organization."""

import pytest

from portal.audit import Actor
from tests.factories import make_org, make_user


@pytest.fixture
def start(frozen_now):
    """Freeze the clock at the current whole second. Tests that publish records to Redis
    need it to be the real time (Redis expiries use real time): they are not marked clock."""
    return frozen_now


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
