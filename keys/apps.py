from django.apps import AppConfig


class KeysConfig(AppConfig):
    name = "keys"
    verbose_name = "API keys"

    def ready(self):
        from portal.signals import organization_changed

        organization_changed.connect(_republish, dispatch_uid="keys.republish_organization")


def _republish(sender, organization_id, **kwargs):
    from keys.publication import organization_publish

    organization_publish(organization_id)
