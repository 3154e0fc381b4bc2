from django.urls import path

from portal.roles import Perm
from portal.views import PlaceholderView

urlpatterns = [
    path(
        "billing/",
        PlaceholderView.as_view(title="Billing", required_permission=Perm.BILLING_VIEW),
        name="org-billing",
    ),
]
