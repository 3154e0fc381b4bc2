"""The organization's side navigation, read from the views' own permissions."""

from dataclasses import dataclass
from functools import cache

from django.urls import resolve, reverse

from portal.roles import ROLE_PERMISSIONS

# (label, url name) in display order. Which role sees an entry is not written here: it is
# the ``required_permission`` of the view the link opens, so the menu and the 403 agree.
ORGANIZATION_PAGES = [
    ("Dashboard", "org-dashboard"),
    ("API keys", "org-keys"),
    ("Service accounts", "org-service-accounts"),
    ("Usage", "org-usage"),
    ("Requests", "org-usage-requests"),
    ("Billing", "org-billing"),
    ("Members", "org-members"),
    ("Audit log", "org-audit"),
    ("Settings", "org-settings"),
]


@dataclass(frozen=True)
class NavLink:
    label: str
    url: str
    current: bool


@cache
def _page_permission(url_name: str) -> str | None:
    view = resolve(reverse(url_name, args=["-"])).func.view_class
    return view.required_permission


def organization_nav(*, organization_slug: str, role: str, current_url_name: str | None) -> list[NavLink]:
    """Return the links to the organization's pages this role may open."""
    allowed = ROLE_PERMISSIONS.get(role, frozenset())
    return [
        NavLink(label, reverse(url_name, args=[organization_slug]), url_name == current_url_name)
        for label, url_name in ORGANIZATION_PAGES
        if (permission := _page_permission(url_name)) is None or permission in allowed
    ]
