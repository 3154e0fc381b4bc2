"""The usage event: one per finished request, from the edge to the ingest consumer.

The edge writes it (``XADD tg:usage``, or its spool); ``usage/ingest.py`` validates and
stores it. This is schema version 1; both sides read this one definition.
"""

from typing import TypedDict

USAGE_STREAM = "tg:usage"
SCHEMA_VERSION = 1


class UsageEvent(TypedDict):
    v: int  # SCHEMA_VERSION
    event_id: str  # UUIDv7 minted by the edge: ingestion counts each id once
    request_id: str
    key_id: str  # the key's public id (key_…)
    org_id: int
    environment: str  # live | test
    endpoint: str  # chat.completions | completions | embeddings
    model: str
    stream: bool
    status: int  # the answer's HTTP status; 499 when the client left first
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    estimated: bool  # tokens counted by the edge's tokenizer, not reported by the upstream
    cost_micro_minor: int  # millionths of a minor currency unit, at the price the edge knew
    latency_ms: float
    ttft_ms: float | None
    upstream: str
    started_at_ms: int
    ended_at_ms: int
