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
import ipaddress
import re
from pathlib import Path

import attrs

from ..bcast.cw_encryption import CWAlgorithm
from ..bcast.traffic import TrafficProtection
from ..machines.scs_records import ChannelSpec, CWEncryptionSpec, LinkSpec, ServiceSpec, Timing
from ..media.scrambler import SRTPProfile
from ..wire.message import HEADER_SIZE, MAX_MESSAGE_LENGTH
from ..wire.sp4 import profile_of
from ._reader import ConfigError, Reader, load_toml


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


_PROTECTIONS = {"srtp": TrafficProtection.SRTP, "ipsec": TrafficProtection.IPSEC, "ismacryp": TrafficProtection.ISMACRYP}
_CW_ALGORITHMS = {"aes128-key-wrap": CWAlgorithm.AES128_KEY_WRAP, "aes128-cbc": CWAlgorithm.AES128_CBC}
_UDP = re.compile(r"^udp:(\d+)(?::interface=([0-9.]+))?$")
_HOST_PORT = re.compile(r"^([0-9.]+):(\d+)$")
_ENDPOINT = re.compile(r"^(tcp|tcp6|unix|ssl|tls):.+")


def _number(reader: Reader, key: str, default, low: float, high: float):
    reader.used.add(key)
    if key not in reader.table:
        if default is attrs.NOTHING:
            raise reader.fail(key, "missing")
        return default
    value = reader.table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise reader.fail(key, f"must be a number, not {value!r}")
    if not low <= value <= high:
        raise reader.fail(key, f"{value} outside {low}..{high}")
    return float(value)


def _choice(reader: Reader, key: str, choices: dict, default: str | object = attrs.NOTHING):
    name = reader.string(key, default)
    if name not in choices:
        raise reader.fail(key, f"{name!r} is not one of {sorted(choices)}")
    return choices[name]


def _host_port(reader: Reader, key: str, default=attrs.NOTHING) -> tuple[str, int] | None:
    text = reader.string(key, default)
    if text is None:
        return None
    match = _HOST_PORT.match(text)
    if not match or int(match.group(2)) > 0xFFFF:
        raise reader.fail(key, f"{text!r} is not HOST:PORT (IPv4)")
    return match.group(1), int(match.group(2))


def _endpoint(reader: Reader, key: str, default=attrs.NOTHING) -> str | None:
    text = reader.string(key, default)
    if text is not None and not _ENDPOINT.match(text):
        raise reader.fail(key, f"{text!r} is not a client endpoint string (e.g. tcp:host=127.0.0.1:port=2222)")
    return text


def _hex(reader: Reader, key: str) -> bytes | None:
    reader.used.add(key)
    if key not in reader.table:
        return None
    value = reader.table[key]
    try:
        return bytes.fromhex(value)
    except (TypeError, ValueError):
        raise reader.fail(key, "must be a hex string") from None


def _mux_settings(path: Path, table: Reader) -> MuxSettings:
    """``[mux]``: mode and the keys of that mode (any other key is an error)."""
    mode = _choice(table, "mode", {m.value: m for m in MuxMode}, MuxMode.IN_PROCESS.value)
    if mode is MuxMode.FILE:
        settings = MuxSettings(mode=mode, path=(path.parent / table.string("path")).resolve())
    elif mode is MuxMode.REMOTE:
        connect = _endpoint(table, "connect")
        transport = table.string("transport", "tcp")
        if transport not in ("tcp", "udp"):
            raise table.fail("transport", f"must be 'tcp' or 'udp', not {transport!r}")
        mux_udp = _host_port(table, "mux_udp", None)
        if transport == "udp" and mux_udp is None:
            raise table.fail("mux_udp", "missing: transport 'udp' needs the MUX's UDP data port as HOST:PORT")
        udp_interface = table.string("udp_interface", "127.0.0.1")
        try:
            ipaddress.IPv4Address(udp_interface)
        except ValueError:
            raise table.fail("udp_interface", f"{udp_interface!r} is not an IPv4 address") from None
        settings = MuxSettings(
            mode=mode,
            connect=connect,
            data_channel_id=table.integer("data_channel_id", 2),
            bandwidth=table.integer("bandwidth", 16, 1, 0xFFFF),
            protocol_version=table.integer("protocol_version", 3, 2, 5),
            udp=transport == "udp",
            mux_udp=mux_udp,
            udp_interface=udp_interface,
        )
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
    lead = _number(top, "provision_lead", None, 0.0, 3600.0)
    timing = Timing(
        channel_test_interval=_number(top, "channel_test_interval", 10.0, 0.0, 3600.0),
        setup_timeout=_number(top, "setup_timeout", 5.0, 0.01, 600.0),
        response_timeout_floor=_number(top, "response_timeout_floor", 0.25, 0.001, 600.0),
        provision_lead=lead,
        max_attempts=top.integer("max_attempts", 3, 1, 100),
        retry_delay=_number(top, "retry_delay", 0.05, 0.0, 60.0),
        stream_retry_delay=_number(top, "stream_retry_delay", 1.0, 0.001, 3600.0),
        start_allowance=_number(top, "start_allowance", 0.5, 0.0, 3600.0),
    )
    stagger = top.boolean("stagger", True)
    gc_tuning = top.boolean("gc_tuning", True)
    max_length = top.integer("max_message_length", MAX_MESSAGE_LENGTH, HEADER_SIZE, MAX_MESSAGE_LENGTH)
    rc = top.sub("reconnect")
    reconnect = ReconnectPolicy(
        initial_delay=_number(rc, "initial_delay", 0.1, 0.001, 3600.0),
        max_delay=_number(rc, "max_delay", 5.0, 0.001, 3600.0),
        factor=_number(rc, "factor", 1.5, 1.0, 10.0),
        jitter=_number(rc, "jitter", 0.05, 0.0, 60.0),
    )
    rc.no_unknown_keys()
    top.no_unknown_keys()

    mux = _mux_settings(path, root.sub("mux"))
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
        raise ConfigError(path, "service", "no service configured: add at least one [[service]] table")
    for index, svc in enumerate(entries):
        name = svc.string("name")
        if name in names:
            raise svc.fail("name", f"{name!r} listed twice")
        names.add(name)
        period = _number(svc, "crypto_period", attrs.NOTHING, 0.1, 6553.5)
        if abs(period * 10 - round(period * 10)) > 1e-9:
            raise svc.fail("crypto_period", f"{period} is not a multiple of 0.1 s (nominal_CP_duration unit)")
        protection = _choice(svc, "protection", _PROTECTIONS)
        phase = _number(svc, "phase", None, 0.0, 6553.5)
        if phase is None:
            phase = round(index * period / len(entries), 3) if stagger else 0.0
        match = _UDP.match(svc.string("input"))
        if not match or int(match.group(1)) > 0xFFFF:
            raise svc.fail("input", "must be udp:PORT[:interface=ADDR]")
        output = _host_port(svc, "output")

        srtp, ipsec, isma = svc.sub("srtp"), svc.sub("ipsec"), svc.sub("ismacryp")
        profile = SRTPProfile.AES128_CM_SHA1_80
        inner = None
        if protection is TrafficProtection.SRTP:
            profile = _choice(srtp, "profile", {p.value: p for p in SRTPProfile}, SRTPProfile.AES128_CM_SHA1_80.value)
            tek_params = {"mki_length": srtp.integer("mki_length", 4, 0, 32)}
        elif protection is TrafficProtection.IPSEC:
            tek_params = {"authenticated": ipsec.boolean("authenticated", True)}
            inner = _host_port(ipsec, "inner_destination", None)
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
            endpoint = _endpoint(ecmg, "endpoint")
            backup = _endpoint(ecmg, "backup_endpoint", None)
            scid = ecmg.integer("super_CAS_id", low=0, high=0xFFFFFFFF)
            channel_id = ecmg.integer("ECM_channel_id")
            version = ecmg.integer("protocol_version", 3, 1, 3)
            stream_id = ecmg.integer("ECM_stream_id")
            ecm_id = ecmg.integer("ECM_id")
            access = _hex(ecmg, "access_criteria")
            cw = None
            if "cw_encryption" in ecmg.table:
                enc = ecmg.sub("cw_encryption")
                cw = CWEncryptionSpec(
                    algorithm=_choice(enc, "algorithm", _CW_ALGORITHMS),
                    key_id=enc.integer("key_id"),
                    key=enc.hex_key("key"),
                )
                enc.no_unknown_keys()
                if version == 1:
                    raise ecmg.fail("cw_encryption", "CW_encryption needs protocol_version 2 or 3")
            ecmg.no_unknown_keys()
            key = (endpoint, channel_id)
            spec = ChannelSpec(name=f"{endpoint}#{channel_id}", endpoint=endpoint, backup_endpoint=backup,
                               super_CAS_id=scid, ECM_channel_id=channel_id, protocol_version=version)
            known = channels.get(key)
            if known is None:
                channels[key], channel_where[key] = spec, f"{ecmg.prefix}"
            elif known != spec:
                raise ecmg.fail("ECM_channel_id", f"{channel_id} on {endpoint} is also {channel_where[key].rstrip('.')} "
                                                  "with another super_CAS_id, backup_endpoint or protocol_version")
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
            scrambler=ScramblerSettings(input_port=int(match.group(1)), input_interface=match.group(2) or "127.0.0.1",
                                        output=output, srtp_profile=profile, inner_destination=inner),
        ))
    root.no_unknown_keys()
    return SCSSettings(timing=timing, reconnect=reconnect, channels=tuple(channels.values()), services=tuple(services),
                       mux=mux, max_message_length=max_length, gc_tuning=gc_tuning,
                       source_path=path)


__all__ = ["MuxMode", "MuxSettings", "ReconnectPolicy", "SCSSettings", "ScramblerSettings", "ServiceSettings",
           "load_scs_settings"]
