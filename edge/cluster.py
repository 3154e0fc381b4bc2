"""The edge's pipelined Redis connection to a Redis Cluster: each command to its slot's master.

The same interface as ``RespConnection`` (``ready``, ``send_nowait``, ``execute``, ``close``),
so the batcher, the data plane and publication do not know which one they talk to. Commands
of one batch are grouped by master and written once per master; each reply goes back to its
caller in the batch's order. A command's slot is its first key's (every key of one script
call shares the organization's ``{o:<org_id>}`` tag, so one slot). ``PING`` and ``SCRIPT``
go to every master: a script must be loaded on each, and Redis is up only if all answer.

The slot map is read with ``CLUSTER SLOTS`` on first use, and again when a master's
connection is lost (it may have failed over) or a reply says ``MOVED`` (the slot moved):
the command is then sent again where the map says. ``ASK`` (a slot being migrated) sends
the command once to the named node after ``ASKING``.
"""

import asyncio
from urllib.parse import urlparse

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from edge.resp import RespConnection, RespError

# Commands without a key, sent to every master.
EVERY_MASTER = {b"PING", b"SCRIPT"}
Node = tuple[str, int]


def command_slot(command: tuple) -> int:
    """The hash slot of a command's first key (EVALSHA's after the key count)."""
    name = _name(command)
    key = command[3] if name in (b"EVALSHA", b"EVAL") else command[1]
    return key_slot(key if isinstance(key, bytes) else str(key).encode())


def _name(command: tuple) -> bytes:
    name = command[0]
    return (name if isinstance(name, bytes) else str(name).encode()).upper()


def _redirect(reply) -> tuple[str, Node] | None:
    """("MOVED" or "ASK", the node) of a redirection reply, else None."""
    if not isinstance(reply, RespError):
        return None
    kind, _, rest = str(reply).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    host, _, port = rest.partition(" ")[2].rpartition(":")
    return kind, (host, int(port))


class ClusterConnection:
    def __init__(self, url: str, *, timeout: float = 2.0):
        self.url = url
        self.timeout = timeout
        parsed = urlparse(url)
        self._seed: Node = (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        self._nodes: dict[Node, RespConnection] = {}
        self._slots: list[Node] | None = None  # the master of each slot
        self._masters: list[Node] = []
        self._refreshing: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task] = set()

    def _node(self, node: Node) -> RespConnection:
        connection = self._nodes.get(node)
        if connection is None:
            parsed = urlparse(self.url)
            auth = parsed.netloc.rpartition("@")[0]
            host = f"[{node[0]}]" if ":" in node[0] else node[0]
            netloc = f"{auth}@{host}:{node[1]}" if auth else f"{host}:{node[1]}"
            connection = RespConnection(parsed._replace(netloc=netloc).geturl(), timeout=self.timeout)
            self._nodes[node] = connection
        return connection

    def _healthy(self) -> bool:
        return self._slots is not None and all(
            (protocol := self._nodes[node]._protocol) is not None and not protocol.closed
            for node in self._masters
        )

    async def ready(self) -> None:
        """Read the slot map if it is unknown or a master's connection was lost; connect."""
        if self._healthy():
            return
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            if not self._healthy():
                await self._refresh()

    async def _refresh(self) -> None:
        """Ask the known nodes, then the seed, for the slot map; connect to every master."""
        error: OSError | RespError | None = None
        for node in [*self._masters, self._seed]:
            try:
                [reply] = await self._node(node).execute([("CLUSTER", "SLOTS")])
            except OSError as exc:
                error = exc
                continue
            if isinstance(reply, RespError):
                error = reply
                continue
            slots: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            for start, end, master, *_replicas in reply:
                # An empty host means "the address you reached me on".
                host = master[0].decode() or node[0]
                slots[start : end + 1] = [(host, int(master[1]))] * (end - start + 1)
            if None in slots:
                error = RespError("CLUSTERDOWN not every hash slot is served")
                continue
            masters = sorted(set(slots))
            for master in masters:
                await self._node(master).ready()
            self._slots, self._masters = slots, masters
            return
        raise error

    def send_nowait(self, commands, futures=None) -> list[asyncio.Future] | None:
        """Write the commands now, each to its master, and return a future per reply; None
        when the slot map is unknown or a master is not connected (nothing is written then)."""
        if not self._healthy():
            return None
        loop = asyncio.get_running_loop()
        if futures is None:
            futures = [loop.create_future() for _command in commands]
        groups: dict[Node, list] = {}
        for command, future in zip(commands, futures, strict=True):
            if _name(command) in EVERY_MASTER:
                answers = [loop.create_future() for _master in self._masters]
                for master, answer in zip(self._masters, answers, strict=True):
                    groups.setdefault(master, []).append((command, answer))
                _gather(answers, future)
            else:
                inner = loop.create_future()
                groups.setdefault(self._slots[command_slot(command)], []).append((command, inner))
                inner.add_done_callback(lambda done, c=command, f=future: self._answered(done, c, f))
        for node, pairs in groups.items():
            connection = self._nodes[node]
            connection._write(connection._protocol, [c for c, _ in pairs], [f for _, f in pairs])
        return futures

    def _answered(self, inner: asyncio.Future, command: tuple, future: asyncio.Future) -> None:
        if future.done():
            return
        if inner.cancelled() or inner.exception() is not None:
            if inner.cancelled():
                future.cancel()
            else:
                self._slots_unsure()
                future.set_exception(inner.exception())
            return
        reply = inner.result()
        redirect = _redirect(reply)
        if redirect is None:
            future.set_result(reply)
            return
        task = asyncio.ensure_future(self._follow(redirect, command, future))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _slots_unsure(self) -> None:
        """A master did not answer: read the map again before the next command (it may have
        failed over to a replica)."""
        self._slots = None

    async def _follow(self, redirect: tuple[str, Node], command: tuple, future: asyncio.Future) -> None:
        kind, node = redirect
        try:
            if kind == "ASK":
                replies = await self._node(node).execute([("ASKING",), command])
                reply = replies[1]
            else:
                self._slots = None
                [reply] = await self.execute([command])
        except OSError as exc:
            if not future.done():
                future.set_exception(exc)
            return
        except RespError as error:  # the slot map could not be read: an error reply to the caller
            reply = error
        if not future.done():
            future.set_result(reply)

    async def execute(self, commands: list[tuple]) -> list:
        """Send the commands, each to its master; return each reply or its RespError, in order.

        Raise OSError when a master cannot be reached.
        """
        await self.ready()
        futures = self.send_nowait(commands)
        if futures is None:  # a connection was lost between ready() and now
            await self.ready()
            futures = self.send_nowait(commands)
            if futures is None:
                raise ConnectionError("lost the connection to a Redis Cluster master")
        return await RespConnection._wait(futures)

    def close(self) -> None:
        for connection in self._nodes.values():
            connection.close()


def _gather(answers: list[asyncio.Future], future: asyncio.Future) -> None:
    """Resolve ``future`` once every master answered: the first failure or error reply, else
    the first master's reply."""

    def done(_answer: asyncio.Future) -> None:
        if not all(answer.done() for answer in answers):
            return
        # Every failure is retrieved here, so that one is reported, not one per master.
        failures = [answer.exception() for answer in answers if not answer.cancelled()]
        if future.done():
            return
        if any(answer.cancelled() for answer in answers):
            future.cancel()
        elif any(failures):
            future.set_exception(next(failure for failure in failures if failure is not None))
        else:
            replies = [answer.result() for answer in answers]
            future.set_result(next((r for r in replies if isinstance(r, RespError)), replies[0]))

    for answer in answers:
        answer.add_done_callback(done)
