from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from billing import api as billing_api
from keys import api as keys_api
from portal.api import views
from usage import api as usage_api

urlpatterns = [
    path("v1/organization", views.OrganizationView.as_view(), name="api-organization"),
    path("v1/members", views.MemberListView.as_view(), name="api-members"),
    path("v1/members/<int:member_id>", views.MemberDetailView.as_view(), name="api-member"),
    path("v1/invitations", views.InvitationListView.as_view(), name="api-invitations"),
    path(
        "v1/invitations/<int:invitation_id>/revoke",
        views.InvitationRevokeView.as_view(),
        name="api-invitation-revoke",
    ),
    path("v1/keys", keys_api.KeyListView.as_view(), name="api-keys"),
    path("v1/keys/<str:key_id>", keys_api.KeyDetailView.as_view(), name="api-key"),
    path("v1/keys/<str:key_id>/rotate", keys_api.KeyRotateView.as_view(), name="api-key-rotate"),
    path("v1/keys/<str:key_id>/revoke", keys_api.KeyRevokeView.as_view(), name="api-key-revoke"),
    path("v1/usage", usage_api.UsageView.as_view(), name="api-usage"),
    path("v1/usage/events", usage_api.UsageEventsView.as_view(), name="api-usage-events"),
    path("v1/billing/upcoming", billing_api.UpcomingView.as_view(), name="api-billing-upcoming"),
    path("v1/invoices", billing_api.InvoiceListView.as_view(), name="api-invoices"),
    path("v1/invoices/<str:invoice_id>", billing_api.InvoiceDetailView.as_view(), name="api-invoice"),
    path("v1/invoices/<str:invoice_id>/pay", billing_api.InvoicePayView.as_view(), name="api-invoice-pay"),
    path("v1/payment-methods", billing_api.PaymentMethodListView.as_view(), name="api-payment-methods"),
    path(
        "v1/payment-methods/<str:payment_method_id>",
        billing_api.PaymentMethodDetailView.as_view(),
        name="api-payment-method",
    ),
    path(
        "v1/payment-methods/<str:payment_method_id>/default",
        billing_api.PaymentMethodDefaultView.as_view(),
        name="api-payment-method-default",
    ),
    path("v1/billing/details", billing_api.BillingDetailsView.as_view(), name="api-billing-details"),
    path("v1/audit-events", views.AuditEventListView.as_view(), name="api-audit-events"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
]
