"""Ingest moves each secret's last use from the events that name it, in the batch's one
statement, and only for secrets of the event's own key; the key page shows it."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from keys import services as key_services
from portal.audit import Actor
from tests.usage.support import edge_event, ingest

pytestmark = pytest.mark.django_db


def test_each_secrets_last_use_is_its_latest_event_set_by_the_batch_statement(
    tenant, other_tenant, redis_client
):
    key = tenant.key("app")
    _key, _new_plaintext, _ = key_services.api_key_rotate(
        actor=Actor(user=tenant.owner), key=key, grace_period=timedelta(hours=1)
    )
    old, new = key.secrets.order_by("created_at", "id")
    foreign = other_tenant.key("theirs").secrets.get()
    now = timezone.now().replace(microsecond=0)
    events = [
        edge_event(key, ended_at=now - timedelta(minutes=9), secret_id=old.pk),
        edge_event(key, ended_at=now - timedelta(minutes=5), secret_id=old.pk),
        edge_event(key, ended_at=now - timedelta(minutes=2), secret_id=new.pk),
        # Another key's secret: the event counts for its own key, the secret does not move.
        edge_event(key, ended_at=now - timedelta(minutes=1), secret_id=foreign.pk),
        # Written before events named their secret: the key's last use moves, no secret's.
        edge_event(key, ended_at=now),
    ]

    with CaptureQueriesContext(connection) as queries:
        ingest(redis_client, *events)

    old.refresh_from_db()
    new.refresh_from_db()
    foreign.refresh_from_db()
    key.refresh_from_db()
    assert (old.last_used_at, new.last_used_at, foreign.last_used_at) == (
        now - timedelta(minutes=5),
        now - timedelta(minutes=2),
        None,
    )
    assert key.last_used_at == now
    assert [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("UPDATE")] == []


def test_the_key_page_shows_each_secrets_last_use(tenant, redis_client):
    key = tenant.key("app")
    secret = key.secrets.get()
    moment = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=3)
    ingest(redis_client, edge_event(key, ended_at=moment, secret_id=secret.pk))
    client = Client()
    client.force_login(tenant.owner)

    response = client.get(reverse("org-key", args=[tenant.org.slug, key.public_id]))

    assert response.status_code == 200
    content = response.content.decode()
    assert "<th>Last used (UTC)</th>" in content
    assert f'<td class="nowrap">{moment:%Y-%m-%d %H:%M}</td>' in content
