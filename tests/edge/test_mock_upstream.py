"""The mock model server, driven by the official openai client over real HTTP."""

import base64
import json
import struct
import time

import httpx
import openai
import pytest

from edge.mock_upstream import LOREM
from tests.edge.conftest import MockUpstream


@pytest.fixture
def base(mock_upstream):
    mock_upstream.reset()
    return mock_upstream.url


@pytest.fixture
def client(base):
    with openai.OpenAI(base_url=f"{base}/v1", api_key="sk-anything", max_retries=0) as client:
        yield client


def usage_dict(usage) -> dict:
    return usage.model_dump(exclude_none=True)


def expected_usage(prompt: int, completion: int, cached: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": [{"type": "text", "text": "alpha beta"}, {"type": "text", "text": "gamma"}]},
    {"role": "assistant", "content": "ok then"},
    {"role": "user", "content": "one two three"},
]  # 3 + 3 + 2 + 3 = 11 prompt words


def test_chat_completion_echoes_the_last_user_message_and_counts_words(client):
    completion = client.chat.completions.create(model="mock-model", messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.model == "mock-model"
    assert completion.created == 1735689600
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == " ".join(["one", "two", "three"] * 5 + ["one"])
    assert completion.choices[0].finish_reason == "stop"
    assert usage_dict(completion.usage) == expected_usage(11, 16)


def test_chat_completion_stops_at_max_tokens_with_finish_reason_length(client):
    completion = client.chat.completions.create(model="mock-model", messages=MESSAGES, max_tokens=4)

    assert completion.choices[0].message.content == "one two three one"
    assert completion.choices[0].finish_reason == "length"
    assert usage_dict(completion.usage) == expected_usage(11, 4)


def test_max_completion_tokens_counts_like_max_tokens(client):
    completion = client.chat.completions.create(
        model="mock-model", messages=[{"role": "user", "content": "x"}], max_completion_tokens=2
    )

    assert completion.choices[0].message.content == "x x"
    assert usage_dict(completion.usage) == expected_usage(1, 2)


def test_word_count_and_cached_tokens_come_from_headers(client):
    completion = client.chat.completions.create(
        model="mock-model",
        messages=[{"role": "user", "content": "   "}],
        extra_headers={"x-mock-words": "3", "x-mock-cached-tokens": "7"},
    )

    assert completion.choices[0].message.content == " ".join(LOREM[:3])
    assert usage_dict(completion.usage) == expected_usage(0, 3, cached=7)


def test_equal_requests_get_equal_bodies(base):
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "same"}]}
    first = httpx.post(f"{base}/v1/chat/completions", json=body)
    second = httpx.post(f"{base}/v1/chat/completions", json=body)

    assert first.status_code == 200
    assert first.content == second.content
    assert first.headers["content-type"] == "application/json"


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="mock-model",
            messages=MESSAGES,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    content_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert len(content_chunks) == 5
    assert [c.choices[0].delta.content for c in content_chunks] == ["one", " two", " three", " one", " two"]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in content_chunks] == [None, None, None, None, "length"]
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in content_chunks)
    assert len({c.id for c in chunks}) == 1
    assert usage_chunk.choices == []
    assert usage_dict(usage_chunk.usage) == expected_usage(11, 5)


def test_chat_stream_without_include_usage_reports_no_usage(base):
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json={
            "model": "m",
            "messages": [{"role": "user", "content": "a b"}],
            "max_tokens": 2,
            "stream": True,
        },
    ) as response:
        events = response.read().decode().split("\n\n")

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "a"},
        {"content": " b"},
    ]
    assert all("usage" not in c for c in chunks)


def test_stream_usage_can_ride_on_the_last_content_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model="mock-model",
            messages=[{"role": "user", "content": "a b c"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-usage-in-last-content-chunk": "1"},
        )
    )

    assert len(chunks) == 3
    assert chunks[-1].choices[0].delta.content == " c"
    assert chunks[-1].choices[0].finish_reason == "length"
    assert usage_dict(chunks[-1].usage) == expected_usage(3, 3)
    assert chunks[0].usage is None


def test_usage_none_header_omits_usage_in_json_and_streams(client):
    completion = client.chat.completions.create(
        model="mock-model", messages=MESSAGES, extra_headers={"x-mock-usage": "none"}
    )
    chunks = list(
        client.chat.completions.create(
            model="mock-model",
            messages=MESSAGES,
            max_tokens=2,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-usage": "none"},
        )
    )

    assert completion.usage is None
    assert len(chunks) == 2
    assert all(c.usage is None and len(c.choices) == 1 for c in chunks)


def test_completions_json_and_stream(client):
    completion = client.completions.create(model="mock-model", prompt="tell me more", max_tokens=4)
    chunks = list(
        client.completions.create(
            model="mock-model",
            prompt=["first prompt", "second one here"],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-mock-words": "3"},
        )
    )

    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.choices[0].text == "tell me more tell"
    assert completion.choices[0].finish_reason == "length"
    assert usage_dict(completion.usage) == expected_usage(3, 4)
    assert [c.choices[0].text for c in chunks[:-1]] == ["second", " one", " here"]
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None, None, "stop"]
    assert chunks[-1].choices == []
    assert usage_dict(chunks[-1].usage) == expected_usage(5, 3)


ECHO = {
    "type": "function",
    "function": {
        "name": "echo",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}
NOOP = {"type": "function", "function": {"name": "noop"}}


def test_tools_answer_with_a_call_of_each_function_carrying_the_reply(client):
    completion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": 'say "hi"'}], tools=[ECHO, NOOP], max_tokens=3
    )
    named = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": 'say "hi"'}],
        tools=[ECHO, NOOP],
        tool_choice={"type": "function", "function": {"name": "noop"}},
    )
    refused = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a"}], tools=[ECHO], tool_choice="none", max_tokens=1
    )

    [choice] = completion.choices
    assert choice.message.content is None
    assert choice.finish_reason == "length"
    assert [(c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("function", "echo", '{"text":"say \\"hi\\" say"}'),
        ("function", "noop", '{"input":"say \\"hi\\" say"}'),
    ]
    assert all(c.id.startswith("call_") for c in choice.message.tool_calls)
    assert len({c.id for c in choice.message.tool_calls}) == 2
    assert usage_dict(completion.usage) == expected_usage(2, 6)  # 3 words, once per call
    assert named.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["noop"]
    assert refused.choices[0].message.tool_calls is None
    assert refused.choices[0].message.content == "a"


def test_streamed_tool_calls_join_into_the_calls_of_the_json_answer(client):
    request = {
        "model": "m",
        "messages": [{"role": "user", "content": "x y"}],
        "tools": [ECHO, NOOP],
        "max_tokens": 2,
    }
    calls = client.chat.completions.create(**request).choices[0].message.tool_calls
    chunks = list(client.chat.completions.create(**request, stream=True))

    deltas = [chunk.choices[0].delta for chunk in chunks]
    assert deltas[0].role == "assistant"
    assert [[(c.index, c.type, c.function.name) for c in d.tool_calls] for d in deltas] == [
        [(0, "function", "echo")],
        [(0, None, None)],
        [(1, "function", "noop")],
        [(1, None, None)],
    ]
    ids = [d.tool_calls[0].id for d in deltas]
    assert ids[0].startswith("call_") and ids[2].startswith("call_") and ids[0] != ids[2]
    assert ids[1] is ids[3] is None
    joined = ["", ""]
    for delta in deltas:
        joined[delta.tool_calls[0].index] += delta.tool_calls[0].function.arguments
    assert joined == [call.function.arguments for call in calls] == ['{"text":"x y"}', '{"input":"x y"}']
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None, None, None, "length"]


def test_n_answers_n_choices_each_starting_a_word_further(client):
    completion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "a b c"}], n=3, max_tokens=2
    )
    chunks = list(client.completions.create(model="m", prompt="a b c", n=2, max_tokens=2, stream=True))

    assert [(c.index, c.message.content) for c in completion.choices] == [(0, "a b"), (1, "b c"), (2, "c a")]
    assert usage_dict(completion.usage) == expected_usage(3, 6)
    assert [(c.choices[0].index, c.choices[0].text, c.choices[0].finish_reason) for c in chunks] == [
        (0, "a", None),
        (1, "b", None),
        (0, " b", "length"),
        (1, " c", "length"),
    ]


def test_ids_do_not_depend_on_stream_options_or_key_order(base):
    plain = {"model": "m", "messages": [{"role": "user", "content": "a"}], "stream": True}
    asked = {"stream_options": {"include_usage": True}, **plain}

    def ids(body) -> set[str]:
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: {")]
        return {json.loads(line.removeprefix("data: "))["id"] for line in lines}

    assert len(ids(plain)) == 1
    assert ids(plain) == ids(asked)


def test_completion_token_array_prompt_counts_its_items(client):
    completion = client.completions.create(model="mock-model", prompt=[[1, 2, 3], [4]], max_tokens=1)

    assert usage_dict(completion.usage) == expected_usage(4, 1)
    assert completion.choices[0].text == LOREM[0]


def test_embeddings_are_deterministic_and_equal_in_float_and_base64(client, base):
    default = client.embeddings.create(model="embed", input=["one two", "three"])
    as_float = client.embeddings.create(model="embed", input=["one two", "three"], encoding_format="float")
    wider = client.embeddings.create(model="embed", input="one two", dimensions=12, encoding_format="float")
    raw = httpx.post(
        f"{base}/v1/embeddings", json={"model": "embed", "input": "three", "encoding_format": "base64"}
    ).json()

    assert [d.index for d in default.data] == [0, 1]
    assert [len(d.embedding) for d in default.data] == [8, 8]
    assert [d.embedding for d in default.data] == [d.embedding for d in as_float.data]
    assert default.data[0].embedding != default.data[1].embedding
    assert all(-1 <= value < 1 for d in default.data for value in d.embedding)
    assert wider.data[0].embedding[:8] == as_float.data[0].embedding
    assert len(wider.data[0].embedding) == 12
    assert (
        list(struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"])))
        == as_float.data[1].embedding
    )
    assert default.usage.prompt_tokens == 3
    assert default.usage.total_tokens == 3
    assert default.model == "embed"


def test_models_lists_the_configured_models(client):
    models = client.models.list()

    assert [(m.id, m.object, m.owned_by) for m in models.data] == [("mock-model", "model", "tollgate-mock")]


@pytest.mark.parametrize(
    ("status", "error_class", "kind", "code"),
    [
        (400, openai.BadRequestError, "invalid_request_error", None),
        (429, openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (502, openai.InternalServerError, "server_error", "bad_gateway"),
        (503, openai.InternalServerError, "server_error", "service_unavailable"),
    ],
)
def test_status_header_answers_an_openai_error(client, status, error_class, kind, code):
    with pytest.raises(error_class) as raised:
        client.chat.completions.create(
            model="mock-model", messages=MESSAGES, extra_headers={"x-mock-status": str(status)}
        )

    assert raised.value.status_code == status
    assert raised.value.body == {
        "message": f"The mock upstream answered {status} as asked by x-mock-status.",
        "type": kind,
        "param": None,
        "code": code,
    }
    assert raised.value.response.headers.get("retry-after") == ("1" if status in (429, 503) else None)


def test_bad_requests_are_refused_in_openai_error_shape(base):
    not_json = httpx.post(f"{base}/v1/chat/completions", content=b"{nope")
    no_messages = httpx.post(f"{base}/v1/chat/completions", json={"model": "m"})
    unknown = httpx.get(f"{base}/v1/nothing")
    wrong_method = httpx.get(f"{base}/v1/chat/completions")

    assert not_json.status_code == 400
    assert not_json.json() == {
        "error": {
            "message": "We could not parse the JSON body of your request.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {
        "message": "Unknown request URL: GET /v1/nothing",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }
    assert wrong_method.status_code == 405


def test_latency_header_delays_the_answer(client):
    started = time.monotonic()
    client.models.list(extra_headers={"x-mock-latency-ms": "300"})

    assert time.monotonic() - started >= 0.3


def test_chunk_delay_header_spaces_the_stream(client):
    started = time.monotonic()
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "a"}],
            max_tokens=4,
            stream=True,
            extra_headers={"x-mock-chunk-delay-ms": "100"},
        )
    )

    assert len(chunks) == 4
    assert time.monotonic() - started >= 0.3


def test_stats_count_requests_by_path_and_reset_clears_them(client, base):
    client.models.list()
    client.chat.completions.create(model="m", messages=MESSAGES)
    client.chat.completions.create(model="m", messages=MESSAGES)
    httpx.get(f"{base}/healthz")

    assert httpx.get(f"{base}/mock/stats").json() == {
        "requests": 4,
        "by_path": {"/v1/models": 1, "/v1/chat/completions": 2, "/healthz": 1},
        "streams_cancelled": 0,
    }
    assert httpx.post(f"{base}/mock/reset").json() == {"requests": 0, "by_path": {}, "streams_cancelled": 0}
    assert httpx.get(f"{base}/mock/last").status_code == 404


def test_last_records_the_forwarded_headers_and_body(base):
    httpx.post(
        f"{base}/v1/chat/completions?trace=1",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer sk-upstream", "X-Request-ID": "req-1", "x-multi": "a"},
    )
    httpx.get(f"{base}/healthz")

    last = httpx.get(f"{base}/mock/last").json()

    assert last["method"] == "POST"
    assert last["path"] == "/v1/chat/completions"
    assert last["query"] == "trace=1"
    assert last["headers"]["authorization"] == "Bearer sk-upstream"
    assert last["headers"]["x-request-id"] == "req-1"
    assert last["body"] == {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_a_client_leaving_mid_stream_stops_the_stream(base):
    body = {"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 50, "stream": True}
    with httpx.stream(
        "POST", f"{base}/v1/chat/completions", json=body, headers={"x-mock-chunk-delay-ms": "50"}
    ) as response:
        first = next(response.iter_lines())
    assert first.startswith("data: ")

    deadline = time.monotonic() + 5
    while httpx.get(f"{base}/mock/stats").json()["streams_cancelled"] != 1:
        assert time.monotonic() < deadline, "the stream was not stopped"
        time.sleep(0.05)


def test_api_key_option_requires_the_bearer_key():
    upstream = MockUpstream("--api-key", "sk-upstream", "--models", "a,b")
    try:
        with openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-wrong", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError) as raised:
                wrong.models.list()
        with openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-upstream", max_retries=0) as right:
            models = right.models.list()
    finally:
        upstream.stop()

    assert raised.value.body == {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert [m.id for m in models.data] == ["a", "b"]
