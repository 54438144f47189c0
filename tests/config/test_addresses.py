"""The address notations with IPv4 and IPv6 literals (config/addresses.py)."""

from __future__ import annotations

import pytest

from bcast_sp4.config.addresses import parse_host_port, parse_udp_listen, same_family


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:4359", ("127.0.0.1", 4359)),
    ("239.255.43.59:4359", ("239.255.43.59", 4359)),
    ("[::1]:4359", ("::1", 4359)),
    ("[ff05::4359]:6001", ("ff05::4359", 6001)),
    ("[FF02:0:0:0:0:0:0:1]:1", ("ff02::1", 1)),
])
def test_host_port_takes_ipv4_and_bracketed_ipv6(text, expected):
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text, why", [
    ("::1:4359", "in brackets"),
    ("[127.0.0.1]:4359", "IPv6 addresses only"),
    ("[::1:4359", "not ADDR:PORT"),
    ("[fe80::1%eth0]:4359", "no zone"),
    ("[::1]:0", "out of range"),
    ("[::1]", "not ADDR:PORT"),
    ("localhost:4359", "not an IPv4 address"),
])
def test_host_port_errors_say_why(text, why):
    with pytest.raises(ValueError, match=why):
        parse_host_port(text)


@pytest.mark.parametrize("text, expected", [
    ("udp:5000", (5000, "127.0.0.1")),
    ("udp:5000:interface=127.0.0.1", (5000, "127.0.0.1")),
    ("udp:5000:interface=::1", (5000, "::1")),
    ("udp:0:interface=\\:\\:1", (0, "::1")),
    ("udp:4359:interface=::", (4359, "::")),
])
def test_udp_listen_takes_ipv6_plain_or_escaped(text, expected):
    assert parse_udp_listen(text) == expected


@pytest.mark.parametrize("text", ["udp:x", "tcp:5000", "udp:5000:host=::1", "udp:5000:interface=:::1", "udp:70000"])
def test_udp_listen_errors(text):
    with pytest.raises(ValueError):
        parse_udp_listen(text)


def test_same_family():
    assert same_family("::1", "ff05::1") and same_family("127.0.0.1", "239.1.2.3")
    assert not same_family("127.0.0.1", "::1")
