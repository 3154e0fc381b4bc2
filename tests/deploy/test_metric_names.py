"""Every metric a dashboard or an alert rule names is exported by the running processes.

The processes are started the way the image starts them (deploy/entrypoint.sh): web under
gunicorn, an edge, a usage consumer, a Celery worker and the mock model server, against the
test's Postgres and Redis. A key with a limit of one request a minute is served once and
refused once, so that the edge exports its request, latency and refusal series. A renamed
metric then fails here instead of leaving a dashboard empty.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from edge.metrics import UPSTREAM_ERROR_KINDS
from edge.records import SYNCED_KEY
from keys import services as key_services
from portal.audit import Actor
from tests.factories import make_org, make_user
from tests.servers import free_port
from tests.usage.processes import current_database_url

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = {"up"}
METRIC_NAME = re.compile(r"\b(tollgate_[a-z0-9_]+|tollgate:[a-z0-9_:]+|up)\b")
SUFFIXES = ("_bucket", "_sum", "_count")


class Process:
    """One process of the image, started by its entrypoint, its output in a log file."""

    def __init__(self, name: str, env: dict, directory: Path):
        self.name = name
        self.log = directory / f"{name}.log"
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                ["bash", str(ENTRYPOINT), name],
                env={**env, "TOLLGATE_STATE_FILE": str(directory / f"{name}.process")},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # gunicorn, the edge and Celery fork: stop the whole group
            )

    def wait(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, f"{self.name} exited:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not answer {url}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


@pytest.fixture(scope="module")
def processes(tmp_path_factory, django_db_setup, django_db_blocker):
    """Start the processes once for the module (they take seconds each to start)."""
    tmp_path = tmp_path_factory.mktemp("processes")
    with django_db_blocker.unblock():
        database_url = current_database_url()
    ports = {name: free_port() for name in ("web", "edge", "ingest", "worker", "mock")}
    edge_config = tmp_path / "edge.yaml"
    edge_config.write_text(
        yaml.safe_dump(
            {"routes": [{"model": "demo-*", "upstreams": [{"url": f"http://127.0.0.1:{ports['mock']}"}]}]}
        )
    )
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
        "TMPDIR": str(tmp_path),
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
        "WEB_PORT": str(ports["web"]),
        "WEB_WORKERS": "1",
        "EDGE_PORT": str(ports["edge"]),
        "EDGE_WORKERS": "1",
        "EDGE_CONFIG": str(edge_config),
        "EDGE_SPOOL_DIR": str(tmp_path / "spool"),
        "INGEST_METRICS_PORT": str(ports["ingest"]),
        "WORKER_METRICS_PORT": str(ports["worker"]),
        "WORKER_CONCURRENCY": "1",
        "MOCK_PORT": str(ports["mock"]),
    }
    for name in (
        "METRICS_TOKEN",
        "EDGE_METRICS_TOKEN",
        "EDGE_REDIS_URL",
        "SENTRY_DSN",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        env.pop(name, None)
    started = {}
    try:
        for name in ("mock", "web", "edge", "ingest", "worker"):
            started[name] = Process(name, env, tmp_path)
        for name, process in started.items():
            process.wait(f"http://127.0.0.1:{ports[name]}/healthz")
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        for process in started.values():
            process.stop()


def exported(url: str) -> set[str]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    names = set()
    for family in text_string_to_metric_families(response.text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def upstream_errors(url: str) -> dict[tuple[str, str], float]:
    """Return the edge's upstream error counters by (upstream, kind)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.labels["upstream"], sample.labels["kind"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tollgate_edge_upstream_errors_total"
    }


def named_in_monitoring() -> tuple[set[str], set[str]]:
    """Return the metric names the dashboards and rules query, and the recording rules they define."""
    expressions = [
        target["expr"]
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]
    recorded = set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                expressions.append(rule["expr"])
                if "record" in rule:
                    recorded.add(rule["record"])
    names = {match for expr in expressions for match in METRIC_NAME.findall(expr)}
    return names, recorded


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def data_plane_restored(redis_client, timeout: float = 20) -> None:
    """Wait for the consumer to re-publish the edge's data plane (each test starts on an empty Redis)."""
    deadline = time.monotonic() + timeout
    while not redis_client.exists(SYNCED_KEY):
        assert time.monotonic() < deadline, "the consumer did not re-publish the edge's data plane"
        time.sleep(0.1)


def test_every_metric_in_the_dashboards_and_alert_rules_is_exported_by_a_running_process(
    processes, raw_events_cleared, redis_client
):
    data_plane_restored(redis_client)
    owner = make_user()
    key, secret = key_services.api_key_create(
        actor=Actor(user=owner), organization=make_org(owner), name="metrics", rpm_limit=1
    )
    client = openai.OpenAI(base_url=f"{processes['edge']}/v1", api_key=secret, max_retries=0)
    stream = client.chat.completions.create(
        model="demo-chat", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="demo-chat", messages=[{"role": "user", "content": "again"}])
    assert refused.value.status_code == 429

    by_process = {name: exported(url) for name, url in processes.items() if name != "mock"}
    everything = set().union(*by_process.values())
    names, recorded = named_in_monitoring()

    assert {
        "tollgate_edge_requests_total",
        "tollgate_edge_upstream_errors_total",
        "tollgate_ingest_lag_seconds",
        "up",
    } <= names
    missing = sorted(
        name
        for name in names
        if name not in PROMETHEUS_OWN
        and ":" not in name
        and name not in everything
        and base_name(name) not in everything
    )
    assert missing == []
    assert sorted(name for name in names if ":" in name and name not in recorded) == []
    # The lag alert must outlive the consumers: the web exports the gauge as well.
    assert "tollgate_ingest_lag_seconds" in by_process["web"]
    assert "tollgate_ingest_lag_seconds" in by_process["ingest"]
    assert "tollgate_billing_reconcile_differences_total" in by_process["worker"]
    assert "tollgate_edge_limit_refusals_total" in by_process["edge"]
    # No upstream has failed: the edge exports its configured upstream's error series at zero.
    assert upstream_errors(processes["edge"]) == {
        (processes["mock"], kind): 0.0 for kind in UPSTREAM_ERROR_KINDS
    }


@pytest.mark.parametrize("process", ["ingest", "worker"])
def test_the_consumer_and_the_worker_answer_the_kubernetes_probes_on_their_metrics_port(processes, process):
    url = processes[process]
    ready = httpx.get(f"{url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}
    health = httpx.get(f"{url}/healthz", timeout=5)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert httpx.get(f"{url}/nothing", timeout=5).status_code == 404
