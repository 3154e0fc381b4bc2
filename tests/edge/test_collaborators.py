"""The edge's collaborators on their own, against the test Redis: the data plane reads, the
authenticator, the prices and the admitter, including the faults they must tell apart."""

import asyncio
import dataclasses

import orjson
import pytest
import redis.asyncio as aioredis

from edge import keyformat
from edge.admission import Admitter, Prices
from edge.auth import Authenticator
from edge.batching import ScriptBatcher
from edge.config import EdgeConfig, Route, Upstream
from edge.errors import EdgeError
from edge.limits import SCRIPTS, Admission, Limiter
from edge.records import KEY_PREFIX, PRICE_PREFIX, SYNCED_KEY
from edge.resp import RespConnection
from edge.store import DataPlane

pytestmark = pytest.mark.anyio
PEPPER = b"p" * 40


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def redis_url(private_redis) -> str:
    """A Redis server of the test's own: command counts are not shared with other tests."""
    return private_redis.url


@pytest.fixture
async def redis(redis_url):
    client = aioredis.Redis.from_url(redis_url)
    await client.set(SYNCED_KEY, '{"v":1,"at":0}')
    yield client
    await client.aclose()


@pytest.fixture
async def parts(redis_url, redis):
    connection = RespConnection(redis_url)
    limiter = Limiter(ScriptBatcher(connection, SCRIPTS), 600)
    config = EdgeConfig(
        redis_url=redis_url,
        pepper=PEPPER,
        routes=(Route(pattern="*", upstreams=(Upstream(url="http://127.0.0.1:9"),)),),
        auth_cache_ttl=0,  # every look-up goes to Redis
        stale_auth_seconds=60,
    )
    data_plane = DataPlane(limiter.batcher)
    prices = Prices(data_plane, config.stale_auth_seconds)
    yield dataclasses.make_dataclass("Parts", ["config", "data_plane", "limiter", "prices", "connection"])(
        config, data_plane, limiter, prices, connection
    )
    connection.close()


def key_record(key_id: str = "key_a", **limits) -> dict:
    return {
        "v": 1,
        "key_id": key_id,
        "org_id": 3,
        "org_status": "active",
        "environment": "live",
        "status": "active",
        "expires_at": None,
        "secret_expires_at": None,
        "allowed_models": [],
        "allowed_ips": [],
        "limits": limits,
        "budget": {"monthly_minor": None},
        "org_limits": {},
        "org_budget": {},
    }


def scope(secret: str) -> dict:
    return {"headers": [(b"authorization", f"Bearer {secret}".encode())], "client": ("127.0.0.1", 1)}


async def publish(redis, record: dict) -> str:
    secret = keyformat.generate("live")
    await redis.set(KEY_PREFIX + keyformat.key_hash(secret, PEPPER), orjson.dumps(record))
    return secret


async def get_calls(redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def test_concurrent_reads_of_one_name_are_one_get(parts, redis):
    await redis.set("tg:price:m", b"x")
    before = await get_calls(redis)
    results = await asyncio.gather(*(parts.data_plane.read("tg:price:m") for _ in range(200)))
    assert results == [(b"x", True)] * 200
    assert await get_calls(redis) - before == 1


async def test_a_burst_of_distinct_reads_shares_one_connection_and_never_fails(parts, redis):
    names = [f"tg:key:{n}" for n in range(3000)]
    await redis.mset({name: b"1" for name in names[::2]})
    await parts.data_plane.read("tg:key:first")
    opened = parts.connection._protocol
    results = await asyncio.gather(*(parts.data_plane.read(name) for name in names))
    assert results == [(b"1" if n % 2 == 0 else None, True) for n in range(3000)]
    # All of them went over the one pipelined connection, which was never dropped or reopened.
    assert parts.connection._protocol is opened and not opened.closed


async def test_unknown_keys_are_cached_apart_and_cannot_push_a_valid_key_out(parts, redis):
    config = dataclasses.replace(parts.config, auth_cache_ttl=60, auth_cache_size=10, unknown_key_burst=100)
    auth = Authenticator(config, parts.data_plane)
    secret = await publish(redis, key_record())
    assert (await auth.authenticate(scope(secret))).key_id == "key_a"
    for _ in range(50):
        with pytest.raises(EdgeError) as refused:
            await auth.authenticate(scope(keyformat.generate("live")))
        assert refused.value.status == 401
    await redis.flushdb()  # were the valid key evicted, this look-up would now fail
    assert (await auth.authenticate(scope(secret))).key_id == "key_a"


async def test_a_missing_record_without_the_resync_marker_is_not_an_unknown_key(parts, redis):
    auth = Authenticator(parts.config, parts.data_plane)
    known = await publish(redis, key_record())
    await auth.authenticate(scope(known))
    unseen = await publish(redis, key_record("key_b"))

    await redis.flushdb()  # Redis lost everything, the marker included

    assert (await auth.authenticate(scope(known))).key_id == "key_a"  # its last record, while stale allows
    with pytest.raises(EdgeError) as waiting:
        await auth.authenticate(scope(unseen))
    assert (waiting.value.status, waiting.value.code, waiting.value.message) == (
        503,
        "service_unavailable",
        "The key store is being restored; retry shortly.",
    )
    assert waiting.value.headers == [(b"retry-after", b"1")]
    await redis.set(SYNCED_KEY, "{}")
    with pytest.raises(EdgeError) as unknown:
        await auth.authenticate(scope(unseen))
    assert unknown.value.status == 401


async def test_an_error_reply_is_not_taken_for_a_missing_key(parts, redis):
    auth = Authenticator(parts.config, parts.data_plane)
    secret = keyformat.generate("live")
    await redis.hset(KEY_PREFIX + keyformat.key_hash(secret, PEPPER), "x", "1")  # GET answers WRONGTYPE
    with pytest.raises(EdgeError) as refused:
        await auth.authenticate(scope(secret))
    assert (refused.value.status, refused.value.code) == (503, "service_unavailable")


async def test_a_priced_model_is_never_priced_at_zero_when_its_price_cannot_be_read(parts, redis):
    price = {
        "v": 1,
        "input_per_mtok_minor": "100",
        "output_per_mtok_minor": "300",
        "cached_input_per_mtok_minor": "50",
    }
    await redis.set(PRICE_PREFIX + "priced", orjson.dumps(price))
    assert (await parts.prices.get("priced")).output == 300
    assert await parts.prices.get("free") is None  # no price while the data plane is whole: free

    await redis.flushdb()
    fresh = Prices(parts.data_plane, 60)  # a process that never read the price
    with pytest.raises(EdgeError) as refused:
        await fresh.get("priced")
    assert (refused.value.status, refused.value.message) == (
        503,
        "The price of this model is being restored; retry shortly.",
    )
    await redis.set(SYNCED_KEY, "{}")
    await redis.set(PRICE_PREFIX + "priced", b"not json")
    with pytest.raises(EdgeError) as unreadable:
        await fresh.get("priced")
    assert unreadable.value.status == 503


async def test_a_script_error_refuses_the_request_and_never_admits_it_unchecked(parts, redis):
    from edge.records import parse_key_record

    admitter = Admitter(parts.config, parts.limiter, parts.prices)
    record = parse_key_record(orjson.dumps(key_record(rpm=5)))
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    admission, _price = await admitter.admit(record, payload, "chat.completions", "m")
    assert isinstance(admission, Admission)

    await redis.delete("tg:rl:{o:3}:k:key_a")
    await redis.set("tg:rl:{o:3}:k:key_a", "not a hash")  # the script's HGET fails inside Redis
    with pytest.raises(EdgeError) as refused:
        await admitter.admit(record, payload, "chat.completions", "m")
    assert (refused.value.status, refused.value.code, refused.value.message) == (
        503,
        "service_unavailable",
        "The edge could not check this request against its limits; retry shortly.",
    )


async def test_redis_unreachable_follows_the_fail_open_setting(parts, redis):
    from edge.records import parse_key_record

    record = parse_key_record(orjson.dumps(key_record(rpm=5)))
    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    await parts.prices.get("m")  # cached: the price is not what this test is about
    parts.connection.url = "redis://127.0.0.1:1/0"  # nothing listens there
    parts.connection.close()
    await asyncio.sleep(0)

    fail_open = Admitter(parts.config, parts.limiter, parts.prices)
    admission, price = await fail_open.admit(record, payload, "chat.completions", "m")
    assert (admission.checked, admission.headers, price) == (False, [], None)
    # Its settlement only releases the lease the admission may have taken.
    assert parts.limiter.settle_args(admission, tokens=500, cost=900) == (
        admission.keys,
        [2, 0, 0, admission.lease, "", 0],
    )

    fail_closed = Admitter(dataclasses.replace(parts.config, fail_open=False), parts.limiter, parts.prices)
    with pytest.raises(EdgeError) as refused:
        await fail_closed.admit(record, payload, "chat.completions", "m")
    assert (refused.value.status, refused.value.message) == (
        503,
        "The limit store is unreachable; retry shortly.",
    )


async def test_the_settlement_of_an_admission_lost_midway_releases_its_lease_and_nothing_else(
    parts, redis, tmp_path
):
    """The script ran but its reply was lost: the lease it took goes, the counters stay."""
    from edge.journal import Journal
    from edge.limits import Admission
    from edge.metering import new_event
    from edge.publication import Publisher
    from edge.records import parse_key_record
    from edge.spool import Spool

    record = parse_key_record(orjson.dumps(key_record(concurrency=1)))
    ran = await parts.limiter.admit(record, estimated_tokens=50, reserved_cost=7)
    assert await redis.zcard("tg:conc:{o:3}:k:key_a") == 1
    counters = await redis.hgetall("tg:rl:{o:3}:k:key_a")
    lost = Admission(ran.keys, ran.lease, 0, "", 0, 0, [], checked=False)
    publisher = Publisher(parts.connection, parts.limiter, Spool(str(tmp_path)), Journal(tmp_path))
    event = new_event(
        key_id="key_a", org_id=3, input_tokens=40, output_tokens=10, ended_at_ms=1, cost_micro_minor=5
    )
    keys, args = parts.limiter.settle_args(lost, tokens=50, cost=5)

    await publisher.replay_batch([{**event, "_settle": [keys, args]}])

    assert await redis.zcard("tg:conc:{o:3}:k:key_a") == 0
    assert await redis.hgetall("tg:rl:{o:3}:k:key_a") == counters


async def test_a_burst_of_one_new_key_is_one_look_up_and_one_token(parts, redis):
    config = dataclasses.replace(
        parts.config, auth_cache_ttl=60, unknown_key_burst=1, unknown_key_per_second=0.001
    )
    auth = Authenticator(config, parts.data_plane)
    secret = await publish(redis, key_record())
    before = await get_calls(redis)

    records = await asyncio.gather(*(auth.authenticate(scope(secret)) for _ in range(300)))

    assert {record.key_id for record in records} == {"key_a"}
    assert await get_calls(redis) - before == 1
    # The look-up found the key, so its token came back: an unknown key is still looked up.
    with pytest.raises(EdgeError) as refused:
        await auth.authenticate(scope(keyformat.generate("live")))
    assert refused.value.status == 401
