"""Django admin for support staff. Every change a staff member makes is audited."""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.utils.html import format_html

from portal import services
from portal.audit import Actor, audit_record
from portal.models import AuditEvent, Invitation, Membership, Organization, User

# The app list stays on the admin's index and in the breadcrumbs; beside a change list and its
# filters, a third column would leave the list too little room at 1280 px.
admin.site.enable_nav_sidebar = False


def _organization_of(obj):
    if isinstance(obj, Organization):
        return obj
    return getattr(obj, "organization", None)


def truncated(value, limit: int = 32) -> str:
    """Cut a long value for a change list column, keeping the whole of it in a tooltip."""
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    return format_html('<span title="{}">{}…</span>', text, text[: limit - 1])


class ReadOnlyAdminMixin:
    """Staff read these rows; services write them."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AuditedAdmin(admin.ModelAdmin):
    """Record each staff addition, change and deletion as an audit event."""

    def _audit(self, request, obj, action: str, metadata: dict):
        audit_record(
            actor=Actor.staff(request),
            organization=_organization_of(obj),
            action=f"staff.{action}",
            target=obj,
            metadata=metadata,
        )

    def log_addition(self, request, obj, message):
        self._audit(request, obj, "created", {"object": str(obj)})
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        self._audit(request, obj, "changed", {"object": str(obj), "change": str(message)[:2000]})
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            self._audit(request, obj, "deleted", {"object": str(obj)})
        return super().log_deletions(request, queryset)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]


@admin.register(Organization)
class OrganizationAdmin(AuditedAdmin):
    list_display = ["name", "slug", "status", "status_reason", "require_mfa", "created_at"]
    list_filter = ["status", "status_reason", "require_mfa"]
    search_fields = ["name", "slug", "memberships__user__email"]
    readonly_fields = ["status_reason", "created_at"]
    inlines = [MembershipInline]
    actions = ["suspend", "reactivate"]

    def save_model(self, request, obj, form, change):
        """Save plain fields; status and limits go through services so the edge hears of them."""
        if not change:
            super().save_model(request, obj, form, change)
            return
        actor = Actor.staff(request)
        new_status = obj.status
        limits = {
            field: getattr(obj, field)
            for field in services.ORGANIZATION_LIMIT_FIELDS
            if field in form.changed_data
        }
        obj.status = form.initial["status"]
        for field in limits:
            setattr(obj, field, form.initial[field])
        super().save_model(request, obj, form, change)
        if "status" in form.changed_data:
            services.organization_set_status(actor=actor, organization=obj, status=new_status)
        if limits:
            services.organization_set_limits(actor=actor, organization=obj, **limits)
        obj.refresh_from_db()

    @admin.action(description="Suspend selected organizations")
    def suspend(self, request, queryset):
        for organization in queryset:
            services.organization_set_status(
                actor=Actor.staff(request), organization=organization, status=Organization.Status.SUSPENDED
            )

    @admin.action(description="Reactivate selected organizations")
    def reactivate(self, request, queryset):
        for organization in queryset:
            services.organization_set_status(
                actor=Actor.staff(request), organization=organization, status=Organization.Status.ACTIVE
            )


@admin.register(User)
class UserAdmin(AuditedAdmin, BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined", "last_login"]
    list_filter = ["is_staff", "is_superuser", "is_active"]
    search_fields = ["email", "name"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("name",)}),
        ("Access", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
    readonly_fields = ["last_login", "date_joined"]


@admin.register(Membership)
class MembershipAdmin(AuditedAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "organization__name", "organization__slug"]
    autocomplete_fields = ["user", "organization"]


@admin.register(Invitation)
class InvitationAdmin(AuditedAdmin):
    list_display = ["email", "organization", "role", "state", "created_at", "expires_at"]
    list_filter = ["role"]
    search_fields = ["email", "organization__name", "organization__slug"]
    readonly_fields = [
        "organization",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]
    exclude = ["token_hash"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke selected invitations")
    def revoke(self, request, queryset):
        for invitation in queryset:
            if invitation.accepted_at is None:
                services.invitation_revoke(actor=Actor.staff(request), invitation=invitation)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    # Columns that fit beside the filters at 1280 px; the actor type is a filter, and every
    # field, the metadata and user agent included, is on the event's own page.
    list_display = ["time", "action_name", "actor_name", "organization_slug", "target", "ip"]
    list_filter = ["actor_type", "action"]
    list_select_related = ["organization"]
    search_fields = ["action", "actor_label", "target_id", "organization__slug"]
    date_hierarchy = "created_at"

    @admin.display(description="time (UTC)", ordering="created_at")
    def time(self, event: AuditEvent) -> str:
        return f"{event.created_at:%Y-%m-%d %H:%M}"

    @admin.display(description="action", ordering="action")
    def action_name(self, event: AuditEvent) -> str:
        return truncated(event.action, 26)

    @admin.display(description="actor", ordering="actor_label")
    def actor_name(self, event: AuditEvent) -> str:
        return truncated(event.actor_label, 20)

    @admin.display(description="organization", ordering="organization__slug")
    def organization_slug(self, event: AuditEvent) -> str:
        return truncated(event.organization.slug if event.organization else "", 18)

    @admin.display(description="target")
    def target(self, event: AuditEvent) -> str:
        return truncated(f"{event.target_type} {event.target_id}".strip(), 20)

    @admin.display(description="IP address", ordering="ip_address")
    def ip(self, event: AuditEvent) -> str:
        return truncated(event.ip_address, 16)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
