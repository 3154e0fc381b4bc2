from django.core.management.base import BaseCommand

from keys.publication import edge_resync


class Command(BaseCommand):
    help = (
        "Rebuild every key and price record in Redis from Postgres, drop records that are gone, "
        "and mark the data plane as synced (tg:synced)."
    )

    def handle(self, *args, **options):
        written, prices = edge_resync()
        self.stdout.write(f"edge_sync: wrote {written} key records and {prices} prices")
