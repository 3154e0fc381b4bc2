"""Usage on the last content chunk of a stream, through a real edge, with the official client.

Some servers put the usage on the last chunk that still has choices instead of a chunk of
its own. When the edge asked for usage on the client's behalf, the client must not see it,
and the edge must still meter it exactly.
"""

import json

import httpx
import openai
import pytest

pytestmark = pytest.mark.django_db

REQUEST = {
    "model": "mock-model",
    "messages": [{"role": "user", "content": "one two three four"}],
    "max_tokens": 3,
    "stream": True,
}
ON_LAST_CHUNK = {"x-mock-usage-in-last-content-chunk": "1", "x-mock-cached-tokens": "2"}


@pytest.fixture(scope="module")
def stream_edge(start_module_edge, mock_upstream):
    return start_module_edge([{"model": "*", "upstreams": [{"url": mock_upstream.url}]}])


@pytest.fixture
def secret(make_key):
    return make_key()[1]


@pytest.fixture
def client(stream_edge, secret):
    return openai.OpenAI(base_url=stream_edge.url + "/v1", api_key=secret, max_retries=0)


def tokens(event: dict) -> tuple[int, int, int, bool]:
    return event["input_tokens"], event["output_tokens"], event["cached_tokens"], event["estimated"]


def sse_chunks(response: httpx.Response) -> list[dict]:
    lines = response.text.splitlines()
    assert lines[-2:] == ["data: [DONE]", ""]
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-2] if line.startswith("data: ")]


def test_usage_on_the_last_content_chunk_is_hidden_from_a_client_that_did_not_ask(client, usage_events):
    chunks = list(client.chat.completions.create(**REQUEST, extra_headers=ON_LAST_CHUNK))

    assert [chunk.choices[0].delta.content for chunk in chunks] == ["one", " two", " three"]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(chunk.usage is None for chunk in chunks)
    [event] = usage_events(1)
    assert tokens(event) == (4, 3, 2, False)
    assert event["stream"] is True


def test_the_stripped_chunk_is_the_upstreams_without_usage(stream_edge, secret, mock_upstream, usage_events):
    headers = {"authorization": f"Bearer {secret}", **ON_LAST_CHUNK}
    through_edge = sse_chunks(
        httpx.post(f"{stream_edge.url}/v1/chat/completions", json=REQUEST, headers=headers)
    )
    # What the edge sends upstream: the client's request, asking for usage.
    asked = {**REQUEST, "stream_options": {"include_usage": True}}
    upstream = sse_chunks(
        httpx.post(f"{mock_upstream.url}/v1/chat/completions", json=asked, headers=ON_LAST_CHUNK)
    )

    assert "usage" in upstream[-1]
    assert all("usage" not in chunk for chunk in through_edge)
    # Same chunks, same fields in the same order, the usage aside; ids hash the raw body.
    assert [[(k, v) for k, v in c.items() if k != "id"] for c in through_edge] == [
        [(k, v) for k, v in c.items() if k not in ("id", "usage")] for c in upstream
    ]
    [event] = usage_events(1)
    assert tokens(event) == (4, 3, 2, False)


def test_usage_on_the_last_content_chunk_reaches_a_client_that_asked(client, usage_events):
    chunks = list(
        client.chat.completions.create(
            **REQUEST, stream_options={"include_usage": True}, extra_headers=ON_LAST_CHUNK
        )
    )

    assert [chunk.choices[0].delta.content for chunk in chunks] == ["one", " two", " three"]
    assert all(chunk.usage is None for chunk in chunks[:-1])
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens) == (
        4,
        3,
        2,
    )
    [event] = usage_events(1)
    assert tokens(event) == (4, 3, 2, False)
