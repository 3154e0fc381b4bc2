from django.db import models

from portal.models import Organization
from portal.tenancy import TenantManager, UnscopedManager


class UsageEvent(models.Model):
    """One served request, as metered. Raw rows live in a table partitioned by month.

    The table is created by SQL in migration 0002 (declarative partitioning is not a
    Django model feature). Event ids are unique per organization: the primary key is
    ``(organization_id, event_id, occurred_at)`` (Postgres needs the partition key in it), so
    an event redelivered with the same id and time is refused by the database, never counted
    twice, and another organization's event with that id is counted on its own.
    """

    pk = models.CompositePrimaryKey("organization_id", "event_id", "occurred_at")
    event_id = models.UUIDField()
    occurred_at = models.DateTimeField()
    organization = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    key = models.ForeignKey("keys.ApiKey", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+")
    model = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=32)
    status = models.SmallIntegerField()
    input_tokens = models.BigIntegerField()
    output_tokens = models.BigIntegerField()
    cached_tokens = models.BigIntegerField()
    estimated = models.BooleanField()
    cost_micro_minor = models.BigIntegerField()
    latency_ms = models.FloatField(null=True)
    ttft_ms = models.FloatField(null=True)
    request_id = models.CharField(max_length=128)
    source = models.CharField(max_length=16)
    billed_period = models.DateField()
    late = models.BooleanField()
    ingested_at = models.DateTimeField()
    # Why the edge refused the request (edge/events.py REFUSAL_REASONS); "" when it was served.
    refusal = models.CharField(max_length=32, blank=True)
    # The key's secret the client presented (keys.ApiKeySecret), when the edge named it.
    secret_id = models.BigIntegerField(null=True)

    objects = TenantManager()
    unscoped = UnscopedManager()

    class Meta:
        managed = False
        db_table = "usage_event"
        default_manager_name = "unscoped"

    def __str__(self) -> str:
        return f"{self.event_id} {self.model}"


class UsageRollup(models.Model):
    """Totals per organization, key, model and hour; updated in the raw insert's transaction."""

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    key = models.ForeignKey("keys.ApiKey", on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=200)
    hour = models.DateTimeField()
    billed_period = models.DateField(help_text="First day of the month whose invoice carries these events.")
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(
        default=0, help_text="Answers with a status of 400 or more, refusals included."
    )
    refusals = models.BigIntegerField(
        default=0, help_text="Requests the edge refused (limits, standing, access)."
    )
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    estimated_requests = models.BigIntegerField(default=0)
    cost_micro_minor = models.BigIntegerField(default=0)

    objects = TenantManager()
    unscoped = UnscopedManager()

    class Meta:
        default_manager_name = "unscoped"
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "key", "model", "hour", "billed_period"], name="usage_rollup_unique"
            )
        ]
        indexes = [
            models.Index(fields=["organization", "hour"]),
            models.Index(fields=["organization", "billed_period"]),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}/{self.key_id}/{self.model} @ {self.hour:%Y-%m-%d %H}:00"


class ClosedPeriod(models.Model):
    """A billing month that is closed: events that arrive for it go to the next open month."""

    period = models.DateField(unique=True, help_text="First day of the closed month.")
    closed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-period"]

    def __str__(self) -> str:
        return f"closed {self.period:%Y-%m}"
