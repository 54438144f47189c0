"""Text and JSON views of decoded SimulCrypt messages (for the decode CLI and logs).

JSON (one object per message; the decode CLI's contract)::

    {"interface": "ecmg-scs" | "emmg-mux", "version": int, "type": "CW_provision",
     "type_code": int, "params": {...}}

``params`` keys are the spec spellings of the digest's parameter tables; integers are numbers,
booleans are JSON booleans, byte strings lowercase hex, repeated parameters lists, and
``CP_CW_combination`` items ``{"CP_number": int, "CW": hex}``. Absent parameters are omitted.
The decode CLI adds ``source``, ``deviations`` and ``payloads`` (:mod:`.decode`, :mod:`.payloads`).

The text view names every field and interprets codes: error names (BCAST status n as 0x8000 + n,
named from :mod:`bcast_sp4.bcast.status` with its source),
the BCAST profile of Super_CAS_id / client_id, section_TSpkt_flag and data_type meanings, units.
"""

from __future__ import annotations

from typing import Any

from ..bcast.status import SIMULCRYPT_BCAST_BASE, describe_status
from ..wire import Message, error_name
from ..wire.params import UNITS, CPCWCombination, DataType, Kind, SectionTSpktFlag
from ..wire.sp4 import profile_of, user_part

_FLAG_MEANING = {
    SectionTSpktFlag.SECTIONS: "MPEG-2 sections",
    SectionTSpktFlag.TS_PACKETS: "188-byte TS packets",
    SectionTSpktFlag.BCAST: "BCAST binary STKM/LTKM",
}
_DATA_TYPE_MEANING = {DataType.EMM: "EMM / BCAST LTKM", DataType.PRIVATE_DATA: "private data", DataType.ECM: "DVB reserved (ECM)"}


def describe_error(interface, code: int) -> str:
    """The name of an error_status; BCAST codes (0x8000 + n) by their BCAST status and its source.

    ``0x800d`` -> ``BCAST status 13: ILLEGAL_DEVICE (Illegal Device) [C]``; [C] marks the table
    of bcast-keys.md §6.2 (corroborated by one implementation), [project] bcast-sp4's own codes.
    """
    if code < SIMULCRYPT_BCAST_BASE:
        return error_name(interface, code)
    n = code - SIMULCRYPT_BCAST_BASE
    return f"BCAST status {n if n < 0x100 else hex(n)}: {describe_status(n)}"


def _present(message: Message):
    for ptype, _cards in message.PARAMS:
        value = getattr(message, ptype.name)
        if value is None or value == ():
            continue
        yield ptype, value


def _json_value(value: Any, show_keys: bool) -> Any:
    if isinstance(value, CPCWCombination):
        if show_keys:
            return {"CP_number": value.CP_number, "CW": value.CW.hex()}
        return {"CP_number": value.CP_number, "CW": None, "CW_length": len(value.CW)}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, tuple):
        return [_json_value(v, show_keys) for v in value]
    if isinstance(value, bool):
        return value
    return int(value)


def to_json_dict(message: Message, show_keys: bool = False) -> dict[str, Any]:
    """The JSON object of the decode CLI for *message*. A CW (a TEK, or the key material a scrambler
    uses) is ``null`` beside its ``CW_length`` unless *show_keys*."""
    return {
        "interface": message.INTERFACE.value,
        "version": message.protocol_version,
        "type": message.NAME,
        "type_code": message.MESSAGE_TYPE,
        "params": {ptype.name: _json_value(value, show_keys) for ptype, value in _present(message)},
    }


def _describe(message: Message, ptype, value, show_keys: bool) -> str:
    name = ptype.name
    if isinstance(value, CPCWCombination):
        if show_keys:
            return f"CP {value.CP_number}, CW {value.CW.hex()} ({len(value.CW)} bytes)"
        return f"CP {value.CP_number}, CW {len(value.CW)} bytes (hidden; --show-keys prints it)"
    if isinstance(value, bytes):
        return f"{value.hex()} ({len(value)} bytes)" if value else "(empty)"
    if name in ("Super_CAS_id", "client_id"):
        profile = profile_of(value)
        bcast = (
            f"; BCAST {profile.name.title()} Profile, user part {user_part(value):#06x}"
            if profile
            else "; not a BCAST profile"
        )
        return f"{value:#010x} (CA_system_id {value >> 16:#06x}, CA_subsystem_id {value & 0xFFFF:#06x}{bcast})"
    if name == "section_TSpkt_flag":
        return f"{value:#04x} ({_FLAG_MEANING.get(value, 'DVB reserved')})"
    if name == "data_type":
        return f"{value:#04x} ({_DATA_TYPE_MEANING.get(value, 'DVB reserved')})"
    if name == "max_streams" and value == 0:
        return "0 (no known maximum)"
    if name == "error_status":
        return f"{value:#06x} ({describe_error(message.INTERFACE, value)})"
    if name in UNITS:
        factor, unit = UNITS[name]
        return f"{value} ({value * factor} {unit})" if factor != 1 else f"{value} {unit}"
    if ptype.kind is Kind.BOOL:
        return f"{int(value)} ({'true' if value else 'false'})"
    return str(value)


def to_text(message: Message, source: str = "", show_keys: bool = False) -> str:
    """Multi-line human description of *message* (CWs by their length unless *show_keys*)."""
    head = f"{message.INTERFACE.value} v{message.protocol_version} {message.NAME} ({message.MESSAGE_TYPE:#06x})"
    lines = [f"{head}  {source}".rstrip()]
    for ptype, value in _present(message):
        values = value if isinstance(value, tuple) and not isinstance(value, CPCWCombination) else (value,)
        for item in values:
            lines.append(f"  {ptype.name:<30} {_describe(message, ptype, item, show_keys)}")
    return "\n".join(lines)
