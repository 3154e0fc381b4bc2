"""Rate limits, concurrency and budgets, enforced atomically in Redis for every replica.

One Lua script admits a request against every scope (the key, then its organization):
requests and tokens per minute (a sliding window from two fixed windows), concurrent
requests (leases in a sorted set, expiring if an edge dies), and the monthly budget
(a reservation of the worst-case cost). Either every counter moves or none does, so
parallel requests on many replicas cannot overshoot. A second script settles a request:
tokens and cost move from the estimate to the real figure, and the lease is released.

A refused request learns how long it must really wait: the sliding window still counts the
previous minute after the fixed one turns, so the wait is solved from both windows' counts,
not taken as the time to the next minute. A request larger than a limit learns that no wait
will do.

Keys of one organization share a Redis Cluster hash slot (``{o:<org_id>}``).
"""

import hashlib
import itertools
import os
from dataclasses import dataclass
from functools import lru_cache

from edge.batching import ScriptBatcher
from edge.errors import EdgeError
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
local function bounded(value)
  local v = tonumber(value)
  if v == nil or v ~= v or v < 0 then return 0 end
  return math.min(math.floor(v), MAX_COUNT)
end
local function counter(key, field)
  return bounded(redis.call('HGET', key, field))
end
"""

# The sliding window. A scope's count at ``elapsed`` ms into a minute window is the window's own
# count plus the previous window's, weighed by the share of it still in view (1 - elapsed/60000).
RATE = """
local function fits(cur, prev, elapsed, amount, limit)
  return cur + prev * (1 - elapsed / 60000) + amount <= limit
end

-- The first whole millisecond into a window at which fits() holds; it must hold at 60000.
-- Solved exactly, then stepped to where fits() itself turns (it is monotonic), so that float
-- rounding cannot make the answer a millisecond early.
local function earliest(cur, prev, amount, limit)
  if prev <= 0 then return 0 end
  local e = 60000 - math.floor(60000 * (limit - amount - cur) / prev)
  e = math.max(0, math.min(e, 60000))
  while e > 0 and fits(cur, prev, e - 1, amount, limit) do e = e - 1 end
  while e < 60000 and not fits(cur, prev, e, amount, limit) do e = e + 1 end
  return e
end

-- How long (ms) until `amount` fits if nothing else is counted meanwhile, with 1 ms to spare;
-- -1 if it never can. When this window's own count leaves no room, the wait runs into the next
-- window, where that count becomes the previous one and decays.
local function wait_for(cur, prev, elapsed, amount, limit)
  if amount > limit then return -1 end
  if cur + amount <= limit then
    return earliest(cur, prev, amount, limit) - elapsed + 1
  end
  return 60000 - elapsed + earliest(0, cur, amount, limit) + 1
end

-- How long (ms) until a scope holding `cur` after `prev` has let all of it go: OpenAI's meaning of
-- x-ratelimit-reset-*. This window's count weighs fully to its end, then decays over the next.
local function replenished(cur, prev, elapsed)
  if cur > 0 then return 120000 - elapsed end
  if prev > 0 then return 60000 - elapsed end
  return 0
end
"""

# ``admit(now_ms)``: admit a request or refuse it. Every argument is checked and every scope read
# before the first write, so a bad argument fails with nothing written, and once writing starts
# nothing can fail: each value written is a bounded whole number, each key of the type read.
#
# KEYS, per scope (the key, then its organization): rate hash, lease set, budget hash.
# ARGV: scopes, estimated tokens, reserved cost, lease id, lease TTL (ms), then per scope rpm,
# tpm, concurrency, budget cap (millionths of a cent); -1 for no limit.
# Admitted: {1, window, month, then per scope: remaining requests, remaining tokens, reset
# requests (ms), reset tokens (ms)}. Refused: {0, scope index, kind, wait (ms, -1: never),
# limit, remaining, requested}.
ADMIT_AT = (
    MONTH_OF
    + COUNTER
    + RATE
    + f"""
local function arg_int(i, lo, hi)
  local v = tonumber(ARGV[i])
  if v == nil or v ~= math.floor(v) or v < lo or v > hi then
    error({{err = 'ERR tollgate admit: argument ' .. i .. ' is not a whole number from ' .. lo
      .. ' to ' .. string.format('%d', hi) .. ': ' .. tostring(ARGV[i])}})
  end
  return v
end

local function admit(now_ms)
  local n = arg_int(1, 1, {MAX_SCOPES})
  if #KEYS ~= 3 * n or #ARGV < 5 + 4 * n then
    error({{err = 'ERR tollgate admit: 3 keys and 4 limits per scope'}})
  end
  local est = arg_int(2, 0, {MAX_TOKENS})
  local cost = arg_int(3, 0, {MAX_COST})
  local lease = ARGV[4]
  local lease_ttl = arg_int(5, 1, {MAX_LEASE_TTL_MS})
  if lease == '' then error({{err = 'ERR tollgate admit: no lease id'}}) end
  local month = month_of(math.floor(now_ms / 1000))
  local win = math.floor(now_ms / 60000)
  local elapsed = now_ms % 60000
  local scopes = {{}}
  local refused, never, wait = nil, nil, 0
  local function rate(i, kind, limit, cur, prev, amount)
    if limit < 0 or fits(cur, prev, elapsed, amount, limit) then return end
    local w = wait_for(cur, prev, elapsed, amount, limit)
    local remaining = math.max(0, math.floor(limit - (cur + prev * (1 - elapsed / 60000))))
    local refusal = {{0, i, kind, w, limit, remaining, amount}}
    if w < 0 then
      never = never or refusal
    else
      wait = math.max(wait, w)
      refused = refused or refusal
    end
  end
  for i = 0, n - 1 do
    local rl, cz, bk = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
    local s = {{
      rpm = arg_int(6+4*i, -1, {MAX_LIMIT}),
      tpm = arg_int(7+4*i, -1, {MAX_LIMIT}),
      conc = arg_int(8+4*i, -1, {MAX_LIMIT}),
      cap = arg_int(9+4*i, -1, {MAX_BUDGET}),
    }}
    local w = redis.call('HMGET', rl, 'r:' .. win, 'r:' .. (win - 1), 't:' .. win, 't:' .. (win - 1))
    s.rc, s.rp, s.tc, s.tp = bounded(w[1]), bounded(w[2]), bounded(w[3]), bounded(w[4])
    rate(i, 'requests', s.rpm, s.rc, s.rp, 1)
    rate(i, 'tokens', s.tpm, s.tc, s.tp, est)
    if s.conc >= 0 then
      local live = redis.call('ZCOUNT', cz, string.format('(%d', now_ms), '+inf')
      if live >= s.conc then refused = refused or {{0, i, 'concurrency', 0, s.conc, 0, 1}} end
    end
    if s.cap >= 0 or cost > 0 then
      s.spent = counter(bk, month)
      if s.cap >= 0 and s.spent + cost > s.cap then
        refused = refused or {{0, i, 'budget', 0, s.cap, math.max(0, s.cap - s.spent), cost}}
      end
    end
    scopes[i + 1] = s
  end
  -- A request no wait can let through says so first. Otherwise the first limit it breaks (key
  -- before organization; requests, tokens, concurrency, budget) names the refusal, and the wait
  -- is the longest any rate limit needs: retrying after it, the request is admitted unless
  -- something else was counted meanwhile. Concurrency waits at least a second; a budget waits
  -- for the next month or a higher cap.
  if never then return never end
  if refused then
    if refused[3] == 'concurrency' then
      refused[4] = math.max(1000, wait)
    elseif refused[3] ~= 'budget' then
      refused[4] = wait
    end
    return refused
  end
  local out = {{1, win, month}}
  for i = 0, n - 1 do
    local rl, cz, bk = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
    local s = scopes[i + 1]
    local rc = math.min(s.rc + 1, MAX_COUNT)
    local tc = math.min(s.tc + est, MAX_COUNT)
    redis.call('HSET', rl, 'r:' .. win, rc)
    if est > 0 then redis.call('HSET', rl, 't:' .. win, tc) end
    if s.rc == 0 then
      -- The window's first request: drop the one before the previous and give the hash the
      -- life it needs (this window, then the next one that still weighs it).
      redis.call('HDEL', rl, 'r:' .. (win - 2), 't:' .. (win - 2))
      redis.call('PEXPIRE', rl, 180000)
    end
    if s.conc >= 0 then
      -- Expired leases (of edges that died) do not count (ZCOUNT above); clear them once a minute.
      if s.rc == 0 then redis.call('ZREMRANGEBYSCORE', cz, '-inf', now_ms) end
      redis.call('ZADD', cz, now_ms + lease_ttl, lease)
      redis.call('PEXPIRE', cz, lease_ttl * 2)
    end
    if cost > 0 then
      redis.call('HSET', bk, month, math.min(s.spent + cost, MAX_COUNT))
      if s.spent == 0 then redis.call('EXPIRE', bk, {BUDGET_TTL_SECONDS}) end  -- the month's first
    end
    local weight = 1 - elapsed / 60000
    table.insert(out, s.rpm >= 0 and math.floor(s.rpm - (s.rc + s.rp * weight) - 1) or -1)
    table.insert(out, s.tpm >= 0 and math.floor(s.tpm - (s.tc + s.tp * weight) - est) or -1)
    table.insert(out, replenished(rc, s.rp, elapsed))
    table.insert(out, replenished(est > 0 and tc or s.tc, s.tp, elapsed))
  end
  return out
end
"""
)

ADMIT = (
    ADMIT_AT
    + """
local t = redis.call('TIME')
return admit(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
"""
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
-- Return the counter's new value.
local function move(key, field, delta)
  local new = redis.pcall('HINCRBY', key, field, delta)
  if type(new) == 'number' and new >= 0 then return new end
  -- Below zero, or a value HINCRBY cannot move (unreadable, out of range): rewrite it bounded.
  local old = type(new) == 'number' and new - delta or counter(key, field)
  new = math.max(0, math.min(MAX_COUNT, old + delta))
  if new == 0 then
    redis.call('HDEL', key, field)  -- as a missing counter reads: nothing left behind
  else
    redis.call('HSET', key, field, new)
  end
  return new
end
for i = 0, n - 1 do
  local rl, cz, bk = KEYS[3*i+1], KEYS[3*i+2], KEYS[3*i+3]
  if token_delta ~= 0 and redis.call('HEXISTS', rl, 'r:' .. win) == 1 then
    move(rl, 't:' .. win, token_delta)
  end
  redis.call('ZREM', cz, lease)
  -- A counter this settlement starts (Redis lost the admission's) needs the budget's life.
  if cost_delta ~= 0 and move(bk, month, cost_delta) == math.max(cost_delta, 0) then
    redis.call('EXPIRE', bk, BUDGET_TTL)
  end
end
-- Optionally count the request in the edge's served counters (same hash slot).
if #KEYS > 3 * n then
  local served = KEYS[3 * n + 1]
  local requests = move(served, ARGV[7] .. ':requests', 1)
  move(served, ARGV[7] .. ':tokens', int(ARGV[8], 0, MAX_COUNT))
  if requests == 1 then redis.call('EXPIRE', served, int(ARGV[9], 1, BUDGET_TTL)) end
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
    """The edge's per-organization, per-hour counters of the requests it published an event
    for, served or refused (read by usage_reconcile, which compares them with every event)."""
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
    # False when Redis was lost during the admission: whether it ran is unknown, so the request
    # is served unchecked (fail_open) and its settlement only releases the lease it may hold.
    checked: bool = True


class AdmissionLost(ConnectionError):
    """Redis went away during an admission; ``admission`` is what to release when it is back."""

    def __init__(self, admission: Admission):
        super().__init__("lost the connection to Redis during an admission")
        self.admission = admission


@dataclass(slots=True)
class Refusal:
    scope: str  # "key" or "organization"
    kind: str  # requests | tokens | concurrency | budget
    # How long until this request would be admitted if nothing else were counted meanwhile (the
    # sliding window's real wait, 1 ms to spare); NEVER when no wait can let it through (it asks
    # for more than the limit); 0 for a budget.
    reset_ms: int
    limit: int  # a budget's in cents
    remaining: int
    requested: int  # of the limit: 1 request, the estimated tokens, the reservation in cents


NEVER = -1
# The usage event's refusal reason (edge/events.py) for each kind of refusal but a budget's.
REFUSAL_REASON = {
    "requests": "rate_limit_rpm",
    "tokens": "rate_limit_tpm",
    "concurrency": "concurrency_limit",
}


def _duration(ms: int) -> str:
    """Format like OpenAI's reset headers: ``1s``, ``6m0s``, ``250ms``."""
    if ms < 1000:
        return f"{ms}ms"
    seconds = -(-ms // 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _headers(limits: list[Limits], values: list) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers, from the tightest scope that has a limit. The reset is the
    time until that scope has let go of everything it counts (its remaining is the limit again)."""
    headers = []
    best_requests = best_tokens = None
    for index, scope in enumerate(limits):
        remaining_requests, remaining_tokens, reset_requests, reset_tokens = values[4 * index : 4 * index + 4]
        if scope.rpm is not None and (best_requests is None or remaining_requests < best_requests[1]):
            best_requests = (scope.rpm, remaining_requests, reset_requests)
        if scope.tpm is not None and (best_tokens is None or remaining_tokens < best_tokens[1]):
            best_tokens = (scope.tpm, remaining_tokens, reset_tokens)
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
    """

    def __init__(self, batcher: ScriptBatcher, lease_ttl_seconds: int):
        if not 1 <= lease_ttl_seconds * 1000 <= MAX_LEASE_TTL_MS:
            raise ValueError(f"lease_ttl_seconds must be from 1 to {MAX_LEASE_TTL_MS // 1000}")
        self.lease_ttl_ms = lease_ttl_seconds * 1000
        self.batcher = batcher

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
        try:
            result = await self.batcher.call(ADMIT_SHA, keys, call_args)
        except OSError as exc:
            lost = Admission(keys, lease, 0, "", 0, 0, [], checked=False)
            raise AdmissionLost(lost) from exc
        if int(result[0]) == 0:
            kind = result[2].decode() if isinstance(result[2], bytes) else result[2]
            limit, remaining, requested = int(result[4]), int(result[5]), int(result[6])
            if kind == "budget":
                limit, remaining = limit // 1_000_000, remaining // 1_000_000
                requested = -(-requested // 1_000_000)
            return Refusal(
                scope=scopes[int(result[1])][0],
                kind=kind,
                reset_ms=int(result[3]),
                limit=limit,
                remaining=remaining,
                requested=requested,
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
        if not admission.checked:
            return admission.keys, [len(admission.keys) // 3, 0, 0, admission.lease, "", 0]
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


def refusal_error(refusal: Refusal) -> EdgeError:
    """The 429 for a refusal, in OpenAI's shape.

    ``Retry-After`` and the refusal's ``x-ratelimit-reset-*`` are the real wait rounded up to a
    whole second: a client that waits that long is admitted unless other requests were counted
    meanwhile. A request that asks for more than a limit allows gets no Retry-After, a message
    saying no wait will do, and ``x-should-retry: false`` (which OpenAI's SDKs obey).
    """
    scope = "organization" if refusal.scope == "organization" else "API key"
    if refusal.kind == "budget":
        return EdgeError(
            429,
            f"This request would exceed the {scope}'s monthly budget of {refusal.limit / 100:.2f}: "
            "the edge reserves a request's worst-case cost (prompt and max_tokens) until it ends. "
            "Lower max_tokens, raise the budget in the Tollgate console, or wait for the next month.",
            type="insufficient_quota",
            code="insufficient_quota",
            refusal="budget_exceeded",
        )
    kind = "tokens" if refusal.kind == "tokens" else "requests"
    reason = REFUSAL_REASON[refusal.kind]
    limit_headers = [
        (f"x-ratelimit-limit-{kind}".encode(), str(refusal.limit).encode()),
        (f"x-ratelimit-remaining-{kind}".encode(), str(refusal.remaining).encode()),
    ]
    if refusal.reset_ms == NEVER:
        if kind == "tokens":
            message = (
                f"Request too large for this {scope} on tokens per min (TPM): Limit {refusal.limit}, "
                f"Requested {refusal.requested}. The input or output tokens must be reduced in order "
                "to run successfully: the edge counts the prompt and max_tokens for each of n choices."
            )
        else:
            message = (
                f"This {scope} allows {refusal.limit} requests per minute: no request can be served. "
                "Raise the limit in the Tollgate console."
            )
        headers = [*limit_headers, (b"x-should-retry", b"false")]
        return EdgeError(429, message, type=kind, code="rate_limit_exceeded", headers=headers, refusal=reason)
    retry_after = str(max(1, -(-refusal.reset_ms // 1000)))
    headers = [(b"retry-after", retry_after.encode())]
    if refusal.kind == "concurrency":
        message = f"Too many concurrent requests for this {scope} (limit {refusal.limit}). Retry shortly."
    else:
        message = (
            f"Rate limit reached for this {scope}: {refusal.limit} {kind} per minute. "
            f"Retry after {retry_after}s."
        )
        headers += [*limit_headers, (f"x-ratelimit-reset-{kind}".encode(), f"{retry_after}s".encode())]
    return EdgeError(429, message, type=kind, code="rate_limit_exceeded", headers=headers, refusal=reason)
