import io
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from allauth.account.models import EmailAddress
from django.core.management import CommandError, call_command
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from billing.models import Invoice, ModelPrice
from billing.rating import round_minor
from keys.models import ApiKey, ApiKeySecret
from keys.services import secret_hash
from portal import services
from portal.audit import Actor
from portal.management.commands.demo_seed import DEMO_PRICES, RAW_EVENT_DAYS
from portal.models import AuditEvent, Membership, Organization, User
from tests.factories import make_user
from usage.models import ClosedPeriod, UsageEvent, UsageRollup
from usage.partitions import add_months, month_start

pytestmark = pytest.mark.django_db

OWNER = "demo@tollgate.local"
ADMIN = "admin@tollgate.local"


def seed(password_file) -> str:
    out = io.StringIO()
    key_file = password_file.parent / "demo_api_key"
    call_command("demo_seed", password_file=password_file, key_file=key_file, stdout=out)
    return out.getvalue()


def expected_output(password: str, key_file=None) -> str:
    secret = key_file.read_text().strip() if key_file is not None else "{secret}"
    return (
        "Demo organization  Demo Inc  http://testserver/o/demo/\n"
        "Past due (dunning) Overdue Ltd  http://testserver/o/demo-overdue/billing/\n"
        f"Owner (console)    {OWNER}  password: {password}\n"
        f"Staff (admin)      {ADMIN}  password: {password}  http://testserver/admin/\n"
        f"API key (edge)     {secret}  models: demo-chat, demo-embed, demo-reason\n"
    )


def database_rows() -> dict:
    return {
        "users": list(
            User.objects.order_by("email").values_list(
                "pk", "email", "password", "is_active", "is_staff", "is_superuser"
            )
        ),
        "organizations": list(Organization.objects.values_list("pk", "slug", "name", "status")),
        "memberships": list(
            Membership.objects.all_tenants().values_list("pk", "user__email", "organization__slug", "role")
        ),
        "emails": list(
            EmailAddress.objects.order_by("email").values_list(
                "pk", "user__email", "email", "verified", "primary"
            )
        ),
        "audit": list(
            AuditEvent.objects.order_by("pk").values_list("pk", "action", "actor_label", "target_id")
        ),
        "keys": list(ApiKey.unscoped.values_list("pk", "name", "allowed_models", "rpm_limit")),
        "secrets": list(ApiKeySecret.objects.values_list("pk", "secret_hash", "revoked_at", "expires_at")),
        "prices": list(
            ModelPrice.objects.order_by("model").values_list("pk", "model", "output_per_mtok_minor")
        ),
        "rollups": list(
            UsageRollup.unscoped.order_by("pk").values_list(
                "pk", "key_id", "model", "hour", "billed_period", "requests", "errors", "input_tokens"
            )
        ),
        "events": list(
            UsageEvent.unscoped.order_by("occurred_at", "event_id").values_list(
                "event_id", "key_id", "status", "input_tokens", "output_tokens"
            )
        ),
        "invoices": list(
            Invoice.objects.order_by("pk").values_list("pk", "organization__slug", "total_minor")
        ),
    }


def test_seed_twice_creates_owner_organization_and_admin_once_with_the_same_credentials(
    tmp_path, monkeypatch, frozen_now
):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    password_file = tmp_path / "demo_password"

    first = seed(password_file)
    password = password_file.read_text().strip()
    after_first = database_rows()
    second = seed(password_file)

    assert len(password) == 16
    assert password_file.stat().st_mode & 0o777 == 0o600
    key_file = tmp_path / "demo_api_key"
    assert first == expected_output(password, key_file)
    assert second == first
    assert key_file.stat().st_mode & 0o777 == 0o600
    secret = key_file.read_text().strip()
    assert secret.startswith("tg_live_")
    assert ApiKeySecret.objects.get(key__name="Demo key").secret_hash == secret_hash(secret)
    assert database_rows() == after_first

    owner = User.objects.get(email=OWNER)
    admin = User.objects.get(email=ADMIN)
    organization = Organization.objects.get(slug="demo")
    overdue = Organization.objects.get(slug="demo-overdue")
    assert [row[1:] for row in after_first["users"]] == [
        (ADMIN, admin.password, True, True, True),
        (OWNER, owner.password, True, False, False),
    ]
    assert owner.check_password(password)
    assert admin.check_password(password)
    assert [row[1:] for row in after_first["organizations"]] == [
        ("demo", "Demo Inc", "active"),
        ("demo-overdue", "Overdue Ltd", "active"),
    ]
    assert [row[1:] for row in after_first["memberships"]] == [
        (OWNER, "demo", "owner"),
        (OWNER, "demo-overdue", "owner"),
    ]
    assert [row[1:] for row in after_first["emails"]] == [
        (ADMIN, ADMIN, True, True),
        (OWNER, OWNER, True, True),
    ]
    keys = {key.name: key.public_id for key in ApiKey.unscoped.all()}
    prices = ModelPrice.objects.order_by("model")
    invoices = {invoice.organization_id: invoice.public_id for invoice in Invoice.objects.all()}
    assert [row[1:] for row in after_first["audit"]] == [
        ("organization.created", OWNER, str(organization.pk)),
        ("key.created", OWNER, keys["Demo key"]),
        ("price.set", OWNER, str(prices[0].pk)),
        ("price.set", OWNER, str(prices[1].pk)),
        ("price.set", OWNER, str(prices[2].pk)),
        ("organization.created", OWNER, str(overdue.pk)),
        ("key.created", OWNER, keys["Overdue key"]),
        ("key.created", OWNER, keys["Search backend"]),
        ("key.created", OWNER, keys["Support bot"]),
        ("key.created", OWNER, keys["Staging"]),
        ("invoice.built", "system", invoices[organization.pk]),
        ("invoice.built", "system", invoices[overdue.pk]),
    ]
    assert sorted(row[1:] for row in after_first["keys"]) == [
        ("Demo key", ["demo-*"], 600),
        ("Overdue key", [], None),
        ("Search backend", ["demo-embed", "demo-chat"], 1200),
        ("Staging", ["demo-chat"], 60),
        ("Support bot", ["demo-chat", "demo-reason"], 120),
    ]
    assert [row[1:] for row in after_first["prices"]] == [
        ("demo-chat", Decimal("150.000000")),
        ("demo-embed", Decimal("0.000000")),
        ("demo-reason", Decimal("1200.000000")),
    ]
    assert after_first["rollups"] and after_first["events"]


@pytest.mark.clock
def test_seed_gives_the_demo_last_months_closed_invoice_and_this_months_usage(
    tmp_path, monkeypatch, frozen_now
):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    seed(tmp_path / "demo_password")
    seed(tmp_path / "demo_password")

    organization = Organization.objects.get(slug="demo")
    this_month = month_start(timezone.now().date())
    last_month = add_months(this_month, -1)
    invoice = Invoice.objects.get(organization=organization)
    assert (invoice.organization, invoice.period, invoice.status) == (organization, last_month, "draft")
    assert ClosedPeriod.objects.filter(period=last_month).exists()
    lines = list(invoice.lines.values_list("model", "tokens", "quantity", "amount_minor"))
    # Every line is the month's rolled-up tokens at the demo prices (cents per million), rounded once.
    expected = []
    for model, prices in DEMO_PRICES.items():
        sums = UsageRollup.unscoped.filter(
            organization=organization, billed_period=last_month, model=model
        ).aggregate(
            input=Sum(F("input_tokens") - F("cached_tokens")),
            cached_input=Sum("cached_tokens"),
            output=Sum("output_tokens"),
        )
        for tokens, price in zip(("input", "cached_input", "output"), map(Decimal, prices), strict=True):
            if sums[tokens] and price:
                expected.append((model, tokens, sums[tokens], round_minor(sums[tokens] * price / 1_000_000)))
    assert sorted(lines) == sorted(expected)
    assert {line[0] for line in lines} == {"demo-chat", "demo-embed", "demo-reason"}
    assert invoice.total_minor == sum(line[3] for line in lines)
    # This month's usage so far is billed in this month, which stays open.
    this_months = UsageRollup.unscoped.filter(
        organization=organization, hour__gte=datetime.combine(this_month, time.min, tzinfo=UTC)
    )
    assert set(this_months.values_list("billed_period", flat=True)) <= {this_month}


@pytest.mark.clock
def test_seed_gives_weeks_of_usage_over_several_keys_and_models_and_recent_raw_events_with_failures(
    tmp_path, monkeypatch, frozen_now
):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)

    seed(tmp_path / "demo_password")

    organization = Organization.objects.get(slug="demo")
    rollups = UsageRollup.unscoped.filter(organization=organization)
    assert set(rollups.values_list("key__name", flat=True)) == {
        "Demo key",
        "Search backend",
        "Support bot",
        "Staging",
    }
    assert set(rollups.values_list("model", flat=True)) == {"demo-chat", "demo-embed", "demo-reason"}
    first_hour = datetime.combine(add_months(month_start(frozen_now.date()), -1), time.min, tzinfo=UTC)
    assert rollups.order_by("hour").values_list("hour", flat=True)[0] == first_hour
    assert rollups.filter(errors__gt=0).exists()
    # The weeks seeded as rollups only count their refusals too.
    assert rollups.filter(hour__lt=first_hour + timedelta(days=7), refusals__gt=0).exists()
    # The last days are raw events, up to now, as the edge reports them and the ingestion stores them.
    raw_from = datetime.combine(frozen_now.date() - timedelta(days=RAW_EVENT_DAYS - 1), time.min, tzinfo=UTC)
    events = UsageEvent.unscoped.filter(organization=organization)
    assert events.count() > 1000
    assert events.order_by("occurred_at").values_list("occurred_at", flat=True)[0] >= raw_from
    assert events.order_by("-occurred_at").values_list("occurred_at", flat=True)[0] <= frozen_now
    statuses = set(events.values_list("status", flat=True))
    assert {200, 403, 429} <= statuses
    refusals = set(events.exclude(refusal="").values_list("status", "refusal"))
    assert refusals == {(429, "rate_limit_rpm"), (429, "budget_exceeded"), (403, "model_not_allowed")}
    assert statuses & {502, 504}
    assert not events.filter(status__gte=400).exclude(input_tokens=0, output_tokens=0).exists()
    assert not events.filter(status=200, latency_ms__isnull=True).exists()
    # Every rollup of those days is exactly its raw events: none was also seeded as a rollup.
    by_hour = {
        (row["key_id"], row["model"], row["hour"]): row
        for row in events.annotate(hour=TruncHour("occurred_at"))
        .values("key_id", "model", "hour")
        .annotate(
            requests=Count("event_id"),
            errors=Count("event_id", filter=Q(status__gte=400)),
            refusals=Count("event_id", filter=~Q(refusal="")),
            tokens=Sum("input_tokens"),
        )
    }
    recent = {
        (row.key_id, row.model, row.hour): {
            "key_id": row.key_id,
            "model": row.model,
            "hour": row.hour,
            "requests": row.requests,
            "errors": row.errors,
            "refusals": row.refusals,
            "tokens": row.input_tokens,
        }
        for row in rollups.filter(hour__gte=raw_from)
    }
    assert recent == by_hour


def test_seed_again_later_adds_only_the_requests_that_ended_in_between(
    tmp_path, monkeypatch, frozen_now, time_machine
):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    seed(tmp_path / "demo_password")
    before = set(UsageEvent.unscoped.values_list("event_id", flat=True))
    requests_before = UsageRollup.unscoped.aggregate(total=Sum("requests"))["total"]
    later = frozen_now + timedelta(minutes=20)
    time_machine.move_to(later, tick=False)

    seed(tmp_path / "demo_password")

    after = UsageEvent.unscoped.all()
    added = after.exclude(event_id__in=before)
    assert set(after.filter(occurred_at__lte=frozen_now).values_list("event_id", flat=True)) == before
    assert added.exists()
    assert not added.filter(occurred_at__lte=frozen_now).exists()
    assert not added.filter(occurred_at__gt=later).exists()
    assert UsageRollup.unscoped.aggregate(total=Sum("requests"))["total"] == requests_before + added.count()


def test_seed_mints_a_new_demo_secret_when_the_stored_one_is_lost(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "chosen-demo-password-9")
    password_file = tmp_path / "demo_password"
    seed(password_file)
    key_file = tmp_path / "demo_api_key"
    first_secret = key_file.read_text().strip()
    key_file.unlink()

    output = seed(password_file)

    second_secret = key_file.read_text().strip()
    assert second_secret != first_secret
    assert output == expected_output("chosen-demo-password-9", key_file)
    key = ApiKey.unscoped.get(name="Demo key")
    assert [s.secret_hash for s in key.secrets.live()] == [secret_hash(second_secret)]


def test_seed_uses_demo_password_from_the_environment_and_writes_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "chosen-demo-password-9")
    password_file = tmp_path / "demo_password"

    output = seed(password_file)

    assert output == expected_output("chosen-demo-password-9", tmp_path / "demo_api_key")
    assert not password_file.exists()
    assert User.objects.get(email=OWNER).check_password("chosen-demo-password-9")
    assert User.objects.get(email=ADMIN).check_password("chosen-demo-password-9")


def test_seed_restores_the_printed_password_after_it_was_changed(tmp_path, monkeypatch):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    password_file = tmp_path / "demo_password"
    seed(password_file)
    password = password_file.read_text().strip()
    owner = User.objects.get(email=OWNER)
    owner.set_password("someone-else-chose-this-1")
    owner.save()

    output = seed(password_file)

    assert output == expected_output(password, tmp_path / "demo_api_key")
    owner.refresh_from_db()
    assert owner.check_password(password)
    assert User.objects.count() == 2
    assert Organization.objects.count() == 2


def test_seeded_owner_logs_in_to_the_demo_organization(client, tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "chosen-demo-password-9")
    seed(tmp_path / "demo_password")

    login = client.post("/accounts/login/", {"login": OWNER, "password": "chosen-demo-password-9"})
    home = client.get("/")
    dashboard = client.get("/o/demo/")

    assert login.status_code == 302
    assert login["Location"] == "/"
    assert home.status_code == 302
    assert home["Location"] == "/o/demo/"
    assert dashboard.status_code == 200
    assert dashboard.context["organization"].slug == "demo"
    assert dashboard.context["membership"].role == "owner"


def test_seeded_admin_logs_in_to_the_django_admin(client, tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "chosen-demo-password-9")
    seed(tmp_path / "demo_password")

    login = client.post(
        "/admin/login/?next=/admin/", {"username": ADMIN, "password": "chosen-demo-password-9"}
    )
    index = client.get("/admin/")

    assert login.status_code == 302
    assert login["Location"] == "/admin/"
    assert index.status_code == 200
    assert index.context["user"].email == ADMIN


def test_seed_refuses_a_demo_organization_that_belongs_to_someone_else(tmp_path, monkeypatch):
    monkeypatch.setenv("DEMO_PASSWORD", "chosen-demo-password-9")
    stranger = make_user("stranger@example.com")
    services.organization_create(actor=Actor(user=stranger), name="Not the demo", slug="demo")

    with pytest.raises(CommandError) as error:
        seed(tmp_path / "demo_password")

    assert str(error.value) == (
        "The organization 'demo' exists and demo@tollgate.local is not its owner; "
        "this database holds other data. Seed an empty database instead."
    )
    assert list(User.objects.values_list("email", flat=True)) == ["stranger@example.com"]
    assert list(Organization.objects.values_list("slug", "name")) == [("demo", "Not the demo")]


@pytest.mark.clock
def test_seed_with_stripe_pays_the_demo_invoice_and_leaves_the_overdue_organization_past_due(
    tmp_path, monkeypatch, stripe_settings, stripe_api, django_capture_on_commit_callbacks
):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    with django_capture_on_commit_callbacks(execute=True):
        seed(tmp_path / "demo_password")
    with django_capture_on_commit_callbacks(execute=True):
        seed(tmp_path / "demo_password")  # again: no second card, no second charge

    demo = Organization.objects.get(slug="demo")
    overdue = Organization.objects.get(slug="demo-overdue")
    paid = Invoice.objects.get(organization=demo)
    unpaid = Invoice.objects.get(organization=overdue)
    assert (paid.status, unpaid.status) == ("paid", "open")
    assert (demo.status, overdue.status, overdue.status_reason) == ("active", "past_due", "billing")
    for organization, brand_last4 in ((demo, "4242"), (overdue, "0341")):
        customer = organization_customer(organization)
        cards = stripe_api.v1.payment_methods.list(params={"customer": customer, "type": "card"}).data
        assert [card.card.last4 for card in cards] == [brand_last4]
    charges = stripe_api.v1.charges.list(params={"customer": organization_customer(demo)}).data
    assert [(charge.status, charge.amount) for charge in charges] == [("succeeded", paid.total_minor)]


def organization_customer(organization) -> str:
    from billing.models import Customer

    return Customer.objects.get(organization=organization).stripe_customer_id
