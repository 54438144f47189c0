"""EMMG/PDG<=>MUX messages (TS 103 197 §6; OMA BCAST SP-4 seed §14.1.1.3.4: EMMG = LTKM generator).

One attrs class per message of digest ``simulcrypt.md`` §4.1, fields as in the §4.3 table, each
with its cardinality in protocol version 1 and in versions 2–5 (identical on the wire in every
examined source). ``data_provision`` is the one message that may also travel over UDP; there
``data_channel_id`` / ``data_stream_id`` are optional (v2+) and the MUX identifies the stream by
``client_id`` + ``data_id`` (digest §4.5).

SP-4 reading: ``client_id`` 0x0001xxxx (DRM Profile), ``data_type`` 0x00 (LTKM), ``data_id`` maps
to an IP address and port at the MUX, section_TSpkt_flag 0x02 (datagrams are binary LTKMs).
"""

from __future__ import annotations

from .errors import Interface
from .message import ABSENT, ANY, ONE, OPTIONAL, SOME, Message, message, param
from .params import EMMG_MUX_PARAMS

_IF = Interface.EMMG_MUX


def _msg(code: int, name: str):
    return message(_IF, code, name, EMMG_MUX_PARAMS)


@_msg(0x0011, "channel_setup")
class ChannelSetup(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    section_TSpkt_flag: int = param(ONE)


@_msg(0x0012, "channel_test")
class ChannelTest(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)


@_msg(0x0013, "channel_status")
class ChannelStatus(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    section_TSpkt_flag: int = param(ONE)


@_msg(0x0014, "channel_close")
class ChannelClose(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)


@_msg(0x0015, "channel_error")
class ChannelError(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    error_status: tuple[int, ...] = param(SOME)
    error_information: tuple[bytes, ...] = param(ANY)


@_msg(0x0111, "stream_setup")
class StreamSetup(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    data_stream_id: int = param(ONE)
    data_id: int | None = param(ABSENT, ONE)
    data_type: int = param(ONE)


@_msg(0x0112, "stream_test")
class StreamTest(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    data_stream_id: int = param(ONE)


@_msg(0x0113, "stream_status")
class StreamStatus(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    data_stream_id: int = param(ONE)
    data_id: int | None = param(ABSENT, ONE)
    data_type: int = param(ONE)


@_msg(0x0114, "stream_close_request")
class StreamCloseRequest(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    data_stream_id: int = param(ONE)


@_msg(0x0115, "stream_close_response")
class StreamCloseResponse(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    data_stream_id: int = param(ONE)


@_msg(0x0116, "stream_error")
class StreamError(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    data_stream_id: int = param(ONE)
    error_status: tuple[int, ...] = param(SOME)
    error_information: tuple[bytes, ...] = param(ANY)


@_msg(0x0117, "stream_BW_request")
class StreamBWRequest(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    data_stream_id: int = param(ONE)
    bandwidth: int | None = param(OPTIONAL)


@_msg(0x0118, "stream_BW_allocation")
class StreamBWAllocation(Message):
    client_id: int = param(ONE)
    data_channel_id: int = param(ONE)
    data_stream_id: int = param(ONE)
    bandwidth: int | None = param(OPTIONAL)


@_msg(0x0211, "data_provision")
class DataProvision(Message):
    client_id: int = param(ONE)
    data_channel_id: int | None = param(ONE, OPTIONAL)
    data_stream_id: int | None = param(ONE, OPTIONAL)
    data_id: int | None = param(ABSENT, ONE)
    datagram: tuple[bytes, ...] = param(SOME)


__all__ = [
    "ChannelClose",
    "ChannelError",
    "ChannelSetup",
    "ChannelStatus",
    "ChannelTest",
    "DataProvision",
    "StreamBWAllocation",
    "StreamBWRequest",
    "StreamCloseRequest",
    "StreamCloseResponse",
    "StreamError",
    "StreamSetup",
    "StreamStatus",
    "StreamTest",
]
