"""Records of the EMMG client (:mod:`.emmg`): configuration, states, outputs and set-up texts.

TS 103 197 §6 (digest ``simulcrypt.md`` §4, §5.2); OMA BCAST SP-4 seed §14.1.1.3.4-.5. The machine
itself is :class:`~.emmg.EMMGClient`; everything it names lives here so that the machine's module
holds only the set-up, data and close sequencing. Outputs besides those of :mod:`.outputs`:
:class:`SendDatagram` (UDP data_provision), :class:`Delivered` and :class:`Ready`.

Set-up failure texts name the field and both values; ids are printed in hex (client_id as
``0x00010001``, data_id as ``0x0001``), counts and types in decimal.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Hashable

import attrs

from ..wire import Message
from ..wire import emmg_mux as m
from ..wire.errors import EMMGMUXErrorStatus as ErrorStatus
from ..wire.errors import Interface, error_name
from ..wire.message import HEADER_SIZE, MAX_MESSAGE_LENGTH
from ..wire.params import EMMG_MUX_PARAMS, DataType
from .channel import MAX_UDP_PAYLOAD
from .pacing import TokenBucket

#: data_provision overhead besides the datagrams: header, client_id TLV (8), data_id TLV (6) ...
UDP_OVERHEAD = HEADER_SIZE + 8 + 6
#: ... plus data_channel_id / data_stream_id TLVs (12) on TCP
TCP_OVERHEAD = UDP_OVERHEAD + 12
#: type and length of one datagram TLV
DATAGRAM_TLV = 4


@attrs.frozen(repr=False)
class SendDatagram:
    """Send *message* (a data_provision) as one UDP datagram to the MUX.

    *tokens* is aligned with ``message.datagram`` (``None`` where an LTKM has no token): once the
    datagram is out, they are delivered; if the send fails, hand both to :meth:`EMMGClient.requeue`.
    """

    message: Message
    tokens: tuple[Hashable | None, ...] = ()

    def __repr__(self) -> str:
        return f"SendDatagram({self.message.NAME}, {len(self.message.datagram)} datagrams)"


@attrs.frozen
class Delivered:
    """The LTKMs carrying these tokens were handed to the transport (each exactly once)."""

    tokens: tuple[Hashable, ...]


@attrs.frozen
class Ready:
    """Channel, streams and bandwidth are set up; data flows."""


@attrs.frozen(kw_only=True)
class EMMGStreamConfig:
    """One data stream (one data_id -> one LTKM flow at the MUX)."""

    data_stream_id: int
    data_id: int
    bandwidth: int  # kbit/s requested
    data_type: int = DataType.EMM
    max_queue: int = 10_000  # LTKMs waiting


@attrs.frozen(kw_only=True)
class EMMGConfig:
    """The EMMG's behaviour (units as on the wire unless stated)."""

    client_id: int
    streams: tuple[EMMGStreamConfig, ...]
    data_channel_id: int = 1
    protocol_version: int = 3
    udp: bool = False  # data_provision over UDP
    response_timeout: float = 5.0  # s
    close_timeout: float = 5.0  # s for the stream_close_responses at shutdown; channel_close follows anyway
    udp_end_wait: float = 0.1  # s between the last UDP data and stream_close_request
    datagrams_per_message: int = 1
    max_message_length: int = MAX_MESSAGE_LENGTH  # TCP; UDP is capped at MAX_UDP_PAYLOAD
    pacing_burst: float = 0.01  # s of allocation
    max_invalid_messages: int = 3

    def __attrs_post_init__(self) -> None:
        if not self.streams:
            raise ValueError("an EMMG needs at least one stream")
        if len({s.data_stream_id for s in self.streams}) != len(self.streams):
            raise ValueError("data_stream_id values must be distinct")
        if len({s.data_id for s in self.streams}) != len(self.streams):
            raise ValueError("data_id values must be distinct")
        if self.protocol_version < 2:
            raise ValueError("protocol version 1 has no data_id; use 2..5")
        if self.datagrams_per_message < 1:
            raise ValueError("datagrams_per_message must be >= 1")

    @property
    def message_limit(self) -> int:
        """Largest data_provision in bytes on the configured transport."""
        return min(self.max_message_length, MAX_UDP_PAYLOAD) if self.udp else self.max_message_length

    @property
    def max_datagram(self) -> int:
        """Largest LTKM that fits alone in one data_provision."""
        overhead = UDP_OVERHEAD if self.udp else TCP_OVERHEAD
        return min(0xFFFF, self.message_limit - overhead - DATAGRAM_TLV)


class EMMGState(enum.Enum):
    """Where the client is in its set-up, data and close sequence (see the state table)."""

    DISCONNECTED = "DISCONNECTED"
    WAIT_CHANNEL_STATUS = "WAIT_CHANNEL_STATUS"
    WAIT_STREAM_STATUS = "WAIT_STREAM_STATUS"
    WAIT_BW_ALLOCATION = "WAIT_BW_ALLOCATION"
    READY = "READY"
    DRAINING = "DRAINING"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


#: states in which the MUX knows our channel (tests are answered)
CHANNEL_OPEN = frozenset(
    {EMMGState.WAIT_STREAM_STATUS, EMMGState.WAIT_BW_ALLOCATION, EMMGState.READY, EMMGState.DRAINING, EMMGState.CLOSING}
)
SETTING_UP = frozenset({EMMGState.WAIT_CHANNEL_STATUS, EMMGState.WAIT_STREAM_STATUS, EMMGState.WAIT_BW_ALLOCATION})


@attrs.define(eq=False)
class EMMGStreamState:
    config: EMMGStreamConfig
    queue: deque = attrs.field(factory=deque)  # (datagram, token)
    open: bool = False  # stream_status received on this connection
    allocation: int | None = None  # kbit/s; None until the first allocation of this connection
    bucket: TokenBucket = attrs.field(factory=lambda: TokenBucket(rate=0.0, depth=0.0))
    sent_datagrams: int = 0
    sent_bytes: int = 0


_WAITED_FOR = {
    EMMGState.WAIT_CHANNEL_STATUS: "channel_setup",
    EMMGState.WAIT_STREAM_STATUS: "stream_setup",
    EMMGState.WAIT_BW_ALLOCATION: "stream_BW_request",
}
_PARAM_NAMES = {p.code: name for name, p in EMMG_MUX_PARAMS.items()}


#: how set-up texts print a field: the ids that name things network-wide in hex, at their wire width
_FORMATS = {"client_id": "#010x", "data_id": "#06x"}


def differences(msg: Message, expected: dict[str, int]) -> list[str]:
    """``"MUX answered <field> <value>; we sent <value>"`` for each field of *msg* unlike *expected*."""
    out = []
    for name, want in expected.items():
        got = getattr(msg, name)
        if got != want:
            width = _FORMATS.get(name, "")
            out.append(f"MUX answered {name} {format(got, width) if got is not None else 'none'}; we sent {format(want, width)}")
    return out


def refusal_text(msg: m.ChannelError | m.StreamError, state: EMMGState) -> str:
    """``MUX refused channel_setup: channel_error 0x000d (invalid value ...) about section_TSpkt_flag``."""
    codes = ", ".join(f"{c:#06x} ({error_name(Interface.EMMG_MUX, c)})" for c in msg.error_status)
    about = ""
    if msg.error_information and len(msg.error_information[0]) == 2:
        code = int.from_bytes(msg.error_information[0], "big")
        name = _PARAM_NAMES.get(code)
        offsets = (ErrorStatus.INVALID_MESSAGE, ErrorStatus.UNSUPPORTED_PROTOCOL_VERSION, ErrorStatus.UNKNOWN_MESSAGE_TYPE)
        about = f" about {name}" if name and msg.error_status[0] not in offsets else ""
    return f"MUX refused {_WAITED_FOR.get(state, 'the set-up')}: {msg.NAME} {codes}{about}"


__all__ = [
    "CHANNEL_OPEN",
    "DATAGRAM_TLV",
    "Delivered",
    "EMMGConfig",
    "EMMGState",
    "EMMGStreamConfig",
    "EMMGStreamState",
    "Ready",
    "SETTING_UP",
    "SendDatagram",
    "TCP_OVERHEAD",
    "UDP_OVERHEAD",
    "differences",
    "refusal_text",
]
