"""Every write to tenancy state: one function, one transaction, one audit row."""

import secrets
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify

from billing.selectors import plan_default
from portal.audit import Actor, audit_record
from portal.emails import email_send
from portal.errors import Conflict, DomainError, NotAllowed
from portal.models import Invitation, Membership, Organization, User, invitation_token_hash
from portal.roles import Role
from portal.signals import organization_changed


def _announce_change(organization: Organization) -> None:
    organization_id = organization.pk
    transaction.on_commit(
        lambda: organization_changed.send(sender=Organization, organization_id=organization_id)
    )


def _assign_slug(name: str) -> str:
    base = slugify(name)[:40] or "org"
    slug = base
    while Organization.objects.filter(slug=slug).exists():
        slug = f"{base}-{secrets.token_hex(3)}"
    return slug


def organization_create(*, actor: Actor, name: str, slug: str = "") -> Organization:
    """Create an organization and make the acting user its owner."""
    name = name.strip()
    if not name:
        raise DomainError("Give the organization a name.", field="name")
    with transaction.atomic():
        if slug:
            slug = slugify(slug)
            if not slug:
                raise DomainError("The slug needs letters or digits.", field="slug")
            if Organization.objects.filter(slug=slug).exists():
                raise Conflict("That slug is taken; choose another.", field="slug")
        organization = Organization.objects.create(
            name=name, slug=slug or _assign_slug(name), **_default_plan_limits()
        )
        Membership.objects.create(user=actor.user, organization=organization, role=Role.OWNER)
        audit_record(
            actor=actor,
            organization=organization,
            action="organization.created",
            target=organization,
            metadata={"name": organization.name, "slug": organization.slug},
        )
    return organization


def _default_plan_limits() -> dict:
    """Return the limits the default plan sets; a limit it leaves empty stays unlimited."""
    plan = plan_default()
    limits = {field: getattr(plan, field) for field in ORGANIZATION_LIMIT_FIELDS}
    return {field: value for field, value in limits.items() if value is not None}


def organization_update(
    *, actor: Actor, organization: Organization, name: str, require_mfa: bool
) -> Organization:
    """Change an organization's settings."""
    name = name.strip()
    if not name:
        raise DomainError("Give the organization a name.", field="name")
    with transaction.atomic():
        organization = Organization.objects.select_for_update().get(pk=organization.pk)
        changes = {}
        if organization.name != name:
            changes["name"] = [organization.name, name]
            organization.name = name
        if organization.require_mfa != require_mfa:
            changes["require_mfa"] = [organization.require_mfa, require_mfa]
            organization.require_mfa = require_mfa
        if changes:
            organization.save(update_fields=["name", "require_mfa"])
            audit_record(
                actor=actor,
                organization=organization,
                action="organization.updated",
                target=organization,
                metadata={"changes": changes},
            )
    return organization


def organization_set_status(
    *,
    actor: Actor,
    organization: Organization,
    status: str,
    reason: str = Organization.StatusReason.STAFF,
) -> Organization:
    """Change an organization's standing and say why (support staff, or billing for unpaid invoices).

    An active organization has no reason; the edge hears of any change within a second.
    """
    if status not in Organization.Status.values:
        raise DomainError(f"Unknown status {status!r}.", field="status")
    if status == Organization.Status.ACTIVE:
        reason = Organization.StatusReason.NONE
    elif reason not in Organization.StatusReason.values or not reason:
        raise DomainError(f"Unknown status reason {reason!r}.", field="status_reason")
    with transaction.atomic():
        organization = Organization.objects.select_for_update().get(pk=organization.pk)
        previous = (organization.status, organization.status_reason)
        if previous != (status, reason):
            organization.status = status
            organization.status_reason = reason
            organization.save(update_fields=["status", "status_reason"])
            audit_record(
                actor=actor,
                organization=organization,
                action="organization.status_changed",
                target=organization,
                metadata={"from": previous[0], "to": status, "reason": reason},
            )
            _announce_change(organization)
    return organization


ORGANIZATION_LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "concurrency_limit", "budget_monthly_minor")


def organization_set_limits(*, actor: Actor, organization: Organization, **limits) -> Organization:
    """Set the organization-wide limits the edge enforces (None = no limit)."""
    unknown = set(limits) - set(ORGANIZATION_LIMIT_FIELDS)
    if unknown:
        raise DomainError(f"Unknown limits: {', '.join(sorted(unknown))}.")
    for field, value in limits.items():
        if value is not None and (not isinstance(value, int) or value < 0):
            raise DomainError("Limits are whole numbers of zero or more, or empty for none.", field=field)
    with transaction.atomic():
        organization = Organization.objects.select_for_update().get(pk=organization.pk)
        changes = {
            field: [getattr(organization, field), value]
            for field, value in limits.items()
            if getattr(organization, field) != value
        }
        if changes:
            for field, (_, value) in changes.items():
                setattr(organization, field, value)
            organization.save(update_fields=list(changes))
            audit_record(
                actor=actor,
                organization=organization,
                action="organization.limits_changed",
                target=organization,
                metadata={"changes": changes},
            )
            _announce_change(organization)
    return organization


def _owner_count(organization: Organization) -> int:
    return Membership.objects.for_organization(organization).filter(role=Role.OWNER).count()


def _actor_role(actor: Actor, organization: Organization) -> str | None:
    membership = (
        Membership.objects.for_organization(organization).filter(user=actor.user).first()
        if actor.user
        else None
    )
    return membership.role if membership else None


def membership_change_role(*, actor: Actor, membership: Membership, role: str) -> Membership:
    """Change a member's role. Only owners make or unmake owners; the last owner stays."""
    if role not in Role.values:
        raise DomainError(f"Unknown role {role!r}.", field="role")
    with transaction.atomic():
        organization = Organization.objects.select_for_update().get(pk=membership.organization_id)
        membership = (
            Membership.objects.for_organization(organization).select_for_update().get(pk=membership.pk)
        )
        previous = membership.role
        if previous == role:
            return membership
        if Role.OWNER in (previous, role) and _actor_role(actor, organization) != Role.OWNER:
            raise NotAllowed("Only an owner can make or change an owner.")
        if previous == Role.OWNER and _owner_count(organization) == 1:
            raise Conflict("The last owner cannot be demoted. Make someone else an owner first.")
        membership.role = role
        membership.save(update_fields=["role"])
        audit_record(
            actor=actor,
            organization=organization,
            action="member.role_changed",
            target=membership.user,
            metadata={"email": membership.user.email, "from": previous, "to": role},
        )
    return membership


def membership_remove(*, actor: Actor, membership: Membership) -> None:
    """Remove a member. Only owners remove owners; the last owner stays."""
    with transaction.atomic():
        organization = Organization.objects.select_for_update().get(pk=membership.organization_id)
        membership = (
            Membership.objects.for_organization(organization).select_for_update().get(pk=membership.pk)
        )
        if membership.role == Role.OWNER:
            if _owner_count(organization) == 1:
                raise Conflict("The last owner cannot be removed. Make someone else an owner first.")
            if _actor_role(actor, organization) != Role.OWNER:
                raise NotAllowed("Only an owner can remove an owner.")
        user = membership.user
        membership.delete()
        audit_record(
            actor=actor,
            organization=organization,
            action="member.removed",
            target=user,
            metadata={"email": user.email, "role": membership.role},
        )


def _invitation_email(invitation: Invitation, token: str) -> None:
    email_send(
        to=invitation.email,
        template="invitation",
        context={
            "organization": invitation.organization,
            "role": Role(invitation.role).label,
            "inviter": invitation.invited_by,
            "url": settings.SITE_URL + reverse("invitation-accept", args=[token]),
            "expires_at": invitation.expires_at,
        },
    )


def _new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, invitation_token_hash(token)


def invitation_create(
    *, actor: Actor, organization: Organization, email: str, role: str
) -> tuple[Invitation, str]:
    """Invite someone by email. Return the invitation and its one-time token."""
    email = User.objects.normalize_email(email.strip()).lower()
    if not email or "@" not in email:
        raise DomainError("Enter a valid email address.", field="email")
    if role not in Role.values:
        raise DomainError(f"Unknown role {role!r}.", field="role")
    with transaction.atomic():
        if role == Role.OWNER and _actor_role(actor, organization) != Role.OWNER:
            raise NotAllowed("Only an owner can invite an owner.")
        if Membership.objects.for_organization(organization).filter(user__email__iexact=email).exists():
            raise Conflict(f"{email} is already a member.", field="email")
        now = timezone.now()
        pending = Invitation.objects.for_organization(organization).filter(
            email__iexact=email, accepted_at=None, revoked_at=None, expires_at__gt=now
        )
        if pending.exists():
            raise Conflict(f"{email} already has a pending invitation; re-send or revoke it.", field="email")
        token, token_hash = _new_token()
        invitation = Invitation.objects.create(
            organization=organization,
            email=email,
            role=role,
            token_hash=token_hash,
            invited_by=actor.user,
            expires_at=now + timedelta(hours=settings.INVITATION_TTL_HOURS),
        )
        audit_record(
            actor=actor,
            organization=organization,
            action="member.invited",
            target=invitation,
            metadata={"email": email, "role": role},
        )
        _invitation_email(invitation, token)
    return invitation, token


def invitation_resend(*, actor: Actor, invitation: Invitation) -> tuple[Invitation, str]:
    """Issue a fresh link (the old one stops working) and extend the expiry."""
    with transaction.atomic():
        invitation = (
            Invitation.objects.for_organization(invitation.organization)
            .select_for_update()
            .get(pk=invitation.pk)
        )
        if invitation.accepted_at or invitation.revoked_at:
            raise Conflict(f"This invitation was {invitation.state}; create a new one.")
        token, invitation.token_hash = _new_token()
        invitation.expires_at = timezone.now() + timedelta(hours=settings.INVITATION_TTL_HOURS)
        invitation.save(update_fields=["token_hash", "expires_at"])
        audit_record(
            actor=actor,
            organization=invitation.organization,
            action="member.invitation_resent",
            target=invitation,
            metadata={"email": invitation.email},
        )
        _invitation_email(invitation, token)
    return invitation, token


def invitation_revoke(*, actor: Actor, invitation: Invitation) -> Invitation:
    with transaction.atomic():
        invitation = (
            Invitation.objects.for_organization(invitation.organization)
            .select_for_update()
            .get(pk=invitation.pk)
        )
        if invitation.accepted_at:
            raise Conflict("This invitation was already accepted; remove the member instead.")
        if invitation.revoked_at is None:
            invitation.revoked_at = timezone.now()
            invitation.save(update_fields=["revoked_at"])
            audit_record(
                actor=actor,
                organization=invitation.organization,
                action="member.invitation_revoked",
                target=invitation,
                metadata={"email": invitation.email},
            )
    return invitation


class InvitationInvalid(DomainError):
    code = "invitation_invalid"


def _invitation_usable(invitation: Invitation | None) -> Invitation:
    if invitation is None:
        raise InvitationInvalid("This invitation link is not valid. Ask for a new one.")
    if invitation.accepted_at:
        raise InvitationInvalid("This invitation was already used.")
    if invitation.revoked_at:
        raise InvitationInvalid("This invitation was revoked. Ask for a new one.")
    if invitation.expires_at <= timezone.now():
        raise InvitationInvalid("This invitation has expired. Ask for a new one.")
    return invitation


def invitation_check(*, token: str) -> Invitation:
    """Return the usable invitation for a token, or raise with a message for the invitee."""
    return _invitation_usable(
        Invitation.objects.all_tenants()
        .select_related("organization")
        .filter(token_hash=invitation_token_hash(token))
        .first()
    )


def _invitation_addressed_to(user, invitation: Invitation | None) -> Invitation:
    """Return the usable invitation if one of the user's verified addresses is the invited one."""
    from allauth.account.models import EmailAddress

    invitation = _invitation_usable(invitation)
    verified = EmailAddress.objects.filter(user=user, email__iexact=invitation.email, verified=True).exists()
    if not verified:
        raise InvitationInvalid(
            f"This invitation is for {invitation.email}. Log in with that address (verified) to accept it."
        )
    return invitation


def _invitation_join(*, actor: Actor, invitation: Invitation | None) -> Membership:
    """Join a locked invitation's organization with its role, as its verified addressee."""
    user = actor.user
    invitation = _invitation_addressed_to(user, invitation)
    organization = invitation.organization
    try:
        with transaction.atomic():
            membership = Membership.objects.create(user=user, organization=organization, role=invitation.role)
    except IntegrityError:
        raise Conflict(f"You are already a member of {organization.name}.") from None
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        actor=actor,
        organization=organization,
        action="member.joined",
        target=user,
        metadata={"email": user.email, "role": invitation.role, "invitation": invitation.pk},
    )
    return membership


def invitation_accept(*, actor: Actor, token: str) -> Membership:
    """Join the invitation's organization with its role. The link works once."""
    with transaction.atomic():
        invitation = (
            Invitation.objects.all_tenants()
            .select_for_update()
            .filter(token_hash=invitation_token_hash(token))
            .first()
        )
        return _invitation_join(actor=actor, invitation=invitation)


def invitation_accept_pending(*, actor: Actor, invitation: Invitation) -> Membership:
    """Join from the list of the user's pending invitations (no link needed: the address is theirs)."""
    with transaction.atomic():
        locked = Invitation.objects.all_tenants().select_for_update().filter(pk=invitation.pk).first()
        return _invitation_join(actor=actor, invitation=locked)


def invitation_decline(*, actor: Actor, invitation: Invitation) -> Invitation:
    """Turn down an invitation addressed to the actor: its link stops working, as when revoked."""
    with transaction.atomic():
        invitation = _invitation_addressed_to(
            actor.user,
            Invitation.objects.all_tenants()
            .select_for_update()
            .select_related("organization")
            .filter(pk=invitation.pk)
            .first(),
        )
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            organization=invitation.organization,
            action="member.invitation_declined",
            target=invitation,
            metadata={"email": invitation.email},
        )
    return invitation
