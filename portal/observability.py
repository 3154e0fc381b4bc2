"""Request logging, Prometheus metrics, health probes and Sentry set-up for the web, worker and consumer."""

import hmac
import ipaddress
import json
import logging
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import DatabaseError, connection
from django.urls import Resolver404, resolve
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import GaugeMetricFamily

from edge.requestid import client_request_id

logger = logging.getLogger("tollgate.request")
metrics_logger = logging.getLogger("tollgate.metrics")

REQUESTS = Counter(
    "tollgate_http_requests_total", "HTTP requests by view, method and status", ["view", "method", "status"]
)
LATENCY = Histogram(
    "tollgate_http_request_duration_seconds",
    "HTTP request latency by view",
    ["view", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# URL parts that are credentials: invitation tokens, allauth's email confirmation and
# password reset keys. Logs and error reports show the route with these filtered.
_SECRET_URL_KWARGS = ("token", "key")
FILTERED = "[Filtered]"
_LOG_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra= fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _LOG_RECORD_FIELDS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def loggable_path(path: str, match=None) -> str:
    """Return ``path`` with the secret parts of its URL (one-time tokens) filtered."""
    if match is None:
        try:
            match = resolve(path)
        except Resolver404:
            return path
    for name in _SECRET_URL_KWARGS:
        value = match.kwargs.get(name)
        if value:
            path = path.replace(str(value), FILTERED)
    return path


class TaskArgumentsFilter(logging.Filter):
    """Keep Celery's task arguments out of its "received" and "succeeded" log records.

    Celery hands those records the arguments (in ``args`` and the ``data`` extra) for
    custom formats; a task argument may be a secret, and JSON logs print every extra.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for context in (record.args, getattr(record, "data", None)):
            if isinstance(context, dict):
                for name in ("args", "kwargs"):
                    if name in context:
                        context[name] = FILTERED
        return True


class RequestObservabilityMiddleware:
    """Assign a request id, log one JSON line per request and count it in Prometheus."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = client_request_id(request.headers.get("X-Request-ID")) or uuid.uuid4().hex
        started = time.perf_counter()
        response = self.get_response(request)
        duration = time.perf_counter() - started
        match = getattr(request, "resolver_match", None)
        view = match.view_name if match and match.view_name else "unmatched"
        REQUESTS.labels(view, request.method, str(response.status_code)).inc()
        LATENCY.labels(view, request.method).observe(duration)
        response["X-Request-ID"] = request.request_id
        if request.path.startswith(settings.REQUEST_LOG_SKIP_PREFIXES):
            return response
        user = getattr(request, "user", None)
        organization = getattr(request, "organization", None)
        logger.info(
            "request",
            extra={
                "request_id": request.request_id,
                "method": request.method,
                "path": loggable_path(request.path, match) if match else request.path,
                "view": view,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
                "user_id": user.pk if user is not None and user.is_authenticated else None,
                "organization_id": organization.pk if organization is not None else None,
            },
        )
        return response


def metrics_refusal(*, remote_addr: str, authorization: str, token: str) -> tuple[int, str] | None:
    """Say why ``/metrics`` refuses this client, or None to answer it.

    The edge's rule: with a token configured, only its bearer; without one, only this host.
    """
    if token:
        scheme, _, offered = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), token.encode()):
            return 401, "The metrics need the configured bearer token."
        return None
    try:
        loopback = ipaddress.ip_address(remote_addr).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return (
            403,
            "The metrics answer clients on this host only; set METRICS_TOKEN to scrape from elsewhere.",
        )
    return None


def process_registry() -> CollectorRegistry:
    """Return the registry of this process, or of all its forks in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return DEFAULT_REGISTRY


class StoreCollector:
    """Gauges no process owns, read from Postgres and Redis each time the web is scraped.

    The ingest lag is here as well as on each consumer so that it still rises, and its alert
    still fires, when every consumer is down. A store that does not answer leaves its gauges
    out of this scrape (the alert rules treat an absent series as a failure of its own).
    """

    def collect(self):
        import redis

        from edge.streams import usage_stream
        from keys.publication import edge_redis_connect
        from portal.celery import app
        from portal.models import Organization
        from portal.selectors import organizations_count_by_status_all_tenants
        from usage.lag import ingest_lag_seconds

        shards, group = settings.USAGE_STREAM_SHARDS, settings.USAGE_CONSUMER_GROUP

        try:
            counts = organizations_count_by_status_all_tenants()
        except DatabaseError as exc:
            _collect_failed("postgres", exc)
        else:
            organizations = GaugeMetricFamily(
                "tollgate_organizations",
                "Organizations by status (active, past_due, suspended)",
                labels=["status"],
            )
            for status in Organization.Status:
                organizations.add_metric([status.value], counts.get(status.value, 0))
            yield organizations

        queue = app.conf.task_default_queue
        try:
            with redis.Redis.from_url(settings.CELERY_BROKER_URL, **_SCRAPE_TIMEOUTS) as broker:
                length = broker.llen(queue)
        except redis.RedisError as exc:
            _collect_failed("broker", exc)
        else:
            family = GaugeMetricFamily(
                "tollgate_celery_queue_length", "Tasks waiting in the broker", labels=["queue"]
            )
            family.add_metric([queue], length)
            yield family

        try:
            with edge_redis_connect(**_SCRAPE_TIMEOUTS) as client:
                # The worst shard: the alert is about the oldest event anyone is waiting for.
                lag = max(
                    ingest_lag_seconds(client, stream=usage_stream(shard, shards), group=group)
                    for shard in range(shards)
                )
        except redis.RedisError as exc:
            _collect_failed("redis", exc)
        else:
            yield GaugeMetricFamily(
                "tollgate_ingest_lag_seconds",
                "Age of the oldest unacknowledged or unread entry of the usage stream group",
                value=lag,
            )


_SCRAPE_TIMEOUTS = {"socket_timeout": 1, "socket_connect_timeout": 1}
# auto_describe off: registering must not query the stores (at import, before settings are ready).
_STORE_REGISTRY = CollectorRegistry(auto_describe=False)
_STORE_REGISTRY.register(StoreCollector())


def _collect_failed(store: str, exc: Exception) -> None:
    metrics_logger.warning(
        "a store did not answer at scrape time",
        extra={"store": store, "error": f"{type(exc).__name__}: {exc}"},
    )


def metrics_payload() -> bytes:
    """Render the web's metrics: its processes' series, then the gauges read from the stores."""
    return generate_latest(process_registry()) + generate_latest(_STORE_REGISTRY)


def readiness() -> tuple[int, dict]:
    """Check that Postgres and Redis answer; return the status code and body of ``/readyz``."""
    import redis

    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return (200 if ready else 503), {"status": "ok" if ready else "unavailable", "checks": checks}


class _ProbeHandler(BaseHTTPRequestHandler):
    """``/healthz``, ``/readyz`` and ``/metrics`` of a process that has no web server of its own."""

    def do_GET(self):
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._send(200, generate_latest(process_registry()), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b'{"status": "ok"}')
        elif path == "/readyz":
            try:
                status, payload = readiness()
            finally:
                connection.close()  # each request has a thread of its own, and so a connection
            self._send(status, json.dumps(payload).encode())
        else:
            self._send(404, b'{"status": "not found"}')

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        """Stay quiet: probes arrive every few seconds."""


def probes_serve(*, host: str, port: int) -> ThreadingHTTPServer:
    """Serve the probes and metrics of this process (ingest, worker) from a daemon thread.

    The port has no token: keep it on a network only the kubelet and Prometheus reach.
    """
    server = ThreadingHTTPServer((host, port), _ProbeHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server


_SECRET_KEYS = re.compile(
    r"(secret|password|passwd|token|api[_-]?key|authorization|cookie|session|pepper|dsn)", re.I
)
_SECRET_VALUES = re.compile(r"tg_(live|test)_[A-Za-z0-9]+")


def scrub(value):
    """Replace secrets in a Sentry event: by key name, and Tollgate key patterns anywhere."""
    if isinstance(value, dict):
        return {
            key: "[Filtered]" if isinstance(key, str) and _SECRET_KEYS.search(key) else scrub(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [scrub(item) for item in value]
    if isinstance(value, str):
        return _SECRET_VALUES.sub("[Filtered]", value)
    return value


def _before_send(event, hint):
    request = event.get("request")
    if isinstance(request, dict) and isinstance(request.get("url"), str):
        parts = urlsplit(request["url"])
        request["url"] = urlunsplit(parts._replace(path=loggable_path(parts.path)))
    return scrub(event)


def sentry_init(dsn: str, environment: str) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        send_default_pii=False,
        before_send=_before_send,
        before_send_transaction=_before_send,
        traces_sample_rate=0.0,
    )
