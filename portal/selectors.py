"""Reads, always scoped to a tenant."""

from django.db.models import Count, QuerySet
from django.db.models.functions import Lower
from django.utils import timezone

from portal.audit import audit_target
from portal.models import AuditEvent, Invitation, Membership, Organization


def organizations_for_user(*, user) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user).order_by("name")


def membership_for(*, user, organization_slug: str) -> Membership | None:
    """Return the user's membership in the organization, or None if not a member."""
    if not user.is_authenticated:
        return None
    return (
        Membership.objects.all_tenants()
        .select_related("organization")
        .filter(user=user, organization__slug=organization_slug)
        .first()
    )


def memberships_of(*, user) -> QuerySet[Membership]:
    return Membership.objects.all_tenants().select_related("organization").filter(user=user)


def members_list(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.for_organization(organization).select_related("user").order_by("user__email")


def membership_get(*, organization: Organization, membership_id) -> Membership | None:
    return members_list(organization=organization).filter(pk=membership_id).first()


def invitations_list(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.for_organization(organization).select_related("invited_by")


def invitation_get(*, organization: Organization, invitation_id) -> Invitation | None:
    return invitations_list(organization=organization).filter(pk=invitation_id).first()


def invitations_pending_for(*, user) -> QuerySet[Invitation]:
    """Return the usable invitations to the user's verified addresses, from organizations
    they have not joined yet, soonest to expire first."""
    from allauth.account.models import EmailAddress

    addresses = EmailAddress.objects.filter(user=user, verified=True).values(address=Lower("email"))
    return (
        Invitation.objects.all_tenants()
        .select_related("organization", "invited_by")
        .annotate(address=Lower("email"))
        .filter(
            address__in=addresses,
            accepted_at=None,
            revoked_at=None,
            expires_at__gt=timezone.now(),
        )
        .exclude(organization__memberships__user=user)
        .order_by("expires_at")
    )


def invitation_pending_get(*, user, invitation_id) -> Invitation | None:
    """Return one of the user's pending invitations; None for anyone else's, as for a missing one."""
    return invitations_pending_for(user=user).filter(pk=invitation_id).first()


def audit_events_list(
    *,
    organization: Organization,
    action: str = "",
    actor: str = "",
    since=None,
    until=None,
    target=None,
) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(organization=organization)
    if target is not None:
        target_type, target_id = audit_target(target)
        events = events.filter(target_type=target_type, target_id=target_id)
    if action:
        events = events.filter(action__startswith=action)
    if actor:
        events = events.filter(actor_label__icontains=actor)
    if since:
        events = events.filter(created_at__gte=since)
    if until:
        events = events.filter(created_at__lt=until)
    return events


def audit_actions_list(*, organization: Organization) -> list[str]:
    """Return the distinct actions in the organization's audit log, for its filter."""
    return list(
        AuditEvent.objects.filter(organization=organization)
        .order_by("action")
        .values_list("action", flat=True)
        .distinct()
    )


def user_has_mfa(*, user) -> bool:
    from allauth.mfa.models import Authenticator

    return Authenticator.objects.filter(user=user, type=Authenticator.Type.TOTP).exists()


def organizations_count_by_status_all_tenants() -> dict[str, int]:
    """Count every organization by status, across all tenants (for the metrics)."""
    return dict(Organization.objects.values_list("status").annotate(count=Count("pk")).order_by())
