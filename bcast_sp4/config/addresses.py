"""The small address and transport notations of the configuration files. Pure.

``udp:PORT[:interface=ADDR]`` for a UDP listening port (STYLE §6: Twisted has no UDP endpoint
strings) and ``ADDR:PORT`` for a UDP destination (unicast or multicast). ADDR is an IPv4 literal
(``127.0.0.1``, ``239.255.43.59``) or an IPv6 literal: bracketed in ``[ADDR]:PORT``
(``[::1]:4359``, ``[ff05::4359]:4359``), and after ``interface=`` either plain (``interface=::1``)
or with Twisted's escaped colons (``interface=\\:\\:1``). TCP connection points are Twisted
endpoint strings, parsed by Twisted in the roles (``tcp:4000:interface=\\:\\:1``,
``tcp:host=\\:\\:1:port=4000``).
"""

from __future__ import annotations

import ipaddress

#: ``transport = "tcp" | "udp"`` (EMMG, SCS remote MUX link) -> data_provision over UDP; control
#: messages always travel on the TCP connection
TRANSPORTS = {"tcp": False, "udp": True}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_udp_listen(text: str) -> tuple[int, str]:
    """``udp:PORT[:interface=ADDR]`` -> ``(port, interface)``; interface defaults to 127.0.0.1.

    :raises ValueError: anything else.
    """
    scheme, _, rest = text.partition(":")
    if scheme != "udp" or not rest:
        raise ValueError(f"{text!r} is not udp:PORT[:interface=ADDR]")
    port_text, _, option = rest.partition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{text!r}: port {port} out of range")
    interface = "127.0.0.1"
    if option:
        name, _, value = option.partition("=")
        value = value.replace("\\:", ":")
        if name != "interface" or not value:
            raise ValueError(f"{text!r}: unknown option {option!r} (only interface=ADDR)")
        interface = str(parse_ip(value, text))
    return port, interface


def parse_host_port(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (IPv4) or ``[ADDR]:PORT`` (IPv6) -> ``(addr, port)``, addr in compressed form.

    :raises ValueError: not an address and a port 1..65535.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or (text.startswith("[") and "]:" not in text):
        raise ValueError(f"{text!r} is not ADDR:PORT (IPv6: [ADDR]:PORT)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{text!r}: unbalanced brackets (IPv6: [ADDR]:PORT)")
        address = parse_ip(host[1:-1], text)
        if address.version != 6:
            raise ValueError(f"{text!r}: brackets are for IPv6 addresses only")
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, [ADDR]:PORT")
    else:
        address = parse_ipv4(host, text)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"{text!r}: port {port} out of range 1..65535")
    return str(address), port


def parse_ipv4(value: str, text: str) -> ipaddress.IPv4Address:
    """*value* as an IPv4 address; *text* (the whole notation) names it in the error.

    :raises ValueError: not an IPv4 literal.
    """
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{text!r}: {value!r} is not an IPv4 address") from None


def parse_ip(value: str, text: str) -> IPAddress:
    """*value* as an IPv4 or IPv6 address (no zone); *text* names it in the error.

    :raises ValueError: not an IP literal.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{text!r}: {value!r} is not an IPv4 or IPv6 address") from None
    if address.version == 6 and address.scope_id:
        raise ValueError(f"{text!r}: {value!r}: no zone here (name the interface where one is asked for)")
    return address


def same_family(a: str, b: str) -> bool:
    """Are the two IP literals of one family (a socket bound to one can send to the other)?"""
    return ipaddress.ip_address(a).version == ipaddress.ip_address(b).version


__all__ = ["TRANSPORTS", "parse_host_port", "parse_ip", "parse_ipv4", "parse_udp_listen", "same_family"]
