"""What every SimulCrypt channel machine does, once: error replies, invalid counting, the server channel.

TS 103 197 §5 (ECMG<=>SCS) and §6 (EMMG/PDG<=>MUX); digest ``simulcrypt.md`` §5.1-§5.4 (error
codes, error_information, which message carries the error) and §9 (where sources differ).

* Reply builders: :func:`ecmg_scs_channel_error`, :func:`ecmg_scs_stream_error`,
  :func:`emmg_mux_channel_error`, :func:`emmg_mux_stream_error` (one 2-byte error_information:
  the offending parameter_type, or a byte offset such as :data:`PROTOCOL_VERSION_OFFSET`), and
  :func:`reply_version` (which protocol_version an error reply carries).
* :class:`InvalidCounting`: every error reply counts as an invalid message, any valid one resets
  the count, and ``max_invalid_messages`` in a row close the connection (TSDuck closes after 3).
  Used by the ECMG and MUX server channels and by the EMMG client.
* :class:`ServerChannel`: the server end of one TCP connection carrying one channel (ECMG, MUX).
  Its shared lifecycle::

    state         input                      checks (error code)                       reply / next
    *             codec error                -                                         channel_error with the codec's
                                                                                       code, channel id read, else own,
                                                                                       else 0; the message's version
    *             message in another version -                                         channel_error unsupported
                  than the channel's (also                                             version, error_information 0
                  when it does not decode)
    CHANNEL_OPEN  channel_setup              same id: id in use; other: too many       channel_error
                                             channels (one channel per connection)
    *             channel_test               own channel (unknown channel), sender     channel_status
    *             channel_close              own channel, sender                       (none) -> NO_CHANNEL
    *             stream_test                own channel (stream_error unknown         stream_status
                                             channel, TSDuck), sender, known stream
    *             channel_status,            -                                         (none): noted
                  stream_status, *_error
    *             a message only the server  -                                         channel_error invalid message,
                  sends                                                                error_information 1
    *             any message whose handler  -                                         stream_error (message names a
                  raises (our bug, or a                                                stream) else channel_error
                  source's)                                                            0x7000; notified
                                                                                       "internal_error"; state kept

  An exception escaping a handler (the role's rules, or a collaborator such as the ECMG's ECM
  source) is never the peer's fault and never drops the connection: the offending message gets the
  interface's "unknown error" (0x7000) in a stream_error when it names a stream, else a
  channel_error; :func:`internal_error` builds the log event (exception type and where it was
  raised, never its message: a value may be key material). It does not count as an invalid message.

  "Sender" is the role's own identity check (the MUX's client_id; none on the ECMG). A subclass
  adds its role's handlers (channel_setup, stream_setup, ...) and builds its own replies.
"""

from __future__ import annotations

import enum
import os
from types import ModuleType
from typing import Any, Callable, ClassVar

import attrs

from ..wire import Interface, Message, PeerProtocolError
from ..wire import ecmg_scs, emmg_mux
from ..wire.errors import ECMGSCSErrorStatus, EMMGMUXErrorStatus
from .outputs import Close, Notify, Output, Send

#: largest UDP payload over IPv4: the most one data_provision over UDP can be (EMMG/PDG<=>MUX)
MAX_UDP_PAYLOAD = 65507
#: error_information for a wrong protocol_version: its byte offset in the message (digest §5.3)
PROTOCOL_VERSION_OFFSET = 0
#: error_information for a message_type the receiver never takes: its byte offset
MESSAGE_TYPE_OFFSET = 1


# -- internal errors -------------------------------------------------------------------------


def error_place(exc: BaseException) -> str:
    """Where *exc* was raised: ``file.py:line function`` of the innermost frame (no values)."""
    tb = exc.__traceback__
    if tb is None:
        return "?"
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} {code.co_name}"


def internal_error(what: str, exc: BaseException, **fields: Any) -> Notify:
    """The log event for an exception caught at a machine boundary (our bug, not the peer's).

    :param what: the input being handled (a message name, ``"timer"``, ``"udp"`` ...).
    :returns: ``Notify("internal_error", ...)`` at warn level with the exception's type and place;
        its message is left out (it may quote a value, and values may be key material).
    """
    return Notify("internal_error", {"input": what, "error": type(exc).__name__, "at": error_place(exc), **fields}, "warn")


# -- reply builders --------------------------------------------------------------------------


def error_information(value: int | None) -> tuple[bytes, ...]:
    """The error_information parameters for an error reply: one 2-byte value, or none.

    The value is the offending parameter_type, or a byte offset when no parameter is to blame
    (digest simulcrypt.md §5.3: TS 103 197 leaves its meaning open; TSDuck sends 2 bytes).
    """
    return () if value is None else ((value & 0xFFFF).to_bytes(2, "big"),)


def reply_version(channel_version: int | None, hint: int | None, accepted: frozenset[int]) -> int:
    """The protocol_version of an error reply.

    :param channel_version: the version the channel was set up in (``None`` before set-up).
    :param hint: the version of the message being answered, when known.
    :param accepted: the versions this end accepts.
    :returns: the channel's version; else *hint* when accepted; else the newest accepted one.
    """
    if channel_version is not None:
        return channel_version
    if hint in accepted:
        return hint
    return max(accepted)


def ecmg_scs_channel_error(version: int, channel_id: int, code: int, info: int | None = None) -> ecmg_scs.ChannelError:
    """An ECMG<=>SCS channel_error with one error_status (*code*) and *info* as error_information."""
    return ecmg_scs.ChannelError(
        protocol_version=version,
        ECM_channel_id=channel_id & 0xFFFF,
        error_status=(code,),
        error_information=error_information(info),
    )


def ecmg_scs_stream_error(
    version: int, channel_id: int, stream_id: int, code: int, info: int | None = None
) -> ecmg_scs.StreamError:
    """An ECMG<=>SCS stream_error with one error_status (*code*) and *info* as error_information."""
    return ecmg_scs.StreamError(
        protocol_version=version,
        ECM_channel_id=channel_id & 0xFFFF,
        ECM_stream_id=stream_id,
        error_status=(code,),
        error_information=error_information(info),
    )


def emmg_mux_channel_error(
    version: int, client_id: int, channel_id: int, code: int, info: int | None = None
) -> emmg_mux.ChannelError:
    """An EMMG/PDG<=>MUX channel_error with one error_status (*code*) and *info* as error_information."""
    return emmg_mux.ChannelError(
        protocol_version=version,
        client_id=client_id & 0xFFFFFFFF,
        data_channel_id=channel_id & 0xFFFF,
        error_status=(code,),
        error_information=error_information(info),
    )


def emmg_mux_stream_error(
    version: int, client_id: int, channel_id: int, stream_id: int, code: int, info: int | None = None
) -> emmg_mux.StreamError:
    """An EMMG/PDG<=>MUX stream_error with one error_status (*code*) and *info* as error_information."""
    return emmg_mux.StreamError(
        protocol_version=version,
        client_id=client_id & 0xFFFFFFFF,
        data_channel_id=channel_id & 0xFFFF,
        data_stream_id=stream_id,
        error_status=(code,),
        error_information=error_information(info),
    )


# -- what differs between the two interfaces ---------------------------------------------------


@attrs.frozen(kw_only=True)
class ChannelInterface:
    """Where one interface keeps its ids, and the codes and messages of the shared checks."""

    interface: Interface
    messages: ModuleType  # ecmg_scs / emmg_mux
    channel_field: str  # ECM_channel_id / data_channel_id
    stream_field: str  # ECM_stream_id / data_stream_id
    invalid_message: int
    unsupported_version: int
    unknown_channel: int
    unknown_stream: int
    unknown_error: int
    channel_id_in_use: int
    too_many_channels: int
    #: messages only the server of this interface sends: receiving one is an invalid message
    server_only: tuple[type[Message], ...]


_ECMG, _MUX = ECMGSCSErrorStatus, EMMGMUXErrorStatus

ECMG_SCS_CHANNEL = ChannelInterface(
    interface=Interface.ECMG_SCS, messages=ecmg_scs, channel_field="ECM_channel_id", stream_field="ECM_stream_id",
    invalid_message=_ECMG.INVALID_MESSAGE, unsupported_version=_ECMG.UNSUPPORTED_PROTOCOL_VERSION,
    unknown_channel=_ECMG.UNKNOWN_ECM_CHANNEL_ID, unknown_stream=_ECMG.UNKNOWN_ECM_STREAM_ID,
    unknown_error=_ECMG.UNKNOWN_ERROR,
    channel_id_in_use=_ECMG.ECM_CHANNEL_ID_IN_USE, too_many_channels=_ECMG.TOO_MANY_CHANNELS_ON_ECMG,
    server_only=(ecmg_scs.ECMResponse, ecmg_scs.StreamCloseResponse),
)

EMMG_MUX_CHANNEL = ChannelInterface(
    interface=Interface.EMMG_MUX, messages=emmg_mux, channel_field="data_channel_id", stream_field="data_stream_id",
    invalid_message=_MUX.INVALID_MESSAGE, unsupported_version=_MUX.UNSUPPORTED_PROTOCOL_VERSION,
    unknown_channel=_MUX.UNKNOWN_DATA_CHANNEL_ID, unknown_stream=_MUX.UNKNOWN_DATA_STREAM_ID,
    unknown_error=_MUX.UNKNOWN_ERROR,
    channel_id_in_use=_MUX.DATA_CHANNEL_ID_IN_USE, too_many_channels=_MUX.TOO_MANY_CHANNELS_ON_MUX,
    server_only=(emmg_mux.StreamCloseResponse, emmg_mux.StreamBWAllocation),
)

CHANNEL_INTERFACES: dict[Interface, ChannelInterface] = {c.interface: c for c in (ECMG_SCS_CHANNEL, EMMG_MUX_CHANNEL)}


def peer_error_fields(msg: Message) -> dict[str, Any]:
    """The log fields of a channel_error / stream_error received from the peer (either interface)."""
    ids = CHANNEL_INTERFACES[msg.INTERFACE]
    return {
        "message_type": msg.NAME,
        "channel_id": getattr(msg, ids.channel_field),
        "stream_id": getattr(msg, ids.stream_field, None),
        "error_status": list(msg.error_status),
    }


# -- invalid-message counting ------------------------------------------------------------------


class InvalidCounting:
    """Error replies count as invalid messages; ``config.max_invalid_messages`` in a row close.

    The owner has ``config.max_invalid_messages`` (0 = never close) and may override
    :meth:`_reply_fields` (ids of the reply, for the log) and :meth:`_give_up` (what to free
    before the close).
    """

    config: Any
    invalid_in_a_row: int = 0

    def _ok(self, *outputs: Output) -> list[Output]:
        """A valid message: the count restarts; *outputs* as a list."""
        self.invalid_in_a_row = 0
        return list(outputs)

    def _invalid(self, reply: Message, event: str, **fields: Any) -> list[Output]:
        """Send the error *reply*, log *event* (warn), count it; close at the limit."""
        self.invalid_in_a_row += 1
        outputs: list[Output] = [
            Send(reply),
            Notify(event, {**self._reply_fields(reply), "error_status": reply.error_status[0], **fields}, "warn"),
        ]
        limit = self.config.max_invalid_messages
        if limit and self.invalid_in_a_row >= limit:
            outputs += self._give_up()
            outputs.append(Close(f"{self.invalid_in_a_row} invalid messages in a row"))
        return outputs

    def _reply_fields(self, reply: Message) -> dict[str, Any]:
        return {}

    def _give_up(self) -> list[Output]:
        return []


# -- the server channel ------------------------------------------------------------------------


class ServerChannelState(enum.Enum):
    """Lifecycle of a server channel (one channel per TCP connection)."""

    NO_CHANNEL = "NO_CHANNEL"
    CHANNEL_OPEN = "CHANNEL_OPEN"


class ServerChannel(InvalidCounting):
    """The server end of one TCP connection carrying one channel (see the module docstring).

    Subclasses set :attr:`INTERFACE` and :attr:`HANDLERS` (message class -> method name) and implement
    :meth:`channel_error`, :meth:`stream_error`, :meth:`_channel_status`, :meth:`_stream_status`
    and :meth:`_free_channel`; :meth:`_sender_ids` / :meth:`_check_sender` when the interface
    names the sender in every message (EMMG<=>MUX client_id).

    :ivar streams: stream id -> the role's stream record, for the known-stream check.
    """

    INTERFACE: ClassVar[ChannelInterface]
    #: the role's own messages: message class -> name of the method that handles it
    HANDLERS: ClassVar[dict[type[Message], str]] = {}
    #: per class: message class -> the handling function (made once, on first use)
    _table: ClassVar[dict[type[Message], Callable[..., list[Output]]] | None] = None

    @classmethod
    def _dispatch_table(cls) -> dict[type[Message], Callable[..., list[Output]]]:
        """Functions, not bound methods: a per-connection dict of bound methods is a reference
        cycle (connection -> dict -> method -> connection) that kept every closed connection
        until the cyclic collector ran, and ~1.4 KB each (issue #13: memory after a flood)."""
        table = cls.__dict__.get("_table")
        if table is None:
            messages = cls.INTERFACE.messages
            names = {
                messages.ChannelTest: "_channel_test",
                messages.ChannelClose: "_channel_close",
                messages.StreamTest: "_stream_test",
                messages.ChannelStatus: "_peer_status",
                messages.StreamStatus: "_peer_status",
                messages.ChannelError: "_peer_error",
                messages.StreamError: "_peer_error",
                **{kind: "_wrong_direction" for kind in cls.INTERFACE.server_only},
                **cls.HANDLERS,
            }
            table = {kind: getattr(cls, name) for kind, name in names.items()}
            cls._table = table
        return table

    def __init__(self, config: Any) -> None:
        self.config = config
        self.state = ServerChannelState.NO_CHANNEL
        self.channel_id: int | None = None
        self.version: int | None = None
        self.streams: dict[int, Any] = {}
        self.invalid_in_a_row = 0
        self._now: float | None = None
        self._handlers = self._dispatch_table()

    # -- inputs ------------------------------------------------------------------------------

    def receive(self, item: Message | PeerProtocolError, now: float, received_at: float | None = None) -> list[Output]:
        """Handle one decoded message (or the codec's error for one).

        :param now: the current time (seconds).
        :param received_at: when its bytes arrived (the ECMG answers a CW_provision older than
            max_comp_time with an error instead of a late ECM).
        """
        self._now = now
        if isinstance(item, PeerProtocolError):
            channel = item.channel_id if item.channel_id is not None else self.channel_id or 0
            if self.version is not None and item.protocol_version is not None and item.protocol_version != self.version:
                # judged by another version's tables (v1 lacks ECM_id / data_id): the version is the fault
                code = self.INTERFACE.unsupported_version
                return self._invalid(
                    self.channel_error(code, PROTOCOL_VERSION_OFFSET, channel_id=channel),
                    "version_mismatch",
                    message_version=item.protocol_version,
                )
            reply = self.channel_error(item.error_status, item.error_information, channel_id=channel, version=item.protocol_version)
            return self._invalid(
                reply,
                "decode_error",
                error_status=item.error_status,
                detail=item.detail,
            )
        if self.version is not None and item.protocol_version != self.version:
            code = self.INTERFACE.unsupported_version
            return self._invalid(
                self.channel_error(code, PROTOCOL_VERSION_OFFSET, channel_id=self._channel_of(item)),
                "version_mismatch",
                message_version=item.protocol_version,
            )
        try:
            return self._handlers[type(item)](self, item, now, received_at)
        except Exception as exc:  # our bug or a collaborator's: answer it, keep the channel
            return self._internal_error(item, exc)

    def connection_lost(self, now: float | None = None) -> list[Output]:
        """Free the channel and its streams (digest §6.5)."""
        if self.state is ServerChannelState.CHANNEL_OPEN:
            return self._free_channel("connection_lost", now)
        return []

    def _internal_error(self, msg: Message, exc: Exception) -> list[Output]:
        """0x7000 for the message whose handler raised *exc* (stream_error when it names a stream)."""
        ids = self.INTERFACE
        code = ids.unknown_error
        channel_id = self._channel_of(msg)
        stream_id = getattr(msg, ids.stream_field, None)
        sender = self._sender_ids(msg)
        if stream_id is not None:
            reply = self.stream_error(stream_id, code, channel_id=channel_id, version=msg.protocol_version, **sender)
        else:
            reply = self.channel_error(code, channel_id=channel_id, version=msg.protocol_version, **sender)
        return [Send(reply), internal_error(msg.NAME, exc, channel_id=channel_id, stream_id=stream_id)]

    # -- replies (the role builds them: the interfaces differ in ids) ---------------------------

    def channel_error(
        self, code: int, info: int | None = None, *, channel_id: int | None = None, version: int | None = None, **ids: int
    ) -> Message:
        """A channel_error from this channel: own ids unless given; version per :func:`reply_version`."""
        raise NotImplementedError

    def stream_error(
        self, stream_id: int, code: int, info: int | None = None, *, channel_id: int | None = None,
        version: int | None = None, **ids: int,
    ) -> Message:
        """A stream_error from this channel: own ids unless given; version per :func:`reply_version`."""
        raise NotImplementedError

    def _reply_version(self, hint: int | None) -> int:
        return reply_version(self.version, hint, self.config.versions)

    def _channel_status(self) -> Message:
        raise NotImplementedError

    def _stream_status(self, stream: Any) -> Message:
        raise NotImplementedError

    def _free_channel(self, why: str, now: float | None) -> list[Output]:
        """Release the channel and its streams; state back to NO_CHANNEL."""
        raise NotImplementedError

    # -- what only the MUX's sender check needs (no-ops on the ECMG) ----------------------------

    def _sender_ids(self, msg: Message) -> dict[str, int]:
        """Ids of the sender to echo in an error about *msg* (keywords of the error builders)."""
        return {}

    def _check_sender(self, msg: Message, stream_id: int | None) -> list[Output] | None:
        """The error outputs when *msg* comes from someone other than the channel's owner."""
        return None

    # -- shared checks -----------------------------------------------------------------------

    def _channel_of(self, msg: Message) -> int:
        return getattr(msg, self.INTERFACE.channel_field, None) or self.channel_id or 0

    def _second_channel_setup(self, msg: Message) -> list[Output]:
        """A channel_setup on a connection whose channel is open (one channel per connection)."""
        channel_id = getattr(msg, self.INTERFACE.channel_field)
        code = self.INTERFACE.channel_id_in_use if channel_id == self.channel_id else self.INTERFACE.too_many_channels
        return self._invalid(self.channel_error(code, channel_id=channel_id, **self._sender_ids(msg)), "second_channel_setup")

    def _own_channel(self, msg: Message) -> list[Output] | None:
        """A channel-level message must name this channel (else channel_error unknown channel)."""
        channel_id = getattr(msg, self.INTERFACE.channel_field)
        if self.state is not ServerChannelState.CHANNEL_OPEN or channel_id != self.channel_id:
            return self._invalid(
                self.channel_error(self.INTERFACE.unknown_channel, channel_id=channel_id, **self._sender_ids(msg)),
                "unknown_channel",
            )
        return self._check_sender(msg, None)

    def _stream_channel(self, msg: Message) -> list[Output] | None:
        """A stream-level message must name this channel (else stream_error unknown channel, as TSDuck)."""
        channel_id = getattr(msg, self.INTERFACE.channel_field)
        stream_id = getattr(msg, self.INTERFACE.stream_field)
        if self.state is not ServerChannelState.CHANNEL_OPEN or channel_id != self.channel_id:
            return self._invalid(
                self.stream_error(
                    stream_id, self.INTERFACE.unknown_channel, channel_id=channel_id, version=msg.protocol_version,
                    **self._sender_ids(msg),
                ),
                "unknown_channel",
            )
        return self._check_sender(msg, stream_id)

    def _known_stream(self, msg: Message) -> tuple[Any, list[Output] | None]:
        """(the stream *msg* names, None), or (None, the error outputs)."""
        refused = self._stream_channel(msg)
        if refused:
            return None, refused
        stream_id = getattr(msg, self.INTERFACE.stream_field)
        stream = self.streams.get(stream_id)
        if stream is None:
            return None, self._invalid(self.stream_error(stream_id, self.INTERFACE.unknown_stream), "unknown_stream")
        return stream, None

    # -- shared handlers ---------------------------------------------------------------------

    def _channel_test(self, msg: Message, _now: float, _received_at: float | None) -> list[Output]:
        return self._own_channel(msg) or self._ok(Send(self._channel_status()))

    def _channel_close(self, msg: Message, now: float, _received_at: float | None) -> list[Output]:
        refused = self._own_channel(msg)
        if refused:
            return refused
        self.invalid_in_a_row = 0
        return self._free_channel("channel_close", now)

    def _stream_test(self, msg: Message, _now: float, _received_at: float | None) -> list[Output]:
        stream, refused = self._known_stream(msg)
        return refused or self._ok(Send(self._stream_status(stream)))

    def _peer_status(self, msg: Message, _now: float, _received_at: float | None) -> list[Output]:
        return self._ok(Notify("peer_status", {"message_type": msg.NAME}, "debug"))

    def _peer_error(self, msg: Message, _now: float, _received_at: float | None) -> list[Output]:
        return self._ok(Notify("peer_error", peer_error_fields(msg), "warn"))

    def _wrong_direction(self, msg: Message, _now: float, _received_at: float | None) -> list[Output]:
        return self._invalid(
            self.channel_error(self.INTERFACE.invalid_message, MESSAGE_TYPE_OFFSET, channel_id=self._channel_of(msg)),
            "wrong_direction",
            message_type=msg.NAME,
        )

    # -- InvalidCounting ---------------------------------------------------------------------

    def _reply_fields(self, reply: Message) -> dict[str, Any]:
        return {"channel_id": getattr(reply, self.INTERFACE.channel_field, None)}

    def _give_up(self) -> list[Output]:
        return self.connection_lost(self._now)


__all__ = [
    "CHANNEL_INTERFACES",
    "ECMG_SCS_CHANNEL",
    "EMMG_MUX_CHANNEL",
    "MAX_UDP_PAYLOAD",
    "MESSAGE_TYPE_OFFSET",
    "PROTOCOL_VERSION_OFFSET",
    "ChannelInterface",
    "InvalidCounting",
    "ServerChannel",
    "ServerChannelState",
    "ecmg_scs_channel_error",
    "ecmg_scs_stream_error",
    "emmg_mux_channel_error",
    "emmg_mux_stream_error",
    "error_information",
    "error_place",
    "internal_error",
    "peer_error_fields",
    "reply_version",
]
