"""Helpers for the REST API tests: JSON calls, problem+json checks, expected bodies, DB diffs."""

import base64

from django.test import Client
from rest_framework.fields import DateTimeField

from billing.models import BillingDetails, Customer, Invoice
from keys import services as key_services
from keys.models import ApiKey, ApiKeySecret, ServiceAccount
from portal.audit import Actor
from portal.models import AuditEvent, IdempotencyRecord, Invitation, Membership, Organization
from portal.roles import Role
from usage.models import UsageEvent, UsageRollup

PROBLEM_CONTENT_TYPE = "application/problem+json"
TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    415: "Unsupported media type",
    422: "Unprocessable content",
    429: "Too many requests",
    500: "Server error",
}
_datetime = DateTimeField()


def iso(value) -> str | None:
    """Render a datetime the way the API does."""
    return None if value is None else _datetime.to_representation(value)


def session_client(user=None, *, enforce_csrf_checks: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf_checks)
    if user is not None:
        client.force_login(user)
    return client


def service_token(organization: Organization, owner, *, role: str = Role.DEVELOPER) -> str:
    """Create a service account in the organization and return an access token it obtained."""
    _account, client_id, secret = key_services.service_account_create(
        actor=Actor(user=owner), organization=organization, name="deployer", role=role
    )
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    response = Client().post(
        "/identity/o/api/token",
        {"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200, response.content
    return response.json()["access_token"]


def call(client: Client, method: str, path: str, body=None, *, query=None, headers=None):
    """Send a JSON request; GET and DELETE carry no body."""
    method = method.lower()
    headers = headers or {}
    if method == "get":
        return client.get(path, query or {}, headers=headers)
    return getattr(client, method)(
        path,
        {} if body is None else body,
        content_type="application/json",
        headers=headers,
        query_params=query,
    )


def problem_body(status: int, code: str, detail: str, errors: dict | None = None) -> dict:
    body = {
        "type": f"urn:tollgate:problem:{code}",
        "title": TITLES[status],
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def assert_problem(response, status: int, code: str, detail: str, errors: dict | None = None) -> dict:
    """Assert an exact RFC 9457 response and return its body."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == PROBLEM_CONTENT_TYPE
    body = response.json()
    assert body == problem_body(status, code, detail, errors)
    return body


# --- expected bodies, built from the rows -------------------------------------------------


def organization_json(organization: Organization) -> dict:
    organization = Organization.objects.get(pk=organization.pk)
    return {
        "slug": organization.slug,
        "name": organization.name,
        "status": organization.status,
        "require_mfa": organization.require_mfa,
        "created_at": iso(organization.created_at),
    }


def member_json(membership: Membership) -> dict:
    return {
        "id": membership.pk,
        "email": membership.user.email,
        "role": membership.role,
        "created_at": iso(membership.created_at),
    }


def invitation_json(invitation: Invitation) -> dict:
    invitation = Invitation.unscoped.get(pk=invitation.pk)
    return {
        "id": invitation.pk,
        "email": invitation.email,
        "role": invitation.role,
        "state": invitation.state,
        "invited_by": invitation.invited_by.email if invitation.invited_by else None,
        "created_at": iso(invitation.created_at),
        "expires_at": iso(invitation.expires_at),
        "accepted_at": iso(invitation.accepted_at),
        "revoked_at": iso(invitation.revoked_at),
    }


def key_json(key: ApiKey) -> dict:
    key = ApiKey.unscoped.get(pk=key.pk)
    live = ApiKeySecret.objects.filter(key=key).live().order_by("-created_at", "-id")
    return {
        "id": key.public_id,
        "name": key.name,
        "environment": key.environment,
        "status": key.status,
        "secrets": [
            {
                "display": f"{s.prefix}…{s.last4}",
                "created_at": iso(s.created_at),
                "expires_at": iso(s.expires_at),
            }
            for s in live
        ],
        "allowed_models": key.allowed_models,
        "allowed_ips": key.allowed_ips,
        "limits": {"rpm": key.rpm_limit, "tpm": key.tpm_limit, "concurrency": key.concurrency_limit},
        "budget": {"monthly_minor": key.budget_monthly_minor, "alert_percent": key.budget_alert_percent},
        "rotation_reminder_days": key.rotation_reminder_days,
        "metadata": key.metadata,
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "last_used_at": iso(key.last_used_at),
    }


def audit_event_json(event: AuditEvent) -> dict:
    return {
        "id": event.pk,
        "created_at": iso(event.created_at),
        "action": event.action,
        "actor": event.actor_label,
        "actor_type": event.actor_type,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "metadata": event.metadata,
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
    }


def invoice_json(invoice: Invoice) -> dict:
    invoice = Invoice.objects.get(pk=invoice.pk)
    return {
        "id": invoice.public_id,
        "period": invoice.period.isoformat(),
        "plan": invoice.plan.name,
        "status": invoice.status,
        "currency": invoice.currency,
        "total_minor": invoice.total_minor,
        "no_charge_reason": invoice.no_charge_reason,
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "lines": [
            {
                "position": line.position,
                "kind": line.kind,
                "model": line.model,
                "tokens": line.tokens,
                "quantity": line.quantity,
                "unit_price_per_mtok_minor": (
                    None
                    if line.unit_price_per_mtok_minor is None
                    else f"{line.unit_price_per_mtok_minor:.6f}"
                ),
                "amount_minor": line.amount_minor,
                "description": line.description,
            }
            for line in invoice.lines.order_by("position")
        ],
        "created_at": iso(invoice.created_at),
        "finalized_at": iso(invoice.finalized_at),
        "paid_at": iso(invoice.paid_at),
        "voided_at": iso(invoice.voided_at),
    }


def page(results: list, *, next_url=None, previous_url=None) -> dict:
    return {"next": next_url, "previous": previous_url, "results": results}


# --- database snapshots -------------------------------------------------------------------

_TABLES = {
    "organization": lambda: Organization.objects.all(),
    "membership": lambda: Membership.objects.all_tenants(),
    "invitation": lambda: Invitation.objects.all_tenants(),
    "apikey": lambda: ApiKey.unscoped.all(),
    "apikeysecret": lambda: ApiKeySecret.objects.all(),
    "serviceaccount": lambda: ServiceAccount.unscoped.all(),
    "auditevent": lambda: AuditEvent.objects.all(),
    "idempotencyrecord": lambda: IdempotencyRecord.objects.all(),
    "usageevent": lambda: UsageEvent.unscoped.all(),
    "usagerollup": lambda: UsageRollup.unscoped.all(),
    "customer": lambda: Customer.objects.all(),
    "billingdetails": lambda: BillingDetails.objects.all(),
    "invoice": lambda: Invoice.objects.all(),
}


def db_snapshot() -> dict:
    """Every row of the tables the API can write, keyed by table and primary key."""
    snapshot = {}
    for name, rows in _TABLES.items():
        queryset = rows()
        # A composite key (the raw usage table's) is a tuple of its columns.
        pk = [field.attname for field in queryset.model._meta.pk_fields]
        snapshot[name] = {tuple(row[column] for column in pk): row for row in queryset.values()}
    return snapshot


def db_changes(before: dict, after: dict) -> dict:
    """Count added, removed and changed rows per table; tables without changes are left out."""
    changes = {}
    for table in _TABLES:
        old, new = before[table], after[table]
        counts = {
            "added": len(new.keys() - old.keys()),
            "removed": len(old.keys() - new.keys()),
            "changed": sum(1 for pk in old.keys() & new.keys() if old[pk] != new[pk]),
        }
        counts = {kind: n for kind, n in counts.items() if n}
        if counts:
            changes[table] = counts
    return changes


# --- the OpenAPI document -----------------------------------------------------------------


def openapi_schema() -> dict:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def _json_schema(node):
    """Turn OpenAPI 3.0 ``nullable`` into JSON Schema, recursively."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def assert_matches_schema(schema: dict, path: str, method: str, response) -> None:
    """Validate a response body against the document's schema for that status."""
    import jsonschema

    described = schema["paths"][path][method.lower()]["responses"][str(response.status_code)]
    content = described.get("content")
    if content is None:
        assert response.content == b""
        return
    media = response["Content-Type"]
    assert media in content, (
        f"{method} {path} answers {response.status_code} as {media}, documented as {list(content)}"
    )
    root = {"components": _json_schema(schema["components"]), **_json_schema(content[media]["schema"])}
    jsonschema.Draft202012Validator(root).validate(response.json())
