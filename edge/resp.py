"""A lean Redis connection for the edge's hot path: pipelined commands over one socket.

redis-py's asyncio client spends most of an admission in Python (connection pool, retry
wrappers, command packing). The two scripts on the request path only need "send these
commands, read their replies in order": this connection packs with hiredis (C), writes once,
and hands replies back in order as they arrive. Everything else in the edge uses redis-py.
"""

import asyncio
import ssl
from collections import deque
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ResponseError


class RespError(ResponseError):
    """An error reply from Redis (e.g. NOSCRIPT); a RedisError like redis-py's own."""

    @property
    def is_noscript(self) -> bool:
        return str(self).startswith("NOSCRIPT")

    @property
    def is_unavailable(self) -> bool:
        """Redis answers but cannot serve data yet (loading its file, a replica cut off)."""
        return str(self).startswith(("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY "))


def unreachable(exc: BaseException) -> bool:
    """Whether an error means "Redis cannot be reached now" (the fail-open/closed policy
    applies) rather than an internal fault (a script error, a bad argument), which never
    lets a request through unchecked."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, RespError) and exc.is_unavailable


class _Protocol(asyncio.Protocol):
    """Replies go to the waiting futures in order: the reply, or a RespError for an error reply.
    A lost connection fails every waiter with ConnectionError."""

    def __init__(self):
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future] = deque()
        self.transport = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            waiter = self.waiters.popleft()
            if waiter.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_result(RespError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc):
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError("lost the connection to Redis"))


class RespConnection:
    """One connection, opened on first use and again after it is lost."""

    def __init__(self, url: str, *, timeout: float = 2.0):
        self.url = url
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        parsed = urlparse(self.url)
        factory = _Protocol
        if parsed.scheme == "unix":
            _transport, protocol = await loop.create_unix_connection(factory, parsed.path)
        else:
            context = ssl.create_default_context() if parsed.scheme == "rediss" else None
            _transport, protocol = await loop.create_connection(
                factory, parsed.hostname or "127.0.0.1", parsed.port or 6379, ssl=context
            )
        setup = []
        if parsed.password:
            user = unquote(parsed.username) if parsed.username else None
            setup.append(
                ("AUTH", user, unquote(parsed.password)) if user else ("AUTH", unquote(parsed.password))
            )
        database = (parsed.path or "/").lstrip("/") if parsed.scheme != "unix" else ""
        if database and database != "0":
            setup.append(("SELECT", database))
        if setup:
            for reply in await self._wait(self._write(protocol, setup)):
                if isinstance(reply, RespError):
                    protocol.transport.close()
                    raise reply
        return protocol

    async def ready(self) -> _Protocol:
        """The open connection, connecting first if there is none."""
        if self._protocol is not None and not self._protocol.closed:
            return self._protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is None or self._protocol.closed:
                try:
                    async with asyncio.timeout(self.timeout):
                        self._protocol = await self._connect()
                except TimeoutError:
                    raise TimeoutError(f"connecting to Redis took over {self.timeout:g}s") from None
        return self._protocol

    def send_nowait(self, commands, futures=None) -> list[asyncio.Future] | None:
        """Write the commands now if connected and return a future per reply, else None.

        ``futures``, when given, are the ones to resolve (one per command): a caller's own
        future then wakes it directly, with no callback in between.

        No task and no await: the replies resolve the futures as they arrive. If they have not
        all come within the timeout, the connection is closed (later replies could no longer
        be paired) and the missing ones fail with TimeoutError.
        """
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return None
        return self._write(protocol, commands, futures)

    def _write(self, protocol: _Protocol, commands, futures=None) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        if futures is None:
            futures = [loop.create_future() for _command in commands]
        protocol.waiters.extend(futures)
        protocol.transport.write(b"".join([hiredis.pack_command(tuple(command)) for command in commands]))
        timer = loop.call_later(self.timeout, _expire, protocol, futures, self.timeout)

        def answered(_last: asyncio.Future) -> None:
            # Replies come in order, so the last one in means all are, unless the last was
            # done early (its caller gave up): then the timer still guards the others.
            if all(future.done() for future in futures):
                timer.cancel()

        futures[-1].add_done_callback(answered)
        return futures

    @staticmethod
    async def _wait(futures: list[asyncio.Future]) -> list:
        replies = []
        for future in futures:
            try:
                replies.append(await future)
            except OSError:
                for other in futures:
                    if other.done() and not other.cancelled():
                        other.exception()  # retrieved: one failure is reported, not one per reply
                raise
        return replies

    async def execute(self, commands: list[tuple]) -> list:
        """Send the commands as one write; return each reply or its RespError, in order.

        Raise ConnectionError or TimeoutError (both OSError) when Redis cannot be reached.
        """
        protocol = await self.ready()
        return await self._wait(self._write(protocol, commands))

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()


def _expire(protocol: _Protocol, futures: list[asyncio.Future], timeout: float) -> None:
    pending = [future for future in futures if not future.done()]
    if not pending:
        return
    for future in pending:
        future.set_exception(TimeoutError(f"Redis did not answer within {timeout:g}s"))
    protocol.transport.close()
