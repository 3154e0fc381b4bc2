"""API key lifecycle through the services: create, rotate, revoke, expire, update."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from edge import keyformat
from keys import services
from keys.edge_record import redis_key
from keys.models import ApiKey, ApiKeySecret
from keys.publication import edge_redis
from portal.errors import Conflict, DomainError
from portal.models import AuditEvent

pytestmark = pytest.mark.django_db

GRACE = timedelta(hours=1)


def _record(plaintext: str) -> dict | None:
    raw = edge_redis().get(redis_key(services.secret_hash(plaintext)))
    return json.loads(raw) if raw is not None else None


def _create(actor, organization, publish, **fields):
    with publish():
        return services.api_key_create(
            actor=actor, organization=organization, name=fields.pop("name", "prod"), **fields
        )


def _rotate(actor, key, publish, grace=GRACE):
    with publish():
        return services.api_key_rotate(actor=actor, key=key, grace_period=grace)


def test_create_returns_the_plaintext_once_and_stores_only_its_hash(actor, organization, publish):
    key, plaintext = _create(
        actor, organization, publish, allowed_models=["gpt-4o"], metadata={"team": "search"}
    )
    assert keyformat.is_well_formed(plaintext)
    assert plaintext.startswith("tg_live_")
    secret = ApiKeySecret.objects.get(key=key)
    assert secret.secret_hash == services.secret_hash(plaintext)
    assert (secret.prefix, secret.last4) == (plaintext[:12], plaintext[-4:])
    assert secret.expires_at is None and secret.revoked_at is None

    # No row of any key or audit table contains the key, nor its random part.
    with connection.cursor() as cursor:
        for table in ("keys_apikeysecret", "keys_apikey", "portal_auditevent"):
            cursor.execute(f"SELECT t::text FROM {table} t")
            rows = [row[0] for row in cursor.fetchall()]
            assert rows, table
            for row in rows:
                assert plaintext not in row, table
                assert plaintext[len("tg_live_") :] not in row, table
                assert plaintext[len("tg_live_") : -4] not in row, table

    event = AuditEvent.objects.get(action="key.created")
    assert (event.actor, event.actor_type, event.organization) == (actor.user, "user", organization)
    assert event.target_type == "keys.apikey" and event.target_id == key.public_id
    assert event.metadata == {"name": "prod", "environment": "live", "secret": str(secret)}
    assert _record(plaintext)["status"] == "active"


def test_test_environment_key_has_the_test_prefix(actor, organization, publish):
    key, plaintext = _create(actor, organization, publish, environment="test")
    assert key.environment == "test"
    assert plaintext.startswith("tg_test_")
    assert _record(plaintext)["environment"] == "test"


def test_rotated_key_keeps_both_secrets_working_during_the_grace(
    actor, organization, publish, start, time_machine
):
    key, old = _create(
        actor, organization, publish, allowed_models=["gpt-4o", "llama-*"], rpm_limit=60, tpm_limit=1000
    )
    time_machine.shift(timedelta(minutes=5))
    rotated_at = start + timedelta(minutes=5)
    key, new, previous = _rotate(actor, key, publish)

    assert new != old and keyformat.is_well_formed(new)
    assert previous.secret_hash == services.secret_hash(old)
    assert previous.expires_at == rotated_at + GRACE
    key = ApiKey.unscoped.get(pk=key.pk)
    assert (key.allowed_models, key.rpm_limit, key.tpm_limit) == (["gpt-4o", "llama-*"], 60, 1000)
    assert ApiKey.unscoped.count() == 1

    old_record, new_record = _record(old), _record(new)
    assert old_record["status"] == new_record["status"] == "active"
    assert old_record["key_id"] == new_record["key_id"] == key.public_id
    assert old_record["secret_expires_at"] == int((rotated_at + GRACE).timestamp())
    assert new_record["secret_expires_at"] is None
    assert old_record["allowed_models"] == new_record["allowed_models"] == ["gpt-4o", "llama-*"]
    assert old_record["limits"] == new_record["limits"] == {"rpm": 60, "tpm": 1000, "concurrency": None}
    live = set(ApiKeySecret.objects.live().filter(key=key).values_list("secret_hash", flat=True))
    assert live == {services.secret_hash(old), services.secret_hash(new)}

    event = AuditEvent.objects.get(action="key.rotated")
    assert event.metadata["grace_seconds"] == 3600
    assert event.metadata["previous_expires_at"] == (rotated_at + GRACE).isoformat()

    # One second before the grace ends the old secret still works; at its end it stops.
    time_machine.move_to(rotated_at + GRACE - timedelta(seconds=1), tick=False)
    assert ApiKeySecret.objects.live().filter(key=key).count() == 2
    time_machine.move_to(rotated_at + GRACE, tick=False)
    live = list(ApiKeySecret.objects.live().filter(key=key).values_list("secret_hash", flat=True))
    assert live == [services.secret_hash(new)]
    assert key.status == ApiKey.Status.ACTIVE


def test_rotation_with_zero_grace_stops_the_old_secret_at_once(actor, organization, publish, start):
    key, old = _create(actor, organization, publish)
    _key, new, previous = _rotate(actor, key, publish, grace=timedelta(0))
    assert previous.expires_at == start
    live = list(ApiKeySecret.objects.live().filter(key=key).values_list("secret_hash", flat=True))
    assert live == [services.secret_hash(new)]
    assert _record(old)["secret_expires_at"] == int(start.timestamp())


def test_rotating_twice_within_a_grace_stops_the_oldest_secret(
    actor, organization, publish, start, time_machine
):
    key, first = _create(actor, organization, publish)
    key, second, _previous = _rotate(actor, key, publish)
    time_machine.shift(timedelta(minutes=10))
    key, third, previous = _rotate(actor, key, publish)

    assert previous.secret_hash == services.secret_hash(second)
    assert previous.expires_at == start + timedelta(minutes=10) + GRACE
    live = set(ApiKeySecret.objects.live().filter(key=key).values_list("secret_hash", flat=True))
    assert live == {services.secret_hash(second), services.secret_hash(third)}
    oldest = ApiKeySecret.objects.get(secret_hash=services.secret_hash(first))
    assert oldest.expires_at == start + timedelta(minutes=10)
    assert _record(first)["secret_expires_at"] == int((start + timedelta(minutes=10)).timestamp())
    assert ApiKeySecret.objects.filter(key=key).count() == 3


def test_rotating_a_revoked_key_is_a_conflict(actor, organization, publish):
    key, _plaintext = _create(actor, organization, publish)
    services.api_key_revoke(actor=actor, key=key)
    with pytest.raises(Conflict, match="This key is revoked; only an active key can be rotated."):
        services.api_key_rotate(actor=actor, key=key)
    assert ApiKeySecret.objects.filter(key=key).count() == 1


def test_grace_longer_than_seven_days_is_refused(actor, organization, publish):
    key, _plaintext = _create(actor, organization, publish)
    with pytest.raises(DomainError, match="The grace period must be from 0 seconds to 7 days.") as info:
        services.api_key_rotate(actor=actor, key=key, grace_period=timedelta(days=7, seconds=1))
    assert info.value.field == "grace_period"
    with pytest.raises(DomainError):
        services.api_key_rotate(actor=actor, key=key, grace_period=timedelta(seconds=-1))
    # Exactly seven days is allowed.
    _key, _new, previous = services.api_key_rotate(actor=actor, key=key, grace_period=timedelta(days=7))
    assert previous is not None
    assert ApiKeySecret.objects.filter(key=key).count() == 2


def test_revoke_stops_every_secret_and_marks_their_records(actor, organization, publish, start):
    key, old = _create(actor, organization, publish)
    key, new, _previous = _rotate(actor, key, publish)
    with publish():
        key = services.api_key_revoke(actor=actor, key=key)

    assert key.revoked_at == start
    assert key.status == ApiKey.Status.REVOKED
    assert list(ApiKeySecret.objects.filter(key=key).values_list("revoked_at", flat=True)) == [start, start]
    assert not ApiKeySecret.objects.live().filter(key=key).exists()
    assert _record(old)["status"] == _record(new)["status"] == "revoked"
    event = AuditEvent.objects.get(action="key.revoked")
    assert (event.actor, event.target_id) == (actor.user, key.public_id)

    # Revoking again is a no-op: no second audit row.
    services.api_key_revoke(actor=actor, key=key)
    assert AuditEvent.objects.filter(action="key.revoked").count() == 1


def test_key_past_its_expiry_is_expired_and_its_record_carries_the_expiry(
    actor, organization, publish, start, time_machine
):
    expires_at = start + timedelta(hours=2)
    key, plaintext = _create(actor, organization, publish, expires_at=expires_at)
    assert key.status == ApiKey.Status.ACTIVE

    time_machine.move_to(expires_at + timedelta(seconds=1), tick=False)
    key = ApiKey.unscoped.get(pk=key.pk)
    assert key.status == ApiKey.Status.EXPIRED
    assert not ApiKey.objects.for_organization(organization).live().exists()
    # No job rewrote the record: the edge compares expires_at itself.
    record = _record(plaintext)
    assert record["status"] == "active"
    assert record["expires_at"] == int(expires_at.timestamp())
    with pytest.raises(Conflict, match="This key is expired; only an active key can be rotated."):
        services.api_key_rotate(actor=actor, key=key)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            {"allowed_ips": ["10.0.0.300/8"]},
            "allowed_ips",
            "'10.0.0.300/8' is not an IPv4/IPv6 address or CIDR range: "
            "'10.0.0.300/8' does not appear to be an IPv4 or IPv6 network.",
        ),
        (
            {"allowed_ips": ["10.0.0.1/8"]},
            "allowed_ips",
            "'10.0.0.1/8' is not an IPv4/IPv6 address or CIDR range: 10.0.0.1/8 has host bits set.",
        ),
        (
            {"metadata": {"note": "x" * 4096}},
            "metadata",
            "Metadata must be at most 4096 bytes as JSON.",
        ),
        (
            {"expires_at": datetime(2020, 1, 1, tzinfo=UTC)},
            "expires_at",
            "The expiry must be in the future.",
        ),
        ({"rpm_limit": 0}, "rpm_limit", "Must be a positive whole number, or null for no limit."),
        ({"name": "  "}, "name", "Give the key a name of 1 to 100 characters."),
    ],
)
def test_update_refuses_invalid_fields(actor, organization, publish, fields, field, message):
    key, _plaintext = _create(actor, organization, publish)
    with pytest.raises(DomainError) as info:
        services.api_key_update(actor=actor, key=key, **fields)
    assert (info.value.field, info.value.message) == (field, message)
    assert not AuditEvent.objects.filter(action="key.updated").exists()


def test_update_dedupes_models_normalises_ips_and_republishes(actor, organization, publish, start):
    key, plaintext = _create(actor, organization, publish)
    with publish():
        key = services.api_key_update(
            actor=actor,
            key=key,
            allowed_models=["gpt-4o", " gpt-4o", "llama-*", "gpt-4o"],
            allowed_ips=["10.0.0.0/8", "192.168.1.7", "10.0.0.0/8", "2001:db8::/32"],
            metadata={"note": "x" * 4000},
            expires_at=start + timedelta(days=30),
        )
    key = ApiKey.unscoped.get(pk=key.pk)
    assert key.allowed_models == ["gpt-4o", "llama-*"]
    assert key.allowed_ips == ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]
    record = _record(plaintext)
    assert record["allowed_models"] == ["gpt-4o", "llama-*"]
    assert record["allowed_ips"] == ["10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32"]
    assert record["expires_at"] == int((start + timedelta(days=30)).timestamp())
    event = AuditEvent.objects.get(action="key.updated")
    assert event.metadata["changes"]["allowed_models"] == [[], ["gpt-4o", "llama-*"]]


def test_update_of_a_revoked_key_is_a_conflict(actor, organization, publish):
    key, _plaintext = _create(actor, organization, publish)
    services.api_key_revoke(actor=actor, key=key)
    with pytest.raises(Conflict, match="This key is revoked; create a new one."):
        services.api_key_update(actor=actor, key=key, name="renamed")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rpm_limit", 2**31, "Must be at most 2147483647."),
        ("tpm_limit", 2**31, "Must be at most 2147483647."),
        ("concurrency_limit", 2**31, "Must be at most 2147483647."),
        ("budget_monthly_minor", 2**63, "Must be at most 9223372036854775807."),
        ("rotation_reminder_days", 3651, "Must be at most 3650."),
    ],
)
def test_limits_beyond_what_the_database_holds_are_refused(
    actor, organization, publish, field, value, message
):
    with pytest.raises(DomainError) as info:
        services.api_key_create(actor=actor, organization=organization, name="big", **{field: value})
    assert (info.value.field, info.value.message) == (field, message)
    key, _plaintext = _create(actor, organization, publish)
    with pytest.raises(DomainError) as info:
        services.api_key_update(actor=actor, key=key, **{field: value})
    assert (info.value.field, info.value.message) == (field, message)
    # The largest value that fits is accepted.
    services.api_key_update(actor=actor, key=key, **{field: value - 1})
    assert getattr(ApiKey.unscoped.get(pk=key.pk), field) == value - 1
