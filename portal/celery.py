import os

from celery import Celery
from celery.signals import celeryd_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Periodic schedules live in code.
app.conf.beat_schedule = {
    "reconcile-edge-records": {"task": "keys.tasks.reconcile_edge_records", "schedule": 300.0},
    "send-rotation-reminders": {"task": "keys.tasks.send_rotation_reminders", "schedule": 3600.0},
    "publish-prices": {"task": "billing.tasks.publish_prices", "schedule": 60.0},
    "close-billing-periods": {"task": "billing.tasks.close_due_periods", "schedule": 900.0},
    "reconcile-billing": {"task": "billing.tasks.reconcile_period", "schedule": 24 * 3600.0},
    "retry-stripe-webhooks": {"task": "billing.tasks.webhook_retry_due", "schedule": 300.0},
    "billing-dunning": {"task": "billing.tasks.dunning_run", "schedule": 3600.0},
    "usage-partitions-ahead": {"task": "usage.tasks.ensure_partitions", "schedule": 6 * 3600.0},
    "usage-raw-retention": {"task": "usage.tasks.apply_raw_retention", "schedule": 24 * 3600.0},
    "purge-idempotency-records": {"task": "portal.tasks.purge_idempotency_records", "schedule": 3600.0},
}


@celeryd_init.connect
def _init_sentry(**_kwargs):
    from django.conf import settings

    if settings.SENTRY_DSN:
        from portal.observability import sentry_init

        sentry_init(settings.SENTRY_DSN, settings.SENTRY_ENVIRONMENT)


@worker_ready.connect
def _serve_metrics(**_kwargs):
    from django.conf import settings

    if settings.WORKER_METRICS_PORT:
        from portal.observability import probes_serve

        probes_serve(host=settings.WORKER_METRICS_HOST, port=settings.WORKER_METRICS_PORT)
