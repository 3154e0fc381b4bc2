"""Roles and permissions: the one table every view, API, template and test reads."""

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    BILLING = "billing", "Billing"
    VIEWER = "viewer", "Viewer"


class Perm:
    ORG_MANAGE = "org.manage"
    MEMBERS_MANAGE = "members.manage"
    MEMBERS_VIEW = "members.view"
    KEYS_MANAGE = "keys.manage"
    KEYS_VIEW = "keys.view"
    USAGE_VIEW = "usage.view"
    USAGE_INGEST = "usage.ingest"
    BILLING_MANAGE = "billing.manage"
    BILLING_VIEW = "billing.view"
    AUDIT_VIEW = "audit.view"


ALL_PERMISSIONS = frozenset(
    value for name, value in vars(Perm).items() if name.isupper() and isinstance(value, str)
)

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.OWNER: ALL_PERMISSIONS,
    Role.ADMIN: ALL_PERMISSIONS,
    Role.DEVELOPER: frozenset(
        {Perm.MEMBERS_VIEW, Perm.KEYS_MANAGE, Perm.KEYS_VIEW, Perm.USAGE_VIEW, Perm.USAGE_INGEST}
    ),
    Role.BILLING: frozenset({Perm.MEMBERS_VIEW, Perm.USAGE_VIEW, Perm.BILLING_MANAGE, Perm.BILLING_VIEW}),
    Role.VIEWER: frozenset(
        {Perm.MEMBERS_VIEW, Perm.KEYS_VIEW, Perm.USAGE_VIEW, Perm.BILLING_VIEW, Perm.AUDIT_VIEW}
    ),
}


def role_has_permission(role: str, permission: str) -> bool:
    if permission not in ALL_PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")
    return permission in ROLE_PERMISSIONS.get(role, frozenset())
