"""A local append-only spool for usage events while Redis is unreachable.

Events are appended as JSON lines and fsync'd in batches (every ``fsync_ms``). A replay
loop sends them to Redis in order once it answers, then removes the file. Each process
writes its own file; files left by a dead process are claimed by renaming them, so no
two processes replay the same file. A replay that dies halfway may send some events
again; their ``event_id`` makes ingestion count them once.
"""

import asyncio
import logging
import os
import time
from pathlib import Path

import orjson

logger = logging.getLogger("tollgate.edge.spool")


class Spool:
    def __init__(self, directory: str, *, fsync_ms: int = 50):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"spool-{os.getpid()}.jsonl"
        self.fsync_seconds = fsync_ms / 1000
        self._file = None
        self._dirty = False
        self.pending = 0

    def append(self, event: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "ab", buffering=0)
        self._file.write(orjson.dumps(event) + b"\n")
        self._dirty = True
        self.pending += 1

    def sync(self) -> None:
        if self._file is not None and self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def _claim(self) -> list[Path]:
        """Take this process's file and any orphaned file for replay, by renaming.

        Orphans are the spool files of dead processes and the files a dead process had
        claimed but not finished replaying; the latter are older, so they go first.
        """
        claimed = []
        if self._file is not None:
            self.close()
        mine = str(os.getpid())
        unfinished = sorted(self.directory.glob("replay-*.jsonl"), key=_claimed_at)
        for path in unfinished + sorted(self.directory.glob("spool-*.jsonl")):
            pid = path.stem.split("-")[1]
            if path.name.startswith("replay-") and pid == mine:
                continue  # already ours: picked up below
            if path != self.path and pid.isdigit() and _alive(int(pid)):
                continue
            target = self.directory / f"replay-{os.getpid()}-{time.time_ns()}.jsonl"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue
            claimed.append(target)
        claimed += sorted(self.directory.glob(f"replay-{os.getpid()}-*.jsonl"))
        return sorted(set(claimed))

    async def replay(self, send) -> int:
        """Send every spooled event with ``await send(events)``, oldest first. Return count."""
        sent = 0
        for path in self._claim():
            events = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
            for start in range(0, len(events), 500):
                await send(events[start : start + 500])
                sent += len(events[start : start + 500])
            path.unlink()
        self.pending = max(self.pending - sent, 0)
        return sent

    async def run_fsync(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_seconds)
            try:
                self.sync()
            except OSError:
                logger.exception("spool fsync failed")

    def has_backlog(self) -> bool:
        if self._file is not None and self.path.exists() and self.path.stat().st_size:
            return True
        return any(self.directory.glob("spool-*.jsonl")) or any(self.directory.glob("replay-*.jsonl"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claimed_at(path: Path) -> int:
    """When a ``replay-<pid>-<ns>`` file was claimed (0 when its name does not say)."""
    tail = path.stem.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0
