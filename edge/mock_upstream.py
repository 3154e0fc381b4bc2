"""A deterministic OpenAI-compatible model server for the demo, the tests and the benchmarks.

Run it with ``python -m edge.mock_upstream --host 127.0.0.1 --port 9001``. It is plain ASGI
under uvicorn (uvloop + httptools) so that it is never the bottleneck of a benchmark.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both streaming and not),
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /healthz``; for tests ``GET /mock/stats``,
``POST /mock/reset`` and ``GET /mock/last`` (the last ``/v1`` request's method, path, headers
and body). Counters and the last request live in the worker process: read them with one worker.

Every answer is a pure function of the request, so two equal requests get equal bodies
(``created`` is a fixed timestamp and ids are hashes of the request's fields other than
``stream_options``, which a proxy may add; tool call ids are hashes of the answer's id):

- ``prompt_tokens`` is the number of whitespace-separated words in every message's text
  content (string content, or the ``text`` of ``text`` parts), or in the prompt / the
  embeddings input (a string counts its words, a token array counts its items).
- The reply is the words of the last user message (or of the prompt), repeated to length;
  a fixed lorem ipsum when there are none. Its length is ``min(max_tokens, words)`` where
  ``words`` is ``x-mock-words`` or ``--words`` (16); ``completion_tokens`` is that length and
  ``finish_reason`` is ``length`` when ``max_tokens`` (or ``max_completion_tokens``) cut it.
- ``n`` choices (1), indexed from 0; choice ``i`` starts ``i`` words further into the source.
- With ``tools`` (and ``tool_choice`` not ``none``) every chat choice is a ``tool_calls`` message
  calling each function (or the one ``tool_choice`` names) with ``{"<first parameter>": reply}``
  as arguments; ``finish_reason`` is ``tool_calls`` (or ``length``) and ``completion_tokens``
  counts the reply's words once per call.
- ``completion_tokens`` sums every choice's words.
- ``usage.prompt_tokens_details.cached_tokens`` is the ``x-mock-cached-tokens`` header (0).
- Embeddings are ``dimensions`` (8) float32-exact values in [-1, 1) from SHAKE-256 of the input.

Streams are OpenAI's SSE: one word per ``chat.completion.chunk`` (or ``text_completion``),
the role on the first chunk, ``finish_reason`` on the last content chunk, then ``data: [DONE]``.
A tool call streams its id and name with the first word of its arguments, then a word per
chunk. With ``n`` > 1 each chunk carries one choice, the choices taking turns.
With ``stream_options.include_usage`` every chunk carries ``"usage": null`` and a last chunk
with ``"choices": []`` carries the usage.

Request headers that steer an answer:

- ``x-mock-latency-ms``: wait before answering (default ``--latency-ms``).
- ``x-mock-status``: answer with this status and an OpenAI error body.
- ``x-mock-usage: none``: report no usage at all, streaming or not.
- ``x-mock-usage-in-last-content-chunk: 1``: put the usage on the last chunk that still has
  choices, whether or not it was asked for, as vLLM can; no separate usage chunk.
- ``x-mock-chunk-delay-ms``: wait between stream chunks (default ``--stream-chunk-delay-ms``).
- ``x-mock-words``: number of words to answer.
- ``x-mock-cached-tokens``: cached prompt tokens to report.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass

CREATED = 1735689600  # 2025-01-01T00:00:00Z: fixed so that equal requests get equal bodies.
LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua"
).split()
EMBEDDING_DIMENSIONS = 8
CONFIG_ENV = "TG_MOCK_UPSTREAM_CONFIG"

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
DONE = b"data: [DONE]\n\n"

# OpenAI's error "type" and "code" for the statuses a model server answers with.
ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("timeout", None),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


@dataclass(frozen=True)
class MockConfig:
    """Defaults that a request's ``x-mock-*`` headers override."""

    latency_ms: float = 0.0
    stream_chunk_delay_ms: float = 0.0
    words: int = 16
    models: tuple[str, ...] = ("mock-model",)
    api_key: str | None = None


class MockError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    kind, code = ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return _dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def _dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _words(text) -> list[str]:
    return text.split() if isinstance(text, str) else []


def _content_text(content) -> str:
    """Return the text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _prompt_items(value, field: str) -> list:
    """Split a completions prompt or an embeddings input into strings and token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return value
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return [value]
        if all(isinstance(item, list) and all(isinstance(t, int) for t in item) for item in value):
            return value
    raise MockError(400, f"'{field}' must be a string, a list of strings or a list of token arrays", field)


def _item_tokens(item) -> int:
    return len(item.split()) if isinstance(item, str) else len(item)


def _int_header(headers: dict[bytes, bytes], name: bytes, default):
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise MockError(400, f"header {name.decode()} must be an integer")


def _float_header(headers: dict[bytes, bytes], name: bytes, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise MockError(400, f"header {name.decode()} must be a number")


def _reply_length(body: dict, headers: dict[bytes, bytes], config: MockConfig) -> tuple[int, str]:
    """Return the number of words to answer and the finish reason."""
    words = _int_header(headers, b"x-mock-words", config.words)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is None:
        return words, "stop"
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise MockError(400, "max_tokens must be a non-negative integer", "max_tokens")
    return (limit, "length") if limit < words else (words, "stop")


def _reply_words(source: list[str], count: int, start: int = 0) -> list[str]:
    """Return ``count`` words of ``source`` (or lorem ipsum), round and round from ``start``."""
    source = source or LOREM
    return [source[(start + i) % len(source)] for i in range(count)]


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _embedding(item, dimensions: int) -> list[float]:
    """Derive a vector from the input; each value is exactly representable as float32."""
    key = item.encode() if isinstance(item, str) else _dumps(item)
    raw = hashlib.shake_256(key).digest(4 * dimensions)
    return [((n >> 8) - (1 << 23)) / (1 << 23) for n in struct.unpack(f"<{dimensions}I", raw)]


class Generation:
    """What a chat or completions request asks for, parsed once."""

    __slots__ = (
        "cached_tokens",
        "chat",
        "finish_reason",
        "id",
        "model",
        "n",
        "prompt_tokens",
        "tools",
        "words",
    )

    def __init__(self, *, chat: bool, body: dict, headers: dict[bytes, bytes], config: MockConfig):
        self.chat = chat
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise MockError(400, "you must provide a model parameter", "model")
        self.model = model
        self.tools: list[tuple[str, str]] = []
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise MockError(400, "'messages' must be a non-empty list", "messages")
            texts = [_content_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]
            self.prompt_tokens = sum(len(text.split()) for text in texts)
            users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
            source = texts[users[-1]].split() if users else []
            self.tools = _called_tools(body)
        else:
            if "prompt" not in body:
                raise MockError(400, "you must provide a prompt parameter", "prompt")
            items = _prompt_items(body["prompt"], "prompt")
            self.prompt_tokens = sum(_item_tokens(item) for item in items)
            source = _words(items[-1])
        self.n = body.get("n") or 1
        if not isinstance(self.n, int) or isinstance(self.n, bool) or not 1 <= self.n <= 128:
            raise MockError(400, "n must be an integer between 1 and 128", "n")
        count, self.finish_reason = _reply_length(body, headers, config)
        if self.tools and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"
        self.words = [_reply_words(source, count, choice) for choice in range(self.n)]
        self.cached_tokens = _int_header(headers, b"x-mock-cached-tokens", 0)
        prefix = "chatcmpl-" if chat else "cmpl-"
        self.id = prefix + _digest(_request_key(body))

    def usage(self) -> dict:
        calls = max(len(self.tools), 1)
        return _usage(self.prompt_tokens, calls * sum(map(len, self.words)), self.cached_tokens)

    def envelope(self, choices: list) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": CREATED,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        }

    def completion(self, with_usage: bool) -> dict:
        choices = []
        for index, words in enumerate(self.words):
            text = " ".join(words)
            if not self.chat:
                choices.append(
                    {"text": text, "index": index, "logprobs": None, "finish_reason": self.finish_reason}
                )
                continue
            message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
            if self.tools:
                message["content"] = None
                message["tool_calls"] = [
                    {
                        "id": self.call_id(index, call),
                        "type": "function",
                        "function": {"name": name, "arguments": _dumps({field: text}).decode()},
                    }
                    for call, (name, field) in enumerate(self.tools)
                ]
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
            )
        answer = {"id": self.id, "object": "chat.completion" if self.chat else "text_completion"}
        answer.update(created=CREATED, model=self.model, choices=choices)
        if with_usage:
            answer["usage"] = self.usage()
        answer["system_fingerprint"] = "fp_mock"
        return answer

    def chunks(self) -> list[dict]:
        """Return the content chunks: one piece of one choice each, the choices interleaved."""
        pieces = [self._pieces(index) for index in range(self.n)]
        return [
            self.envelope([choice_pieces[step]]) for step in range(len(pieces[0])) for choice_pieces in pieces
        ]

    def _pieces(self, index: int) -> list[dict]:
        """Return one choice's stream: a word per chunk (of its text, or of each tool call's
        arguments), the role on the first, the finish reason on the last."""
        texts = [word if i == 0 else " " + word for i, word in enumerate(self.words[index])] or [""]
        if not self.chat:
            pieces = [
                {"text": text, "index": index, "logprobs": None, "finish_reason": None} for text in texts
            ]
        else:
            if self.tools:
                deltas = [
                    delta
                    for call in range(len(self.tools))
                    for delta in self._call_deltas(index, call, texts)
                ]
            else:
                deltas = [{"content": text} for text in texts]
            deltas[0] = {"role": "assistant", "content": None, **deltas[0]}
            pieces = [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": None} for delta in deltas
            ]
        pieces[-1]["finish_reason"] = self.finish_reason
        return pieces

    def _call_deltas(self, index: int, call: int, texts: list[str]) -> list[dict]:
        """Return the deltas of one tool call: its id and name first, then its arguments a word
        at a time; joined, the arguments are those of the non-streamed answer."""
        name, field = self.tools[call]
        head, tail = _dumps({field: ""}).decode().split('""')
        parts = [_dumps(text).decode()[1:-1] for text in texts]
        parts[0] = head + '"' + parts[0]
        parts[-1] += '"' + tail
        first = {"index": call, "id": self.call_id(index, call), "type": "function"}
        first["function"] = {"name": name, "arguments": parts[0]}
        return [{"tool_calls": [first]}] + [
            {"tool_calls": [{"index": call, "function": {"arguments": part}}]} for part in parts[1:]
        ]

    def call_id(self, choice: int, call: int) -> str:
        return "call_" + _digest(f"{self.id}/{choice}/{call}".encode())


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _request_key(body: dict) -> bytes:
    """Return what identifies a request: its fields, in key order, without ``stream_options``
    (a proxy may ask for usage on its client's behalf; the answer is the same one)."""
    fields = {name: value for name, value in body.items() if name != "stream_options"}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _called_tools(body: dict) -> list[tuple[str, str]]:
    """Return (name, argument) of each function to call: the one ``tool_choice`` names, else
    every function in ``tools``; none when ``tool_choice`` is ``none``. The argument is the
    first property of the function's parameters (``input`` when it has none)."""
    tools = body.get("tools")
    if not tools or body.get("tool_choice") == "none":
        return []
    if not isinstance(tools, list):
        raise MockError(400, "'tools' must be a list", "tools")
    functions = {}
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise MockError(400, "every tool must be a function with a name", "tools")
        properties = (function.get("parameters") or {}).get("properties") or {}
        functions[function["name"]] = next(iter(properties), "input")
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name not in functions:
            raise MockError(400, f"tool_choice names an unknown function: {name}", "tool_choice")
        return [(name, functions[name])]
    return list(functions.items())


class MockUpstream:
    """The ASGI application."""

    def __init__(self, config: MockConfig):
        self.config = config
        self.models_body = _dumps(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": CREATED, "owned_by": "tollgate-mock"}
                    for model in config.models
                ],
            }
        )
        self.expected_authorization = (
            f"Bearer {config.api_key}".encode() if config.api_key is not None else None
        )
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.streams_cancelled = 0
        self.last: tuple[str, str, bytes, list, bytes] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope, receive, send):
        path = scope["path"]
        method = scope["method"]
        raw = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        raw = bytes(raw)

        if path.startswith("/mock/"):
            await self.control(method, path, send)
            return
        self.requests += 1
        self.by_path[path] += 1
        if path == "/healthz":
            await respond(send, 200, b'{"status":"ok"}')
            return
        if path.startswith("/v1/"):
            self.last = (method, path, scope.get("query_string", b""), scope["headers"], raw)
        headers = {name: value for name, value in scope["headers"] if name.startswith(b"x-mock-")}
        try:
            await self.v1(method, path, scope["headers"], headers, raw, receive, send)
        except MockError as error:
            await respond(send, error.status, error_body(error.status, error.message, error.param))

    async def v1(self, method, path, all_headers, headers, raw, receive, send):
        handler = ROUTES.get(path)
        if handler is None:
            raise MockError(404, f"Unknown request URL: {method} {path}")
        if method != handler[0]:
            raise MockError(405, f"Method {method} is not allowed on {path}")
        latency = _float_header(headers, b"x-mock-latency-ms", self.config.latency_ms)
        if latency > 0:
            await asyncio.sleep(latency / 1000)
        if self.expected_authorization is not None:
            authorization = next((v for n, v in all_headers if n == b"authorization"), None)
            if authorization != self.expected_authorization:
                raise MockError(401, "Incorrect API key provided.")
        status = _int_header(headers, b"x-mock-status", None)
        if status is not None:
            extra = [(b"retry-after", b"1")] if status in (429, 503) else []
            message = f"The mock upstream answered {status} as asked by x-mock-status."
            await respond(send, status, error_body(status, message), extra)
            return
        body = None
        if method == "POST":
            try:
                body = json.loads(raw)
            except ValueError:
                raise MockError(400, "We could not parse the JSON body of your request.")
            if not isinstance(body, dict):
                raise MockError(400, "The request body must be a JSON object.")
        await handler[1](self, body, headers, receive, send)

    async def models(self, body, headers, receive, send):
        await respond(send, 200, self.models_body)

    async def chat_completions(self, body, headers, receive, send):
        await self.generate(
            Generation(chat=True, body=body, headers=headers, config=self.config),
            body,
            headers,
            receive,
            send,
        )

    async def completions(self, body, headers, receive, send):
        await self.generate(
            Generation(chat=False, body=body, headers=headers, config=self.config),
            body,
            headers,
            receive,
            send,
        )

    async def generate(self, generation: Generation, body, headers, receive, send):
        with_usage = headers.get(b"x-mock-usage") != b"none"
        if not body.get("stream"):
            await respond(send, 200, _dumps(generation.completion(with_usage)))
            return
        options = body.get("stream_options") or {}
        in_last_chunk = with_usage and headers.get(b"x-mock-usage-in-last-content-chunk") == b"1"
        usage_chunk = with_usage and not in_last_chunk and options.get("include_usage") is True
        delay = _float_header(headers, b"x-mock-chunk-delay-ms", self.config.stream_chunk_delay_ms) / 1000
        await self.stream(generation, usage_chunk, in_last_chunk, delay, receive, send)

    async def stream(self, generation: Generation, usage_chunk, in_last_chunk, delay, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        # uvicorn drops writes to a closed connection silently; watching receive() is how a
        # stream learns that its client went away, so that it stops producing.
        gone = asyncio.ensure_future(receive())
        try:
            chunks = generation.chunks()
            for index, chunk in enumerate(chunks):
                if index and delay > 0:
                    await asyncio.wait((gone,), timeout=delay)
                if gone.done():
                    self.streams_cancelled += 1
                    return
                if usage_chunk:
                    chunk["usage"] = None
                if in_last_chunk and index == len(chunks) - 1:
                    chunk["usage"] = generation.usage()
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + _dumps(chunk) + b"\n\n",
                        "more_body": True,
                    }
                )
            if usage_chunk:
                final = generation.envelope([])
                final["usage"] = generation.usage()
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"data: " + _dumps(final) + b"\n\n",
                        "more_body": True,
                    }
                )
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
        finally:
            gone.cancel()

    async def embeddings(self, body, headers, receive, send):
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise MockError(400, "you must provide a model parameter", "model")
        if "input" not in body:
            raise MockError(400, "you must provide an input parameter", "input")
        items = _prompt_items(body["input"], "input")
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= 4096:
            raise MockError(400, "dimensions must be an integer between 1 and 4096", "dimensions")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise MockError(400, "encoding_format must be 'float' or 'base64'", "encoding_format")
        data = []
        for index, item in enumerate(items):
            vector = _embedding(item, dimensions)
            if encoding == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        answer = {"object": "list", "data": data, "model": model}
        if headers.get(b"x-mock-usage") != b"none":
            tokens = sum(_item_tokens(item) for item in items)
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        await respond(send, 200, _dumps(answer))

    async def control(self, method, path, send):
        if method == "GET" and path == "/mock/stats":
            await respond(send, 200, _dumps(self.stats()))
        elif method == "POST" and path == "/mock/reset":
            self.reset()
            await respond(send, 200, _dumps(self.stats()))
        elif method == "GET" and path == "/mock/last":
            if self.last is None:
                await respond(send, 404, error_body(404, "No /v1 request has been received yet."))
                return
            await respond(send, 200, _dumps(self.last_request()))
        else:
            await respond(send, 404, error_body(404, f"Unknown request URL: {method} {path}"))

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "streams_cancelled": self.streams_cancelled,
        }

    def last_request(self) -> dict:
        method, path, query, header_list, raw = self.last
        headers: dict[str, str] = {}
        for name, value in header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        return {
            "method": method,
            "path": path,
            "query": query.decode("latin-1"),
            "headers": headers,
            "body": body,
        }


ROUTES = {
    "/v1/chat/completions": ("POST", MockUpstream.chat_completions),
    "/v1/completions": ("POST", MockUpstream.completions),
    "/v1/embeddings": ("POST", MockUpstream.embeddings),
    "/v1/models": ("GET", MockUpstream.models),
}


async def respond(send, status: int, body: bytes, extra_headers=()) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def app_from_env() -> MockUpstream:
    """Build the application from the JSON configuration that ``main`` put in the environment."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        return MockUpstream(MockConfig())
    values = json.loads(raw)
    values["models"] = tuple(values["models"])
    return MockUpstream(MockConfig(**values))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edge.mock_upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before every answer")
    parser.add_argument("--stream-chunk-delay-ms", type=float, default=0.0, help="wait between stream chunks")
    parser.add_argument("--words", type=int, default=16, help="words per answer unless x-mock-words says")
    parser.add_argument("--models", default="mock-model", help="comma-separated ids listed by /v1/models")
    parser.add_argument("--api-key", default=None, help="when set, require 'Authorization: Bearer <key>'")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    import uvicorn

    args = parse_args(argv)
    config = MockConfig(
        latency_ms=args.latency_ms,
        stream_chunk_delay_ms=args.stream_chunk_delay_ms,
        words=args.words,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        api_key=args.api_key,
    )
    # Workers are separate processes: they rebuild the application from the environment.
    os.environ[CONFIG_ENV] = json.dumps(asdict(config))
    uvicorn.run(
        "edge.mock_upstream:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
