"""A lean HTTP/1.1 client for the model servers: pooled keep-alive connections, streamed bodies.

The edge sends one kind of request (a POST with a JSON body it already holds in memory, or a
GET of the model list) and relays one kind of answer (JSON, or server-sent events). A general client spends most of a
proxied request in Python doing things the edge never needs (cookie jars, redirects,
multipart payloads, a writer task per request); this one parses with httptools (C), writes
the request in one call, and hands the body over as it arrives.

Errors say what the caller may do next:
- ``ConnectFailed`` / ``ConnectTimeout``: nothing was sent; another upstream may be tried.
- ``Disconnected``: the connection broke after the request went out; the body may be partial.
- ``ReadTimeout``: the upstream has the request and went quiet; trying another would run it twice.
"""

import asyncio
import socket
import ssl
import time
from collections import deque
from urllib.parse import urlsplit

import httptools


class UpstreamError(Exception):
    """The exchange with an upstream failed; ``kind`` labels it in the edge's metrics."""

    kind: str  # each subclass names its own; only subclasses are raised


class ConnectFailed(UpstreamError):
    """No connection could be made; the request was not sent."""

    kind = "connect"


class ConnectTimeout(ConnectFailed, TimeoutError):
    """Connecting took longer than the upstream's connect timeout; the request was not sent."""

    kind = "connect_timeout"


class Disconnected(UpstreamError):
    """The upstream closed the connection or sent something that is not HTTP/1.1."""

    kind = "disconnect"


class ReadTimeout(UpstreamError, TimeoutError):
    """The upstream sent nothing for longer than its read timeout."""

    kind = "read_timeout"


# A slow client must not make the edge hold a whole answer: stop reading the upstream above this.
PAUSE_ABOVE_BYTES = 1 << 20


class Origin:
    """Where an upstream lives, parsed once from its base URL."""

    __slots__ = ("base_path", "host", "host_header", "key", "port", "ssl")

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.ssl = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.ssl else 80)
        # As the URL wrote it (an IPv6 address keeps its brackets), without any user info.
        self.host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self.base_path = parts.path.rstrip("/").encode()
        self.key = (parts.scheme, self.host, self.port)


class UpstreamResponse:
    """The status and headers of an answer; its body is read with ``read()`` or ``next_chunk()``."""

    __slots__ = (
        "_chunks",
        "_connection",
        "_error",
        "_hold_limit",
        "_last_data",
        "_loop",
        "_paused",
        "_watchdog",
        "_size",
        "_waiter",
        "complete",
        "headers",
        "keep_alive",
        "read_timeout",
        "status",
    )

    def __init__(self, connection: "_Connection", read_timeout: float):
        self._connection = connection
        self.read_timeout = read_timeout
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []  # names in lower case
        self.complete = False
        self.keep_alive = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future | None = None
        self._paused = False
        self._hold_limit = PAUSE_ABOVE_BYTES
        self._loop = asyncio.get_running_loop()
        self._last_data = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    # --- fed by the connection ----------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self._hold_limit and not self._paused:
            self._paused = True
            self._connection.transport.pause_reading()
        self._wake()

    def _finish(self, keep_alive: bool) -> None:
        self.complete = True
        self.keep_alive = keep_alive
        self._stop_watchdog()
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._stop_watchdog()
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        if self._watchdog is None:
            self._last_data = self._loop.time()
            self._watchdog = self._loop.call_later(self.read_timeout, self._check_quiet)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _check_quiet(self) -> None:
        """The read timeout: one timer per answer, pushed back while data keeps coming
        (cheaper than a timeout around every wait of a long stream)."""
        now = self._loop.time()
        if self._paused:
            # The edge stopped reading (a slow client), not the upstream: that is no silence.
            self._last_data = now
        quiet = now - self._last_data
        if quiet < self.read_timeout:
            self._watchdog = self._loop.call_later(self.read_timeout - quiet, self._check_quiet)
            return
        self._watchdog = None
        self._fail(ReadTimeout(f"no data from the upstream for {self.read_timeout:g}s"))

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    # --- read by the edge -----------------------------------------------------------------
    async def read(self) -> bytes:
        """The whole body (the edge holds it all: it is answered with a content-length)."""
        self._hold_limit = float("inf")
        self._resume()
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._take()

    async def next_chunk(self) -> bytes | None:
        """The bytes received since the last call, waiting for some; None once the body ended."""
        while True:
            if self._chunks:
                return self._take()
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        self._resume()
        return data

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._last_data = self._loop.time()
            self._connection.transport.resume_reading()

    def release(self) -> None:
        """Give the connection back for reuse if the answer was read to its end, else close it.

        Closing is what tells the upstream to stop generating for a client that went away.
        """
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        self._stop_watchdog()
        if self.complete and self.keep_alive and self._error is None and not connection.closed:
            connection.client._put(connection)
        else:
            connection.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses answers with httptools and feeds the current response."""

    def __init__(self, client: "UpstreamClient", origin: Origin):
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.headers_waiter: asyncio.Future | None = None
        self.closed = False
        self.received = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data):
        self.received = True
        if self.response is None:
            # Bytes nobody asked for (an idle connection): the stream is out of step.
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lost(Disconnected(f"the upstream sent a malformed answer: {exc}"))
            self.close()

    def connection_lost(self, exc):
        self.closed = True
        if self.response is not None and not self.response.complete:
            # An answer without a length ends with the connection (RFC 9112, 6.3).
            if self.response.status and self._ends_at_close():
                self.response._finish(keep_alive=False)
            else:
                self._lost(Disconnected("the upstream closed the connection"))

    def _ends_at_close(self) -> bool:
        response = self.response
        return (
            response.header(b"content-length") is None
            and b"chunked" not in (response.header(b"transfer-encoding") or b"").lower()
        )

    def _lost(self, error: UpstreamError) -> None:
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.response is not None:
            self.response._fail(error)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes):
        self.response.headers.append((name.lower(), value))

    def on_headers_complete(self):
        status = self.parser.get_status_code()
        if status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.response.headers = []
            return
        self.response.status = status
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes):
        self.response._feed(body)

    def on_message_complete(self):
        if self.response.status:
            self.response._finish(self.parser.should_keep_alive())

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamClient:
    """Pooled connections per origin; most recently used first, dropped after idling too long."""

    def __init__(self, *, keepalive_seconds: float = 60.0):
        self.keepalive_seconds = keepalive_seconds
        self._origins: dict[str, Origin] = {}
        self._idle: dict[tuple, deque[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    def origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = Origin(url)
        return origin

    async def post(
        self,
        url: str,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send the request and return once the answer's status and headers are in."""
        return await self._send(
            b"POST", url, path, headers, body, connect_timeout=connect_timeout, read_timeout=read_timeout
        )

    async def get(
        self,
        url: str,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        """Send a GET and return once the answer's status and headers are in."""
        return await self._send(
            b"GET", url, path, headers, b"", connect_timeout=connect_timeout, read_timeout=read_timeout
        )

    async def _send(
        self,
        method: bytes,
        url: str,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> UpstreamResponse:
        origin = self.origin(url)
        head = b"".join(
            [
                method,
                b" ",
                origin.base_path,
                path,
                b" HTTP/1.1\r\nhost: ",
                origin.host_header,
                b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n" if method == b"POST" else b"\r\n",
                *[name + b": " + value + b"\r\n" for name, value in headers],
                b"\r\n",
            ]
        )
        connection = self._take(origin)
        if connection is not None:
            try:
                return await self._exchange(connection, head, body, read_timeout)
            except Disconnected:
                if connection.received:
                    raise
                # The upstream closed a pooled connection as we reused it: nothing was read,
                # so nothing was processed. Once more on a new connection.
        connection = await self._connect(origin, connect_timeout)
        return await self._exchange(connection, head, body, read_timeout)

    async def _exchange(
        self, connection: _Connection, head: bytes, body: bytes, read_timeout: float
    ) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        response = UpstreamResponse(connection, read_timeout)
        connection.response = response
        connection.received = False
        connection.headers_waiter = loop.create_future()
        try:
            if connection.closed:
                raise Disconnected("the pooled connection was closed")
            connection.transport.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                connection.transport.write(body)
            try:
                async with asyncio.timeout(read_timeout):
                    await connection.headers_waiter
            except TimeoutError:
                raise ReadTimeout(f"no answer from the upstream within {read_timeout:g}s") from None
        except BaseException:
            connection.close()
            raise
        finally:
            connection.headers_waiter = None
        return response

    def _take(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin.key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.closed:
                continue
            if now - connection.idle_since > self.keepalive_seconds:
                connection.close()
                continue
            return connection
        return None

    def _put(self, connection: _Connection) -> None:
        connection.response = None
        now = connection.idle_since = time.monotonic()
        idle = self._idle.get(connection.origin.key)
        if idle is None:
            idle = self._idle[connection.origin.key] = deque()
        idle.append(connection)
        # The oldest sit at the left, where reuse (from the right) does not reach after a burst:
        # drop those the upstream closed or that idled too long, so the pool shrinks back.
        while idle[0].closed or now - idle[0].idle_since > self.keepalive_seconds:
            idle.popleft().close()

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.ssl:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(timeout):
                _transport, connection = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context else None,
                )
        except TimeoutError:
            raise ConnectTimeout(
                f"connecting to {origin.host}:{origin.port} took over {timeout:g}s"
            ) from None
        except OSError as exc:
            raise ConnectFailed(f"could not connect to {origin.host}:{origin.port}: {exc}") from None
        return connection

    def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
