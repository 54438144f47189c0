"""SCS configuration (``etc/scs.toml``) -> :class:`SCSSettings`. Pure: no Twisted, no sockets.

Services (one SCS instance each, SP-4 seed §14.1.1.3.3) with crypto-period, traffic protection and
its parameters, content input / output UDP addresses and one or more ECMGs. ECMG entries of
different services that name the same endpoint and ECM_channel_id share that channel (one TCP
connection, one stream per service); they must then agree on backup endpoint, super_CAS_id and
protocol version. Every problem is a :class:`ConfigError` naming the file, key and reason.

``[mux]`` says where STKMs go. ``mode = "remote"`` carries them to a MUX over EMMG/PDG<=>MUX
(TS 103 197 §6; the link itself is :mod:`bcast_sp4.roles.stkm_link`): the SCS is a data client
per super_CAS_id (client_id = super_CAS_id, data_id = ECM_id, data_type 0x02), so in that mode
every super_CAS_id must name an SP-4 profile (0x0001xxxx / 0x0002xxxx: the MUX routes STKMs for
nothing else) and an ECM_id may appear once per super_CAS_id over all ECMGs and services (the
MUX has one route, one current STKM, per pair).
"""

from __future__ import annotations

import enum
from pathlib import Path

import attrs

from ..bcast.cw_encryption import CWAlgorithm
from ..bcast.traffic import TrafficProtection
from ..machines.scs_records import ChannelSpec, CWEncryptionSpec, LinkSpec, ServiceSpec, Timing
from ..media.scrambler import SRTPProfile
from ..wire.message import HEADER_SIZE, MAX_MESSAGE_LENGTH
from ..wire.sp4 import profile_of
from ._reader import Reader, load_toml
from .addresses import TRANSPORTS, same_family
from .limits import Limits, TLSSettings, check_tls_endpoint, read_limits, read_tls
from .ops import read_metrics


class MuxMode(enum.Enum):
    """How STKMs reach the MUX."""

    IN_PROCESS = "in-process"  # a MUX (or the lab's recorder) in the same process
    FILE = "file"  # JSON lines (lab / debugging)
    REMOTE = "remote"  # EMMG/PDG<=>MUX data client (bcast_sp4.roles.stkm_link)


@attrs.frozen(kw_only=True)
class ReconnectPolicy:
    """Back-off between connection attempts (s): initial x factor^attempt, capped, plus jitter."""

    initial_delay: float = 0.1
    max_delay: float = 5.0
    factor: float = 1.5
    jitter: float = 0.05


@attrs.frozen(kw_only=True)
class MuxSettings:
    """``[mux]``: the sink of the STKMs; the remaining fields only matter for ``mode = "remote"``."""

    mode: MuxMode = MuxMode.IN_PROCESS
    path: Path | None = None  # file
    connect: str | None = None  # remote: client endpoint string of the MUX's TCP port
    data_channel_id: int = 2  # remote: per super_CAS_id; 2 so an LTKM generator on the same BSM id keeps 1
    bandwidth: int = 16  # remote: kbit/s requested per STKM stream (one stream per ECM_id)
    protocol_version: int = 3  # remote: EMMG/PDG<=>MUX version, 2..5
    udp: bool = False  # remote: data_provision over UDP to mux_udp instead of the TCP connection
    mux_udp: tuple[str, int] | None = None  # remote, udp: the MUX's UDP data_provision port
    udp_interface: str = "127.0.0.1"  # remote, udp: local address of the data socket


@attrs.frozen(kw_only=True)
class ScramblerSettings:
    """Content in / out of one service."""

    input_port: int
    input_interface: str
    output: tuple[str, int]
    srtp_profile: SRTPProfile = SRTPProfile.AES128_CM_SHA1_80
    inner_destination: tuple[str, int] | None = None  # IPsec; None = the output address


@attrs.frozen(kw_only=True)
class ServiceSettings:
    spec: ServiceSpec
    scrambler: ScramblerSettings


@attrs.frozen(kw_only=True)
class SCSSettings:
    """Everything ``bcast-scs`` needs."""

    timing: Timing
    reconnect: ReconnectPolicy
    channels: tuple[ChannelSpec, ...]
    services: tuple[ServiceSettings, ...]
    mux: MuxSettings
    max_message_length: int = MAX_MESSAGE_LENGTH
    gc_tuning: bool = True
    source_path: Path | None = None
    limits: Limits = Limits()
    tls: TLSSettings | None = None
    metrics: str | None = None  # [metrics] endpoint


_PROTECTIONS = {"srtp": TrafficProtection.SRTP, "ipsec": TrafficProtection.IPSEC, "ismacryp": TrafficProtection.ISMACRYP}
_CW_ALGORITHMS = {"aes128-key-wrap": CWAlgorithm.AES128_KEY_WRAP, "aes128-cbc": CWAlgorithm.AES128_CBC}


def _mux_settings(table: Reader) -> MuxSettings:
    """``[mux]``: mode and the keys of that mode (any other key is an error)."""
    mode = table.choice("mode", {m.value: m for m in MuxMode}, MuxMode.IN_PROCESS.value)
    if mode is MuxMode.FILE:
        settings = MuxSettings(mode=mode, path=table.path_value("path", must_exist=False))
    elif mode is MuxMode.REMOTE:
        connect = table.client_endpoint("connect")
        udp = table.choice("transport", TRANSPORTS, "tcp")
        mux_udp = table.host_port("mux_udp", None)
        if udp and mux_udp is None:
            raise table.fail("mux_udp", "missing: transport 'udp' needs the MUX's UDP data port as HOST:PORT")
        settings = MuxSettings(
            mode=mode,
            connect=connect,
            data_channel_id=table.integer("data_channel_id", 2),
            bandwidth=table.integer("bandwidth", 16, 1, 0xFFFF),
            protocol_version=table.integer("protocol_version", 3, 2, 5),
            udp=udp,
            mux_udp=mux_udp,
            udp_interface=table.ip_address("udp_interface", "::1" if mux_udp and ":" in mux_udp[0] else "127.0.0.1"),
        )
        if mux_udp is not None and not same_family(settings.udp_interface, mux_udp[0]):
            raise table.fail("udp_interface", f"{settings.udp_interface} and mux_udp {mux_udp[0]} are not of one IP family")
    else:
        settings = MuxSettings(mode=mode)
    table.no_unknown_keys()
    return settings


def load_scs_settings(path: str | Path) -> SCSSettings:
    """Read an SCS configuration file (see ``etc/scs.toml``).

    :raises ConfigError: naming file, key and reason.
    """
    path, doc = load_toml(path)
    root = Reader(path, doc)

    top = root.sub("scs")
    lead = top.number("provision_lead", None, 0.0, 3600.0)
    timing = Timing(
        channel_test_interval=top.number("channel_test_interval", 10.0, 0.0, 3600.0),
        setup_timeout=top.number("setup_timeout", 5.0, 0.01, 600.0),
        setups_in_flight=top.integer("setups_in_flight", 8, 0, 65535),
        response_timeout_floor=top.number("response_timeout_floor", 0.25, 0.001, 600.0),
        provision_lead=lead,
        max_attempts=top.integer("max_attempts", 3, 1, 100),
        retry_delay=top.number("retry_delay", 0.05, 0.0, 60.0),
        stream_retry_delay=top.number("stream_retry_delay", 1.0, 0.001, 3600.0),
        start_allowance=top.number("start_allowance", 0.5, 0.0, 3600.0),
        close_timeout=top.number("close_timeout", 5.0, 0.01, 600.0),
    )
    stagger = top.boolean("stagger", True)
    gc_tuning = top.boolean("gc_tuning", True)
    max_length = top.integer("max_message_length", MAX_MESSAGE_LENGTH, HEADER_SIZE, MAX_MESSAGE_LENGTH)
    rc = top.sub("reconnect")
    reconnect = ReconnectPolicy(
        initial_delay=rc.number("initial_delay", 0.1, 0.001, 3600.0),
        max_delay=rc.number("max_delay", 5.0, 0.001, 3600.0),
        factor=rc.number("factor", 1.5, 1.0, 10.0),
        jitter=rc.number("jitter", 0.05, 0.0, 60.0),
    )
    rc.no_unknown_keys()
    top.no_unknown_keys()

    mux = _mux_settings(root.sub("mux"))
    mode = mux.mode

    channels: dict[tuple[str, int], ChannelSpec] = {}
    channel_where: dict[tuple[str, int], str] = {}
    stream_ids: set[tuple[str, int]] = set()
    ecm_ids: dict[tuple[str, int, int], str] = {}
    stkm_routes: dict[tuple[int, int], str] = {}
    services: list[ServiceSettings] = []
    names: set[str] = set()
    entries = root.list_of_tables("service")
    if not entries:
        raise root.fail("service", "no service configured: add at least one [[service]] table")
    for index, svc in enumerate(entries):
        name = svc.string("name")
        if name in names:
            raise svc.fail("name", f"{name!r} listed twice")
        names.add(name)
        period = svc.number("crypto_period", attrs.NOTHING, 0.1, 6553.5)
        if abs(period * 10 - round(period * 10)) > 1e-9:
            raise svc.fail("crypto_period", f"{period} is not a multiple of 0.1 s (nominal_CP_duration unit)")
        protection = svc.choice("protection", _PROTECTIONS)
        phase = svc.number("phase", None, 0.0, 6553.5)
        if phase is None:
            phase = round(index * period / len(entries), 3) if stagger else 0.0
        input_port, input_interface = svc.udp_listen("input")
        output = svc.host_port("output")
        if not same_family(input_interface, output[0]):  # one socket reads the input and writes the output
            raise svc.fail("output", f"{output[0]} and the input interface {input_interface} are not of one IP family")

        srtp, ipsec, isma = svc.sub("srtp"), svc.sub("ipsec"), svc.sub("ismacryp")
        profile = SRTPProfile.AES128_CM_SHA1_80
        inner = None
        if protection is TrafficProtection.SRTP:
            profile = srtp.choice("profile", {p.value: p for p in SRTPProfile}, SRTPProfile.AES128_CM_SHA1_80.value)
            tek_params = {"mki_length": srtp.integer("mki_length", 4, 0, 32)}
        elif protection is TrafficProtection.IPSEC:
            tek_params = {"authenticated": ipsec.boolean("authenticated", True)}
            inner = ipsec.host_port("inner_destination", None)
        else:
            tek_params = {"key_indicator_length": isma.integer("key_indicator_length", 4, 0, 32)}
        for table, own in ((srtp, TrafficProtection.SRTP), (ipsec, TrafficProtection.IPSEC), (isma, TrafficProtection.ISMACRYP)):
            if own is not protection and table.table:
                raise svc.fail(own.name.lower(), f"parameters for {own.name.lower()} but protection is {protection.name.lower()}")
            table.no_unknown_keys()

        links: list[LinkSpec] = []
        ecmgs = svc.list_of_tables("ecmg")
        if not ecmgs:
            raise svc.fail("ecmg", "no ECMG: add at least one [[service.ecmg]] table")
        for ecmg in ecmgs:
            endpoint = ecmg.client_endpoint("endpoint")
            backup = ecmg.client_endpoint("backup_endpoint", None)
            scid = ecmg.integer("super_CAS_id", low=0, high=0xFFFFFFFF)
            channel_id = ecmg.integer("ECM_channel_id")
            version = ecmg.integer("protocol_version", 3, 1, 3)
            flags = frozenset(ecmg.int_list("section_TSpkt_flags", [2], (0, 1, 2),
                                            " (2 STKMs; 0 sections / 1 TS packets: a classic ECMG, ECMs carried opaque)"))
            stream_id = ecmg.integer("ECM_stream_id")
            ecm_id = ecmg.integer("ECM_id")
            access = ecmg.hex_bytes("access_criteria", None, None, secret=False)
            cw = None
            if ecmg.has("cw_encryption"):
                enc = ecmg.sub("cw_encryption")
                cw = CWEncryptionSpec(
                    algorithm=enc.choice("algorithm", _CW_ALGORITHMS),
                    key_id=enc.integer("key_id"),
                    key=enc.hex_key("key"),
                )
                enc.no_unknown_keys()
                if version == 1:
                    raise ecmg.fail("cw_encryption", "CW_encryption needs protocol_version 2 or 3")
            ecmg.no_unknown_keys()
            key = (endpoint, channel_id)
            spec = ChannelSpec(name=f"{endpoint}#{channel_id}", endpoint=endpoint, backup_endpoint=backup,
                               super_CAS_id=scid, ECM_channel_id=channel_id, protocol_version=version,
                               section_TSpkt_flags=flags)
            known = channels.get(key)
            if known is None:
                channels[key], channel_where[key] = spec, ecmg.prefix
            elif known != spec:
                raise ecmg.fail("ECM_channel_id", f"{channel_id} on {endpoint} is also {channel_where[key]} "
                                                  "with another super_CAS_id, backup_endpoint, protocol_version or "
                                                  "section_TSpkt_flags")
            if (spec.name, stream_id) in stream_ids:
                raise ecmg.fail("ECM_stream_id", f"{stream_id} used twice on channel {channel_id} of {endpoint}")
            stream_ids.add((spec.name, stream_id))
            owner = ecm_ids.get((endpoint, scid, ecm_id))
            if owner is not None:
                raise ecmg.fail("ECM_id", f"{ecm_id} for super_CAS_id {scid:#010x} on {endpoint} already used by {owner}")
            ecm_ids[(endpoint, scid, ecm_id)] = name
            if mode is MuxMode.REMOTE:
                if profile_of(scid) is None:
                    raise ecmg.fail("super_CAS_id", f"{scid:#010x}: with [mux] mode 'remote' STKMs go to the MUX as "
                                                    "client_id = super_CAS_id, which must be 0x0001xxxx or 0x0002xxxx")
                routed = stkm_routes.get((scid, ecm_id))
                if routed is not None:
                    raise ecmg.fail("ECM_id", f"{ecm_id} for super_CAS_id {scid:#010x} already used by {routed}: "
                                              "with [mux] mode 'remote' one (super_CAS_id, ECM_id) is one MUX route")
                stkm_routes[(scid, ecm_id)] = f"{name} ({endpoint})"
            links.append(LinkSpec(channel=spec.name, super_CAS_id=scid, ECM_stream_id=stream_id, ECM_id=ecm_id,
                                  access_criteria=access, cw_encryption=cw))
        svc.no_unknown_keys()
        services.append(ServiceSettings(
            spec=ServiceSpec(name=name, crypto_period=round(period * 10), protection=protection, links=tuple(links),
                             tek_params=tek_params, phase=phase),
            scrambler=ScramblerSettings(input_port=input_port, input_interface=input_interface,
                                        output=output, srtp_profile=profile, inner_destination=inner),
        ))
    limits = read_limits(root, server=False, udp=True, max_message_length=max_length)
    tls = read_tls(root, server=False)
    if tls is not None:
        for spec in channels.values():
            check_tls_endpoint(root, "service", spec.endpoint, tls)
            check_tls_endpoint(root, "service", spec.backup_endpoint, tls)
        check_tls_endpoint(root, "mux", mux.connect, tls)
    metrics = read_metrics(root)
    root.no_unknown_keys()
    return SCSSettings(timing=timing, reconnect=reconnect, channels=tuple(channels.values()), services=tuple(services),
                       mux=mux, max_message_length=max_length, gc_tuning=gc_tuning,
                       source_path=path, limits=limits, tls=tls, metrics=metrics)


__all__ = ["MuxMode", "MuxSettings", "ReconnectPolicy", "SCSSettings", "ScramblerSettings", "ServiceSettings",
           "load_scs_settings"]
