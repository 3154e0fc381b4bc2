"""Usage reads, always from the hourly rollups and always scoped to one organization."""

from datetime import datetime

from django.contrib.postgres.fields import ArrayField
from django.db.models import Count, DateTimeField, F, Func, IntegerField, Min, Sum
from django.db.models.functions import Cast, TruncDay

from usage.models import UsageRollup

METRICS = (
    "requests",
    "errors",
    "refusals",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "estimated_requests",
)
GROUPS = ("model", "key")


class _PriceSpan(Func):
    """Number the spans between price changes (Postgres ``width_bucket`` over a sorted array)."""

    function = "width_bucket"
    output_field = IntegerField()


def _rollups(*, organization, start: datetime, end: datetime, key_id=None, model=None):
    rows = UsageRollup.objects.for_organization(organization).filter(hour__gte=start, hour__lt=end)
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    if model:
        rows = rows.filter(model=model)
    return rows


def group_fields(*, granularity: str | None, group_by: tuple[str, ...]) -> dict:
    """Return the columns a usage row is grouped by: its period (none for a whole window), then
    the requested groups. Their names are the keys of ``usage_series`` rows."""
    fields = {}
    if granularity is not None:
        fields["period"] = F("hour") if granularity == "hour" else TruncDay("hour")
    if "model" in group_by:
        fields["group_model"] = F("model")
    if "key" in group_by:
        fields["group_key"] = F("key__public_id")
        fields["group_key_name"] = F("key__name")
    return fields


def usage_series(
    *,
    organization,
    start: datetime,
    end: datetime,
    granularity: str = "day",
    group_by: tuple[str, ...] = (),
    key_id: int | None = None,
    model: str | None = None,
) -> list[dict]:
    """Sum the rollups per period (hour or day) and the requested groups, oldest first."""
    rows = _rollups(organization=organization, start=start, end=end, key_id=key_id, model=model)
    fields = group_fields(granularity=granularity, group_by=group_by)
    rows = (
        rows.annotate(**fields)
        .values(*fields)
        .annotate(**{metric: Sum(metric) for metric in METRICS})
        .order_by(*fields)
    )
    return list(rows)


def usage_billed_periods(*, organization, start: datetime, end: datetime, key_id=None, model=None) -> list:
    """Return the billing months the window's usage is carried by (late events: a later one)."""
    rows = _rollups(organization=organization, start=start, end=end, key_id=key_id, model=model)
    return sorted(rows.values_list("billed_period", flat=True).distinct())


def usage_token_slices(
    *,
    organization,
    start: datetime,
    end: datetime,
    changes: list[datetime],
    granularity: str | None = None,
    group_by: tuple[str, ...] = (),
    key_id: int | None = None,
    model: str | None = None,
) -> list[dict]:
    """Sum tokens per row group, model and billing month, between the price ``changes``.

    Within one slice no price changes, so the price at its first hour (``first_hour``) prices
    all of it: a month of hourly rollups reads as a few rows per model.
    """
    rows = _rollups(organization=organization, start=start, end=end, key_id=key_id, model=model)
    fields = group_fields(granularity=granularity, group_by=group_by)
    span = _PriceSpan(F("hour"), Cast(list(changes), ArrayField(DateTimeField())))
    return list(
        rows.annotate(**fields, span=span)
        .values(*fields, "model", "billed_period", "span")
        .annotate(
            first_hour=Min("hour"),
            input_tokens=Sum("input_tokens"),
            cached_tokens=Sum("cached_tokens"),
            output_tokens=Sum("output_tokens"),
        )
        .order_by()
    )


def usage_totals(*, organization, start: datetime, end: datetime, key_id=None, model=None) -> dict:
    rows = _rollups(organization=organization, start=start, end=end, key_id=key_id, model=model)
    totals = rows.aggregate(**{metric: Sum(metric) for metric in METRICS})
    return {metric: totals[metric] or 0 for metric in METRICS}


def top_keys(*, organization, start: datetime, end: datetime, limit: int = 10) -> list[dict]:
    return list(
        UsageRollup.objects.for_organization(organization)
        .filter(hour__gte=start, hour__lt=end)
        .values(key_public_id=F("key__public_id"), key_name=F("key__name"))
        .annotate(
            requests=Sum("requests"),
            tokens=Sum(F("input_tokens") + F("output_tokens")),
            models=Count("model", distinct=True),
        )
        .order_by("-requests")[:limit]
    )
