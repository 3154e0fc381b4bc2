import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.errors import BillingError
from billing.webhooks import webhook_events_backfill

_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
# Stripe lists events of the last 30 days only.
_LONGEST = timedelta(days=30)


def _duration(value: str) -> timedelta:
    match = re.fullmatch(r"([1-9][0-9]{0,5})([mhd])", value)
    if match is None:
        raise CommandError(
            f"--since must be a number of minutes, hours or days (30m, 24h, 7d), got {value!r}"
        )
    duration = timedelta(**{_UNITS[match[2]]: int(match[1])})
    if duration > _LONGEST:
        raise CommandError(
            f"--since may reach back 30 days at most (Stripe keeps no older events), got {value!r}"
        )
    return duration


class Command(BaseCommand):
    help = (
        "Backfill Stripe invoice events that never arrived as webhooks: store each one not yet stored "
        "and process it."
    )

    def add_arguments(self, parser):
        parser.add_argument("--since", default="24h", help="how far back to look: 30m, 24h, 7d (default 24h)")

    def handle(self, *args, **options):
        since = timezone.now() - _duration(options["since"])
        try:
            listed, new = webhook_events_backfill(since=since)
        except BillingError as error:
            raise CommandError(f"Stripe could not be read: {error.message}") from None
        self.stdout.write(
            f"billing_sync_events since {since:%Y-%m-%d %H:%M:%S} UTC: {listed} event(s) at Stripe, "
            f"{new} new stored and queued"
        )
