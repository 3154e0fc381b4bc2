from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from portal.ids import public_id
from portal.models import Organization
from portal.roles import Role
from portal.tenancy import TenantManager, TenantQuerySet, UnscopedManager


def new_key_id() -> str:
    return public_id("key")


def new_service_account_id() -> str:
    return public_id("sa")


class _LiveMixin:
    def live(self, now=None):
        """Neither revoked nor past ``expires_at``."""
        now = now or timezone.now()
        return self.filter(revoked_at=None).filter(Q(expires_at=None) | Q(expires_at__gt=now))


class ApiKeyQuerySet(_LiveMixin, TenantQuerySet):
    pass


class ApiKeyUnscopedQuerySet(_LiveMixin, models.QuerySet):
    pass


class ApiKey(models.Model):
    """A tenant's API key: identity, scopes, limits and budget. Its secrets live in ApiKeySecret."""

    class Environment(models.TextChoices):
        LIVE = "live", "Live"
        TEST = "test", "Test"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    public_id = models.CharField(max_length=40, unique=True, default=new_key_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    environment = models.CharField(max_length=8, choices=Environment.choices, default=Environment.LIVE)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    allowed_models = ArrayField(models.CharField(max_length=200), default=list, blank=True)
    allowed_ips = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    rpm_limit = models.PositiveIntegerField(null=True, blank=True)
    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    concurrency_limit = models.PositiveIntegerField(null=True, blank=True)
    budget_monthly_minor = models.BigIntegerField(
        null=True, blank=True, validators=[MinValueValidator(0)], help_text="Monthly spend cap in cents."
    )
    budget_alert_percent = models.PositiveSmallIntegerField(
        default=80, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    rotation_reminder_days = models.PositiveSmallIntegerField(null=True, blank=True)
    rotation_reminded_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    objects = TenantManager.from_queryset(ApiKeyQuerySet)()
    unscoped = UnscopedManager.from_queryset(ApiKeyUnscopedQuerySet)()

    class Meta:
        default_manager_name = "unscoped"
        ordering = ["-public_id"]
        indexes = [models.Index(fields=["organization", "-public_id"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(budget_alert_percent__gte=1) & Q(budget_alert_percent__lte=100),
                name="apikey_alert_percent_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"

    @property
    def status(self) -> str:
        if self.revoked_at:
            return self.Status.REVOKED
        if self.expires_at and self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        return self.Status.ACTIVE

    @property
    def budget_alert_minor(self) -> int | None:
        if self.budget_monthly_minor is None:
            return None
        return self.budget_monthly_minor * self.budget_alert_percent // 100


class ApiKeySecretQuerySet(_LiveMixin, models.QuerySet):
    pass


class ApiKeySecret(models.Model):
    """One secret of a key, stored as an HMAC only. At most two are live: current and previous."""

    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="secrets")
    secret_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=16)
    last4 = models.CharField(max_length=4)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="End of the rotation grace.")
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Moved forward by ingest, per consumer batch, from the events the edge tags with this secret.
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeySecretQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.prefix}…{self.last4}"

    def is_live(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ServiceAccount(models.Model):
    """A machine identity: an OAuth2 client bound to one organization and one role."""

    public_id = models.CharField(max_length=40, unique=True, default=new_service_account_id, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="service_accounts")
    name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=Role.choices)
    client = models.OneToOneField(
        "allauth_idp_oidc.Client",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="service_account",
    )
    client_id_display = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TenantManager()
    unscoped = UnscopedManager()

    class Meta:
        default_manager_name = "unscoped"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"


# Top-level names for the OpenAPI enums.
KeyStatus = ApiKey.Status
KeyEnvironment = ApiKey.Environment
