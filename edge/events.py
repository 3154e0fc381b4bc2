"""The usage event: one per finished request, from the edge to the ingest consumer.

The edge writes it (``XADD tg:usage``, or its spool); ``usage/ingest.py`` validates and
stores it. This is schema version 1; both sides read this one definition.

A request of a known key that the edge refuses (401 for its standing, 402, 403, 429) has an
event too, with the ``refusal`` reason, no tokens and no cost: counted, never billed.
``refusal`` was added within version 1, so it is absent from served requests' events and
from every event written before it; absent reads as served. ``secret_id`` (which of the key's
secrets was used, from its record) was added within version 1 too: absent or null, no
secret's last use moves.
"""

from typing import NotRequired, TypedDict

USAGE_STREAM = "tg:usage"
SCHEMA_VERSION = 1

# Why the edge refused a known key's request: a fixed set, so that it can be stored and filtered.
REFUSAL_REASONS = frozenset(
    {
        "key_revoked",  # 401
        "key_expired",  # 401
        "secret_rotated",  # 401: the rotated secret's grace period has ended
        "organization_suspended",  # 402
        "billing_suspended",  # 402
        "ip_not_allowed",  # 403
        "model_not_allowed",  # 403
        "rate_limit_rpm",  # 429
        "rate_limit_tpm",  # 429
        "concurrency_limit",  # 429
        "budget_exceeded",  # 429 (insufficient_quota): the key's or organization's monthly budget
    }
)


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
    refusal: NotRequired[str]  # one of REFUSAL_REASONS; absent when the request was served
    secret_id: NotRequired[int | None]  # the key's secret that was presented (its record's)
