from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Tollgate portal"

    def ready(self):
        from portal import auth  # noqa: F401  (connects the audit signal receivers)
