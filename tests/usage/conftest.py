"""Fixtures for the usage tests: two organizations with keys, the test's Redis."""

from dataclasses import dataclass

import pytest

from keys import services as key_services
from keys.models import ApiKey
from portal.audit import Actor
from portal.models import Organization, User
from tests.factories import make_org, make_user


@dataclass
class Tenant:
    org: Organization
    owner: User

    def key(self, name: str = "build") -> ApiKey:
        key, _secret = key_services.api_key_create(
            actor=Actor(user=self.owner), organization=self.org, name=name
        )
        return key


@pytest.fixture
def tenant(db) -> Tenant:
    owner = make_user()
    return Tenant(org=make_org(owner, name="Acme"), owner=owner)


@pytest.fixture
def other_tenant(db) -> Tenant:
    owner = make_user()
    return Tenant(org=make_org(owner, name="Globex"), owner=owner)
