"""Small builders for test data that go through the real services."""

import itertools

from allauth.account.models import EmailAddress

from portal import services
from portal.audit import Actor
from portal.models import Membership, Organization, User
from portal.roles import Role

_counter = itertools.count(1)
PASSWORD = "correct-horse-battery-staple-42"


def make_user(email: str | None = None, *, password: str = PASSWORD, verified: bool = True) -> User:
    email = email or f"user{next(_counter)}@example.com"
    user = User.objects.create_user(email=email, password=password)
    EmailAddress.objects.create(user=user, email=email, primary=True, verified=verified)
    return user


def make_org(owner: User | None = None, *, name: str | None = None) -> Organization:
    owner = owner or make_user()
    return services.organization_create(actor=Actor(user=owner), name=name or f"Org {next(_counter)}")


def add_member(organization: Organization, role: str = Role.DEVELOPER, user: User | None = None) -> User:
    user = user or make_user()
    Membership.objects.create(user=user, organization=organization, role=role)
    return user
