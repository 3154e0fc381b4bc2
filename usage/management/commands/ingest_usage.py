import os
import socket

import redis
from django.conf import settings
from django.core.management.base import BaseCommand

from usage.consumer import UsageConsumer


class Command(BaseCommand):
    help = "Consume usage events from the Redis stream into Postgres (runs until SIGTERM)."

    def add_arguments(self, parser):
        parser.add_argument("--name", default=f"{socket.gethostname()}-{os.getpid()}", help="consumer name")
        parser.add_argument("--batch-size", type=int, default=settings.USAGE_BATCH_SIZE)
        parser.add_argument("--max-wait-ms", type=int, default=settings.USAGE_BATCH_MAX_WAIT_MS)
        parser.add_argument("--claim-idle-ms", type=int, default=settings.USAGE_CLAIM_IDLE_MS)
        parser.add_argument(
            "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port"
        )

    def handle(self, *args, **options):
        if options["metrics_port"]:
            from prometheus_client import start_http_server

            start_http_server(options["metrics_port"], addr="127.0.0.1")
        client = redis.Redis.from_url(settings.EDGE_REDIS_URL or settings.REDIS_URL, socket_timeout=30)
        consumer = UsageConsumer(
            client,
            name=options["name"],
            batch_size=options["batch_size"],
            max_wait_ms=options["max_wait_ms"],
            claim_idle_ms=options["claim_idle_ms"],
        )
        self.stdout.write(f"ingest_usage: consumer {consumer.name} reading {consumer.stream}")
        consumer.run()
        self.stdout.write("ingest_usage: stopped after finishing its batch")
