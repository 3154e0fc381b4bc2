"""Every operation in the OpenAPI document, table-driven.

For each one: success with the exact body and rows, invalid input refused with per-field
errors and nothing written, 401 without a credential, 403 for every role the role table
refuses, and another organization's object answering exactly like a missing one.
"""

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from types import SimpleNamespace

import pytest
from django.urls import resolve
from django.utils import timezone
from rest_framework.fields import DateTimeField

from billing import stripe_adapter
from billing.closing import invoice_store
from billing.errors import PaymentDeclined
from billing.models import BillingDetails, Invoice
from billing.rating import Line, Rating
from billing.selectors import plan_default
from billing.services import customer_ensure, invoice_push
from edge import keyformat
from keys import services as key_services
from keys.models import ApiKey, ApiKeySecret
from portal import services as portal_services
from portal.audit import Actor
from portal.models import AuditEvent, Invitation, Membership, Organization
from portal.roles import ROLE_PERMISSIONS, Perm, Role
from tests.api.support import (
    assert_matches_schema,
    assert_problem,
    audit_event_json,
    call,
    db_changes,
    db_snapshot,
    invitation_json,
    invoice_json,
    iso,
    key_json,
    member_json,
    openapi_schema,
    organization_json,
    page,
    session_client,
)
from usage import services as usage_services
from usage.models import UsageEvent, UsageRollup

# The billing operations talk to Stripe: the session's localstripe.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stripe_settings")]

MISSING_ID = 2_000_000_000
MISSING_KEY_ID = "key_00000000000000000000000000"


# --- arranging the object an operation acts on --------------------------------------------


def _nothing(world, organization, owner) -> dict:
    return {"params": {}}


def _a_key(world, organization, owner) -> dict:
    key, _plaintext = key_services.api_key_create(
        actor=Actor(user=owner), organization=organization, name="build"
    )
    return {"params": {"key_id": key.public_id}, "key": key}


def _an_invoice(world, organization, owner) -> dict:
    invoice = invoice_store(
        organization_id=organization.pk,
        period=date(2026, 10, 1),
        plan=plan_default(),
        rating=Rating((Line("fee", "", "", 1, None, 900, "Standard plan, October 2026"),)),
    )
    return {"params": {"invoice_id": invoice.public_id}, "invoice": invoice}


def _stripe():
    return stripe_adapter._client()


def _cards(world, organization, owner) -> dict:
    """A Stripe customer with Visa 4242 (the default) and a second card ending 0341."""
    customer = customer_ensure(organization=organization).stripe_customer_id
    first = _stripe().v1.payment_methods.attach("pm_card_visa", params={"customer": customer})
    second = _stripe().v1.payment_methods.attach("pm_card_chargeCustomerFail", params={"customer": customer})
    stripe_adapter.customer_default_payment_method_set(customer=customer, payment_method=first.id)
    return {
        "params": {"payment_method_id": second.id},
        "customer": customer,
        "first": first.id,
        "second": second.id,
    }


def _an_open_invoice(world, organization, owner) -> dict:
    """An invoice whose charge was declined, and a good card made the default since."""
    arranged = _an_invoice(world, organization, owner)
    cards = _cards(world, organization, owner)
    stripe_adapter.customer_default_payment_method_set(
        customer=cards["customer"], payment_method=cards["second"]
    )
    with pytest.raises(PaymentDeclined):
        invoice_push(invoice=arranged["invoice"])
    stripe_adapter.customer_default_payment_method_set(
        customer=cards["customer"], payment_method=cards["first"]
    )
    arranged["invoice"].refresh_from_db()
    assert arranged["invoice"].status == Invoice.Status.OPEN
    return arranged


def _a_member(world, organization, owner) -> dict:
    target = world.target if organization == world.org else world.other_target
    return {"params": {"member_id": target.pk}, "membership": target}


def _an_invitation(world, organization, owner) -> dict:
    invitation, _token = portal_services.invitation_create(
        actor=Actor(user=owner), organization=organization, email="pending@example.com", role=Role.VIEWER
    )
    return {"params": {"invitation_id": invitation.pk}, "invitation": invitation}


EVENT_ID = uuid.UUID("0190b8a0-0000-7000-8000-000000000001")


def _usage_event(key: ApiKey, at) -> dict:
    return {
        "event_id": str(EVENT_ID),
        "key_id": key.public_id,
        "model": "llama-3",
        "timestamp": iso(at),
        "input_tokens": 10,
        "output_tokens": 5,
    }


def _some_usage(world, organization, owner) -> dict:
    arranged = _a_key(world, organization, owner)
    event = _usage_event(arranged["key"], timezone.now())
    [outcome] = usage_services.usage_events_post(
        organization=organization,
        items=[{**event, "event_id": EVENT_ID, "timestamp": timezone.now(), "cached_tokens": 0}],
    )
    assert outcome["status"] == "accepted"
    return arranged


# --- success checks: the body, and exactly which rows changed -----------------------------


def _audit_event(ctx, action: str) -> AuditEvent:
    """Return the organization's newest audit event, checking its action and actor."""
    event = AuditEvent.objects.filter(organization=ctx.world.org).order_by("-id").first()
    assert (event.action, event.actor_id, event.actor_type, event.actor_label) == (
        action,
        ctx.caller.pk,
        AuditEvent.ActorType.USER,
        ctx.caller.email,
    )
    return event


def _check_organization_retrieve(ctx, response, changes):
    assert response.json() == organization_json(ctx.world.org)
    assert response.json()["name"] == "Acme"
    assert changes == {}


def _check_organization_update(ctx, response, changes):
    assert response.json() == organization_json(ctx.world.org)
    assert response.json()["name"] == "Acme Renamed"
    assert changes == {"organization": {"changed": 1}, "auditevent": {"added": 1}}
    event = _audit_event(ctx, "organization.updated")
    assert event.metadata == {"changes": {"name": ["Acme", "Acme Renamed"]}}


def _check_members_list(ctx, response, changes):
    memberships = Membership.objects.for_organization(ctx.world.org).select_related("user").order_by("id")
    assert response.json() == page([member_json(m) for m in memberships])
    assert [m["email"] for m in response.json()["results"]] == [
        "owner@acme.example",
        "admin@acme.example",
        "developer@acme.example",
        "billing@acme.example",
        "viewer@acme.example",
        "target@acme.example",
    ]
    assert changes == {}


def _check_members_retrieve(ctx, response, changes):
    assert response.json() == member_json(ctx.membership)
    assert (response.json()["email"], response.json()["role"]) == ("target@acme.example", "developer")
    assert changes == {}


def _check_members_update_role(ctx, response, changes):
    membership = Membership.objects.for_organization(ctx.world.org).get(pk=ctx.membership.pk)
    assert membership.role == Role.VIEWER
    assert response.json() == member_json(membership)
    assert changes == {"membership": {"changed": 1}, "auditevent": {"added": 1}}
    event = _audit_event(ctx, "member.role_changed")
    assert event.metadata == {"email": "target@acme.example", "from": "developer", "to": "viewer"}


def _check_members_remove(ctx, response, changes):
    assert response.content == b""
    assert not Membership.objects.for_organization(ctx.world.org).filter(pk=ctx.membership.pk).exists()
    assert changes == {"membership": {"removed": 1}, "auditevent": {"added": 1}}
    event = _audit_event(ctx, "member.removed")
    assert event.metadata == {"email": "target@acme.example", "role": "developer"}


def _check_invitations_list(ctx, response, changes):
    assert response.json() == page([invitation_json(ctx.invitation)])
    assert response.json()["results"][0]["state"] == "pending"
    assert changes == {}


def _check_invitations_create(ctx, response, changes):
    invitation = Invitation.objects.for_organization(ctx.world.org).get(pk=response.json()["id"])
    assert response.json() == invitation_json(invitation)
    assert (invitation.email, invitation.role, invitation.state, invitation.invited_by) == (
        "new@example.com",
        Role.DEVELOPER,
        "pending",
        ctx.caller,
    )
    assert changes == {"invitation": {"added": 1}, "auditevent": {"added": 1}}
    event = _audit_event(ctx, "member.invited")
    assert event.metadata == {"email": "new@example.com", "role": "developer"}


def _check_invitations_revoke(ctx, response, changes):
    assert response.json() == invitation_json(ctx.invitation)
    assert response.json()["state"] == "revoked"
    assert response.json()["revoked_at"] is not None
    assert changes == {"invitation": {"changed": 1}, "auditevent": {"added": 1}}
    _audit_event(ctx, "member.invitation_revoked")


def _check_keys_list(ctx, response, changes):
    assert response.json() == page([key_json(ctx.key)])
    assert response.json()["results"][0]["name"] == "build"
    assert changes == {}


def _check_keys_create(ctx, response, changes):
    body = response.json()
    key = ApiKey.objects.for_organization(ctx.world.org).get(public_id=body["id"])
    secret = body["secret"]
    assert keyformat.is_well_formed(secret) and secret.startswith("tg_test_")
    stored = ApiKeySecret.objects.get(key=key)
    assert stored.secret_hash == key_services.secret_hash(secret)
    assert body == key_json(key) | {"secret": secret}
    assert body["secrets"] == [
        {"display": f"{secret[:12]}…{secret[-4:]}", "created_at": iso(stored.created_at), "expires_at": None}
    ]
    assert (key.name, key.environment, key.allowed_ips, key.rpm_limit, key.created_by) == (
        "ci",
        "test",
        ["10.0.0.0/8"],
        60,
        ctx.caller,
    )
    assert changes == {"apikey": {"added": 1}, "apikeysecret": {"added": 1}, "auditevent": {"added": 1}}
    event = _audit_event(ctx, "key.created")
    assert (event.target_id, event.metadata) == (
        key.public_id,
        {"name": "ci", "environment": "test", "secret": str(stored)},
    )


def _check_keys_retrieve(ctx, response, changes):
    assert response.json() == key_json(ctx.key)
    assert (response.json()["id"], response.json()["status"]) == (ctx.key.public_id, "active")
    assert changes == {}


def _check_keys_update(ctx, response, changes):
    key = ApiKey.objects.for_organization(ctx.world.org).get(pk=ctx.key.pk)
    assert response.json() == key_json(key)
    assert (key.name, key.allowed_models, key.rpm_limit) == ("renamed", ["llama-*"], 100)
    assert changes == {"apikey": {"changed": 1}, "auditevent": {"added": 1}}
    event = _audit_event(ctx, "key.updated")
    assert event.metadata == {
        "changes": {
            "name": ["build", "renamed"],
            "allowed_models": [[], ["llama-*"]],
            "rpm_limit": [None, 100],
        }
    }


def _check_keys_rotate(ctx, response, changes):
    body = response.json()
    key = ApiKey.objects.for_organization(ctx.world.org).get(pk=ctx.key.pk)
    new, previous = ApiKeySecret.objects.filter(key=key).order_by("-id")
    assert new.secret_hash == key_services.secret_hash(body["secret"])
    assert ctx.started_at + timedelta(hours=1) <= previous.expires_at <= timezone.now() + timedelta(hours=1)
    assert body == key_json(key) | {
        "secret": body["secret"],
        "previous_secret_expires_at": iso(previous.expires_at),
    }
    assert [s["display"] for s in body["secrets"]] == [str(new), str(previous)]
    assert changes == {
        "apikey": {"changed": 1},
        "apikeysecret": {"added": 1, "changed": 1},
        "auditevent": {"added": 1},
    }
    event = _audit_event(ctx, "key.rotated")
    assert event.metadata == {
        "grace_seconds": 3600,
        "new_secret": str(new),
        "previous_secret": str(previous),
        "previous_expires_at": previous.expires_at.isoformat(),
    }


def _check_keys_revoke(ctx, response, changes):
    key = ApiKey.objects.for_organization(ctx.world.org).get(pk=ctx.key.pk)
    assert key.revoked_at is not None
    assert response.json() == key_json(key)
    assert (response.json()["status"], response.json()["secrets"]) == ("revoked", [])
    assert changes == {"apikey": {"changed": 1}, "apikeysecret": {"changed": 1}, "auditevent": {"added": 1}}
    _audit_event(ctx, "key.revoked")


def _check_usage_events_create(ctx, response, changes):
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "results": [{"event_id": str(EVENT_ID), "status": "accepted"}],
    }
    event = UsageEvent.objects.for_organization(ctx.world.org).get()
    assert (event.event_id, event.key_id, event.model, event.input_tokens, event.output_tokens) == (
        EVENT_ID,
        ctx.key.pk,
        "llama-3",
        10,
        5,
    )
    assert UsageRollup.objects.for_organization(ctx.world.org).get().requests == 1
    # The key's last use moves; ingest is metering, not a change anyone audits.
    assert changes == {"apikey": {"changed": 1}, "usageevent": {"added": 1}, "usagerollup": {"added": 1}}


def _check_usage_retrieve(ctx, response, changes):
    body = response.json()
    end = DateTimeField().to_internal_value(body["end"])
    assert ctx.started_at <= end <= timezone.now()
    assert DateTimeField().to_internal_value(body["start"]) == end - timedelta(days=7)
    event = UsageEvent.objects.for_organization(ctx.world.org).get()
    counts = {
        "requests": 1,
        "errors": 0,
        "refusals": 0,
        "input_tokens": 10,
        "output_tokens": 5,
        "cached_tokens": 0,
        "estimated_requests": 0,
        "cost_minor": 0,  # no price is set here
        "currency": "usd",
    }
    day = event.occurred_at.replace(hour=0, minute=0, second=0, microsecond=0)
    assert body == {
        "start": body["start"],
        "end": body["end"],
        "granularity": "day",
        "group_by": [],
        "data": [{"period": iso(day), **counts}],
        "totals": counts,
    }
    assert changes == {}


def _check_billing_upcoming_retrieve(ctx, response, changes):
    body = response.json()
    assert (body["plan"], body["currency"], body["lines"], body["fee_minor"], body["total_minor"]) == (
        "Standard",
        "usd",
        [],
        0,
        0,
    )
    assert changes == {}


def _check_invoices_list(ctx, response, changes):
    assert response.json() == page([invoice_json(ctx.invoice)])
    assert changes == {}


def _check_invoices_retrieve(ctx, response, changes):
    assert response.json() == invoice_json(ctx.invoice)
    assert changes == {}


def _card_json(card_id: str, last4: str, is_default: bool) -> dict:
    return {
        "id": card_id,
        "brand": "visa",
        "last4": last4,
        "exp_month": 12,
        "exp_year": 2030,
        "is_default": is_default,
    }


def _check_payment_methods_list(ctx, response, changes):
    assert response.json() == [_card_json(ctx.first, "4242", True), _card_json(ctx.second, "0341", False)]
    assert changes == {}


def _check_payment_methods_set_default(ctx, response, changes):
    assert response.json() == _card_json(ctx.second, "0341", True)
    assert stripe_adapter.customer_default_payment_method(customer=ctx.customer) == ctx.second
    assert changes == {"auditevent": {"added": 1}}
    event = _audit_event(ctx, "billing.card_made_default")
    assert (event.target_type, event.target_id, event.metadata) == (
        "billing.card",
        ctx.second,
        {"brand": "visa", "last4": "0341"},
    )


def _check_payment_methods_remove(ctx, response, changes):
    assert response.content == b""
    assert [card.id for card in stripe_adapter.cards_list(customer=ctx.customer)] == [ctx.first]
    assert changes == {"auditevent": {"added": 1}}
    _audit_event(ctx, "billing.card_removed")


DETAILS = {
    "email": "ap@acme.example",
    "company_name": "Acme GmbH",
    "address_line1": "Hauptstraße 1",
    "address_line2": "",
    "city": "Berlin",
    "postal_code": "10115",
    "state": "",
    "country": "DE",
    "tax_id_type": "eu_vat",
    "tax_id_value": "DE123456789",
}


def _check_billing_details_retrieve(ctx, response, changes):
    assert response.json() == {name: "" for name in DETAILS} | {"updated_at": None}
    assert changes == {}


def _check_billing_details_update(ctx, response, changes):
    details = BillingDetails.objects.get(organization=ctx.world.org)
    assert response.json() == DETAILS | {"updated_at": iso(details.updated_at)}
    assert (details.company_name, details.tax_id_value) == ("Acme GmbH", "DE123456789")
    assert changes == {"customer": {"added": 1}, "billingdetails": {"added": 1}, "auditevent": {"added": 2}}
    customer = _stripe().v1.customers.retrieve(customer_ensure(organization=ctx.world.org).stripe_customer_id)
    assert (customer.email, customer.name, customer.address.city) == (
        "ap@acme.example",
        "Acme GmbH",
        "Berlin",
    )
    _audit_event(ctx, "billing.details_updated")


def _check_invoices_pay(ctx, response, changes):
    invoice = Invoice.objects.get(pk=ctx.invoice.pk)
    assert invoice.status == Invoice.Status.PAID
    assert response.json() == invoice_json(invoice)
    assert response.json()["hosted_invoice_url"].endswith(invoice.stripe_invoice_id)
    # The declined charge had put the organization past due: paying ends that and restores it.
    assert changes == {"invoice": {"changed": 1}, "organization": {"changed": 1}, "auditevent": {"added": 4}}
    assert list(
        AuditEvent.objects.filter(organization=ctx.world.org)
        .order_by("-id")
        .values_list("action", "actor_id")[:4]
    ) == [
        ("organization.status_changed", None),
        ("dunning.ended", None),
        ("invoice.paid", None),
        ("invoice.pay_requested", ctx.caller.pk),
    ]
    assert Organization.objects.get(pk=ctx.world.org.pk).status == Organization.Status.ACTIVE


def _check_audit_events_list(ctx, response, changes):
    events = AuditEvent.objects.filter(organization=ctx.world.org).order_by("-id")
    assert response.json() == page([audit_event_json(e) for e in events])
    assert [e["action"] for e in response.json()["results"]] == ["key.created", "organization.created"]
    assert changes == {}


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    """A request the operation refuses with 400, and the exact problem it answers."""

    name: str
    errors: dict
    body: dict | None = None
    query: dict | None = None
    code: str = "validation_error"
    detail: str = "The request has invalid fields."


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str  # as written in the OpenAPI document
    permission: str  # what the view requires, spelled out here so a change to it is noticed
    ok_status: int
    check: Callable
    arrange: Callable = _nothing
    body: dict | Callable | None = None
    invalid: tuple[Invalid, ...] = ()
    missing: dict | None = None  # path parameters of an object that does not exist

    def url(self, params: dict) -> str:
        return self.path.format(**params)

    def payload(self, ctx):
        """The success body; a callable builds it from the arranged objects."""
        return self.body(ctx) if callable(self.body) else self.body


def _bad_network(value: str, reason: str, body: dict) -> Invalid:
    message = f"{value!r} is not an IPv4/IPv6 address or CIDR range: {reason}."
    return Invalid(
        f"allowed_ips {value}",
        {"allowed_ips": [message]},
        body={**body, "allowed_ips": [value]},
        code="validation_error",
        detail=message,
    )


OPERATIONS = (
    Operation("organization_retrieve", "GET", "/api/v1/organization", "*", 200, _check_organization_retrieve),
    Operation(
        "organization_update",
        "PATCH",
        "/api/v1/organization",
        Perm.ORG_MANAGE,
        200,
        _check_organization_update,
        body={"name": "Acme Renamed"},
        invalid=(
            Invalid("blank name", {"name": ["This field may not be blank."]}, body={"name": ""}),
            Invalid(
                "long name",
                {"name": ["Ensure this field has no more than 100 characters."]},
                body={"name": "x" * 101},
            ),
            Invalid(
                "not a boolean",
                {"require_mfa": ["Must be a valid boolean."]},
                body={"require_mfa": "perhaps"},
            ),
        ),
    ),
    Operation("members_list", "GET", "/api/v1/members", Perm.MEMBERS_VIEW, 200, _check_members_list),
    Operation(
        "members_retrieve",
        "GET",
        "/api/v1/members/{member_id}",
        Perm.MEMBERS_VIEW,
        200,
        _check_members_retrieve,
        arrange=_a_member,
        missing={"member_id": MISSING_ID},
    ),
    Operation(
        "members_update_role",
        "PATCH",
        "/api/v1/members/{member_id}",
        Perm.MEMBERS_MANAGE,
        200,
        _check_members_update_role,
        arrange=_a_member,
        body={"role": "viewer"},
        missing={"member_id": MISSING_ID},
        invalid=(
            Invalid("unknown role", {"role": ['"emperor" is not a valid choice.']}, body={"role": "emperor"}),
            Invalid("no role", {"role": ["This field is required."]}, body={}),
        ),
    ),
    Operation(
        "members_remove",
        "DELETE",
        "/api/v1/members/{member_id}",
        Perm.MEMBERS_MANAGE,
        204,
        _check_members_remove,
        arrange=_a_member,
        missing={"member_id": MISSING_ID},
    ),
    Operation(
        "invitations_list",
        "GET",
        "/api/v1/invitations",
        Perm.MEMBERS_VIEW,
        200,
        _check_invitations_list,
        arrange=_an_invitation,
    ),
    Operation(
        "invitations_create",
        "POST",
        "/api/v1/invitations",
        Perm.MEMBERS_MANAGE,
        201,
        _check_invitations_create,
        body={"email": "new@example.com", "role": "developer"},
        invalid=(
            Invalid(
                "bad email and unknown role",
                {"email": ["Enter a valid email address."], "role": ['"emperor" is not a valid choice.']},
                body={"email": "not-an-email", "role": "emperor"},
            ),
            Invalid(
                "nothing",
                {"email": ["This field is required."], "role": ["This field is required."]},
                body={},
            ),
        ),
    ),
    Operation(
        "invitations_revoke",
        "POST",
        "/api/v1/invitations/{invitation_id}/revoke",
        Perm.MEMBERS_MANAGE,
        200,
        _check_invitations_revoke,
        arrange=_an_invitation,
        missing={"invitation_id": MISSING_ID},
    ),
    Operation(
        "keys_list",
        "GET",
        "/api/v1/keys",
        Perm.KEYS_VIEW,
        200,
        _check_keys_list,
        arrange=_a_key,
        invalid=(
            Invalid(
                "unknown status", {"status": ['"nope" is not a valid choice.']}, query={"status": "nope"}
            ),
            Invalid(
                "unknown environment",
                {"environment": ['"staging" is not a valid choice.']},
                query={"environment": "staging"},
            ),
        ),
    ),
    Operation(
        "keys_create",
        "POST",
        "/api/v1/keys",
        Perm.KEYS_MANAGE,
        201,
        _check_keys_create,
        body={"name": "ci", "environment": "test", "allowed_ips": ["10.0.0.0/8"], "limits": {"rpm": 60}},
        invalid=(
            Invalid("blank name", {"name": ["This field may not be blank."]}, body={"name": ""}),
            Invalid("no name", {"name": ["This field is required."]}, body={"environment": "test"}),
            Invalid(
                "unknown environment",
                {"environment": ['"staging" is not a valid choice.']},
                body={"name": "ci", "environment": "staging"},
            ),
            Invalid(
                "zero rpm",
                {"limits.rpm": ["Ensure this value is greater than or equal to 1."]},
                body={"name": "ci", "limits": {"rpm": 0}},
            ),
            _bad_network(
                "10.0.0.0/33", "'10.0.0.0/33' does not appear to be an IPv4 or IPv6 network", {"name": "ci"}
            ),
            _bad_network("10.0.0.1/8", "10.0.0.1/8 has host bits set", {"name": "ci"}),
        ),
    ),
    Operation(
        "keys_retrieve",
        "GET",
        "/api/v1/keys/{key_id}",
        Perm.KEYS_VIEW,
        200,
        _check_keys_retrieve,
        arrange=_a_key,
        missing={"key_id": MISSING_KEY_ID},
    ),
    Operation(
        "keys_update",
        "PATCH",
        "/api/v1/keys/{key_id}",
        Perm.KEYS_MANAGE,
        200,
        _check_keys_update,
        arrange=_a_key,
        body={"name": "renamed", "allowed_models": ["llama-*"], "limits": {"rpm": 100}},
        missing={"key_id": MISSING_KEY_ID},
        invalid=(
            Invalid("blank name", {"name": ["This field may not be blank."]}, body={"name": ""}),
            _bad_network("300.1.1.1", "'300.1.1.1' does not appear to be an IPv4 or IPv6 network", {}),
            Invalid(
                "expiry in the past",
                {"expires_at": ["The expiry must be in the future."]},
                body={"expires_at": "2000-01-01T00:00:00Z"},
                code="validation_error",
                detail="The expiry must be in the future.",
            ),
        ),
    ),
    Operation(
        "keys_rotate",
        "POST",
        "/api/v1/keys/{key_id}/rotate",
        Perm.KEYS_MANAGE,
        200,
        _check_keys_rotate,
        arrange=_a_key,
        body={"grace_period": 3600},
        missing={"key_id": MISSING_KEY_ID},
        invalid=(
            Invalid(
                "grace over 7 days",
                {"grace_period": ["Ensure this value is less than or equal to 604800."]},
                body={"grace_period": 7 * 24 * 3600 + 1},
            ),
            Invalid(
                "negative grace",
                {"grace_period": ["Ensure this value is greater than or equal to 0."]},
                body={"grace_period": -1},
            ),
            Invalid(
                "grace not a number",
                {"grace_period": ["A valid integer is required."]},
                body={"grace_period": "a day"},
            ),
        ),
    ),
    Operation(
        "keys_revoke",
        "POST",
        "/api/v1/keys/{key_id}/revoke",
        Perm.KEYS_MANAGE,
        200,
        _check_keys_revoke,
        arrange=_a_key,
        missing={"key_id": MISSING_KEY_ID},
    ),
    Operation(
        "usage_retrieve",
        "GET",
        "/api/v1/usage",
        Perm.USAGE_VIEW,
        200,
        _check_usage_retrieve,
        arrange=_some_usage,
        invalid=(
            Invalid(
                "unknown granularity",
                {"granularity": ['"week" is not a valid choice.']},
                query={"granularity": "week"},
            ),
            Invalid(
                "unknown group",
                {"group_by": ["Unknown groups: region. Use model and/or key."]},
                query={"group_by": "region"},
            ),
            Invalid(
                "start after end",
                {"start": ["start must be before end."]},
                query={"start": "2999-01-01T00:00:00Z"},
            ),
        ),
    ),
    Operation(
        "usage_events_create",
        "POST",
        "/api/v1/usage/events",
        Perm.USAGE_INGEST,
        200,
        _check_usage_events_create,
        arrange=_a_key,
        body=lambda ctx: {"events": [_usage_event(ctx.key, ctx.started_at)]},
        invalid=(
            Invalid(
                "no events", {"events": ["Ensure this field has at least 1 elements."]}, body={"events": []}
            ),
            Invalid("nothing", {"events": ["This field is required."]}, body={}),
        ),
    ),
    Operation(
        "billing_upcoming_retrieve",
        "GET",
        "/api/v1/billing/upcoming",
        Perm.BILLING_VIEW,
        200,
        _check_billing_upcoming_retrieve,
    ),
    Operation(
        "invoices_list",
        "GET",
        "/api/v1/invoices",
        Perm.BILLING_VIEW,
        200,
        _check_invoices_list,
        arrange=_an_invoice,
    ),
    Operation(
        "invoices_retrieve",
        "GET",
        "/api/v1/invoices/{invoice_id}",
        Perm.BILLING_VIEW,
        200,
        _check_invoices_retrieve,
        arrange=_an_invoice,
        missing={"invoice_id": "inv_00000000000000000000000000"},
    ),
    Operation(
        "invoices_pay",
        "POST",
        "/api/v1/invoices/{invoice_id}/pay",
        Perm.BILLING_MANAGE,
        200,
        _check_invoices_pay,
        arrange=_an_open_invoice,
        missing={"invoice_id": "inv_00000000000000000000000000"},
    ),
    Operation(
        "payment_methods_list",
        "GET",
        "/api/v1/payment-methods",
        Perm.BILLING_VIEW,
        200,
        _check_payment_methods_list,
        arrange=_cards,
    ),
    Operation(
        "payment_methods_set_default",
        "POST",
        "/api/v1/payment-methods/{payment_method_id}/default",
        Perm.BILLING_MANAGE,
        200,
        _check_payment_methods_set_default,
        arrange=_cards,
        missing={"payment_method_id": "pm_00000000000000"},
    ),
    Operation(
        "payment_methods_remove",
        "DELETE",
        "/api/v1/payment-methods/{payment_method_id}",
        Perm.BILLING_MANAGE,
        204,
        _check_payment_methods_remove,
        arrange=_cards,
        missing={"payment_method_id": "pm_00000000000000"},
    ),
    Operation(
        "billing_details_retrieve",
        "GET",
        "/api/v1/billing/details",
        Perm.BILLING_VIEW,
        200,
        _check_billing_details_retrieve,
    ),
    Operation(
        "billing_details_update",
        "PATCH",
        "/api/v1/billing/details",
        Perm.BILLING_MANAGE,
        200,
        _check_billing_details_update,
        body=DETAILS,
        invalid=(
            Invalid(
                "long country and bad email",
                {
                    "country": ["Ensure this field has no more than 2 characters."],
                    "email": ["Enter a valid email address."],
                },
                body={"country": "Germany", "email": "nope"},
            ),
            Invalid(
                "unknown tax id kind",
                {"tax_id_type": ['"xx_vat" is not a valid choice.']},
                body={"tax_id_type": "xx_vat", "tax_id_value": "1234"},
            ),
            Invalid(
                "tax id kind without its number",
                {"tax_id_value": ["A tax id needs both its kind and its number."]},
                body={"tax_id_type": "eu_vat"},
                detail="A tax id needs both its kind and its number.",
            ),
            Invalid(
                "country not a code",
                {"country": ["Use the two-letter country code (ISO 3166-1), e.g. DE."]},
                body={"country": "1"},
                detail="Use the two-letter country code (ISO 3166-1), e.g. DE.",
            ),
        ),
    ),
    Operation(
        "audit_events_list",
        "GET",
        "/api/v1/audit-events",
        Perm.AUDIT_VIEW,
        200,
        _check_audit_events_list,
        arrange=_a_key,
        invalid=(
            Invalid(
                "bad since",
                {
                    "since": [
                        "Datetime has wrong format. Use one of these formats instead: "
                        "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                    ]
                },
                query={"since": "yesterday"},
            ),
        ),
    ),
)

ROLES = [role.value for role in Role]
OPERATION_IDS = [op.operation_id for op in OPERATIONS]
WITH_INPUT = [op for op in OPERATIONS if op.invalid]
WITH_OBJECT = [op for op in OPERATIONS if op.missing is not None]


def _view_permission(op: Operation) -> str:
    view = resolve(re.sub(r"\{\w+\}", "1", op.path)).func.view_class
    return view.required_permissions[op.method]


def _role_may(role: str, op: Operation) -> bool:
    permission = _view_permission(op)
    return permission == "*" or permission in ROLE_PERMISSIONS[role]


@pytest.fixture(scope="module")
def schema():
    return openapi_schema()


def _arranged(world, op: Operation, caller, organization=None) -> SimpleNamespace:
    organization = organization or world.org
    owner = world.users[Role.OWNER] if organization == world.org else world.other_owner
    ctx = SimpleNamespace(world=world, caller=caller, key=None, membership=None, invitation=None)
    for name, value in op.arrange(world, organization, owner).items():
        setattr(ctx, name, value)
    ctx.started_at = timezone.now()
    return ctx


# --- the tests ----------------------------------------------------------------------------


def test_the_table_covers_exactly_the_operations_in_the_openapi_document(schema):
    documented = {(path, method.upper()) for path, ops in schema["paths"].items() for method in ops}
    assert documented == {(op.path, op.method) for op in OPERATIONS}
    operation_ids = {op["operationId"] for ops in schema["paths"].values() for op in ops.values()}
    assert operation_ids == set(OPERATION_IDS)
    assert len(OPERATION_IDS) == len(set(OPERATION_IDS)) == 27


@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
def test_view_requires_the_permission_the_table_names(op):
    assert _view_permission(op) == op.permission


@pytest.mark.parametrize("op", [op for op in OPERATIONS if not op.invalid], ids=lambda op: op.operation_id)
def test_operations_without_invalid_cases_take_no_input(schema, op):
    described = schema["paths"][op.path][op.method.lower()]
    assert "requestBody" not in described
    queries = {p["name"] for p in described.get("parameters", []) if p["in"] == "query"}
    assert queries <= {"cursor", "limit"}


def test_role_table_refuses_something_to_every_role_but_owner_and_admin():
    refused = {role: [op.operation_id for op in OPERATIONS if not _role_may(role, op)] for role in ROLES}
    assert refused == {
        "owner": [],
        "admin": [],
        "developer": [
            "organization_update",
            "members_update_role",
            "members_remove",
            "invitations_create",
            "invitations_revoke",
            "billing_upcoming_retrieve",
            "invoices_list",
            "invoices_retrieve",
            "invoices_pay",
            "payment_methods_list",
            "payment_methods_set_default",
            "payment_methods_remove",
            "billing_details_retrieve",
            "billing_details_update",
            "audit_events_list",
        ],
        "billing": [
            "organization_update",
            "members_update_role",
            "members_remove",
            "invitations_create",
            "invitations_revoke",
            "keys_list",
            "keys_create",
            "keys_retrieve",
            "keys_update",
            "keys_rotate",
            "keys_revoke",
            "usage_events_create",
            "audit_events_list",
        ],
        "viewer": [
            "organization_update",
            "members_update_role",
            "members_remove",
            "invitations_create",
            "invitations_revoke",
            "keys_create",
            "keys_update",
            "keys_rotate",
            "keys_revoke",
            "usage_events_create",
            "invoices_pay",
            "payment_methods_set_default",
            "payment_methods_remove",
            "billing_details_update",
        ],
    }


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
def test_each_role_succeeds_or_gets_403_as_the_role_table_says(world, schema, op, role):
    caller = world.users[role]
    ctx = _arranged(world, op, caller)
    before = db_snapshot()
    response = call(session_client(caller), op.method, op.url(ctx.params), op.payload(ctx))
    changes = db_changes(before, db_snapshot())
    if _role_may(role, op):
        assert response.status_code == op.ok_status, response.content
        if op.ok_status != 204:
            assert response["Content-Type"] == "application/json"
        op.check(ctx, response, changes)
    else:
        assert_problem(
            response, 403, "permission_denied", f"Your role ({role}) lacks the {op.permission} permission."
        )
        assert changes == {}
    assert_matches_schema(schema, op.path, op.method, response)


@pytest.mark.parametrize(
    ("op", "case"),
    [(op, case) for op in WITH_INPUT for case in op.invalid],
    ids=[f"{op.operation_id}-{case.name}" for op in WITH_INPUT for case in op.invalid],
)
def test_invalid_input_gets_400_with_field_errors_and_changes_nothing(world, schema, op, case):
    owner = world.users[Role.OWNER]
    ctx = _arranged(world, op, owner)
    before = db_snapshot()
    if op.method == "GET":
        response = call(session_client(owner), op.method, op.url(ctx.params), query=case.query)
    else:
        response = call(session_client(owner), op.method, op.url(ctx.params), case.body)
    assert_problem(response, 400, case.code, case.detail, case.errors)
    assert db_changes(before, db_snapshot()) == {}
    assert_matches_schema(schema, op.path, op.method, response)


@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
def test_no_credential_gets_401_with_www_authenticate(world, schema, op):
    ctx = _arranged(world, op, None)
    before = db_snapshot()
    response = call(session_client(), op.method, op.url(ctx.params), op.payload(ctx))
    assert_problem(response, 401, "not_authenticated", "Authentication credentials were not provided.")
    assert response["WWW-Authenticate"] == 'Bearer realm="tollgate"'
    assert db_changes(before, db_snapshot()) == {}
    assert_matches_schema(schema, op.path, op.method, response)


@pytest.mark.parametrize("op", WITH_OBJECT, ids=lambda op: op.operation_id)
def test_another_organizations_object_answers_exactly_like_a_missing_one(world, schema, op):
    owner = world.users[Role.OWNER]
    foreign = _arranged(world, op, owner, organization=world.other)
    before = db_snapshot()
    client = session_client(owner)
    not_ours = call(client, op.method, op.url(foreign.params), op.payload(foreign))
    missing = call(client, op.method, op.url(op.missing), op.payload(foreign))
    assert_problem(not_ours, 404, "not_found", "Not found.")
    assert_problem(missing, 404, "not_found", "Not found.")
    assert not_ours.content == missing.content
    assert db_changes(before, db_snapshot()) == {}
    assert_matches_schema(schema, op.path, op.method, not_ours)


@pytest.mark.parametrize("op", OPERATIONS, ids=OPERATION_IDS)
def test_naming_an_organization_one_is_not_in_answers_like_a_missing_one(world, op):
    owner = world.users[Role.OWNER]
    ctx = _arranged(world, op, owner)
    before = db_snapshot()
    client = session_client(owner)
    not_mine = call(
        client,
        op.method,
        op.url(ctx.params),
        op.payload(ctx),
        headers={"Tollgate-Organization": world.other.slug},
    )
    missing = call(
        client,
        op.method,
        op.url(ctx.params),
        op.payload(ctx),
        headers={"Tollgate-Organization": "no-such-org"},
    )
    assert_problem(not_mine, 404, "not_found", "Organization not found.")
    assert not_mine.content == missing.content
    assert db_changes(before, db_snapshot()) == {}


def test_every_operation_has_an_object_404_case_when_its_path_names_an_object():
    for op in OPERATIONS:
        assert ("{" in op.path) == (op.missing is not None), op.operation_id


def test_usage_event_for_another_organizations_key_is_rejected_like_an_unknown_key(world):
    foreign = _a_key(world, world.other, world.other_owner)["key"]
    client = session_client(world.users[Role.OWNER])
    before = db_snapshot()
    results = {}
    for key_id in (foreign.public_id, MISSING_KEY_ID):
        event = _usage_event(foreign, timezone.now()) | {"key_id": key_id}
        response = call(client, "POST", "/api/v1/usage/events", {"events": [event]})
        assert response.status_code == 200, response.content
        results[key_id] = response.json()
    assert results[foreign.public_id] == {
        "accepted": 0,
        "duplicates": 0,
        "rejected": 1,
        "results": [
            {
                "event_id": str(EVENT_ID),
                "status": "rejected",
                "reason": f"unknown key_id {foreign.public_id!r}",
            }
        ],
    }
    assert json.dumps(results[foreign.public_id]).replace(foreign.public_id, MISSING_KEY_ID) == json.dumps(
        results[MISSING_KEY_ID]
    )
    assert db_changes(before, db_snapshot()) == {}


def test_an_event_id_another_organization_counted_is_counted_again_for_this_one(world):
    moment = timezone.now().replace(microsecond=0)
    theirs = _a_key(world, world.other, world.other_owner)["key"]
    ours = _a_key(world, world.org, world.users[Role.OWNER])["key"]
    clients = {
        world.other: session_client(world.other_owner),
        world.org: session_client(world.users[Role.OWNER]),
    }
    # The same id and the same time: only the organization tells the two events apart.
    first = call(
        clients[world.other], "POST", "/api/v1/usage/events", {"events": [_usage_event(theirs, moment)]}
    )
    before = db_snapshot()

    response = call(
        clients[world.org], "POST", "/api/v1/usage/events", {"events": [_usage_event(ours, moment)]}
    )

    accepted = {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "results": [{"event_id": str(EVENT_ID), "status": "accepted"}],
    }
    assert (first.status_code, first.json()) == (200, accepted)
    assert (response.status_code, response.json()) == (200, accepted)
    assert db_changes(before, db_snapshot()) == {
        "apikey": {"changed": 1},
        "usageevent": {"added": 1},
        "usagerollup": {"added": 1},
    }
    assert sorted(
        UsageEvent.unscoped.values_list("organization_id", "event_id", "key_id", "occurred_at")
    ) == sorted([(world.other.pk, EVENT_ID, theirs.pk, moment), (world.org.pk, EVENT_ID, ours.pk, moment)])
    assert sorted(
        UsageRollup.unscoped.values_list("organization_id", "key_id", "requests", "input_tokens")
    ) == sorted([(world.other.pk, theirs.pk, 1, 10), (world.org.pk, ours.pk, 1, 10)])
    # Each organization's retry is its own duplicate.
    for organization, key in ((world.other, theirs), (world.org, ours)):
        again = call(
            clients[organization], "POST", "/api/v1/usage/events", {"events": [_usage_event(key, moment)]}
        )
        assert (again.status_code, again.json()) == (
            200,
            {
                "accepted": 0,
                "duplicates": 1,
                "rejected": 0,
                "results": [{"event_id": str(EVENT_ID), "status": "duplicate"}],
            },
        )
    assert UsageEvent.unscoped.count() == 2
