from django.urls import path

from billing import views

urlpatterns = [
    path("billing/", views.BillingView.as_view(), name="org-billing"),
    path("billing/cards/setup/", views.CardSetupView.as_view(), name="org-billing-card-setup"),
    path("billing/cards/", views.CardAddView.as_view(), name="org-billing-card-add"),
    path(
        "billing/cards/<str:card_id>/default/",
        views.CardDefaultView.as_view(),
        name="org-billing-card-default",
    ),
    path(
        "billing/cards/<str:card_id>/remove/", views.CardRemoveView.as_view(), name="org-billing-card-remove"
    ),
    path("billing/details/", views.BillingDetailsView.as_view(), name="org-billing-details"),
    path(
        "billing/invoices/<str:invoice_id>/pay/",
        views.InvoicePayView.as_view(),
        name="org-billing-invoice-pay",
    ),
]
