"""The official openai client parses the same objects through the edge as from the upstream.

Every request is sent twice with the same arguments: once straight to the mock model
server, once through the edge with a Tollgate key. The mock answers as a pure function of
the request (ids and ``created`` included), so anything the edge adds, drops or rewrites
shows up as a difference in the parsed objects. Each object is compared twice: as
``model_dump()`` (every field) and as ``to_dict()`` (only the fields the answer carried,
so that ``"usage": null`` and an absent ``usage`` are told apart).

The edge routes ``mock-*`` to the mock, so ``GET /v1/models`` lists the upstream's own entries.
"""

import openai
import pytest

from tests.edge.conftest import MockUpstream

pytestmark = pytest.mark.django_db

CHAT_MODEL = "mock-model"
EMBED_MODEL = "mock-embed"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": 'name three "primary" colours'},
]  # 3 + 4 prompt words
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather at a place.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
USAGE = {"include_usage": True}


def chat(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, **kwargs)


def complete(client: openai.OpenAI, **kwargs):
    return client.completions.create(model=CHAT_MODEL, **kwargs)


def embed(client: openai.OpenAI, **kwargs):
    return client.embeddings.create(model=EMBED_MODEL, input=["one two", "three"], **kwargs)


def chat_stream_final(client: openai.OpenAI, **kwargs):
    """Return the message that the SDK's stream helper assembles from the deltas."""
    with client.chat.completions.stream(model=CHAT_MODEL, messages=MESSAGES, **kwargs) as stream:
        return stream.get_final_completion()


# (request, arguments, (input, output) tokens the edge meters). The prompt is 7 words and
# the mock answers 16 words per choice unless max_tokens says fewer; a tool call's arguments
# carry the answer, counted once per call.
CASES = {
    "chat": (chat, {}, (7, 16)),
    "chat, max_tokens": (chat, {"max_tokens": 3}, (7, 3)),
    "chat, streamed": (chat, {"stream": True}, (7, 16)),
    "chat, streamed with usage": (chat, {"stream": True, "stream_options": USAGE}, (7, 16)),
    "chat, tools": (chat, {"tools": [WEATHER, TIME]}, (7, 32)),
    "chat, tool_choice": (
        chat,
        {"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        (7, 16),
    ),
    "chat, tools streamed": (chat, {"tools": [WEATHER, TIME], "stream": True, "max_tokens": 5}, (7, 10)),
    "chat, tools streamed and assembled": (
        chat_stream_final,
        {"tools": [WEATHER], "extra_headers": {"x-mock-words": "4"}},  # the helper refuses "length"
        (7, 4),
    ),
    "chat, n=3": (chat, {"n": 3, "max_tokens": 5}, (7, 15)),
    "chat, n=2 streamed": (chat, {"n": 2, "max_tokens": 4, "stream": True}, (7, 8)),
    "chat, n=2 tools streamed with usage": (
        chat,
        {"n": 2, "tools": [WEATHER], "max_tokens": 3, "stream": True, "stream_options": USAGE},
        (7, 6),
    ),
    "completion": (complete, {"prompt": "tell me more", "max_tokens": 4}, (3, 4)),
    "completion, prompt list, n=2": (complete, {"prompt": ["first one", "then the second"], "n": 2}, (5, 32)),
    "completion, streamed": (complete, {"prompt": "tell me more", "stream": True, "max_tokens": 5}, (3, 5)),
    "completion, streamed with usage": (
        complete,
        {"prompt": ["a b", "c d e"], "stream": True, "stream_options": USAGE},
        (5, 16),
    ),
    "embeddings, float": (embed, {"encoding_format": "float"}, (3, 0)),
    "embeddings, base64": (embed, {"encoding_format": "base64"}, (3, 0)),
    "embeddings, SDK default (base64, decoded)": (embed, {"dimensions": 12}, (3, 0)),
}


@pytest.fixture(scope="module")
def upstream():
    upstream = MockUpstream("--models", f"{CHAT_MODEL},{EMBED_MODEL}")
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def compat_edge(start_module_edge, upstream):
    return start_module_edge([{"model": "mock-*", "upstreams": [{"url": upstream.url}]}])


@pytest.fixture
def direct(upstream):
    with openai.OpenAI(base_url=f"{upstream.url}/v1", api_key="sk-direct", max_retries=0) as client:
        yield client


@pytest.fixture
def via_edge(compat_edge, make_key):
    _, secret = make_key()
    with openai.OpenAI(base_url=f"{compat_edge.url}/v1", api_key=secret, max_retries=0) as client:
        yield client


def parsed(result) -> tuple[list[dict], list[dict]]:
    """Return what the SDK parsed, as ``model_dump()`` and as ``to_dict()``: the one object, or
    every chunk of a stream in order."""
    objects = list(result) if isinstance(result, openai.Stream) else [result]
    # warnings=False: a base64 embedding is a string where the model declares floats.
    return [obj.model_dump(warnings=False) for obj in objects], [
        obj.to_dict(warnings=False) for obj in objects
    ]


def tokens(event: dict) -> tuple[int, int]:
    return event["input_tokens"], event["output_tokens"]


@pytest.mark.parametrize("case", CASES)
def test_the_sdk_parses_the_same_objects_through_the_edge(case, direct, via_edge, usage_events):
    request, arguments, metered = CASES[case]

    expected = parsed(request(direct, **arguments))
    got = parsed(request(via_edge, **arguments))

    assert got[0] == expected[0]
    assert got[1] == expected[1]
    [event] = usage_events(1)
    assert tokens(event) == metered
    assert event["estimated"] is False


def test_the_sdk_answers_differ_between_cases(direct):
    """Each case asks the mock something different: the comparison above is not vacuous."""
    answers = [parsed(request(direct, **arguments))[1] for request, arguments, _ in CASES.values()]

    assert len({repr(answer) for answer in answers}) == len(CASES)


def test_models_list_is_the_upstreams_through_the_edge(direct, via_edge):
    """The edge sorts the list by id: the entries are compared sorted by id."""
    expected = sorted(direct.models.list(), key=lambda model: model.id)
    got = sorted(via_edge.models.list(), key=lambda model: model.id)

    assert [model.id for model in got] == [EMBED_MODEL, CHAT_MODEL]
    assert [model.to_dict() for model in got] == [model.to_dict() for model in expected]
