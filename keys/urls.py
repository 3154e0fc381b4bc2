from django.urls import path

from portal.roles import Perm
from portal.views import PlaceholderView

urlpatterns = [
    path(
        "keys/",
        PlaceholderView.as_view(title="API keys", required_permission=Perm.KEYS_VIEW),
        name="org-keys",
    ),
]
