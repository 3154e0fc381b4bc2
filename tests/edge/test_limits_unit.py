"""The admission and settlement scripts of edge/limits.py, run directly against the test Redis."""

import asyncio
import dataclasses
import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from edge.batching import ScriptBatcher
from edge.limits import (
    ADMIT,
    BUDGET_TTL_SECONDS,
    MAX_COST,
    MAX_COUNT,
    MAX_TOKENS,
    MONTH_OF,
    SCRIPTS,
    SETTLE_SHA,
    Admission,
    Limiter,
    Refusal,
    _duration,
)
from edge.records import KeyRecord, Limits
from edge.resp import RespConnection

pytestmark = pytest.mark.anyio

NO_LIMITS = Limits(rpm=None, tpm=None, concurrency=None, budget_minor=None)
ORG_ID = 7
KEY_ID = "key_unit"
RL = f"tg:rl:{{o:{ORG_ID}}}:k:{KEY_ID}"
CONC = f"tg:conc:{{o:{ORG_ID}}}:k:{KEY_ID}"
BUDGET = f"tg:budget:{{o:{ORG_ID}}}:k:{KEY_ID}"
ORG_RL = f"tg:rl:{{o:{ORG_ID}}}:org"
ORG_CONC = f"tg:conc:{{o:{ORG_ID}}}:org"
ORG_BUDGET = f"tg:budget:{{o:{ORG_ID}}}:org"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
async def redis(settings):
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def connection(settings):
    """The edge's own pipelined connection, which the limiter's batcher sends on."""
    resp = RespConnection(settings.REDIS_URL)
    yield resp
    resp.close()


@pytest.fixture
def make_limiter(redis, connection):
    """A limiter as the edge builds it: its scripts go through a ScriptBatcher."""

    def make(lease_ttl_seconds: int = 600) -> Limiter:
        return Limiter(ScriptBatcher(connection, SCRIPTS), lease_ttl_seconds)

    return make


def record(key: Limits = NO_LIMITS, org: Limits = NO_LIMITS) -> KeyRecord:
    return KeyRecord(
        key_id=KEY_ID,
        org_id=ORG_ID,
        org_status="active",
        environment="live",
        status="active",
        expires_at=None,
        secret_expires_at=None,
        allowed_models=(),
        allowed_networks=(),
        key_limits=key,
        org_limits=org,
    )


def limits(rpm=None, tpm=None, concurrency=None, budget_minor=None) -> Limits:
    return Limits(rpm=rpm, tpm=tpm, concurrency=concurrency, budget_minor=budget_minor)


async def redis_ms(redis) -> int:
    seconds, micros = await redis.time()
    return seconds * 1000 + micros // 1000


async def fresh_window(redis, margin_ms: int = 5000) -> int:
    """Return the current window, first waiting for the next one when this one ends soon."""
    now = await redis_ms(redis)
    if 60_000 - now % 60_000 < margin_ms:
        await asyncio.sleep((60_000 - now % 60_000) / 1000 + 0.05)
        now = await redis_ms(redis)
    return now // 60_000


async def redis_month(redis) -> str:
    """The budget month by Redis's clock, which the admission script reads."""
    seconds, _micros = await redis.time()
    return time.strftime("%Y%m", time.gmtime(seconds))


async def fields(redis, name: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await redis.hgetall(name)).items()}


async def test_admission_counts_one_request_and_its_tokens_in_the_key_and_organization_scopes(
    redis, make_limiter
):
    limiter = make_limiter()
    win = await fresh_window(redis)
    before = await redis_ms(redis)
    admission = await limiter.admit(
        record(limits(rpm=5, tpm=1000), limits(rpm=100)), estimated_tokens=305, reserved_cost=0
    )
    after = await redis_ms(redis)
    assert isinstance(admission, Admission)
    assert admission.window == win
    assert admission.keys == (RL, CONC, BUDGET, ORG_RL, ORG_CONC, ORG_BUDGET)
    assert admission.estimated_tokens == 305
    assert admission.month == await redis_month(redis)
    assert await fields(redis, RL) == {f"r:{win}": 1, f"t:{win}": 305}
    assert await fields(redis, ORG_RL) == {f"r:{win}": 1, f"t:{win}": 305}
    # No concurrency limit and no budget: no lease, no reservation.
    assert await redis.exists(CONC, ORG_CONC, BUDGET, ORG_BUDGET) == 0
    assert 0 < await redis.pttl(RL) <= 180_000
    headers = dict(admission.headers)
    # Requests: the key's 5 is tighter than the organization's 100.
    assert headers[b"x-ratelimit-limit-requests"] == b"5"
    assert headers[b"x-ratelimit-remaining-requests"] == b"4"
    assert headers[b"x-ratelimit-limit-tokens"] == b"1000"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"695"
    # Both replenish fully when the next window ends (this one's count weighs fully until it
    # ends, then decays over the next).
    assert headers[b"x-ratelimit-reset-requests"] == headers[b"x-ratelimit-reset-tokens"]
    assert headers[b"x-ratelimit-reset-requests"].decode() in {
        _duration(120_000 - now % 60_000) for now in range(before, after + 1)
    }


async def test_admission_without_any_limit_sends_no_ratelimit_headers(redis, make_limiter):
    admission = await make_limiter().admit(record(), estimated_tokens=10, reserved_cost=0)
    assert isinstance(admission, Admission)
    assert admission.headers == []


async def test_settlement_replaces_the_estimate_and_the_reservation_with_the_real_figures(
    redis, make_limiter
):
    limiter = make_limiter()
    win = await fresh_window(redis)
    admission = await limiter.admit(
        record(
            limits(tpm=10_000, concurrency=3, budget_minor=100), limits(concurrency=10, budget_minor=1000)
        ),
        estimated_tokens=305,
        reserved_cost=30_000_000,
    )
    month = admission.month
    assert await fields(redis, RL) == {f"r:{win}": 1, f"t:{win}": 305}
    assert await fields(redis, BUDGET) == {month: 30_000_000}
    assert await fields(redis, ORG_BUDGET) == {month: 30_000_000}
    assert await redis.zrange(CONC, 0, -1) == [admission.lease.encode()]
    assert await redis.zrange(ORG_CONC, 0, -1) == [admission.lease.encode()]
    assert 0 < await redis.ttl(BUDGET) <= BUDGET_TTL_SECONDS

    await limiter.settle(admission, tokens=17, cost=1_700_000)

    assert await fields(redis, RL) == {f"r:{win}": 1, f"t:{win}": 17}
    assert await fields(redis, ORG_RL) == {f"r:{win}": 1, f"t:{win}": 17}
    assert await fields(redis, BUDGET) == {month: 1_700_000}
    assert await fields(redis, ORG_BUDGET) == {month: 1_700_000}
    assert await redis.zcard(CONC) == 0
    assert await redis.zcard(ORG_CONC) == 0


async def test_settlement_above_the_estimate_adds_the_difference(redis, make_limiter):
    limiter = make_limiter()
    win = await fresh_window(redis)
    admission = await limiter.admit(record(limits(tpm=10_000)), estimated_tokens=50, reserved_cost=500)
    await limiter.settle(admission, tokens=80, cost=900)
    assert (await fields(redis, RL))[f"t:{win}"] == 80
    assert await fields(redis, BUDGET) == {admission.month: 900}


async def test_settlement_after_the_window_was_dropped_does_not_recreate_its_tokens(redis, make_limiter):
    limiter = make_limiter()
    win = await fresh_window(redis)
    admission = await limiter.admit(record(limits(tpm=10_000)), estimated_tokens=50, reserved_cost=0)
    # Two windows later the admission's fields are gone; a late settlement must not revive them.
    await redis.hdel(RL, f"r:{win}", f"t:{win}")
    await limiter.settle(admission, tokens=10, cost=0)
    assert await fields(redis, RL) == {}


async def test_requests_per_minute_refusal_moves_no_counter(redis, make_limiter):
    limiter = make_limiter()
    win = await fresh_window(redis)
    rec = record(limits(rpm=2, concurrency=5), limits(rpm=100, concurrency=50))
    for _ in range(2):
        assert isinstance(await limiter.admit(rec, estimated_tokens=10, reserved_cost=0), Admission)
    before = await redis_ms(redis)
    refusal = await limiter.admit(rec, estimated_tokens=10, reserved_cost=0)
    after = await redis_ms(redis)
    assert isinstance(refusal, Refusal)
    assert (refusal.scope, refusal.kind, refusal.limit, refusal.remaining) == ("key", "requests", 2, 0)
    # Not the next minute: there the two requests still weigh 2 * (1 - elapsed/60000), which
    # leaves room for one more only half-way through it.
    assert 90_001 - after % 60_000 <= refusal.reset_ms <= 90_001 - before % 60_000
    # Atomic: the refused request counted nowhere, took no lease.
    assert await fields(redis, RL) == {f"r:{win}": 2, f"t:{win}": 20}
    assert await fields(redis, ORG_RL) == {f"r:{win}": 2, f"t:{win}": 20}
    assert await redis.zcard(CONC) == 2
    assert await redis.zcard(ORG_CONC) == 2


async def test_organization_refusal_names_the_organization_and_leaves_the_key_untouched(redis, make_limiter):
    limiter = make_limiter()
    win = await fresh_window(redis)
    rec = record(limits(rpm=100), limits(rpm=1))
    assert isinstance(await limiter.admit(rec, estimated_tokens=1, reserved_cost=0), Admission)
    refusal = await limiter.admit(rec, estimated_tokens=1, reserved_cost=0)
    assert isinstance(refusal, Refusal)
    assert (refusal.scope, refusal.kind, refusal.limit, refusal.remaining) == (
        "organization",
        "requests",
        1,
        0,
    )
    assert (await fields(redis, RL))[f"r:{win}"] == 1


async def test_tokens_per_minute_refuses_the_estimate_that_does_not_fit(redis, make_limiter):
    limiter = make_limiter()
    await fresh_window(redis)
    rec = record(limits(tpm=1000))
    for _ in range(3):
        assert isinstance(await limiter.admit(rec, estimated_tokens=305, reserved_cost=0), Admission)
    refusal = await limiter.admit(rec, estimated_tokens=305, reserved_cost=0)
    assert isinstance(refusal, Refusal)
    assert (refusal.scope, refusal.kind, refusal.limit, refusal.remaining) == ("key", "tokens", 1000, 85)
    # What still fits is admitted: 915 + 85 == 1000.
    assert isinstance(await limiter.admit(rec, estimated_tokens=85, reserved_cost=0), Admission)


async def test_budget_compares_millionths_of_a_cent_with_a_cap_in_cents(redis, make_limiter):
    limiter = make_limiter()
    rec = record(limits(budget_minor=10))  # 10 cents == 10_000_000 millionths
    first = await limiter.admit(rec, estimated_tokens=1, reserved_cost=6_000_000)
    assert isinstance(first, Admission)
    refusal = await limiter.admit(rec, estimated_tokens=1, reserved_cost=6_000_000)
    assert isinstance(refusal, Refusal)
    # Limit and remaining come back in cents.
    assert (refusal.scope, refusal.kind, refusal.limit, refusal.remaining) == ("key", "budget", 10, 4)
    assert refusal.reset_ms == 0
    # Exactly filling the cap is allowed; one millionth more is not.
    assert isinstance(await limiter.admit(rec, estimated_tokens=1, reserved_cost=4_000_000), Admission)
    over = await limiter.admit(rec, estimated_tokens=1, reserved_cost=1)
    assert isinstance(over, Refusal)
    assert (over.kind, over.limit, over.remaining) == ("budget", 10, 0)
    assert await fields(redis, BUDGET) == {await redis_month(redis): 10_000_000}


async def test_organization_budget_is_shared_by_its_keys(redis, make_limiter):
    limiter = make_limiter()
    org = limits(budget_minor=1)
    first = record(org=org)
    second = dataclasses.replace(first, key_id="key_other")
    assert isinstance(await limiter.admit(first, estimated_tokens=1, reserved_cost=700_000), Admission)
    refusal = await limiter.admit(second, estimated_tokens=1, reserved_cost=700_000)
    assert isinstance(refusal, Refusal)
    assert (refusal.scope, refusal.kind, refusal.limit, refusal.remaining) == ("organization", "budget", 1, 0)
    assert await fields(redis, ORG_BUDGET) == {await redis_month(redis): 700_000}


async def test_previous_window_counts_with_the_weight_of_its_remaining_overlap(redis, make_limiter):
    limiter = make_limiter()
    rec = record(limits(rpm=1000))
    while True:
        win = await fresh_window(redis, margin_ms=1000)
        await redis.hset(RL, f"r:{win - 1}", 600)
        before = await redis_ms(redis)
        admission = await limiter.admit(rec, estimated_tokens=0, reserved_cost=0)
        after = await redis_ms(redis)
        if before // 60_000 == after // 60_000 == win:
            break
        await redis.delete(RL)
    remaining = int(dict(admission.headers)[b"x-ratelimit-remaining-requests"])
    # remaining == floor(1000 - 600 * weight - 1), weight = share of the previous minute still in view.
    weight_at_before = 1 - (before % 60_000) / 60_000
    weight_at_after = 1 - (after % 60_000) / 60_000
    assert int(999 - 600 * weight_at_before) <= remaining <= int(999 - 600 * weight_at_after)
    assert remaining < 999  # the previous window was counted at all


async def test_previous_window_full_refuses_now(redis, make_limiter):
    limiter = make_limiter()
    win = await fresh_window(redis, margin_ms=2000)
    # 1000 requests last minute weigh at least 10 until the last 0.6s of this one.
    await redis.hset(RL, f"r:{win - 1}", 1000)
    refusal = await limiter.admit(record(limits(rpm=10)), estimated_tokens=0, reserved_cost=0)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.limit, refusal.remaining) == ("requests", 10, 0)


async def test_windows_older_than_the_previous_one_are_ignored_and_dropped(redis, make_limiter):
    limiter = make_limiter()
    win = await fresh_window(redis)
    await redis.hset(RL, mapping={f"r:{win - 2}": 1000, f"t:{win - 2}": 99_999})
    admission = await limiter.admit(record(limits(rpm=10, tpm=1000)), estimated_tokens=5, reserved_cost=0)
    assert isinstance(admission, Admission)
    assert await fields(redis, RL) == {f"r:{win}": 1, f"t:{win}": 5}


async def test_raw_script_results_have_fixed_shapes(redis):
    script = redis.register_script(ADMIT)
    win = await fresh_window(redis)
    keys = [RL, CONC, BUDGET]

    def args(rpm, tpm, conc, cap, est=10, cost=5):
        return [1, est, cost, "lease-1", 60_000, rpm, tpm, conc, cap]

    before = await redis_ms(redis)
    admitted = await script(keys=keys, args=args(5, 100, 2, 1000))
    # {1, window, month, then per scope: remaining requests, remaining tokens, reset requests, reset tokens}
    assert admitted[:3] == [1, win, (await redis_month(redis)).encode()]
    assert admitted[3:5] == [4, 90]  # remaining requests and tokens after this one
    # Both fully replenish when the next window ends: this one's count weighs fully until it
    # ends, then decays over the next.
    assert admitted[5] == admitted[6]
    assert 60_000 < admitted[5] <= 120_000 - before % 60_000
    assert len(admitted) == 7

    refusals = {
        "requests": args(1, -1, -1, -1),
        "tokens": args(-1, 10, -1, -1),
        "concurrency": args(-1, -1, 1, -1),
        "budget": args(-1, -1, -1, 9),
    }
    results = {kind: await script(keys=keys, args=call_args) for kind, call_args in refusals.items()}
    after = await redis_ms(redis)
    # {0, scope index, kind, wait ms, limit, remaining, requested}
    for kind, refused in results.items():
        assert refused[:3] == [0, 0, kind.encode()]
        assert len(refused) == 7
    # This window holds the whole limit: the request fits only once the next window has let all
    # of it go, at the end of the next window (plus 1 ms to spare).
    for kind in ("requests", "tokens"):
        assert 120_001 - after % 60_000 <= results[kind][3] <= 120_001 - before % 60_000
    assert results["requests"][4:] == [1, 0, 1]
    assert results["tokens"][4:] == [10, 0, 10]
    assert results["concurrency"][3:] == [1000, 1, 0, 1]
    assert results["budget"][3:] == [0, 9, 4, 5]
    # Refusals moved nothing.
    assert await fields(redis, RL) == {f"r:{win}": 1, f"t:{win}": 10}
    assert await fields(redis, BUDGET) == {await redis_month(redis): 5}


async def test_expired_lease_frees_its_concurrency_slot(redis, make_limiter):
    limiter = make_limiter(1)
    rec = record(limits(concurrency=1))
    held = await limiter.admit(rec, estimated_tokens=1, reserved_cost=0)
    assert isinstance(held, Admission)
    refusal = await limiter.admit(rec, estimated_tokens=1, reserved_cost=0)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.limit, refusal.remaining, refusal.reset_ms) == ("concurrency", 1, 0, 1000)
    # The edge holding the lease died without settling: after lease_ttl the slot is free.
    started = time.monotonic()
    await asyncio.sleep(1.1)
    assert time.monotonic() - started >= 1.0
    freed = await limiter.admit(rec, estimated_tokens=1, reserved_cost=0)
    assert isinstance(freed, Admission)
    now_ms = await redis_ms(redis)
    assert await redis.zrangebyscore(CONC, f"({now_ms}", "+inf") == [freed.lease.encode()]
    # The dead edge's lease is cleared at the first admission of a minute window, not each time.
    await redis.hdel(RL, *[f"r:{w}" for w in range(now_ms // 60_000 - 1, now_ms // 60_000 + 1)])
    again = await limiter.admit(record(limits(concurrency=2)), estimated_tokens=1, reserved_cost=0)
    assert isinstance(again, Admission)
    assert set(await redis.zrange(CONC, 0, -1)) == {freed.lease.encode(), again.lease.encode()}


async def test_settlement_releases_the_lease_at_once(redis, make_limiter):
    limiter = make_limiter()
    rec = record(limits(concurrency=1))
    held = await limiter.admit(rec, estimated_tokens=1, reserved_cost=0)
    assert isinstance(await limiter.admit(rec, estimated_tokens=1, reserved_cost=0), Refusal)
    await limiter.settle(held, tokens=1, cost=0)
    assert await redis.zcard(CONC) == 0
    assert isinstance(await limiter.admit(rec, estimated_tokens=1, reserved_cost=0), Admission)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0ms"),
        (250, "250ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1001, "2s"),
        (59_000, "59s"),
        (60_000, "1m0s"),
        (61_500, "1m2s"),
        (360_000, "6m0s"),
    ],
)
def test_duration_is_formatted_like_openai_reset_headers(ms, text):
    assert _duration(ms) == text


async def test_a_spooled_settlement_is_applied_on_replay(redis, settings, tmp_path):
    """Redis failed after admission: the replay releases the lease and corrects the budget."""
    import orjson

    from edge.journal import Journal
    from edge.metering import new_event
    from edge.publication import Publisher
    from edge.spool import Spool

    connection = RespConnection(settings.REDIS_URL)
    limiter = Limiter(ScriptBatcher(connection, SCRIPTS), lease_ttl_seconds=600)
    publisher = Publisher(connection, limiter, Spool(str(tmp_path)), Journal(tmp_path))
    admission = await limiter.admit(
        record(key=limits(concurrency=1, budget_minor=100)), estimated_tokens=100, reserved_cost=5_000_000
    )
    assert isinstance(admission, Admission)
    assert await redis.zcard(CONC) == 1
    event = new_event(
        key_id=KEY_ID,
        org_id=ORG_ID,
        model="m",
        input_tokens=10,
        output_tokens=5,
        cached_tokens=0,
        cost_micro_minor=1_000_000,
        ended_at_ms=int(time.time() * 1000),
        status=200,
    )
    keys, args = limiter.settle_args(admission, tokens=15, cost=1_000_000)

    await publisher.replay_batch([{**event, "_settle": [keys, args]}])
    connection.close()

    assert await redis.zcard(CONC) == 0
    assert int(await redis.hget(BUDGET, await redis_month(redis))) == 1_000_000
    entries = await redis.xrange("tg:usage")
    assert [orjson.loads(fields[b"data"]) for _id, fields in entries] == [event]
    hour = event["ended_at_ms"] // 3_600_000
    assert await redis.hget(f"tg:served:{{o:{ORG_ID}}}:{hour}", f"{KEY_ID}:requests") == b"1"


@pytest.mark.parametrize(
    ("instant", "month"),
    [
        ("2026-11-30T23:59:59", "202611"),
        ("2026-12-01T00:00:00", "202612"),
        ("2026-12-31T23:59:59", "202612"),
        ("2027-01-01T00:00:00", "202701"),
        ("2028-02-28T23:59:59", "202802"),
        ("2028-02-29T00:00:00", "202802"),
        ("2028-02-29T23:59:59", "202802"),
        ("2028-03-01T00:00:00", "202803"),
        ("2100-02-28T23:59:59", "210002"),
        ("2100-03-01T00:00:00", "210003"),
        ("1970-01-01T00:00:00", "197001"),
    ],
)
async def test_the_budget_month_turns_at_midnight_utc_on_the_first(redis, instant, month):
    """The admission script names the budget month from Redis's clock, leap years included."""
    from calendar import timegm

    seconds = timegm(time.strptime(instant, "%Y-%m-%dT%H:%M:%S"))
    assert await redis.eval(MONTH_OF + "return month_of(tonumber(ARGV[1]))", 0, seconds) == month.encode()


async def test_every_day_of_four_centuries_has_the_month_python_gives_it(redis):
    days = list(range(146_097))  # 400 years from 1970, every day
    script = (
        MONTH_OF
        + """
local out = {}
for i = 1, #ARGV do out[i] = month_of(tonumber(ARGV[i]) * 86400 + 86399) end
return out
"""
    )
    for start in range(0, len(days), 5000):
        chunk = days[start : start + 5000]
        months = await redis.eval(script, 0, *chunk)
        assert [m.decode() for m in months] == [time.strftime("%Y%m", time.gmtime(d * 86400)) for d in chunk]


def test_lease_ids_do_not_repeat():
    from edge.limits import _leases

    ids = {_leases.next() for _ in range(10_000)}
    assert len(ids) == 10_000


async def test_settlement_after_redis_lost_its_counters_never_drives_them_below_zero(redis, make_limiter):
    """Redis restarted empty while a request ran: its settlement gives back nothing that is not there."""
    limiter = make_limiter()
    rec = record(limits(tpm=10_000, budget_minor=10))  # 10 cents == 10_000_000 millionths
    win = await fresh_window(redis)
    before_restart = await limiter.admit(rec, estimated_tokens=305, reserved_cost=6_000_000)
    assert isinstance(before_restart, Admission)
    await redis.flushdb()  # the restart: every counter and lease is gone
    after_restart = await limiter.admit(rec, estimated_tokens=100, reserved_cost=2_000_000)
    assert isinstance(after_restart, Admission)

    # The first request ends: 17 tokens against 305 estimated, 1 million against 6 reserved.
    await limiter.settle(before_restart, tokens=17, cost=1_000_000)

    # Without the floor the tokens would read 100 - 288 and the spend 2 - 5 million: negative.
    assert await fields(redis, RL) == {f"r:{win}": 1}  # a counter at zero is removed, as missing reads 0
    assert await fields(redis, BUDGET) == {}  # spend at zero: the field (and the hash) removed
    await limiter.settle(after_restart, tokens=100, cost=2_000_000)
    assert await fields(redis, BUDGET) == {}
    # So the cap holds: 10 cents admit one 6-cent reservation (at -3 million, two would fit)...
    assert isinstance(await limiter.admit(rec, estimated_tokens=1, reserved_cost=6_000_000), Admission)
    # ...and not a second one.
    refusal = await limiter.admit(rec, estimated_tokens=1, reserved_cost=6_000_000)
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.limit, refusal.remaining) == ("budget", 10, 4)


async def test_settlement_of_a_missing_budget_field_writes_nothing(redis, make_limiter):
    limiter = make_limiter()
    admission = await limiter.admit(record(limits(budget_minor=10)), estimated_tokens=1, reserved_cost=500)
    await redis.delete(BUDGET)
    await limiter.settle(admission, tokens=1, cost=100)
    assert await redis.exists(BUDGET) == 0


async def test_settlement_with_unbounded_arguments_saturates_instead_of_failing(
    redis, make_limiter, connection
):
    """A settlement spooled by an older edge may carry any number: the script must still succeed
    (a failing one would be spooled and replayed for ever) and keep every counter in bounds."""
    limiter = make_limiter()
    win = await fresh_window(redis)
    admission = await limiter.admit(
        record(limits(tpm=10_000, budget_minor=10)), estimated_tokens=50, reserved_cost=500
    )
    month = admission.month
    served = f"tg:served:{{o:{ORG_ID}}}:1"
    keys = [*admission.keys, served]
    args = [2, -(10**18), -(10**30), admission.lease, month, win, KEY_ID, 10**30, 10**30]
    [result] = await connection.execute([("EVALSHA", SETTLE_SHA, len(keys), *keys, *args)])
    assert result == 1
    assert await fields(redis, RL) == {f"r:{win}": 1}  # a counter at zero is removed, as missing reads 0
    assert await redis.hget(BUDGET, month) is None
    assert await fields(redis, served) == {f"{KEY_ID}:requests": 1, f"{KEY_ID}:tokens": MAX_COUNT}

    args = [2, 10**30, "not a number", admission.lease, month, win, KEY_ID, "x", "y"]
    [result] = await connection.execute([("EVALSHA", SETTLE_SHA, len(keys), *keys, *args)])
    assert result == 1
    assert (await fields(redis, RL))[f"t:{win}"] == MAX_COUNT
    assert await redis.hget(BUDGET, month) is None


async def test_settle_command_and_arguments_hold_real_figures_within_bounds(redis, make_limiter):
    limiter = make_limiter()
    admission = await limiter.admit(record(limits(tpm=10_000)), estimated_tokens=10**20, reserved_cost=10**30)
    assert isinstance(admission, Refusal)  # 10^12 tokens (the bound) do not fit in 10_000
    admission = await limiter.admit(record(), estimated_tokens=10**20, reserved_cost=10**30)
    assert (admission.estimated_tokens, admission.reserved_cost) == (MAX_TOKENS, MAX_COST)
    _keys, args = limiter.settle_args(admission, tokens=10**25, cost=-5)
    assert args[1:3] == [0, -MAX_COST]
    command = limiter.settle_command(
        None,
        {"org_id": ORG_ID, "key_id": KEY_ID, "ended_at_ms": 0, "input_tokens": 10**25, "output_tokens": 1},
    )
    assert command[-2] == MAX_TOKENS


@pytest.mark.parametrize(
    ("position", "value"),
    [
        (1, 0),  # no scope
        (1, 9),  # more scopes than keys
        (2, 10**18),  # estimated tokens past the bound (the max_tokens)
        (2, -1),
        (2, 1.5),
        (3, 10**16),  # reserved cost past the bound
        (3, "x"),
        (5, 0),  # lease TTL
        (10, 10**13),  # the organization's rpm past the bound: after the key's scope was read
        (13, 10**16),  # the organization's cap past the bound
        (13, -2),
    ],
)
async def test_admission_with_an_argument_out_of_bounds_fails_before_writing_anything(redis, position, value):
    script = redis.register_script(ADMIT)
    keys = [RL, CONC, BUDGET, ORG_RL, ORG_CONC, ORG_BUDGET]
    args = [2, 10, 5, "lease-1", 60_000, 5, 100, 2, 1000, 5, 100, 2, 1000]
    args[position - 1] = value

    with pytest.raises(ResponseError, match=f"tollgate admit: argument {position} is not a whole number"):
        await script(keys=keys, args=args)

    assert await redis.exists(*keys) == 0


async def test_admission_reads_an_unreadable_counter_as_zero_and_overwrites_it(redis, make_limiter):
    limiter = make_limiter()
    win = await fresh_window(redis)
    await redis.hset(RL, mapping={f"r:{win}": "abc", f"t:{win}": "1.5e400", f"r:{win - 1}": "-4"})
    await redis.hset(BUDGET, await redis_month(redis), "nan")

    admission = await limiter.admit(
        record(limits(rpm=5, budget_minor=1)), estimated_tokens=7, reserved_cost=9
    )

    assert isinstance(admission, Admission)
    # "1.5e400" is infinite: read at the counters' ceiling, where the sum stays.
    assert await fields(redis, RL) == {f"r:{win}": 1, f"t:{win}": MAX_COUNT, f"r:{win - 1}": -4}
    assert await fields(redis, BUDGET) == {admission.month: 9}


async def test_counters_at_their_ceiling_saturate_instead_of_overflowing(redis, make_limiter):
    limiter = make_limiter()
    win = await fresh_window(redis)
    month = await redis_month(redis)
    await redis.hset(RL, mapping={f"r:{win}": MAX_COUNT, f"t:{win}": MAX_COUNT})
    await redis.hset(BUDGET, month, MAX_COUNT)

    admission = await limiter.admit(record(), estimated_tokens=MAX_TOKENS, reserved_cost=MAX_COST)

    assert isinstance(admission, Admission)
    assert await fields(redis, RL) == {f"r:{win}": MAX_COUNT, f"t:{win}": MAX_COUNT}
    assert await fields(redis, BUDGET) == {month: MAX_COUNT}


def test_limits_and_budgets_beyond_the_bounds_are_held_at_them():
    from edge.limits import MAX_BUDGET, MAX_LIMIT, _plan

    huge = Limits(rpm=10**20, tpm=10**13, concurrency=-5, budget_minor=10**12)
    _keys, args = _plan(ORG_ID, "key_huge", huge, NO_LIMITS)
    assert args == (MAX_LIMIT, MAX_LIMIT, 0, MAX_BUDGET, -1, -1, -1, -1)
