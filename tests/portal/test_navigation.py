"""The side navigation lists exactly the organization pages the member's role may open."""

import re

import pytest
from django.urls import reverse

from portal.roles import Role
from tests.factories import add_member, make_org

pytestmark = pytest.mark.django_db

EVERY_PAGE = [
    "Dashboard",
    "API keys",
    "Service accounts",
    "Usage",
    "Requests",
    "Billing",
    "Members",
    "Audit log",
    "Settings",
]

NAV_BY_ROLE = {
    Role.OWNER: EVERY_PAGE,
    Role.ADMIN: EVERY_PAGE,
    Role.DEVELOPER: ["Dashboard", "API keys", "Service accounts", "Usage", "Requests", "Members"],
    Role.BILLING: ["Dashboard", "Service accounts", "Usage", "Requests", "Billing", "Members"],
    Role.VIEWER: [
        "Dashboard",
        "API keys",
        "Service accounts",
        "Usage",
        "Requests",
        "Billing",
        "Members",
        "Audit log",
    ],
}

URL_NAMES = {
    "Dashboard": "org-dashboard",
    "API keys": "org-keys",
    "Service accounts": "org-service-accounts",
    "Usage": "org-usage",
    "Requests": "org-usage-requests",
    "Billing": "org-billing",
    "Members": "org-members",
    "Audit log": "org-audit",
    "Settings": "org-settings",
}


def _nav_links(content: bytes) -> list[tuple[str, str]]:
    nav = re.search(rb'<nav aria-label="Organization">(.*?)</nav>', content, re.S).group(1).decode()
    return re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', nav)


@pytest.mark.parametrize("role", Role.values)
def test_each_role_sees_exactly_the_pages_it_may_open(client, role):
    organization = make_org()
    client.force_login(add_member(organization, role))
    response = client.get(reverse("org-dashboard", args=[organization.slug]))
    assert response.status_code == 200
    assert _nav_links(response.content) == [
        (reverse(URL_NAMES[label], args=[organization.slug]), label) for label in NAV_BY_ROLE[role]
    ]
    for label in NAV_BY_ROLE[role]:
        assert client.get(reverse(URL_NAMES[label], args=[organization.slug])).status_code == 200


def test_the_current_page_is_marked_and_a_refused_page_keeps_the_role_navigation(client):
    organization = make_org()
    client.force_login(add_member(organization, Role.DEVELOPER))
    keys = client.get(reverse("org-keys", args=[organization.slug]))
    assert f'<a href="/o/{organization.slug}/keys/" aria-current="page">API keys</a>'.encode() in keys.content
    refused = client.get(reverse("org-settings", args=[organization.slug]))
    assert refused.status_code == 403
    assert [label for _, label in _nav_links(refused.content)] == NAV_BY_ROLE[Role.DEVELOPER]
