"""The small address and transport notations of the configuration files. Pure.

``udp:PORT[:interface=ADDR]`` for a UDP listening port (STYLE §6: Twisted has no UDP endpoint
strings) and ``ADDR:PORT`` for a UDP destination (IPv4 literal; unicast or multicast). TCP
connection points are Twisted endpoint strings, parsed by Twisted in the roles.
"""

from __future__ import annotations

import ipaddress

#: ``transport = "tcp" | "udp"`` (EMMG, SCS remote MUX link) -> data_provision over UDP; control
#: messages always travel on the TCP connection
TRANSPORTS = {"tcp": False, "udp": True}


def parse_udp_listen(text: str) -> tuple[int, str]:
    """``udp:PORT[:interface=ADDR]`` -> ``(port, interface)``; interface defaults to 127.0.0.1.

    :raises ValueError: anything else.
    """
    parts = text.split(":")
    if len(parts) < 2 or parts[0] != "udp":
        raise ValueError(f"{text!r} is not udp:PORT[:interface=ADDR]")
    try:
        port = int(parts[1])
    except ValueError:
        raise ValueError(f"{text!r}: port {parts[1]!r} is not a number") from None
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{text!r}: port {port} out of range")
    interface = "127.0.0.1"
    for option in parts[2:]:
        name, _, value = option.partition("=")
        if name != "interface" or not value:
            raise ValueError(f"{text!r}: unknown option {option!r} (only interface=ADDR)")
        parse_ipv4(value, text)
        interface = value
    return port, interface


def parse_host_port(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (IPv4 literal) -> ``(addr, port)``.

    :raises ValueError: not an IPv4 address and a port 1..65535.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not ADDR:PORT")
    parse_ipv4(host, text)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"{text!r}: port {port} out of range 1..65535")
    return host, port


def parse_ipv4(value: str, text: str) -> ipaddress.IPv4Address:
    """*value* as an IPv4 address; *text* (the whole notation) names it in the error.

    :raises ValueError: not an IPv4 literal.
    """
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{text!r}: {value!r} is not an IPv4 address") from None


__all__ = ["TRANSPORTS", "parse_host_port", "parse_ipv4", "parse_udp_listen"]
