"""A local 3-master Redis Cluster for the module, emptied before each test, and the portal
pointed at it (EDGE_REDIS_CLUSTER, four usage stream shards)."""

import pytest

from tests.cluster.servers import LocalRedisCluster
from tests.edge.conftest import make_key, mock_upstream  # noqa: F401 - fixtures used here too

SHARDS = 4


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(redis_cluster, settings):
    """The cluster, empty, with the portal publishing to it and the data plane marked synced."""
    from keys.publication import edge_resync

    redis_cluster.flush()
    settings.EDGE_REDIS_URL = redis_cluster.url
    settings.EDGE_REDIS_CLUSTER = True
    settings.USAGE_STREAM_SHARDS = SHARDS
    settings.USAGE_CONSUMER_SHARDS = None
    edge_resync()  # writes tg:synced: a record missing from now on is a key that does not exist
    return redis_cluster
