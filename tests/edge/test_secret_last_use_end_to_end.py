"""During a rotation a key has two live secrets: the edge names the one each request used,
and ingest moves that secret's last use (the openai client → a real edge → tg:usage → the
consumer → Postgres)."""

import time
from datetime import timedelta

import openai
import orjson
import pytest
import redis

from keys import services as key_services
from portal.audit import Actor
from tests.usage.support import at_ms
from usage.consumer import UsageConsumer

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "hello there"}]


def test_requests_with_the_old_and_the_new_secret_move_each_secrets_last_use(
    edge, make_key, settings, django_capture_on_commit_callbacks
):
    key, old_plaintext = make_key(name="rotating")
    with django_capture_on_commit_callbacks(execute=True):
        _key, new_plaintext, _ = key_services.api_key_rotate(
            actor=Actor(user=key.created_by), key=key, grace_period=timedelta(hours=1)
        )
    old, new = key.secrets.order_by("created_at", "id")
    for plaintext in (old_plaintext, new_plaintext, new_plaintext):
        client = openai.OpenAI(base_url=f"{edge.url}/v1", api_key=plaintext, max_retries=0)
        assert client.chat.completions.create(model="mock-model", messages=HELLO).choices

    stream = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + 10
    while stream.xlen("tg:usage") < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    events = [orjson.loads(fields[b"data"]) for _id, fields in stream.xrange("tg:usage")]
    assert [event["secret_id"] for event in events] == [old.pk, new.pk, new.pk]
    consumer = UsageConsumer(stream, name="ingest-secrets", max_wait_ms=50)
    consumer.ensure_group()
    assert consumer.step().inserted == 3

    old.refresh_from_db()
    new.refresh_from_db()
    assert old.last_used_at == at_ms(events[0]["ended_at_ms"])
    assert new.last_used_at == at_ms(events[2]["ended_at_ms"])
    stream.close()
