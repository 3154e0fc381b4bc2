"""The raw table's monthly partitions: created ahead, filled from the default, dropped after retention.

Late events for a closed month are kept and billed in the next open month.
"""

from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.utils import timezone

from tests.usage.support import edge_event, ingest, raw_sums, rollup_rows
from usage.models import ClosedPeriod, UsageEvent, UsageRollup
from usage.partitions import add_months, partition_create, partitions_drop_before, partitions_ensure
from usage.tasks import apply_raw_retention

pytestmark = [pytest.mark.django_db, pytest.mark.clock]


def partitions() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname FROM pg_inherits
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            WHERE parent.relname = 'usage_event' ORDER BY child.relname
            """
        )
        return [row[0] for row in cursor.fetchall()]


def rows_per_partition() -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text, count(*) FROM usage_event GROUP BY 1")
        return dict(cursor.fetchall())


def month_name(month: date) -> str:
    return f"usage_event_{month:%Y%m}"


@pytest.fixture(autouse=True)
def _only_the_default_partition():
    """Start from the default partition alone, whichever months the migration created.

    The test database was migrated at some earlier time (under ``--clock``, on another
    date): each test creates the partitions it needs, for the date it runs at, with the
    code's own functions. The drop is rolled back with the test's transaction.
    """
    partitions_drop_before(date.max)
    assert partitions() == ["usage_event_default"]


def test_ensuring_partitions_creates_last_month_to_three_months_ahead_of_today(frozen_now):
    this_month = frozen_now.date().replace(day=1)
    expected = [month_name(add_months(this_month, offset)) for offset in range(-1, 4)]

    assert partitions_ensure() == expected

    assert partitions() == sorted(["usage_event_default", *expected])


def test_ensuring_partitions_creates_only_the_missing_months_ahead_and_is_idempotent(frozen_now):
    this_month = frozen_now.date().replace(day=1)
    in_two_months = add_months(this_month, 2)
    partitions_ensure()

    created = partitions_ensure(today=in_two_months)

    assert created == [month_name(add_months(this_month, 4)), month_name(add_months(this_month, 5))]
    assert partitions_ensure(today=in_two_months) == []
    assert partitions() == sorted(
        ["usage_event_default"] + [month_name(add_months(this_month, offset)) for offset in range(-1, 6)]
    )


def test_an_event_of_a_month_without_partition_waits_in_the_default_and_moves_when_it_is_created(
    tenant, redis_client
):
    key = tenant.key()
    old = datetime(2019, 3, 14, 15, 9, 26, tzinfo=UTC)
    current = timezone.now()
    partition_create(current.date())
    ingest(
        redis_client,
        edge_event(key, ended_at=old),
        edge_event(key, ended_at=old),
        edge_event(key, ended_at=current),
    )
    this_partition = month_name(current.date())
    assert rows_per_partition() == {"usage_event_default": 2, this_partition: 1}

    assert partition_create(date(2019, 3, 1)) is True

    assert rows_per_partition() == {"usage_event_201903": 2, this_partition: 1}
    assert partition_create(date(2019, 3, 1)) is False
    assert UsageEvent.unscoped.filter(occurred_at=old).count() == 2


def test_retention_drops_old_raw_partitions_and_keeps_the_rollups(tenant, redis_client):
    key = tenant.key()
    for month in (date(2019, 3, 1), date(2019, 4, 1), date(2019, 5, 1)):
        partition_create(month)
    ingest(
        redis_client,
        edge_event(key, ended_at=datetime(2019, 3, 31, 23, 59, tzinfo=UTC), input_tokens=1),
        edge_event(key, ended_at=datetime(2019, 4, 1, 0, 0, tzinfo=UTC), input_tokens=2),
        edge_event(key, ended_at=datetime(2019, 5, 2, 8, 0, tzinfo=UTC), input_tokens=4),
        edge_event(key, input_tokens=8),
    )
    rollups = rollup_rows()
    assert rollups == raw_sums()
    assert sum(row["input_tokens"] for row in rollups.values()) == 15

    dropped = partitions_drop_before(date(2019, 5, 1))

    assert dropped == ["usage_event_201903", "usage_event_201904"]
    assert "usage_event_201903" not in partitions()
    assert "usage_event_201905" in partitions()
    assert sorted(UsageEvent.unscoped.values_list("input_tokens", flat=True)) == [4, 8]
    assert rollup_rows() == rollups
    assert UsageRollup.unscoped.count() == 4


def test_the_retention_job_drops_raw_months_older_than_the_setting(
    tenant, redis_client, settings, frozen_now
):
    settings.USAGE_RAW_RETENTION_MONTHS = 13
    key = tenant.key()
    this_month = frozen_now.date().replace(day=1)
    expired, kept = add_months(this_month, -14), add_months(this_month, -13)
    partition_create(expired)
    partition_create(kept)
    ingest(
        redis_client,
        edge_event(key, ended_at=datetime.combine(expired, datetime.min.time(), UTC) + timedelta(days=3)),
        edge_event(key, ended_at=datetime.combine(kept, datetime.min.time(), UTC) + timedelta(days=3)),
    )
    before = rollup_rows()

    assert apply_raw_retention() == [month_name(expired)]

    assert rows_per_partition() == {month_name(kept): 1}
    assert rollup_rows() == before
    assert sum(row["requests"] for row in before.values()) == 2


def test_a_late_event_for_a_closed_month_is_kept_and_billed_in_the_next_open_month(tenant, redis_client):
    key = tenant.key()
    on_time = timezone.now()
    this_month = on_time.date().replace(day=1)
    last_month = add_months(this_month, -1)
    partitions_ensure(today=this_month)
    ClosedPeriod.objects.create(period=last_month)
    occurred = datetime.combine(last_month, datetime.min.time(), UTC) + timedelta(days=20, hours=7, minutes=3)

    ingest(
        redis_client,
        edge_event(key, ended_at=occurred, input_tokens=5, output_tokens=6),
        edge_event(key, ended_at=on_time, input_tokens=1, output_tokens=1),
    )

    late = UsageEvent.unscoped.get(occurred_at=occurred.replace(microsecond=0))
    assert (late.late, late.billed_period, late.input_tokens, late.output_tokens) == (True, this_month, 5, 6)
    current = UsageEvent.unscoped.exclude(pk=late.pk).get()
    assert (current.late, current.billed_period) == (False, this_month)
    assert rows_per_partition() == {month_name(last_month): 1, month_name(this_month): 1}
    rollup = UsageRollup.unscoped.get(hour=occurred.replace(minute=0))
    assert (rollup.billed_period, rollup.requests, rollup.input_tokens, rollup.output_tokens) == (
        this_month,
        1,
        5,
        6,
    )
    assert rollup_rows() == raw_sums()


def test_a_late_event_skips_every_closed_month_to_the_first_open_one(tenant, redis_client):
    key = tenant.key()
    this_month = timezone.now().date().replace(day=1)
    ClosedPeriod.objects.create(period=add_months(this_month, -1))
    ClosedPeriod.objects.create(period=add_months(this_month, -2))
    ClosedPeriod.objects.create(period=add_months(this_month, -4))
    occurred = datetime.combine(add_months(this_month, -2), datetime.min.time(), UTC) + timedelta(hours=5)
    open_month = datetime.combine(add_months(this_month, -3), datetime.min.time(), UTC) + timedelta(hours=5)

    ingest(redis_client, edge_event(key, ended_at=occurred), edge_event(key, ended_at=open_month))

    assert sorted(UsageEvent.unscoped.values_list("occurred_at", "late", "billed_period")) == [
        (open_month, False, add_months(this_month, -3)),
        (occurred, True, this_month),
    ]
    assert sorted(UsageRollup.unscoped.values_list("hour", "billed_period", "requests")) == [
        (open_month, add_months(this_month, -3), 1),
        (occurred, this_month, 1),
    ]
