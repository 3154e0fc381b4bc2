"""The usage API: posting events from another gateway, and reading usage from the rollups."""

import csv
import io
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from portal.roles import Role
from tests.api.support import assert_problem, call, iso, session_client
from tests.factories import add_member
from tests.usage.support import edge_event, ingest, raw_sums, rollup_rows
from usage.export import usage_csv_response
from usage.models import UsageEvent, UsageRollup
from usage.selectors import METRICS

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/usage/events"
USAGE = "/api/v1/usage"


def item(key, **fields) -> dict:
    """One event as another gateway posts it."""
    body = {
        "event_id": str(uuid.uuid4()),
        "key_id": key.public_id,
        "model": "llama-3-70b",
        "timestamp": (timezone.now() - timedelta(minutes=1)).isoformat(),
        "input_tokens": 12,
        "output_tokens": 30,
    }
    body.update(fields)
    return body


def post(user, events):
    return call(session_client(user), "post", EVENTS, {"events": events})


def stored(organization) -> list[tuple]:
    return sorted(
        UsageEvent.unscoped.filter(organization=organization).values_list(
            "event_id", "input_tokens", "output_tokens", "source"
        )
    )


# --- POST /api/v1/usage/events --------------------------------------------------------


def test_a_batch_of_1000_events_is_accepted_and_stored_once_each(tenant):
    key = tenant.key()
    events = [item(key, input_tokens=n, output_tokens=2 * n) for n in range(1000)]

    response = post(tenant.owner, events)

    assert response.status_code == 200, response.content
    assert response.json() == {
        "accepted": 1000,
        "duplicates": 0,
        "rejected": 0,
        "results": [{"event_id": event["event_id"], "status": "accepted"} for event in events],
    }
    assert stored(tenant.org) == sorted(
        (uuid.UUID(event["event_id"]), event["input_tokens"], event["output_tokens"], "api")
        for event in events
    )
    rollups = rollup_rows()
    assert sum(row["requests"] for row in rollups.values()) == 1000
    assert sum(row["input_tokens"] for row in rollups.values()) == sum(range(1000))
    assert sum(row["output_tokens"] for row in rollups.values()) == 2 * sum(range(1000))
    assert rollups == raw_sums()


def test_a_batch_of_1001_events_is_refused_whole(tenant):
    key = tenant.key()

    response = post(tenant.owner, [item(key) for _ in range(1001)])

    assert_problem(
        response,
        400,
        "validation_error",
        "The request has invalid fields.",
        {"events": ["Ensure this field has no more than 1000 elements."]},
    )
    assert UsageEvent.unscoped.count() == 0
    assert UsageRollup.unscoped.count() == 0


def test_an_empty_batch_is_refused(tenant):
    response = post(tenant.owner, [])

    assert_problem(
        response,
        400,
        "validation_error",
        "The request has invalid fields.",
        {"events": ["Ensure this field has at least 1 elements."]},
    )


@pytest.mark.clock
def test_a_resent_event_is_a_duplicate_counted_once_even_with_another_timestamp(tenant):
    key = tenant.key()
    event = item(key, input_tokens=7, output_tokens=8)
    first = post(tenant.owner, [event])
    assert first.json()["results"] == [{"event_id": event["event_id"], "status": "accepted"}]

    moved = {**event, "timestamp": (timezone.now() - timedelta(days=2, hours=3)).isoformat()}
    again = post(tenant.owner, [event, moved, item(key, event_id=event["event_id"], input_tokens=999)])

    assert again.status_code == 200
    assert again.json() == {
        "accepted": 0,
        "duplicates": 3,
        "rejected": 0,
        "results": [{"event_id": event["event_id"], "status": "duplicate"}] * 3,
    }
    assert stored(tenant.org) == [(uuid.UUID(event["event_id"]), 7, 8, "api")]
    [rollup] = UsageRollup.unscoped.all()
    assert (rollup.requests, rollup.input_tokens, rollup.output_tokens) == (1, 7, 8)


def test_the_same_event_twice_in_one_batch_is_accepted_once(tenant):
    key = tenant.key()
    event = item(key)

    response = post(tenant.owner, [event, {**event, "input_tokens": 50}])

    assert response.json()["results"] == [
        {"event_id": event["event_id"], "status": "accepted"},
        {"event_id": event["event_id"], "status": "duplicate"},
    ]
    assert stored(tenant.org) == [(uuid.UUID(event["event_id"]), 12, 30, "api")]


def raw_rows() -> list[tuple]:
    """Every raw event of every organization."""
    return sorted(
        UsageEvent.unscoped.values_list(
            "organization_id", "event_id", "key_id", "input_tokens", "output_tokens", "source"
        )
    )


def slot(key, moment: datetime) -> tuple:
    """The rollup slot of an event of ``key`` at ``moment`` (model as in ``item``)."""
    hour = moment.replace(minute=0, second=0, microsecond=0)
    return (key.organization_id, key.pk, "llama-3-70b", hour, moment.date().replace(day=1))


def counted(requests: int, input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "requests": requests,
        "errors": 0,
        "refusals": 0,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_tokens": 0,
        "estimated_requests": 0,
        "cost_micro_minor": 0,
    }


def one(event: dict, status: str) -> dict:
    """The body answering a post of one event."""
    return {
        "accepted": int(status == "accepted"),
        "duplicates": int(status == "duplicate"),
        "rejected": 0,
        "results": [{"event_id": event["event_id"], "status": status}],
    }


@pytest.mark.clock
def test_two_organizations_posting_the_same_event_id_are_each_counted(tenant, other_tenant):
    acme, globex = tenant.key(), other_tenant.key()
    moment = (timezone.now() - timedelta(minutes=3)).replace(microsecond=0)
    event_id = str(uuid.uuid4())
    # Same id and same time: only the organization tells the two events apart.
    ours = item(acme, event_id=event_id, timestamp=moment.isoformat(), input_tokens=5, output_tokens=6)
    theirs = item(globex, event_id=event_id, timestamp=moment.isoformat(), input_tokens=70, output_tokens=80)

    first = post(tenant.owner, [ours])
    second = post(other_tenant.owner, [theirs])

    assert (first.status_code, first.json()) == (200, one(ours, "accepted"))
    assert (second.status_code, second.json()) == (200, one(theirs, "accepted"))
    assert raw_rows() == sorted(
        [
            (tenant.org.pk, uuid.UUID(event_id), acme.pk, 5, 6, "api"),
            (other_tenant.org.pk, uuid.UUID(event_id), globex.pk, 70, 80, "api"),
        ]
    )
    assert rollup_rows() == {slot(acme, moment): counted(1, 5, 6), slot(globex, moment): counted(1, 70, 80)}
    assert rollup_rows() == raw_sums()


@pytest.mark.clock
def test_an_organization_reposting_its_id_gets_a_duplicate_whatever_another_organization_posted(
    tenant, other_tenant
):
    acme, globex = tenant.key(), other_tenant.key()
    moment = (timezone.now() - timedelta(minutes=3)).replace(microsecond=0)
    event_id = str(uuid.uuid4())
    ours = item(acme, event_id=event_id, timestamp=moment.isoformat(), input_tokens=5, output_tokens=6)
    theirs = item(globex, event_id=event_id, timestamp=moment.isoformat(), input_tokens=70, output_tokens=80)
    post(tenant.owner, [ours])
    post(other_tenant.owner, [theirs])

    # Each organization retries its own event, once as sent and once with another time.
    later = (moment + timedelta(minutes=1)).isoformat()
    ours_again = post(tenant.owner, [ours, {**ours, "timestamp": later}])
    theirs_again = post(other_tenant.owner, [theirs, {**theirs, "timestamp": later}])

    for again, event in ((ours_again, ours), (theirs_again, theirs)):
        assert again.status_code == 200
        assert again.json() == {
            "accepted": 0,
            "duplicates": 2,
            "rejected": 0,
            "results": [{"event_id": event_id, "status": "duplicate"}] * 2,
        }
    assert raw_rows() == sorted(
        [
            (tenant.org.pk, uuid.UUID(event_id), acme.pk, 5, 6, "api"),
            (other_tenant.org.pk, uuid.UUID(event_id), globex.pk, 70, 80, "api"),
        ]
    )
    assert rollup_rows() == {slot(acme, moment): counted(1, 5, 6), slot(globex, moment): counted(1, 70, 80)}


@pytest.mark.clock
def test_an_id_the_edge_metered_for_another_organization_is_no_duplicate_for_a_post(
    tenant, other_tenant, redis_client
):
    acme, globex = tenant.key(), other_tenant.key()
    moment = (timezone.now() - timedelta(minutes=3)).replace(microsecond=0)
    metered = edge_event(globex, ended_at=moment, input_tokens=70, output_tokens=80)
    ingest(redis_client, metered)
    ours = item(
        acme, event_id=metered["event_id"], timestamp=moment.isoformat(), input_tokens=5, output_tokens=6
    )

    first, again = post(tenant.owner, [ours]), post(tenant.owner, [ours])

    assert (first.status_code, first.json()) == (200, one(ours, "accepted"))
    assert (again.status_code, again.json()) == (200, one(ours, "duplicate"))
    event_id = uuid.UUID(metered["event_id"])
    assert raw_rows() == sorted(
        [
            (tenant.org.pk, event_id, acme.pk, 5, 6, "api"),
            (other_tenant.org.pk, event_id, globex.pk, 70, 80, "edge"),
        ]
    )
    assert rollup_rows() == raw_sums()
    assert [row["requests"] for row in rollup_rows().values()] == [1, 1]


@pytest.mark.clock
def test_invalid_items_are_rejected_with_their_reason_and_the_valid_ones_accepted(tenant, other_tenant):
    key = tenant.key()
    foreign = other_tenant.key()
    now = timezone.now()
    good = [item(key, input_tokens=1), item(key, input_tokens=2)]
    bad_uuid = item(key, event_id="not-a-uuid")
    negative = item(key, input_tokens=-1)
    future = item(key, timestamp=(now + timedelta(minutes=10)).isoformat())
    ancient = item(key, timestamp=(now - timedelta(days=36)).isoformat())
    other_orgs_key = item(foreign)
    unknown_key = item(key, key_id="key_00000000000000000000000000")
    too_many_cached = item(key, input_tokens=5, cached_tokens=6)
    missing_model = item(key)
    del missing_model["model"]

    response = post(
        tenant.owner,
        [
            good[0],
            bad_uuid,
            negative,
            future,
            ancient,
            other_orgs_key,
            unknown_key,
            too_many_cached,
            missing_model,
            good[1],
        ],
    )

    assert response.status_code == 200
    assert response.json() == {
        "accepted": 2,
        "duplicates": 0,
        "rejected": 8,
        "results": [
            {"event_id": good[0]["event_id"], "status": "accepted"},
            {"event_id": "not-a-uuid", "status": "rejected", "reason": "event_id: Must be a valid UUID."},
            {
                "event_id": negative["event_id"],
                "status": "rejected",
                "reason": "input_tokens: Ensure this value is greater than or equal to 0.",
            },
            {
                "event_id": future["event_id"],
                "status": "rejected",
                "reason": "timestamp is more than 5 minutes in the future",
            },
            {
                "event_id": ancient["event_id"],
                "status": "rejected",
                "reason": "timestamp is older than the late window (35 days)",
            },
            {
                "event_id": other_orgs_key["event_id"],
                "status": "rejected",
                "reason": f"unknown key_id {foreign.public_id!r}",
            },
            {
                "event_id": unknown_key["event_id"],
                "status": "rejected",
                "reason": "unknown key_id 'key_00000000000000000000000000'",
            },
            {
                "event_id": too_many_cached["event_id"],
                "status": "rejected",
                "reason": "cached_tokens cannot exceed input_tokens",
            },
            {
                "event_id": missing_model["event_id"],
                "status": "rejected",
                "reason": "model: This field is required.",
            },
            {"event_id": good[1]["event_id"], "status": "accepted"},
        ],
    }
    assert stored(tenant.org) == sorted(
        (uuid.UUID(e["event_id"]), e["input_tokens"], 30, "api") for e in good
    )
    assert UsageEvent.unscoped.filter(organization=other_tenant.org).count() == 0
    assert UsageEvent.unscoped.count() == 2


def test_text_with_nul_characters_is_rejected_before_it_reaches_the_database(tenant):
    key = tenant.key()
    events = [item(key, model="llama\u0000"), item(key, request_id="req\u0000"), item(key)]

    response = post(tenant.owner, events)

    assert [(result["status"], result.get("reason")) for result in response.json()["results"]] == [
        ("rejected", "model: Null characters are not allowed."),
        ("rejected", "request_id: Null characters are not allowed."),
        ("accepted", None),
    ]
    assert UsageEvent.unscoped.count() == 1


@pytest.mark.clock
def test_a_posted_event_lands_in_its_hour_and_marks_the_key_used(tenant):
    key = tenant.key()
    moment = (timezone.now() - timedelta(hours=5)).replace(minute=17, second=3, microsecond=0)

    post(tenant.owner, [item(key, timestamp=moment.isoformat(), status=429, estimated=True, cached_tokens=4)])

    [rollup] = UsageRollup.unscoped.values(
        "organization_id",
        "key_id",
        "model",
        "hour",
        "requests",
        "errors",
        "cached_tokens",
        "estimated_requests",
    )
    assert rollup == {
        "organization_id": tenant.org.pk,
        "key_id": key.pk,
        "model": "llama-3-70b",
        "hour": moment.replace(minute=0, second=0),
        "requests": 1,
        "errors": 1,
        "cached_tokens": 4,
        "estimated_requests": 1,
    }
    key.refresh_from_db()
    assert key.last_used_at == moment


@pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
def test_roles_with_usage_ingest_may_post_events(tenant, role):
    key = tenant.key()
    user = tenant.owner if role == Role.OWNER else add_member(tenant.org, role)

    response = post(user, [item(key)])

    assert response.status_code == 200
    assert response.json()["accepted"] == 1


@pytest.mark.parametrize("role", [Role.BILLING, Role.VIEWER])
def test_roles_without_usage_ingest_cannot_post_events(tenant, role):
    key = tenant.key()
    user = add_member(tenant.org, role)

    response = post(user, [item(key)])

    assert_problem(
        response, 403, "permission_denied", f"Your role ({role}) lacks the usage.ingest permission."
    )
    assert UsageEvent.unscoped.count() == 0


def test_posting_events_needs_a_credential(tenant):
    response = call(session_client(), "post", EVENTS, {"events": [item(tenant.key())]})

    assert_problem(response, 401, "not_authenticated", "Authentication credentials were not provided.")


# --- GET /api/v1/usage ----------------------------------------------------------------

# Reading usage depends on the window asked for, not on today: a fixed window across a
# year end (its two days also fall in two billing months).
DAY = datetime(2026, 12, 31, tzinfo=UTC)
START, END = DAY, DAY + timedelta(days=2)


@pytest.fixture
def usage(tenant, other_tenant, redis_client):
    """Usage over two days for two keys and two models, some outside the window, and a stranger's."""
    build, batch = tenant.key("build"), tenant.key("batch")
    foreign = other_tenant.key("foreign")
    ingest(
        redis_client,
        edge_event(
            build,
            ended_at=at(hours=1, minutes=10),
            model="mock-a",
            input_tokens=10,
            output_tokens=20,
            cached_tokens=1,
        ),
        edge_event(build, ended_at=at(hours=1, minutes=50), model="mock-a", input_tokens=5, output_tokens=5),
        edge_event(
            build,
            ended_at=at(hours=1, minutes=20),
            model="mock-b",
            input_tokens=7,
            output_tokens=3,
            status=500,
        ),
        edge_event(
            batch, ended_at=at(hours=5), model="mock-a", input_tokens=100, output_tokens=1, estimated=True
        ),
        edge_event(
            build, ended_at=at(days=1, hours=2, minutes=30), model="mock-a", input_tokens=3, output_tokens=4
        ),
        edge_event(
            batch, ended_at=at(days=1, hours=23, minutes=59), model="mock-b", input_tokens=9, output_tokens=9
        ),
        # Outside the window: an hour before it, and at its (exclusive) end.
        edge_event(build, ended_at=at(hours=-1), model="mock-a", input_tokens=1000, output_tokens=0),
        edge_event(build, ended_at=at(days=2), model="mock-a", input_tokens=2000, output_tokens=0),
        # Another organization, inside the window.
        edge_event(
            foreign, ended_at=at(hours=1, minutes=10), model="mock-a", input_tokens=50000, output_tokens=50000
        ),
    )
    return {"build": build, "batch": batch, "foreign": foreign}


def at(**delta) -> datetime:
    return DAY + timedelta(**delta)


def expected_rows(organization, granularity, group_by=(), *, key=None, model=None) -> list[dict]:
    """Sum the organization's rollups in the window the way the API must."""
    sums: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(METRICS, 0))
    rollups = UsageRollup.unscoped.filter(organization=organization, hour__gte=START, hour__lt=END)
    if key is not None:
        rollups = rollups.filter(key=key)
    if model is not None:
        rollups = rollups.filter(model=model)
    for rollup in rollups.select_related("key"):
        period = rollup.hour if granularity == "hour" else rollup.hour.replace(hour=0)
        group = (period,)
        if "model" in group_by:
            group += (rollup.model,)
        if "key" in group_by:
            group += (rollup.key.public_id, rollup.key.name)
        for metric in METRICS:
            sums[group][metric] += getattr(rollup, metric)
    rows = []
    for group in sorted(sums):
        row = {"period": iso(group[0])}
        rest = list(group[1:])
        if "model" in group_by:
            row["model"] = rest.pop(0)
        if "key" in group_by:
            row["key_id"], row["key_name"] = rest
        rows.append({**row, **sums[group], **UNPRICED})
    return rows


# No model has a price here, so every cost is zero (test_usage_costs.py prices usage).
UNPRICED = {"cost_minor": 0, "currency": "usd"}


def totals(rows: list[dict]) -> dict[str, int]:
    return {**{metric: sum(row[metric] for row in rows) for metric in METRICS}, **UNPRICED}


def get_usage(user, **query):
    return call(session_client(user), "get", USAGE, query={"start": iso(START), "end": iso(END), **query})


@pytest.mark.parametrize(
    ("granularity", "group_by"),
    [
        ("hour", ""),
        ("day", ""),
        ("hour", "model"),
        ("day", "model"),
        ("day", "key"),
        ("hour", "model,key"),
        ("day", "key,model"),
    ],
)
def test_usage_rows_and_totals_equal_the_rollups(tenant, usage, granularity, group_by):
    response = get_usage(tenant.owner, granularity=granularity, group_by=group_by)

    assert response.status_code == 200, response.content
    groups = tuple(part for part in group_by.split(",") if part)
    rows = expected_rows(tenant.org, granularity, groups)
    assert response.json() == {
        "start": iso(START),
        "end": iso(END),
        "granularity": granularity,
        "group_by": list(groups),
        "data": rows,
        "totals": totals(rows),
    }


def test_usage_totals_are_the_exact_sums_of_the_window(tenant, usage):
    body = get_usage(tenant.owner, granularity="day", group_by="model").json()

    assert body["totals"] == {
        "requests": 6,
        "errors": 1,
        "refusals": 0,
        "input_tokens": 134,
        "output_tokens": 42,
        "cached_tokens": 1,
        "estimated_requests": 1,
        **UNPRICED,
    }
    assert [(row["period"], row["model"], row["requests"], row["input_tokens"]) for row in body["data"]] == [
        (iso(DAY), "mock-a", 3, 115),
        (iso(DAY), "mock-b", 1, 7),
        (iso(DAY + timedelta(days=1)), "mock-a", 1, 3),
        (iso(DAY + timedelta(days=1)), "mock-b", 1, 9),
    ]
    assert rollup_rows() == raw_sums()


def test_usage_filtered_by_key_and_model(tenant, usage):
    build = usage["build"]

    by_key = get_usage(tenant.owner, granularity="hour", key=build.public_id).json()
    by_model = get_usage(tenant.owner, granularity="day", group_by="key", model="mock-b").json()
    both = get_usage(tenant.owner, granularity="hour", key=build.public_id, model="mock-a").json()

    rows = expected_rows(tenant.org, "hour", key=build)
    assert (by_key["data"], by_key["totals"]) == (rows, totals(rows))
    assert [row["period"] for row in rows] == [
        iso(DAY + timedelta(hours=1)),
        iso(DAY + timedelta(days=1, hours=2)),
    ]
    rows = expected_rows(tenant.org, "day", ("key",), model="mock-b")
    assert (by_model["data"], by_model["totals"]) == (rows, totals(rows))
    assert by_model["totals"]["input_tokens"] == 16
    rows = expected_rows(tenant.org, "hour", key=build, model="mock-a")
    assert (both["data"], both["totals"]) == (rows, totals(rows))
    assert both["totals"]["input_tokens"] == 18


def test_usage_as_csv_has_the_same_rows(tenant, usage):
    response = get_usage(tenant.owner, granularity="hour", group_by="model,key", format="csv")

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"] == 'attachment; filename="usage.csv"'
    table = list(csv.reader(io.StringIO(response.content.decode())))
    assert table[0] == ["period", "model", "key_id", "key_name", *METRICS, "cost_minor", "currency"]
    expected = expected_rows(tenant.org, "hour", ("model", "key"))
    assert table[1:] == [
        [
            datetime.fromisoformat(row["period"].replace("Z", "+00:00")).isoformat(),
            row["model"],
            row["key_id"],
            row["key_name"],
            *(str(row[metric]) for metric in METRICS),
            "0",
            "usd",
        ]
        for row in expected
    ]
    assert len(table) == 1 + 5


def test_another_organizations_usage_never_appears(tenant, other_tenant, usage):
    ours = get_usage(tenant.owner, granularity="hour", group_by="key").json()
    theirs = get_usage(other_tenant.owner, granularity="hour", group_by="key").json()

    assert usage["foreign"].public_id not in {row["key_id"] for row in ours["data"]}
    assert ours["totals"]["input_tokens"] == 134
    assert theirs["data"] == [
        {
            "period": iso(DAY + timedelta(hours=1)),
            "key_id": usage["foreign"].public_id,
            "key_name": "foreign",
            "requests": 1,
            "errors": 0,
            "refusals": 0,
            "input_tokens": 50000,
            "output_tokens": 50000,
            "cached_tokens": 0,
            "estimated_requests": 0,
            **UNPRICED,
        }
    ]


def test_filtering_by_another_organizations_key_answers_like_a_missing_key(tenant, usage):
    foreign = get_usage(tenant.owner, key=usage["foreign"].public_id)
    missing = get_usage(tenant.owner, key="key_00000000000000000000000000")

    for response in (foreign, missing):
        assert_problem(
            response,
            400,
            "validation_error",
            "No such key in this organization.",
            {"key": ["No such key in this organization."]},
        )


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ({"granularity": "week"}, {"granularity": ['"week" is not a valid choice.']}),
        ({"group_by": "foo"}, {"group_by": ["Unknown groups: foo. Use model and/or key."]}),
        ({"group_by": "model,team"}, {"group_by": ["Unknown groups: team. Use model and/or key."]}),
        ({"start": iso(END), "end": iso(END)}, {"start": ["start must be before end."]}),
        ({"start": iso(END), "end": iso(START)}, {"start": ["start must be before end."]}),
        (
            {"granularity": "hour", "start": iso(END - timedelta(days=31, seconds=1)), "end": iso(END)},
            {"start": ["Hourly usage covers at most 31 days; use day."]},
        ),
        ({"format": "xml"}, {"format": ['"xml" is not a valid choice.']}),
        (
            {"start": "yesterday"},
            {
                "start": [
                    "Datetime has wrong format. Use one of these formats instead: "
                    "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                ]
            },
        ),
    ],
)
def test_bad_usage_parameters_are_refused_with_field_errors(tenant, query, errors):
    response = call(
        session_client(tenant.owner), "get", USAGE, query={"start": iso(START), "end": iso(END), **query}
    )

    assert_problem(response, 400, "validation_error", "The request has invalid fields.", errors)


def test_an_hourly_range_of_exactly_31_days_is_allowed(tenant, usage):
    response = get_usage(tenant.owner, granularity="hour", start=iso(END - timedelta(days=31)))

    assert response.status_code == 200
    assert response.json()["totals"]["requests"] == 7


@pytest.mark.parametrize("role", [Role.DEVELOPER, Role.BILLING, Role.VIEWER])
def test_every_role_reads_usage(tenant, usage, role):
    response = get_usage(add_member(tenant.org, role), granularity="day")

    assert response.status_code == 200
    assert response.json()["totals"]["requests"] == 6


def test_usage_csv_cells_beginning_like_a_formula_are_prefixed_with_a_quote(tenant, redis_client):
    evil = tenant.key('=HYPERLINK("http://evil","x")')
    plain = tenant.key("build")
    ingest(
        redis_client,
        edge_event(evil, ended_at=at(hours=1), model="@SUM(A1:A9)", input_tokens=10, output_tokens=20),
        edge_event(plain, ended_at=at(hours=2), model="-x", input_tokens=7, output_tokens=3, status=500),
        edge_event(plain, ended_at=at(hours=3), model="mock-a", input_tokens=1, output_tokens=2),
    )

    response = get_usage(tenant.owner, granularity="hour", group_by="model,key", format="csv")

    assert response.status_code == 200
    assert response.content.decode() == (
        "period,model,key_id,key_name,requests,errors,refusals,input_tokens,output_tokens,cached_tokens,"
        "estimated_requests,cost_minor,currency\r\n"
        f"2026-12-31T01:00:00+00:00,'@SUM(A1:A9),{evil.public_id},"
        '"\'=HYPERLINK(""http://evil"",""x"")",1,0,0,10,20,0,0,0,usd\r\n'
        f"2026-12-31T02:00:00+00:00,'-x,{plain.public_id},build,1,1,0,7,3,0,0,0,usd\r\n"
        f"2026-12-31T03:00:00+00:00,mock-a,{plain.public_id},build,1,0,0,1,2,0,0,0,usd\r\n"
    )


def test_usage_csv_writes_numbers_as_numbers_even_when_negative():
    row = {
        "period": START,
        "model": "@m",
        **dict.fromkeys(METRICS, 0),
        "requests": -3,
        "errors": Decimal("-1.50"),
        "cost_minor": -7,
        "currency": "usd",
    }

    response = usage_csv_response([row], group_by=("model",))

    assert response.content.decode() == (
        "period,model,requests,errors,refusals,input_tokens,output_tokens,cached_tokens,estimated_requests,"
        "cost_minor,currency\r\n"
        "2026-12-31T00:00:00+00:00,'@m,-3,-1.50,0,0,0,0,0,-7,usd\r\n"
    )
