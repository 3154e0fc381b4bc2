from django.urls import path

from portal.roles import Perm
from portal.views import PlaceholderView

urlpatterns = [
    path(
        "usage/",
        PlaceholderView.as_view(title="Usage", required_permission=Perm.USAGE_VIEW),
        name="org-usage",
    ),
]
