"""The usage stream's shards: an organization's events always go to the same stream.

With one shard (the default) there is one stream, ``tg:usage``, as there always was. With N,
shard ``i`` is the stream ``tg:usage:{s<i>}`` and an organization's events go to shard
``org_id mod N`` (organization ids are sequential, so the shards fill evenly). The braces are a
Redis Cluster hash tag: each shard, and its dead letters, lives in one slot, and the shards
spread over the cluster's masters. The edge and the ingest consumers must be given the same N.
"""

from edge.events import USAGE_STREAM

DEAD_LETTER_STREAM = "tg:usage:dead"
MAX_SHARDS = 1024


def shard_of(org_id: int, shards: int) -> int:
    return org_id % shards


def usage_stream(shard: int, shards: int) -> str:
    return USAGE_STREAM if shards == 1 else f"{USAGE_STREAM}:{{s{shard}}}"


def dead_letter_stream(shard: int, shards: int) -> str:
    return DEAD_LETTER_STREAM if shards == 1 else f"{DEAD_LETTER_STREAM}:{{s{shard}}}"


def parse_shards(text: str, shards: int) -> tuple[int, ...] | None:
    """Parse a consumer's shards, e.g. ``0,2``; empty means all (None). Raise ValueError."""
    if not text.strip():
        return None
    try:
        chosen = tuple(int(item) for item in text.split(","))
    except ValueError:
        raise ValueError(f"must be shard numbers separated by commas, got {text!r}") from None
    if any(not 0 <= shard < shards for shard in chosen):
        raise ValueError(f"must be shard numbers from 0 to {shards - 1}, got {text!r}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"must not repeat a shard, got {text!r}")
    return chosen
