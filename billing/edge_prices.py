"""Prices the portal publishes to Redis for the edge's budget reservations (schema v1).

``tg:price:<model>`` holds ``{"v": 1, "model": "...", "input_per_mtok_minor": "250",
"output_per_mtok_minor": "1000", "cached_input_per_mtok_minor": "125", "currency": "usd",
"effective_from": "2026-11-01T00:00:00+00:00"}`` — decimal strings, cents per million tokens,
for the price in effect now. A change publishes ``{"v": 1, "prices": [model]}`` on
``tg:invalidate``.
"""

import json

from django.db.models import OuterRef, Subquery
from django.utils import timezone

from billing.models import ModelPrice
from keys.edge_record import INVALIDATE_CHANNEL
from keys.publication import edge_redis

PRICE_PREFIX = "tg:price:"


def price_record(price: ModelPrice) -> dict:
    return {
        "v": 1,
        "model": price.model,
        "input_per_mtok_minor": str(price.input_per_mtok_minor),
        "output_per_mtok_minor": str(price.output_per_mtok_minor),
        "cached_input_per_mtok_minor": str(price.cached_input_per_mtok_minor),
        "currency": price.currency,
        "effective_from": price.effective_from.isoformat(),
    }


def prices_in_effect(now=None):
    now = now or timezone.now()
    latest = (
        ModelPrice.objects.filter(model=OuterRef("model"), effective_from__lte=now)
        .order_by("-effective_from")
        .values("pk")[:1]
    )
    return ModelPrice.objects.filter(pk=Subquery(latest))


def prices_publish() -> int:
    """Write the price in effect for every model; drop records of models without one."""
    client = edge_redis()
    current = {price.model: price for price in prices_in_effect()}
    stale = [
        name
        for name in client.scan_iter(match=PRICE_PREFIX + "*", count=500)
        if name.decode()[len(PRICE_PREFIX) :] not in current
    ]
    changed = []
    with client.pipeline(transaction=False) as pipe:
        for model, price in current.items():
            payload = json.dumps(price_record(price), separators=(",", ":"))
            pipe.set(PRICE_PREFIX + model, payload)
            changed.append(model)
        for name in stale:
            pipe.delete(name)
            changed.append(name.decode()[len(PRICE_PREFIX) :])
        pipe.execute()
    if changed:  # after the writes, and outside the pipeline: see keys.publication.keys_publish
        client.publish(INVALIDATE_CHANNEL, json.dumps({"v": 1, "prices": changed}))
    return len(current)
