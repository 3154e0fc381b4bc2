"""Rate limits, concurrency and budgets, enforced atomically in Redis for every replica.

One Lua script admits a request against every scope (the key, then its organization):
requests and tokens per minute (a sliding window from two fixed windows), concurrent
requests (leases in a sorted set, expiring if an edge dies), and the monthly budget
(a reservation of the worst-case cost). Either every counter moves or none does, so
parallel requests on many replicas cannot overshoot. A second script settles a request:
tokens and cost move from the estimate to the real figure, and the lease is released.

Keys of one organization share a Redis Cluster hash slot (``{o:<org_id>}``).
"""

import hashlib
import itertools
import os
from dataclasses import dataclass
from functools import lru_cache

from edge.batching import ScriptBatcher
from edge.records import KeyRecord, Limits

WINDOW_MS = 60_000
BUDGET_TTL_SECONDS = 40 * 24 * 3600

# YYYYMM of a Unix time in seconds, UTC (the proleptic Gregorian calendar, days from civil).
MONTH_OF = """
local function month_of(seconds)
  local z = math.floor(seconds / 86400) + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return string.format('%04d%02d', y, m)
end
"""

# Every number the scripts keep is a whole number below 2^53: exact in a Lua double, valid for
# Redis's integer commands. Requests are bounded on the way in (edge.metering, Limiter.admit),
# limits and budgets where the scripts read them; counters saturate at MAX_COUNT.
MAX_COUNT = 2**53 - 1
MAX_LIMIT = 10**12  # rpm, tpm, concurrency: a larger limit is held at this (unlimited in practice)
MAX_TOKENS = 10**12  # one request's estimated or settled tokens
MAX_COST = 10**15  # one request's reserved or settled cost, millionths of a cent (10 million units)
MAX_BUDGET = MAX_COUNT - MAX_COST  # a monthly cap in millionths of a cent (about 80 million units)
MAX_LEASE_TTL_MS = 30 * 24 * 3600 * 1000
MAX_SCOPES = 8

# A stored counter as a bounded whole number: missing or unreadable reads 0 (and is overwritten
# by the next write), above MAX_COUNT reads MAX_COUNT.
COUNTER = f"""
local MAX_COUNT = {MAX_COUNT}
local function counter(key, field)
  local v = tonumber(redis.call('HGET', key, field))
  if v == nil or v ~= v or v < 0 then return 0 end
  return math.min(math.floor(v), MAX_COUNT)
end
"""

ADMIT = (
    MONTH_OF
    + """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local month = month_of(tonumber(t[1]))
local win = math.floor(now_ms / 60000)
local weight = 1 - (now_ms % 60000) / 60000
local reset_ms = 60000 - (now_ms % 60000)
local n = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local lease = ARGV[4]
local lease_ttl = tonumber(ARGV[5])
local out = {1, win, month}
for i = 0, n - 1 do
  local rl, cz, bk = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
  local rpm = tonumber(ARGV[6+4*i])
  local tpm = tonumber(ARGV[7+4*i])
  local conc = tonumber(ARGV[8+4*i])
  local cap = tonumber(ARGV[9+4*i])
  local rc = tonumber(redis.call('HGET', rl, 'r:' .. win) or '0')
  local rp = tonumber(redis.call('HGET', rl, 'r:' .. (win - 1)) or '0')
  local tc = tonumber(redis.call('HGET', rl, 't:' .. win) or '0')
  local tp = tonumber(redis.call('HGET', rl, 't:' .. (win - 1)) or '0')
  local requests = rc + rp * weight
  local tokens = tc + tp * weight
  if rpm >= 0 and requests + 1 > rpm then
    return {0, i, 'requests', reset_ms, rpm, math.max(0, math.floor(rpm - requests))}
  end
  if tpm >= 0 and tokens + est > tpm then
    return {0, i, 'tokens', reset_ms, tpm, math.max(0, math.floor(tpm - tokens))}
  end
  if conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', cz, '-inf', now_ms)
    if redis.call('ZCARD', cz) >= conc then
      return {0, i, 'concurrency', 1000, conc, 0}
    end
  end
  if cap >= 0 then
    local spent = tonumber(redis.call('HGET', bk, month) or '0')
    if spent + cost > cap then
      return {0, i, 'budget', 0, cap, math.max(0, cap - spent)}
    end
  end
  table.insert(out, rpm >= 0 and math.floor(rpm - requests - 1) or -1)
  table.insert(out, tpm >= 0 and math.floor(tpm - tokens - est) or -1)
  table.insert(out, reset_ms)
end
for i = 0, n - 1 do
  local rl, cz, bk = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
  redis.call('HINCRBY', rl, 'r:' .. win, 1)
  if est > 0 then redis.call('HINCRBY', rl, 't:' .. win, est) end
  redis.call('HDEL', rl, 'r:' .. (win - 2), 't:' .. (win - 2))
  redis.call('PEXPIRE', rl, 180000)
  if tonumber(ARGV[8+4*i]) >= 0 then
    redis.call('ZADD', cz, now_ms + lease_ttl, lease)
    redis.call('PEXPIRE', cz, lease_ttl * 2)
  end
  if cost > 0 then
    redis.call('HINCRBY', bk, month, cost)
    redis.call('EXPIRE', bk, BUDGET_TTL)
  end
end
return out
""".replace("BUDGET_TTL", str(BUDGET_TTL_SECONDS))
)

SETTLE = (
    COUNTER
    + """
-- Never fails, whatever the arguments: a settlement that failed would be spooled and replayed
-- for ever. Numbers are read as bounded integers, unreadable ones as 0.
local function int(value, lo, hi)
  local v = tonumber(value)
  if v == nil or v ~= v then return 0 end
  return math.max(lo, math.min(hi, math.floor(v)))
end
local n = int(ARGV[1], 0, math.floor(#KEYS / 3))
local token_delta = int(ARGV[2], -MAX_COUNT, MAX_COUNT)
local cost_delta = int(ARGV[3], -MAX_COUNT, MAX_COUNT)
local lease = ARGV[4]
local month = ARGV[5]
local win = ARGV[6]
-- Move a counter by delta, never below 0: a Redis that restarted empty while the request ran
-- lost what it had reserved, and giving back more than is there would let the next requests
-- overshoot the limit or the budget.
local function move(key, field, delta)
  local old = counter(key, field)
  local new = math.max(0, math.min(MAX_COUNT, old + delta))
  if new ~= old then
    redis.call('HSET', key, field, new)
    return true
  end
  return false
end
for i = 0, n - 1 do
  local rl, cz, bk = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
  if token_delta ~= 0 and redis.call('HEXISTS', rl, 'r:' .. win) == 1 then
    move(rl, 't:' .. win, token_delta)
  end
  redis.call('ZREM', cz, lease)
  if cost_delta ~= 0 and move(bk, month, cost_delta) then
    redis.call('EXPIRE', bk, BUDGET_TTL)
  end
end
-- Optionally count the request in the edge's served counters (same hash slot).
if #KEYS > 3 * n then
  local served = KEYS[3 * n + 1]
  move(served, ARGV[7] .. ':requests', 1)
  move(served, ARGV[7] .. ':tokens', int(ARGV[8], 0, MAX_COUNT))
  redis.call('EXPIRE', served, int(ARGV[9], 1, BUDGET_TTL))
end
return 1
""".replace("BUDGET_TTL", str(BUDGET_TTL_SECONDS))
)

SERVED_TTL_SECONDS = 8 * 24 * 3600


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


ADMIT_SHA = _sha(ADMIT)
SETTLE_SHA = _sha(SETTLE)
SCRIPTS = {ADMIT_SHA: ADMIT, SETTLE_SHA: SETTLE}


def served_key(org_id: int, ended_at_ms: int) -> str:
    """The edge's per-organization, per-hour served counters (read by usage_reconcile)."""
    return f"tg:served:{{o:{org_id}}}:{ended_at_ms // 3_600_000}"


def _scope_keys(org_id: int, scope: str) -> list[str]:
    tag = f"{{o:{org_id}}}"
    return [f"tg:rl:{tag}:{scope}", f"tg:conc:{tag}:{scope}", f"tg:budget:{tag}:{scope}"]


def _bounded(value: int, high: int) -> int:
    return min(max(int(value), 0), high)


def _as_arg(value: int | None, high: int) -> int:
    """A limit for the script: -1 for none, else held within [0, high]."""
    return -1 if value is None else _bounded(value, high)


class _Leases:
    """Lease ids unique across processes and replicas: a random prefix per process, a counter."""

    def __init__(self):
        self._pid = 0

    def next(self) -> str:
        if self._pid != os.getpid():  # a new process (or a fork) draws its own prefix
            self._pid = os.getpid()
            self._prefix = os.urandom(8).hex() + ":"
            self._counter = itertools.count()
        return self._prefix + format(next(self._counter), "x")


_leases = _Leases()


@lru_cache(maxsize=65536)
def _plan(org_id: int, key_id: str, key_limits: Limits, org_limits: Limits) -> tuple[tuple, tuple]:
    """The script's keys and limit arguments for a key and its organization (they change only
    with the key record, so they are built once per record, not once per request)."""
    keys: list[str] = []
    args: list = []
    for scope, limits in (("k:" + key_id, key_limits), ("org", org_limits)):
        keys += _scope_keys(org_id, scope)
        # Budgets are in cents; reservations in millionths of a cent.
        budget = limits.budget_minor
        args += [
            _as_arg(limits.rpm, MAX_LIMIT),
            _as_arg(limits.tpm, MAX_LIMIT),
            _as_arg(limits.concurrency, MAX_LIMIT),
            _as_arg(None if budget is None else int(budget) * 1_000_000, MAX_BUDGET),
        ]
    return tuple(keys), tuple(args)


@dataclass(slots=True)
class Admission:
    """An admitted request: what to settle later, and the headers to send."""

    keys: tuple[str, ...]
    lease: str
    window: int
    month: str
    estimated_tokens: int
    reserved_cost: int
    headers: list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Refusal:
    scope: str  # "key" or "organization"
    kind: str  # requests | tokens | concurrency | budget
    reset_ms: int
    limit: int
    remaining: int


def _duration(ms: int) -> str:
    """Format like OpenAI's reset headers: ``1s``, ``6m0s``, ``250ms``."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = -(-ms // 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _headers(limits: list[Limits], values: list) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers, from the tightest scope that has a limit."""
    headers = []
    best_requests = best_tokens = None
    for index, scope in enumerate(limits):
        remaining_requests, remaining_tokens, reset_ms = values[3 * index : 3 * index + 3]
        if scope.rpm is not None and (best_requests is None or remaining_requests < best_requests[1]):
            best_requests = (scope.rpm, remaining_requests, reset_ms)
        if scope.tpm is not None and (best_tokens is None or remaining_tokens < best_tokens[1]):
            best_tokens = (scope.tpm, remaining_tokens, reset_ms)
    for kind, best in (("requests", best_requests), ("tokens", best_tokens)):
        if best is None:
            continue
        limit, remaining, reset_ms = best
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(max(int(remaining), 0)).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), _duration(int(reset_ms)).encode()),
        ]
    return headers


class Limiter:
    """Admit and settle requests with the scripts, through the edge's ScriptBatcher (one pipelined
    round trip for the calls of one event-loop iteration; scripts loaded again if Redis forgot them).

    ``redis`` (redis-py) is not used: every script call goes through ``batcher``. The parameter and
    the ``None`` default stay while app.py still builds the limiter first and sets ``batcher`` after.
    """

    def __init__(self, redis, lease_ttl_seconds: int, batcher: ScriptBatcher | None = None):
        if not 1 <= lease_ttl_seconds * 1000 <= MAX_LEASE_TTL_MS:
            raise ValueError(f"lease_ttl_seconds must be from 1 to {MAX_LEASE_TTL_MS // 1000}")
        self.lease_ttl_ms = lease_ttl_seconds * 1000
        self.batcher = batcher

    @staticmethod
    def scripts() -> dict[str, str]:
        """The scripts by SHA1, for the ScriptBatcher to load."""
        return dict(SCRIPTS)

    def settle_command(self, settle: list | None, event: dict) -> tuple:
        """One script call: the settlement (if the request was admitted) and the request's
        count in the served counters. The script is loaded at start (see ScriptBatcher)."""
        keys, args = settle if settle is not None else ([], [0, 0, 0, "", "", 0])
        keys = [*keys, served_key(event["org_id"], event["ended_at_ms"])]
        tokens = _bounded(event["input_tokens"] + event["output_tokens"], MAX_TOKENS)
        args = [*args[:6], event["key_id"], tokens, SERVED_TTL_SECONDS]
        return ("EVALSHA", SETTLE_SHA, len(keys), *keys, *args)

    async def admit(
        self, record: KeyRecord, *, estimated_tokens: int, reserved_cost: int
    ) -> Admission | Refusal:
        scopes = (("key", record.key_limits), ("organization", record.org_limits))
        keys, args = _plan(record.org_id, record.key_id, record.key_limits, record.org_limits)
        estimated_tokens = _bounded(estimated_tokens, MAX_TOKENS)
        reserved_cost = _bounded(reserved_cost, MAX_COST)
        lease = _leases.next()
        call_args = [len(scopes), estimated_tokens, reserved_cost, lease, self.lease_ttl_ms, *args]
        result = await self.batcher.call(ADMIT_SHA, keys, call_args)
        if int(result[0]) == 0:
            kind = result[2].decode() if isinstance(result[2], bytes) else result[2]
            limit, remaining = int(result[4]), int(result[5])
            if kind == "budget":
                limit, remaining = limit // 1_000_000, remaining // 1_000_000
            return Refusal(
                scope=scopes[int(result[1])][0],
                kind=kind,
                reset_ms=int(result[3]),
                limit=limit,
                remaining=remaining,
            )
        window = int(result[1])
        month = result[2].decode() if isinstance(result[2], bytes) else result[2]
        return Admission(
            keys=keys,
            lease=lease,
            window=window,
            month=month,
            estimated_tokens=estimated_tokens,
            reserved_cost=reserved_cost,
            headers=_headers([limits for _, limits in scopes], [int(v) for v in result[3:]]),
        )

    def settle_args(self, admission: Admission, *, tokens: int, cost: int) -> tuple[list[str], list]:
        tokens = _bounded(tokens, MAX_TOKENS)
        cost = _bounded(cost, MAX_COST)
        return admission.keys, [
            len(admission.keys) // 3,
            tokens - admission.estimated_tokens,
            cost - admission.reserved_cost,
            admission.lease,
            admission.month,
            admission.window,
        ]

    async def settle(self, admission: Admission, *, tokens: int, cost: int) -> None:
        """Settle one request on its own (the edge batches settlements with settle_command)."""
        keys, args = self.settle_args(admission, tokens=tokens, cost=cost)
        await self.batcher.call(SETTLE_SHA, keys, args)
