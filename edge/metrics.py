"""Prometheus metrics of the edge (multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set)."""

import os

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)

REQUESTS = Counter(
    "tollgate_edge_requests_total", "Requests by status, model and organization", ["status", "model", "org"]
)
TOTAL = Histogram("tollgate_edge_request_seconds", "Total request time", buckets=LATENCY_BUCKETS)
OVERHEAD = Histogram(
    "tollgate_edge_overhead_seconds", "Time spent in the edge itself", buckets=OVERHEAD_BUCKETS
)
UPSTREAM = Histogram("tollgate_edge_upstream_seconds", "Upstream time", buckets=LATENCY_BUCKETS)
TTFT = Histogram(
    "tollgate_edge_time_to_first_token_seconds", "Time to first streamed byte", buckets=LATENCY_BUCKETS
)
AUTH_CACHE = Counter("tollgate_edge_auth_cache_total", "Key lookups by cache result", ["result"])
AUTH_CACHE_HIT = AUTH_CACHE.labels("hit")  # bound once: every request takes this path
UNKNOWN_KEY_THROTTLED = Counter(
    "tollgate_edge_unknown_key_throttled_total",
    "Requests refused (429) because their address looked up too many unknown keys",
)
REFUSALS = Counter("tollgate_edge_limit_refusals_total", "Requests refused by a limit", ["scope", "kind"])
SPOOLED = Counter("tollgate_edge_spooled_events_total", "Usage events written to the local spool")
SPOOL_PENDING = Gauge("tollgate_edge_spool_pending", "Usage events in the spool", multiprocess_mode="livesum")
PUBLISH_FAILURES = Counter("tollgate_edge_publish_failures_total", "Failed usage publications to Redis")
UPSTREAM_FAILOVERS = Counter("tollgate_edge_upstream_failovers_total", "Requests retried on another upstream")
UPSTREAM_ERRORS = Counter(
    "tollgate_edge_upstream_errors_total",
    "Failed exchanges with an upstream, by its configured URL and the kind of failure",
    ["upstream", "kind"],
)
# Each kind is the ``kind`` of an edge.upstream error, or an answer with a 5xx status.
UPSTREAM_ERROR_KINDS = ("connect", "connect_timeout", "read_timeout", "disconnect", "status_5xx")

ADMISSION_ERRORS = Counter(
    "tollgate_edge_admission_errors_total", "Admissions that could not run, by cause", ["cause"]
)
JOURNAL_FAILURES = Counter("tollgate_edge_journal_failures_total", "Journal writes that failed (disk)")
UNCHECKED = Counter(
    "tollgate_edge_unchecked_admissions_total", "Requests served without limits while Redis was unreachable"
)


class UpstreamErrors:
    """The error counters of the configured upstreams, made once at start.

    Making a series exports it at zero, so each configured upstream is on /metrics before its
    first failure; the label values come from the configuration only, never from a request.
    """

    def __init__(self, urls):
        self._series = {
            (url, kind): UPSTREAM_ERRORS.labels(url, kind) for url in urls for kind in UPSTREAM_ERROR_KINDS
        }

    def count(self, url: str, kind: str) -> None:
        self._series[url, kind].inc()


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)
