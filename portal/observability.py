"""Request logging, Prometheus metrics and Sentry set-up for the web and worker processes."""

import json
import logging
import os
import re
import time
import uuid

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from edge.requestid import client_request_id

logger = logging.getLogger("tollgate.request")

REQUESTS = Counter(
    "tollgate_http_requests_total", "HTTP requests by view, method and status", ["view", "method", "status"]
)
LATENCY = Histogram(
    "tollgate_http_request_duration_seconds",
    "HTTP request latency by view",
    ["view", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

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
        user = getattr(request, "user", None)
        organization = getattr(request, "organization", None)
        logger.info(
            "request",
            extra={
                "request_id": request.request_id,
                "method": request.method,
                "path": request.path,
                "view": view,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
                "user_id": user.pk if user is not None and user.is_authenticated else None,
                "organization_id": organization.pk if organization is not None else None,
            },
        )
        return response


def metrics_payload() -> bytes:
    """Render the metrics of this process, or of all processes in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)


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
