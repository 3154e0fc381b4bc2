"""Who did a thing, from where, and the append-only record of it."""

from dataclasses import dataclass

from portal.models import AuditEvent


@dataclass(frozen=True)
class Actor:
    user: object | None
    type: str = AuditEvent.ActorType.USER
    ip: str | None = None
    user_agent: str = ""
    name: str = ""

    @classmethod
    def from_request(cls, request, *, user=None) -> "Actor":
        user = user if user is not None else getattr(request, "user", None)
        if user is not None and not user.is_authenticated:
            user = None
        return cls(
            user=user,
            type=AuditEvent.ActorType.USER,
            ip=client_ip(request),
            user_agent=request.META.get("HTTP_USER_AGENT", "")[:512],
        )

    @classmethod
    def staff(cls, request) -> "Actor":
        base = cls.from_request(request)
        return cls(user=base.user, type=AuditEvent.ActorType.STAFF, ip=base.ip, user_agent=base.user_agent)

    @classmethod
    def system(cls) -> "Actor":
        return cls(user=None, type=AuditEvent.ActorType.SYSTEM)

    @property
    def label(self) -> str:
        if self.user is not None:
            return self.user.email
        return self.name or self.type


def client_ip(request) -> str | None:
    """Return the client address. Behind a proxy, configure it to set REMOTE_ADDR."""
    return request.META.get("REMOTE_ADDR") or None


def audit_target(target) -> tuple[str, str]:
    """Return the ``target_type`` and ``target_id`` an audit event names ``target`` by."""
    return target._meta.label_lower, str(getattr(target, "public_id", None) or target.pk)


def audit_record(
    *,
    actor: Actor,
    action: str,
    organization=None,
    target=None,
    target_type: str = "",
    target_id: str = "",
    metadata: dict | None = None,
) -> AuditEvent:
    """Append one audit event. Call inside the service's transaction."""
    if target is not None:
        named_type, named_id = audit_target(target)
        target_type = target_type or named_type
        target_id = target_id or named_id
    return AuditEvent.objects.create(
        organization=organization,
        actor=actor.user,
        actor_type=actor.type,
        actor_label=actor.label,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        metadata=metadata or {},
        ip_address=actor.ip,
        user_agent=actor.user_agent,
    )
