"""The optional rotation policy: remind owners when a key's secret is older than N days."""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from keys.models import ApiKey
from portal.audit import Actor, audit_record
from portal.emails import email_send
from portal.models import Membership
from portal.roles import Role


def rotation_reminders_send() -> int:
    """Email the owners of every key due for rotation, once per due period. Return count."""
    now = timezone.now()
    reminded = 0
    candidates = (
        ApiKey.objects.all_tenants()
        .live(now)
        .exclude(rotation_reminder_days=None)
        .select_related("organization")
        .order_by("pk")
    )
    for key in candidates.iterator(chunk_size=500):
        current = key.secrets.live(now).order_by("-created_at").first()
        if current is None:
            continue
        due = current.created_at + timedelta(days=key.rotation_reminder_days)
        if due > now or (key.rotation_reminded_at and key.rotation_reminded_at >= due):
            continue
        with transaction.atomic():
            ApiKey.objects.all_tenants().filter(pk=key.pk).update(rotation_reminded_at=now)
            audit_record(
                actor=Actor.system(),
                organization=key.organization,
                action="key.rotation_due",
                target=key,
                metadata={
                    "policy_days": key.rotation_reminder_days,
                    "secret_created_at": current.created_at.isoformat(),
                },
            )
            owners = (
                Membership.objects.for_organization(key.organization)
                .filter(role=Role.OWNER)
                .select_related("user")
            )
            for membership in owners:
                email_send(
                    to=membership.user.email,
                    template="key_rotation_due",
                    context={
                        "key": key,
                        "organization": key.organization,
                        "days": key.rotation_reminder_days,
                    },
                )
        reminded += 1
    return reminded
