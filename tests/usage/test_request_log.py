"""The request log page: an organization's recent requests from the raw table, served and
refused, with filters, keyset pages, retention and tenant isolation.

Events reach Postgres as the edge writes them: on the test's tg:usage stream, through one
step of the real consumer.
"""

import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
from django.test import Client
from django.urls import reverse

from portal.roles import Role
from tests.factories import add_member
from tests.usage.support import edge_event, ingest
from usage.models import UsageEvent, UsageRollup
from usage.requestlog import Cursor

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


class _Table(HTMLParser):
    """Each body row of one table: its id, its cells' text and its links."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id = table_id
        self.inside = False
        self.rows: list[dict] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr" and attrs.get("id"):
            self.rows.append({"id": attrs["id"], "cells": [], "links": []})
        elif self.inside and self.rows and tag == "td":
            self.cell = []
        elif self.cell is not None and tag == "a":
            self.rows[-1]["links"].append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif tag == "td" and self.cell is not None:
            self.rows[-1]["cells"].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def request_rows(response) -> list[dict]:
    parser = _Table("requests")
    parser.feed(response.content.decode())
    return parser.rows


def page(client: Client, organization, **query):
    return client.get(reverse("org-usage-requests", args=[organization.slug]), query)


@pytest.fixture
def at_now(time_machine):
    time_machine.move_to(NOW, tick=False)
    return NOW


@pytest.fixture
def owner_client(tenant) -> Client:
    client = Client()
    client.force_login(tenant.owner)
    return client


def test_served_and_refused_requests_show_every_field_newest_first(
    tenant, redis_client, owner_client, at_now
):
    key = tenant.key("app")
    served = edge_event(
        key,
        ended_at=at_now - timedelta(minutes=2),
        request_id="req-served",
        model="gpt-test",
        input_tokens=120,
        output_tokens=30,
        cached_tokens=20,
        cost_micro_minor=1_234_567,
        latency_ms=812.25,
        ttft_ms=95.5,
    )
    refused = edge_event(
        key,
        ended_at=at_now - timedelta(minutes=1),
        request_id="req-refused",
        model="gpt-test",
        status=429,
        input_tokens=0,
        output_tokens=0,
        cost_micro_minor=0,
        latency_ms=1.5,
        refusal="rate_limit_rpm",
    )
    ingest(redis_client, served, refused)

    response = page(owner_client, tenant.org)

    assert response.status_code == 200
    key_url = reverse("org-key", args=[tenant.org.slug, key.public_id])
    assert request_rows(response) == [
        {
            "id": f"request-{refused['event_id']}",
            "cells": [
                "2026-11-20T11:59:00.000Z", "app", "gpt-test", "429 refused: rate_limit_rpm",
                "1.5 ms", "", "0", "0", "0", "0.00 USD", "req-refused",
            ],
            "links": [key_url],
        },
        {
            "id": f"request-{served['event_id']}",
            "cells": [
                "2026-11-20T11:58:00.000Z", "app", "gpt-test", "200",
                "812.3 ms", "95.5 ms", "120", "30", "20", "0.01234567 USD", "req-served",
            ],
            "links": [key_url],
        },
    ]  # fmt: skip


def test_refusals_are_stored_with_their_reason_and_counted_apart_in_the_rollups(tenant, redis_client, at_now):
    key = tenant.key()
    ingest(
        redis_client,
        edge_event(key, ended_at=at_now),
        edge_event(key, ended_at=at_now, status=500, input_tokens=0, output_tokens=0),
        *(
            edge_event(
                key,
                ended_at=at_now,
                status=status,
                input_tokens=0,
                output_tokens=0,
                refusal=reason,
                model=model,
            )
            for status, reason, model in (
                (429, "rate_limit_tpm", "mock-model"),
                (403, "model_not_allowed", "mock-model"),
                (401, "key_revoked", ""),
            )
        ),
    )

    assert sorted(UsageEvent.objects.for_organization(tenant.org).values_list("status", "refusal")) == [
        (200, ""),
        (401, "key_revoked"),
        (403, "model_not_allowed"),
        (429, "rate_limit_tpm"),
        (500, ""),
    ]
    rollups = UsageRollup.objects.for_organization(tenant.org).values(
        "model", "requests", "errors", "refusals"
    )
    assert sorted(rollups, key=lambda row: row["model"]) == [
        {"model": "", "requests": 1, "errors": 1, "refusals": 1},
        {"model": "mock-model", "requests": 4, "errors": 3, "refusals": 2},
    ]


def _served_and_refused(tenant, other_key_name="batch"):
    app, batch = tenant.key("app"), tenant.key(other_key_name)
    events = {
        "app-ok": edge_event(app, ended_at=NOW - timedelta(hours=5), model="alpha"),
        "app-429": edge_event(
            app, ended_at=NOW - timedelta(hours=4), model="alpha", status=429, input_tokens=0,
            output_tokens=0, refusal="concurrency_limit",
        ),
        "batch-ok": edge_event(batch, ended_at=NOW - timedelta(hours=3), model="beta"),
        "batch-500": edge_event(
            batch, ended_at=NOW - timedelta(hours=2), model="beta", status=502, input_tokens=0, output_tokens=0
        ),
        "batch-400": edge_event(
            batch, ended_at=NOW - timedelta(hours=1), model="beta", status=400, input_tokens=0, output_tokens=0
        ),
    }  # fmt: skip
    return app, batch, events


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["batch-400", "batch-500", "batch-ok", "app-429", "app-ok"]),
        ({"key": "app"}, ["app-429", "app-ok"]),
        ({"model": "beta"}, ["batch-400", "batch-500", "batch-ok"]),
        ({"status": "2xx"}, ["batch-ok", "app-ok"]),
        ({"status": "4xx"}, ["batch-400", "app-429"]),
        ({"status": "5xx"}, ["batch-500"]),
        ({"status": "refused"}, ["app-429"]),
        ({"start": "2026-11-20T08:00:00Z"}, ["batch-400", "batch-500", "batch-ok", "app-429"]),
        ({"end": "2026-11-20T09:30:00Z"}, ["batch-ok", "app-429", "app-ok"]),
        ({"start": "2026-11-20T08:00:00Z", "end": "2026-11-20T10:30:00Z", "status": "5xx"}, ["batch-500"]),
        (
            {"start": "2026-11-20", "end": "2026-11-20"},
            ["batch-400", "batch-500", "batch-ok", "app-429", "app-ok"],
        ),
        ({"end": "2026-11-19"}, []),
    ],
)
def test_filters_select_by_key_model_status_class_and_time(
    tenant, redis_client, owner_client, at_now, query, expected
):
    app, batch, events = _served_and_refused(tenant)
    ingest(redis_client, *events.values())
    ids = {name: f"request-{event['event_id']}" for name, event in events.items()}
    if "key" in query:
        query = {**query, "key": app.public_id}

    response = page(owner_client, tenant.org, **query)

    assert response.status_code == 200
    assert [row["id"] for row in request_rows(response)] == [ids[name] for name in expected]


def test_another_organizations_requests_never_appear_and_its_key_filters_nothing(
    tenant, other_tenant, redis_client, owner_client, at_now
):
    mine = tenant.key("mine")
    theirs = other_tenant.key("theirs")
    own = edge_event(mine, ended_at=at_now - timedelta(minutes=1))
    # Another organization's event with the very same event id: counted on its own, never shown here.
    foreign = edge_event(theirs, ended_at=at_now, event_id=own["event_id"], request_id="theirs")
    ingest(redis_client, own, foreign)

    assert [row["id"] for row in request_rows(page(owner_client, tenant.org))] == [
        f"request-{own['event_id']}"
    ]
    response = page(owner_client, tenant.org, key=theirs.public_id)
    assert response.status_code == 400
    assert request_rows(response) == []
    assert "Key: Select a valid choice." in response.content.decode()
    assert "theirs" not in response.content.decode()
    outsider = Client()
    outsider.force_login(other_tenant.owner)
    assert page(outsider, tenant.org).status_code == 404


def test_pages_follow_the_keyset_and_rows_beyond_retention_never_show(
    tenant, redis_client, owner_client, at_now, settings
):
    settings.USAGE_REQUEST_LOG_DAYS = 3
    key = tenant.key()
    # 53 requests within the last three days, two of them at the same instant; one just before.
    recent = [edge_event(key, ended_at=at_now - timedelta(hours=hour)) for hour in range(52)]
    twin = edge_event(key, ended_at=at_now - timedelta(hours=10))
    old = edge_event(key, ended_at=at_now - timedelta(days=3, seconds=1))
    ingest(redis_client, *recent, twin, old)
    expected = sorted(
        [*recent, twin], key=lambda event: (event["ended_at_ms"], uuid.UUID(event["event_id"])), reverse=True
    )

    first = page(owner_client, tenant.org)
    assert [row["id"] for row in request_rows(first)] == [f"request-{e['event_id']}" for e in expected[:50]]
    last = expected[49]
    cursor = Cursor(
        occurred_at=datetime.fromtimestamp(last["ended_at_ms"] / 1000, tz=UTC),
        event_id=uuid.UUID(last["event_id"]),
    )
    assert f"after={cursor.encode()}" in first.content.decode()
    second = page(owner_client, tenant.org, after=cursor.encode())
    assert [row["id"] for row in request_rows(second)] == [f"request-{e['event_id']}" for e in expected[50:]]
    assert 'rel="next"' not in second.content.decode()
    assert f"request-{old['event_id']}" not in first.content.decode() + second.content.decode()


def test_a_cursor_that_is_not_one_is_a_400_that_says_so(tenant, owner_client):
    response = page(owner_client, tenant.org, after="12_not-a-uuid")
    assert response.status_code == 400
    assert "This page link is not valid; start from the first page." in response.content.decode()


def test_a_billing_member_reads_key_names_without_links_to_pages_it_cannot_open(tenant, redis_client, at_now):
    key = tenant.key("app")
    event = edge_event(key, ended_at=at_now)
    ingest(redis_client, event)
    client = Client()
    client.force_login(add_member(tenant.org, Role.BILLING))

    response = page(client, tenant.org)

    assert response.status_code == 200
    [row] = request_rows(response)
    assert (row["cells"][1], row["links"]) == ("app", [])
