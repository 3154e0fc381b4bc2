"""Send the Redis commands made in one event-loop iteration as one pipeline.

Under load many requests are admitted and looked up at once; one round trip (one write, one
read) for all of them costs far less than one each, and needs one connection, not one per
request (a pool would run dry under a burst and make a healthy Redis look unreachable). A lone
request waits for nothing: the batch is written on the next iteration of the loop. On the usual
path there is no task and no extra await: each caller's future is resolved by the connection
when its reply arrives.
"""

import asyncio

from edge.resp import RespConnection, RespError


class ScriptBatcher:
    def __init__(self, connection: RespConnection, scripts: dict[str, str]):
        self.connection = connection
        self.scripts = scripts  # sha -> source, loaded again if Redis forgot them
        self._pending: list[tuple] = []
        self._futures: list[asyncio.Future] = []
        self._tasks: set[asyncio.Task] = set()

    def submit(self, command: tuple) -> asyncio.Future:
        """Queue one command for the next batch; its future holds the reply (a RespError for
        an error reply) or fails with OSError when Redis cannot be reached."""
        loop = asyncio.get_running_loop()
        if not self._pending:
            loop.call_soon(self._flush)
        future = loop.create_future()
        self._pending.append(command)
        self._futures.append(future)
        return future

    async def execute(self, command: tuple):
        """Run one command in the next batch; return its reply.

        Raise RespError for an error reply, OSError when Redis cannot be reached.
        """
        result = await self.submit(command)
        if isinstance(result, RespError):
            raise result
        return result

    async def call(self, sha: str, keys: list, args: list):
        """Run one loaded script; raise RespError for an error reply, OSError when Redis is away."""
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        try:
            return await self.execute(command)
        except RespError as error:
            if not error.is_noscript:
                raise
        # Redis restarted and forgot the scripts: load them, then this call once more.
        await self.load()
        [result] = await self.connection.execute([command])
        if isinstance(result, RespError):
            raise result
        return result

    def _flush(self) -> None:
        commands, futures = self._pending, self._futures
        self._pending, self._futures = [], []
        if self.connection.send_nowait(commands, futures) is None:
            task = asyncio.ensure_future(self._connect_and_send(commands, futures))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect_and_send(self, commands: list[tuple], futures: list[asyncio.Future]) -> None:
        try:
            replies = await self.connection.execute(commands)
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of the failure
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for reply, future in zip(replies, futures, strict=True):
            if not future.done():
                future.set_result(reply)

    async def load(self) -> None:
        await self.connection.execute([("SCRIPT", "LOAD", source) for source in self.scripts.values()])
