"""One usage event on ``tg:usage`` per request, with the tokens the upstream reported.

The mock counts a prompt's whitespace-separated words and answers with the last user
message's words repeated to length, so every expected figure here is known exactly.
"""

import json
import time
import uuid

import httpx
import pytest

from edge.metering import count_tokens

pytestmark = pytest.mark.django_db

MESSAGES = [
    {"role": "system", "content": "answer in plain words"},
    {"role": "user", "content": "count the cars at the gate"},
]
PROMPT_WORDS = 10
ANSWER = "count the cars at the gate count the cars at the gate count the cars at"  # 16 words


@pytest.fixture(scope="module")
def usage_edge(start_module_edge, mock_upstream):
    return start_module_edge([{"model": "*", "upstreams": [{"url": mock_upstream.url}]}])


@pytest.fixture
def key(make_key):
    return make_key()


@pytest.fixture
def call(usage_edge, key):
    """POST to the edge with the key; return the response."""

    def send(path: str = "chat/completions", *, headers=None, **body) -> httpx.Response:
        body.setdefault("model", "mock-model")
        if path != "embeddings":
            body.setdefault("messages", MESSAGES)
        return httpx.post(
            f"{usage_edge.url}/v1/{path}",
            json=body,
            headers={"authorization": f"Bearer {key[1]}", **(headers or {})},
            timeout=10,
        )

    return send


def stream_text(response: httpx.Response) -> tuple[str, list[dict]]:
    """Return the streamed text and every chunk of an SSE body."""
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    text = "".join(choice["delta"].get("content") or "" for chunk in chunks for choice in chunk["choices"])
    return text, chunks


def tokenizer_prompt_tokens() -> int:
    """The edge's own count of the prompt when the upstream reports none: messages joined by lines."""
    return count_tokens("\n".join(message["content"] for message in MESSAGES))


def tokens(event: dict) -> tuple[int, int, int, bool]:
    return event["input_tokens"], event["output_tokens"], event["cached_tokens"], event["estimated"]


def test_json_answer_gives_one_event_with_the_reported_tokens_and_identities(call, key, usage_events):
    response = call(headers={"x-mock-cached-tokens": "3"})

    assert response.status_code == 200
    [event] = usage_events(1)
    assert tokens(event) == (PROMPT_WORDS, 16, 3, False)
    assert uuid.UUID(event["event_id"]).version == 7
    assert event["key_id"] == key[0].public_id
    assert event["org_id"] == key[0].organization_id
    assert event["model"] == "mock-model"
    assert event["endpoint"] == "chat.completions"
    assert event["stream"] is False
    assert event["status"] == 200
    assert event["request_id"] == response.headers["x-request-id"]
    assert event["started_at_ms"] <= event["ended_at_ms"] <= event["started_at_ms"] + event["latency_ms"] + 2
    assert abs(event["ended_at_ms"] - time.time() * 1000) < 10_000


def test_stream_gives_one_event_with_the_tokens_of_the_dropped_usage_chunk(call, usage_events):
    response = call(stream=True, max_tokens=5, headers={"x-mock-cached-tokens": "2"})

    text, chunks = stream_text(response)
    assert text == "count the cars at the"
    assert all(chunk["choices"] for chunk in chunks)
    [event] = usage_events(1)
    assert tokens(event) == (PROMPT_WORDS, 5, 2, False)
    assert event["stream"] is True
    assert event["status"] == 200


def test_stream_with_usage_on_the_last_content_chunk_is_metered_from_it(call, usage_events):
    response = call(stream=True, headers={"x-mock-usage-in-last-content-chunk": "1"})

    text, chunks = stream_text(response)
    assert text == ANSWER
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in chunks[-1]  # the client did not ask for it: stripped, still metered
    [event] = usage_events(1)
    assert tokens(event) == (PROMPT_WORDS, 16, 0, False)


def test_completion_and_embeddings_events_carry_their_tokens(call, usage_events):
    completion = call("completions", prompt="one two three four", max_tokens=6)
    embeddings = call("embeddings", input=["alpha beta", "gamma"])

    assert (completion.status_code, embeddings.status_code) == (200, 200)
    first, second = usage_events(2)
    assert (first["endpoint"], tokens(first)) == ("completions", (4, 6, 0, False))
    assert (second["endpoint"], tokens(second)) == ("embeddings", (3, 0, 0, False))


def test_missing_usage_is_counted_with_the_tokenizer_and_marked_estimated(call, usage_events):
    plain = call(headers={"x-mock-usage": "none"})
    streamed = call(stream=True, headers={"x-mock-usage": "none"})

    assert "usage" not in plain.json()
    answer = plain.json()["choices"][0]["message"]["content"]
    assert stream_text(streamed)[0] == answer == ANSWER
    prompt = tokenizer_prompt_tokens()
    first, second = usage_events(2)
    assert tokens(first) == (prompt, count_tokens(ANSWER), 0, True)
    assert tokens(second) == (prompt, count_tokens(ANSWER), 0, True)
    assert (first["stream"], second["stream"]) == (False, True)


def test_client_disconnect_mid_stream_cancels_upstream_and_meters_what_was_produced(
    usage_edge, key, mock_upstream, usage_events
):
    mock_upstream.reset()
    headers = {"authorization": f"Bearer {key[1]}", "x-mock-chunk-delay-ms": "100", "x-mock-words": "50"}
    body = {"model": "mock-model", "messages": MESSAGES, "stream": True}

    with httpx.stream(
        "POST", f"{usage_edge.url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        received = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                received.append(line)
            if len(received) == 2:
                break
    closed_at = time.monotonic()

    [event] = usage_events(1)
    assert event["status"] == 499
    assert event["started_at_ms"] <= event["ended_at_ms"] <= event["started_at_ms"] + event["latency_ms"] + 2
    assert event["estimated"] is True
    full = count_tokens(" ".join((MESSAGES[-1]["content"].split() * 9)[:50]))
    assert 0 < event["output_tokens"] < full
    assert event["input_tokens"] == tokenizer_prompt_tokens()
    # The mock notices the closed connection at its next chunk, long before its 5 s answer ends.
    while mock_upstream.stats()["streams_cancelled"] == 0 and time.monotonic() - closed_at < 2:
        time.sleep(0.02)
    assert mock_upstream.stats()["streams_cancelled"] == 1


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "invalid_request_error"), (500, "server_error")], ids=["400", "500"]
)
def test_upstream_error_passes_through_and_gives_one_event_without_tokens(call, usage_events, status, kind):
    response = call(headers={"x-mock-status": str(status)})

    assert response.status_code == status
    assert response.json() == {
        "error": {
            "message": f"The mock upstream answered {status} as asked by x-mock-status.",
            "type": kind,
            "param": None,
            "code": None,
        }
    }
    [event] = usage_events(1)
    assert event["status"] == status
    assert tokens(event) == (0, 0, 0, False)


def test_client_that_gives_up_before_the_first_byte_cancels_the_upstream_request(
    usage_edge, key, usage_events
):
    headers = {"authorization": f"Bearer {key[1]}", "x-mock-latency-ms": "3000"}
    body = {"model": "mock-model", "messages": MESSAGES}

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{usage_edge.url}/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=httpx.Timeout(5, read=0.3),
        )

    # Metered when the client left, not when the upstream would have answered.
    [event] = usage_events(1)
    assert event["status"] == 499
    assert event["ended_at_ms"] - event["started_at_ms"] < 1500
    assert tokens(event) == (tokenizer_prompt_tokens(), 0, 0, True)
