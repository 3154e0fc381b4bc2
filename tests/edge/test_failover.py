"""Upstream pools: failover on refused connections and 502/503, timeouts, and spreading load.

The edge orders a route's upstreams by in-flight requests per unit of weight, ties broken
at random, so with sequential requests either upstream may come first. Each test sends
enough requests that the broken upstream is tried first at least once (the chance that it
never is, over 20 requests, is one in a million) and counts what happened.
"""

import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from tests.edge.conftest import MockUpstream, TornAnswer, free_port, serve_http

pytestmark = pytest.mark.django_db

REQUESTS = 20
UNAVAILABLE_BODY = (
    b'{"error":{"message":"The server is overloaded.","type":"server_error",'
    b'"param":null,"code":"service_unavailable"}}'
)


class _Unavailable(BaseHTTPRequestHandler):
    """Answer every request 503, and count them."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.server.lock:
            self.server.hits += 1
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(UNAVAILABLE_BODY)))
        self.end_headers()
        self.wfile.write(UNAVAILABLE_BODY)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def unavailable_upstream():
    yield from serve_http(_Unavailable)


@pytest.fixture(scope="module")
def torn_upstream():
    yield from serve_http(TornAnswer)


@pytest.fixture(scope="module")
def second_mock():
    upstream = MockUpstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def pool_edge(start_module_edge, mock_upstream, second_mock, unavailable_upstream, torn_upstream):
    closed = f"http://127.0.0.1:{free_port()}"
    return start_module_edge(
        [
            {"model": "closed-then-mock", "upstreams": [closed, mock_upstream.url]},
            {"model": "unavailable-then-mock", "upstreams": [unavailable_upstream.url, mock_upstream.url]},
            {"model": "unavailable-only", "upstreams": [unavailable_upstream.url]},
            {"model": "torn", "upstreams": [torn_upstream.url]},
            {"model": "all-down", "upstreams": [closed, f"http://127.0.0.1:{free_port()}"]},
            {"model": "slow", "upstreams": [{"url": mock_upstream.url, "read_timeout": 0.5}]},
            {"model": "two-mocks", "upstreams": [mock_upstream.url, second_mock.url]},
            {
                "model": "slow-pair",
                "upstreams": [
                    {"url": mock_upstream.url, "read_timeout": 0.5},
                    {"url": second_mock.url, "read_timeout": 0.5},
                ],
            },
        ]
    )


@pytest.fixture
def post(pool_edge, make_key):
    _, secret = make_key()
    client = httpx.Client(base_url=pool_edge.url, headers={"authorization": f"Bearer {secret}"}, timeout=10)

    def send(model: str, **headers) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "route me"}], "max_tokens": 2}
        return client.post("/v1/chat/completions", json=body, headers=headers)

    yield send
    client.close()


def test_refused_connection_fails_over_to_the_next_upstream(
    pool_edge, post, mock_upstream, edge_metric, usage_events
):
    mock_upstream.reset()
    failovers = edge_metric(pool_edge, "tollgate_edge_upstream_failovers_total")

    statuses = [post("closed-then-mock").status_code for _ in range(REQUESTS)]

    assert statuses == [200] * REQUESTS
    assert mock_upstream.stats()["requests"] == REQUESTS
    assert edge_metric(pool_edge, "tollgate_edge_upstream_failovers_total") > failovers
    events = usage_events(REQUESTS)
    assert len(events) == REQUESTS
    assert {(event["status"], event["upstream"]) for event in events} == {(200, mock_upstream.url)}


def test_upstream_answering_503_fails_over_to_the_next(
    pool_edge, post, mock_upstream, unavailable_upstream, edge_metric
):
    mock_upstream.reset()
    unavailable_upstream.hits = 0
    failovers = edge_metric(pool_edge, "tollgate_edge_upstream_failovers_total")

    responses = [post("unavailable-then-mock") for _ in range(REQUESTS)]

    assert [response.status_code for response in responses] == [200] * REQUESTS
    assert responses[0].json()["choices"][0]["message"]["content"] == "route me"
    assert mock_upstream.stats()["requests"] == REQUESTS
    assert unavailable_upstream.hits >= 1
    assert (
        edge_metric(pool_edge, "tollgate_edge_upstream_failovers_total")
        == failovers + unavailable_upstream.hits
    )


def test_last_upstreams_503_passes_through_with_its_body(post):
    response = post("unavailable-only")

    assert response.status_code == 503
    assert response.content == UNAVAILABLE_BODY


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("all-down", "The model server could not be reached."),
        # A non-streamed answer torn off before its length is an error, never a short body.
        ("torn", "The model server broke off its answer."),
    ],
)
def test_unreachable_or_torn_upstream_is_502(post, usage_events, model, message):
    response = post(model)

    assert response.status_code == 502
    assert response.json() == {
        "error": {"message": message, "type": "server_error", "param": None, "code": "upstream_unavailable"}
    }
    [event] = usage_events(1)
    assert (event["status"], event["input_tokens"], event["output_tokens"]) == (502, 0, 0)


def test_read_timeout_is_504(post, usage_events):
    started = time.monotonic()
    response = post("slow", **{"x-mock-latency-ms": "2000"})
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert response.json() == {
        "error": {
            "message": "The model server did not answer in time.",
            "type": "server_error",
            "param": None,
            "code": "upstream_timeout",
        }
    }
    assert 0.5 <= elapsed < 2.0  # answered at the read timeout, not when the upstream did
    [event] = usage_events(1)
    assert event["status"] == 504


def test_read_timeout_is_not_retried_on_another_upstream(post, mock_upstream, second_mock):
    mock_upstream.reset()
    second_mock.reset()
    started = time.monotonic()

    response = post("slow-pair", **{"x-mock-latency-ms": "2000"})
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    # The first upstream has the request and may be generating: a second would run it twice.
    assert mock_upstream.stats()["requests"] + second_mock.stats()["requests"] == 1
    assert elapsed < 1.0


def test_two_healthy_upstreams_both_get_traffic(post, mock_upstream, second_mock):
    mock_upstream.reset()
    second_mock.reset()

    statuses = [post("two-mocks").status_code for _ in range(REQUESTS)]

    served = (mock_upstream.stats()["requests"], second_mock.stats()["requests"])
    assert statuses == [200] * REQUESTS
    assert sum(served) == REQUESTS
    assert min(served) >= 1
