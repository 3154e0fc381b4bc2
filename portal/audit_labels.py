"""Audit targets as a person reads them: an email, a key's name, an invoice's month."""

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.apps import apps

from portal.models import AuditEvent


@dataclass(frozen=True)
class _TargetKind:
    model: str
    id_field: str
    label: Callable[[object], str]
    # The field that ties the object to the log's organization (None: users, shared by all).
    scope: str | None = "organization"


def _user(user) -> str:
    return user.email


_KINDS = {
    "portal.user": _TargetKind("portal.User", "pk", _user, scope=None),
    "user": _TargetKind("portal.User", "pk", _user, scope=None),
    "portal.organization": _TargetKind("portal.Organization", "pk", lambda org: org.name, scope="pk"),
    "portal.invitation": _TargetKind("portal.Invitation", "pk", lambda inv: f"Invitation for {inv.email}"),
    "keys.apikey": _TargetKind(
        "keys.ApiKey", "public_id", lambda key: f'API key "{key.name}" ({key.public_id})'
    ),
    "keys.serviceaccount": _TargetKind(
        "keys.ServiceAccount", "public_id", lambda sa: f'Service account "{sa.name}" ({sa.public_id})'
    ),
    "billing.invoice": _TargetKind(
        "billing.Invoice", "public_id", lambda inv: f"Invoice {inv.public_id} ({inv.period:%b %Y})"
    ),
}


def audit_target_labels(*, organization, events: Iterable[AuditEvent]) -> dict[int, str]:
    """Return each event's target label by event id, with one query per target type.

    A type without a label, or a target that no longer exists, reads as the raw
    ``type id`` the log stored.
    """
    events = list(events)
    wanted: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.target_type in _KINDS and event.target_id:
            wanted[event.target_type].add(event.target_id)
    found: dict[tuple[str, str], str] = {}
    for target_type, ids in wanted.items():
        kind = _KINDS[target_type]
        model = apps.get_model(kind.model)
        objects = model._base_manager.all()
        if kind.scope:
            objects = objects.filter(**{kind.scope: organization.pk})
        if kind.id_field == "pk":
            ids = {value for value in ids if value.isdigit()}
        for obj in objects.filter(**{f"{kind.id_field}__in": ids}):
            found[target_type, str(getattr(obj, kind.id_field))] = kind.label(obj)
    return {
        event.pk: found.get(
            (event.target_type, event.target_id), f"{event.target_type} {event.target_id}".strip()
        )
        for event in events
    }
