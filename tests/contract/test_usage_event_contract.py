"""The usage event contract: what the edge writes to tg:usage is what ingest reads.

The edge's side is edge/events.py (built by edge.metering.new_event, as edge/meter.py does);
Django's side is usage/ingest.py. Events travel through the test's real Redis stream and
the real consumer into Postgres.
"""

import orjson
import pytest

from edge.events import REFUSAL_REASONS, SCHEMA_VERSION, UsageEvent
from tests.factories import make_org, make_user
from tests.usage.conftest import Tenant
from tests.usage.support import DEAD_STREAM, edge_event, ingest, publish
from usage.consumer import UsageConsumer
from usage.models import UsageEvent as RawEvent
from usage.models import UsageRollup

pytestmark = pytest.mark.django_db


@pytest.fixture
def tenant(db) -> Tenant:
    owner = make_user()
    return Tenant(org=make_org(owner), owner=owner)


REFUSAL_STATUS = {
    "key_revoked": 401,
    "key_expired": 401,
    "secret_rotated": 401,
    "organization_suspended": 402,
    "billing_suspended": 402,
    "ip_not_allowed": 403,
    "model_not_allowed": 403,
    "rate_limit_rpm": 429,
    "rate_limit_tpm": 429,
    "concurrency_limit": 429,
    "budget_exceeded": 429,
}


def refused(key, reason: str, **fields) -> dict:
    return edge_event(
        key, status=REFUSAL_STATUS[reason], input_tokens=0, output_tokens=0, refusal=reason, **fields
    )


def test_the_schema_is_version_1_and_only_the_refusal_and_the_secret_are_optional():
    assert SCHEMA_VERSION == 1
    assert UsageEvent.__optional_keys__ == frozenset({"refusal", "secret_id"})
    assert set(REFUSAL_STATUS) == REFUSAL_REASONS


def test_every_refusal_reason_is_stored_counted_and_costs_nothing(tenant, redis_client):
    key = tenant.key()
    ingest(redis_client, *(refused(key, reason) for reason in sorted(REFUSAL_REASONS)))

    assert sorted(RawEvent.objects.for_organization(tenant.org).values_list("refusal", "status", "cost_micro_minor")) == [
        (reason, REFUSAL_STATUS[reason], 0) for reason in sorted(REFUSAL_REASONS)
    ]  # fmt: skip
    [rollup] = UsageRollup.objects.for_organization(tenant.org).values(
        "requests", "errors", "refusals", "input_tokens", "output_tokens", "cost_micro_minor"
    )
    count = len(REFUSAL_REASONS)
    assert rollup == {
        "requests": count,
        "errors": count,
        "refusals": count,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_micro_minor": 0,
    }


def test_an_event_written_before_refusals_were_metered_ingests_as_served(tenant, redis_client):
    key = tenant.key()
    old = edge_event(key, status=429, input_tokens=0, output_tokens=0)
    assert "refusal" not in old

    ingest(redis_client, old)

    assert RawEvent.objects.for_organization(tenant.org).values_list("status", "refusal").get() == (429, "")
    assert UsageRollup.objects.for_organization(tenant.org).values_list("errors", "refusals").get() == (1, 0)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"refusal": "too_early"}, "unknown refusal reason 'too_early'"),
        ({"refusal": 429}, "unknown refusal reason 429"),
        ({"refusal": ["rate_limit_rpm"]}, "unknown refusal reason ['rate_limit_rpm']"),
        ({"input_tokens": 3}, "a refused request carries no tokens and no cost"),
        ({"cost_micro_minor": 5}, "a refused request carries no tokens and no cost"),
    ],
)
def test_a_refusal_that_breaks_the_contract_goes_to_the_dead_letters(tenant, redis_client, fields, reason):
    key = tenant.key()
    poison = {**refused(key, "rate_limit_rpm"), **fields}
    publish(redis_client, poison)
    consumer = UsageConsumer(redis_client, name="ingest-contract", max_wait_ms=50)
    consumer.ensure_group()

    result = consumer.step()

    assert (result.inserted, result.dead) == (0, 1)
    [(_id, dead)] = redis_client.xrange(DEAD_STREAM)
    assert dead[b"reason"].decode() == reason
    assert orjson.loads(dead[b"data"]) == poison
    assert not RawEvent.objects.for_organization(tenant.org).exists()


def test_a_refusal_may_name_no_model_and_a_served_request_may_not(tenant, redis_client):
    key = tenant.key()
    ingest(redis_client, refused(key, "key_revoked", model=""))
    assert RawEvent.objects.for_organization(tenant.org).values_list("model", "refusal").get() == (
        "",
        "key_revoked",
    )

    publish(redis_client, edge_event(key, model=""))
    consumer = UsageConsumer(redis_client, name="ingest-contract", max_wait_ms=50)
    consumer.ensure_group()
    assert consumer.step().dead == 1
    [(_id, dead)] = redis_client.xrange(DEAD_STREAM)
    assert dead[b"reason"].decode() == "model must be a string of 1 to 200 characters"
