"""Error families and error_status tables of the two SimulCrypt interfaces.

Implements TS 103 197 §5.6 (ECMG<=>SCS) and §6.2.6 (EMMG/PDG<=>MUX) error_status values, as
digested in ``shared/spec/simulcrypt.md`` §5, and the OMA BCAST SP-4 rule (seed §14.1.1.3.2) that
BCAST error *n* travels as ``0x8000 + n``.

Two families, split as in h11:

* :class:`PeerProtocolError` — the peer sent something illegal. Each subclass is one *kind* of
  decode failure and carries the error_status code of each interface as class attributes
  (the numbering differs between the interfaces: unknown parameter type is 0x000E on ECMG<=>SCS
  but 0x000A on EMMG<=>MUX). An instance knows its interface, so :attr:`error_status` is the code
  to put in the channel_error / stream_error, and it carries whatever channel / stream ids could
  be read from the offending message.
* :class:`LocalProtocolError` — our own code asked for something illegal (a message that cannot
  be encoded). It is a bug, never answered on the wire.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Interface(enum.Enum):
    """The two SimulCrypt interfaces SP-4 adapts."""

    ECMG_SCS = "ecmg-scs"
    EMMG_MUX = "emmg-mux"


class ProtocolError(Exception):
    """Base of every error the wire layer raises."""


class LocalProtocolError(ProtocolError):
    """A message built by this process cannot be encoded (wrong value, missing field...)."""


class PeerProtocolError(ProtocolError):
    """Bytes from a peer do not form a valid message; answer with the interface's error code.

    :ivar interface: the :class:`Interface` the bytes were decoded for (``None`` when it could
        not be told, e.g. an unknown message_type decoded without a known interface).
    :ivar protocol_version: the version byte, when the header could be read.
    :ivar message_type: the message_type, when the header could be read.
    :ivar channel_id: ECM_channel_id / data_channel_id read from the message, or ``None``.
    :ivar stream_id: ECM_stream_id / data_stream_id read from the message, or ``None``.
    :ivar client_id: client_id (EMMG<=>MUX) read from the message, or ``None``.
    :ivar error_information: suggested error_information value: the offending parameter_type,
        or the byte offset of the fault when no parameter is to blame.
    """

    #: error_status on ECMG<=>SCS and on EMMG<=>MUX for this kind of failure
    ECMG_SCS_CODE: ClassVar[int] = 0x7000
    EMMG_MUX_CODE: ClassVar[int] = 0x7000

    def __init__(
        self,
        detail: str,
        *,
        interface: Interface | None = None,
        protocol_version: int | None = None,
        message_type: int | None = None,
        channel_id: int | None = None,
        stream_id: int | None = None,
        client_id: int | None = None,
        error_information: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.interface = interface
        self.protocol_version = protocol_version
        self.message_type = message_type
        self.channel_id = channel_id
        self.stream_id = stream_id
        self.client_id = client_id
        self.error_information = error_information

    @property
    def error_status(self) -> int:
        """The error_status code to send back on this error's interface.

        Without a known interface the ECMG<=>SCS code is given; the codes the two interfaces
        share (0x0001–0x0004, 0x7000) are the only ones that can arise then.
        """
        if self.interface is Interface.EMMG_MUX:
            return self.EMMG_MUX_CODE
        return self.ECMG_SCS_CODE

    def __str__(self) -> str:
        return f"{self.detail} (error_status {self.error_status:#06x} {error_name(self.interface, self.error_status)})"


class InvalidMessage(PeerProtocolError):
    """Framing is broken: short header, TLV overrunning the message, length lying."""

    ECMG_SCS_CODE = 0x0001
    EMMG_MUX_CODE = 0x0001


class UnsupportedVersion(PeerProtocolError):
    """protocol_version outside the versions accepted for the interface."""

    ECMG_SCS_CODE = 0x0002
    EMMG_MUX_CODE = 0x0002


class UnknownMessageType(PeerProtocolError):
    """message_type not defined on the interface."""

    ECMG_SCS_CODE = 0x0003
    EMMG_MUX_CODE = 0x0003


class MessageTooLong(PeerProtocolError):
    """The message is longer than the configured maximum."""

    ECMG_SCS_CODE = 0x0004
    EMMG_MUX_CODE = 0x0004


class UnknownParameterType(PeerProtocolError):
    """A parameter_type not defined for (or not allowed in) this message and version."""

    ECMG_SCS_CODE = 0x000E
    EMMG_MUX_CODE = 0x000A


class InconsistentLength(PeerProtocolError):
    """A parameter_length that does not fit the parameter's size."""

    ECMG_SCS_CODE = 0x000F
    EMMG_MUX_CODE = 0x000B


class MissingParameter(PeerProtocolError):
    """A mandatory parameter is absent."""

    ECMG_SCS_CODE = 0x0010
    EMMG_MUX_CODE = 0x000C


class WrongParameterCount(MissingParameter):
    """A parameter occurs more often than its cardinality allows.

    TS 103 197 has no code of its own for this; like TSDuck we answer the "missing mandatory
    parameter" code (digest §5.4), with the parameter_type as error_information.
    """


class InvalidValue(PeerProtocolError):
    """A parameter value outside its defined set (e.g. section_TSpkt_flag 0x07)."""

    ECMG_SCS_CODE = 0x0011
    EMMG_MUX_CODE = 0x000D


#: (interface, error_status) -> the PeerProtocolError kind, built from the subclasses
ERROR_CLASSES: dict[tuple[Interface, int], type[PeerProtocolError]] = {}


def _register(cls: type[PeerProtocolError]) -> None:
    for sub in cls.__subclasses__():
        # A refinement (WrongParameterCount) shares its parent's code; the parent names it.
        ERROR_CLASSES.setdefault((Interface.ECMG_SCS, sub.ECMG_SCS_CODE), sub)
        ERROR_CLASSES.setdefault((Interface.EMMG_MUX, sub.EMMG_MUX_CODE), sub)
        _register(sub)


_register(PeerProtocolError)


class _ErrorStatus(enum.IntEnum):
    """An error_status value: the member name is the spec's name, :attr:`text` its wording."""

    text: str

    def __new__(cls, code: int, text: str) -> "_ErrorStatus":
        member = int.__new__(cls, code)
        member._value_ = code
        member.text = text
        return member


class ECMGSCSErrorStatus(_ErrorStatus):
    """TS 103 197 §5.6 error_status values, ECMG<=>SCS (digest §5.1)."""

    INVALID_MESSAGE = 0x0001, "invalid message"
    UNSUPPORTED_PROTOCOL_VERSION = 0x0002, "unsupported protocol version"
    UNKNOWN_MESSAGE_TYPE = 0x0003, "unknown message_type value"
    MESSAGE_TOO_LONG = 0x0004, "message too long"
    UNKNOWN_SUPER_CAS_ID = 0x0005, "unknown Super_CAS_id value"
    UNKNOWN_ECM_CHANNEL_ID = 0x0006, "unknown ECM_channel_id value"
    UNKNOWN_ECM_STREAM_ID = 0x0007, "unknown ECM_stream_id value"
    TOO_MANY_CHANNELS_ON_ECMG = 0x0008, "too many channels on this ECMG"
    TOO_MANY_ECM_STREAMS_ON_CHANNEL = 0x0009, "too many ECM streams on this channel"
    TOO_MANY_ECM_STREAMS_ON_ECMG = 0x000A, "too many ECM streams on this ECMG"
    NOT_ENOUGH_CONTROL_WORDS = 0x000B, "not enough control words to compute ECM"
    OUT_OF_STORAGE_CAPACITY = 0x000C, "ECMG out of storage capacity"
    OUT_OF_COMPUTATIONAL_RESOURCES = 0x000D, "ECMG out of computational resources"
    UNKNOWN_PARAMETER_TYPE = 0x000E, "unknown parameter_type value"
    INCONSISTENT_LENGTH = 0x000F, "inconsistent length for DVB parameter"
    MISSING_MANDATORY_PARAMETER = 0x0010, "missing mandatory DVB parameter"
    INVALID_VALUE = 0x0011, "invalid value for DVB parameter"
    UNKNOWN_ECM_ID = 0x0012, "unknown ECM_id value"
    ECM_CHANNEL_ID_IN_USE = 0x0013, "ECM_channel_id value already in use"
    ECM_STREAM_ID_IN_USE = 0x0014, "ECM_stream_id value already in use"
    ECM_ID_IN_USE = 0x0015, "ECM_id value already in use"
    UNKNOWN_ERROR = 0x7000, "unknown error"
    UNRECOVERABLE_ERROR = 0x7001, "unrecoverable error"


class EMMGMUXErrorStatus(_ErrorStatus):
    """TS 103 197 §6.2.6 error_status values, EMMG/PDG<=>MUX (digest §5.2)."""

    INVALID_MESSAGE = 0x0001, "invalid message"
    UNSUPPORTED_PROTOCOL_VERSION = 0x0002, "unsupported protocol version"
    UNKNOWN_MESSAGE_TYPE = 0x0003, "unknown message_type value"
    MESSAGE_TOO_LONG = 0x0004, "message too long"
    UNKNOWN_DATA_STREAM_ID = 0x0005, "unknown data_stream_id value"
    UNKNOWN_DATA_CHANNEL_ID = 0x0006, "unknown data_channel_id value"
    TOO_MANY_CHANNELS_ON_MUX = 0x0007, "too many channels on this MUX"
    TOO_MANY_DATA_STREAMS_ON_CHANNEL = 0x0008, "too many data streams on this channel"
    TOO_MANY_DATA_STREAMS_ON_MUX = 0x0009, "too many data streams on this MUX"
    UNKNOWN_PARAMETER_TYPE = 0x000A, "unknown parameter_type"
    INCONSISTENT_LENGTH = 0x000B, "inconsistent length for DVB parameter"
    MISSING_MANDATORY_PARAMETER = 0x000C, "missing mandatory DVB parameter"
    INVALID_VALUE = 0x000D, "invalid value for DVB parameter"
    UNKNOWN_CLIENT_ID = 0x000E, "unknown client_id value"
    EXCEEDED_BANDWIDTH = 0x000F, "exceeded bandwidth"
    UNKNOWN_DATA_ID = 0x0010, "unknown data_id value"
    DATA_CHANNEL_ID_IN_USE = 0x0011, "data_channel_id value already in use"
    DATA_STREAM_ID_IN_USE = 0x0012, "data_stream_id value already in use"
    DATA_ID_IN_USE = 0x0013, "data_id value already in use"
    CLIENT_ID_IN_USE = 0x0014, "client_id value already in use"
    UNKNOWN_ERROR = 0x7000, "unknown error"
    UNRECOVERABLE_ERROR = 0x7001, "unrecoverable error"


#: error_status -> name, ECMG<=>SCS (from :class:`ECMGSCSErrorStatus`)
ECMG_SCS_ERRORS: dict[int, str] = {int(status): status.text for status in ECMGSCSErrorStatus}

#: error_status -> name, EMMG/PDG<=>MUX (from :class:`EMMGMUXErrorStatus`)
EMMG_MUX_ERRORS: dict[int, str] = {int(status): status.text for status in EMMGMUXErrorStatus}

#: First code of the BCAST range (seed §14.1.1.3.2: BCAST error n is coded 0x8000 + n)
BCAST_ERROR_BASE = 0x8000


def error_name(interface: Interface | None, code: int) -> str:
    """Human name of an error_status value on *interface* (BCAST codes as ``BCAST error n``)."""
    if code >= BCAST_ERROR_BASE:
        return f"BCAST error {code - BCAST_ERROR_BASE}"
    table = EMMG_MUX_ERRORS if interface is Interface.EMMG_MUX else ECMG_SCS_ERRORS
    return table.get(code, "DVB reserved")
