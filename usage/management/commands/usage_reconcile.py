from datetime import UTC, datetime, timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from keys.publication import edge_redis_connect
from usage.reconcile import usage_reconcile


def _moment(value: str) -> datetime:
    if value.endswith("h") and value[:-1].isdigit():
        return timezone.now() - timedelta(hours=int(value[:-1]))
    if value.endswith("d") and value[:-1].isdigit():
        return timezone.now() - timedelta(days=int(value[:-1]))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--since must be an ISO time or like 24h / 7d, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Compare the edge's served counters with the usage rollups and report every difference."

    def add_arguments(self, parser):
        parser.add_argument("--since", required=True, help="ISO time, or a span back from now like 24h or 7d")
        parser.add_argument(
            "--settle-minutes",
            type=int,
            default=5,
            help="skip the most recent minutes (still being ingested)",
        )

    def handle(self, *args, **options):
        since = _moment(options["since"])
        until = timezone.now() - timedelta(minutes=options["settle_minutes"])
        until = until.replace(minute=0, second=0, microsecond=0) if options["settle_minutes"] else None
        client = edge_redis_connect()
        differences = usage_reconcile(client=client, since=since, until=until)
        for d in differences:
            self.stdout.write(
                f"org {d.organization_id} key {d.key_id} {d.hour:%Y-%m-%d %H}:00 {d.metric}: "
                f"edge {d.edge} postgres {d.postgres} (diff {d.edge - d.postgres:+d})"
            )
        self.stdout.write(f"usage_reconcile: {len(differences)} difference(s) since {since.isoformat()}")
        if differences:
            raise SystemExit(1)
