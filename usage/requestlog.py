"""The request log: an organization's recent requests from the raw usage table, newest first.

Pages are read by keyset, ``(occurred_at, event_id)`` descending, never by OFFSET: a page
costs the same however deep it is, and rows arriving meanwhile never shift the next page.
Each query is bounded below by the retention (``USAGE_REQUEST_LOG_DAYS``), which prunes the
older monthly partitions, and is served by an index that ends in the keyset (migration 0004).
"""

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import BooleanField, Q, QuerySet
from django.db.models.expressions import RawSQL

from usage.models import UsageEvent, UsageRollup

PAGE_SIZE = 50
# Each class of the status filter, as a condition on the raw rows. 4xx includes refusals.
STATUS_CLASSES = {
    "2xx": Q(status__gte=200, status__lt=300),
    "4xx": Q(status__gte=400, status__lt=500),
    "5xx": Q(status__gte=500, status__lt=600),
    "refused": ~Q(refusal=""),
}


@dataclass(frozen=True)
class Cursor:
    """The last row of a page: the next page starts after it."""

    occurred_at: datetime
    event_id: uuid.UUID

    def encode(self) -> str:
        micros = (self.occurred_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        return f"{micros}_{self.event_id}"

    @classmethod
    def decode(cls, text: str) -> "Cursor":
        """Read ``encode``'s text; raise ValueError for anything else."""
        micros, _, event_id = text.partition("_")
        if not micros.isdigit():
            raise ValueError("not a request log cursor")
        occurred_at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))
        return cls(occurred_at=occurred_at, event_id=uuid.UUID(event_id))


def request_log_since(*, now: datetime) -> datetime:
    """The oldest moment the log shows."""
    return now - timedelta(days=settings.USAGE_REQUEST_LOG_DAYS)


def request_log_query(
    *,
    organization,
    now: datetime,
    start: datetime | None = None,
    end: datetime | None = None,
    key_id: int | None = None,
    model: str = "",
    status_class: str = "",
    after: Cursor | None = None,
) -> QuerySet[UsageEvent]:
    """Return the organization's requests in ``[start, end)``, newest first, within retention."""
    since = request_log_since(now=now)
    rows = UsageEvent.objects.for_organization(organization).filter(
        occurred_at__gte=max(start, since) if start else since
    )
    if end is not None:
        rows = rows.filter(occurred_at__lt=end)
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    if model:
        rows = rows.filter(model=model)
    if status_class:
        rows = rows.filter(STATUS_CLASSES[status_class])
    if after is not None:
        # A row comparison, which the index's (occurred_at, event_id) columns answer directly.
        rows = rows.filter(
            RawSQL(
                "(usage_event.occurred_at, usage_event.event_id) < (%s, %s)",
                (after.occurred_at, after.event_id),
                output_field=BooleanField(),
            )
        )
    return rows.order_by("-occurred_at", "-event_id")


def request_log_page(*, limit: int = PAGE_SIZE, **filters) -> tuple[list[UsageEvent], Cursor | None]:
    """Return one page of ``request_log_query`` with each row's key, and the next page's cursor
    (None on the last page)."""
    rows = list(request_log_query(**filters).select_related("key")[: limit + 1])
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], Cursor(occurred_at=last.occurred_at, event_id=last.event_id)


def request_log_models(*, organization, now: datetime) -> list[str]:
    """Return the models the organization's rollups name within the log's retention: the
    model filter's choices, read from the small table."""
    since = request_log_since(now=now).replace(minute=0, second=0, microsecond=0)
    return list(
        UsageRollup.objects.for_organization(organization)
        .filter(hour__gte=since)
        .exclude(model="")
        .values_list("model", flat=True)
        .distinct()
        .order_by("model")
    )
