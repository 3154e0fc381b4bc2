"""Strict parsing of settings from the environment.

A malformed value is a start-up error that names the variable; a missing optional value
falls back to the given default. Nothing here guesses.
"""

import json
import os
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_MISSING = object()


def _raw(name: str, default):
    value = os.environ.get(name)
    if value is None:
        if default is _MISSING:
            raise ImproperlyConfigured(f"{name} is required but not set")
        return None
    return value


def env_str(name: str, default=_MISSING) -> str:
    value = _raw(name, default)
    return default if value is None else value


def env_bool(name: str, default=_MISSING) -> bool:
    value = _raw(name, default)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false/1/0), got {value!r}")


def env_int(name: str, default=_MISSING, *, minimum: int | None = None) -> int:
    value = _raw(name, default)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {number}")
    return number


def env_list(name: str, default=_MISSING) -> list[str]:
    value = _raw(name, default)
    if value is None:
        return list(default)
    if not value.strip():
        return []
    items = [item.strip() for item in value.split(",")]
    if not all(items):
        # A stray comma usually means a value went missing while editing; say so at start-up.
        raise ImproperlyConfigured(
            f"{name} must be a comma-separated list without empty items, got {value!r}"
        )
    return items


def env_days(name: str, default=_MISSING, *, before: int) -> tuple[int, ...]:
    """Parse a schedule of whole days, e.g. ``1,3,5,7``: strictly increasing, each from 1 to ``before - 1``."""
    items = env_list(name, default)
    try:
        days = tuple(int(item) for item in items)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be whole days separated by commas, got {items!r}") from None
    if any(day < 1 or day >= before for day in days):
        raise ImproperlyConfigured(f"{name} must be days from 1 to {before - 1}, got {days!r}")
    if any(later <= earlier for earlier, later in zip(days, days[1:], strict=False)):
        raise ImproperlyConfigured(f"{name} must be in increasing order without repeats, got {days!r}")
    return days


def env_url(name: str, default=_MISSING, *, schemes: tuple[str, ...]) -> str:
    value = _raw(name, default)
    if value is None:
        return default
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
        raise ImproperlyConfigured(f"{name} must be a URL with scheme {' or '.join(schemes)}, got {value!r}")
    return value


def env_json(name: str, default=_MISSING):
    value = _raw(name, default)
    if value is None:
        return default
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{name} must be valid JSON: {exc}") from None


def oidc_providers(name: str = "OIDC_PROVIDERS") -> list[dict]:
    """Parse the generic OpenID Connect providers.

    The value is a JSON list of objects with ``id``, ``name``, ``server_url``,
    ``client_id`` and ``client_secret`` (and optional ``scope``, a list).
    """
    providers = env_json(name, [])
    if not isinstance(providers, list):
        raise ImproperlyConfigured(f"{name} must be a JSON list of provider objects")
    apps = []
    seen = set()
    for index, item in enumerate(providers):
        required = ("id", "name", "server_url", "client_id", "client_secret")
        if not isinstance(item, dict) or any(not item.get(key) for key in required):
            raise ImproperlyConfigured(f"{name}[{index}] must be an object with {', '.join(required)}")
        if item["id"] in seen:
            raise ImproperlyConfigured(f"{name}[{index}]: duplicate id {item['id']!r}")
        seen.add(item["id"])
        if urlparse(item["server_url"]).scheme not in ("http", "https"):
            raise ImproperlyConfigured(f"{name}[{index}].server_url must be an http(s) URL")
        app = {
            "provider_id": item["id"],
            "name": item["name"],
            "client_id": item["client_id"],
            "secret": item["client_secret"],
            "settings": {"server_url": item["server_url"]},
        }
        if item.get("scope"):
            app["settings"]["scope"] = list(item["scope"])
        apps.append(app)
    return apps
