"""Edge configuration: the environment plus one YAML file, parsed once at start."""

import fnmatch
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

from edge.streams import MAX_SHARDS


class ConfigError(ValueError):
    """The configuration is invalid; the message names the setting."""


@dataclass(frozen=True)
class Upstream:
    url: str
    weight: int = 1
    api_key: str = ""
    connect_timeout: float = 5.0
    read_timeout: float = 300.0


@dataclass(frozen=True)
class Route:
    pattern: str
    upstreams: tuple[Upstream, ...]

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.pattern)


@dataclass(frozen=True)
class HttpLimits:
    """Bounds on a request's head, enforced while it is parsed (edge/http.py)."""

    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024  # names and values of all headers together
    max_headers: int = 100


@dataclass(frozen=True)
class EdgeConfig:
    redis_url: str
    pepper: bytes
    routes: tuple[Route, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    body_limit_bytes: int = 10 * 1024 * 1024
    http: HttpLimits = HttpLimits()
    auth_cache_ttl: float = 10.0
    auth_cache_size: int = 100_000
    stale_auth_seconds: float = 300.0
    # Look-ups of keys this process does not know, per client address: a burst, then a rate;
    # the buckets of this many addresses are kept (see edge.auth.LookupThrottle).
    unknown_key_burst: int = 20
    unknown_key_per_second: float = 1.0
    unknown_key_addresses: int = 10_000
    spool_dir: str = ".run/spool"
    spool_fsync_ms: int = 50
    lease_ttl_seconds: int = 600
    # Peers whose X-Forwarded-For is believed (see edge.auth.client_address); none by default.
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    default_max_tokens: int = 4096
    access_log: bool = True
    # Redis unreachable: serve known keys without limits (True) or refuse with 503 (False).
    fail_open: bool = True
    # /metrics: the bearer of this token, or (unset) only clients on this host.
    metrics_token: str = ""
    # redis_url names one node of a Redis Cluster (any: the others are discovered).
    redis_cluster: bool = False
    # Usage streams (edge/streams.py): the ingest consumers must be given the same number.
    usage_stream_shards: int = 1

    def route_for(self, model: str) -> Route | None:
        for route in self.routes:
            if route.matches(model):
                return route
        return None


# Set by ``python -m edge`` when it runs worker processes: workers stop when that process is gone.
MASTER_PID_ENV = "TOLLGATE_EDGE_MASTER_PID"

_ENV_REF = re.compile(r"\$\{([A-Z0-9_]+)\}")
# The settings each mapping may hold: a misspelt one is an error, not a silent default.
TOP_LEVEL = {
    "listen",
    "workers",
    "body_limit_bytes",
    "http",
    "auth_cache",
    "unknown_keys",
    "spool",
    "lease_ttl_seconds",
    "default_max_tokens",
    "trusted_proxies",
    "access_log",
    "fail_open",
    "metrics_token",
    "redis_url",
    "redis_cluster",
    "usage_stream_shards",
    "routes",
}
LISTEN = {"host", "port"}
HTTP = {"max_url_bytes", "max_header_bytes", "max_headers"}
AUTH_CACHE = {"ttl_seconds", "max_entries", "stale_seconds"}
UNKNOWN_KEYS = {"burst", "per_second", "max_addresses"}
SPOOL = {"dir", "fsync_ms"}
ROUTE = {"model", "upstreams"}
UPSTREAM = {"url", "weight", "api_key", "connect_timeout", "read_timeout"}


def _mapping(raw, name: str, allowed: set[str]) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must be a mapping")
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise ConfigError(
            f"{name} has unknown settings: {', '.join(unknown)} (known: {', '.join(sorted(allowed))})"
        )
    return raw


def _expand(value: str, env) -> str:
    def replace(match):
        name = match.group(1)
        if name not in env:
            raise ConfigError(f"environment variable {name} referenced in the config is not set")
        return env[name]

    return _ENV_REF.sub(replace, value)


def _number(raw, name: str, kind=float, minimum=0):
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _networks(raw, name: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse a list of CIDRs; a host address is its own /32 or /128."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{name} must be a list of CIDRs, got {raw!r}")
    networks = []
    for entry in raw:
        try:
            # strict: 10.0.0.1/8 is a typo for a host or for 10.0.0.0/8, and we cannot tell which.
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=True))
        except ValueError:
            raise ConfigError(f"{name} has an entry that is not a CIDR: {entry!r}") from None
    return tuple(networks)


def _routes(raw, env) -> tuple[Route, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("routes must be a non-empty list")
    routes = []
    for index, item in enumerate(raw):
        where = f"routes[{index}]"
        item = _mapping(item, where, ROUTE)
        if not isinstance(item.get("model"), str) or not item["model"]:
            raise ConfigError(f"{where}.model must be a model name or glob")
        upstreams = item.get("upstreams")
        if not isinstance(upstreams, list) or not upstreams:
            raise ConfigError(f"{where}.upstreams must be a non-empty list")
        parsed = []
        for u_index, upstream in enumerate(upstreams):
            u_where = f"{where}.upstreams[{u_index}]"
            if isinstance(upstream, str):
                upstream = {"url": upstream}
            upstream = _mapping(upstream, u_where, UPSTREAM)
            url = _expand(str(upstream.get("url", "")), env).rstrip("/")
            if not re.match(r"^https?://[^/]+", url):
                raise ConfigError(f"{u_where}.url must be an http(s) URL, got {url!r}")
            if "@" in url.split("/", 3)[2]:
                raise ConfigError(
                    f"{u_where}.url must not hold credentials: put the upstream's key in api_key"
                )
            parsed.append(
                Upstream(
                    url=url,
                    weight=_number(upstream.get("weight", 1), f"{u_where}.weight", int, 1),
                    api_key=_expand(str(upstream.get("api_key", "")), env),
                    connect_timeout=_number(
                        upstream.get("connect_timeout", 5), f"{u_where}.connect_timeout", minimum=0.001
                    ),
                    read_timeout=_number(
                        upstream.get("read_timeout", 300), f"{u_where}.read_timeout", minimum=0.001
                    ),
                )
            )
        routes.append(Route(pattern=item["model"], upstreams=tuple(parsed)))
    return tuple(routes)


def load_config(path: str | None = None, env=None) -> EdgeConfig:
    """Read ``EDGE_CONFIG`` (or ``path``) and the environment. Raise ConfigError when invalid."""
    env = os.environ if env is None else env
    path = path or env.get("EDGE_CONFIG")
    if not path:
        raise ConfigError("EDGE_CONFIG (path of the edge YAML file) is not set")
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read EDGE_CONFIG {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("the edge config must be a mapping")
    if "trust_forwarded_for" in data:
        # Removed, not ignored: it trusted the leftmost X-Forwarded-For entry, which the client writes.
        raise ConfigError(
            "trust_forwarded_for has been removed: list the proxies in front of the edge in trusted_proxies"
        )
    _mapping(data, "the edge config", TOP_LEVEL)
    pepper = env.get("KEY_PEPPER", "")
    if len(pepper) < 32:
        raise ConfigError("KEY_PEPPER must be set to the portal's value (32+ characters)")
    redis_url = env.get("EDGE_REDIS_URL") or env.get("REDIS_URL") or data.get("redis_url")
    if not redis_url or not re.match(r"^(redis|rediss|unix)://", redis_url):
        raise ConfigError("EDGE_REDIS_URL (or redis_url in the config) must be a redis:// URL")
    listen = _mapping(data.get("listen"), "listen", LISTEN)
    cache = _mapping(data.get("auth_cache"), "auth_cache", AUTH_CACHE)
    unknown_keys = _mapping(data.get("unknown_keys"), "unknown_keys", UNKNOWN_KEYS)
    spool = _mapping(data.get("spool"), "spool", SPOOL)
    http = _mapping(data.get("http"), "http", HTTP)
    return EdgeConfig(
        redis_url=redis_url,
        pepper=pepper.encode(),
        routes=_routes(data.get("routes"), env),
        host=env.get("EDGE_HOST") or listen.get("host", "127.0.0.1"),
        port=_number(env.get("EDGE_PORT") or listen.get("port", 8080), "EDGE_PORT", int, 1),
        workers=_number(
            env.get("EDGE_WORKERS") or data.get("workers", os.cpu_count() or 1), "EDGE_WORKERS", int, 1
        ),
        body_limit_bytes=_number(
            data.get("body_limit_bytes", 10 * 1024 * 1024), "body_limit_bytes", int, 1024
        ),
        http=_http_limits(http),
        auth_cache_ttl=_number(cache.get("ttl_seconds", 10), "auth_cache.ttl_seconds"),
        auth_cache_size=_number(cache.get("max_entries", 100_000), "auth_cache.max_entries", int, 1),
        stale_auth_seconds=_number(
            env.get("EDGE_STALE_AUTH_SECONDS") or cache.get("stale_seconds", 300), "auth_cache.stale_seconds"
        ),
        unknown_key_burst=_number(unknown_keys.get("burst", 20), "unknown_keys.burst", int, 1),
        unknown_key_per_second=_number(
            unknown_keys.get("per_second", 1), "unknown_keys.per_second", minimum=0.001
        ),
        unknown_key_addresses=_number(
            unknown_keys.get("max_addresses", 10_000), "unknown_keys.max_addresses", int, 1
        ),
        spool_dir=env.get("EDGE_SPOOL_DIR") or spool.get("dir", ".run/spool"),
        spool_fsync_ms=_number(spool.get("fsync_ms", 50), "spool.fsync_ms", int, 1),
        lease_ttl_seconds=_number(data.get("lease_ttl_seconds", 600), "lease_ttl_seconds", int, 1),
        trusted_proxies=_trusted_proxies(data, env),
        default_max_tokens=_number(data.get("default_max_tokens", 4096), "default_max_tokens", int, 1),
        access_log=_boolean(env.get("EDGE_ACCESS_LOG", data.get("access_log", True)), "access_log"),
        fail_open=_boolean(env.get("EDGE_FAIL_OPEN", data.get("fail_open", True)), "fail_open"),
        metrics_token=_metrics_token(
            _expand(str(env.get("EDGE_METRICS_TOKEN") or data.get("metrics_token") or ""), env)
        ),
        redis_cluster=_redis_cluster(
            redis_url, env.get("EDGE_REDIS_CLUSTER", data.get("redis_cluster", False))
        ),
        usage_stream_shards=_usage_stream_shards(
            env.get("EDGE_USAGE_STREAM_SHARDS") or data.get("usage_stream_shards", 1)
        ),
    )


def _usage_stream_shards(raw) -> int:
    shards = _number(raw, "usage_stream_shards", int, 1)
    if shards > MAX_SHARDS:
        raise ConfigError(f"usage_stream_shards must be <= {MAX_SHARDS}, got {shards}")
    return shards


def _redis_cluster(redis_url: str, raw) -> bool:
    cluster = _boolean(raw, "redis_cluster")
    if cluster:
        parsed = urlparse(redis_url)
        if parsed.scheme == "unix":
            raise ConfigError("redis_cluster needs a redis:// or rediss:// URL of a node, not a socket")
        if parsed.path.strip("/") not in ("", "0"):
            raise ConfigError("redis_cluster: a Redis Cluster has only database 0, remove it from the URL")
    return cluster


def _http_limits(raw: dict) -> HttpLimits:
    # The minimums keep ordinary clients working: browsers and SDKs send a few KiB of headers.
    minimums = {"max_url_bytes": 1024, "max_header_bytes": 4096, "max_headers": 16}
    return HttpLimits(
        **{
            name: _number(raw.get(name, getattr(HttpLimits, name)), f"http.{name}", int, minimum)
            for name, minimum in minimums.items()
        }
    )


def _metrics_token(raw: str) -> str:
    if raw and len(raw) < 16:
        raise ConfigError("metrics_token must be at least 16 characters (or unset: loopback only)")
    return raw


def _trusted_proxies(data: dict, env):
    # EDGE_TRUSTED_PROXIES, even empty, replaces the file's list: comma-separated CIDRs.
    if "EDGE_TRUSTED_PROXIES" in env:
        entries = [part.strip() for part in env["EDGE_TRUSTED_PROXIES"].split(",") if part.strip()]
        return _networks(entries, "EDGE_TRUSTED_PROXIES")
    return _networks(data.get("trusted_proxies"), "trusted_proxies")


def _boolean(raw, name: str) -> bool:
    if isinstance(raw, bool):
        return raw
    lowered = str(raw).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")
