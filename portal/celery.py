import os

from celery import Celery
from celery.signals import celeryd_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Periodic schedules live in code; later issues add their jobs here.
app.conf.beat_schedule = {}


@celeryd_init.connect
def _init_sentry(**_kwargs):
    from django.conf import settings

    if settings.SENTRY_DSN:
        from portal.observability import sentry_init

        sentry_init(settings.SENTRY_DSN, settings.SENTRY_ENVIRONMENT)
