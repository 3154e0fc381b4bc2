"""Settings are parsed strictly: a malformed value stops start-up and names the variable."""

import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from portal.env import env_bool, env_int, env_json, env_list, env_str, env_url

VAR = "TOLLGATE_TEST_SETTING"


@pytest.fixture(autouse=True)
def _unset(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)


@pytest.mark.parametrize(
    ("parse", "value", "message"),
    [
        (
            lambda: env_bool(VAR, False),
            "maybe",
            "TOLLGATE_TEST_SETTING must be a boolean (true/false/1/0), got 'maybe'",
        ),
        (lambda: env_int(VAR, 1), "12abc", "TOLLGATE_TEST_SETTING must be an integer, got '12abc'"),
        (lambda: env_int(VAR, 1), "1.5", "TOLLGATE_TEST_SETTING must be an integer, got '1.5'"),
        (lambda: env_int(VAR, 5, minimum=1), "0", "TOLLGATE_TEST_SETTING must be >= 1, got 0"),
        (
            lambda: env_url(VAR, "redis://localhost", schemes=("redis", "rediss")),
            "http://localhost:6379",
            "TOLLGATE_TEST_SETTING must be a URL with scheme redis or rediss, got 'http://localhost:6379'",
        ),
        (
            lambda: env_url(VAR, "https://x", schemes=("https",)),
            "not a url",
            "TOLLGATE_TEST_SETTING must be a URL with scheme https, got 'not a url'",
        ),
        (
            lambda: env_json(VAR, []),
            "[1, 2",
            "TOLLGATE_TEST_SETTING must be valid JSON: Expecting ',' delimiter: line 1 column 6 (char 5)",
        ),
        (
            lambda: env_list(VAR, []),
            "a.example.com,,b.example.com",
            "TOLLGATE_TEST_SETTING must be a comma-separated list without empty items, "
            "got 'a.example.com,,b.example.com'",
        ),
        (
            lambda: env_list(VAR, []),
            "a.example.com, ",
            "TOLLGATE_TEST_SETTING must be a comma-separated list without empty items, got 'a.example.com, '",
        ),
    ],
    ids=[
        "bool",
        "int-letters",
        "int-float",
        "int-minimum",
        "url-scheme",
        "url-garbage",
        "json",
        "list-gap",
        "list-trailing",
    ],
)
def test_malformed_value_raises_improperly_configured_naming_the_variable(monkeypatch, parse, value, message):
    monkeypatch.setenv(VAR, value)

    with pytest.raises(ImproperlyConfigured) as raised:
        parse()

    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("parse", "default"),
    [
        (lambda: env_str(VAR, "plain"), "plain"),
        (lambda: env_bool(VAR, True), True),
        (lambda: env_int(VAR, 72, minimum=1), 72),
        (lambda: env_url(VAR, "redis://127.0.0.1:6379/0", schemes=("redis",)), "redis://127.0.0.1:6379/0"),
        (lambda: env_json(VAR, {"a": [1]}), {"a": [1]}),
        (lambda: env_list(VAR, ["localhost", "127.0.0.1"]), ["localhost", "127.0.0.1"]),
    ],
    ids=["str", "bool", "int", "url", "json", "list"],
)
def test_default_applies_when_variable_is_unset(parse, default):
    assert parse() == default


@pytest.mark.parametrize("parse", [env_str, env_bool, env_int, env_json, env_list], ids=lambda f: f.__name__)
def test_required_variable_without_default_is_an_error(parse):
    with pytest.raises(ImproperlyConfigured) as raised:
        parse(VAR)

    assert str(raised.value) == "TOLLGATE_TEST_SETTING is required but not set"


@pytest.mark.parametrize(
    ("parse", "value", "expected"),
    [
        (lambda: env_bool(VAR, False), " Yes ", True),
        (lambda: env_bool(VAR, True), "off", False),
        (lambda: env_int(VAR, 1, minimum=1), "25", 25),
        (
            lambda: env_url(VAR, "x", schemes=("postgres",)),
            "postgres://u@db:5432/t",
            "postgres://u@db:5432/t",
        ),
        (
            lambda: env_json(VAR, None),
            '{"id": "corp", "scope": ["openid"]}',
            {"id": "corp", "scope": ["openid"]},
        ),
        (lambda: env_list(VAR, ["x"]), " a.example.com , b.example.com ", ["a.example.com", "b.example.com"]),
        (lambda: env_list(VAR, ["x"]), "", []),
    ],
    ids=["bool-yes", "bool-off", "int", "url", "json", "list", "list-empty"],
)
def test_well_formed_value_is_parsed(monkeypatch, parse, value, expected):
    monkeypatch.setenv(VAR, value)

    assert parse() == expected


def _run(args: list[str], **overrides: str) -> subprocess.CompletedProcess:
    """Run Python in a fresh process with the test environment plus ``overrides``."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", **overrides}
    env.pop("SENTRY_DSN", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_process_refuses_to_start_with_a_malformed_debug_flag():
    result = _run(["-c", "import django; django.setup()"], DEBUG="maybe")

    assert result.returncode != 0
    assert "ImproperlyConfigured: DEBUG must be a boolean (true/false/1/0), got 'maybe'" in result.stderr


def test_process_refuses_to_start_with_a_non_postgres_database_url():
    result = _run(["-c", "import django; django.setup()"], DATABASE_URL="mysql://x")

    assert result.returncode != 0
    assert (
        "ImproperlyConfigured: DATABASE_URL must be a URL with scheme postgres or postgresql, got 'mysql://x'"
        in result.stderr
    )


def test_process_refuses_to_start_with_a_short_metrics_token():
    result = _run(["-c", "import django; django.setup()"], METRICS_TOKEN="short")

    assert result.returncode != 0
    assert (
        "ImproperlyConfigured: METRICS_TOKEN must be at least 16 characters (or unset: loopback only)"
        in result.stderr
    )


def test_manage_py_check_refuses_a_malformed_allowed_hosts_list():
    result = _run(["manage.py", "check"], ALLOWED_HOSTS="tollgate.example.com,")

    assert result.returncode != 0
    assert "ALLOWED_HOSTS must be a comma-separated list without empty items" in result.stderr


def test_production_settings_pass_the_deploy_checks_without_warnings(monkeypatch):
    # Production defaults only: the test suite's relaxations must not leak into the check.
    monkeypatch.delenv("SECURE_SSL_REDIRECT", raising=False)
    monkeypatch.delenv("SESSION_COOKIE_SECURE", raising=False)
    monkeypatch.delenv("SECURE_HSTS_SECONDS", raising=False)

    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="tollgate.example.com",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_deploy_checks_fail_when_production_protections_are_switched_off(monkeypatch):
    monkeypatch.delenv("SESSION_COOKIE_SECURE", raising=False)

    result = _run(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="tollgate.example.com",
        SECURE_SSL_REDIRECT="false",
    )

    assert result.returncode != 0
    assert "security.W008" in result.stderr


def test_process_refuses_to_start_with_a_blank_site_name():
    result = _run(["-c", "import django; django.setup()"], SITE_NAME="  ")

    assert result.returncode != 0
    assert "ImproperlyConfigured: SITE_NAME must not be empty" in result.stderr
