"""Seed the demo: an owner, the "Demo Inc" organization and a staff admin. Safe to run again."""

import os
import secrets
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

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
DEMO_MODELS = ("demo-chat", "demo-embed")
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
    for model in DEMO_MODELS:
        if not ModelPrice.objects.filter(model=model).exists():
            billing_services.model_price_set(
                actor=Actor(user=owner),
                model=model,
                input_per_mtok_minor="50",
                output_per_mtok_minor="150",
                cached_input_per_mtok_minor="25",
                effective_from=since,
            )


# Working hours of a small team: (model, input, cached, output) tokens per hour.
DEMO_HOURLY_USAGE = [("demo-chat", 420_000, 120_000, 96_000), ("demo-embed", 900_000, 0, 0)]


def _demo_usage_ensure(*, organization: Organization, key_name: str, scale: int) -> None:
    """Give an organization last month's usage and this month's so far (once)."""
    from keys.models import ApiKey
    from usage.models import UsageRollup

    now = timezone.now()
    last_month = add_months(month_start(now.date()), -1)
    if UsageRollup.unscoped.filter(organization=organization, billed_period__gte=last_month).exists():
        return
    key = ApiKey.objects.for_organization(organization).get(name=key_name, revoked_at=None)
    hour = datetime.combine(last_month, time(9), tzinfo=UTC)
    rows = []
    while hour < now - timedelta(hours=1):
        if hour.weekday() < 5 and 9 <= hour.hour < 18:
            rows.extend(
                UsageRollup(
                    organization=organization,
                    key=key,
                    model=model,
                    hour=hour,
                    billed_period=month_start(hour.date()),
                    requests=60 // scale,
                    input_tokens=input_tokens // scale,
                    cached_tokens=cached // scale,
                    output_tokens=output // scale,
                )
                for model, input_tokens, cached, output in DEMO_HOURLY_USAGE
            )
        hour += timedelta(hours=1)
    UsageRollup.unscoped.bulk_create(rows)


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
    help = "Create the demo owner, the Demo Inc organization and a staff admin; print their credentials."

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
                _demo_usage_ensure(organization=organization, key_name=DEMO_KEY_NAME, scale=1)
                _demo_usage_ensure(organization=overdue, key_name=OVERDUE_KEY_NAME, scale=10)
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
