"""SimulCrypt wire codec for the SP-4 interfaces: pure Python, no I/O, no Twisted.

``Framer.feed(bytes) -> [frame]``, ``decode(frame) -> Message``, ``message.encode() -> bytes``;
``decode_datagram`` for EMMG data_provision over UDP. See the submodules for the tables.
"""

from . import ecmg_scs, emmg_mux
from .errors import (
    ECMG_SCS_ERRORS,
    EMMG_MUX_ERRORS,
    InconsistentLength,
    Interface,
    InvalidMessage,
    InvalidValue,
    LocalProtocolError,
    MessageTooLong,
    MissingParameter,
    PeerProtocolError,
    ProtocolError,
    UnknownMessageType,
    UnknownParameterType,
    UnsupportedVersion,
    WrongParameterCount,
    error_name,
)
from .header import Framer, decode, decode_datagram
from .message import MAX_MESSAGE_LENGTH, MESSAGE_CLASSES, VERSION_GROUPS, Deviation, Message, generated_source
from .params import CPCWCombination, DataType, SectionTSpktFlag


def encode(message: Message) -> bytes:
    """The wire bytes of *message* (same as ``message.encode()``)."""
    return message.encode()


__all__ = [
    "CPCWCombination",
    "DataType",
    "Deviation",
    "ECMG_SCS_ERRORS",
    "EMMG_MUX_ERRORS",
    "Framer",
    "InconsistentLength",
    "Interface",
    "InvalidMessage",
    "InvalidValue",
    "LocalProtocolError",
    "MAX_MESSAGE_LENGTH",
    "MESSAGE_CLASSES",
    "Message",
    "MessageTooLong",
    "MissingParameter",
    "PeerProtocolError",
    "ProtocolError",
    "SectionTSpktFlag",
    "UnknownMessageType",
    "UnknownParameterType",
    "UnsupportedVersion",
    "VERSION_GROUPS",
    "WrongParameterCount",
    "decode",
    "decode_datagram",
    "ecmg_scs",
    "emmg_mux",
    "encode",
    "error_name",
    "generated_source",
]
