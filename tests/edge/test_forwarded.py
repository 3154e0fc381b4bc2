"""Who the client is behind proxies: ``trusted_proxies`` and X-Forwarded-For against IP allow-lists.

Each proxy appends the address it saw, so only the entries that trusted proxies wrote can be
believed: the walk from the right stops at the first address that is not a trusted proxy.
The edge processes are real; their peer is always 127.0.0.1.
"""

import ipaddress

import httpx
import pytest

from edge.auth import client_address

pytestmark = pytest.mark.django_db

TRUSTED = ("127.0.0.1/32", "10.0.0.0/8", "fd00::/8")
NETWORKS = tuple(ipaddress.ip_network(entry) for entry in TRUSTED)


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("198.51.100.9", "203.0.113.7", "198.51.100.9"),  # an untrusted peer's header proves nothing
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", " , ", "127.0.0.1"),
        ("127.0.0.1", "198.51.100.9", "198.51.100.9"),
        ("127.0.0.1", "203.0.113.7, 198.51.100.9", "198.51.100.9"),
        ("127.0.0.1", "203.0.113.7,198.51.100.9,10.1.2.3", "198.51.100.9"),
        ("10.9.9.9", " 203.0.113.7 , 10.1.2.3 ", "203.0.113.7"),
        ("127.0.0.1", "10.0.0.5, 10.1.2.3", "10.0.0.5"),  # all trusted: the leftmost
        ("127.0.0.1", "203.0.113.7, not-an-ip, 10.1.2.3", "not-an-ip"),
        ("127.0.0.1", "203.0.113.7:4711", "203.0.113.7:4711"),
        ("127.0.0.1", "2001:db8::7, fd00::1", "2001:db8::7"),
        ("fd00::2", "2001:db8::7, 2001:db9::1", "2001:db9::1"),
        ("::1", "203.0.113.7", "::1"),
        (None, "203.0.113.7", None),
        ("not-an-ip", "203.0.113.7", "not-an-ip"),
    ],
)
def test_client_address_walks_from_the_right_past_trusted_proxies(peer, forwarded, client):
    assert client_address(peer, forwarded, NETWORKS) == client


@pytest.fixture(scope="module")
def trusting_edge(start_module_edge, mock_upstream):
    return start_module_edge(
        [{"model": "*", "upstreams": [mock_upstream.url]}], extra_config={"trusted_proxies": list(TRUSTED)}
    )


@pytest.fixture(scope="module")
def plain_edge(start_module_edge, mock_upstream):
    return start_module_edge([{"model": "*", "upstreams": [mock_upstream.url]}])


def send(edge, secret: str, *forwarded: str) -> httpx.Response:
    headers = [("authorization", f"Bearer {secret}")] + [("x-forwarded-for", value) for value in forwarded]
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(f"{edge.url}/v1/chat/completions", json=body, headers=headers, timeout=10)


def refused(address: str) -> dict:
    return {
        "error": {
            "message": f"Requests from {address} are not allowed for this API key.",
            "type": "permission_error",
            "param": None,
            "code": "ip_not_allowed",
        }
    }


def assert_refused(response: httpx.Response, address: str) -> None:
    assert response.status_code == 403
    assert response.json() == refused(address)


def test_an_address_the_client_wrote_left_of_the_proxys_is_not_believed(trusting_edge, make_key):
    _, secret = make_key(allowed_ips=["203.0.113.7/32"])

    assert_refused(send(trusting_edge, secret, "203.0.113.7, 198.51.100.9"), "198.51.100.9")
    assert send(trusting_edge, secret, "198.51.100.9, 203.0.113.7").status_code == 200


def test_every_x_forwarded_for_header_counts_in_order(trusting_edge, make_key):
    _, secret = make_key(allowed_ips=["203.0.113.7/32"])

    assert_refused(send(trusting_edge, secret, "203.0.113.7", "198.51.100.9"), "198.51.100.9")
    assert send(trusting_edge, secret, "198.51.100.9", "203.0.113.7").status_code == 200


def test_a_chain_through_two_trusted_proxies_reaches_the_client(trusting_edge, make_key):
    _, secret = make_key(allowed_ips=["203.0.113.7/32"])

    assert send(trusting_edge, secret, "198.51.100.9, 203.0.113.7, 10.1.2.3").status_code == 200
    assert_refused(send(trusting_edge, secret, "203.0.113.7, 198.51.100.9, 10.1.2.3"), "198.51.100.9")


def test_when_every_entry_is_a_trusted_proxy_the_leftmost_is_the_client(trusting_edge, make_key):
    _, inside = make_key(allowed_ips=["10.0.0.5/32"])
    _, outside = make_key(allowed_ips=["127.0.0.1/32"])

    assert send(trusting_edge, inside, "10.0.0.5, 10.1.2.3").status_code == 200
    assert_refused(send(trusting_edge, outside, "10.0.0.5, 10.1.2.3"), "10.0.0.5")


def test_an_entry_that_is_not_an_address_is_the_client_and_fails_the_allow_list(trusting_edge, make_key):
    _, secret = make_key(allowed_ips=["203.0.113.7/32"])

    assert_refused(send(trusting_edge, secret, "203.0.113.7, not-an-ip, 10.1.2.3"), "not-an-ip")


def test_ipv6_clients_and_proxies(trusting_edge, make_key):
    _, secret = make_key(allowed_ips=["2001:db8::/32"])

    assert send(trusting_edge, secret, "2001:db8::7, fd00::1").status_code == 200
    assert_refused(send(trusting_edge, secret, "2001:db8::7, 2001:db9::1, fd00::1"), "2001:db9::1")


def test_a_key_without_an_allow_list_is_served_whatever_the_header_says(trusting_edge, make_key):
    _, secret = make_key()

    assert send(trusting_edge, secret, "not-an-ip").status_code == 200


def test_without_trusted_proxies_the_header_is_ignored(plain_edge, make_key):
    _, spoofed = make_key(allowed_ips=["203.0.113.7/32"])
    _, local = make_key(allowed_ips=["127.0.0.1/32"])

    assert_refused(send(plain_edge, spoofed, "203.0.113.7"), "127.0.0.1")
    assert send(plain_edge, local, "203.0.113.7").status_code == 200
