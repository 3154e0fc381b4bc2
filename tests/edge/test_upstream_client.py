"""The edge's HTTP/1.1 client (edge/upstream.py) against small scripted servers on loopback.

Each server here reads one request head and body at a time and answers with the exact bytes
a test gives it, so the cases that a well-behaved model server never produces (a connection
closed while idle, a torn body, an answer without a length, silence) are exercised for real.
"""

import asyncio
import socket

import pytest

from edge.upstream import (
    PAUSE_ABOVE_BYTES,
    ConnectFailed,
    ConnectTimeout,
    Disconnected,
    ReadTimeout,
    UpstreamClient,
)

pytestmark = pytest.mark.anyio

JSON_ANSWER = b'{"ok":true}'


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def client():
    upstream_client = UpstreamClient()
    yield upstream_client
    upstream_client.close()


@pytest.fixture
async def serve():
    """Return ``start(answers)``: a started ScriptedServer, stopped after the test."""
    servers = []

    async def start(answers, ssl=None):
        server = await ScriptedServer(answers).start(ssl)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


class ScriptedServer:
    """Answer the n-th request on any connection with ``answers[n]`` (bytes, or a coroutine
    function taking the writer). Records every request and every connection it accepted."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.closed_by_peer = asyncio.Event()

    async def start(self, ssl=None):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl)
        scheme = "https" if ssl else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,  # a GET has no body
                )
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                answer = self.answers[len(self.requests) - 1]
                if callable(answer):
                    await answer(writer)
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_peer.set()
        finally:
            writer.close()

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


def ok(body: bytes = JSON_ANSWER, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n"
        + extra
        + b"\r\n"
        + body
    )


async def post(client, server, body=b'{"model":"m"}', *, read_timeout=5.0, headers=()):
    return await client.post(
        server.url,
        b"/v1/chat/completions",
        list(headers),
        body,
        connect_timeout=1.0,
        read_timeout=read_timeout,
    )


async def test_request_line_headers_and_body_reach_the_server_and_the_answer_comes_back(client, serve):
    server = await serve([ok()])
    response = await post(client, server, headers=[(b"x-request-id", b"abc")])
    assert response.status == 200
    assert response.header(b"content-type") == b"application/json"
    assert await response.read() == JSON_ANSWER
    response.release()
    head, body = server.requests[0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
    assert b"host: " + server.url.removeprefix("http://").encode() in lines
    assert b"content-length: 13" in lines
    assert b"x-request-id: abc" in lines
    assert body == b'{"model":"m"}'


async def test_a_get_has_no_body_and_its_connection_is_reused(client, serve):
    server = await serve([ok(b'{"data":[]}'), ok()])
    response = await client.get(
        server.url + "/openai",
        b"/v1/models",
        [(b"accept", b"application/json")],
        connect_timeout=1.0,
        read_timeout=5.0,
    )
    assert (response.status, await response.read()) == (200, b'{"data":[]}')
    response.release()
    following = await post(client, server)
    assert await following.read() == JSON_ANSWER
    following.release()
    head, body = server.requests[0]
    lines = head.split(b"\r\n")
    assert lines[0] == b"GET /openai/v1/models HTTP/1.1"
    assert b"accept: application/json" in lines
    assert not [line for line in lines if line.lower().startswith(b"content-length")]
    assert body == b""
    assert server.connections == 1


async def test_a_base_path_in_the_upstream_url_prefixes_the_request_path(client, serve):
    server = await serve([ok()])
    response = await client.post(
        server.url + "/openai/", b"/v1/embeddings", [], b"{}", connect_timeout=1.0, read_timeout=5.0
    )
    await response.read()
    response.release()
    assert server.requests[0][0].startswith(b"POST /openai/v1/embeddings HTTP/1.1\r\n")


async def test_a_finished_answer_gives_its_connection_back_for_the_next_request(client, serve):
    server = await serve([ok(), ok(b'{"n":2}')])
    for expected in (JSON_ANSWER, b'{"n":2}'):
        response = await post(client, server)
        assert await response.read() == expected
        response.release()
    assert server.connections == 1
    assert len(server.requests) == 2


async def test_a_pooled_connection_the_server_closed_is_replaced_without_an_error(client, serve):
    async def answer_and_close(writer):
        writer.write(ok(extra=b"connection: close\r\n"))
        await writer.drain()
        writer.close()

    server = await serve([ok(), answer_and_close, ok(b'{"n":3}')])
    for _ in range(2):
        response = await post(client, server)
        await response.read()
        response.release()
    # The second answer said "connection: close": the client does not pool that connection.
    response = await post(client, server)
    assert await response.read() == b'{"n":3}'
    response.release()
    assert server.connections == 2


async def test_a_pooled_connection_closed_before_any_answer_byte_is_retried_once_on_a_new_one(client, serve):
    # What a server does when its idle timeout and our reuse cross: it closes without a byte.
    async def close_silently(writer):
        writer.close()

    server = await serve([ok(), close_silently, ok(b'{"n":2}')])
    response = await post(client, server)
    await response.read()
    response.release()
    response = await post(client, server)
    assert await response.read() == b'{"n":2}'
    response.release()
    assert server.connections == 2
    assert len(server.requests) == 3


async def test_a_new_connection_closed_before_any_answer_byte_is_an_error(client, serve):
    async def close_silently(writer):
        writer.close()

    server = await serve([close_silently])
    with pytest.raises(Disconnected):
        await post(client, server)
    assert len(server.requests) == 1


async def test_chunked_answer_is_handed_over_piece_by_piece_before_it_ends(client, serve):
    more = asyncio.Event()

    async def stream(writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            b"7\r\ndata: 1\r\n"
        )
        await writer.drain()
        await more.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()

    server = await serve([stream])
    response = await post(client, server)
    assert response.status == 200
    assert await response.next_chunk() == b"data: 1"
    more.set()
    rest = b""
    while (chunk := await response.next_chunk()) is not None:
        rest += chunk
    assert rest == b"data: 2"
    assert response.complete
    response.release()


async def test_an_answer_without_length_ends_when_the_server_closes(client, serve):
    async def until_close(writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + JSON_ANSWER)
        await writer.drain()
        writer.close()

    server = await serve([until_close])
    response = await post(client, server)
    assert await response.read() == JSON_ANSWER
    response.release()
    assert not client._idle.get(client.origin(server.url).key)


async def test_a_body_torn_off_before_its_length_is_an_error_not_a_short_answer(client, serve):
    async def torn(writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        await writer.drain()
        writer.close()

    server = await serve([torn])
    response = await post(client, server)
    with pytest.raises(Disconnected):
        await response.read()
    response.release()


async def test_silence_after_the_request_is_a_read_timeout(client, serve):
    async def silent(writer):
        await asyncio.sleep(2)

    server = await serve([silent])
    with pytest.raises(ReadTimeout):
        await post(client, server, read_timeout=0.2)
    assert len(server.requests) == 1


async def test_silence_in_the_middle_of_a_body_is_a_read_timeout(client, serve):
    async def stall(writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 50\r\n\r\ndata")
        await writer.drain()
        await asyncio.sleep(2)

    server = await serve([stall])
    response = await post(client, server, read_timeout=0.2)
    assert await response.next_chunk() == b"data"
    with pytest.raises(ReadTimeout):
        await response.next_chunk()
    response.release()


async def test_a_refused_connection_is_connect_failed(client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectFailed) as caught:
        await client.post(
            f"http://127.0.0.1:{port}", b"/v1/x", [], b"{}", connect_timeout=1.0, read_timeout=1.0
        )
    assert not isinstance(caught.value, ConnectTimeout)


async def test_a_server_that_never_completes_the_handshake_is_a_connect_timeout(client):
    # A listening socket whose accept queue is full drops further SYNs: connecting hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    await asyncio.sleep(0.1)
    try:
        with pytest.raises(ConnectTimeout):
            await client.post(
                f"http://127.0.0.1:{port}", b"/v1/x", [], b"{}", connect_timeout=0.3, read_timeout=1.0
            )
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_releasing_an_unfinished_answer_closes_the_connection(client, serve):
    async def endless(writer):
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            b"7\r\ndata: 1\r\n"
        )
        await writer.drain()
        await asyncio.sleep(5)

    server = await serve([endless])
    response = await post(client, server)
    assert await response.next_chunk() == b"data: 1"
    response.release()
    assert not client._idle.get(client.origin(server.url).key)


async def test_interim_100_continue_is_skipped(client, serve):
    server = await serve([b"HTTP/1.1 100 Continue\r\n\r\n" + ok()])
    response = await post(client, server)
    assert response.status == 200
    assert await response.read() == JSON_ANSWER
    response.release()


async def test_a_large_answer_read_slowly_arrives_whole(client, serve):
    size = 3 * PAUSE_ABOVE_BYTES + 12345
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    server = await serve([ok(payload)])
    response = await post(client, server)
    received = bytearray()
    largest = 0
    paused = False
    while True:
        await asyncio.sleep(0.02)  # a slow reader: the upstream is far ahead
        paused = paused or response._paused
        chunk = await response.next_chunk()
        if chunk is None:
            break
        received += chunk
        largest = max(largest, len(chunk))
    assert bytes(received) == payload
    # The client stopped reading the socket above the limit instead of holding the whole answer.
    assert paused
    assert largest < PAUSE_ABOVE_BYTES + 512 * 1024
    response.release()


async def test_garbage_from_the_upstream_is_disconnected(client, serve):
    server = await serve([b"SPDY/9 nonsense\r\n\r\n"])
    with pytest.raises(Disconnected):
        await post(client, server)


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1, and a client context that trusts only it."""
    import datetime
    import ipaddress
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollgate-test-upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(cert_path))
    return server_context, client_context


async def test_https_upstream_verifies_the_certificate_and_keeps_the_connection(tmp_path, client, serve):
    server_context, client_context = _self_signed(tmp_path)
    server = await serve([ok(), ok(b'{"n":2}')], ssl=server_context)
    client._ssl = client_context
    for expected in (JSON_ANSWER, b'{"n":2}'):
        response = await client.post(
            server.url + "/base", b"/v1/embeddings", [], b"{}", connect_timeout=2.0, read_timeout=5.0
        )
        assert await response.read() == expected
        response.release()
    assert server.connections == 1
    assert server.requests[0][0].startswith(b"POST /base/v1/embeddings HTTP/1.1\r\n")


async def test_https_upstream_with_an_untrusted_certificate_is_connect_failed(tmp_path, client, serve):
    server_context, _client_context = _self_signed(tmp_path)
    server = await serve([ok()], ssl=server_context)
    # The client keeps the system's trust store, which does not know this certificate.
    with pytest.raises(ConnectFailed):
        await client.post(server.url, b"/v1/embeddings", [], b"{}", connect_timeout=2.0, read_timeout=5.0)
    assert server.requests == []


async def test_read_collects_a_large_body_whole_without_pausing_the_upstream(client, serve):
    payload = b"[" + b"0.125," * (3 * PAUSE_ABOVE_BYTES // 6) + b"0]"
    server = await serve([ok(payload)])
    response = await post(client, server)
    assert await response.read() == payload
    assert not response._paused
    response.release()
    assert len(client._idle[client.origin(server.url).key]) == 1  # read to the end: kept


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "base_path"),
    [
        ("http://vllm-a:8000", "vllm-a", 8000, b"vllm-a:8000", b""),
        ("https://api.example.com/openai/", "api.example.com", 443, b"api.example.com", b"/openai"),
        ("http://[::1]:9001/v2", "::1", 9001, b"[::1]:9001", b"/v2"),
        ("http://user:secret@10.0.0.5", "10.0.0.5", 80, b"10.0.0.5", b""),
    ],
)
def test_origin_reads_host_port_host_header_and_base_path(url, host, port, host_header, base_path):
    from edge.upstream import Origin

    origin = Origin(url)
    assert (origin.host, origin.port, origin.host_header, origin.base_path) == (
        host,
        port,
        host_header,
        base_path,
    )


async def test_the_pool_drops_connections_closed_while_idle_after_a_burst(client, serve):
    server = await serve([ok()] * 4)
    # A burst: three answers in flight at once, so three connections, all pooled afterwards.
    responses = await asyncio.gather(*(post(client, server) for _ in range(3)))
    for response in responses:
        await response.read()
        response.release()
    idle = client._idle[client.origin(server.url).key]
    assert len(idle) == 3
    # Two of them end while idle (as when the upstream's keep-alive timeout closes them).
    for connection in list(idle)[:2]:
        connection.transport.close()
    await asyncio.sleep(0.05)
    response = await post(client, server)
    await response.read()
    response.release()
    assert len(idle) == 1
    assert not idle[0].closed
