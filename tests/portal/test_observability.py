"""Request logs, Prometheus metrics, health probes and Sentry scrubbing, against real stores."""

import gzip
import json
import logging
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
import sentry_sdk
from prometheus_client.parser import text_string_to_metric_families

from portal.observability import JsonFormatter, scrub
from tests.factories import make_org, make_user

pytestmark = pytest.mark.django_db

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def request_lines(caplog) -> list[dict]:
    """Render the captured ``tollgate.request`` records exactly as production logs them."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "tollgate.request"]


def sample_value(client, name: str, labels: dict) -> float:
    """Read one sample from ``/metrics``; a series not yet exported reads as 0."""
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


# --- Request logging --------------------------------------------------------------------


def test_each_request_logs_one_json_line_with_user_and_organization(client, caplog):
    owner = make_user()
    organization = make_org(owner)
    client.force_login(owner)

    with caplog.at_level(logging.INFO, logger="tollgate.request"):
        response = client.get(f"/o/{organization.slug}/members/")

    assert response.status_code == 200
    lines = request_lines(caplog)
    assert len(lines) == 1
    line = lines[0]
    assert line["logger"] == "tollgate.request"
    assert line["level"] == "INFO"
    assert line["message"] == "request"
    assert HEX_ID.match(line["request_id"])
    assert line["request_id"] == response["X-Request-ID"]
    assert line["method"] == "GET"
    assert line["path"] == f"/o/{organization.slug}/members/"
    assert line["view"] == "org-members"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0
    assert line["user_id"] == owner.pk
    assert line["organization_id"] == organization.pk


def test_static_files_get_no_request_line_but_pages_still_do(client, caplog):
    with caplog.at_level(logging.INFO, logger="tollgate.request"):
        static = client.get("/static/tollgate.css")
        health = client.get("/healthz")

    assert static["X-Request-ID"]
    assert health.status_code == 200
    assert [line["path"] for line in request_lines(caplog)] == ["/healthz"]


def test_the_skipped_prefixes_are_a_setting(client, caplog, settings):
    settings.REQUEST_LOG_SKIP_PREFIXES = ("/healthz",)
    with caplog.at_level(logging.INFO, logger="tollgate.request"):
        client.get("/static/tollgate.css")
        client.get("/healthz")

    assert [line["path"] for line in request_lines(caplog)] == ["/static/tollgate.css"]


def test_the_demo_web_process_writes_no_access_log_beside_the_json_lines():
    web = next(line for line in Path("Procfile").read_text().splitlines() if line.startswith("web:"))
    assert web.split(":", 1)[1].split()[0] == "gunicorn"
    assert "access" not in web


def test_anonymous_request_logs_null_user_and_organization(client, caplog):
    with caplog.at_level(logging.INFO, logger="tollgate.request"):
        response = client.get("/healthz")

    assert response.status_code == 200
    [line] = request_lines(caplog)
    assert line["view"] == "healthz"
    assert line["path"] == "/healthz"
    assert line["status"] == 200
    assert line["user_id"] is None
    assert line["organization_id"] is None


def test_unmatched_path_is_logged_as_unmatched_with_404(client, caplog):
    with caplog.at_level(logging.INFO, logger="tollgate.request"):
        response = client.get("/no/such/page/")

    assert response.status_code == 404
    [line] = request_lines(caplog)
    assert line["view"] == "unmatched"
    assert line["status"] == 404


@pytest.mark.parametrize("incoming", ["edge-7f3a.b2:c9_1", "a" * 128], ids=["mixed", "128-chars"])
def test_valid_incoming_request_id_is_echoed_in_header_and_log(client, caplog, incoming):
    with caplog.at_level(logging.INFO, logger="tollgate.request"):
        response = client.get("/healthz", headers={"X-Request-ID": incoming})

    assert response["X-Request-ID"] == incoming
    [line] = request_lines(caplog)
    assert line["request_id"] == incoming


@pytest.mark.parametrize(
    "incoming",
    ["has spaces in it", "a" * 129, "semi;colon", "new\\nline", "trailing-newline\n"],
    ids=["spaces", "129-chars", "semicolon", "backslash", "trailing-newline"],
)
def test_invalid_incoming_request_id_is_replaced_by_a_generated_one(client, caplog, incoming):
    with caplog.at_level(logging.INFO, logger="tollgate.request"):
        response = client.get("/healthz", headers={"X-Request-ID": incoming})

    generated = response["X-Request-ID"]
    assert generated != incoming
    assert HEX_ID.match(generated)
    [line] = request_lines(caplog)
    assert line["request_id"] == generated


def test_requests_without_an_id_get_distinct_generated_ids(client):
    first = client.get("/healthz")["X-Request-ID"]
    second = client.get("/healthz")["X-Request-ID"]

    assert HEX_ID.match(first)
    assert HEX_ID.match(second)
    assert first != second


# --- Prometheus -------------------------------------------------------------------------


def test_metrics_count_a_healthz_request_exactly_once(client):
    counter = ("tollgate_http_requests_total", {"method": "GET", "status": "200", "view": "healthz"})
    histogram = ("tollgate_http_request_duration_seconds_count", {"method": "GET", "view": "healthz"})
    counted_before = sample_value(client, *counter)
    observed_before = sample_value(client, *histogram)

    assert client.get("/healthz").status_code == 200

    assert sample_value(client, *counter) == counted_before + 1
    assert sample_value(client, *histogram) == observed_before + 1


def test_metrics_are_served_in_prometheus_text_format(client):
    client.get("/healthz")

    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    assert "# TYPE tollgate_http_requests_total counter" in text
    assert "# TYPE tollgate_http_request_duration_seconds histogram" in text
    assert re.search(
        r'^tollgate_http_requests_total\{method="GET",status="200",view="healthz"\} [1-9]\d*\.0$', text, re.M
    )
    assert re.search(
        r'^tollgate_http_request_duration_seconds_bucket\{le="\+Inf",method="GET",view="healthz"\} [1-9]\d*\.0$',
        text,
        re.M,
    )


METRICS_TOKEN = "scrape-" + "m" * 24
METRICS_REFUSED_REMOTELY = (
    b"The metrics answer clients on this host only; set METRICS_TOKEN to scrape from elsewhere."
)


@pytest.mark.parametrize("address", ["203.0.113.9", "10.0.0.5", "2001:db8::1"])
def test_metrics_refuse_a_client_on_another_host_when_no_token_is_set(client, address):
    response = client.get("/metrics", REMOTE_ADDR=address)

    assert response.status_code == 403
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content == METRICS_REFUSED_REMOTELY


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.53", "::1"])
def test_metrics_answer_this_host_when_no_token_is_set(client, address):
    response = client.get("/metrics", REMOTE_ADDR=address)

    assert response.status_code == 200
    assert b"# TYPE tollgate_http_requests_total counter" in response.content


def test_metrics_answer_the_bearer_of_the_token_from_anywhere(client, settings):
    settings.METRICS_TOKEN = METRICS_TOKEN

    response = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")

    assert response.status_code == 200
    assert b"# TYPE tollgate_http_requests_total counter" in response.content


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", f"Basic {METRICS_TOKEN}"])
@pytest.mark.parametrize("address", ["203.0.113.9", "127.0.0.1"])
def test_metrics_with_a_token_set_refuse_anyone_without_it(client, settings, authorization, address):
    settings.METRICS_TOKEN = METRICS_TOKEN
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}

    response = client.get("/metrics", REMOTE_ADDR=address, **headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.content == b"The metrics need the configured bearer token."


# --- Health probes ----------------------------------------------------------------------


def test_healthz_answers_ok_and_is_never_cached(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "no-cache" in response["Cache-Control"]


def test_readyz_reports_both_real_stores_ok(client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_redis(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            shutil.which("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                return process
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start") from None
                time.sleep(0.05)
    finally:
        client.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def test_readyz_answers_503_while_redis_is_down_and_200_when_it_is_back(client, settings):
    port = _free_port()
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    server = _start_redis(port)
    try:
        up = client.get("/readyz")
        assert up.status_code == 200
        assert up.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}

        _stop(server)
        down = client.get("/readyz")
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["postgres"] == "ok"
        assert body["checks"]["redis"].startswith("error")

        server = _start_redis(port)
        back = client.get("/readyz")
        assert back.status_code == 200
        assert back.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}
    finally:
        _stop(server)


# --- Sentry -----------------------------------------------------------------------------


def test_scrub_filters_secret_keys_at_any_depth():
    event = {
        "password": "hunter2",
        "request": {
            "headers": {"Authorization": "Bearer abc", "Cookie": "sessionid=xyz", "Accept": "text/html"},
            "data": {"client_secret": "s3cr3t", "API_KEY": "k", "api-key": "k2", "email": "a@example.com"},
        },
        "breadcrumbs": [{"data": {"nested": [{"db_password": "pw", "count": 3}]}}],
    }

    assert scrub(event) == {
        "password": "[Filtered]",
        "request": {
            "headers": {"Authorization": "[Filtered]", "Cookie": "[Filtered]", "Accept": "text/html"},
            "data": {
                "client_secret": "[Filtered]",
                "API_KEY": "[Filtered]",
                "api-key": "[Filtered]",
                "email": "a@example.com",
            },
        },
        "breadcrumbs": [{"data": {"nested": [{"db_password": "[Filtered]", "count": 3}]}}],
    }


def test_scrub_replaces_tollgate_keys_inside_free_text():
    event = {
        "message": "upstream refused tg_live_AbC123xyz while tg_test_9Q retried",
        "frames": ["key=tg_live_Zz9", "plain text"],
    }

    assert scrub(event) == {
        "message": "upstream refused [Filtered] while [Filtered] retried",
        "frames": ["key=[Filtered]", "plain text"],
    }


def test_scrub_leaves_other_values_untouched():
    event = {"level": "error", "count": 3, "ratio": 0.5, "ok": True, "none": None, "tags": ["a", "tg_other"]}

    assert scrub(event) == event


class _IngestHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.received.append((self.path, body.decode()))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format, *args):
        pass


@pytest.fixture
def sentry_ingest():
    """A local HTTP server that stands in for Sentry's envelope endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _IngestHandler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        client = sentry_sdk.get_client()
        client.close(timeout=2)
        sentry_sdk.get_global_scope().set_client(None)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _fail_with_secrets_in_locals(password: str, note: str):
    # The secrets arrive as arguments, so they appear only as frame locals, never in source context.
    raise RuntimeError("payment provider rejected the charge")


def test_sentry_event_leaves_the_process_without_secrets(sentry_ingest):
    from portal.observability import sentry_init

    local_password = secrets.token_hex(12)
    live_key = f"tg_live_{secrets.token_hex(10)}"
    extra_password = secrets.token_hex(12)
    test_key = f"tg_test_{secrets.token_hex(10)}"
    port = sentry_ingest.server_address[1]
    sentry_init(f"http://public@127.0.0.1:{port}/1", "test")
    with sentry_sdk.new_scope() as scope:
        scope.set_extra("customer_password", extra_password)
        scope.set_extra("context", {"detail": f"retry with {test_key} later", "attempt": 2})
        try:
            _fail_with_secrets_in_locals(local_password, f"client sent {live_key} in the body")
        except RuntimeError:
            event_id = sentry_sdk.capture_exception()
    sentry_sdk.flush(timeout=5)

    deadline = time.monotonic() + 5
    while not sentry_ingest.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert event_id is not None
    envelopes = [body for path, body in sentry_ingest.received if path == "/api/1/envelope/"]
    assert len(envelopes) == 1
    envelope = envelopes[0]
    assert event_id in envelope
    assert "payment provider rejected the charge" in envelope
    assert "_fail_with_secrets_in_locals" in envelope
    for secret in (local_password, live_key, extra_password, test_key):
        assert secret not in envelope
    event = json.loads(envelope.splitlines()[2])
    frame = event["exception"]["values"][0]["stacktrace"]["frames"][-1]
    assert frame["function"] == "_fail_with_secrets_in_locals"
    assert frame["vars"] == {"password": "[Filtered]", "note": "'client sent [Filtered] in the body'"}
    assert event["extra"]["customer_password"] == "[Filtered]"
    assert event["extra"]["context"] == {"detail": "retry with [Filtered] later", "attempt": 2}
