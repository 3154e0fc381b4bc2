"""Fixtures for the REST API tests: one organization with a member of every role, and a stranger."""

from dataclasses import dataclass

import pytest

from portal.models import Membership, Organization, User
from portal.roles import Role
from tests.factories import add_member, make_org, make_user


@dataclass
class World:
    org: Organization
    users: dict[str, User]
    target: Membership  # a developer in ``org`` that member operations act on
    other: Organization
    other_owner: User
    other_target: Membership  # a developer in ``other``

    def membership(self, user: User) -> Membership:
        return Membership.objects.for_organization(self.org).get(user=user)


@pytest.fixture
def world(db) -> World:
    owner = make_user("owner@acme.example")
    org = make_org(owner, name="Acme")
    users = {Role.OWNER: owner}
    for role in (Role.ADMIN, Role.DEVELOPER, Role.BILLING, Role.VIEWER):
        users[role] = add_member(org, role, make_user(f"{role}@acme.example"))
    target = add_member(org, Role.DEVELOPER, make_user("target@acme.example"))
    other_owner = make_user("owner@globex.example")
    other = make_org(other_owner, name="Globex")
    other_target = add_member(other, Role.DEVELOPER, make_user("target@globex.example"))
    return World(
        org=org,
        users=users,
        target=Membership.objects.for_organization(org).get(user=target),
        other=other,
        other_owner=other_owner,
        other_target=Membership.objects.for_organization(other).get(user=other_target),
    )
