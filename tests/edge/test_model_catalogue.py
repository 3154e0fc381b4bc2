"""``GET /v1/models``: every model the key may call, glob routes included (their upstreams are
asked and the answer kept), in OpenAI's list shape; an upstream that fails adds nothing."""

import httpx
import openai
import pytest

from edge.mock_upstream import CREATED
from tests.edge.conftest import MockUpstream, free_port

pytestmark = pytest.mark.django_db

UPSTREAM_KEY = "sk-upstream-models"


def listed(edge, secret: str) -> httpx.Response:
    return httpx.get(f"{edge.url}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=15)


def model(name: str, *, created: int = CREATED, owned_by: str = "tollgate-mock") -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


@pytest.fixture(scope="module")
def demo_upstream():
    upstream = MockUpstream("--models", "demo-chat,demo-embed,other-model")
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def open_upstream():
    # demo-legacy is caught by the demo-* route first, whose upstream does not serve it.
    upstream = MockUpstream("--models", "llama-3-8b,demo-legacy,demo-chat")
    yield upstream
    upstream.stop()


@pytest.fixture(scope="module")
def catalogue_edge(start_module_edge, demo_upstream, open_upstream):
    return start_module_edge(
        [
            {"model": "mock-exact", "upstreams": [demo_upstream.url]},
            {"model": "demo-*", "upstreams": [demo_upstream.url]},
            {"model": "*", "upstreams": [open_upstream.url]},
        ]
    )


def test_an_unrestricted_key_sees_every_model_it_can_call(catalogue_edge, make_key):
    _, secret = make_key()

    response = listed(catalogue_edge, secret)

    assert response.status_code == 200
    assert response.json() == {
        "object": "list",
        "data": [
            model("demo-chat"),
            model("demo-embed"),
            model("llama-3-8b"),
            model("mock-exact", created=0, owned_by="tollgate"),
        ],
    }


def test_the_demo_key_sees_the_demo_models_through_the_openai_client(catalogue_edge, make_key):
    _, secret = make_key(allowed_models=["demo-*"])
    client = openai.OpenAI(base_url=catalogue_edge.url + "/v1", api_key=secret)

    models = list(client.models.list())

    assert [(m.id, m.object, m.created, m.owned_by) for m in models] == [
        ("demo-chat", "model", CREATED, "tollgate-mock"),
        ("demo-embed", "model", CREATED, "tollgate-mock"),
    ]


def test_a_restricted_key_sees_only_its_allowed_models(catalogue_edge, make_key):
    _, some = make_key(allowed_models=["demo-chat", "llama-*"])
    _, exact = make_key(allowed_models=["mock-exact"])

    assert [item["id"] for item in listed(catalogue_edge, some).json()["data"]] == ["demo-chat", "llama-3-8b"]
    assert listed(catalogue_edge, exact).json()["data"] == [
        model("mock-exact", created=0, owned_by="tollgate")
    ]


def test_every_listed_model_can_be_called(catalogue_edge, make_key):
    _, secret = make_key()
    client = openai.OpenAI(base_url=catalogue_edge.url + "/v1", api_key=secret)

    for listed_model in client.models.list():
        if listed_model.id == "mock-exact":
            continue  # an exact route's name is listed without asking; its upstream serves other names
        answer = client.chat.completions.with_raw_response.create(
            model=listed_model.id, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert answer.status_code == 200


def test_the_upstreams_answer_is_kept_and_not_asked_again(start_edge, make_key):
    upstream = MockUpstream("--models", "cached-a,cached-b")
    try:
        edge = start_edge([{"model": "*", "upstreams": [upstream.url]}])
        _, first = make_key()
        _, second = make_key(allowed_models=["cached-b"])

        answers = [listed(edge, first), listed(edge, second), listed(edge, first)]

        assert [answer.status_code for answer in answers] == [200, 200, 200]
        assert [[item["id"] for item in answer.json()["data"]] for answer in answers] == [
            ["cached-a", "cached-b"],
            ["cached-b"],
            ["cached-a", "cached-b"],
        ]
        assert upstream.stats()["by_path"].get("/v1/models") == 1
    finally:
        upstream.stop()


def test_an_upstream_that_fails_adds_nothing_and_the_list_still_answers(start_edge, make_key):
    working = MockUpstream("--models", "open-1")
    locked = MockUpstream("--models", "secured-1,open-2", "--api-key", UPSTREAM_KEY)
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        edge = start_edge(
            [
                # The upstream's own key is sent when asking it, as for completions.
                {"model": "secured-*", "upstreams": [{"url": locked.url, "api_key": UPSTREAM_KEY}]},
                {"model": "*", "upstreams": [dead, {"url": locked.url}, working.url]},
            ]
        )
        _, secret = make_key()

        response = listed(edge, secret)

        assert response.status_code == 200
        assert response.json() == {"object": "list", "data": [model("open-1"), model("secured-1")]}
        log = edge.log()
        assert f"no model list from {dead}: could not connect to 127.0.0.1:" in log
        assert f"no model list from {locked.url}: it answered 401" in log
    finally:
        working.stop()
        locked.stop()
