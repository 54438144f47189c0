"""ECMG<=>SCS messages (TS 103 197 §5; OMA BCAST SP-4 seed §14.1.1.3.1: ECMG = STKM generator).

One attrs class per message of digest ``simulcrypt.md`` §3.1, fields in the order of the §3.3
tables, each with its cardinality in protocol version 1 and in versions 2–3 (which are identical
on the wire in every examined source). The codec for each class is generated from these
declarations by :func:`bcast_sp4.wire.message.message`.

SP-4 reading: ``ECM_id`` is the SDP ``stkmstream`` value, ``ECM_datagram`` is a binary STKM when
section_TSpkt_flag is 0x02, and the top 16 bits of ``Super_CAS_id`` name the BCAST profile
(see :mod:`bcast_sp4.wire.sp4`).
"""

from __future__ import annotations

import struct

from .errors import Interface, LocalProtocolError
from .message import ABSENT, ANY, ONE, OPTIONAL, SOME, Message, message, param
from .params import ECMG_SCS_PARAMS, CPCWCombination

_IF = Interface.ECMG_SCS


def _msg(code: int, name: str):
    return message(_IF, code, name, ECMG_SCS_PARAMS)


@_msg(0x0001, "channel_setup")
class ChannelSetup(Message):
    ECM_channel_id: int = param(ONE)
    Super_CAS_id: int = param(ONE)


@_msg(0x0002, "channel_test")
class ChannelTest(Message):
    ECM_channel_id: int = param(ONE)


@_msg(0x0003, "channel_status")
class ChannelStatus(Message):
    ECM_channel_id: int = param(ONE)
    section_TSpkt_flag: int = param(ONE)
    AC_delay_start: int | None = param(OPTIONAL)
    AC_delay_stop: int | None = param(OPTIONAL)
    delay_start: int = param(ONE)
    delay_stop: int = param(ONE)
    transition_delay_start: int | None = param(OPTIONAL)
    transition_delay_stop: int | None = param(OPTIONAL)
    ECM_rep_period: int = param(ONE)
    max_streams: int = param(ONE)
    min_CP_duration: int = param(ONE)
    lead_CW: int = param(ONE)
    CW_per_msg: int = param(ONE)
    max_comp_time: int = param(ONE)


@_msg(0x0004, "channel_close")
class ChannelClose(Message):
    ECM_channel_id: int = param(ONE)


@_msg(0x0005, "channel_error")
class ChannelError(Message):
    ECM_channel_id: int = param(ONE)
    error_status: tuple[int, ...] = param(SOME)
    error_information: tuple[bytes, ...] = param(ANY)


@_msg(0x0101, "stream_setup")
class StreamSetup(Message):
    ECM_channel_id: int = param(ONE)
    ECM_stream_id: int = param(ONE)
    ECM_id: int | None = param(ABSENT, ONE)
    nominal_CP_duration: int = param(ONE)


@_msg(0x0102, "stream_test")
class StreamTest(Message):
    ECM_channel_id: int = param(ONE)
    ECM_stream_id: int = param(ONE)


@_msg(0x0103, "stream_status")
class StreamStatus(Message):
    ECM_channel_id: int = param(ONE)
    ECM_stream_id: int = param(ONE)
    ECM_id: int | None = param(ABSENT, ONE)
    access_criteria_transfer_mode: bool = param(ONE)


@_msg(0x0104, "stream_close_request")
class StreamCloseRequest(Message):
    ECM_channel_id: int = param(ONE)
    ECM_stream_id: int = param(ONE)


@_msg(0x0105, "stream_close_response")
class StreamCloseResponse(Message):
    ECM_channel_id: int = param(ONE)
    ECM_stream_id: int = param(ONE)


@_msg(0x0106, "stream_error")
class StreamError(Message):
    ECM_channel_id: int = param(ONE)
    ECM_stream_id: int = param(ONE)
    error_status: tuple[int, ...] = param(SOME)
    error_information: tuple[bytes, ...] = param(ANY)


@_msg(0x0201, "CW_provision")
class CWProvision(Message):
    ECM_channel_id: int = param(ONE)
    ECM_stream_id: int = param(ONE)
    CP_number: int = param(ONE)
    CW_encryption: bytes | None = param(ABSENT, OPTIONAL, repr=False)
    CP_CW_combination: tuple[CPCWCombination, ...] = param(SOME)
    CP_duration: int | None = param(OPTIONAL)
    access_criteria: bytes | None = param(OPTIONAL)


@_msg(0x0202, "ECM_response")
class ECMResponse(Message):
    ECM_channel_id: int = param(ONE)
    ECM_stream_id: int = param(ONE)
    CP_number: int = param(ONE)
    ECM_datagram: bytes = param(ONE)


# header, ECM_channel_id, ECM_stream_id, CP_number, then the ECM_datagram's type and length
_ECM_RESPONSE_HEAD = struct.Struct(">BHH" + "HHH" * 3 + "HH")
_ECM_RESPONSE_FIXED = _ECM_RESPONSE_HEAD.size - 5  # parameter bytes besides the datagram (22)
#: longest ECM_datagram an ECM_response can carry (message_length is 16 bits)
MAX_ECM_DATAGRAM = 0xFFFF - _ECM_RESPONSE_FIXED


def encode_ecm_response(version: int, channel_id: int, stream_id: int, cp_number: int, datagram: bytes) -> bytes:
    """``ECMResponse.make(...).encode()`` for the ECMG's hot path: one ``struct`` call and a join.

    The same bytes as the generated encoder (parameters in declaration order); the caller passes
    values it already holds as valid (a channel's version and ids, a 16-bit CP_number).

    :raises LocalProtocolError: an empty ECM_datagram or one over :data:`MAX_ECM_DATAGRAM` bytes,
        or a value struct cannot pack.
    """
    n = len(datagram)
    if not 0 < n <= MAX_ECM_DATAGRAM:
        raise LocalProtocolError(f"ECM_response: ECM_datagram length {n} outside 1..{MAX_ECM_DATAGRAM}")
    try:
        head = _ECM_RESPONSE_HEAD.pack(
            version, 0x0202, _ECM_RESPONSE_FIXED + n, 0x000E, 2, channel_id, 0x000F, 2, stream_id,
            0x0012, 2, cp_number, 0x0015, n,
        )
    except struct.error as exc:
        raise LocalProtocolError(f"ECM_response: cannot encode: {exc}") from None
    return head + datagram


__all__ = [
    "MAX_ECM_DATAGRAM",
    "encode_ecm_response",
    "CPCWCombination",
    "ChannelClose",
    "ChannelError",
    "ChannelSetup",
    "ChannelStatus",
    "ChannelTest",
    "CWProvision",
    "ECMResponse",
    "StreamCloseRequest",
    "StreamCloseResponse",
    "StreamError",
    "StreamSetup",
    "StreamStatus",
    "StreamTest",
]
