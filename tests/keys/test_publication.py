"""Publication of key records to Redis for the edge: exact records, invalidation, sync, reconcile."""

import io
import json
import secrets
import time
from datetime import timedelta

import pytest
from django.core.management import call_command

from keys import services
from keys.edge_record import INVALIDATE_CHANNEL, SYNCED_KEY, TOMBSTONE_SECONDS, key_record, redis_key
from keys.models import ApiKey, ApiKeySecret
from keys.publication import (
    RESYNC_LOCK,
    edge_reconcile,
    edge_redis,
    edge_resync_if_missing,
)
from portal import services as portal_services
from portal.audit import Actor
from portal.models import Organization
from tests.factories import make_org, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def redis_client():
    return edge_redis()


def _stored(redis_client, secret_hash: str) -> dict | None:
    raw = redis_client.get(redis_key(secret_hash))
    return json.loads(raw) if raw is not None else None


def _invalidated_hashes(pubsub, wanted: str, timeout: float = 3.0) -> list[str]:
    """Read invalidation messages until one names ``wanted``; return its hashes.

    Other test runs may publish on the same channel, so unrelated messages are skipped.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is None or message["type"] != "message":
            continue
        body = json.loads(message["data"])
        assert body["v"] == 1
        if wanted in body["hashes"]:
            return body["hashes"]
    raise AssertionError(f"no invalidation for {wanted} within {timeout}s")


def test_created_key_record_is_exactly_the_v1_schema(actor, organization, publish, start, redis_client):
    expires_at = start + timedelta(days=90)
    with publish():
        key, plaintext = services.api_key_create(
            actor=actor,
            organization=organization,
            name="prod",
            allowed_models=["gpt-4o*", "llama-3.1-8b"],
            allowed_ips=["10.0.0.0/8"],
            rpm_limit=600,
            concurrency_limit=10,
            budget_monthly_minor=5000,
            expires_at=expires_at,
        )
    secret_hash = services.secret_hash(plaintext)
    assert _stored(redis_client, secret_hash) == {
        "v": 1,
        "key_id": key.public_id,
        "secret_id": key.secrets.get().pk,
        "org_id": organization.pk,
        "org_status": "active",
        "org_status_reason": "",
        "org_billing_url": "http://testserver/o/acme/billing/",
        "environment": "live",
        "status": "active",
        "expires_at": int(expires_at.timestamp()),
        "secret_expires_at": None,
        "allowed_models": ["gpt-4o*", "llama-3.1-8b"],
        "allowed_ips": ["10.0.0.0/8"],
        "limits": {"rpm": 600, "tpm": None, "concurrency": 10},
        "budget": {"monthly_minor": 5000, "alert_minor": 4000},
        "org_limits": {"rpm": None, "tpm": None, "concurrency": None},
        "org_budget": {"monthly_minor": None},
    }
    # A key that expires keeps its record until the tombstone period after the expiry.
    ttl = redis_client.ttl(redis_key(secret_hash))
    assert 0 < ttl <= int((expires_at - start).total_seconds()) + TOMBSTONE_SECONDS + 5


def test_key_without_expiry_has_a_record_without_ttl(actor, organization, publish, redis_client):
    with publish():
        _key, plaintext = services.api_key_create(actor=actor, organization=organization, name="ci")
    record = _stored(redis_client, services.secret_hash(plaintext))
    assert record["expires_at"] is None
    assert record["limits"] == {"rpm": None, "tpm": None, "concurrency": None}
    assert record["budget"] == {"monthly_minor": None, "alert_minor": None}
    assert record["org_limits"] == {"rpm": None, "tpm": None, "concurrency": None}
    assert redis_client.ttl(redis_key(services.secret_hash(plaintext))) == -1


def test_nothing_is_published_when_the_transaction_does_not_commit(actor, organization, redis_client):
    # Without running on-commit callbacks (the test transaction never commits) Redis stays empty.
    _key, plaintext = services.api_key_create(actor=actor, organization=organization, name="ci")
    assert redis_client.get(redis_key(services.secret_hash(plaintext))) is None


def test_every_change_publishes_an_invalidation_naming_the_secrets(
    actor, organization, publish, redis_client
):
    pubsub = redis_client.pubsub()
    pubsub.subscribe(INVALIDATE_CHANNEL)
    try:
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
        with publish():
            key, plaintext = services.api_key_create(actor=actor, organization=organization, name="ci")
        first = services.secret_hash(plaintext)
        assert _invalidated_hashes(pubsub, first) == [first]

        with publish():
            services.api_key_update(actor=actor, key=key, rpm_limit=5)
        assert _invalidated_hashes(pubsub, first) == [first]

        with publish():
            key, new_plaintext, _previous = services.api_key_rotate(actor=actor, key=key)
        second = services.secret_hash(new_plaintext)
        assert sorted(_invalidated_hashes(pubsub, second)) == sorted([first, second])

        with publish():
            services.api_key_revoke(actor=actor, key=key)
        assert sorted(_invalidated_hashes(pubsub, first)) == sorted([first, second])
    finally:
        pubsub.close()


def test_organization_status_change_rewrites_its_key_records(
    actor, organization, owner, publish, redis_client
):
    with publish():
        _key, plaintext = services.api_key_create(actor=actor, organization=organization, name="ci")
        _other, other_plaintext = services.api_key_create(
            actor=Actor(user=owner), organization=make_org(owner, name="Other"), name="ci"
        )
    secret_hash = services.secret_hash(plaintext)
    assert _stored(redis_client, secret_hash)["org_status"] == "active"

    with publish():
        portal_services.organization_set_status(
            actor=Actor.system(), organization=organization, status=Organization.Status.SUSPENDED
        )
    assert _stored(redis_client, secret_hash)["org_status"] == "suspended"
    assert _stored(redis_client, services.secret_hash(other_plaintext))["org_status"] == "active"

    with publish():
        portal_services.organization_set_status(
            actor=Actor.system(), organization=organization, status=Organization.Status.PAST_DUE
        )
    assert _stored(redis_client, secret_hash)["org_status"] == "past_due"


def test_revoked_secret_records_expire_within_the_tombstone_period(
    actor, organization, publish, redis_client
):
    with publish():
        key, plaintext = services.api_key_create(actor=actor, organization=organization, name="ci")
        services.api_key_revoke(actor=actor, key=key)
    name = redis_key(services.secret_hash(plaintext))
    assert json.loads(redis_client.get(name))["status"] == "revoked"
    ttl = redis_client.ttl(name)
    assert 0 < ttl <= TOMBSTONE_SECONDS
    assert ttl > TOMBSTONE_SECONDS - 60


def _fixture_keys(actor, organization, publish):
    """Three keys: one rotated (two live secrets), one plain, one revoked."""
    with publish():
        rotated, _ = services.api_key_create(actor=actor, organization=organization, name="rotated")
        rotated, _, _ = services.api_key_rotate(actor=actor, key=rotated)
        plain, _ = services.api_key_create(actor=actor, organization=organization, name="plain", tpm_limit=9)
        revoked, _ = services.api_key_create(actor=actor, organization=organization, name="revoked")
        services.api_key_revoke(actor=actor, key=revoked)
    return rotated, plain, revoked


def _expected_records() -> dict[str, dict]:
    return {
        redis_key(secret.secret_hash): key_record(secret.key, secret)
        for secret in ApiKeySecret.objects.select_related("key__organization")
    }


def test_edge_sync_rebuilds_every_record_from_an_empty_redis(actor, organization, publish, redis_client):
    _fixture_keys(actor, organization, publish)
    expected = _expected_records()
    assert len(expected) == 4
    redis_client.flushdb()
    assert redis_client.dbsize() == 0

    out = io.StringIO()
    call_command("edge_sync", stdout=out)

    assert out.getvalue() == "edge_sync: wrote 4 key records and 0 prices\n"
    stored = {name.decode(): json.loads(redis_client.get(name)) for name in redis_client.keys("tg:key:*")}
    assert stored == expected
    live = ApiKeySecret.objects.live().filter(key__revoked_at=None)
    assert live.count() == 3
    for secret in live:
        assert stored[redis_key(secret.secret_hash)]["status"] == "active"
    revoked = ApiKey.unscoped.get(name="revoked").secrets.get()
    assert stored[redis_key(revoked.secret_hash)]["status"] == "revoked"


def test_edge_sync_writes_the_synced_marker_last_and_without_expiry(
    actor, organization, publish, redis_client, start
):
    _fixture_keys(actor, organization, publish)
    redis_client.flushdb()

    call_command("edge_sync", stdout=io.StringIO())

    assert json.loads(redis_client.get(SYNCED_KEY)) == {"v": 1, "at": int(start.timestamp())}
    assert redis_client.ttl(SYNCED_KEY) == -1
    assert len(redis_client.keys("tg:key:*")) == 4
    assert redis_client.exists(RESYNC_LOCK) == 0


def test_resync_if_missing_runs_only_without_the_marker_and_without_another_holder(
    actor, organization, publish, redis_client
):
    _fixture_keys(actor, organization, publish)
    expected = _expected_records()
    redis_client.flushdb()

    # Another replica holds the lock: nothing is written, its lock is left alone.
    redis_client.set(RESYNC_LOCK, "ingest-other", px=60_000)
    assert edge_resync_if_missing(owner="ingest-a") is False
    assert redis_client.keys("*") == [RESYNC_LOCK.encode()]
    assert redis_client.get(RESYNC_LOCK) == b"ingest-other"

    redis_client.delete(RESYNC_LOCK)
    assert edge_resync_if_missing(owner="ingest-a") is True
    stored = {name.decode(): json.loads(redis_client.get(name)) for name in redis_client.keys("tg:key:*")}
    assert stored == expected
    assert redis_client.exists(SYNCED_KEY) == 1
    assert redis_client.exists(RESYNC_LOCK) == 0

    # The marker is there: one EXISTS, no rewrite.
    redis_client.delete(*redis_client.keys("tg:key:*"))
    assert edge_resync_if_missing(owner="ingest-a") is False
    assert redis_client.keys("tg:key:*") == []


def test_reconcile_removes_unknown_records_and_repairs_drifted_ones(
    actor, organization, publish, redis_client
):
    _rotated, plain, _revoked = _fixture_keys(actor, organization, publish)
    expected = _expected_records()
    stale = redis_key(secrets.token_hex(32))
    redis_client.set(stale, json.dumps({"v": 1, "status": "active"}))
    drifted = redis_key(plain.secrets.get().secret_hash)
    wrong = dict(expected[drifted], limits={"rpm": None, "tpm": None, "concurrency": None}, status="active")
    redis_client.set(drifted, json.dumps(wrong))

    assert edge_reconcile() == {"checked": 5, "removed": 1, "repaired": 1, "restored": 0}

    assert redis_client.exists(stale) == 0
    assert json.loads(redis_client.get(drifted)) == expected[drifted]
    assert json.loads(redis_client.get(drifted))["limits"]["tpm"] == 9
    # A second pass finds nothing to do.
    assert edge_reconcile() == {"checked": 4, "removed": 0, "repaired": 0, "restored": 0}


def test_reconcile_repairs_a_record_that_is_not_json(actor, organization, publish, redis_client):
    with publish():
        key, plaintext = services.api_key_create(actor=actor, organization=organization, name="ci")
    name = redis_key(services.secret_hash(plaintext))
    redis_client.set(name, b"\x00not json")

    assert edge_reconcile() == {"checked": 1, "removed": 0, "repaired": 1, "restored": 0}
    assert json.loads(redis_client.get(name)) == key_record(
        ApiKey.unscoped.select_related("organization").get(pk=key.pk), key.secrets.get()
    )


def test_reconcile_drops_records_past_their_tombstone(
    actor, organization, publish, redis_client, start, time_machine
):
    with publish():
        key, plaintext = services.api_key_create(actor=actor, organization=organization, name="ci")
        services.api_key_revoke(actor=actor, key=key)
    name = redis_key(services.secret_hash(plaintext))
    assert redis_client.exists(name) == 1
    time_machine.move_to(start + timedelta(seconds=TOMBSTONE_SECONDS + 1), tick=False)
    assert edge_reconcile() == {"checked": 1, "removed": 1, "repaired": 0, "restored": 0}
    assert redis_client.exists(name) == 0


def test_reconcile_restores_a_record_whose_publication_was_lost(django_capture_on_commit_callbacks):
    owner = make_user()
    organization = make_org(owner)
    with django_capture_on_commit_callbacks(execute=True):
        key, secret = services.api_key_create(actor=Actor(user=owner), organization=organization, name="lost")
    name = redis_key(services.secret_hash(secret))
    client = edge_redis()
    client.delete(name)
    assert edge_reconcile() == {"checked": 0, "removed": 0, "repaired": 0, "restored": 1}
    assert json.loads(client.get(name))["key_id"] == key.public_id


def test_organization_limits_reach_every_record_of_its_keys(actor, organization, publish, redis_client):
    with publish():
        _key, plaintext = services.api_key_create(actor=actor, organization=organization, name="ci")
        portal_services.organization_set_limits(
            actor=actor,
            organization=organization,
            rpm_limit=6000,
            concurrency_limit=50,
            budget_monthly_minor=100000,
        )
    record = _stored(redis_client, services.secret_hash(plaintext))
    assert record["org_limits"] == {"rpm": 6000, "tpm": None, "concurrency": 50}
    assert record["org_budget"] == {"monthly_minor": 100000}
