"""Send the Redis script calls made in one event-loop iteration as one pipeline.

Under load many requests are admitted at once; one round trip (one write, one read) for
all of them costs far less than one each. A lone request waits for nothing: the batch is
flushed on the next iteration of the loop.
"""

import asyncio

from edge.resp import RespConnection, RespError


class ScriptBatcher:
    def __init__(self, connection: RespConnection, scripts: dict[str, str]):
        self.connection = connection
        self.scripts = scripts  # sha -> source, loaded again if Redis forgot them
        self._pending: list[tuple[str, list, list, asyncio.Future]] = []
        self._scheduled = False

    async def call(self, sha: str, keys: list, args: list):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((sha, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        self._scheduled = False
        task = asyncio.ensure_future(self._send(batch))
        task.add_done_callback(_consume)

    async def _send(self, batch, *, retried: bool = False) -> None:
        try:
            results = await self.connection.execute(
                [("EVALSHA", sha, len(keys), *keys, *args) for sha, keys, args, _future in batch]
            )
        except Exception as exc:  # noqa: BLE001 - every waiter must hear of the failure
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if not retried and any(isinstance(result, RespError) and result.is_noscript for result in results):
            await self.load()
            await self._send(batch, retried=True)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def load(self) -> None:
        await self.connection.execute([("SCRIPT", "LOAD", source) for source in self.scripts.values()])


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
