"""Monthly partitions of the raw usage table, created ahead and dropped after retention."""

from datetime import date

from django.db import connection, transaction
from django.utils import timezone

TABLE = "usage_event"


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"{TABLE}_{month:%Y%m}"


def existing_partitions() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname FROM pg_inherits
            JOIN pg_class parent ON pg_inherits.inhparent = parent.oid
            JOIN pg_class child ON pg_inherits.inhrelid = child.oid
            WHERE parent.relname = %s ORDER BY child.relname
            """,
            [TABLE],
        )
        return [row[0] for row in cursor.fetchall()]


def partition_create(month: date) -> bool:
    """Create the partition for a month; rows already in the default partition move into it."""
    month = month_start(month)
    name = partition_name(month)
    if name in existing_partitions():
        return False
    end = add_months(month, 1)
    with transaction.atomic(), connection.cursor() as cursor:
        # A partition cannot be attached while the default holds rows of its range, so
        # move those rows aside, create the partition, and put them back, in one transaction.
        cursor.execute(f"LOCK TABLE {TABLE}_default IN ACCESS EXCLUSIVE MODE")
        moving = f"{name}_moving"
        cursor.execute(f"CREATE TEMP TABLE {moving} (LIKE {TABLE})")
        # Table names below are built from dates, never from input.
        cursor.execute(
            f"WITH moved AS (DELETE FROM {TABLE}_default WHERE occurred_at >= %s AND occurred_at < %s RETURNING *) "  # noqa: S608
            f"INSERT INTO {moving} SELECT * FROM moved",
            [month, end],
        )
        cursor.execute(
            f"CREATE TABLE {name} PARTITION OF {TABLE} FOR VALUES FROM (%s) TO (%s)",
            [month.isoformat(), end.isoformat()],
        )
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM {moving}")  # noqa: S608
        cursor.execute(f"DROP TABLE {moving}")
    return True


def partitions_ensure(*, today: date | None = None, months_back: int = 1, months_ahead: int = 3) -> list[str]:
    """Make sure partitions exist from ``months_back`` before this month to ``months_ahead`` after.

    This month is the UTC one, as the partition bounds are: ``date.today()`` would be the
    host's local date, and would bypass the clock that tests move.
    """
    today = today or timezone.now().date()
    created = []
    for offset in range(-months_back, months_ahead + 1):
        month = add_months(month_start(today), offset)
        if partition_create(month):
            created.append(partition_name(month))
    return created


def partitions_drop_before(cutoff: date) -> list[str]:
    """Drop monthly partitions that end on or before ``cutoff`` (raw retention). Rollups stay."""
    dropped = []
    for name in existing_partitions():
        suffix = name.removeprefix(f"{TABLE}_")
        if not suffix.isdigit():
            continue
        month = date(int(suffix[:4]), int(suffix[4:]), 1)
        if add_months(month, 1) <= cutoff:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TABLE {name}")
            dropped.append(name)
    return dropped
