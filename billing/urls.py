from django.urls import path

from billing import views

urlpatterns = [
    path("billing/", views.BillingView.as_view(), name="org-billing"),
]
