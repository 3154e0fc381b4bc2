from django.core.management.base import BaseCommand

from billing.edge_prices import prices_publish
from keys.publication import edge_sync


class Command(BaseCommand):
    help = "Rebuild every key and price record in Redis from Postgres and drop records that are gone."

    def handle(self, *args, **options):
        written = edge_sync()
        prices = prices_publish()
        self.stdout.write(f"edge_sync: wrote {written} key records and {prices} prices")
