"""Upstream errors by upstream: ``tollgate_edge_upstream_errors_total{upstream, kind}``.

Each failure is made by a real server: a mock model server that was stopped (connect), a port
whose listen queue is full (connect_timeout), the mock answering slower than the read timeout
(read_timeout, before the answer or in the middle of a stream), a server that hangs up halfway
through its answer (disconnect) and the mock answering 503 (status_5xx). Every (upstream, kind)
pair is made to fail by one test only, so each test can assert the counter's exact value.
"""

import socket

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.metrics import UPSTREAM_ERROR_KINDS
from tests.edge.conftest import MockUpstream, TornAnswer, serve_http

pytestmark = pytest.mark.django_db

ERRORS = "tollgate_edge_upstream_errors_total"
FAILOVERS = "tollgate_edge_upstream_failovers_total"
HELLO = [{"role": "user", "content": "hello there"}]


def stopped_mock() -> str:
    """Start a mock model server and stop it: its port refuses connections."""
    upstream = MockUpstream()
    upstream.stop()
    return upstream.url


@pytest.fixture(scope="module")
def full_backlog():
    """A port whose listen queue is full: a new connection waits for an answer that never comes."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    filler = socket.create_connection(server.getsockname(), timeout=1)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    filler.close()
    server.close()


@pytest.fixture(scope="module")
def torn_upstream():
    yield from serve_http(TornAnswer)


@pytest.fixture(scope="module")
def second_mock():
    upstream = MockUpstream()
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def upstreams(mock_upstream, second_mock, full_backlog, torn_upstream):
    return {
        "stopped": stopped_mock(),
        "stopped-first": stopped_mock(),
        "backlogged": full_backlog,
        "torn": torn_upstream.url,
        "mock": mock_upstream.url,
        "second": second_mock.url,
    }


@pytest.fixture(scope="module")
def errors_edge(start_module_edge, upstreams):
    return start_module_edge(
        [
            {"model": "stopped", "upstreams": [upstreams["stopped"]]},
            {"model": "stopped-then-mock", "upstreams": [upstreams["stopped-first"], upstreams["mock"]]},
            {"model": "backlogged", "upstreams": [{"url": upstreams["backlogged"], "connect_timeout": 0.3}]},
            {"model": "torn", "upstreams": [upstreams["torn"]]},
            {"model": "mock", "upstreams": [{"url": upstreams["mock"], "read_timeout": 0.5}]},
            {"model": "second", "upstreams": [{"url": upstreams["second"], "read_timeout": 0.5}]},
        ],
        workers=2,
    )


@pytest.fixture
def client(errors_edge, make_key):
    _, secret = make_key()
    with openai.OpenAI(base_url=f"{errors_edge.url}/v1", api_key=secret, max_retries=0, timeout=10) as client:
        yield client


def error_series(edge) -> dict[tuple[str, str], float]:
    """Return the edge's upstream error counters by (upstream, kind)."""
    text = httpx.get(f"{edge.url}/metrics", timeout=5).text
    return {
        (sample.labels["upstream"], sample.labels["kind"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == ERRORS
    }


def failed(client, model: str, **headers) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=model, messages=HELLO, extra_headers=headers)
    return caught.value


def test_every_configured_upstream_and_kind_is_exported_at_zero_before_any_request(errors_edge, upstreams):
    # Two workers, each with its own series: /metrics reports them summed.
    assert error_series(errors_edge) == {
        (url, kind): 0.0 for url in upstreams.values() for kind in UPSTREAM_ERROR_KINDS
    }


def test_a_served_request_counts_no_upstream_error(errors_edge, client, upstreams):
    before = error_series(errors_edge)

    answer = client.chat.completions.create(model="second", messages=HELLO, max_tokens=2)

    assert answer.choices[0].message.content == "hello there"
    assert error_series(errors_edge) == before


def test_a_stopped_upstream_counts_connect_errors(errors_edge, client, upstreams):
    errors = [failed(client, "stopped") for _ in range(3)]

    assert [error.status_code for error in errors] == [502] * 3
    assert errors[0].body["code"] == "upstream_unavailable"
    assert error_series(errors_edge)[upstreams["stopped"], "connect"] == 3


def test_a_full_listen_queue_counts_connect_timeouts(errors_edge, client, upstreams):
    error = failed(client, "backlogged")

    assert (error.status_code, error.body["code"]) == (504, "upstream_timeout")
    assert error_series(errors_edge)[upstreams["backlogged"], "connect_timeout"] == 1


def test_a_503_answer_counts_as_status_5xx_and_passes_through(errors_edge, client, upstreams):
    errors = [failed(client, "mock", **{"x-mock-status": "503"}) for _ in range(2)]

    assert [error.status_code for error in errors] == [503, 503]
    assert error_series(errors_edge)[upstreams["mock"], "status_5xx"] == 2


def test_an_upstream_slower_than_the_read_timeout_counts_a_read_timeout(errors_edge, client, upstreams):
    error = failed(client, "mock", **{"x-mock-latency-ms": "2000"})

    assert (error.status_code, error.body["code"]) == (504, "upstream_timeout")
    assert error_series(errors_edge)[upstreams["mock"], "read_timeout"] == 1


def test_a_stream_that_goes_quiet_midway_counts_a_read_timeout(errors_edge, client, upstreams):
    stream = client.chat.completions.create(
        model="second",
        messages=HELLO,
        max_tokens=2,
        stream=True,
        extra_headers={"x-mock-chunk-delay-ms": "2000"},
    )
    # The client's stream ends after the first word: the second would come after the silence.
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert text == "hello"
    assert error_series(errors_edge)[upstreams["second"], "read_timeout"] == 1


def test_an_answer_torn_off_counts_a_disconnect(errors_edge, client, upstreams):
    error = failed(client, "torn")

    assert (error.status_code, error.body["code"]) == (502, "upstream_unavailable")
    assert error_series(errors_edge)[upstreams["torn"], "disconnect"] == 1


def test_failed_over_connections_count_against_the_upstream_that_failed(
    errors_edge, client, upstreams, edge_metric
):
    """A client served by the next upstream sees no error; the counter still shows the dead one."""
    failovers = edge_metric(errors_edge, FAILOVERS)

    answers = [
        client.chat.completions.create(model="stopped-then-mock", messages=HELLO, max_tokens=2)
        for _ in range(20)
    ]

    assert [answer.choices[0].message.content for answer in answers] == ["hello there"] * 20
    tried_first = edge_metric(errors_edge, FAILOVERS) - failovers
    assert tried_first >= 1  # ordered at random: never tried first in 20 requests is one in a million
    series = error_series(errors_edge)
    assert series[upstreams["stopped-first"], "connect"] == tried_first
    assert series[upstreams["mock"], "connect"] == 0


def test_the_series_stay_the_configured_upstreams_whatever_is_requested(errors_edge, client, upstreams):
    error = failed(client, "nothing-routes-this")

    assert error.status_code == 404

    assert set(error_series(errors_edge)) == {
        (url, kind) for url in upstreams.values() for kind in UPSTREAM_ERROR_KINDS
    }
