"""Publication: each finished request's settlement and usage event, to Redis, never lost.

``record`` writes the request to the journal (before the client has the end of its answer),
then queues it; the queue goes to Redis in one pipelined round trip a few milliseconds later,
off the response path. A batch Redis does not wholly take goes to the spool, which is
replayed when Redis answers again; journals of dead processes are recovered into the spool.
"""

import asyncio
import logging

import orjson

from edge import metrics
from edge.cluster import ClusterConnection
from edge.events import UsageEvent
from edge.journal import Journal
from edge.limits import Admission, Limiter
from edge.resp import RespConnection, RespError
from edge.spool import Spool
from edge.streams import shard_of, usage_stream

logger = logging.getLogger("tollgate.edge")

# In the spool: this request's settlement (and served count) already took effect; replay its event only.
SETTLED = "settled"
PUBLISH_BATCH_SECONDS = 0.002
REPLAY_EVERY_SECONDS = 1.0


class Publisher:
    def __init__(
        self,
        connection: RespConnection | ClusterConnection,
        limiter: Limiter,
        spool: Spool,
        journal: Journal,
        *,
        shards: int = 1,
    ):
        self.connection = connection
        self.shards = shards
        self.limiter = limiter
        self.spool = spool
        self.journal = journal
        self._outbox: list[tuple[UsageEvent, list | None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[asyncio.Future] = set()  # the last reply of each batch on its way
        self._tasks: set[asyncio.Task] = set()

    def record(self, event: UsageEvent, admission: Admission | None) -> None:
        """Journal the request now; send its settlement and event with the next batch."""
        settle = None
        if admission is not None:
            keys, args = self.limiter.settle_args(
                admission,
                tokens=event["input_tokens"] + event["output_tokens"],
                cost=event["cost_micro_minor"],
            )
            settle = [keys, args]
        self.journal.write(event, settle)
        self._outbox.append((event, settle))
        if self._timer is None:
            # Let the other requests finishing now join this batch: one round trip for all.
            self._timer = asyncio.get_running_loop().call_later(PUBLISH_BATCH_SECONDS, self._publish)

    async def drain(self, timeout: float = 10) -> None:
        """Send what is queued and wait for it (a graceful stop)."""
        if self._timer is not None:
            self._timer.cancel()
            self._publish()
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=5)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    def _publish(self) -> None:
        """Write the batch now; a callback checks the replies when the last one is in.

        Only when something went wrong (Redis away, scripts forgotten) does a task take over,
        to load the scripts and send again, or to spool the batch.
        """
        self._timer = None
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        commands = self._commands(batch)
        replies = self.connection.send_nowait(commands)
        if replies is None:
            self._spawn(self._publish_slowly(batch, commands, None))
            return
        last = replies[-1]
        self._in_flight.add(last)

        def check(_last: asyncio.Future) -> None:
            self._in_flight.discard(last)
            results = [reply.exception() or reply.result() for reply in replies]
            if any(isinstance(result, Exception) for result in results):
                self._spawn(self._publish_slowly(batch, commands, results))
            else:
                self.journal.done([event["event_id"] for event, _settle in batch])

        last.add_done_callback(check)

    async def _publish_slowly(self, batch, commands: list[tuple], results: list | None) -> None:
        try:
            await self._complete(commands, results)
        except (RespError, OSError):
            metrics.PUBLISH_FAILURES.inc()
            for record in spool_records(batch, results):
                self.spool.append(record)
                metrics.SPOOLED.inc()
            metrics.SPOOL_PENDING.set(self.spool.pending)
        self.journal.done([event["event_id"] for event, _settle in batch])

    def _commands(self, batch: list[tuple[UsageEvent, list | None]]) -> list[tuple]:
        """Per request: its settlement with the served counters (one script), and its event."""
        commands = []
        for event, settle in batch:
            if settle != SETTLED:
                commands.append(self.limiter.settle_command(settle, event))
            stream = usage_stream(shard_of(event["org_id"], self.shards), self.shards)
            commands.append(("XADD", stream, "*", "data", orjson.dumps(event)))
        return commands

    async def _complete(self, commands: list[tuple], results: list | None) -> None:
        """Send the commands (unless ``results`` holds their replies) and make sure each took.

        A Redis that restarted has forgotten the scripts: load them and send again only the
        script calls that failed (the events already went in). Other errors propagate.
        """
        if results is None:
            results = await self.connection.execute(commands)
        for result in results:
            if isinstance(result, OSError):
                raise result
        retry = [
            commands[index]
            for index, result in enumerate(results)
            if isinstance(result, RespError) and result.is_noscript
        ]
        failures = [r for r in results if isinstance(r, RespError) and not r.is_noscript]
        if failures:
            raise failures[0]
        if retry:
            await self.limiter.batcher.load()
            for result in await self.connection.execute(retry):
                if isinstance(result, RespError):
                    raise result

    # --- replay -----------------------------------------------------------------------
    def recover_journals(self) -> int:
        """Move what dead edge processes answered but never published into the spool."""
        records = self.journal.recover()
        for record in records:
            self.spool.append(record)
            metrics.SPOOLED.inc()
        if records:
            self.spool.sync()
            metrics.SPOOL_PENDING.set(self.spool.pending)
        return len(records)

    async def run_replay(self) -> None:
        """Forever: recover dead journals, and replay the spool whenever Redis answers."""
        while True:
            await asyncio.sleep(REPLAY_EVERY_SECONDS)
            try:
                self.recover_journals()
            except OSError:
                logger.exception("journal recovery failed")
            if not self.spool.has_backlog():
                continue
            try:
                await self.connection.execute([("PING",)])
                await self.spool.replay(self.replay_batch)
                metrics.SPOOL_PENDING.set(self.spool.pending)
            except (RespError, OSError):
                continue

    async def replay_batch(self, events: list[dict]) -> None:
        """Replay spooled events exactly as ``record`` would have sent them."""
        batch = []
        for spooled in events:
            event = dict(spooled)
            settle = event.pop("_settle", None)
            if event.pop("_settled", False):
                settle = SETTLED
            batch.append((event, settle))
        await self._complete(self._commands(batch), None)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def spool_records(batch: list[tuple[dict, list | None]], results: list | None) -> list[dict]:
    """What to spool of a batch Redis did not wholly take. ``results`` are its replies, two per
    request (settlement, event) in order, or None when nothing is known to have arrived.

    Replies come in order, so those before a break took effect: a request Redis confirmed is
    not spooled, and one whose settlement it confirmed but not its event is spooled to replay
    the event only, so that no settlement is applied twice. Otherwise the settlement waits in
    the spool with its event: the budget reservation is corrected and the lease released when
    Redis is back, not only the event sent.
    """
    records = []
    for index, (event, settle) in enumerate(batch):
        settled = results is not None and not isinstance(results[2 * index], Exception)
        recorded = results is not None and not isinstance(results[2 * index + 1], Exception)
        if settled and recorded:
            continue
        if settled:
            records.append({**event, "_settled": True})
        else:
            records.append({**event, "_settle": settle} if settle else event)
    return records
