"""What a client sends before the body, bounded (edge/http.py) and answered in OpenAI's error shape.

Raw sockets, so that requests no HTTP client library would send reach a real edge process.
"""

import http.client
import json
import re
import select
import socket

import httpx
import pytest

pytestmark = pytest.mark.django_db

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MiB = 1024 * 1024
# The defaults of edge/config.py's HttpLimits.
MAX_URL_BYTES = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 100
# "host: edge" counts 4 + 4 bytes towards the header limit.
HOST = b"host: edge\r\n"


@pytest.fixture(scope="module")
def http_edge(start_module_edge, mock_upstream):
    return start_module_edge([{"model": "*", "upstreams": [mock_upstream.url]}])


def connect(edge) -> socket.socket:
    return socket.create_connection(("127.0.0.1", edge.port), timeout=10)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()


def exchange(edge, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(edge) as sock:
        sock.sendall(raw)
        return answer(sock)


def healthz(*headers: bytes, target: bytes = b"/healthz") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"".join(headers) + b"\r\n"


def error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def assert_json_error(status, headers, body, expected_status, expected):
    assert status == expected_status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert json.loads(body) == expected


def test_one_endless_header_is_refused_431_before_it_is_buffered(http_edge):
    """A single header streamed towards 256 MiB: answered once it passes the bound, memory flat."""
    assert exchange(http_edge, healthz())[0] == 200
    before = rss_bytes(http_edge.process.pid)
    chunk = b"a" * (256 * 1024)
    sent = 0
    with connect(http_edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n" + HOST + b"x-flood: ")
        # Stop sending once the answer is there to read.
        while sent < 256 * MiB and not select.select([sock], [], [], 0)[0]:
            sock.sendall(chunk)
            sent += len(chunk)
            assert rss_bytes(http_edge.process.pid) - before < 50 * MiB, f"after {sent // MiB} MiB sent"
        status, headers, body = answer(sock)

    assert_json_error(
        status,
        headers,
        body,
        431,
        error(f"The request headers exceed the {MAX_HEADER_BYTES} byte limit.", "headers_too_large"),
    )
    assert sent < 256 * MiB
    assert rss_bytes(http_edge.process.pid) - before < 50 * MiB
    assert exchange(http_edge, healthz())[0] == 200


def test_headers_up_to_the_byte_limit_pass_and_one_byte_more_is_431(http_edge):
    filler = MAX_HEADER_BYTES - len("host") - len("edge") - len("x-big")

    at_limit = exchange(http_edge, healthz(b"x-big: " + b"a" * filler + b"\r\n"))
    over = exchange(http_edge, healthz(b"x-big: " + b"a" * (filler + 1) + b"\r\n"))

    assert at_limit[0] == 200
    assert_json_error(
        *over,
        431,
        error(f"The request headers exceed the {MAX_HEADER_BYTES} byte limit.", "headers_too_large"),
    )


def test_many_small_headers_over_the_byte_limit_are_431(http_edge):
    headers = [b"x-h%02d: %s\r\n" % (i, b"b" * 1000) for i in range(70)]

    assert_json_error(
        *exchange(http_edge, healthz(*headers)),
        431,
        error(f"The request headers exceed the {MAX_HEADER_BYTES} byte limit.", "headers_too_large"),
    )


def test_up_to_the_header_count_pass_and_one_more_is_431(http_edge):
    # Host is one of them.
    at_limit = [b"x-h%d: 1\r\n" % i for i in range(MAX_HEADERS - 1)]

    assert exchange(http_edge, healthz(*at_limit))[0] == 200
    assert_json_error(
        *exchange(http_edge, healthz(*at_limit, b"x-one-more: 1\r\n")),
        431,
        error(f"The request has more than {MAX_HEADERS} headers.", "too_many_headers"),
    )


def test_headers_are_counted_per_request_on_a_kept_alive_connection(http_edge):
    big = b"x-big: " + b"a" * (MAX_HEADER_BYTES // 2) + b"\r\n"
    many = [b"x-h%d: 1\r\n" % i for i in range(MAX_HEADERS - 1)]

    with connect(http_edge) as sock:
        for _ in range(3):
            sock.sendall(healthz(big))
            status, headers, _ = answer(sock)
            assert (status, headers.get("connection")) == (200, None)
        for _ in range(2):
            sock.sendall(healthz(*many))
            assert answer(sock)[0] == 200
        sock.sendall(healthz(*many, b"x-one-more: 1\r\n"))
        last = answer(sock)

    assert_json_error(
        *last, 431, error(f"The request has more than {MAX_HEADERS} headers.", "too_many_headers")
    )


def test_url_up_to_the_limit_passes_and_one_byte_more_is_414(http_edge):
    prefix = b"/healthz?pad="
    at_limit = prefix + b"a" * (MAX_URL_BYTES - len(prefix))

    assert exchange(http_edge, healthz(target=at_limit))[0] == 200
    assert_json_error(
        *exchange(http_edge, healthz(target=at_limit + b"a")),
        414,
        error(f"The request URL exceeds the {MAX_URL_BYTES} byte limit.", "url_too_long"),
    )


def test_an_endless_url_is_refused_414_as_it_arrives(http_edge):
    with connect(http_edge) as sock:
        sock.sendall(b"GET /healthz?pad=")
        sent = 0
        while sent < 64 * MiB and not select.select([sock], [], [], 0)[0]:
            sock.sendall(b"a" * MiB)
            sent += MiB
        refused = answer(sock)

    assert_json_error(
        *refused, 414, error(f"The request URL exceeds the {MAX_URL_BYTES} byte limit.", "url_too_long")
    )
    assert sent < 64 * MiB


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nbad name: 1\r\n\r\n",
        b"GET /he\xffalthz HTTP/1.1\r\n" + HOST + b"\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"transfer-encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\n" + HOST + b"content-length: 1\r\ncontent-length: 2\r\n\r\n",
    ],
    ids=[
        "request-line",
        "version",
        "header-without-colon",
        "space-in-header-name",
        "non-ascii-path",
        "bad-chunk-size",
        "two-content-lengths",
    ],
)
def test_malformed_http_is_400_in_openais_error_shape(http_edge, raw):
    assert_json_error(
        *exchange(http_edge, raw), 400, error("The request is not valid HTTP/1.1.", "invalid_http_request")
    )


@pytest.mark.parametrize(
    "incoming",
    ["x" * 20_000, "x" * 129, "has space", "semi;colon", "<script>", "caf\xe9"],
    ids=["20000-chars", "129-chars", "space", "semicolon", "angle-brackets", "latin-1"],
)
def test_an_invalid_request_id_is_replaced_in_the_answer_and_upstream(
    http_edge, make_key, mock_upstream, incoming
):
    _, secret = make_key()

    response = httpx.post(
        f"{http_edge.url}/v1/chat/completions",
        json={"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"authorization": f"Bearer {secret}", "x-request-id": incoming.encode("latin-1")},
    )

    assert response.status_code == 200
    replaced = response.headers["x-request-id"]
    assert UUID7.match(replaced)
    assert mock_upstream.last()["headers"]["x-request-id"] == replaced


@pytest.mark.parametrize("incoming", ["req-abc.123:Z_9", "r" * 128], ids=["mixed", "128-chars"])
def test_a_valid_request_id_is_echoed_and_forwarded_unchanged(http_edge, make_key, mock_upstream, incoming):
    _, secret = make_key()

    response = httpx.post(
        f"{http_edge.url}/v1/chat/completions",
        json={"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers={"authorization": f"Bearer {secret}", "x-request-id": incoming},
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"] == incoming
    assert mock_upstream.last()["headers"]["x-request-id"] == incoming


def test_an_invalid_request_id_is_replaced_on_the_edges_own_routes(http_edge):
    status, headers, _ = exchange(http_edge, healthz(b"x-request-id: " + b"x" * 20_000 + b"\r\n"))

    assert status == 200
    assert UUID7.match(headers["x-request-id"])
