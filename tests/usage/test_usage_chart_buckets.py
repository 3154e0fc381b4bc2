"""The buckets of the usage charts over month ends and at the session's clock: every hour or
day of the range present, in order, zero where nothing was used."""

import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from keys import services as key_services
from portal.audit import Actor
from tests.factories import make_org, make_user
from usage.models import UsageRollup

pytestmark = [pytest.mark.django_db, pytest.mark.clock]

MODEL = "llama-3.1-8b-instruct"


@pytest.fixture
def tenant():
    owner = make_user()
    organization = make_org(owner, name="Acme AI")
    key, _secret = key_services.api_key_create(actor=Actor(user=owner), organization=organization, name="App")
    return organization, owner, key


def _use(tenant, hour: datetime, requests: int, *, errors: int = 0, refusals: int = 0) -> None:
    organization, _owner, key = tenant
    UsageRollup.unscoped.create(
        organization=organization,
        key=key,
        model=MODEL,
        hour=hour,
        billed_period=hour.date().replace(day=1),
        requests=requests,
        errors=errors,
        refusals=refusals,
        input_tokens=100 * requests,
        output_tokens=10 * requests,
    )


def _chart(client, tenant, element_id="usage-chart", **query) -> dict:
    organization, owner, _key = tenant
    client.force_login(owner)
    name = "org-dashboard" if element_id.startswith("dashboard-") else "org-usage"
    response = client.get(reverse(name, args=[organization.slug]), query)
    assert response.status_code == 200
    match = re.search(
        rf'<script id="{element_id}" type="application/json">(.*?)</script>', response.content.decode(), re.S
    )
    assert match, f"no #{element_id} JSON in the page"
    return json.loads(match.group(1))


def _days(first: date, count: int) -> list[str]:
    return [(first + timedelta(days=n)).isoformat() for n in range(count)]


@pytest.mark.parametrize(
    ("now", "first_day"),
    [
        (datetime(2026, 3, 2, 1, 30, tzinfo=UTC), date(2026, 2, 24)),  # February of 28 days
        (datetime(2028, 3, 1, 0, 10, tzinfo=UTC), date(2028, 2, 24)),  # a leap February
        (datetime(2027, 1, 3, 23, 59, tzinfo=UTC), date(2026, 12, 28)),  # a year end
    ],
)
def test_the_week_over_a_month_end_is_seven_days_zero_filled(client, tenant, now, first_day):
    last_day = first_day + timedelta(days=6)
    with time_machine.travel(now, tick=False):
        # The month's last day and the week's last hour used; the days between them not.
        month_end = date(now.year, now.month, 1) - timedelta(days=1)
        _use(tenant, datetime.combine(month_end, datetime.min.time(), UTC).replace(hour=23), 3)
        _use(tenant, now.replace(minute=0), 2)
        _use(tenant, datetime.combine(first_day, datetime.min.time(), UTC) - timedelta(hours=1), 50)
        for chart in (_chart(client, tenant, range="7d"), _chart(client, tenant, "dashboard-usage-chart")):
            assert chart["granularity"] == "day"
            assert chart["labels"] == _days(first_day, 7)
            requests = [0] * 7
            requests[(month_end - first_day).days] += 3
            requests[6] += 2
            assert chart["models"] == [
                {
                    "model": MODEL,
                    "color": "#edc948",
                    "requests": requests,
                    "input_tokens": [100 * count for count in requests],
                    "output_tokens": [10 * count for count in requests],
                }
            ]
            assert chart["labels"][-1] == last_day.isoformat()


def test_two_days_over_a_month_end_are_48_hours_and_three_are_days(client, tenant):
    with time_machine.travel(datetime(2026, 3, 5, 12, tzinfo=UTC), tick=False):
        _use(tenant, datetime(2026, 2, 28, 23, tzinfo=UTC), 4)
        _use(tenant, datetime(2026, 3, 1, 0, tzinfo=UTC), 1)
        hourly = _chart(client, tenant, start="2026-02-28", end="2026-03-01")
        daily = _chart(client, tenant, start="2026-02-27", end="2026-03-01")
    assert hourly["granularity"] == "hour"
    start = datetime(2026, 2, 28, tzinfo=UTC)
    assert hourly["periods"] == [(start + timedelta(hours=n)).isoformat() for n in range(48)]
    assert hourly["labels"][23:25] == ["2026-02-28 23:00", "2026-03-01 00:00"]
    assert hourly["models"][0]["requests"] == [0] * 23 + [4, 1] + [0] * 23
    assert daily["granularity"] == "day"
    assert daily["labels"] == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert daily["models"][0]["requests"] == [0, 4, 1]


def test_errors_and_refusals_are_on_the_same_buckets_over_a_month_end(client, tenant):
    with time_machine.travel(datetime(2026, 3, 5, 12, tzinfo=UTC), tick=False):
        # A 429 and two upstream 502s before midnight, a 401 and a 499 after it.
        _use(tenant, datetime(2026, 2, 28, 23, tzinfo=UTC), 4, errors=3, refusals=1)
        _use(tenant, datetime(2026, 3, 1, 0, tzinfo=UTC), 5, errors=2, refusals=1)
        hourly = _chart(client, tenant, "usage-errors-chart", start="2026-02-28", end="2026-03-01")
        daily = _chart(client, tenant, "usage-errors-chart", start="2026-02-27", end="2026-03-01")
    assert len(hourly["labels"]) == 48
    assert hourly["labels"][23:25] == ["2026-02-28 23:00", "2026-03-01 00:00"]
    assert [series["counts"] for series in hourly["series"]] == [
        [0] * 23 + [1, 1] + [0] * 23,
        [0] * 23 + [2, 1] + [0] * 23,
    ]
    assert daily["labels"] == ["2026-02-27", "2026-02-28", "2026-03-01"]
    assert [(series["name"], series["counts"]) for series in daily["series"]] == [
        ("refusals", [0, 1, 1]),
        ("other_errors", [0, 2, 1]),
    ]


def test_at_the_clock_the_week_ends_today_and_the_day_with_the_hour_in_progress(client, tenant, frozen_now):
    hour = frozen_now.astimezone(UTC).replace(minute=0, second=0)
    _use(tenant, hour, 1)
    today = timezone.now().astimezone(UTC).date()
    week = _chart(client, tenant, range="7d")
    assert week["labels"] == _days(today - timedelta(days=6), 7)
    assert week["models"][0]["requests"] == [0, 0, 0, 0, 0, 0, 1]
    day = _chart(client, tenant, range="24h")
    assert day["periods"] == [(hour - timedelta(hours=23 - n)).isoformat() for n in range(24)]
    assert day["models"][0]["requests"] == [0] * 23 + [1]
