"""EMMG / LTKM generator configuration (``etc/emmg.toml``) -> :class:`EMMGSettings`. Pure.

Each ``[[stream]]`` names its LTKM sources: a subscriber file (DRM Profile LTKMs generated in the
PROVISIONAL PROV-LTKM-1 layout, :mod:`bcast_sp4.bcast.ltkm_drm`) and/or a spool directory of
ready-made LTKM files (``*.ltkm``, each sent once, then moved to ``sent/``; unusable ones to
``rejected/``). Paths are relative to the configuration file.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from ..bcast.subscribers import Subscribers
from ..machines.emmg import EMMGConfig, EMMGStreamConfig
from ..wire.message import HEADER_SIZE, MAX_MESSAGE_LENGTH
from ..wire.sp4 import Profile, profile_of
from ._reader import Reader, load_toml
from .addresses import TRANSPORTS, same_family
from .keyfile import check_private
from .limits import Limits, TLSSettings, check_tls_endpoint, read_limits, read_tls
from .ops import read_metrics
from .subscribers import load_subscribers


@attrs.frozen(kw_only=True)
class StreamSources:
    """Where the LTKMs of one data_id come from."""

    subscribers: Subscribers | None = None
    subscribers_file: Path | None = None
    repeat_interval: float = 0.0  # s between two issues of the subscriber LTKMs; 0 = once
    spool: Path | None = None
    poll_interval: float = 1.0  # s between two scans of the spool directory


@attrs.frozen(kw_only=True)
class EMMGSettings:
    """Everything ``bcast-emmg`` needs."""

    connect: str
    emmg: EMMGConfig
    mux_udp: tuple[str, int] | None
    udp_interface: str
    sources: dict[int, StreamSources]  # by data_id
    retry_max_delay: float
    source_path: Path
    limits: Limits = Limits()
    tls: TLSSettings | None = None
    metrics: str | None = None  # [metrics] endpoint


def load_emmg_settings(path: str | Path) -> EMMGSettings:
    """Read an EMMG configuration file (see ``etc/emmg.toml``).

    :raises ConfigError: naming file, key and reason.
    """
    path, doc = load_toml(path)
    root = Reader(path, doc)
    top = root.sub("emmg", required=True)
    connect = top.string("connect", "tcp:host=127.0.0.1:port=5000")
    client_id = top.integer("client_id", low=0, high=0xFFFFFFFF)
    if profile_of(client_id) is not Profile.DRM:
        raise top.fail("client_id", f"{client_id:#010x}: an SP-4 LTKM generator is DRM Profile (0x0001xxxx)")
    udp = top.choice("transport", TRANSPORTS, "tcp")
    mux_udp = top.host_port("mux_udp", None)
    if udp and mux_udp is None:
        raise top.fail("mux_udp", "missing: transport 'udp' needs the MUX's UDP ADDR:PORT")
    udp_interface = top.ip_address("udp_interface", "::1" if mux_udp and ":" in mux_udp[0] else "127.0.0.1")
    if mux_udp is not None and not same_family(udp_interface, mux_udp[0]):
        raise top.fail("udp_interface", f"{udp_interface} and mux_udp {mux_udp[0]} are not of one IP family")
    kwargs = dict(
        data_channel_id=top.integer("data_channel_id", 1),
        protocol_version=top.integer("protocol_version", 3, 2, 5),
        response_timeout=top.milliseconds("response_timeout_ms", 5000, 1),
        close_timeout=top.milliseconds("close_timeout_ms", 5000, 1),
        udp_end_wait=top.milliseconds("udp_end_wait_ms", 100),
        datagrams_per_message=top.integer("datagrams_per_message", 1, 1, 1000),
        max_message_length=top.integer("max_message_length", MAX_MESSAGE_LENGTH, HEADER_SIZE + 64, MAX_MESSAGE_LENGTH),
        pacing_burst=top.milliseconds("pacing_burst_ms", 10),
        max_invalid_messages=top.integer("max_invalid_messages", 3, 0, 1000),
    )
    retry_max_delay = float(top.integer("retry_max_delay", 30, 1, 3600))
    top.no_unknown_keys()

    streams: list[EMMGStreamConfig] = []
    sources: dict[int, StreamSources] = {}
    for entry in root.list_of_tables("stream"):
        data_id = entry.integer("data_id")
        if data_id in sources:
            raise entry.fail("data_id", f"{data_id} listed twice")
        stream = EMMGStreamConfig(
            data_stream_id=entry.integer("data_stream_id"),
            data_id=data_id,
            bandwidth=entry.integer("bandwidth", low=1),
            max_queue=entry.integer("max_queue", 10_000, 1, 10_000_000),
        )
        if any(s.data_stream_id == stream.data_stream_id for s in streams):
            raise entry.fail("data_stream_id", f"{stream.data_stream_id} listed twice")
        streams.append(stream)
        sources[data_id] = _sources(entry)
        entry.no_unknown_keys()
    if not streams:
        raise root.fail("stream", "no stream: add at least one [[stream]] table")
    max_length = kwargs["max_message_length"]
    limits = read_limits(root, server=False, max_message_length=max_length)  # type: ignore[arg-type]
    tls = read_tls(root, server=False)
    check_tls_endpoint(top, "connect", connect, tls)
    metrics = read_metrics(root)
    root.no_unknown_keys()
    try:
        config = EMMGConfig(client_id=client_id, streams=tuple(streams), udp=udp, **kwargs)
    except ValueError as exc:
        raise top.fail_here(str(exc)) from None
    return EMMGSettings(
        connect=connect,
        emmg=config,
        mux_udp=mux_udp,
        udp_interface=udp_interface,
        sources=sources,
        retry_max_delay=retry_max_delay,
        source_path=path,
        limits=limits,
        tls=tls,
        metrics=metrics,
    )


def _sources(entry: Reader) -> StreamSources:
    fields: dict = {}
    if entry.has("subscribers"):
        sub = entry.sub("subscribers")
        file = sub.path_value("file")
        check_private(sub, "file", file, sub.boolean("allow_readable", False), "allow_readable")
        fields["subscribers"] = load_subscribers(file)  # its errors name the subscriber file
        fields["subscribers_file"] = file
        fields["repeat_interval"] = float(sub.integer("repeat_interval", 0, 0, 86400 * 365))
        sub.no_unknown_keys()
    if entry.has("spool"):
        spool = entry.sub("spool")
        fields["spool"] = spool.path_value("directory", must_exist=False)
        fields["poll_interval"] = spool.milliseconds("poll_interval_ms", 1000, 10)
        spool.no_unknown_keys()
    if not fields:
        raise entry.fail("subscribers", "a stream needs an LTKM source: [stream.subscribers] and/or [stream.spool]")
    return StreamSources(**fields)


__all__ = ["EMMGSettings", "StreamSources", "load_emmg_settings"]
