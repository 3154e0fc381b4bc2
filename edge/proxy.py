"""Proxying one request: the upstream choice and failover, and the relay of its answer.

The exchange streams the answer to the client as it comes and reads the usage on the way.
Right before the client receives the last bytes of an answer, ``on_answered`` is called:
the edge makes the request's usage event durable there, so an answer the client has whole
is never lost to a crash of the edge (see edge/publication.py).
"""

import asyncio
import random
import time
from collections.abc import Callable, Iterable

import orjson

from edge import metrics
from edge.auth import header
from edge.config import Route, Upstream
from edge.errors import EdgeError
from edge.metering import SSEUsage, output_text, usage_from
from edge.upstream import ConnectTimeout, ReadTimeout, UpstreamClient, UpstreamError, UpstreamResponse

HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"trailers",
    b"transfer-encoding",
    b"upgrade",
}
# The edge sets these itself (x-request-id, traceparent, content-type, accept-encoding) or must
# not pass them on (the client's key; expect, since the edge sends the body it already holds).
NOT_FORWARDED = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"x-api-key",
    b"content-length",
    b"content-type",
    b"accept-encoding",
    b"expect",
    b"x-request-id",
    b"traceparent",
}
NOT_RETURNED = HOP_BY_HOP | {b"content-length", b"content-encoding", b"server", b"date", b"x-request-id"}


class UpstreamPool:
    """Least in-flight requests per unit of weight; ties broken at random. Counts each
    upstream's failures in series made at start, so a request that succeeds touches none."""

    def __init__(self, routes: Iterable[Route]):
        self.inflight: dict[str, int] = {}
        self.errors = metrics.UpstreamErrors(
            {upstream.url for route in routes for upstream in route.upstreams}
        )

    def order(self, route: Route) -> tuple[Upstream, ...] | list[Upstream]:
        if len(route.upstreams) == 1:
            return route.upstreams

        def load(upstream: Upstream) -> tuple[float, float]:
            return (self.inflight.get(upstream.url, 0) / upstream.weight, random.random())

        return sorted(route.upstreams, key=load)

    def take(self, url: str) -> None:
        self.inflight[url] = self.inflight.get(url, 0) + 1

    def give_back(self, url: str) -> None:
        self.inflight[url] -= 1


def forward_headers(scope, request_id: str, traceparent: str) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop ones and the edge's own, plus the edge's."""
    connection = header(scope, b"connection")
    # Headers the client names in Connection are hop-by-hop too (RFC 9110, 7.6.1).
    named = {token.strip().lower().encode("latin-1") for token in connection.split(",")} if connection else ()
    headers = [
        (name, value) for name, value in scope["headers"] if name not in NOT_FORWARDED and name not in named
    ]
    headers += [
        (b"x-request-id", request_id.encode()),
        (b"traceparent", traceparent.encode("latin-1")),
        (b"content-type", b"application/json"),
        (b"accept-encoding", b"identity"),
    ]
    return headers


class Exchange:
    """One proxied request and what came of it: status, usage (or the text to count), timings."""

    def __init__(
        self,
        *,
        upstreams: UpstreamClient,
        pool: UpstreamPool,
        endpoint: str,
        drop_usage_chunk: bool,
        request_id: str,
        extra_headers: list[tuple[bytes, bytes]],
        on_answered: Callable[["Exchange"], None],
    ):
        self.upstreams = upstreams
        self.pool = pool
        self.endpoint = endpoint
        self.drop_usage_chunk = drop_usage_chunk
        self.request_id = request_id
        self.extra_headers = extra_headers
        self.on_answered = on_answered
        self.status = 0
        self.usage: tuple[int, int, int] | None = None
        self.text = ""
        self.sse: SSEUsage | None = None
        self.first_byte: float | None = None
        self.upstream_started: float | None = None
        self.upstream_url = ""
        self.disconnected = False

    def output_text(self) -> str:
        return self.sse.text() if self.sse is not None else self.text

    async def run(self, receive, send, route: Route, body: bytes, headers: list[tuple[bytes, bytes]]):
        """Proxy the request; raise EdgeError for an answer the edge writes itself (502, 504)."""
        task = asyncio.current_task()
        # Watch from the start: a client that leaves before the upstream's first byte (a
        # non-streamed answer still being generated) cancels the upstream request too.
        watcher = asyncio.create_task(_watch_disconnect(receive, task))
        response = None
        try:
            response = await self._connect(route, body, headers)
            await self._relay(response, send)
        except EdgeError as error:
            self.status = error.status
            raise
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled() or not watcher.result():
                raise
            self.disconnected = True
            # Swallow only the cancellation that the client's disconnect caused.
            task.uncancel()
        finally:
            watcher.cancel()
            if response is not None:
                response.release()
                self.pool.give_back(self.upstream_url)

    async def _connect(
        self, route: Route, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> UpstreamResponse:
        """Send the request, trying the next upstream on a connection failure or 502/503."""
        path = ("/v1/" + self.endpoint.replace(".", "/")).encode()
        last_error: EdgeError | None = None
        candidates = self.pool.order(route)
        for attempt, upstream in enumerate(candidates):
            if attempt:
                metrics.UPSTREAM_FAILOVERS.inc()
            send_headers = headers
            if upstream.api_key:
                send_headers = [*headers, (b"authorization", f"Bearer {upstream.api_key}".encode("latin-1"))]
            self.pool.take(upstream.url)
            self.upstream_url = upstream.url
            self.upstream_started = time.perf_counter()
            try:
                response = await self.upstreams.post(
                    upstream.url,
                    path,
                    send_headers,
                    body,
                    connect_timeout=upstream.connect_timeout,
                    read_timeout=upstream.read_timeout,
                )
            except asyncio.CancelledError:
                self.pool.give_back(upstream.url)
                raise
            except (ConnectTimeout, ReadTimeout) as exc:
                self.pool.give_back(upstream.url)
                self.pool.errors.count(upstream.url, exc.kind)
                last_error = EdgeError(
                    504,
                    "The model server did not answer in time.",
                    type="server_error",
                    code="upstream_timeout",
                )
                if isinstance(exc, ReadTimeout):
                    # The upstream has the request and may be generating: another would run it twice.
                    break
                continue
            except UpstreamError as exc:
                self.pool.give_back(upstream.url)
                self.pool.errors.count(upstream.url, exc.kind)
                last_error = EdgeError(
                    502,
                    "The model server could not be reached.",
                    type="server_error",
                    code="upstream_unavailable",
                )
                continue
            # Any other answer costs this one comparison: the counters are touched on failure only.
            if response.status >= 500:
                self.pool.errors.count(upstream.url, "status_5xx")
                if response.status in (502, 503) and attempt < len(candidates) - 1:
                    response.release()
                    self.pool.give_back(upstream.url)
                    continue
            return response
        raise last_error

    async def _relay(self, response: UpstreamResponse, send):
        self.status = response.status
        headers = [(name, value) for name, value in response.headers if name not in NOT_RETURNED]
        headers.append((b"x-request-id", self.request_id.encode()))
        headers += self.extra_headers
        if not (response.header(b"content-type") or b"").startswith(b"text/event-stream"):
            try:
                data = await response.read()
            except UpstreamError as exc:
                self.pool.errors.count(self.upstream_url, exc.kind)
                # Nothing has gone to the client yet: say what happened instead of a torn answer.
                timed_out = isinstance(exc, ReadTimeout)
                raise EdgeError(
                    504 if timed_out else 502,
                    "The model server did not finish its answer in time."
                    if timed_out
                    else "The model server broke off its answer.",
                    type="server_error",
                    code="upstream_timeout" if timed_out else "upstream_unavailable",
                ) from None
            self.first_byte = time.perf_counter()
            self._read_json_usage(data)
            headers.append((b"content-length", str(len(data)).encode()))
            self.on_answered(self)
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        sse = self.sse = SSEUsage(drop_usage_chunk=self.drop_usage_chunk)
        try:
            while (chunk := await response.next_chunk()) is not None:
                if self.first_byte is None:
                    self.first_byte = time.perf_counter()
                out = sse.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
        except UpstreamError as exc:
            # The upstream broke off or went quiet mid-stream: end the client's stream; meter what came.
            self.pool.errors.count(self.upstream_url, exc.kind)
        finally:
            self.usage = sse.usage  # also when the client left mid-stream
        rest = sse.flush()  # the stream's end ([DONE]) is held back until now
        self.on_answered(self)
        await send({"type": "http.response.body", "body": rest, "more_body": False})

    def _read_json_usage(self, data: bytes) -> None:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict):
            self.usage = usage_from(obj)
            if self.usage is None:
                self.text = output_text(obj)


async def _watch_disconnect(receive, task: asyncio.Task) -> bool:
    """Cancel the exchange when the client goes away; return whether it did."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return True
