"""The client key against hand-written peers and X-Forwarded-For headers."""

import pytest

from halviz.ui.client_key import address_key, client_key, trusted_proxies_from_env


@pytest.mark.parametrize("peer, headers, trusted, expected", [
    # No trusted proxy: forwarded headers are ignored, whatever they say.
    ("203.0.113.7", [], 0, "203.0.113.7"),
    ("203.0.113.7", ["198.51.100.1"], 0, "203.0.113.7"),
    ("127.0.0.1", ["198.51.100.1, 10.0.0.1"], 0, "127.0.0.1"),
    # One proxy: the entry it appended (the rightmost); what the client wrote to its left is not believed.
    ("10.0.0.2", ["198.51.100.1"], 1, "198.51.100.1"),
    ("10.0.0.2", ["1.1.1.1, 2.2.2.2, 198.51.100.1"], 1, "198.51.100.1"),
    ("10.0.0.2", ["1.1.1.1", "198.51.100.1"], 1, "198.51.100.1"),  # two headers read as one list
    # Two proxies: the second from the right.
    ("10.0.0.2", ["6.6.6.6, 198.51.100.1, 10.0.0.9"], 2, "198.51.100.1"),
    # Fewer entries than trusted proxies, no header, junk: the peer.
    ("10.0.0.2", ["198.51.100.1"], 2, "10.0.0.2"),
    ("10.0.0.2", [], 1, "10.0.0.2"),
    ("10.0.0.2", ["not-an-address"], 1, "10.0.0.2"),
    ("10.0.0.2", [" , ,"], 1, "10.0.0.2"),
    # Ports, brackets, quotes.
    ("10.0.0.2", ["198.51.100.1:5678"], 1, "198.51.100.1"),
    ("10.0.0.2", ['"[2001:db8::1]:443"'], 1, "2001:db8::/64"),
    # IPv6: one /64 is one client; IPv4-mapped is IPv4.
    ("2001:db8:0:1::1", [], 0, "2001:db8:0:1::/64"),
    ("2001:db8:0:1:ffff::9", [], 0, "2001:db8:0:1::/64"),
    ("::ffff:192.0.2.5", [], 0, "192.0.2.5"),
    ("fe80::1%eth0", [], 0, "fe80::/64"),
    # No peer at all (a test client, a unix socket).
    (None, [], 0, "unknown"),
    (None, ["198.51.100.1"], 1, "198.51.100.1"),
    ("testclient", [], 0, "testclient"),
])
def test_client_key(peer, headers, trusted, expected):
    assert client_key(peer, headers, trusted) == expected


def test_a_client_cannot_mint_keys_through_the_header():
    keys = {client_key("10.0.0.2", [f"{i}.{i}.{i}.{i}, 198.51.100.1"], 1) for i in range(1, 200)}
    assert keys == {"198.51.100.1"}


def test_address_key_refuses_what_is_not_an_address():
    assert address_key("") is None
    assert address_key("example.org") is None
    assert address_key("1.2.3.4.5") is None


@pytest.mark.parametrize("value, expected", [
    (None, 0), ("", 0), ("0", 0), ("1", 1), (" 2 ", 2), ("-3", 0), ("99", 8), ("one", 0),
])
def test_trusted_proxies_from_env(value, expected):
    environ = {} if value is None else {"HALVIZ_TRUSTED_PROXIES": value}
    assert trusted_proxies_from_env(environ) == expected
