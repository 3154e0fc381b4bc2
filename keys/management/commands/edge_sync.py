from django.core.management.base import BaseCommand

from keys.publication import edge_sync


class Command(BaseCommand):
    help = "Rebuild every key record in Redis from Postgres and drop records that are gone."

    def handle(self, *args, **options):
        written = edge_sync()
        self.stdout.write(f"edge_sync: wrote {written} key records")
