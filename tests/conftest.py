"""Test fixtures: real Postgres and Redis. The environment is fixed in tests/settings.py."""

import pytest


@pytest.fixture(autouse=True)
def _fresh_redis(settings):
    """Each test starts with an empty test Redis database (cache, rate-limit counters)."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.close()


@pytest.fixture(autouse=True)
def _static_without_manifest(settings):
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.WHITENOISE_USE_FINDERS = True
