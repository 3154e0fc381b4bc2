"""How far ingestion is behind: the age of the oldest usage event not yet acknowledged.

Read by each consumer (its ``tollgate_ingest_lag_seconds`` gauge) and by the web's ``/metrics``
at scrape time, so the number is still there when every consumer is down. It imports no
metric, so that the web can use it without exporting the consumer's series.
"""

import redis


def _milliseconds(entry_id) -> int:
    if isinstance(entry_id, bytes):
        entry_id = entry_id.decode()
    return int(str(entry_id).partition("-")[0])


def ingest_lag_seconds(client: redis.Redis, *, stream: str, group: str) -> float:
    """Return the age in seconds of the group's oldest unacknowledged or unread entry, 0 if none.

    Entry ids carry the Redis server's clock in milliseconds; the age is taken against the
    same clock (TIME), so a skewed clock on this host does not move it.
    """
    try:
        groups = {info["name"].decode(): info for info in client.xinfo_groups(stream)}
    except redis.ResponseError:  # the stream does not exist: nothing waits
        return 0.0
    info = groups.get(group)
    oldest = None
    if info is None:
        # No consumer ever started: every entry is waiting.
        first = client.xrange(stream, count=1)
        oldest = first[0][0] if first else None
    elif info["pending"]:
        oldest = client.xpending(stream, group)["min"]
    else:
        unread = client.xrange(stream, min=f"({info['last-delivered-id'].decode()}", count=1)
        oldest = unread[0][0] if unread else None
    if oldest is None:
        return 0.0
    seconds, microseconds = client.time()
    now_ms = seconds * 1000 + microseconds // 1000
    return max(0, now_ms - _milliseconds(oldest)) / 1000
