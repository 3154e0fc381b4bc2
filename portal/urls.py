from allauth.account import views as account_views
from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django_ratelimit.decorators import ratelimit

from billing.views import stripe_webhook
from portal import views

# django-ratelimit in front of allauth's own limits: per client IP, POST only.
login_view = ratelimit(key="ip", rate=lambda g, r: settings.RATELIMIT_LOGIN, method="POST")(
    account_views.login
)
signup_view = ratelimit(key="ip", rate=lambda g, r: settings.RATELIMIT_SIGNUP, method="POST")(
    account_views.signup
)

org_patterns = [
    path("", views.DashboardView.as_view(), name="org-dashboard"),
    path("members/", views.MembersView.as_view(), name="org-members"),
    path(
        "members/<int:membership_id>/role/",
        views.MemberActionView.as_view(action="role"),
        name="org-member-role",
    ),
    path(
        "members/<int:membership_id>/remove/",
        views.MemberActionView.as_view(action="remove"),
        name="org-member-remove",
    ),
    path(
        "invitations/<int:invitation_id>/resend/",
        views.InvitationActionView.as_view(action="resend"),
        name="org-invitation-resend",
    ),
    path(
        "invitations/<int:invitation_id>/revoke/",
        views.InvitationActionView.as_view(action="revoke"),
        name="org-invitation-revoke",
    ),
    path("audit/", views.AuditLogView.as_view(), name="org-audit"),
    path("audit.csv", views.AuditExportView.as_view(), name="org-audit-export"),
    path("settings/", views.SettingsView.as_view(), name="org-settings"),
]

urlpatterns = [
    path("", views.console_home, name="console-home"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("billing/stripe/webhook/", stripe_webhook, name="stripe-webhook"),
    path("api/", include("portal.api.urls")),
    path("accounts/login/", login_view, name="account_login"),
    path("accounts/signup/", signup_view, name="account_signup"),
    path("accounts/", include("allauth.urls")),
    path("", include("allauth.idp.urls")),
    path("orgs/new/", views.OrganizationCreateView.as_view(), name="org-create"),
    path("invitations/", views.PendingInvitationsView.as_view(), name="invitations-pending"),
    path(
        "invitations/pending/<int:invitation_id>/accept/",
        views.PendingInvitationActionView.as_view(action="accept"),
        name="invitation-pending-accept",
    ),
    path(
        "invitations/pending/<int:invitation_id>/decline/",
        views.PendingInvitationActionView.as_view(action="decline"),
        name="invitation-pending-decline",
    ),
    path("invitations/<str:token>/", views.InvitationAcceptView.as_view(), name="invitation-accept"),
    path("o/<slug:org_slug>/", include(org_patterns)),
    path("o/<slug:org_slug>/", include("keys.urls")),
    path("o/<slug:org_slug>/", include("usage.urls")),
    path("o/<slug:org_slug>/", include("billing.urls")),
]

handler403 = "portal.views.error_403"
handler404 = "portal.views.error_404"
handler500 = "portal.views.error_500"
