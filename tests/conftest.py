"""Test fixtures: real Postgres and Redis. The environment is fixed in tests/settings.py.

``--clock=<ISO 8601 instant>`` runs the session with the Python clock moved to that instant
and ticking (``make test`` runs the ``clock``-marked tests so at a month's, a leap February's
and a year's last second). Postgres and Redis keep the real time.
"""

from datetime import datetime

import pytest
import time_machine
from django.utils import timezone

# Throwaway servers a test may kill (private_redis, private_redis_aof, private_postgres).
pytest_plugins = ["tests.servers", "tests.billing.fixtures"]


def pytest_addoption(parser):
    parser.addoption(
        "--clock",
        metavar="INSTANT",
        help="move the Python clock to this instant for the session, ticking "
        "(e.g. 2028-02-29T23:59:59Z); Postgres and Redis keep the real time",
    )


def _clock_instant(config) -> datetime | None:
    value = config.getoption("--clock")
    if not value:
        return None
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise pytest.UsageError(f"--clock must be an ISO 8601 instant, got {value!r}") from None
    if instant.tzinfo is None:
        raise pytest.UsageError(f"--clock needs a UTC offset, e.g. 2028-02-29T23:59:59Z, got {value!r}")
    return instant


def pytest_configure(config):
    _clock_instant(config)  # a bad value stops the run before any worker starts


@pytest.fixture(scope="session", autouse=True)
def _session_clock(request):
    """Under ``--clock``, run every test of this process on the moved, ticking clock.

    Each xdist worker is its own process and moves its own clock. The test database is
    created first, on the real clock, as a deployment's was migrated in the past: tests
    cannot lean on what the migrations made for "now".
    """
    instant = _clock_instant(request.config)
    if instant is None:
        yield None
        return
    request.getfixturevalue("django_db_setup")
    with time_machine.travel(instant, tick=True):
        yield instant


@pytest.fixture
def frozen_now(time_machine) -> datetime:
    """Stop the clock at the current whole second and return it (under ``--clock``, near
    that instant), for a test whose expectations and code under test must read one time."""
    moment = timezone.now().replace(microsecond=0)
    time_machine.move_to(moment, tick=False)
    return moment


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


@pytest.fixture
def raw_events_cleared():
    """Empty the raw usage table after a transactional test.

    ``usage_event`` is not a Django-managed table, so the flush that ends a transactional
    test leaves its rows behind; later tests must not see them.
    """
    yield
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE usage_event")


@pytest.fixture
def redis_client(settings):
    """A client of the test's own Redis database (the one the portal and the edges use)."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


def pytest_terminal_summary(terminalreporter):
    """Show the counts a test recorded under ``summary`` (the fuzz runs), also from xdist workers."""
    lines = [
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "summary"
    ]
    if lines:
        terminalreporter.section("summary")
        for line in lines:
            terminalreporter.write_line(line)
