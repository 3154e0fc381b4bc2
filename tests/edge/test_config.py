"""Edge configuration (edge/config.py): one YAML file plus the environment, parsed strictly."""

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.config import ConfigError, HttpLimits, load_config

ROOT = Path(__file__).resolve().parents[2]
PEPPER = "p" * 40
ENV = {"KEY_PEPPER": PEPPER, "EDGE_REDIS_URL": "redis://127.0.0.1:6379/3"}
ROUTES = [{"model": "demo-*", "upstreams": ["http://127.0.0.1:9001"]}]


def load(tmp_path, data, **env):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(str(path), env={**ENV, **env})


def test_the_example_file_reads_as_documented():
    config = load_config(str(ROOT / "deploy" / "edge.example.yaml"), env={**ENV, "VLLM_API_KEY": "sk-vllm"})

    assert (config.host, config.port, config.workers) == ("127.0.0.1", 8080, 2)
    assert (config.auth_cache_ttl, config.auth_cache_size, config.stale_auth_seconds) == (10, 100_000, 300)
    assert (config.spool_dir, config.spool_fsync_ms, config.lease_ttl_seconds) == (".run/spool", 50, 600)
    assert (config.unknown_key_burst, config.unknown_key_per_second, config.unknown_key_addresses) == (
        20,
        1,
        10_000,
    )
    assert (config.body_limit_bytes, config.default_max_tokens, config.trusted_proxies) == (
        10485760,
        4096,
        (),
    )
    assert config.http == HttpLimits(max_url_bytes=8192, max_header_bytes=65536, max_headers=100)
    assert config.pepper == PEPPER.encode()
    assert config.redis_url == "redis://127.0.0.1:6379/3"
    gpt = config.route_for("gpt-4o-mini")
    assert [(u.url, u.weight, u.api_key) for u in gpt.upstreams] == [
        ("http://127.0.0.1:8001", 3, "sk-vllm"),
        ("http://127.0.0.1:8002", 1, ""),
    ]
    demo = config.route_for("demo-chat").upstreams[0]
    assert (demo.connect_timeout, demo.read_timeout) == (2, 120)
    assert config.route_for("llama-3") is None


def test_the_environment_overrides_the_file(tmp_path):
    config = load(
        tmp_path,
        {"listen": {"host": "0.0.0.0", "port": 8080}, "workers": 4, "routes": ROUTES},
        EDGE_HOST="127.0.0.2",
        EDGE_PORT="9090",
        EDGE_WORKERS="3",
        EDGE_SPOOL_DIR="/var/spool/tollgate",
        EDGE_STALE_AUTH_SECONDS="30",
        EDGE_ACCESS_LOG="false",
    )

    assert (config.host, config.port, config.workers) == ("127.0.0.2", 9090, 3)
    assert (config.spool_dir, config.stale_auth_seconds, config.access_log) == (
        "/var/spool/tollgate",
        30,
        False,
    )


def test_an_upstream_may_be_written_as_a_bare_url_and_gets_the_defaults(tmp_path):
    config = load(tmp_path, {"routes": [{"model": "*", "upstreams": ["https://api.example.com/v1/"]}]})

    [upstream] = config.routes[0].upstreams
    assert (upstream.url, upstream.weight, upstream.api_key) == ("https://api.example.com/v1", 1, "")
    assert (upstream.connect_timeout, upstream.read_timeout) == (5, 300)


def test_http_limits_default_and_may_be_set_one_by_one(tmp_path):
    assert load(tmp_path, {"routes": ROUTES}).http == HttpLimits(
        max_url_bytes=8192, max_header_bytes=65536, max_headers=100
    )
    assert load(tmp_path, {"http": {"max_headers": 50}, "routes": ROUTES}).http == HttpLimits(
        max_url_bytes=8192, max_header_bytes=65536, max_headers=50
    )


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        (
            {"routes": ROUTES},
            {"KEY_PEPPER": "short"},
            "KEY_PEPPER must be set to the portal's value (32+ characters)",
        ),
        (
            {"routes": ROUTES},
            {"EDGE_REDIS_URL": "http://redis"},
            "EDGE_REDIS_URL (or redis_url in the config) must be a redis:// URL",
        ),
        ({"routes": []}, {}, "routes must be a non-empty list"),
        ({"routes": [{"model": "m", "upstreams": []}]}, {}, "routes[0].upstreams must be a non-empty list"),
        ({"routes": [{"upstreams": ["http://a"]}]}, {}, "routes[0].model must be a model name or glob"),
        (
            {"routes": [{"model": "m", "upstreams": ["ftp://files"]}]},
            {},
            "routes[0].upstreams[0].url must be an http(s) URL, got 'ftp://files'",
        ),
        (
            {"routes": [{"model": "m", "upstreams": ["http://user:pw@vllm:8000"]}]},
            {},
            "routes[0].upstreams[0].url must not hold credentials: put the upstream's key in api_key",
        ),
        (
            {"routes": [{"model": "m", "upstreams": [{"url": "http://a", "weight": 0}]}]},
            {},
            "routes[0].upstreams[0].weight must be >= 1, got 0",
        ),
        (
            {"routes": [{"model": "m", "upstreams": [{"url": "http://a", "read_timeout": "soon"}]}]},
            {},
            "routes[0].upstreams[0].read_timeout must be a number, got 'soon'",
        ),
        (
            {"routes": [{"model": "m", "upstreams": [{"url": "http://a", "connect_timeout": 0}]}]},
            {},
            "routes[0].upstreams[0].connect_timeout must be >= 0.001, got 0.0",
        ),
        (
            {
                "routes": [
                    {"model": "m", "upstreams": [{"url": "http://a", "api_key": "${NOT_SET_ANYWHERE}"}]}
                ]
            },
            {},
            "environment variable NOT_SET_ANYWHERE referenced in the config is not set",
        ),
        (
            {"routes": [{"model": "m", "upstream": ["http://a"]}]},
            {},
            "routes[0] has unknown settings: upstream (known: model, upstreams)",
        ),
        (
            {"routes": [{"model": "m", "upstreams": [{"url": "http://a", "timeout": 3}]}]},
            {},
            "routes[0].upstreams[0] has unknown settings: timeout "
            "(known: api_key, connect_timeout, read_timeout, url, weight)",
        ),
        (
            {"listn": {"port": 1}, "routes": ROUTES},
            {},
            "the edge config has unknown settings: listn (known: access_log, auth_cache, body_limit_bytes, "
            "default_max_tokens, fail_open, http, lease_ttl_seconds, listen, metrics_token, redis_cluster, "
            "redis_url, routes, spool, trusted_proxies, unknown_keys, usage_stream_shards, workers)",
        ),
        (
            {"spool": {"directory": "/tmp"}, "routes": ROUTES},
            {},
            "spool has unknown settings: directory (known: dir, fsync_ms)",
        ),
        ({"auth_cache": 10, "routes": ROUTES}, {}, "auth_cache must be a mapping"),
        (
            {"unknown_keys": {"rate": 5}, "routes": ROUTES},
            {},
            "unknown_keys has unknown settings: rate (known: burst, max_addresses, per_second)",
        ),
        ({"unknown_keys": {"burst": 0}, "routes": ROUTES}, {}, "unknown_keys.burst must be >= 1, got 0"),
        (
            {"unknown_keys": {"per_second": 0}, "routes": ROUTES},
            {},
            "unknown_keys.per_second must be >= 0.001, got 0.0",
        ),
        (
            {"unknown_keys": {"max_addresses": "many"}, "routes": ROUTES},
            {},
            "unknown_keys.max_addresses must be a number, got 'many'",
        ),
        (
            {"http": {"max_header_size": 1}, "routes": ROUTES},
            {},
            "http has unknown settings: max_header_size (known: max_header_bytes, max_headers, max_url_bytes)",
        ),
        (
            {"http": {"max_url_bytes": 512}, "routes": ROUTES},
            {},
            "http.max_url_bytes must be >= 1024, got 512",
        ),
        (
            {"http": {"max_header_bytes": "64k"}, "routes": ROUTES},
            {},
            "http.max_header_bytes must be a number, got '64k'",
        ),
        ({"http": {"max_headers": 8}, "routes": ROUTES}, {}, "http.max_headers must be >= 16, got 8"),
        (
            {"trust_forwarded_for": True, "routes": ROUTES},
            {},
            "trust_forwarded_for has been removed: list the proxies in front of the edge in trusted_proxies",
        ),
        (
            {"trusted_proxies": ["10.0.0.0/8", "10.0.0.1/8"], "routes": ROUTES},
            {},
            "trusted_proxies has an entry that is not a CIDR: '10.0.0.1/8'",
        ),
        (
            {"trusted_proxies": ["proxy.internal"], "routes": ROUTES},
            {},
            "trusted_proxies has an entry that is not a CIDR: 'proxy.internal'",
        ),
        (
            {"trusted_proxies": ["2001:db8::/129"], "routes": ROUTES},
            {},
            "trusted_proxies has an entry that is not a CIDR: '2001:db8::/129'",
        ),
        (
            {"trusted_proxies": "10.0.0.0/8", "routes": ROUTES},
            {},
            "trusted_proxies must be a list of CIDRs, got '10.0.0.0/8'",
        ),
        (
            {"routes": ROUTES},
            {"EDGE_TRUSTED_PROXIES": "127.0.0.1/32, 10.0.0.256"},
            "EDGE_TRUSTED_PROXIES has an entry that is not a CIDR: '10.0.0.256'",
        ),
        ({"routes": ROUTES}, {"EDGE_PORT": "http"}, "EDGE_PORT must be a number, got 'http'"),
        (
            {"redis_cluster": True, "routes": ROUTES},
            {},
            "redis_cluster: a Redis Cluster has only database 0, remove it from the URL",
        ),
        (
            {"redis_cluster": True, "routes": ROUTES},
            {"EDGE_REDIS_URL": "unix:///run/redis.sock"},
            "redis_cluster needs a redis:// or rediss:// URL of a node, not a socket",
        ),
        (
            {"redis_cluster": "maybe", "routes": ROUTES},
            {},
            "redis_cluster must be true or false, got 'maybe'",
        ),
        ({"usage_stream_shards": 0, "routes": ROUTES}, {}, "usage_stream_shards must be >= 1, got 0"),
        (
            {"routes": ROUTES},
            {"EDGE_USAGE_STREAM_SHARDS": "2000"},
            "usage_stream_shards must be <= 1024, got 2000",
        ),
        (
            {"routes": ROUTES},
            {"EDGE_USAGE_STREAM_SHARDS": "four"},
            "usage_stream_shards must be a number, got 'four'",
        ),
    ],
)
def test_a_bad_setting_is_refused_with_a_message_that_names_it(tmp_path, data, env, message):
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, data, **env)
    assert str(caught.value) == message


def test_a_cluster_and_stream_shards_are_off_unless_configured(tmp_path):
    config = load(tmp_path, {"routes": ROUTES})

    assert (config.redis_cluster, config.usage_stream_shards) == (False, 1)


def test_a_cluster_and_stream_shards_come_from_the_file_or_the_environment(tmp_path):
    from_file = load(
        tmp_path,
        {"redis_cluster": True, "usage_stream_shards": 4, "routes": ROUTES},
        EDGE_REDIS_URL="redis://10.0.0.5:7000",
    )
    from_env = load(
        tmp_path,
        {"routes": ROUTES},
        EDGE_REDIS_URL="rediss://user:secret@redis-cluster.internal:6379/0",
        EDGE_REDIS_CLUSTER="true",
        EDGE_USAGE_STREAM_SHARDS="8",
    )

    assert (from_file.redis_cluster, from_file.usage_stream_shards) == (True, 4)
    assert (from_env.redis_cluster, from_env.usage_stream_shards) == (True, 8)


def test_trusted_proxies_are_parsed_once_into_networks(tmp_path):
    config = load(
        tmp_path, {"trusted_proxies": ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"], "routes": ROUTES}
    )

    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_edge_trusted_proxies_replaces_the_files_list_even_when_empty(tmp_path):
    data = {"trusted_proxies": ["10.0.0.0/8"], "routes": ROUTES}

    assert load(tmp_path, data, EDGE_TRUSTED_PROXIES=" 127.0.0.1/32, ::1 ").trusted_proxies == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert load(tmp_path, data, EDGE_TRUSTED_PROXIES="").trusted_proxies == ()


def test_python_m_edge_with_a_bad_config_exits_2_and_says_why(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({"routes": [{"model": "m", "upstreams": ["ftp://files"]}]}))

    done = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(path)],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **ENV},
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert done.returncode == 2
    assert done.stderr == (
        "edge: configuration error: routes[0].upstreams[0].url must be an http(s) URL, got 'ftp://files'\n"
    )
