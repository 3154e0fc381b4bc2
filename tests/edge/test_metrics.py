"""The edge's /metrics: requests by status, model and organization, the latency histograms,
limit refusals and the spool gauge, aggregated over the worker processes."""

import httpx
import pytest

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def metrics_edge(start_module_edge, mock_upstream):
    # Two workers: /metrics on either reports what both did.
    return start_module_edge([{"model": "mock-model", "upstreams": [mock_upstream.url]}], workers=2)


def test_served_refused_and_streamed_requests_show_in_the_metrics(metrics_edge, make_key, edge_metric):
    key, secret = make_key(rpm_limit=3)
    headers = {"authorization": f"Bearer {secret}"}
    url = f"{metrics_edge.url}/v1/chat/completions"
    with httpx.Client(timeout=10) as client:
        served = [
            client.post(url, json={"model": "mock-model", "messages": HELLO}, headers=headers)
            for _ in range(2)
        ]
        with client.stream(
            "POST", url, json={"model": "mock-model", "messages": HELLO, "stream": True}, headers=headers
        ) as stream:
            stream.read()
        refused = client.post(url, json={"model": "mock-model", "messages": HELLO}, headers=headers)

    assert [response.status_code for response in served] == [200, 200]
    assert stream.status_code == 200
    assert refused.status_code == 429
    org = str(key.organization_id)
    assert (
        edge_metric(metrics_edge, "tollgate_edge_requests_total", status="200", model="mock-model", org=org)
        == 3
    )
    assert edge_metric(metrics_edge, "tollgate_edge_limit_refusals_total", scope="key", kind="requests") == 1
    for histogram in (
        "tollgate_edge_request_seconds",
        "tollgate_edge_overhead_seconds",
        "tollgate_edge_upstream_seconds",
        "tollgate_edge_time_to_first_token_seconds",
    ):
        assert edge_metric(metrics_edge, f"{histogram}_count") == 3, histogram
        assert edge_metric(metrics_edge, f"{histogram}_sum") > 0, histogram
    # Refused requests count too, by what the edge knew: the routed model and the organization.
    assert (
        edge_metric(metrics_edge, "tollgate_edge_requests_total", status="429", model="mock-model", org=org)
        == 1
    )
    assert edge_metric(metrics_edge, "tollgate_edge_auth_cache_total") == 4
    text = httpx.get(f"{metrics_edge.url}/metrics", timeout=5).text
    assert "tollgate_edge_spool_pending 0.0" in text


def test_refusals_before_a_key_or_a_route_count_without_model_or_organization(metrics_edge, edge_metric):
    url = f"{metrics_edge.url}/v1/chat/completions"
    before = edge_metric(metrics_edge, "tollgate_edge_requests_total", status="401", model="", org="")

    response = httpx.post(url, json={"model": "mock-model", "messages": HELLO}, timeout=10)
    unknown = httpx.get(f"{metrics_edge.url}/v1/nothing-here", timeout=10)

    assert (response.status_code, unknown.status_code) == (401, 404)
    assert (
        edge_metric(metrics_edge, "tollgate_edge_requests_total", status="401", model="", org="")
        == before + 1
    )
    assert edge_metric(metrics_edge, "tollgate_edge_requests_total", status="404", model="", org="") == 1


def test_a_model_that_is_not_routed_is_not_a_label_value(metrics_edge, make_key, edge_metric):
    _, secret = make_key()
    response = httpx.post(
        f"{metrics_edge.url}/v1/chat/completions",
        json={"model": "random-name-1234", "messages": HELLO},
        headers={"authorization": f"Bearer {secret}"},
        timeout=10,
    )

    assert response.status_code == 404
    text = httpx.get(f"{metrics_edge.url}/metrics", timeout=5).text
    assert "random-name-1234" not in text


def test_model_listings_count_for_the_organization_without_a_model(metrics_edge, make_key, edge_metric):
    key, secret = make_key()
    org = str(key.organization_id)

    response = httpx.get(
        f"{metrics_edge.url}/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=10
    )

    assert response.status_code == 200
    assert edge_metric(metrics_edge, "tollgate_edge_requests_total", status="200", model="", org=org) == 1


def _series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_a_thousand_invented_model_names_add_no_series(start_edge, mock_upstream, make_key):
    """A glob route serves any name: the label is the route's pattern, never the name sent."""
    edge = start_edge(
        [
            {"model": "mock-*", "upstreams": [mock_upstream.url]},
            {"model": "*", "upstreams": [mock_upstream.url]},
        ]
    )
    _, secret = make_key(allowed_models=["mock-model"])
    headers = {"authorization": f"Bearer {secret}"}
    before = len(_series(httpx.get(f"{edge.url}/metrics", timeout=5).text, "tollgate_edge_requests_total"))
    with httpx.Client(base_url=edge.url, headers=headers, timeout=10) as client:
        served = client.post("/v1/chat/completions", json={"model": "mock-model", "messages": HELLO})
        refused = [
            client.post("/v1/chat/completions", json={"model": f"name-{n}\r\n\x00", "messages": HELLO})
            for n in range(1000)
        ]
    assert served.status_code == 200
    assert {r.status_code for r in refused} == {403}  # not allowed for this key, routed by "*"

    text = httpx.get(f"{edge.url}/metrics", timeout=5).text
    series = _series(text, "tollgate_edge_requests_total")
    assert len(series) - before == 2  # one for the served request, one for the refusals
    assert any('model="mock-*"' in line and 'status="200"' in line for line in series)
    assert any('model="*"' in line and 'status="403"' in line and line.endswith(" 1000.0") for line in series)
    assert "name-" not in text


def test_metrics_answer_only_this_host_unless_a_token_is_configured(start_edge, mock_upstream):
    outside = non_loopback_address()
    routes = [{"model": "*", "upstreams": [mock_upstream.url]}]
    open_edge = start_edge(routes, env={"EDGE_HOST": "0.0.0.0"})
    assert httpx.get(f"{open_edge.url}/metrics", timeout=5).status_code == 200
    far = httpx.get(f"http://{outside}:{open_edge.port}/metrics", timeout=5)
    assert far.status_code == 403
    assert far.json()["error"]["code"] == "metrics_forbidden"

    token = "t" * 24
    guarded = start_edge(routes, env={"EDGE_HOST": "0.0.0.0"}, extra_config={"metrics_token": token})
    url = f"http://{outside}:{guarded.port}/metrics"
    assert httpx.get(url, timeout=5).status_code == 401
    assert (
        httpx.get(url, headers={"authorization": "Bearer wrong-token-000000000"}, timeout=5).status_code
        == 401
    )
    allowed = httpx.get(url, headers={"authorization": f"Bearer {token}"}, timeout=5)
    assert allowed.status_code == 200
    assert "tollgate_edge_requests_total" in allowed.text


def non_loopback_address() -> str:
    """An IPv4 address of this host other than loopback: a request from it is not "this host"
    to the edge's check (the peer address is what it reads)."""
    import ipaddress
    import subprocess

    for address in subprocess.run(
        ["hostname", "-I"], capture_output=True, text=True, check=True
    ).stdout.split():
        ip = ipaddress.ip_address(address)
        if ip.version == 4 and not ip.is_loopback:
            return address
    raise AssertionError("this host has no address besides loopback to send from")
