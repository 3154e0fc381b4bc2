from celery import shared_task


@shared_task
def ensure_partitions() -> list[str]:
    """Create the raw usage partitions for the months ahead."""
    from usage.partitions import partitions_ensure

    return partitions_ensure()


@shared_task
def apply_raw_retention() -> list[str]:
    """Drop raw usage partitions older than the retention; rollups are kept for good."""
    from django.conf import settings
    from django.utils import timezone

    from usage.partitions import add_months, month_start, partitions_drop_before

    cutoff = add_months(month_start(timezone.now().date()), -settings.USAGE_RAW_RETENTION_MONTHS)
    return partitions_drop_before(cutoff)
