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

from .errors import Interface, LocalProtocolError, PeerProtocolError
from .header import decode
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


# -- CW_provision by its layout, for the ECMG's per-STKM path ---------------------------------

_CW_PROVISION_TYPE = b"\x02\x01"  # message_type 0x0201 as on the wire
# parameter_type -> its place in CWProvisionReader's tuple (after the protocol_version)
_CW_PROVISION_SLOTS = {0x000E: 1, 0x000F: 2, 0x0012: 3, 0x0018: 5, 0x0013: 6, 0x000D: 7}
_CPCW = 0x0014
_new_cpcw = tuple.__new__


class CWProvisionReader:
    """The fields of CW_provisions laid out as one already decoded on this connection.

    An SCS sends every CW_provision of a channel with the same parameters in the same order and
    the same lengths, so a message's layout (its header, and the type and length of each parameter
    in turn) repeats. Once :meth:`learn` has seen one layout, :meth:`read` takes a message of that
    layout apart with one ``struct`` call and one tuple comparison instead of the generated
    decoder's parameter walk and message object (issue #9: the decode was a sixth of the ECMG's
    instructions per STKM). Layouts are kept by message size, at most *limit* of them.

    A message :meth:`read` accepts is one the generated :func:`decode` accepts, with the same
    values: the decoder's verdict depends only on the header and on each parameter's type, length
    and order, which the layout fixes; values are read from the same bytes. Anything else
    (another size or layout, a header or parameter that differs) is ``None``: the caller decodes
    it the normal way. ``tests/wire/test_cw_provision_reader.py`` checks this against the decoder.

    :meth:`read` returns ``(protocol_version, ECM_channel_id, ECM_stream_id, CP_number,
    CP_CW_combination, CW_encryption, CP_duration, access_criteria)``, ``CP_CW_combination`` a
    tuple of :class:`CPCWCombination` as the decoder makes it, absent parameters ``None``.
    """

    __slots__ = ("_layouts", "limit", "max_size")

    def __init__(self, limit: int = 4, max_size: int = 0xFFFF + 5) -> None:
        self.limit = limit
        self.max_size = max_size  # the longest message learnt (the connection's limit)
        self._layouts: dict[int, object] = {}  # message size -> read function of that layout

    def read(self, frame: bytes) -> tuple | None:
        """The fields of *frame* when it has a learned layout, else ``None``."""
        layout = self._layouts.get(len(frame))
        return None if layout is None else layout(frame)

    def learn(self, frame: bytes) -> bool | None:
        """Learn the layout of *frame* if it is a valid CW_provision (as :func:`decode` judges it).

        :returns: ``True`` when :meth:`read` now reads it; ``False`` when *frame* was decoded and is
            not a valid CW_provision; ``None`` (not tried) when it is not a CW_provision at all, its
            size is known already or over :attr:`max_size`, or :attr:`limit` layouts are known.
        """
        if (len(frame) in self._layouts or len(self._layouts) >= self.limit or len(frame) > self.max_size
                or frame[1:3] != _CW_PROVISION_TYPE):
            return None
        try:
            msg = decode(frame, _IF)
        except PeerProtocolError:
            return False
        layout = _layout_reader(frame)
        fields = (msg.protocol_version, msg.ECM_channel_id, msg.ECM_stream_id, msg.CP_number, msg.CP_CW_combination,
                  msg.CW_encryption, msg.CP_duration, msg.access_criteria)
        if layout(frame) != fields:  # cannot happen for a decoded CW_provision; never trust a layout that differs
            return False
        self._layouts[len(frame)] = layout
        return True

    @property
    def sizes(self) -> tuple[int, ...]:
        """The message sizes whose layout is known."""
        return tuple(self._layouts)


#: compiled layout readers shared by every connection (an SCS's channels send the same layouts),
#: by (protocol_version, ((parameter_type, parameter_length), ...)); at most this many are kept
MAX_SHARED_LAYOUTS = 256
_shared_layouts: dict[tuple, object] = {}


def _layout_reader(frame: bytes):
    """A function of one argument: the fields of a frame laid out as *frame* (a decoded
    CW_provision), or ``None`` for one whose header or any parameter type or length differs.

    The bytes that make the layout (the 5-byte header, each parameter's type and length) are
    compared in one operation, as a masked integer; the values are read with one ``struct``.
    Compiled once per layout and shared (at most :data:`MAX_SHARED_LAYOUTS`, the oldest dropped
    first), so a flood of connections learning layouts costs no code objects of their own."""
    params = []
    pos = 5
    while pos < len(frame):
        ptype, length = struct.unpack_from(">HH", frame, pos)
        params.append((ptype, length))
        pos += 4 + length
    key = (frame[0], tuple(params))
    reader = _shared_layouts.get(key)
    if reader is None:
        reader = _compile_layout(frame)
        if len(_shared_layouts) >= MAX_SHARED_LAYOUTS:
            del _shared_layouts[next(iter(_shared_layouts))]
        _shared_layouts[key] = reader
    return reader


def _compile_layout(frame: bytes):
    """:func:`_layout_reader`'s function, compiled."""
    fmt = [">5x"]  # the header: compared, not read
    mask = bytearray(len(frame))
    mask[0:5] = b"\xff" * 5
    slots: list[str] = [str(frame[0])] + ["None"] * 7  # the protocol_version is part of the layout
    combos: list[str] = []
    values = 0
    pos = 5
    while pos < len(frame):
        ptype, length = struct.unpack_from(">HH", frame, pos)
        mask[pos:pos + 4] = b"\xff" * 4
        if ptype == _CPCW:
            fmt.append(f"4xH{length - 2}s")
            combos.append(f"_cpcw(_CPCW_T, (v{values}, v{values + 1}))")
            values += 2
        else:
            slot = _CW_PROVISION_SLOTS[ptype]
            fmt.append("4xH" if slot <= 3 or slot == 6 else f"4x{length}s")
            slots[slot] = f"v{values}"
            values += 1
        pos += 4 + length
    slots[4] = "(" + "".join(c + ", " for c in combos) + ")"
    names = "".join(f"v{i}, " for i in range(values))
    source = (f"def read(frame):\n    if _from_bytes(frame) & _MASK == _LAYOUT:\n        {names}= _unpack(frame)\n"
              f"        return ({', '.join(slots)})\n    return None\n")
    mask_int = int.from_bytes(mask, "big")
    scope = {"_unpack": struct.Struct("".join(fmt)).unpack, "_cpcw": _new_cpcw, "_CPCW_T": CPCWCombination,
             "_from_bytes": int.from_bytes, "_MASK": mask_int, "_LAYOUT": int.from_bytes(frame, "big") & mask_int}
    exec(compile(source, "<bcast_sp4.wire CW_provision layout>", "exec"), scope)  # noqa: S102 - our own text
    return scope["read"]


__all__ = [
    "CWProvisionReader",
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
