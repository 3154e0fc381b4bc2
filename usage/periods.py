"""Closing a usage month, serialised with ingestion.

Ingestion decides an event's billed period inside its insert transaction, holding a shared
advisory lock; closing a month takes the same lock exclusively. So a batch either commits
before the close (and the invoice counts it) or reads the closed month and moves its events
to the next open one: never both, never neither.
"""

from datetime import date

from django.db import connection, transaction

from usage.models import ClosedPeriod

PERIOD_LOCK = (7402, 0)  # pg_advisory_xact_lock(class, key); 7401 is per-organization posting


def closed_periods_locked() -> set[date]:
    """Return the closed months, holding the close lock shared until the transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", PERIOD_LOCK)
    return set(ClosedPeriod.objects.values_list("period", flat=True))


def usage_period_close(*, period: date) -> bool:
    """Close a month once every batch that read it open has committed; False if already closed."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", PERIOD_LOCK)
        _closed, created = ClosedPeriod.objects.get_or_create(period=period)
    return created
