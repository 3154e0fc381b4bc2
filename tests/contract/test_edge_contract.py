"""The data-plane contract: what the portal writes to Redis is what the edge reads.

The portal's side is keys/edge_record.py (via keys.publication) and billing/edge_prices.py;
the edge's side is edge/records.py. Both run here against one real Redis.
"""

import ipaddress
import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import edge_prices
from billing.services import model_price_set
from edge import records
from edge.records import KeyRecord, Limits, Price, RecordError, parse_key_record, parse_price
from keys import edge_record, services
from keys.publication import edge_redis
from portal.audit import Actor
from portal.services import organization_set_limits, organization_set_status
from tests.factories import make_org, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return make_user()


@pytest.fixture
def actor(owner):
    return Actor(user=owner)


@pytest.fixture
def organization(owner):
    return make_org(owner)


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """Run a service and its on-commit publication, as a real request would."""

    def run(service, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return service(**kwargs)

    return run


def published(plaintext: str) -> bytes:
    raw = edge_redis().get(records.KEY_PREFIX + services.secret_hash(plaintext))
    assert raw is not None
    return raw


def test_both_sides_name_the_same_redis_keys_channel_and_version():
    assert records.SCHEMA_VERSION == edge_record.SCHEMA_VERSION == 1
    assert records.KEY_PREFIX == edge_record.KEY_PREFIX == "tg:key:"
    assert records.INVALIDATE_CHANNEL == edge_record.INVALIDATE_CHANNEL == "tg:invalidate"
    assert records.PRICE_PREFIX == edge_prices.PRICE_PREFIX == "tg:price:"


def test_key_with_every_field_set_parses_into_the_exact_key_record(actor, organization, committed):
    committed(
        organization_set_limits,
        actor=actor,
        organization=organization,
        rpm_limit=1000,
        tpm_limit=100_000,
        concurrency_limit=20,
        budget_monthly_minor=20_000,
    )
    expires_at = timezone.now() + timedelta(days=30)
    key, plaintext = committed(
        services.api_key_create,
        actor=actor,
        organization=organization,
        name="everything",
        environment="test",
        allowed_models=["gpt-4o*", "llama-3.1-8b"],
        allowed_ips=["10.0.0.0/8", "2001:db8::/32"],
        rpm_limit=600,
        tpm_limit=50_000,
        concurrency_limit=4,
        budget_monthly_minor=5000,
        expires_at=expires_at,
    )

    record = parse_key_record(published(plaintext))

    assert record == KeyRecord(
        key_id=key.public_id,
        org_id=organization.pk,
        org_status="active",
        environment="test",
        status="active",
        expires_at=int(expires_at.timestamp()),
        secret_expires_at=None,
        allowed_models=("gpt-4o*", "llama-3.1-8b"),
        allowed_networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
        key_limits=Limits(rpm=600, tpm=50_000, concurrency=4, budget_minor=5000),
        org_limits=Limits(rpm=1000, tpm=100_000, concurrency=20, budget_minor=20_000),
        org_status_reason="",
        org_billing_url=f"http://testserver/o/{organization.slug}/billing/",
        secret_id=key.secrets.get().pk,
    )
    assert record.refusal() is None
    assert record.refusal(now=int(expires_at.timestamp()) - 1) is None
    assert record.refusal(now=int(expires_at.timestamp())) == "expired"
    assert [
        record.allows_model(m) for m in ("gpt-4o", "gpt-4o-mini", "llama-3.1-8b", "gpt-4", "llama-3.1-70b")
    ] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert [
        record.allows_ip(a) for a in ("10.1.2.3", "2001:db8::1", "11.0.0.1", "2001:db9::1", "not-an-ip", None)
    ] == [True, True, False, False, False, False]


def test_key_without_limits_or_scopes_parses_as_unlimited_and_open(actor, organization, committed):
    _key, plaintext = committed(services.api_key_create, actor=actor, organization=organization, name="plain")
    record = parse_key_record(published(plaintext))
    unlimited = Limits(rpm=None, tpm=None, concurrency=None, budget_minor=None)
    assert (record.key_limits, record.org_limits) == (unlimited, unlimited)
    assert (record.environment, record.expires_at, record.allowed_models, record.allowed_networks) == (
        "live",
        None,
        (),
        (),
    )
    assert record.allows_model("any-model") and record.allows_ip("192.0.2.1") and record.allows_ip(None)


def test_organization_limits_changed_later_reach_the_records_of_its_keys(actor, organization, committed):
    _key, plaintext = committed(services.api_key_create, actor=actor, organization=organization, name="k")
    committed(
        organization_set_limits, actor=actor, organization=organization, rpm_limit=60, budget_monthly_minor=0
    )
    assert parse_key_record(published(plaintext)).org_limits == Limits(
        rpm=60, tpm=None, concurrency=None, budget_minor=0
    )


def test_revoked_key_parses_as_revoked(actor, organization, committed):
    key, plaintext = committed(services.api_key_create, actor=actor, organization=organization, name="k")
    committed(services.api_key_revoke, actor=actor, key=key)
    record = parse_key_record(published(plaintext))
    assert record.status == "revoked"
    assert record.refusal() == "revoked"


def test_rotated_out_secret_is_refused_as_rotated_after_its_grace(actor, organization, committed):
    key, old_plaintext = committed(services.api_key_create, actor=actor, organization=organization, name="k")
    _key, new_plaintext, previous = committed(
        services.api_key_rotate, actor=actor, key=key, grace_period=timedelta(hours=1)
    )
    grace_ends = int(previous.expires_at.timestamp())

    old = parse_key_record(published(old_plaintext))
    new = parse_key_record(published(new_plaintext))

    assert old.secret_expires_at == grace_ends
    assert old.refusal() is None
    assert old.refusal(now=grace_ends - 1) is None
    assert old.refusal(now=grace_ends) == "rotated"
    assert new.secret_expires_at is None
    assert new.refusal(now=grace_ends + 3600) is None
    assert old.key_id == new.key_id == key.public_id


def test_suspended_organization_parses_as_suspended_and_past_due_still_works(actor, organization, committed):
    _key, plaintext = committed(services.api_key_create, actor=actor, organization=organization, name="k")
    committed(organization_set_status, actor=actor, organization=organization, status="past_due")
    record = parse_key_record(published(plaintext))
    assert (record.org_status, record.org_status_reason, record.refusal()) == ("past_due", "staff", None)

    committed(organization_set_status, actor=actor, organization=organization, status="suspended")
    record = parse_key_record(published(plaintext))
    assert (record.org_status, record.org_status_reason, record.refusal()) == (
        "suspended",
        "staff",
        "suspended",
    )


def test_billing_suspension_parses_with_its_reason_and_where_to_pay(actor, organization, committed):
    _key, plaintext = committed(services.api_key_create, actor=actor, organization=organization, name="k")
    committed(
        organization_set_status,
        actor=Actor.system(),
        organization=organization,
        status="suspended",
        reason="billing",
    )
    record = parse_key_record(published(plaintext))
    assert (record.org_status, record.org_status_reason, record.refusal()) == (
        "suspended",
        "billing",
        "billing_suspended",
    )
    assert record.org_billing_url == f"http://testserver/o/{organization.slug}/billing/"

    committed(organization_set_status, actor=Actor.system(), organization=organization, status="active")
    record = parse_key_record(published(plaintext))
    assert (record.org_status, record.org_status_reason, record.refusal()) == ("active", "", None)


def test_a_record_written_before_the_status_reason_reads_as_having_none(actor, organization, committed):
    _key, plaintext = committed(services.api_key_create, actor=actor, organization=organization, name="k")
    data = json.loads(published(plaintext))
    del data["org_status_reason"], data["org_billing_url"]
    data["org_status"] = "suspended"

    record = parse_key_record(json.dumps(data).encode())

    assert (record.org_status_reason, record.org_billing_url, record.refusal()) == ("", "", "suspended")


def test_published_price_parses_into_exact_decimals_and_costs_match_a_hand_computation(committed):
    committed(
        model_price_set,
        actor=Actor.system(),
        model="gpt-4o-mini",
        input_per_mtok_minor="250.5",
        output_per_mtok_minor="1000",
        cached_input_per_mtok_minor="125.25",
    )
    raw = edge_redis().get(records.PRICE_PREFIX + "gpt-4o-mini")

    price = parse_price(raw)

    assert price == Price(input=Decimal("250.5"), output=Decimal("1000"), cached_input=Decimal("125.25"))
    # Cents per million tokens times tokens is millionths of a cent:
    # 800 uncached x 250.5 + 200 cached x 125.25 + 500 output x 1000 = 200400 + 25050 + 500000.
    assert price.cost_micro_minor(1000, 500, 200) == 725_450
    # Fractions round up, so a reservation never under-counts: 3 x 250.5 + 1000 = 1751.5.
    assert price.cost_micro_minor(3, 1) == 1752
    assert price.cost_micro_minor(1, 0, 1) == 126
    assert price.cost_micro_minor(0, 0) == 0


def test_price_without_a_cached_rate_charges_cached_tokens_at_the_input_rate(committed):
    committed(
        model_price_set,
        actor=Actor.system(),
        model="plain",
        input_per_mtok_minor=300,
        output_per_mtok_minor=600,
    )
    price = parse_price(edge_redis().get(records.PRICE_PREFIX + "plain"))
    assert price == Price(input=Decimal(300), output=Decimal(600), cached_input=Decimal(300))
    assert price.cost_micro_minor(10, 10, 5) == 10 * 300 + 10 * 600


def test_record_of_another_schema_version_is_refused_by_the_edge(actor, organization, committed):
    _key, plaintext = committed(services.api_key_create, actor=actor, organization=organization, name="k")
    data = json.loads(published(plaintext))
    with pytest.raises(RecordError, match="unsupported key record version 2"):
        parse_key_record(json.dumps({**data, "v": 2}).encode())
    without_version = {name: value for name, value in data.items() if name != "v"}
    with pytest.raises(RecordError, match="unsupported key record version None"):
        parse_key_record(json.dumps(without_version).encode())
    missing_field = {name: value for name, value in data.items() if name != "status"}
    with pytest.raises(RecordError, match="malformed key record"):
        parse_key_record(json.dumps(missing_field).encode())

    committed(
        model_price_set, actor=Actor.system(), model="m", input_per_mtok_minor=1, output_per_mtok_minor=2
    )
    price = json.loads(edge_redis().get(records.PRICE_PREFIX + "m"))
    with pytest.raises(RecordError, match="unsupported price record version 2"):
        parse_price(json.dumps({**price, "v": 2}).encode())
    with pytest.raises(RecordError, match="malformed price record"):
        parse_price(json.dumps({**price, "output_per_mtok_minor": "two"}).encode())


def test_the_edge_sees_the_data_plane_whole_after_the_portals_resync_and_lost_after_a_flush(
    organization, actor, settings
):
    """The resync marker: written by keys.publication.edge_resync, read by edge/store.py."""
    import asyncio

    from edge.batching import ScriptBatcher
    from edge.resp import RespConnection
    from edge.store import DataPlane
    from keys.publication import edge_resync

    assert records.SYNCED_KEY == edge_record.SYNCED_KEY
    _key, plaintext = services.api_key_create(actor=actor, organization=organization, name="k")
    name = records.KEY_PREFIX + services.secret_hash(plaintext)

    async def read() -> tuple[bytes | None, bool]:
        connection = RespConnection(settings.REDIS_URL)
        try:
            return await DataPlane(ScriptBatcher(connection, {})).read(name)
        finally:
            connection.close()

    edge_resync()
    raw, synced = asyncio.run(read())
    assert synced is True
    assert parse_key_record(raw).key_id == _key.public_id

    edge_redis().flushdb()
    assert asyncio.run(read()) == (None, False)
