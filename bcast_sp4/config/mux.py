"""MUX configuration (``etc/mux.toml``) -> :class:`MuxSettings`. Pure: no Twisted, no sockets.

Also the two small address notations the EMMG/MUX files share: ``udp:PORT[:interface=ADDR]`` for a
UDP listening port (STYLE §6: Twisted has no UDP endpoint strings) and ``ADDR:PORT`` for a UDP
destination (IPv4 literal; unicast or multicast).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import attrs

from ..machines.mux import MAX_UDP_PAYLOAD, ClientConfig, MuxConfig, RouteConfig, RouteKind
from ..wire.message import HEADER_SIZE, MAX_MESSAGE_LENGTH
from ..wire.sp4 import Profile, profile_of
from ._reader import ConfigError, Reader, load_toml


@attrs.frozen(kw_only=True)
class MuxSettings:
    """Everything ``bcast-mux`` needs."""

    endpoint: str
    udp: tuple[int, str] | None  # (port, interface) for data_provision over UDP
    mux: MuxConfig
    egress_interface: str
    max_message_length: int
    source_path: Path


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
        _ipv4(value, text)
        interface = value
    return port, interface


def parse_host_port(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (IPv4 literal) -> ``(addr, port)``.

    :raises ValueError: not an IPv4 address and a port 1..65535.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is not ADDR:PORT")
    _ipv4(host, text)
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"{text!r}: port {port} out of range 1..65535")
    return host, port


def _ipv4(value: str, text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{text!r}: {value!r} is not an IPv4 address") from None


def _milliseconds(reader: Reader, key: str, default_ms: int, low: int = 0, high: int = 3_600_000) -> float:
    return reader.integer(key, default_ms, low, high) / 1000.0


def load_mux_settings(path: str | Path) -> MuxSettings:
    """Read a MUX configuration file (see ``etc/mux.toml``).

    :raises ConfigError: naming file, key and reason.
    """
    path, doc = load_toml(path)
    root = Reader(path, doc)
    top = root.sub("mux", required=True)
    endpoint = top.string("endpoint", "tcp:5000:interface=127.0.0.1")
    udp = None
    udp_text = top.string("udp", None)
    if udp_text is not None:
        try:
            udp = parse_udp_listen(udp_text)
        except ValueError as exc:
            raise top.fail("udp", str(exc)) from None
    versions = top.table.get("versions", [2, 3, 4, 5])
    top.used.add("versions")
    if not isinstance(versions, list) or not versions or not all(v in (2, 3, 4, 5) for v in versions):
        raise top.fail("versions", f"must be a non-empty list drawn from 2, 3, 4, 5 (v1 has no data_id), not {versions!r}")
    max_length = top.integer("max_message_length", MAX_MESSAGE_LENGTH, HEADER_SIZE, MAX_MESSAGE_LENGTH)
    kwargs = dict(
        versions=frozenset(versions),
        max_channels=top.integer("max_channels", 64, 1, 65536),
        max_streams=top.integer("max_streams", 256, 1, 1_000_000),
        max_streams_per_channel=top.integer("max_streams_per_channel", 16, 1, 65536),
        max_bandwidth=top.integer("max_bandwidth", 100_000, 0, 100_000_000),
        max_invalid_messages=top.integer("max_invalid_messages", 3, 0, 1000),
    )
    top.no_unknown_keys()

    q = root.sub("queues")
    kwargs.update(
        queue_datagrams=q.integer("max_datagrams", 1024, 1, 10_000_000),
        queue_bytes=q.integer("max_bytes", 1 << 20, 1, 1 << 34),
        max_datagram_size=q.integer("max_datagram_size", MAX_UDP_PAYLOAD, 1, MAX_UDP_PAYLOAD),
        overrun_limit=q.integer("overrun_limit", 5, 1, 1_000_000),
        ingress_burst=_milliseconds(q, "ingress_burst_ms", 500),
        egress_burst=_milliseconds(q, "egress_burst_ms", 20),
        drop_log_interval=_milliseconds(q, "drop_log_interval_ms", 1000),
        udp_error_interval=_milliseconds(q, "udp_error_interval_ms", 1000),
        max_pending_stkms=q.integer("max_pending_stkms", 8, 1, 1000),
    )
    q.no_unknown_keys()

    e = root.sub("egress")
    egress_interface = e.string("interface", "127.0.0.1")
    try:
        _ipv4(egress_interface, egress_interface)
    except ValueError as exc:
        raise e.fail("interface", str(exc)) from None
    kwargs["unthrottled"] = e.boolean("unthrottled", False)
    e.no_unknown_keys()

    clients: dict[int, ClientConfig] = {}
    destinations: dict[tuple[str, int], str] = {}
    for entry in root.list_of_tables("client"):
        client_id = entry.integer("client_id", low=0, high=0xFFFFFFFF)
        if client_id in clients:
            raise entry.fail("client_id", f"{client_id:#010x} listed twice")
        profile = profile_of(client_id)
        routes: dict[int, RouteConfig] = {}
        for kind, id_key in ((RouteKind.LTKM, "data_id"), (RouteKind.STKM, "ecm_id")):
            for table in entry.list_of_tables(kind.value):
                data_id = table.integer(id_key)
                if data_id in routes:
                    raise table.fail(id_key, f"{data_id} already routed for client {client_id:#010x}")
                if kind is RouteKind.LTKM and profile is not Profile.DRM:
                    raise entry.fail(
                        "client_id",
                        f"{client_id:#010x} carries LTKMs: SP-4 LTKMs are DRM Profile only (0x0001xxxx); "
                        "Smartcard Profile LTKMs are not broadcast",
                    )
                if kind is RouteKind.STKM and profile is None:
                    raise entry.fail("client_id", f"{client_id:#010x} carries STKMs: a Super_CAS_id 0x0001xxxx or 0x0002xxxx")
                try:
                    destination = parse_host_port(table.string("destination"))
                except ValueError as exc:
                    raise table.fail("destination", str(exc)) from None
                where = f"client {client_id:#010x} {id_key} {data_id}"
                if destination in destinations:
                    raise table.fail("destination", f"{destination[0]}:{destination[1]} already used by {destinations[destination]}")
                destinations[destination] = where
                route = RouteConfig(
                    kind=kind,
                    data_id=data_id,
                    destination=destination,
                    ttl=table.integer("ttl", 1, 1, 255),
                    max_bandwidth=table.integer("max_bandwidth", 0xFFFF),
                    default_bandwidth=table.integer("default_bandwidth", 0),
                    repetition_period=table.integer("repetition_period", 100, 1, 0xFFFF) if kind is RouteKind.STKM else 100,
                )
                if route.default_bandwidth > route.max_bandwidth:
                    raise table.fail("default_bandwidth", "exceeds max_bandwidth")
                table.no_unknown_keys()
                routes[data_id] = route
        if not routes:
            raise entry.fail("ltkm", f"client {client_id:#010x} has no [[client.ltkm]] or [[client.stkm]] route")
        clients[client_id] = ClientConfig(
            client_id=client_id,
            routes=routes,
            name=entry.string("name", ""),
            max_channels=entry.integer("max_channels", 1, 1, 65536),
            max_bandwidth=entry.integer("max_bandwidth", 0xFFFF, 0, 100_000_000),
        )
        entry.no_unknown_keys()
    if not clients:
        raise ConfigError(path, "client", "no client_id allowed: add at least one [[client]] table")
    root.no_unknown_keys()
    return MuxSettings(
        endpoint=endpoint,
        udp=udp,
        mux=MuxConfig(clients=clients, **kwargs),
        egress_interface=egress_interface,
        max_message_length=max_length,
        source_path=path,
    )


__all__ = ["MuxSettings", "load_mux_settings", "parse_host_port", "parse_udp_listen"]
