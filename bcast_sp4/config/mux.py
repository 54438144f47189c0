"""MUX configuration (``etc/mux.toml``) -> :class:`MuxSettings`. Pure: no Twisted, no sockets."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import attrs

from ..machines.mux import MAX_UDP_PAYLOAD, ClientConfig, MuxConfig, RouteConfig, RouteKind
from ..machines.mux.limits import MuxLimits
from ..wire.message import HEADER_SIZE, MAX_MESSAGE_LENGTH
from ..wire.sp4 import Profile, profile_of
from ._reader import Reader, load_toml
from .limits import Limits, TLSSettings, check_tls_endpoint, read_limits, read_tls
from .ops import read_metrics


#: ``[mux] udp_receive_buffer`` when absent: 4 MiB asked (Linux grants twice what it allows, see docs/config.md)
DEFAULT_UDP_RECEIVE_BUFFER = 4 << 20


@attrs.frozen(kw_only=True)
class MuxSettings:
    """Everything ``bcast-mux`` needs."""

    endpoint: str
    udp: tuple[int, str] | None  # (port, interface) for data_provision over UDP
    mux: MuxConfig
    egress_interface: str
    max_message_length: int
    source_path: Path
    egress_interface6: str = "::1"  # source address of datagrams to IPv6 destinations
    ipv6_multicast_interface: str = ""  # interface name for IPv6 multicast ("" = the kernel's route)
    limits: Limits = Limits()
    tls: TLSSettings | None = None
    metrics: str | None = None  # [metrics] endpoint
    udp_receive_buffer: int = DEFAULT_UDP_RECEIVE_BUFFER  # bytes asked for the UDP port (0: the kernel's default)


def load_mux_settings(path: str | Path) -> MuxSettings:
    """Read a MUX configuration file (see ``etc/mux.toml``).

    :raises ConfigError: naming file, key and reason.
    """
    path, doc = load_toml(path)
    root = Reader(path, doc)
    top = root.sub("mux", required=True)
    endpoint = top.string("endpoint", "tcp:5000:interface=127.0.0.1")
    udp = top.udp_listen("udp", None)
    udp_receive_buffer = top.integer("udp_receive_buffer", DEFAULT_UDP_RECEIVE_BUFFER, 0, 1 << 30)
    versions = top.int_list("versions", [2, 3, 4, 5], (1, 2, 3, 4, 5),
                            " (1 only for peers sending data_id in v1, a tolerated deviation)")
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
        ingress_burst=q.milliseconds("ingress_burst_ms", 500),
        egress_burst=q.milliseconds("egress_burst_ms", 20),
        drop_log_interval=q.milliseconds("drop_log_interval_ms", 1000),
        udp_error_interval=q.milliseconds("udp_error_interval_ms", 1000),
        max_pending_stkms=q.integer("max_pending_stkms", 8, 1, 1000),
    )
    q.no_unknown_keys()

    lim = root.sub("limits")
    limits = dict(
        max_stkm_datagrams=lim.integer("max_stkm_datagrams", 16, 1, 65535),
        max_stkm_size=lim.integer("max_stkm_size", 8192, 1, MAX_UDP_PAYLOAD),
        stkm_sender_grace=lim.milliseconds("stkm_sender_grace_ms", 10_000),
        stkm_max_age=lim.milliseconds("stkm_max_age_ms", 0),
    )  # the connection budgets of the same table: read_limits below, which checks for unknown keys

    e = root.sub("egress")
    egress_interface = e.ipv4("interface", "127.0.0.1")
    egress_interface6 = e.ip_address("interface6", "::1")
    if ":" not in egress_interface6:
        raise e.fail("interface6", f"{egress_interface6!r} is not an IPv6 address")
    multicast6 = e.string("ipv6_multicast_interface", "")
    kwargs["unthrottled"] = e.boolean("unthrottled", False)
    e.no_unknown_keys()

    clients: dict[int, ClientConfig] = {}
    udp_sources: dict[int, tuple] = {}
    destinations: dict[tuple[str, int], str] = {}
    for entry in root.list_of_tables("client"):
        client_id = entry.integer("client_id", low=0, high=0xFFFFFFFF)
        if client_id in clients:
            raise entry.fail("client_id", f"{client_id:#010x} listed twice")
        profile = profile_of(client_id)
        routes: dict[int, RouteConfig] = {}
        flags = frozenset(entry.int_list("section_TSpkt_flags", [2], (0, 1, 2), " (0 sections, 1 TS packets, 2 BCAST)"))
        for kind, id_key in ((RouteKind.LTKM, "data_id"), (RouteKind.STKM, "ecm_id"), (RouteKind.DATA, "data_id")):
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
                destination = table.host_port("destination")
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
                    data_type=table.integer("data_type", 0, 0, 0xFF) if kind is RouteKind.DATA else None,
                )
                if route.default_bandwidth > route.max_bandwidth:
                    raise table.fail("default_bandwidth", "exceeds max_bandwidth")
                table.no_unknown_keys()
                routes[data_id] = route
        if not routes:
            raise entry.fail("ltkm", f"client {client_id:#010x} has no [[client.ltkm]], [[client.stkm]] or [[client.data]] route")
        if flags != {2} and not any(r.kind is RouteKind.DATA for r in routes.values()):
            raise entry.fail("section_TSpkt_flags", "classic flags 0/1 carry data on [[client.data]] routes only; "
                                                    "this client has none")
        sources = entry.string_list("udp_sources", None)
        if sources is not None:
            networks = []
            for text in sources:
                try:
                    networks.append(ipaddress.ip_network(text, strict=False))
                except ValueError:
                    raise entry.fail("udp_sources", f"{text!r} is not an IP address or network (ADDR or ADDR/PREFIX)") from None
            udp_sources[client_id] = tuple(networks)
        clients[client_id] = ClientConfig(
            client_id=client_id,
            routes=routes,
            name=entry.string("name", ""),
            max_channels=entry.integer("max_channels", 1, 1, 65536),
            max_bandwidth=entry.integer("max_bandwidth", 0xFFFF, 0, 100_000_000),
            section_TSpkt_flags=flags,
        )
        entry.no_unknown_keys()
    if not clients:
        raise root.fail("client", "no client_id allowed: add at least one [[client]] table")
    guard_limits = read_limits(root, server=True, udp=True, max_message_length=max_length, table=lim)
    tls = read_tls(root, server=True)
    check_tls_endpoint(top, "endpoint", endpoint, tls)
    metrics = read_metrics(root)
    root.no_unknown_keys()
    return MuxSettings(
        endpoint=endpoint,
        udp=udp,
        udp_receive_buffer=udp_receive_buffer,
        mux=MuxConfig(clients=clients, limits=MuxLimits(**limits, udp_sources=udp_sources), **kwargs),
        egress_interface=egress_interface,
        max_message_length=max_length,
        source_path=path,
        egress_interface6=egress_interface6,
        ipv6_multicast_interface=multicast6,
        limits=guard_limits,
        tls=tls,
        metrics=metrics,
    )


__all__ = ["MuxSettings", "load_mux_settings"]
