"""Seed the demo: an owner, the "Demo Inc" organization, its keys and weeks of their usage, last
month's invoice, a past-due organization and a staff admin. Safe to run again."""

import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from random import Random
from typing import NamedTuple

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from edge.events import REFUSAL_REASONS, SCHEMA_VERSION
from edge.records import Price
from portal import services
from portal.audit import Actor
from portal.env import env_str
from portal.errors import DomainError
from portal.models import Membership, Organization, User
from portal.roles import Role
from usage.partitions import add_months, month_start

OWNER_EMAIL = "demo@tollgate.local"
ADMIN_EMAIL = "admin@tollgate.local"
ORGANIZATION_NAME = "Demo Inc"
ORGANIZATION_SLUG = "demo"


def demo_password(*, path: Path) -> str:
    """Return DEMO_PASSWORD, else the password stored at ``path``, else a new one stored there."""
    password = env_str("DEMO_PASSWORD", "")
    if password:
        return password
    if path.exists():
        stored = path.read_text().strip()
        if stored:
            return stored
    password = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    return password


def _user_ensure(*, email: str, password: str, superuser: bool) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        create = User.objects.create_superuser if superuser else User.objects.create_user
        user = create(email=email, password=password)
    else:
        # The printed credentials must work, even after someone changed the password.
        changed = []
        if not user.check_password(password):
            user.set_password(password)
            changed.append("password")
        for flag in ("is_active", *(("is_staff", "is_superuser") if superuser else ())):
            if not getattr(user, flag):
                setattr(user, flag, True)
                changed.append(flag)
        if changed:
            user.save(update_fields=changed)
    # Sign-up requires a verified address before login; the demo users skip the email round trip.
    address, _ = EmailAddress.objects.get_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    if not (address.verified and address.primary):
        address.verified = address.primary = True
        address.save(update_fields=["verified", "primary"])
    return user


def _organization_ensure(*, owner: User) -> Organization:
    organization = Organization.objects.filter(slug=ORGANIZATION_SLUG).first()
    if organization is None:
        return services.organization_create(
            actor=Actor(user=owner), name=ORGANIZATION_NAME, slug=ORGANIZATION_SLUG
        )
    is_owner = Membership.objects.for_organization(organization).filter(user=owner, role=Role.OWNER).exists()
    if not is_owner:
        raise CommandError(
            f"The organization {ORGANIZATION_SLUG!r} exists and {OWNER_EMAIL} is not its owner; "
            "this database holds other data. Seed an empty database instead."
        )
    return organization


DEMO_KEY_NAME = "Demo key"
DEMO_MODELS = ("demo-chat", "demo-embed", "demo-reason")
# Cents per million tokens: (input, cached input, output), from the start of last month.
DEMO_PRICES = {
    "demo-chat": ("50", "25", "150"),
    "demo-embed": ("10", "10", "0"),
    "demo-reason": ("300", "150", "1200"),
}
OVERDUE_NAME = "Overdue Ltd"
OVERDUE_SLUG = "demo-overdue"
OVERDUE_KEY_NAME = "Overdue key"
# Stripe's test cards: one that pays, one that is declined.
GOOD_CARD = "pm_card_visa"
DECLINED_CARD = "pm_card_chargeCustomerFail"


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")


def _demo_key_ensure(*, owner: User, organization: Organization, path: Path) -> str:
    """Return the demo key's secret: kept in ``path`` (mode 600) because it is shown only once."""
    from keys import services as key_services
    from keys.models import ApiKey

    key = ApiKey.objects.for_organization(organization).filter(name=DEMO_KEY_NAME, revoked_at=None).first()
    stored = path.read_text().strip() if path.exists() else ""
    if (
        key is not None
        and stored
        and key.secrets.live().filter(secret_hash=key_services.secret_hash(stored)).exists()
    ):
        return stored
    if key is None:
        key, secret = key_services.api_key_create(
            actor=Actor(user=owner),
            organization=organization,
            name=DEMO_KEY_NAME,
            allowed_models=["demo-*"],
            rpm_limit=600,
            budget_monthly_minor=10_000,
        )
    else:
        # The stored secret is gone: mint a new one on the same key.
        key, secret, _previous = key_services.api_key_rotate(
            actor=Actor(user=owner), key=key, grace_period=timedelta(0)
        )
    _write_secret(path, secret)
    return secret


def _demo_prices_ensure(*, owner: User) -> None:
    from billing import services as billing_services
    from billing.models import ModelPrice

    # From the start of last month, so that the demo's last-month usage is priced.
    since = datetime.combine(add_months(month_start(timezone.now().date()), -1), time.min, tzinfo=UTC)
    for model, (input_price, cached_price, output_price) in DEMO_PRICES.items():
        if not ModelPrice.objects.filter(model=model).exists():
            billing_services.model_price_set(
                actor=Actor(user=owner),
                model=model,
                input_per_mtok_minor=input_price,
                output_per_mtok_minor=output_price,
                cached_input_per_mtok_minor=cached_price,
                effective_from=since,
            )


@dataclass(frozen=True)
class Traffic:
    """One key's calls to one model: how many in a working hour, how big, what goes wrong."""

    model: str
    busy_requests: int  # per working hour (09:00-18:00 UTC on weekdays); a tenth at other times
    input_tokens: int  # per request, on average
    cached_tokens: int
    output_tokens: int
    latency_ms: int
    # (status, the edge's error code, share of requests): refusals carry no tokens, nor do 5xx.
    failures: tuple[tuple[int, str, float], ...] = ()


UPSTREAM_FAILURES = ((502, "upstream_unavailable", 0.004), (504, "upstream_timeout", 0.003))
RATE_LIMITED = (429, "rate_limit_rpm", 0.04)

# The demo's keys besides the one whose secret is printed: (name, settings, traffic).
DEMO_KEYS = (
    (
        "Search backend",
        {
            "allowed_models": ["demo-embed", "demo-chat"],
            "rpm_limit": 1200,
            "tpm_limit": 2_000_000,
            "concurrency_limit": 16,
            "budget_monthly_minor": 20_000,
        },
        (
            Traffic("demo-embed", 40, 1_500, 0, 0, 120, UPSTREAM_FAILURES),
            Traffic("demo-chat", 12, 2_400, 1_200, 300, 1_400, UPSTREAM_FAILURES),
        ),
    ),
    (
        "Support bot",
        {
            "allowed_models": ["demo-chat", "demo-reason"],
            "rpm_limit": 120,
            "tpm_limit": 300_000,
            "concurrency_limit": 4,
            "budget_monthly_minor": 5_000,
        },
        (
            Traffic("demo-chat", 25, 1_100, 400, 350, 1_800, (*UPSTREAM_FAILURES, RATE_LIMITED)),
            Traffic(
                "demo-reason",
                4,
                3_000,
                0,
                1_600,
                9_000,
                (*UPSTREAM_FAILURES, RATE_LIMITED, (429, "budget_exceeded", 0.1)),
            ),
        ),
    ),
    (
        "Staging",
        {"environment": "test", "allowed_models": ["demo-chat"], "rpm_limit": 60, "concurrency_limit": 2},
        (
            Traffic("demo-chat", 6, 800, 0, 200, 1_500, UPSTREAM_FAILURES),
            Traffic("demo-reason", 1, 500, 0, 0, 5, ((403, "model_not_allowed", 1.0),)),
        ),
    ),
)
DEMO_KEY_TRAFFIC = (
    Traffic("demo-chat", 30, 7_000, 2_000, 1_600, 2_000, UPSTREAM_FAILURES),
    Traffic("demo-embed", 15, 60_000, 0, 0, 300, UPSTREAM_FAILURES),
)
OVERDUE_KEY_TRAFFIC = (Traffic("demo-chat", 6, 7_000, 2_000, 1_600, 2_000, UPSTREAM_FAILURES),)
# The last days of history are raw usage events (the request log's rows), ingested as the edge's
# would be; the weeks before are hourly rollups only, which is all the charts and invoices read.
RAW_EVENT_DAYS = 3


def _demo_keys_ensure(*, owner: User, organization: Organization) -> None:
    """Create the demo's other keys, once each (their secrets are never needed)."""
    from keys import services as key_services
    from keys.models import ApiKey

    for name, fields, _traffic in DEMO_KEYS:
        if not ApiKey.objects.for_organization(organization).filter(name=name).exists():
            key_services.api_key_create(
                actor=Actor(user=owner), organization=organization, name=name, **fields
            )


class Request(NamedTuple):
    """One simulated call, with the numbers the edge's usage event carries."""

    ended: datetime
    status: int
    reason: str  # why the call failed or was refused: a refusal reason, or the edge's error code
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    latency_ms: float
    cost_micro_minor: int
    bits: int  # 128 random bits for its ids


def _hour_requests(*, key, traffic: Traffic, hour: datetime) -> list[Request]:
    """Return one hour of a key's calls to a model.

    The numbers come from a generator seeded with the key, the model and the hour, so every
    run of the seed makes the very same requests, ids included.
    """
    random = Random(f"{key.public_id}|{traffic.model}|{hour.isoformat()}")
    busy = hour.weekday() < 5 and 9 <= hour.hour < 18
    expected = traffic.busy_requests if busy else traffic.busy_requests / 10
    input_price, cached_price, output_price = (Decimal(value) for value in DEMO_PRICES[traffic.model])
    price = Price(input=input_price, output=output_price, cached_input=cached_price)
    requests = []
    for _ in range(round(expected * random.uniform(0.6, 1.4))):
        ended = hour + timedelta(seconds=random.uniform(0, 3600))
        status, reason = 200, ""
        draw = random.random()
        for failure_status, failure_reason, share in traffic.failures:
            if draw < share:
                status, reason = failure_status, failure_reason
                break
            draw -= share
        if status == 200:
            input_tokens = max(1, round(traffic.input_tokens * random.uniform(0.3, 1.7)))
            cached = min(input_tokens, round(traffic.cached_tokens * random.uniform(0, 2)))
            output = round(traffic.output_tokens * random.uniform(0.3, 1.7))
            latency = traffic.latency_ms * random.uniform(0.5, 2)
        else:
            input_tokens = cached = output = 0
            latency = traffic.latency_ms * (10 if status == 504 else random.uniform(0.5, 2))
        cost = price.cost_micro_minor(input_tokens, output, cached)
        requests.append(
            Request(
                ended, status, reason, input_tokens, cached, output, latency, cost, random.getrandbits(128)
            )
        )
    return requests


def _edge_event(*, key, traffic: Traffic, request: Request) -> dict:
    """Return the usage event the edge would have sent for ``request`` (edge/events.py)."""
    ended_ms = int(request.ended.timestamp() * 1000)
    # A UUIDv7 as the edge mints it: milliseconds, version 7, variant 10, then random bits.
    random_a, random_b = request.bits >> 116, request.bits & (1 << 62) - 1
    event_id = uuid.UUID(int=ended_ms << 80 | 0x7 << 76 | random_a << 64 | 0b10 << 62 | random_b)
    event = {
        "v": SCHEMA_VERSION,
        "event_id": str(event_id),
        "request_id": f"{request.bits:032x}",
        "key_id": key.public_id,
        "org_id": key.organization_id,
        "environment": key.environment,
        "endpoint": "embeddings" if traffic.model == "demo-embed" else "chat.completions",
        "model": traffic.model,
        "stream": False,
        "status": request.status,
        "input_tokens": request.input_tokens,
        "output_tokens": request.output_tokens,
        "cached_tokens": request.cached_tokens,
        "estimated": False,
        "cost_micro_minor": request.cost_micro_minor,
        "latency_ms": round(request.latency_ms, 3),
        "ttft_ms": round(request.latency_ms * 0.2, 3) if request.output_tokens else None,
        "upstream": "http://127.0.0.1:9001" if request.status == 200 else "",
        "started_at_ms": int(ended_ms - request.latency_ms),
        "ended_at_ms": ended_ms,
    }
    if request.reason in REFUSAL_REASONS:
        event["refusal"] = request.reason
    return event


def _demo_usage_ensure(*, organization: Organization, traffic: dict[str, tuple[Traffic, ...]]) -> None:
    """Give an organization's keys their calls since the start of last month, up to now.

    Older days become hourly rollups; the last RAW_EVENT_DAYS go through the usage ingestion as
    raw events (with their rollups). Event ids and rollup rows are the same on every run, so a
    second run adds only the requests that ended since the first.
    """
    from keys.models import ApiKey
    from usage.ingest import event_from_edge, usage_events_ingest
    from usage.models import UsageRollup

    now = timezone.now()
    raw_from = datetime.combine(now.date() - timedelta(days=RAW_EVENT_DAYS - 1), time.min, tzinfo=UTC)
    first_hour = datetime.combine(add_months(month_start(now.date()), -1), time.min, tzinfo=UTC)
    keys = {key.name: key for key in ApiKey.objects.for_organization(organization).filter(name__in=traffic)}
    directory = {key.public_id: (key.pk, organization.pk) for key in keys.values()}
    rollups, raw = [], []
    for name, streams in traffic.items():
        key = keys[name]
        for stream in streams:
            hour = first_hour
            while hour <= now:
                requests = _hour_requests(key=key, traffic=stream, hour=hour)
                if hour >= raw_from:
                    raw.extend(
                        event_from_edge(_edge_event(key=key, traffic=stream, request=request), directory)
                        for request in requests
                        if request.ended <= now
                    )
                elif requests:
                    rollups.append(_rollup_of(key=key, model=stream.model, hour=hour, requests=requests))
                hour += timedelta(hours=1)
    # A rollup already there (made from raw events when its day was recent) stays as it is.
    UsageRollup.unscoped.bulk_create(rollups, ignore_conflicts=True)
    usage_events_ingest(raw)


def _rollup_of(*, key, model: str, hour: datetime, requests: list[Request]):
    """Return the hourly rollup the ingestion would make of ``requests``."""
    from usage.models import UsageRollup

    return UsageRollup(
        organization_id=key.organization_id,
        key=key,
        model=model,
        hour=hour,
        billed_period=month_start(hour.date()),
        requests=len(requests),
        errors=sum(1 for request in requests if request.status >= 400),
        refusals=sum(1 for request in requests if request.reason in REFUSAL_REASONS),
        input_tokens=sum(request.input_tokens for request in requests),
        output_tokens=sum(request.output_tokens for request in requests),
        cached_tokens=sum(request.cached_tokens for request in requests),
        cost_micro_minor=sum(request.cost_micro_minor for request in requests),
    )


def _overdue_organization_ensure(*, owner: User) -> Organization:
    """A second organization of the demo owner whose card is declined: it shows dunning."""
    from keys import services as key_services
    from keys.models import ApiKey

    organization = Organization.objects.filter(slug=OVERDUE_SLUG).first()
    if organization is None:
        organization = services.organization_create(
            actor=Actor(user=owner), name=OVERDUE_NAME, slug=OVERDUE_SLUG
        )
    if not ApiKey.objects.for_organization(organization).filter(name=OVERDUE_KEY_NAME).exists():
        key_services.api_key_create(actor=Actor(user=owner), organization=organization, name=OVERDUE_KEY_NAME)
    return organization


def _last_month_close() -> None:
    """Close last month once, so that the demo shows its invoices."""
    from billing.closing import invoice_close_period
    from usage.models import ClosedPeriod

    last_month = add_months(month_start(timezone.now().date()), -1)
    if not ClosedPeriod.objects.filter(period=last_month).exists():
        invoice_close_period(period=last_month)


def _demo_stripe_ensure(*, owner: User, organization: Organization, card: str) -> None:
    """Put ``card`` on file in Stripe (once) and charge the organization's draft invoices to it."""
    from billing import services as billing_services
    from billing import stripe_adapter
    from billing.errors import PaymentDeclined
    from billing.models import Invoice

    customer = billing_services.customer_ensure(organization=organization).stripe_customer_id
    if not stripe_adapter.cards_list(customer=customer):
        intent = billing_services.payment_method_setup_start(organization=organization)
        stripe_adapter.setup_intent_confirm(setup_intent=intent.id, payment_method=card)
        billing_services.payment_method_add(
            actor=Actor(user=owner), organization=organization, setup_intent_id=intent.id
        )
    for invoice in Invoice.objects.filter(organization=organization, status=Invoice.Status.DRAFT):
        try:
            billing_services.invoice_push(invoice=invoice)
        except PaymentDeclined:
            pass  # the overdue organization's card is meant to be declined: it is now past due


class Command(BaseCommand):
    help = (
        "Create the demo owner, the Demo Inc organization with its keys and usage history, and a staff "
        "admin; print their credentials."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--password-file",
            type=Path,
            default=settings.BASE_DIR / ".run" / "demo_password",
            help="Where the generated password is kept when DEMO_PASSWORD is not set.",
        )
        parser.add_argument(
            "--key-file",
            type=Path,
            default=settings.BASE_DIR / ".run" / "demo_api_key",
            help="Where the demo API key's secret is kept (it is shown only once).",
        )

    def handle(self, *args, password_file: Path, key_file: Path, **options):
        password = demo_password(path=password_file)
        try:
            with transaction.atomic():
                owner = _user_ensure(email=OWNER_EMAIL, password=password, superuser=False)
                _user_ensure(email=ADMIN_EMAIL, password=password, superuser=True)
                organization = _organization_ensure(owner=owner)
                api_key = _demo_key_ensure(owner=owner, organization=organization, path=key_file)
                _demo_prices_ensure(owner=owner)
                overdue = _overdue_organization_ensure(owner=owner)
                _demo_keys_ensure(owner=owner, organization=organization)
                _demo_usage_ensure(
                    organization=organization,
                    traffic={DEMO_KEY_NAME: DEMO_KEY_TRAFFIC} | {name: t for name, _f, t in DEMO_KEYS},
                )
                _demo_usage_ensure(organization=overdue, traffic={OVERDUE_KEY_NAME: OVERDUE_KEY_TRAFFIC})
                _last_month_close()
            # Stripe (localstripe in the demo) after the commit: each Stripe id is stored as it returns.
            if settings.STRIPE_SECRET_KEY:
                _demo_stripe_ensure(owner=owner, organization=organization, card=GOOD_CARD)
                _demo_stripe_ensure(owner=owner, organization=overdue, card=DECLINED_CARD)
        except DomainError as error:
            raise CommandError(error.message) from error
        self.stdout.write(
            f"Demo organization  {organization.name}  {settings.SITE_URL}/o/{organization.slug}/\n"
            f"Past due (dunning) {overdue.name}  {settings.SITE_URL}/o/{overdue.slug}/billing/\n"
            f"Owner (console)    {OWNER_EMAIL}  password: {password}\n"
            f"Staff (admin)      {ADMIN_EMAIL}  password: {password}  {settings.SITE_URL}/admin/\n"
            f"API key (edge)     {api_key}  models: {', '.join(DEMO_MODELS)}"
        )
