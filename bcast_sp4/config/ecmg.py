"""ECMG configuration (``etc/ecmg.toml``) -> :class:`ECMGSettings`. Pure: no Twisted, no sockets."""

from __future__ import annotations

from pathlib import Path

import attrs

from ..bcast.ecm_request import CasMode
from ..machines.ecmg import ChannelParameters, ECMGConfig
from ..wire.message import HEADER_SIZE, MAX_MESSAGE_LENGTH
from ..wire.sp4 import Profile, profile_of
from ._reader import Reader, load_toml
from .keyfile import check_private
from .limits import Limits, TLSSettings, check_tls_endpoint, read_limits, read_tls
from .ops import read_metrics


@attrs.frozen(kw_only=True)
class ECMGSettings:
    """Everything ``bcast-ecmg`` needs."""

    endpoint: str
    ecmg: ECMGConfig
    key_file: Path
    max_message_length: int
    source_path: Path
    dvb_keys: dict[int, bytes] = attrs.field(factory=dict, repr=False)
    cw_encryption_keys: dict[int, bytes] = attrs.field(factory=dict, repr=False)
    limits: Limits = Limits()
    tls: TLSSettings | None = None
    metrics: str | None = None  # [metrics] endpoint


_MODE_PROFILE = {CasMode.DRM_PROFILE: Profile.DRM, CasMode.SMARTCARD_PROFILE: Profile.SMARTCARD}


def load_ecmg_settings(path: str | Path) -> ECMGSettings:
    """Read an ECMG configuration file (see ``etc/ecmg.toml``).

    :raises ConfigError: naming file, key and reason.
    """
    path, doc = load_toml(path)
    root = Reader(path, doc)
    top = root.sub("ecmg", required=True)
    endpoint = top.string("endpoint", "tcp:2222:interface=127.0.0.1")
    versions = top.int_list("versions", [1, 2, 3], (1, 2, 3))
    max_length = top.integer("max_message_length", MAX_MESSAGE_LENGTH, HEADER_SIZE, MAX_MESSAGE_LENGTH)
    key_file = top.path_value("key_file")
    check_private(top, "key_file", key_file, top.boolean("allow_readable_key_file", False), "allow_readable_key_file")
    ecmg_kwargs = dict(
        versions=frozenset(versions),
        max_channels=top.integer("max_channels", 1000, 1, 65536),
        max_streams_total=top.integer("max_streams", 100_000, 1, 10_000_000),
        max_invalid_messages=top.integer("max_invalid_messages", 3, 0, 1000),
        access_criteria_transfer_mode=top.boolean("access_criteria_transfer_mode", False),
    )
    top.no_unknown_keys()

    ch = root.sub("channel")
    defaults = ChannelParameters()
    signed = dict(low=-0x8000, high=0x7FFF)
    channel_kwargs = {
        "delay_start": ch.integer("delay_start", defaults.delay_start, **signed),
        "delay_stop": ch.integer("delay_stop", defaults.delay_stop, **signed),
        "AC_delay_start": ch.integer("AC_delay_start", None, **signed),
        "AC_delay_stop": ch.integer("AC_delay_stop", None, **signed),
        "transition_delay_start": ch.integer("transition_delay_start", defaults.transition_delay_start, **signed),
        "transition_delay_stop": ch.integer("transition_delay_stop", defaults.transition_delay_stop, **signed),
        "ECM_rep_period": ch.integer("ECM_rep_period", defaults.ECM_rep_period),
        "max_streams": ch.integer("max_streams", defaults.max_streams),
        "min_CP_duration": ch.integer("min_CP_duration", defaults.min_CP_duration, 1),
        "lead_CW": ch.integer("lead_CW", defaults.lead_CW, 0, 0xFF),
        "CW_per_msg": ch.integer("CW_per_msg", defaults.CW_per_msg, 1, 0xFF),
        "max_comp_time": ch.integer("max_comp_time", defaults.max_comp_time, 1),
    }
    ch.no_unknown_keys()
    try:
        channel = ChannelParameters(**channel_kwargs)
    except ValueError as exc:
        raise ch.fail("lead_CW", str(exc)) from None

    cas_modes: dict[int, CasMode] = {}
    dvb_keys: dict[int, bytes] = {}
    for entry in root.list_of_tables("cas"):
        scid = entry.integer("super_CAS_id", low=0, high=0xFFFFFFFF)
        mode = entry.choice("mode", {m.value: m for m in CasMode})
        profile = profile_of(scid)
        if mode in _MODE_PROFILE and profile is not _MODE_PROFILE[mode]:
            raise entry.fail(
                "super_CAS_id", f"{scid:#010x} does not carry the {mode.value} profile prefix (0x000{_MODE_PROFILE[mode]:x}xxxx)"
            )
        if mode not in _MODE_PROFILE and profile is not None:
            raise entry.fail("mode", f"{scid:#010x} is a BCAST {profile.name} Profile id; use mode {profile.name.lower()!r}")
        if scid in cas_modes:
            raise entry.fail("super_CAS_id", f"{scid:#010x} listed twice")
        cas_modes[scid] = mode
        if mode not in _MODE_PROFILE:
            dvb_keys[scid] = entry.hex_key("key")
        entry.no_unknown_keys()
    if not cas_modes:
        raise root.fail("cas", "no Super_CAS_id configured: add at least one [[cas]] table")
    cw_keys: dict[int, bytes] = {}
    for entry in root.list_of_tables("cw_encryption_key"):
        key_id = entry.integer("key_id")
        if key_id in cw_keys:
            raise entry.fail("key_id", f"{key_id} listed twice")
        cw_keys[key_id] = entry.hex_key("key")
        entry.no_unknown_keys()
    limits = read_limits(root, server=True, max_message_length=max_length)
    tls = read_tls(root, server=True)
    check_tls_endpoint(top, "endpoint", endpoint, tls)
    metrics = read_metrics(root)
    root.no_unknown_keys()
    return ECMGSettings(
        endpoint=endpoint,
        ecmg=ECMGConfig(cas_modes=cas_modes, channel=channel, **ecmg_kwargs),
        key_file=key_file,
        max_message_length=max_length,
        source_path=path,
        dvb_keys=dvb_keys,
        cw_encryption_keys=cw_keys,
        limits=limits,
        tls=tls,
        metrics=metrics,
    )
