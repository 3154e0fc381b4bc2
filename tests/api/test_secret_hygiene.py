"""Plaintext key secrets appear in the response once, and nowhere else: no log, no row, no record."""

import logging

import pytest
import redis
from django.conf import settings
from django.db import connection

from portal.observability import JsonFormatter
from portal.roles import Role
from tests.api.support import call, session_client

pytestmark = pytest.mark.django_db


def _record_texts(record: logging.LogRecord) -> list[str]:
    return [
        record.getMessage(),
        repr(record.msg),
        repr(record.args),
        repr(vars(record)),  # includes every extra= field
        JsonFormatter().format(record),
    ]


def _rows_as_text(table: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT t::text FROM {table} AS t")
        return [row[0] for row in cursor.fetchall()]


@pytest.fixture
def sql_logged():
    """Log every SQL statement with its parameters, as DEBUG=True would."""
    connection.force_debug_cursor = True
    yield
    connection.force_debug_cursor = False


def test_secrets_reach_no_log_record_no_row_and_no_redis_value(
    world, caplog, sql_logged, django_capture_on_commit_callbacks
):
    # Every logger at DEBUG, including those configured quieter (django, django.request, ...).
    caplog.set_level(logging.DEBUG)
    for name in list(logging.root.manager.loggerDict):
        caplog.set_level(logging.DEBUG, logger=name)
    client = session_client(world.users[Role.DEVELOPER])
    headers = {"Idempotency-Key": "hygiene-1"}
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        created = call(client, "POST", "/api/v1/keys", {"name": "ci"}, headers=headers)
        replayed = call(client, "POST", "/api/v1/keys", {"name": "ci"}, headers=headers)
        key_id = created.json()["id"]
        rotated = call(
            client,
            "POST",
            f"/api/v1/keys/{key_id}/rotate",
            {"grace_period": 60},
            headers=headers | {"Idempotency-Key": "hygiene-2"},
        )
    assert (created.status_code, replayed.status_code, rotated.status_code) == (201, 201, 200)
    assert replayed.json()["secret"] == created.json()["secret"]
    assert callbacks  # publication to the edge ran, so its logging is covered too
    secrets = [created.json()["secret"], rotated.json()["secret"]]
    # The middle of a secret is in neither its display prefix nor its last four characters.
    needles = secrets + [secret[12:-4] for secret in secrets]

    messages = [record.getMessage() for record in caplog.records]
    assert any('INSERT INTO "keys_apikeysecret"' in message for message in messages)
    assert any(message == "request" for message in messages)
    for record in caplog.records:
        for text in _record_texts(record):
            for needle in needles:
                assert needle not in text, (record.name, record.getMessage()[:200])

    rows = []
    for table in ("keys_apikey", "keys_apikeysecret", "portal_auditevent", "portal_idempotencyrecord"):
        rows.extend(_rows_as_text(table))
    assert len(rows) >= 2 + 3 + 2 + 2
    for row in rows:
        for needle in needles:
            assert needle not in row

    edge = redis.Redis.from_url(settings.EDGE_REDIS_URL or settings.REDIS_URL)
    published = [name for name in edge.scan_iter("tg:key:*")]
    assert len(published) == 2  # both live secrets, under their hashes
    for name in published:
        value = edge.get(name).decode()
        for needle in needles:
            assert needle not in name.decode()
            assert needle not in value
