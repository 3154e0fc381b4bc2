"""The edge's cluster connection (edge/cluster.py) against a local 3-master Redis Cluster, and
the key layout that lets every script call and stream stay within one hash slot."""

import asyncio

import pytest
import redis
from redis.crc import key_slot

from edge.batching import ScriptBatcher
from edge.cluster import ClusterConnection
from edge.limits import SCRIPTS, SETTLE_SHA, Limiter, _plan
from edge.records import Limits
from edge.resp import RespError
from edge.streams import dead_letter_stream, parse_shards, shard_of, usage_stream


def run(coroutine):
    return asyncio.run(coroutine)


def test_one_batch_goes_to_every_slot_s_master_and_its_replies_keep_their_order(redis_cluster):
    redis_cluster.flush()
    names = [f"tg:key:{index}" for index in range(60)]

    async def batch():
        connection = ClusterConnection(redis_cluster.url)
        try:
            await connection.execute([("SET", name, name.upper()) for name in names])
            return await connection.execute([("GET", name) for name in names]), connection._masters
        finally:
            connection.close()

    replies, masters = run(batch())

    assert replies == [name.upper().encode() for name in names]
    assert len(masters) == 3
    nodes = {port: redis.Redis(port=port) for port in redis_cluster.ports}
    # Each key is on the master that serves its slot, and the keys are spread over all three.
    owners = {}
    for port, node in nodes.items():
        for slot_range in node.execute_command("CLUSTER", "SLOTS"):
            if slot_range[2][1] == port:
                owners.update(dict.fromkeys(range(slot_range[0], slot_range[1] + 1), port))
    assert {owners[key_slot(name.encode())] for name in names} == set(redis_cluster.ports)
    assert all(nodes[owners[key_slot(name.encode())]].get(name) == name.upper().encode() for name in names)
    for node in nodes.values():
        node.close()


def test_scripts_are_loaded_on_every_master(redis_cluster):
    redis_cluster.flush()

    async def load():
        connection = ClusterConnection(redis_cluster.url)
        try:
            await ScriptBatcher(connection, SCRIPTS).load()
        finally:
            connection.close()

    for port in redis_cluster.ports:
        redis.Redis(port=port).script_flush()
    run(load())

    for port in redis_cluster.ports:
        assert redis.Redis(port=port).script_exists(*SCRIPTS) == [True, True]


def test_a_slot_moved_to_another_master_is_followed_and_the_map_read_again(redis_cluster):
    redis_cluster.flush()
    name = "tg:key:moving"
    slot = key_slot(name.encode())
    nodes = [redis.Redis(port=port) for port in redis_cluster.ports]
    ids = {
        port: node.execute_command("CLUSTER", "MYID").decode()
        for port, node in zip(redis_cluster.ports, nodes)
    }

    async def scenario():
        connection = ClusterConnection(redis_cluster.url)
        try:
            [before] = await connection.execute([("GET", name)])
            owner = connection._slots[slot]
            target = next(port for port in redis_cluster.ports if port != owner[1])
            for node in nodes:  # the slot is empty: moving it is a change of owner only
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
            # The map still names the old owner: it answers MOVED, which the connection follows.
            [written] = await connection.execute([("SET", name, "here")])
            return before, owner[1], target, written, connection._slots[slot]
        finally:
            connection.close()

    before, old_owner, target, written, new_owner = run(scenario())

    assert (before, written) == (None, b"OK")
    assert new_owner == ("127.0.0.1", target)
    assert redis.Redis(port=target).get(name) == b"here"
    assert redis.Redis(port=old_owner).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0


def test_a_script_error_reply_reaches_its_caller_as_a_resp_error(redis_cluster):
    redis_cluster.flush()

    async def call():
        connection = ClusterConnection(redis_cluster.url)
        try:
            return await connection.execute([("EVALSHA", "0" * 40, 1, "tg:rl:{o:1}:org")])
        finally:
            connection.close()

    [reply] = run(call())

    assert isinstance(reply, RespError) and reply.is_noscript


def test_every_key_of_an_admission_and_its_settlement_shares_the_organization_s_slot():
    limits = Limits(rpm=10, tpm=1000, concurrency=2, budget_minor=500)
    keys, _args = _plan(42, "key_abc", limits, limits)
    limiter = Limiter(batcher=None, lease_ttl_seconds=60)
    event = {
        "org_id": 42,
        "key_id": "key_abc",
        "ended_at_ms": 1_800_000_000_000,
        "input_tokens": 1,
        "output_tokens": 2,
    }
    settle = limiter.settle_command([list(keys), [2, 0, 0, "lease", "202612", 1]], event)
    settle_keys = settle[3 : 3 + settle[2]]

    assert settle[1] == SETTLE_SHA
    assert len(settle_keys) == 7
    assert {key_slot(key.encode()) for key in [*keys, *settle_keys]} == {key_slot(b"{o:42}")}


def test_one_shard_keeps_the_stream_names_of_an_unsharded_deployment():
    assert (usage_stream(0, 1), dead_letter_stream(0, 1)) == ("tg:usage", "tg:usage:dead")
    assert {shard_of(org_id, 1) for org_id in range(10)} == {0}


def test_shards_split_organizations_and_keep_each_dead_letter_stream_on_its_shard_s_slot():
    streams = [usage_stream(shard, 4) for shard in range(4)]

    assert streams == ["tg:usage:{s0}", "tg:usage:{s1}", "tg:usage:{s2}", "tg:usage:{s3}"]
    assert [shard_of(org_id, 4) for org_id in range(1, 9)] == [1, 2, 3, 0, 1, 2, 3, 0]
    assert [key_slot(dead_letter_stream(shard, 4).encode()) for shard in range(4)] == [
        key_slot(stream.encode()) for stream in streams
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), (" ", None), ("0", (0,)), ("3,1", (3, 1))],
)
def test_a_consumer_s_shards_are_parsed(text, expected):
    assert parse_shards(text, 4) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("4", "must be shard numbers from 0 to 3, got '4'"),
        ("-1", "must be shard numbers from 0 to 3, got '-1'"),
        ("0,0", "must not repeat a shard, got '0,0'"),
        ("0,,1", "must be shard numbers separated by commas, got '0,,1'"),
        ("a", "must be shard numbers separated by commas, got 'a'"),
    ],
)
def test_a_bad_shard_list_is_refused_with_a_message(text, message):
    with pytest.raises(ValueError) as caught:
        parse_shards(text, 4)

    assert str(caught.value) == message
