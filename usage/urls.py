from django.urls import path

from usage import views

urlpatterns = [
    path("usage/", views.UsageView.as_view(), name="org-usage"),
    path("usage/requests/", views.RequestLogView.as_view(), name="org-usage-requests"),
    path("usage.csv", views.UsageExportView.as_view(), name="org-usage-export"),
]
