"""The official openai client → a real edge process → the real mock model server.

The mock answers are a pure function of the request except ``id`` (a hash of the raw
body bytes, which differ between two JSON encoders), so bodies are compared without it.
"""

import json
import re

import httpx
import openai
import pytest

pytestmark = pytest.mark.django_db

UPSTREAM_KEY = "upstream-secret-for-mock-model"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
CHAT = {
    "model": "mock-model",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "tell me about toll gates"},
    ],
    "max_tokens": 8,
}
CHAT_ANSWER = "tell me about toll gates tell me about"


@pytest.fixture(scope="module")
def proxy_edge(start_module_edge, mock_upstream):
    return start_module_edge(
        [
            {"model": "mock-model", "upstreams": [{"url": mock_upstream.url, "api_key": UPSTREAM_KEY}]},
            {"model": "mock-large", "upstreams": [mock_upstream.url]},
            {"model": "gpt-*", "upstreams": [mock_upstream.url]},
        ],
        extra_config={"body_limit_bytes": 4096},
    )


@pytest.fixture
def client(proxy_edge, make_key):
    _, secret = make_key()
    return openai.OpenAI(base_url=proxy_edge.url + "/v1", api_key=secret, max_retries=0)


def without_id(body: dict) -> dict:
    return {name: value for name, value in body.items() if name != "id"}


def direct(mock_upstream, path: str, body: dict) -> dict:
    response = httpx.post(f"{mock_upstream.url}/v1/{path}", json=body)
    assert response.status_code == 200
    return response.json()


def sse_objects(lines) -> list:
    """Parse the ``data:`` lines of an SSE stream; ``[DONE]`` stays a string."""
    objects = []
    for line in lines:
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            objects.append(data if data == "[DONE]" else json.loads(data))
    return objects


def test_chat_completion_body_equals_the_upstreams(client, mock_upstream):
    raw = client.chat.completions.with_raw_response.create(**CHAT)

    assert raw.status_code == 200
    body = raw.http_response.json()
    assert without_id(body) == without_id(direct(mock_upstream, "chat/completions", CHAT))
    completion = raw.parse()
    assert completion.choices[0].message.content == CHAT_ANSWER
    assert completion.choices[0].finish_reason == "length"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 8)


def test_chat_stream_deltas_equal_the_plain_answer_and_hide_the_usage_chunk(client, mock_upstream):
    chunks = list(client.chat.completions.create(**CHAT, stream=True))

    assert "".join(chunk.choices[0].delta.content for chunk in chunks) == CHAT_ANSWER
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    # The edge asked the upstream for usage on the client's behalf.
    upstream = mock_upstream.last()
    assert upstream["body"]["stream"] is True
    assert upstream["body"]["stream_options"] == {"include_usage": True}


def test_chat_stream_with_include_usage_ends_with_the_usage_chunk(client, mock_upstream, proxy_edge):
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}

    chunks = list(client.chat.completions.create(**request))

    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 8)
    assert "".join(chunk.choices[0].delta.content for chunk in chunks[:-1]) == CHAT_ANSWER
    assert mock_upstream.last()["body"]["stream_options"] == {"include_usage": True}
    # Chunk by chunk, the edge's stream is the upstream's own.
    headers = {"authorization": f"Bearer {client.api_key}"}
    with httpx.stream("POST", f"{proxy_edge.url}/v1/chat/completions", json=request, headers=headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        through_edge = sse_objects(r.iter_lines())
    with httpx.stream("POST", f"{mock_upstream.url}/v1/chat/completions", json=request) as r:
        upstream = sse_objects(r.iter_lines())
    assert len(through_edge) == 10  # eight words, the usage chunk, [DONE]
    assert through_edge[-1] == "[DONE]"
    assert [without_id(chunk) for chunk in through_edge[:-1]] == [without_id(c) for c in upstream[:-1]]


def test_completion_body_and_stream_equal_the_upstreams(client, mock_upstream):
    request = {"model": "gpt-mini", "prompt": "one two three", "max_tokens": 5}

    raw = client.completions.with_raw_response.create(**request)
    chunks = list(client.completions.create(**request, stream=True))

    assert mock_upstream.last()["body"]["stream_options"] == {"include_usage": True}
    assert raw.status_code == 200
    body = raw.http_response.json()
    assert without_id(body) == without_id(direct(mock_upstream, "completions", request))
    assert body["choices"][0]["text"] == "one two three one two"
    assert "".join(chunk.choices[0].text for chunk in chunks) == "one two three one two"
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


def test_completion_stream_with_include_usage_ends_with_the_usage_chunk(client):
    chunks = list(
        client.completions.create(
            model="gpt-mini",
            prompt="one two three",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 5)
    assert "".join(chunk.choices[0].text for chunk in chunks[:-1]) == "one two three one two"


def test_embeddings_body_equals_the_upstreams(client, mock_upstream):
    raw = client.embeddings.with_raw_response.create(model="mock-model", input=["hello world", "toll gate"])

    assert raw.status_code == 200
    sent = mock_upstream.last()["body"]
    assert sent["model"] == "mock-model"
    assert sent["input"] == ["hello world", "toll gate"]
    assert raw.http_response.json() == direct(mock_upstream, "embeddings", sent)
    floats = direct(mock_upstream, "embeddings", {**sent, "encoding_format": "float"})
    assert [item.embedding for item in raw.parse().data] == [item["embedding"] for item in floats["data"]]
    assert raw.parse().usage.prompt_tokens == 4


def test_x_api_key_header_works_in_place_of_bearer_and_is_not_forwarded(proxy_edge, make_key, mock_upstream):
    _, secret = make_key()

    response = httpx.post(f"{proxy_edge.url}/v1/chat/completions", json=CHAT, headers={"x-api-key": secret})

    assert response.status_code == 200
    headers = mock_upstream.last()["headers"]
    assert "x-api-key" not in headers
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert without_id(response.json()) == without_id(direct(mock_upstream, "chat/completions", CHAT))


def test_models_lists_the_routed_exact_names_the_key_may_use(proxy_edge, make_key):
    keys = {
        "any": make_key()[1],
        "one": make_key(allowed_models=["mock-model", "gpt-*"])[1],
        "glob": make_key(allowed_models=["mock-*"])[1],
    }

    listed = {
        name: [
            model.id for model in openai.OpenAI(base_url=proxy_edge.url + "/v1", api_key=secret).models.list()
        ]
        for name, secret in keys.items()
    }

    assert listed == {
        "any": ["mock-large", "mock-model"],
        "one": ["mock-model"],
        "glob": ["mock-large", "mock-model"],
    }


def test_models_without_a_key_is_refused(proxy_edge):
    response = httpx.get(f"{proxy_edge.url}/v1/models")

    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            "type": "invalid_request_error",
            "param": None,
            "code": "missing_api_key",
        }
    }


def test_hop_by_hop_headers_and_the_clients_key_are_not_forwarded(proxy_edge, make_key, mock_upstream):
    _, secret = make_key()
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    response = httpx.post(
        f"{proxy_edge.url}/v1/chat/completions",
        json=CHAT,
        headers={
            "authorization": f"Bearer {secret}",
            "connection": "keep-alive, x-hop-by-name",
            "x-hop-by-name": "1",
            "keep-alive": "timeout=5",
            "proxy-authorization": "Basic Zm9vOmJhcg==",
            "te": "trailers",
            "trailer": "x-checksum",
            "x-custom": "kept",
            "x-request-id": "req-abc-123",
            "traceparent": trace,
        },
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-abc-123"
    headers = mock_upstream.last()["headers"]
    for name in ("x-hop-by-name", "keep-alive", "proxy-authorization", "te", "trailer", "x-api-key"):
        assert name not in headers
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert headers["x-custom"] == "kept"
    assert headers["x-request-id"] == "req-abc-123"
    assert headers["traceparent"] == trace


def test_route_without_an_upstream_key_sends_no_authorization(proxy_edge, make_key, mock_upstream):
    _, secret = make_key()

    response = httpx.post(
        f"{proxy_edge.url}/v1/chat/completions",
        json={**CHAT, "model": "mock-large"},
        headers={"authorization": f"Bearer {secret}"},
    )

    assert response.status_code == 200
    assert "authorization" not in mock_upstream.last()["headers"]


def test_request_id_and_traceparent_are_created_when_missing(proxy_edge, make_key, mock_upstream):
    _, secret = make_key()

    response = httpx.post(
        f"{proxy_edge.url}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {secret}"}
    )

    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    assert UUID.match(request_id)
    headers = mock_upstream.last()["headers"]
    assert headers["x-request-id"] == request_id
    assert TRACEPARENT.match(headers["traceparent"])


def test_unknown_path_is_404_in_openai_error_shape(proxy_edge):
    response = httpx.get(f"{proxy_edge.url}/v1/assistants")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {
            "message": "Unknown request URL: GET /v1/assistants.",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }


def test_get_on_chat_completions_is_405(proxy_edge, make_key):
    _, secret = make_key()

    response = httpx.get(
        f"{proxy_edge.url}/v1/chat/completions", headers={"authorization": f"Bearer {secret}"}
    )

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {
        "error": {
            "message": "Method GET not allowed on /v1/chat/completions.",
            "type": "invalid_request_error",
            "param": None,
            "code": "method_not_allowed",
        }
    }


def test_body_over_the_limit_is_413(client, mock_upstream):
    mock_upstream.reset()
    long = "word " * 1000

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": long}])

    assert caught.value.status_code == 413
    assert caught.value.body == {
        "message": "The request body exceeds the 4096 byte limit.",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert mock_upstream.stats()["requests"] == 0


def test_invalid_json_is_400(proxy_edge, make_key, mock_upstream):
    _, secret = make_key()
    mock_upstream.reset()

    response = httpx.post(
        f"{proxy_edge.url}/v1/chat/completions",
        content=b'{"model": "mock-model", "messages": [',
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "We could not parse the JSON body of your request.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_json",
        }
    }
    assert mock_upstream.stats()["requests"] == 0


def test_each_request_logs_one_json_line_without_secrets(proxy_edge, make_key):
    """The access log names the request, its key and outcome; never the key itself or the prompt."""
    import json
    import time

    import httpx

    edge = proxy_edge
    _key, secret = make_key()
    prompt = "a very private prompt about payroll"
    response = httpx.post(
        f"{edge.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "log-check-1"},
        json={"model": "mock-model", "messages": [{"role": "user", "content": prompt}]},
    )
    assert response.status_code == 200
    refused = httpx.post(
        f"{edge.url}/v1/chat/completions",
        headers={"Authorization": "Bearer tg_live_short", "X-Request-ID": "log-check-2"},
        json={"model": "mock-model", "messages": []},
    )
    assert refused.status_code == 401
    deadline = time.monotonic() + 5
    lines = []
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in edge.log().splitlines() if line.startswith("{")]
        if {line.get("request_id") for line in lines} >= {"log-check-1", "log-check-2"}:
            break
        time.sleep(0.1)
    served = next(line for line in lines if line.get("request_id") == "log-check-1")
    assert (served["status"], served["model"], served["key_id"], served["path"]) == (
        200,
        "mock-model",
        _key.public_id,
        "/v1/chat/completions",
    )
    failed = next(line for line in lines if line.get("request_id") == "log-check-2")
    assert (failed["status"], failed["error"]) == (401, "invalid_api_key")
    log = edge.log()
    assert secret not in log
    assert prompt not in log
