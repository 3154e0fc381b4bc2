"""The edge's reads of the data plane: key records and prices, over the pipelined connection.

Look-ups share the edge's one pipelined Redis connection with admissions (no pool to run
dry under a burst of cache misses), and concurrent look-ups of one name wait for a single
read. Each read also asks whether the portal's last full resync is still in Redis
(``tg:synced``): a record that is missing while the marker is gone means Redis lost its
data and the portal is rebuilding it, not that the key or price does not exist.
"""

import asyncio

from edge.batching import ScriptBatcher
from edge.records import SYNCED_KEY
from edge.resp import RespError


class DataPlane:
    def __init__(self, batcher: ScriptBatcher):
        self._batcher = batcher
        self._reading: dict[str, asyncio.Future] = {}

    async def read(self, name: str) -> tuple[bytes | None, bool]:
        """Return (the value at ``name`` or None, whether the data plane is complete).

        Raise OSError when Redis is unreachable, RespError for an error reply.
        """
        pending = self._reading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self._reading[name] = future
        try:
            replies = [self._batcher.submit(("GET", name)), self._batcher.submit(("EXISTS", SYNCED_KEY))]
            try:
                value, synced = await replies[0], await replies[1]
            except OSError:
                for reply in replies:
                    if reply.done() and not reply.cancelled():
                        reply.exception()  # one failure is reported, not one per reply
                raise
            for reply in (value, synced):
                if isinstance(reply, RespError):
                    raise reply
            result = (value, bool(synced))
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: the waiters re-raise it themselves
            raise
        finally:
            del self._reading[name]
