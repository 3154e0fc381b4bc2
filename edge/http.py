"""The edge's HTTP/1.1 server protocol: uvicorn's httptools protocol with bounds on a request's head.

A request line longer than ``http.max_url_bytes`` is answered 414, headers beyond
``http.max_header_bytes`` (names and values together) or ``http.max_headers`` are answered 431,
and bytes the parser refuses are answered 400, all in OpenAI's error shape. The bounds hold while
the head arrives: httptools keeps a header's partial value until its line ends, so the bytes of
an unfinished head are counted as they are read and a client streaming one endless header is
answered once the head could no longer fit, not after it has been buffered.
"""

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from edge.config import HttpLimits
from edge.errors import EdgeError

# _head_bytes when no unfinished head is being counted: once a head is complete, and while one
# began within the chunk being parsed, which may also hold the end of the previous request and so
# is not counted (the bound holds all the same, one chunk later).
_NOT_COUNTING = -1
_FROM_NEXT_CHUNK = -2
# Request-line framing (method, version, spaces) and header whitespace that the exact counts
# leave out, allowed on top of them before an unfinished head is refused.
_HEAD_SLACK = 1024
# After a refusal, how long what the client still sends is read and dropped, so the answer is
# not lost to a reset of a connection closed with unread data.
_LINGER_SECONDS = 2.0


class EdgeHttpProtocol(HttpToolsProtocol):
    """Pass to ``uvicorn.run`` as ``http=functools.partial(EdgeHttpProtocol, limits=...)``.

    The parser callbacks call the parent by name rather than through ``super()``: they run several
    times per request, and that halves what this class adds to a request (bench/RESULTS.md).
    """

    def __init__(self, *args, limits: HttpLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_url_bytes = limits.max_url_bytes
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._max_head_bytes = (
            limits.max_url_bytes + limits.max_header_bytes + 4 * limits.max_headers + _HEAD_SLACK
        )
        self._header_bytes = 0
        self._header_count = 0
        self._head_bytes = _NOT_COUNTING
        self._refusal: EdgeError | None = None
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        HttpToolsProtocol.data_received(self, data)
        head = self._head_bytes
        if head >= 0:
            head += len(data)
            if head > self._max_head_bytes:
                self._refuse(self._headers_too_large())
                return
            self._head_bytes = head
        elif head == _FROM_NEXT_CHUNK:
            self._head_bytes = 0

    # Parser callbacks: an exception raised here stops the parser, and uvicorn answers through
    # send_400_response.
    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._header_bytes = self._header_count = 0
        self._head_bytes = _FROM_NEXT_CHUNK

    def on_url(self, url: bytes) -> None:
        if len(self.url) + len(url) > self._max_url_bytes:
            self._refusal = EdgeError(
                414, f"The request URL exceeds the {self._max_url_bytes} byte limit.", code="url_too_long"
            )
            raise self._refusal
        HttpToolsProtocol.on_url(self, url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > self._max_headers:
            self._refusal = EdgeError(
                431, f"The request has more than {self._max_headers} headers.", code="too_many_headers"
            )
            raise self._refusal
        if self._header_bytes > self._max_header_bytes:
            self._refusal = self._headers_too_large()
            raise self._refusal
        HttpToolsProtocol.on_header(self, name, value)

    def on_headers_complete(self) -> None:
        self._head_bytes = _NOT_COUNTING
        HttpToolsProtocol.on_headers_complete(self)

    def send_400_response(self, msg: str) -> None:
        """Answer a request the parser stopped at: over a bound, else malformed."""
        self._refuse(
            self._refusal or EdgeError(400, "The request is not valid HTTP/1.1.", code="invalid_http_request")
        )

    def _headers_too_large(self) -> EdgeError:
        return EdgeError(
            431,
            f"The request headers exceed the {self._max_header_bytes} byte limit.",
            code="headers_too_large",
        )

    def _refuse(self, error: EdgeError) -> None:
        """Answer ``error`` and close: the rest of the connection's bytes cannot be framed."""
        self._refused = True
        self._head_bytes = _NOT_COUNTING
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or not cycle.more_body:
                # An answer is under way, or owed to an earlier (pipelined) request: one written
                # now would corrupt it or be taken for it.
                self.transport.close()
                return
            # The body of the request being handled is what broke: its handler sees the client
            # gone, and this answer is the only one sent.
            cycle.disconnected = True
            cycle.message_event.set()
        body = error.body()
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
