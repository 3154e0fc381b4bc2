"""A write-ahead journal of answered requests, kept until Redis has their events.

The edge writes each request's usage event (and its settlement) here right before the
client receives the last bytes of the answer, then publishes it to Redis in a batch a few
milliseconds later; when Redis confirms the batch (or the batch goes to the spool), a line
marks those events done. A process killed with SIGKILL leaves its journal behind: another
edge process finds it (its lock is free), and moves what was not done to its own spool,
whose replay is exactly once by ``event_id`` at ingestion.

Lines are written with one ``write(2)`` each, not fsync'd: they survive the death of the
process (the kernel has them), not the loss of the host (see docs/edge.md).
"""

import fcntl
import logging
import os
from pathlib import Path

import orjson

from edge import metrics

logger = logging.getLogger("tollgate.edge.journal")

SEGMENT_BYTES = 4 << 20


class Journal:
    def __init__(self, directory: str | Path, *, segment_bytes: int = SEGMENT_BYTES):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.token = f"{os.getpid()}-{os.urandom(4).hex()}"
        # The lock is held for the life of the process; the kernel drops it when the process dies.
        self._lock = os.open(self.directory / f"journal-{self.token}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._segments: list[int] = []  # open segments, oldest first
        self._outstanding: dict[int, int] = {}  # segment -> events not yet done
        self._segment_of: dict[str, int] = {}  # event id -> its segment
        self._fd: int | None = None
        self._size = 0
        self._failing = False

    def _path(self, segment: int) -> Path:
        return self.directory / f"journal-{self.token}-{segment:06d}.jsonl"

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        segment = self._segments[-1] + 1 if self._segments else 0
        self._fd = os.open(self._path(segment), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self._segments.append(segment)
        self._outstanding[segment] = 0
        self._size = 0

    def _write(self, line: bytes) -> bool:
        """Append a line; a failing disk is logged and counted, and the request is still
        published from memory (only its protection against a crash is lost)."""
        try:
            if self._fd is None or self._size > self.segment_bytes:
                self._rotate()
            os.write(self._fd, line)
        except OSError as exc:
            metrics.JOURNAL_FAILURES.inc()
            if not self._failing:
                logger.error("cannot write the journal in %s: %s", self.directory, exc)
            self._failing = True
            return False
        self._failing = False
        self._size += len(line)
        return True

    def write(self, event: dict, settle: list | None) -> None:
        """Record an answered request's event (and its settlement) before anything else."""
        if not self._write(orjson.dumps({"e": event, "s": settle}) + b"\n"):
            return
        segment = self._segments[-1]
        self._outstanding[segment] += 1
        self._segment_of[event["event_id"]] = segment

    def done(self, event_ids: list[str]) -> None:
        """These events are in Redis or in the spool: nothing more to do for them here."""
        if not event_ids:
            return
        self._write(orjson.dumps({"done": event_ids}) + b"\n")
        for event_id in event_ids:
            segment = self._segment_of.pop(event_id, None)
            if segment is not None:
                self._outstanding[segment] -= 1
        # Oldest first, and never the one being written: a later segment may hold the
        # "done" lines of events in an earlier one.
        while len(self._segments) > 1 and self._outstanding[self._segments[0]] == 0:
            segment = self._segments.pop(0)
            del self._outstanding[segment]
            self._path(segment).unlink(missing_ok=True)

    @property
    def pending(self) -> int:
        return len(self._segment_of)

    def close(self) -> None:
        """Close on a clean stop: with everything done, nothing is left on disk."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._segment_of:
            for segment in self._segments:
                self._path(segment).unlink(missing_ok=True)
            (self.directory / f"journal-{self.token}.lock").unlink(missing_ok=True)
        os.close(self._lock)

    def recover(self) -> list[dict]:
        """Take over the journals of dead processes; return what they had not done, as spool
        records (``_settle`` to replay with the event). The files are removed: the caller
        spools the records at once."""
        records: list[dict] = []
        for lock_path in sorted(self.directory.glob("journal-*.lock")):
            token = lock_path.stem.removeprefix("journal-")
            if token == self.token:
                continue
            try:
                fd = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                segments = sorted(self.directory.glob(f"journal-{token}-*.jsonl"))
                records += _undone(segments)
                for path in segments:
                    path.unlink(missing_ok=True)
                lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        if records:
            logger.warning(
                "recovered %d usage events from the journal of a stopped edge process", len(records)
            )
        return records


def _undone(segments: list[Path]) -> list[dict]:
    events: dict[str, dict] = {}
    for path in segments:
        for line in path.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line torn by the crash: its request had not been answered yet
            if "done" in entry:
                for event_id in entry["done"]:
                    events.pop(event_id, None)
            elif "e" in entry:
                event = entry["e"]
                events[event["event_id"]] = {**event, "_settle": entry["s"]} if entry["s"] else event
    return list(events.values())
