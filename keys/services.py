"""API key lifecycle: every write is one transaction, one audit row, publication after commit."""

import fnmatch
import ipaddress
import json
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from edge import keyformat
from keys.models import ApiKey, ApiKeySecret, ServiceAccount
from keys.publication import key_publish_on_commit
from portal.audit import Actor, audit_record
from portal.errors import Conflict, DomainError
from portal.models import Organization
from portal.roles import Role

MAX_ALLOWED_MODELS = 100
MAX_ALLOWED_IPS = 100
MAX_METADATA_BYTES = 4096
# The largest value each number column holds (Postgres integer, bigint; ten years of days).
_MAXIMA = {
    "rpm_limit": 2**31 - 1,
    "tpm_limit": 2**31 - 1,
    "concurrency_limit": 2**31 - 1,
    "budget_monthly_minor": 2**63 - 1,
    "rotation_reminder_days": 3650,
}


def _pepper() -> bytes:
    return settings.KEY_PEPPER.encode()


def secret_hash(secret: str) -> str:
    return keyformat.key_hash(secret, _pepper())


def clean_allowed_models(values: list[str]) -> list[str]:
    cleaned = []
    for value in values:
        value = value.strip()
        if not value or len(value) > 200 or any(ch.isspace() for ch in value):
            raise DomainError(f"{value!r} is not a model name or pattern.", field="allowed_models")
        try:
            fnmatch.translate(value)
        except Exception:  # noqa: BLE001 - any pattern error is the caller's input
            raise DomainError(f"{value!r} is not a valid pattern.", field="allowed_models") from None
        if value not in cleaned:
            cleaned.append(value)
    if len(cleaned) > MAX_ALLOWED_MODELS:
        raise DomainError(f"At most {MAX_ALLOWED_MODELS} model patterns.", field="allowed_models")
    return cleaned


def clean_allowed_ips(values: list[str]) -> list[str]:
    cleaned = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            raise DomainError(
                f"{value!r} is not an IPv4/IPv6 address or CIDR range: {exc}.", field="allowed_ips"
            )
        if str(network) not in cleaned:
            cleaned.append(str(network))
    if len(cleaned) > MAX_ALLOWED_IPS:
        raise DomainError(f"At most {MAX_ALLOWED_IPS} IP ranges.", field="allowed_ips")
    return cleaned


_EDITABLE = (
    "name",
    "expires_at",
    "allowed_models",
    "allowed_ips",
    "rpm_limit",
    "tpm_limit",
    "concurrency_limit",
    "budget_monthly_minor",
    "budget_alert_percent",
    "rotation_reminder_days",
    "metadata",
)


def _clean_fields(fields: dict) -> dict:
    unknown = set(fields) - set(_EDITABLE)
    if unknown:
        raise DomainError(f"Unknown fields: {', '.join(sorted(unknown))}.")
    cleaned = dict(fields)
    if "name" in cleaned:
        cleaned["name"] = (cleaned["name"] or "").strip()
        if not cleaned["name"] or len(cleaned["name"]) > 100:
            raise DomainError("Give the key a name of 1 to 100 characters.", field="name")
    if "allowed_models" in cleaned:
        cleaned["allowed_models"] = clean_allowed_models(cleaned["allowed_models"] or [])
    if "allowed_ips" in cleaned:
        cleaned["allowed_ips"] = clean_allowed_ips(cleaned["allowed_ips"] or [])
    for limit in (
        "rpm_limit",
        "tpm_limit",
        "concurrency_limit",
        "budget_monthly_minor",
        "rotation_reminder_days",
    ):
        value = cleaned.get(limit)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < 1
            and limit != "budget_monthly_minor"
        ):
            raise DomainError("Must be a positive whole number, or null for no limit.", field=limit)
        if limit == "budget_monthly_minor" and value is not None and value < 0:
            raise DomainError("Must be zero or more (cents), or null for no cap.", field=limit)
        if value is not None and value > _MAXIMA[limit]:
            raise DomainError(f"Must be at most {_MAXIMA[limit]}.", field=limit)
    if "budget_alert_percent" in cleaned:
        value = cleaned["budget_alert_percent"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise DomainError("Must be a whole number from 1 to 100.", field="budget_alert_percent")
    if "metadata" in cleaned:
        metadata = cleaned["metadata"] if cleaned["metadata"] is not None else {}
        if not isinstance(metadata, dict):
            raise DomainError("Metadata must be a JSON object.", field="metadata")
        if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
            raise DomainError(
                f"Metadata must be at most {MAX_METADATA_BYTES} bytes as JSON.", field="metadata"
            )
        cleaned["metadata"] = metadata
    expires_at = cleaned.get("expires_at")
    if expires_at is not None and expires_at <= timezone.now():
        raise DomainError("The expiry must be in the future.", field="expires_at")
    return cleaned


def _mint_secret(key: ApiKey) -> tuple[ApiKeySecret, str]:
    plaintext = keyformat.generate(key.environment)
    prefix, last4 = keyformat.display_parts(plaintext)
    secret = ApiKeySecret.objects.create(
        key=key, secret_hash=secret_hash(plaintext), prefix=prefix, last4=last4
    )
    return secret, plaintext


def _snapshot(key: ApiKey) -> dict:
    return {
        field: (value.isoformat() if isinstance(value, datetime) else value)
        for field in _EDITABLE
        for value in [getattr(key, field)]
    }


def api_key_create(
    *, actor: Actor, organization: Organization, name: str, environment: str = "live", **fields
) -> tuple[ApiKey, str]:
    """Create a key and its first secret. Return the key and the plaintext, shown once."""
    if environment not in ApiKey.Environment.values:
        raise DomainError("Environment must be live or test.", field="environment")
    cleaned = _clean_fields({"name": name, **fields})
    with transaction.atomic():
        key = ApiKey.objects.create(
            organization=organization, environment=environment, created_by=actor.user, **cleaned
        )
        secret, plaintext = _mint_secret(key)
        audit_record(
            actor=actor,
            organization=organization,
            action="key.created",
            target=key,
            metadata={"name": key.name, "environment": environment, "secret": str(secret)},
        )
        key_publish_on_commit(key.pk)
    return key, plaintext


def _locked(key: ApiKey) -> ApiKey:
    return ApiKey.objects.for_organization(key.organization_id).select_for_update().get(pk=key.pk)


def api_key_update(*, actor: Actor, key: ApiKey, **fields) -> ApiKey:
    """Change a key's name, scopes, limits, budget, expiry or metadata."""
    cleaned = _clean_fields(fields)
    with transaction.atomic():
        key = _locked(key)
        if key.revoked_at:
            raise Conflict("This key is revoked; create a new one.")
        before = _snapshot(key)
        for field, value in cleaned.items():
            setattr(key, field, value)
        after = _snapshot(key)
        changes = {field: [before[field], after[field]] for field in cleaned if before[field] != after[field]}
        if changes:
            key.updated_at = timezone.now()
            key.save()
            audit_record(
                actor=actor,
                organization=key.organization,
                action="key.updated",
                target=key,
                metadata={"changes": changes},
            )
            key_publish_on_commit(key.pk)
    return key


def api_key_rotate(
    *, actor: Actor, key: ApiKey, grace_period: timedelta | None = None
) -> tuple[ApiKey, str, ApiKeySecret | None]:
    """Mint a new secret on the same key; the current one keeps working for the grace.

    At most two secrets are live: a secret still in an earlier grace stops now. Return the
    key, the new plaintext and the previous secret (with its ``expires_at``), if any.
    """
    if grace_period is None:
        grace_period = timedelta(seconds=settings.KEY_ROTATION_DEFAULT_GRACE_SECONDS)
    if grace_period < timedelta(0) or grace_period > timedelta(
        seconds=settings.KEY_ROTATION_MAX_GRACE_SECONDS
    ):
        raise DomainError("The grace period must be from 0 seconds to 7 days.", field="grace_period")
    with transaction.atomic():
        key = _locked(key)
        if key.status != ApiKey.Status.ACTIVE:
            raise Conflict(f"This key is {key.status}; only an active key can be rotated.")
        now = timezone.now()
        live = list(key.secrets.live(now).order_by("-created_at", "-id"))
        current, older = (live[0], live[1:]) if live else (None, [])
        for secret in older:
            secret.expires_at = now
            secret.save(update_fields=["expires_at"])
        if current is not None:
            current.expires_at = now + grace_period
            current.save(update_fields=["expires_at"])
        new_secret, plaintext = _mint_secret(key)
        key.updated_at = now
        key.rotation_reminded_at = None
        key.save(update_fields=["updated_at", "rotation_reminded_at"])
        audit_record(
            actor=actor,
            organization=key.organization,
            action="key.rotated",
            target=key,
            metadata={
                "grace_seconds": int(grace_period.total_seconds()),
                "new_secret": str(new_secret),
                "previous_secret": str(current) if current else None,
                "previous_expires_at": current.expires_at.isoformat() if current else None,
            },
        )
        key_publish_on_commit(key.pk)
    return key, plaintext, current


def api_key_revoke(*, actor: Actor, key: ApiKey) -> ApiKey:
    """Stop a key and all its secrets at once."""
    with transaction.atomic():
        key = _locked(key)
        if key.revoked_at is None:
            now = timezone.now()
            key.revoked_at = now
            key.updated_at = now
            key.save(update_fields=["revoked_at", "updated_at"])
            key.secrets.filter(revoked_at=None).update(revoked_at=now)
            audit_record(actor=actor, organization=key.organization, action="key.revoked", target=key)
            key_publish_on_commit(key.pk)
    return key


def service_account_create(
    *, actor: Actor, organization: Organization, name: str, role: str
) -> tuple[ServiceAccount, str, str]:
    """Create an OAuth2 client bound to the organization and role. Return it, client id, secret."""
    from allauth.idp.oidc.adapter import get_adapter
    from allauth.idp.oidc.models import Client

    name = name.strip()
    if not name or len(name) > 100:
        raise DomainError("Give the service account a name of 1 to 100 characters.", field="name")
    if role not in Role.values:
        raise DomainError(f"Unknown role {role!r}.", field="role")
    if role == Role.OWNER:
        raise DomainError("A service account cannot be an owner.", field="role")
    with transaction.atomic():
        adapter = get_adapter()
        plaintext = adapter.generate_client_secret()
        client = Client(
            id=adapter.generate_client_id(),
            name=f"{organization.slug}: {name}",
            type=Client.Type.CONFIDENTIAL,
            skip_consent=True,
        )
        client.set_grant_types([Client.GrantType.CLIENT_CREDENTIALS])
        client.set_response_types([])
        client.set_scopes([])
        client.set_secret(plaintext)
        client.save()
        account = ServiceAccount.objects.create(
            organization=organization,
            name=name,
            role=role,
            client=client,
            client_id_display=client.id,
            created_by=actor.user,
        )
        audit_record(
            actor=actor,
            organization=organization,
            action="service_account.created",
            target=account,
            metadata={"name": name, "role": role, "client_id": client.id},
        )
    return account, client.id, plaintext


def service_account_revoke(*, actor: Actor, account: ServiceAccount) -> ServiceAccount:
    """Revoke the account: its client and every token it holds stop working now."""
    with transaction.atomic():
        account = (
            ServiceAccount.objects.for_organization(account.organization_id)
            .select_for_update()
            .get(pk=account.pk)
        )
        if account.revoked_at is None:
            client = account.client
            account.revoked_at = timezone.now()
            account.client = None
            account.save(update_fields=["revoked_at", "client"])
            if client is not None:
                client.delete()  # cascades to its access tokens
            audit_record(
                actor=actor,
                organization=account.organization,
                action="service_account.revoked",
                target=account,
            )
    return account
