"""One JSON line per request on stdout, written in batches off the request path.

Lines carry the request id and what was decided, never a key, a prompt or a completion.
"""

import asyncio
import sys
import time

import orjson


class AccessLog:
    def __init__(self, *, enabled: bool, stream=None, flush_seconds: float = 0.1):
        self.enabled = enabled
        self.stream = stream or sys.stdout.buffer
        self.flush_seconds = flush_seconds
        self._lines: list[bytes] = []

    def write(self, **fields) -> None:
        if self.enabled:
            fields["time"] = round(time.time(), 3)
            self._lines.append(orjson.dumps(fields))

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.stream.write(b"\n".join(lines) + b"\n")
            self.stream.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            try:
                self.flush()
            except OSError:
                self._lines.clear()
