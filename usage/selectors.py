"""Usage reads, always from the hourly rollups and always scoped to one organization."""

from datetime import datetime

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDay

from usage.models import UsageRollup

METRICS = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "estimated_requests")
GROUPS = ("model", "key")


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
    rows = UsageRollup.objects.for_organization(organization).filter(hour__gte=start, hour__lt=end)
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    if model:
        rows = rows.filter(model=model)
    period = F("hour") if granularity == "hour" else TruncDay("hour")
    fields = {"period": period}
    if "model" in group_by:
        fields["group_model"] = F("model")
    if "key" in group_by:
        fields["group_key"] = F("key__public_id")
        fields["group_key_name"] = F("key__name")
    rows = (
        rows.annotate(**fields)
        .values(*fields)
        .annotate(**{metric: Sum(metric) for metric in METRICS})
        .order_by(*fields)
    )
    return list(rows)


def usage_totals(*, organization, start: datetime, end: datetime, key_id=None, model=None) -> dict:
    rows = UsageRollup.objects.for_organization(organization).filter(hour__gte=start, hour__lt=end)
    if key_id is not None:
        rows = rows.filter(key_id=key_id)
    if model:
        rows = rows.filter(model=model)
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
