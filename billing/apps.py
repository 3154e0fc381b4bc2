from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"

    def ready(self):
        from billing.metrics import billing_series_initialise

        billing_series_initialise()
