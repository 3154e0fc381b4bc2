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


class _Protocol(asyncio.Protocol):
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
                waiter.set_exception(RespError(str(reply)))
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
            await self._send(protocol, setup)
        return protocol

    async def _ready(self) -> _Protocol:
        if self._protocol is not None and not self._protocol.closed:
            return self._protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is None or self._protocol.closed:
                self._protocol = await asyncio.wait_for(self._connect(), self.timeout)
        return self._protocol

    @staticmethod
    async def _send(protocol: _Protocol, commands) -> list:
        loop = asyncio.get_running_loop()
        waiters = []
        for _command in commands:
            waiter = loop.create_future()
            protocol.waiters.append(waiter)
            waiters.append(waiter)
        protocol.transport.write(b"".join(hiredis.pack_command(tuple(command)) for command in commands))
        return await asyncio.gather(*waiters, return_exceptions=True)

    async def execute(self, commands: list[tuple]) -> list:
        """Send the commands as one write; return each reply or its RespError, in order.

        Raise ConnectionError or TimeoutError (both OSError) when Redis cannot be reached.
        """
        protocol = await self._ready()
        try:
            replies = await asyncio.wait_for(self._send(protocol, commands), self.timeout)
        except TimeoutError:
            # Replies may still come for these commands; start afresh rather than mis-pair them.
            protocol.transport.close()
            raise
        for reply in replies:
            if isinstance(reply, ConnectionError):
                raise reply
        return replies

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
