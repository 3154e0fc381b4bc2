from django.urls import path

from keys import views

urlpatterns = [
    path("keys/", views.KeyListView.as_view(), name="org-keys"),
    path("keys/new/", views.KeyCreateView.as_view(), name="org-key-create"),
    path("keys/<str:key_id>/", views.KeyDetailView.as_view(), name="org-key"),
    path("keys/<str:key_id>/edit/", views.KeyEditView.as_view(), name="org-key-edit"),
    path("keys/<str:key_id>/secret/<slug:reveal_id>/", views.KeySecretView.as_view(), name="org-key-secret"),
    path("keys/<str:key_id>/rotate/", views.KeyRotateView.as_view(), name="org-key-rotate"),
    path("keys/<str:key_id>/revoke/", views.KeyRevokeView.as_view(), name="org-key-revoke"),
    path("service-accounts/", views.ServiceAccountListView.as_view(), name="org-service-accounts"),
    path(
        "service-accounts/<str:account_id>/secret/<slug:reveal_id>/",
        views.ServiceAccountSecretView.as_view(),
        name="org-service-account-secret",
    ),
    path(
        "service-accounts/<str:account_id>/revoke/",
        views.ServiceAccountRevokeView.as_view(),
        name="org-service-account-revoke",
    ),
]
