"""Parameter types of the SimulCrypt TLV loop: codes, sizes, signedness and value sets.

TS 103 197 §5.4 (ECMG<=>SCS parameters) and §6.2.4 (EMMG/PDG<=>MUX parameters), digested in
``shared/spec/simulcrypt.md`` §3.2 and §4.2. The codes overlap between the interfaces, so there
is one table per interface; a decoder must know the interface before naming a parameter.

Values are kept as they are on the wire (``min_CP_duration`` 10 means 10 × 100 ms); the
``UNITS`` table says how to read them, for human output only.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import attrs


class Kind(enum.Enum):
    """How a parameter value is coded."""

    U8 = "uimsbf8"
    U16 = "uimsbf16"
    U32 = "uimsbf32"
    I16 = "tcimsbf16"  # two's complement: the delays
    BOOL = "boolean8"
    BYTES = "bytes"
    CP_CW = "CP_CW_combination"  # 2-byte CP_number + control word


#: value size in bytes of the fixed-size kinds
FIXED_SIZE = {Kind.U8: 1, Kind.U16: 2, Kind.U32: 4, Kind.I16: 2, Kind.BOOL: 1}


@attrs.frozen
class ParamType:
    """One parameter_type of one interface.

    :param code: parameter_type value.
    :param name: spec spelling, also the message attribute and the JSON key.
    :param kind: how the value is coded.
    :param min_length: smallest parameter_length accepted (variable kinds).
    :param max_length: largest parameter_length accepted (variable kinds).
    :param values: the set of legal values for enumerated integers, or ``None``.
    """

    code: int
    name: str
    kind: Kind
    min_length: int = 0
    max_length: int = 0xFFFF
    values: frozenset[int] | None = None

    @property
    def fixed_size(self) -> int | None:
        return FIXED_SIZE.get(self.kind)


class CPCWCombination(NamedTuple):
    """One CP_CW_combination: a crypto-period number and the control word (TEK) for it."""

    CP_number: int
    CW: bytes

    def __repr__(self) -> str:
        # A control word is key material: never in a repr (and so never in a log line).
        return f"CPCWCombination(CP_number={self.CP_number}, CW=<{len(self.CW)} bytes>)"


class SectionTSpktFlag(enum.IntEnum):
    """section_TSpkt_flag values: DVB's two, and the BCAST SP-4 one (seed §14.1.1.3.1/.4)."""

    SECTIONS = 0x00
    TS_PACKETS = 0x01
    #: SP-4: datagrams are binary STKMs (ECMG<=>SCS) or LTKMs (EMMG<=>MUX)
    BCAST = 0x02


_FLAG_NAMES = {
    SectionTSpktFlag.SECTIONS: "sections",
    SectionTSpktFlag.TS_PACKETS: "TS packets",
    SectionTSpktFlag.BCAST: "BCAST datagrams",
}


def describe_flag(flag: int) -> str:
    """``"1 (TS packets)"``: a section_TSpkt_flag value and what it means, for log lines."""
    return f"{flag} ({_FLAG_NAMES.get(flag, 'undefined')})"


def describe_flags(flags) -> str:
    """``"0x02"`` or ``"0x00, 0x01 or 0x02"``: the section_TSpkt_flag values a side accepts, for log lines."""
    values = [f"{f:#04x}" for f in sorted(flags)]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


class DataType(enum.IntEnum):
    """data_type values of EMMG/PDG<=>MUX (digest §4.2). SP-4 uses EMM for LTKMs."""

    EMM = 0x00
    PRIVATE_DATA = 0x01
    ECM = 0x02  # DVB reserved for ECMs


_FLAGS = frozenset(SectionTSpktFlag)
_MAX = 0xFFFF


def _table(*params: ParamType) -> dict[str, ParamType]:
    return {p.name: p for p in params}


#: ECMG<=>SCS parameter types (digest §3.2)
ECMG_SCS_PARAMS: dict[str, ParamType] = _table(
    ParamType(0x0001, "Super_CAS_id", Kind.U32),
    ParamType(0x0002, "section_TSpkt_flag", Kind.U8, values=_FLAGS),
    ParamType(0x0003, "delay_start", Kind.I16),
    ParamType(0x0004, "delay_stop", Kind.I16),
    ParamType(0x0005, "transition_delay_start", Kind.I16),
    ParamType(0x0006, "transition_delay_stop", Kind.I16),
    ParamType(0x0007, "ECM_rep_period", Kind.U16),
    ParamType(0x0008, "max_streams", Kind.U16),
    ParamType(0x0009, "min_CP_duration", Kind.U16),
    ParamType(0x000A, "lead_CW", Kind.U8),
    ParamType(0x000B, "CW_per_msg", Kind.U8),
    ParamType(0x000C, "max_comp_time", Kind.U16),
    ParamType(0x000D, "access_criteria", Kind.BYTES, 0, _MAX),
    ParamType(0x000E, "ECM_channel_id", Kind.U16),
    ParamType(0x000F, "ECM_stream_id", Kind.U16),
    ParamType(0x0010, "nominal_CP_duration", Kind.U16),
    ParamType(0x0011, "access_criteria_transfer_mode", Kind.BOOL),
    ParamType(0x0012, "CP_number", Kind.U16),
    ParamType(0x0013, "CP_duration", Kind.U16),
    # A CW of at least one byte; protocol v1 fixes it at 8 (see CP_CW_V1_LENGTH).
    ParamType(0x0014, "CP_CW_combination", Kind.CP_CW, 3, _MAX),
    ParamType(0x0015, "ECM_datagram", Kind.BYTES, 1, _MAX),
    ParamType(0x0016, "AC_delay_start", Kind.I16),
    ParamType(0x0017, "AC_delay_stop", Kind.I16),
    ParamType(0x0018, "CW_encryption", Kind.BYTES, 1, _MAX),
    ParamType(0x0019, "ECM_id", Kind.U16),
    ParamType(0x7000, "error_status", Kind.U16),
    ParamType(0x7001, "error_information", Kind.BYTES, 0, _MAX),
)

#: EMMG/PDG<=>MUX parameter types (digest §4.2)
EMMG_MUX_PARAMS: dict[str, ParamType] = _table(
    ParamType(0x0001, "client_id", Kind.U32),
    ParamType(0x0002, "section_TSpkt_flag", Kind.U8, values=_FLAGS),
    ParamType(0x0003, "data_channel_id", Kind.U16),
    ParamType(0x0004, "data_stream_id", Kind.U16),
    ParamType(0x0005, "datagram", Kind.BYTES, 1, _MAX),
    ParamType(0x0006, "bandwidth", Kind.U16),
    ParamType(0x0007, "data_type", Kind.U8, values=frozenset(DataType)),
    ParamType(0x0008, "data_id", Kind.U16),
    ParamType(0x7000, "error_status", Kind.U16),
    ParamType(0x7001, "error_information", Kind.BYTES, 0, _MAX),
)

#: parameter_length of CP_CW_combination in ECMG<=>SCS protocol version 1 (2-byte CP + 8-byte CW)
CP_CW_V1_LENGTH = 10

#: How to read a raw value, for human output: (multiplier, unit)
UNITS: dict[str, tuple[int, str]] = {
    "delay_start": (1, "ms"),
    "delay_stop": (1, "ms"),
    "transition_delay_start": (1, "ms"),
    "transition_delay_stop": (1, "ms"),
    "AC_delay_start": (1, "ms"),
    "AC_delay_stop": (1, "ms"),
    "ECM_rep_period": (1, "ms"),
    "max_comp_time": (1, "ms"),
    "min_CP_duration": (100, "ms"),
    "nominal_CP_duration": (100, "ms"),
    "CP_duration": (100, "ms"),
    "bandwidth": (1, "kbit/s"),
}
