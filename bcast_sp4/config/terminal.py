"""Reference terminal configuration (``etc/lab/terminal.toml``) -> :class:`TerminalSettings`. Pure.

The terminal listens where the head-end emits: LTKMs (MUX LTKM route), STKMs (one MUX STKM route
per ECM_id and profile) and each service's protected content (the scrambler's output). It holds a
DRM Profile device id and key (LTKMs are addressed to it) and the Smartcard Profile MSKs of its
card. An optional ``[source]`` makes it the lab's test set as well: it sends each service's RTP
content to the SCS input, so it can count every packet sent against every packet decrypted.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from ..bcast.keys import KDI_SIZE, ServiceKey
from ..bcast.traffic import TrafficProtection
from ..wire.sp4 import Profile
from ._reader import Reader, load_toml
from .ops import read_metrics

_PROTECTIONS = {"srtp": TrafficProtection.SRTP, "ipsec": TrafficProtection.IPSEC, "ismacryp": TrafficProtection.ISMACRYP}
_PROFILES = {"drm": Profile.DRM, "smartcard": Profile.SMARTCARD}


@attrs.frozen(kw_only=True)
class TerminalService:
    name: str
    service_id: int
    protection: TrafficProtection
    listen: tuple[int, str]  # (port, interface) of the protected content
    srtp_tag_length: int = 10
    source_destination: tuple[str, int] | None = None  # where [source] sends this service's RTP
    ssrc: int = 0


@attrs.frozen(kw_only=True)
class STKMStream:
    profile: Profile
    listen: tuple[int, str]
    services: tuple[str, ...]


@attrs.frozen(kw_only=True)
class TerminalSettings:
    device_id: bytes
    device_key: bytes | None = attrs.field(repr=False)
    ltkm_listen: tuple[int, str] | None
    smartcard_keys: tuple[ServiceKey, ...] = attrs.field(repr=False)
    services: tuple[TerminalService, ...]
    stkm_streams: tuple[STKMStream, ...]
    report_interval: float
    source_rate: float  # packets per second per service; 0 = no source
    source_size: int
    ready_timeout: float
    source_path: Path
    metrics: str | None = None  # [metrics] endpoint


def load_terminal_settings(path: str | Path) -> TerminalSettings:
    """Read a terminal configuration file.

    :raises ConfigError: naming file, key and reason.
    """
    path, doc = load_toml(path)
    root = Reader(path, doc)
    top = root.sub("terminal")
    report_interval = float(top.integer("report_interval_ms", 1000, 100, 600_000)) / 1000.0
    ready_timeout = float(top.integer("ready_timeout_s", 30, 1, 3600))
    top.no_unknown_keys()

    device = root.sub("device")
    device_id = device.hex_bytes("id", None, b"", secret=False)
    device_key = device.hex_bytes("key", (16,), None)
    ltkm_listen = device.udp_listen("ltkm", None)
    device.no_unknown_keys()

    card_keys = []
    for entry in root.list_of_tables("smartcard_key"):
        card_keys.append(
            ServiceKey(key_id=entry.integer("key_id", high=0xFFFFFFFF), key=entry.hex_key("key"),
                       key_domain_id=entry.hex_bytes("key_domain_id", (KDI_SIZE,), secret=False),
                       name=f"card key {len(card_keys) + 1}")
        )
        entry.no_unknown_keys()

    source = root.sub("source")
    source_rate = float(source.integer("rate", 0, 0, 100_000))
    source_size = source.integer("size", 188, 28, 1400)
    source.no_unknown_keys()

    services = []
    entries = root.list_of_tables("service")
    for entry in entries:
        name = entry.string("name")
        if any(s.name == name for s in services):
            raise entry.fail("name", f"{name!r} listed twice")
        services.append(
            TerminalService(
                name=name,
                service_id=entry.integer("service_id"),
                protection=entry.choice("protection", _PROTECTIONS),
                listen=entry.udp_listen("listen"),
                srtp_tag_length=entry.integer("srtp_tag_length", 10, 4, 10),
                source_destination=entry.host_port("source_to", None),
                ssrc=entry.integer("ssrc", 0x5350_0000 + len(services), 0, 0xFFFFFFFF),
            )
        )
        entry.no_unknown_keys()
    names = [s.name for s in services]
    streams = []
    for entry in root.list_of_tables("stkm"):
        profile = entry.choice("profile", _PROFILES)
        served = entry.string_list("services")
        if any(s not in names for s in served):
            raise entry.fail("services", f"must list services of this file ({names})")
        streams.append(STKMStream(profile=profile, listen=entry.udp_listen("listen"), services=tuple(served)))
        entry.no_unknown_keys()
    metrics = read_metrics(root)
    root.no_unknown_keys()
    if not services:
        raise root.fail("service", "no service configured")
    for entry, service in zip(entries, services):
        if source_rate and service.source_destination is None:
            raise entry.fail("source_to", "missing: [source] is on, so every service needs source_to")
    return TerminalSettings(
        device_id=device_id,
        device_key=device_key,
        ltkm_listen=ltkm_listen,
        smartcard_keys=tuple(card_keys),
        services=tuple(services),
        stkm_streams=tuple(streams),
        report_interval=report_interval,
        source_rate=source_rate,
        source_size=source_size,
        ready_timeout=ready_timeout,
        source_path=path,
        metrics=metrics,
    )
