"""Cursor pagination of list endpoints."""

import time

import pytest

from keys import services as key_services
from portal.audit import Actor
from portal.roles import Role
from tests.api.support import assert_problem, call, key_json, session_client

pytestmark = pytest.mark.django_db


def _create_keys(world, count: int) -> list:
    keys = []
    for n in range(count):
        key, _ = key_services.api_key_create(
            actor=Actor(user=world.users[Role.OWNER]), organization=world.org, name=f"key {n}"
        )
        keys.append(key)
        # Key ids order by millisecond; step past the current one so "newest" is unambiguous.
        millisecond = time.time_ns() // 1_000_000
        while time.time_ns() // 1_000_000 == millisecond:
            pass
    return keys


def test_limit_walks_next_links_through_every_key_once_newest_first(world):
    keys = _create_keys(world, 7)
    client = session_client(world.users[Role.VIEWER])
    pages = []
    url = "/api/v1/keys?limit=3"
    while url is not None:
        response = call(client, "GET", url)
        assert response.status_code == 200, response.content
        pages.append(response.json())
        url = response.json()["next"]
    assert [len(p["results"]) for p in pages] == [3, 3, 1]
    assert [p["previous"] is None for p in pages] == [True, False, False]
    assert pages[0]["next"].startswith("http://testserver/api/v1/keys?cursor=")
    assert "limit=3" in pages[0]["next"]
    seen = [item["id"] for p in pages for item in p["results"]]
    assert seen == [key.public_id for key in reversed(keys)]
    assert [item for p in pages for item in p["results"]] == [key_json(key) for key in reversed(keys)]


def test_previous_link_returns_the_earlier_page(world):
    keys = _create_keys(world, 4)
    client = session_client(world.users[Role.VIEWER])
    first = call(client, "GET", "/api/v1/keys?limit=2").json()
    second = call(client, "GET", first["next"]).json()
    back = call(client, "GET", second["previous"]).json()
    assert [k["id"] for k in back["results"]] == [k["id"] for k in first["results"]]
    assert [k["id"] for k in second["results"]] == [keys[1].public_id, keys[0].public_id]


def test_without_limit_a_page_holds_up_to_fifty(world):
    _create_keys(world, 3)
    body = call(session_client(world.users[Role.VIEWER]), "GET", "/api/v1/keys").json()
    assert (len(body["results"]), body["next"], body["previous"]) == (3, None, None)


def test_invalid_cursor_answers_404_problem(world):
    _create_keys(world, 1)
    response = call(
        session_client(world.users[Role.VIEWER]), "GET", "/api/v1/keys", query={"cursor": "garbage"}
    )
    # DRF's CursorPagination raises NotFound for a cursor it cannot decode.
    assert_problem(response, 404, "not_found", "Invalid cursor")
