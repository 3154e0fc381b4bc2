import argparse
import socket

from django.conf import settings
from django.core.management.base import BaseCommand

from edge.streams import parse_shards
from keys.publication import edge_redis_connect
from usage.consumer import shard_consumers


def _shards(value: str) -> tuple[int, ...] | None:
    try:
        return parse_shards(value, settings.USAGE_STREAM_SHARDS)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Command(BaseCommand):
    help = (
        "Consume usage events from the Redis stream into Postgres (runs until SIGTERM, "
        "waiting out Postgres and Redis restarts)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--name",
            default=settings.USAGE_CONSUMER_NAME or socket.gethostname(),
            help="consumer name, stable across restarts of this replica "
            "(default: USAGE_CONSUMER_NAME, else the host name)",
        )
        parser.add_argument("--batch-size", type=int, default=settings.USAGE_BATCH_SIZE)
        parser.add_argument("--max-wait-ms", type=int, default=settings.USAGE_BATCH_MAX_WAIT_MS)
        parser.add_argument("--claim-idle-ms", type=int, default=settings.USAGE_CLAIM_IDLE_MS)
        parser.add_argument(
            "--dead-consumer-idle-ms",
            type=int,
            default=settings.USAGE_DEAD_CONSUMER_IDLE_MS,
            help="remove other consumers idle this long with nothing pending",
        )
        parser.add_argument(
            "--edge-resync",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="re-publish key records and prices when Redis lost them (tg:synced missing)",
        )
        parser.add_argument(
            "--shards",
            type=_shards,
            default=settings.USAGE_CONSUMER_SHARDS,
            help="comma-separated usage stream shards to read, from 0 to USAGE_STREAM_SHARDS - 1 "
            "(default: USAGE_CONSUMER_SHARDS, else all)",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=0,
            help="serve Prometheus metrics (/metrics) and the probes (/healthz, /readyz) on this port",
        )
        parser.add_argument(
            "--metrics-host",
            default="127.0.0.1",
            help="address of that server (a container serves 0.0.0.0, kept internal by the network)",
        )

    def handle(self, *args, **options):
        if options["metrics_port"]:
            from portal.observability import probes_serve

            probes_serve(host=options["metrics_host"], port=options["metrics_port"])
        client = edge_redis_connect(socket_timeout=30, socket_connect_timeout=5)
        consumers = shard_consumers(
            client,
            name=options["name"],
            shards=options["shards"],
            batch_size=options["batch_size"],
            max_wait_ms=options["max_wait_ms"],
            claim_idle_ms=options["claim_idle_ms"],
            dead_consumer_idle_ms=options["dead_consumer_idle_ms"],
            edge_resync=options["edge_resync"],
        )
        streams = ", ".join(consumer.stream for consumer in consumers.consumers)
        self.stdout.write(f"ingest_usage: consumer {options['name']} reading {streams}")
        if consumers.run():
            self.stdout.write("ingest_usage: stopped after finishing its batch")
        else:
            self.stdout.write("ingest_usage: stopped during an outage; its batch stays pending")
