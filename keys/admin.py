"""Django admin for API keys and service accounts: look up, inspect, revoke.

Keys and service accounts are created and changed by tenants. Staff see them read-only and
stop them through the services, so that every stop is audited and reaches the edge; a
deletion would skip both, so there is none.
"""

from django.contrib import admin, messages

from keys import services
from keys.models import ApiKey, ApiKeySecret, ServiceAccount
from portal.admin import AuditedAdmin, ReadOnlyAdminMixin, truncated
from portal.audit import Actor


class ApiKeySecretInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = ApiKeySecret
    extra = 0
    # Never the hash: it is what the edge looks a key up by.
    fields = ["prefix", "last4", "created_at", "expires_at", "revoked_at"]
    readonly_fields = fields
    ordering = ["-created_at", "-id"]
    verbose_name_plural = "secrets (newest first)"


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdminMixin, AuditedAdmin):
    # Columns that fit beside the filters at 1280 px; long names are cut, whole in a tooltip.
    list_display = [
        "public_id",
        "short_name",
        "organization_name",
        "environment",
        "key_status",
        "last_used",
    ]
    list_filter = ["environment", ("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["organization"]
    search_fields = [
        "organization__name",
        "organization__slug",
        "=public_id",
        "secrets__prefix",
        "=secrets__last4",
    ]
    fields = [
        "public_id",
        "organization",
        "name",
        "environment",
        "key_status",
        "created_by",
        "created_at",
        "updated_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "allowed_models",
        "allowed_ips",
        "rpm_limit",
        "tpm_limit",
        "concurrency_limit",
        "budget_monthly_minor",
        "budget_alert_percent",
        "rotation_reminder_days",
        "rotation_reminded_at",
        "metadata",
    ]
    readonly_fields = fields
    inlines = [ApiKeySecretInline]
    actions = ["revoke"]

    @admin.display(description="name", ordering="name")
    def short_name(self, obj: ApiKey) -> str:
        return truncated(obj.name, 20)

    @admin.display(description="organization", ordering="organization__name")
    def organization_name(self, obj: ApiKey) -> str:
        return truncated(obj.organization, 24)

    @admin.display(description="last used (UTC)", ordering="last_used_at")
    def last_used(self, obj: ApiKey) -> str:
        return f"{obj.last_used_at:%Y-%m-%d %H:%M}" if obj.last_used_at else "never"

    @admin.display(description="status")
    def key_status(self, obj: ApiKey) -> str:
        return ApiKey.Status(obj.status).label

    def has_revoke_permission(self, request) -> bool:
        return request.user.has_perm("keys.change_apikey")

    @admin.action(description="Revoke selected keys", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked = 0
        for key in queryset.filter(revoked_at=None):
            services.api_key_revoke(actor=Actor.staff(request), key=key)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


@admin.register(ServiceAccount)
class ServiceAccountAdmin(ReadOnlyAdminMixin, AuditedAdmin):
    list_display = [
        "public_id",
        "name",
        "organization",
        "role",
        "client_id_display",
        "created_at",
        "revoked_at",
    ]
    list_filter = ["role", ("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["organization"]
    search_fields = ["organization__name", "organization__slug", "name", "=public_id", "=client_id_display"]
    fields = [
        "public_id",
        "organization",
        "name",
        "role",
        "client_id_display",
        "created_by",
        "created_at",
        "revoked_at",
    ]
    readonly_fields = fields
    actions = ["revoke"]

    def has_revoke_permission(self, request) -> bool:
        return request.user.has_perm("keys.change_serviceaccount")

    @admin.action(description="Revoke selected service accounts", permissions=["revoke"])
    def revoke(self, request, queryset):
        revoked = 0
        for account in queryset.filter(revoked_at=None):
            services.service_account_revoke(actor=Actor.staff(request), account=account)
            revoked += 1
        self.message_user(request, f"Revoked {revoked} service account(s).", messages.SUCCESS)
