"""OpenTelemetry: with an OTLP endpoint configured, each proxied request is a span."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

pytestmark = pytest.mark.django_db

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class _Collector(BaseHTTPRequestHandler):
    spans: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                _Collector.spans.extend(scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def collector():
    _Collector.spans = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_proxied_request_is_exported_as_a_child_of_the_callers_trace(
    start_edge, mock_upstream, make_key, collector
):
    edge = start_edge(
        [{"model": "*", "upstreams": [{"url": mock_upstream.url}]}],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    key, secret = make_key()
    response = httpx.post(
        f"{edge.url}/v1/chat/completions",
        headers={
            "Authorization": f"Bearer {secret}",
            "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
            "X-Request-ID": "trace-me",
        },
        json={"model": "mock-model", "messages": [{"role": "user", "content": "hi there"}]},
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 10
    while not _Collector.spans and time.monotonic() < deadline:
        time.sleep(0.1)
    [span] = _Collector.spans
    attributes = {attribute.key: attribute.value for attribute in span.attributes}
    assert span.name == "POST /v1/chat/completions"
    assert span.trace_id.hex() == CALLER_TRACE
    assert span.parent_span_id.hex() == CALLER_SPAN
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["tollgate.request_id"].string_value == "trace-me"
    assert attributes["tollgate.key_id"].string_value == key.public_id
    assert attributes["gen_ai.usage.input_tokens"].int_value == 2
    # The upstream was called inside this span's trace.
    forwarded = mock_upstream.last()["headers"]["traceparent"]
    assert forwarded.split("-")[1] == CALLER_TRACE
    assert forwarded.split("-")[2] == span.span_id.hex()
