"""The portal's cluster and shard settings are parsed strictly: a bad value stops start-up."""

import pytest

from tests.portal.test_settings_env import _run

SETUP = [
    "-c",
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.EDGE_REDIS_CLUSTER, s.USAGE_STREAM_SHARDS, s.USAGE_CONSUMER_SHARDS)",
]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"EDGE_REDIS_CLUSTER": "true"},
            "EDGE_REDIS_CLUSTER needs EDGE_REDIS_URL: a redis:// URL of a cluster node",
        ),
        (
            {"EDGE_REDIS_CLUSTER": "true", "EDGE_REDIS_URL": "redis://10.0.0.5:7000/2"},
            "EDGE_REDIS_CLUSTER: a Redis Cluster has only database 0; remove it from the URL",
        ),
        (
            {"EDGE_REDIS_CLUSTER": "sometimes"},
            "EDGE_REDIS_CLUSTER must be a boolean (true/false/1/0), got 'sometimes'",
        ),
        ({"USAGE_STREAM_SHARDS": "0"}, "USAGE_STREAM_SHARDS must be >= 1, got 0"),
        ({"USAGE_STREAM_SHARDS": "4096"}, "USAGE_STREAM_SHARDS must be <= 1024, got 4096"),
        (
            {"USAGE_STREAM_SHARDS": "4", "USAGE_CONSUMER_SHARDS": "2,4"},
            "USAGE_CONSUMER_SHARDS must be shard numbers from 0 to 3, got '2,4'",
        ),
    ],
)
def test_a_bad_cluster_or_shard_setting_stops_start_up_naming_it(env, message):
    result = _run(SETUP, **env)

    assert result.returncode != 0
    assert f"ImproperlyConfigured: {message}" in result.stderr


def test_cluster_and_shard_settings_are_read_from_the_environment():
    result = _run(
        SETUP,
        EDGE_REDIS_CLUSTER="true",
        EDGE_REDIS_URL="redis://redis-cluster.internal:6379",
        USAGE_STREAM_SHARDS="8",
        USAGE_CONSUMER_SHARDS="1,5",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True 8 (1, 5)"


def test_without_cluster_settings_the_portal_uses_one_redis_and_one_stream():
    result = _run(SETUP)

    assert result.stdout.strip() == "False 1 None"
