"""The raw table's monthly partitions: created ahead, filled from the default, dropped after retention.

Late events for a closed month are kept and billed in the next open month.
"""

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from tests.usage.support import edge_event, ingest, raw_sums, rollup_rows
from usage.ingest import Event, usage_events_ingest
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


# --- the raw table's key ------------------------------------------------------------------

BEFORE_PER_ORGANIZATION_KEY = ("usage", "0002_partitioned_raw_events")


def primary_keys() -> dict[str, str]:
    """The primary key of the raw table and of each partition."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
            WHERE contype = 'p' AND conrelid::regclass::text LIKE 'usage_event%'
            """
        )
        return dict(cursor.fetchall())


def raw_indexes() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'usage_event' ORDER BY 1")
        return [row[0] for row in cursor.fetchall()]


def raw_event(key, event_id: uuid.UUID, occurred: datetime, tokens: int) -> Event:
    return Event(
        event_id=event_id,
        occurred_at=occurred,
        organization_id=key.organization_id,
        key_id=key.pk,
        model="mock-model",
        endpoint="chat.completions",
        status=200,
        input_tokens=tokens,
        output_tokens=1,
        cached_tokens=0,
        estimated=False,
        cost_micro_minor=0,
        latency_ms=None,
        ttft_ms=None,
        request_id="",
        source="edge",
    )


def insert_under_the_old_key(*events: Event) -> None:
    """Insert rows as the code before the per-organization key did (no conflict target)."""
    with connection.cursor() as cursor:
        for e in events:
            cursor.execute(
                """
                INSERT INTO usage_event (event_id, occurred_at, organization_id, key_id, model, endpoint,
                    status, input_tokens, output_tokens, cached_tokens, estimated, cost_micro_minor,
                    request_id, source, billed_period, late, ingested_at)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, false, now())
                """,
                [
                    e.event_id, e.occurred_at, e.organization_id, e.key_id, e.model, e.endpoint, e.status,
                    e.input_tokens, e.output_tokens, e.cached_tokens, e.estimated, e.cost_micro_minor,
                    e.request_id, e.source, e.occurred_at.date().replace(day=1),
                ],
            )  # fmt: skip


def raw_rows() -> list[tuple]:
    return sorted(
        UsageEvent.unscoped.values_list("organization_id", "event_id", "occurred_at", "input_tokens")
    )


def test_the_per_organization_key_migration_keeps_the_rows_of_every_partition(tenant, other_tenant):
    acme, globex = tenant.key(), other_tenant.key()
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([BEFORE_PER_ORGANIZATION_KEY])
    old_key = "PRIMARY KEY (event_id, occurred_at)"
    assert primary_keys() == {"usage_event": old_key, "usage_event_default": old_key}
    assert raw_indexes() == ["usage_event_event_id", "usage_event_org_time", "usage_event_pkey"]
    partition_create(date(2019, 3, 1))
    shared, other = uuid.uuid4(), uuid.uuid4()
    in_march, in_the_default = datetime(2019, 3, 14, 15, 9, tzinfo=UTC), datetime(2018, 6, 1, tzinfo=UTC)
    old_rows = [
        raw_event(acme, shared, in_march, 1),
        raw_event(globex, other, in_march, 2),
        raw_event(acme, other, in_the_default, 4),
    ]
    insert_under_the_old_key(*old_rows)
    before = raw_rows()

    executor.loader.build_graph()
    executor.migrate(latest)

    key = "PRIMARY KEY (organization_id, event_id, occurred_at)"
    assert primary_keys() == {"usage_event": key, "usage_event_201903": key, "usage_event_default": key}
    assert raw_indexes() == ["usage_event_org_key_time_id", "usage_event_org_time_id", "usage_event_pkey"]
    assert raw_rows() == before
    assert rows_per_partition() == {"usage_event_201903": 2, "usage_event_default": 1}
    # Another organization's event with an id and time already stored is counted; a repeat is not.
    assert usage_events_ingest(
        [raw_event(globex, shared, in_march, 8), raw_event(acme, shared, in_march, 16)]
    ) == {(globex.organization_id, shared)}
    assert raw_rows() == sorted([*before, (globex.organization_id, shared, in_march, 8)])


BEFORE_REQUEST_LOG = ("usage", "0003_usage_event_unique_per_organization")


def partition_indexes() -> dict[str, list[str]]:
    """The index definitions of each partition, by partition, without their names."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, indexdef FROM pg_indexes WHERE tablename LIKE 'usage_event_%' ORDER BY 1, 2"
        )
        indexes: dict[str, list[str]] = {}
        for table, definition in cursor.fetchall():
            indexes.setdefault(table, []).append(definition.partition(" USING ")[2])
        return {table: sorted(definitions) for table, definitions in indexes.items()}


def test_the_request_log_migration_reads_old_rows_as_served_and_indexes_every_partition(tenant):
    key = tenant.key()
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([BEFORE_REQUEST_LOG])
    partition_create(date(2019, 3, 1))
    event_id = uuid.uuid4()
    insert_under_the_old_key(raw_event(key, event_id, datetime(2019, 3, 14, 15, 9, tzinfo=UTC), 5))

    executor.loader.build_graph()
    executor.migrate(latest)

    assert UsageEvent.unscoped.values_list("event_id", "refusal").get() == (event_id, "")
    expected = [
        "btree (organization_id, event_id, occurred_at)",
        "btree (organization_id, key_id, occurred_at, event_id)",
        "btree (organization_id, occurred_at, event_id)",
    ]
    indexes = partition_indexes()
    assert indexes["usage_event_201903"] == expected
    assert indexes["usage_event_default"] == expected


def test_a_partition_created_later_takes_the_per_organization_key_with_the_rows_it_moves(
    tenant, other_tenant
):
    acme, globex = tenant.key(), other_tenant.key()
    shared, moment = uuid.uuid4(), datetime(2019, 3, 14, 15, 9, tzinfo=UTC)
    inserted = usage_events_ingest([raw_event(acme, shared, moment, 1), raw_event(globex, shared, moment, 2)])
    assert inserted == {(acme.organization_id, shared), (globex.organization_id, shared)}
    assert rows_per_partition() == {"usage_event_default": 2}

    assert partition_create(date(2019, 3, 1)) is True

    assert rows_per_partition() == {"usage_event_201903": 2}
    assert primary_keys()["usage_event_201903"] == "PRIMARY KEY (organization_id, event_id, occurred_at)"
    assert raw_rows() == sorted(
        [(acme.organization_id, shared, moment, 1), (globex.organization_id, shared, moment, 2)]
    )
