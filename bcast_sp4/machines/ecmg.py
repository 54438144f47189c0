"""ECMG / STKM generator side of ECMG<=>SCS: channel and stream lifecycles, as a pure machine.

TS 103 197 §5 (digest ``simulcrypt.md`` §3, §5.1, §5.4, §6.1); OMA BCAST SP-4 seed §14.1.1.3.1.

One :class:`ECMGConnection` per TCP connection (one ECM channel per connection); one
:class:`ECMGResources` per ECMG process holds what must be unique across connections (active
ECM_channel_ids, ECM_ids per Super_CAS_id, the stream budget). Inputs are decoded messages or the
codec's :class:`PeerProtocolError`; outputs are :class:`Send` / :class:`Close` / :class:`Notify`.
The STKM itself comes from an :class:`ECMSource` (``bcast_sp4.stkm_source`` for the real one).

State table (``*`` = any state; "own" = the channel this connection set up)::

  state         input                   checks (error code)                             reply / next
  NO_CHANNEL    channel_setup           version accepted (0x0002); Super_CAS_id served  channel_status
                                        (0x0005); channel id not active on this ECMG      -> CHANNEL_OPEN
                                        (0x0013); channels < max (0x0008)
  CHANNEL_OPEN  channel_setup           same id: in use (0x0013); other id: one channel  channel_error
                                        per TCP connection (0x0008)
  CHANNEL_OPEN  channel_test            own channel (0x0006)                             channel_status
  CHANNEL_OPEN  channel_close           own channel (0x0006)                             (none) -> NO_CHANNEL
  CHANNEL_OPEN  stream_setup            own channel (0x0006, stream_error); stream id    stream_status
                                        free (0x0014); ECM_id free for this Super_CAS_id
                                        (0x0015); streams per channel (0x0009) and per
                                        ECMG (0x000A); nominal_CP_duration >=
                                        min_CP_duration (0x0011); the source knows the
                                        ECM_id (its code, e.g. BCAST 0x8000 + n)
  CHANNEL_OPEN  stream_test             own channel (0x0006); known stream (0x0007)      stream_status
  CHANNEL_OPEN  stream_close_request    own channel (0x0006); known stream (0x0007)      stream_close_response
  CHANNEL_OPEN  CW_provision            own channel (0x0006); known stream (0x0007);     ECM_response
                                        CW_per_msg CWs for CPs n-(CW_per_msg-1-lead_CW)
                                        .. n+lead_CW, each once (0x000B); access_criteria
                                        present when the transfer mode asks (0x0010);
                                        within max_comp_time (0x000D); the source (its code)
  NO_CHANNEL    channel/stream message  -                                                 channel_error /
                                                                                          stream_error 0x0006
  *             channel_status, stream_status (echoed by some SCSs), *_error from the SCS: accepted, notified
  *             ECM_response, stream_close_response (never sent by an SCS): channel_error 0x0001
  *             message in another version than the channel's: channel_error 0x0002
  *             codec error: channel_error with its code, the channel id read (else own, else 0)

Decisions where the sources differ (digest §9): a stream-level message naming an unknown channel
is answered with stream_error 0x0006 (TSDuck), so the SCS can match it to the stream; every error
reply counts as an invalid message, and ``max_invalid_messages`` of them in a row close the
connection (TSDuck closes after 3); any valid message resets the count.
"""

from __future__ import annotations

import enum
from typing import Callable, NamedTuple, Protocol

import attrs

from ..wire import Message, PeerProtocolError
from ..wire import ecmg_scs as m
from ..wire.params import CPCWCombination, SectionTSpktFlag
from .outputs import Close, Notify, Output, Send, error_information

# error_status values used here (TS 103 197 §5.6)
INVALID_MESSAGE = 0x0001
UNSUPPORTED_VERSION = 0x0002
UNKNOWN_SUPER_CAS_ID = 0x0005
UNKNOWN_CHANNEL = 0x0006
UNKNOWN_STREAM = 0x0007
TOO_MANY_CHANNELS = 0x0008
TOO_MANY_STREAMS_CHANNEL = 0x0009
TOO_MANY_STREAMS_ECMG = 0x000A
NOT_ENOUGH_CWS = 0x000B
OUT_OF_COMPUTE = 0x000D
MISSING_PARAMETER = 0x0010
INVALID_VALUE = 0x0011
CHANNEL_ID_IN_USE = 0x0013
STREAM_ID_IN_USE = 0x0014
ECM_ID_IN_USE = 0x0015


class CasMode(enum.Enum):
    """What the ECMG produces for a Super_CAS_id, and the section_TSpkt_flag announcing it."""

    DRM_PROFILE = "drm"  # BCAST DRM Profile STKM (0x0001xxxx)
    SMARTCARD_PROFILE = "smartcard"  # BCAST Smartcard Profile MIKEY STKM (0x0002xxxx)
    DVB_SECTIONS = "dvb-sections"  # classic DVB: one ECM section per ECM_datagram
    DVB_TS_PACKETS = "dvb-ts"  # classic DVB: that section in 188-byte TS packets

    @property
    def section_TSpkt_flag(self) -> int:
        if self is CasMode.DVB_SECTIONS:
            return SectionTSpktFlag.SECTIONS
        if self is CasMode.DVB_TS_PACKETS:
            return SectionTSpktFlag.TS_PACKETS
        return SectionTSpktFlag.BCAST


@attrs.frozen(kw_only=True)
class ChannelParameters:
    """What channel_status announces (TS 103 197 §5.4; units as on the wire)."""

    delay_start: int = -200
    delay_stop: int = 0
    AC_delay_start: int | None = None
    AC_delay_stop: int | None = None
    transition_delay_start: int | None = -500
    transition_delay_stop: int | None = 0
    ECM_rep_period: int = 100  # ms
    max_streams: int = 0  # per channel; 0 = no known maximum
    min_CP_duration: int = 10  # x 100 ms
    lead_CW: int = 1
    CW_per_msg: int = 2
    max_comp_time: int = 100  # ms

    def __attrs_post_init__(self) -> None:
        if self.CW_per_msg < 1 or not 0 <= self.lead_CW <= self.CW_per_msg - 1:
            raise ValueError("need CW_per_msg >= 1 and 0 <= lead_CW <= CW_per_msg - 1")


@attrs.frozen(kw_only=True)
class ECMGConfig:
    """The ECMG's behaviour; limits are enforced, never fatal."""

    cas_modes: dict[int, CasMode]  # served Super_CAS_ids
    channel: ChannelParameters = ChannelParameters()
    versions: frozenset[int] = frozenset({1, 2, 3})
    max_channels: int = 1000
    max_streams_total: int = 100_000
    access_criteria_transfer_mode: bool = False
    max_invalid_messages: int = 3


class ECMRequest(NamedTuple):
    """Everything an ECM / STKM is computed from (CWs ordered by CP_number, oldest first).

    A NamedTuple rather than an attrs class: one is built per STKM on the ECMG's hot path.
    """

    super_CAS_id: int
    mode: CasMode
    ECM_id: int | None
    channel_id: int
    stream_id: int
    CP_number: int
    CP_CW_combination: tuple[CPCWCombination, ...]
    CP_duration: int  # x 100 ms: the message's CP_duration, else the stream's nominal one
    access_criteria: bytes | None
    CW_encryption: bytes | None
    now: float

    def __repr__(self) -> str:  # the CWs (and their encryption header) stay out of logs
        return (
            f"ECMRequest(super_CAS_id={self.super_CAS_id:#010x}, ECM_id={self.ECM_id}, channel_id={self.channel_id}, "
            f"stream_id={self.stream_id}, CP_number={self.CP_number}, {len(self.CP_CW_combination)} CWs)"
        )


class ECMGenerationError(Exception):
    """The source cannot produce this ECM; *error_status* goes into a stream_error."""

    def __init__(self, error_status: int, detail: str) -> None:
        super().__init__(detail)
        self.error_status = error_status
        self.detail = detail


class ECMSource(Protocol):
    """Computes ECM_datagrams. Implemented by :class:`bcast_sp4.stkm_source.STKMSource`."""

    def check_stream(self, super_cas_id: int, ecm_id: int | None, now: float) -> None:
        """Raise :class:`ECMGenerationError` when no ECM could be made for this stream."""

    def generate(self, request: ECMRequest) -> bytes:
        """The ECM_datagram, or :class:`ECMGenerationError`."""


class ECMGResources:
    """What is shared by all connections of one ECMG: ids in use and the stream budget."""

    def __init__(self, config: ECMGConfig) -> None:
        self.config = config
        self.channels: dict[int, object] = {}  # ECM_channel_id -> owning connection
        self.ecm_ids: set[tuple[int, int]] = set()  # (Super_CAS_id, ECM_id)
        self.streams = 0


@attrs.define
class _Stream:
    stream_id: int
    ECM_id: int | None
    nominal_CP_duration: int
    access_criteria: bytes | None = None


class State(enum.Enum):
    NO_CHANNEL = "NO_CHANNEL"
    CHANNEL_OPEN = "CHANNEL_OPEN"


class ECMGConnection:
    """The ECMG end of one TCP connection (one ECM channel)."""

    def __init__(self, resources: ECMGResources, source: ECMSource) -> None:
        self.resources = resources
        self.config = resources.config
        self.source = source
        self.state = State.NO_CHANNEL
        self.channel_id: int | None = None
        self.super_CAS_id: int | None = None
        self.mode: CasMode | None = None
        self.version: int | None = None
        self.streams: dict[int, _Stream] = {}
        self.invalid_in_a_row = 0
        # CWs before CP_number in each CW_provision (digest §3.4: n-(CW_per_msg-1-lead_CW)..n+lead_CW)
        self._cws_before = self.config.channel.CW_per_msg - 1 - self.config.channel.lead_CW
        self._handlers: dict[type[Message], Callable[[Message, float, float | None], list[Output]]] = {
            m.ChannelSetup: self._channel_setup,
            m.ChannelTest: self._channel_test,
            m.ChannelClose: self._channel_close,
            m.StreamSetup: self._stream_setup,
            m.StreamTest: self._stream_test,
            m.StreamCloseRequest: self._stream_close_request,
            m.CWProvision: self._cw_provision,
            m.ChannelStatus: self._peer_status,
            m.StreamStatus: self._peer_status,
            m.ChannelError: self._peer_error,
            m.StreamError: self._peer_error,
            m.ECMResponse: self._wrong_direction,
            m.StreamCloseResponse: self._wrong_direction,
        }

    # -- inputs ------------------------------------------------------------------------------

    def receive(self, item: Message | PeerProtocolError, now: float, received_at: float | None = None) -> list[Output]:
        """Handle one decoded message (or the codec's error for one).

        :param now: the current time (seconds), for deadlines and key validity.
        :param received_at: when its bytes arrived; a CW_provision older than max_comp_time
            is answered with 0x000D instead of a late ECM.
        """
        if isinstance(item, PeerProtocolError):
            channel = item.channel_id if item.channel_id is not None else self.channel_id or 0
            return self._invalid(
                self._channel_error(channel, item.error_status, item.error_information, item.protocol_version),
                "decode_error",
                error_status=item.error_status,
                detail=item.detail,
            )
        if self.version is not None and item.protocol_version != self.version:
            return self._invalid(
                self._channel_error(self._channel_of(item), UNSUPPORTED_VERSION, 0, self.version),
                "version_mismatch",
                message_version=item.protocol_version,
            )
        outputs = self._handlers[type(item)](item, now, received_at)
        return outputs

    def connection_lost(self) -> list[Output]:
        """Free the channel and its streams (digest §6.5)."""
        if self.state is State.CHANNEL_OPEN:
            return self._free_channel("connection_lost")
        return []

    # -- channel messages --------------------------------------------------------------------

    def _channel_setup(self, msg: m.ChannelSetup, now: float, _received_at: float | None) -> list[Output]:
        if self.state is State.CHANNEL_OPEN:
            code = CHANNEL_ID_IN_USE if msg.ECM_channel_id == self.channel_id else TOO_MANY_CHANNELS
            return self._invalid(self._channel_error(msg.ECM_channel_id, code), "second_channel_setup")
        version = msg.protocol_version
        if version not in self.config.versions:
            return self._invalid(self._channel_error(msg.ECM_channel_id, UNSUPPORTED_VERSION, 0), "version_refused")
        mode = self.config.cas_modes.get(msg.Super_CAS_id)
        if mode is None:
            return self._invalid(
                self._channel_error(msg.ECM_channel_id, UNKNOWN_SUPER_CAS_ID, 0x0001), "unknown_super_cas_id"
            )
        resources = self.resources
        if msg.ECM_channel_id in resources.channels:
            return self._invalid(self._channel_error(msg.ECM_channel_id, CHANNEL_ID_IN_USE), "channel_id_in_use")
        if len(resources.channels) >= self.config.max_channels:
            return self._invalid(self._channel_error(msg.ECM_channel_id, TOO_MANY_CHANNELS), "too_many_channels")
        resources.channels[msg.ECM_channel_id] = self
        self.state = State.CHANNEL_OPEN
        self.channel_id, self.super_CAS_id, self.mode, self.version = (
            msg.ECM_channel_id,
            msg.Super_CAS_id,
            mode,
            version,
        )
        return self._ok(
            Send(self._channel_status()),
            Notify("channel_open", {"channel_id": self.channel_id, "super_cas_id": self.super_CAS_id, "mode": mode.value}),
        )

    def _channel_test(self, msg: m.ChannelTest, _now: float, _received_at: float | None) -> list[Output]:
        if self.state is not State.CHANNEL_OPEN or msg.ECM_channel_id != self.channel_id:
            return self._invalid(self._channel_error(msg.ECM_channel_id, UNKNOWN_CHANNEL), "unknown_channel")
        return self._ok(Send(self._channel_status()))

    def _channel_close(self, msg: m.ChannelClose, _now: float, _received_at: float | None) -> list[Output]:
        if self.state is not State.CHANNEL_OPEN or msg.ECM_channel_id != self.channel_id:
            return self._invalid(self._channel_error(msg.ECM_channel_id, UNKNOWN_CHANNEL), "unknown_channel")
        self.invalid_in_a_row = 0
        return self._free_channel("channel_close")

    def _channel_status(self) -> m.ChannelStatus:
        p = self.config.channel
        assert self.mode is not None and self.channel_id is not None
        return m.ChannelStatus(
            protocol_version=self.version,
            ECM_channel_id=self.channel_id,
            section_TSpkt_flag=self.mode.section_TSpkt_flag,
            AC_delay_start=p.AC_delay_start,
            AC_delay_stop=p.AC_delay_stop,
            delay_start=p.delay_start,
            delay_stop=p.delay_stop,
            transition_delay_start=p.transition_delay_start,
            transition_delay_stop=p.transition_delay_stop,
            ECM_rep_period=p.ECM_rep_period,
            max_streams=p.max_streams,
            min_CP_duration=p.min_CP_duration,
            lead_CW=p.lead_CW,
            CW_per_msg=p.CW_per_msg,
            max_comp_time=p.max_comp_time,
        )

    def _free_channel(self, why: str) -> list[Output]:
        resources = self.resources
        for stream in self.streams.values():
            self._release_stream(stream)
        count = len(self.streams)
        self.streams.clear()
        resources.channels.pop(self.channel_id, None)
        outputs: list[Output] = [Notify("channel_closed", {"channel_id": self.channel_id, "why": why, "streams": count})]
        self.state = State.NO_CHANNEL
        self.channel_id = self.super_CAS_id = self.mode = self.version = None
        return outputs

    # -- stream messages ---------------------------------------------------------------------

    def _stream_setup(self, msg: m.StreamSetup, now: float, _received_at: float | None) -> list[Output]:
        refused = self._check_channel(msg)
        if refused:
            return refused
        p, resources = self.config.channel, self.resources
        code = None
        if msg.ECM_stream_id in self.streams:
            code = STREAM_ID_IN_USE
        elif msg.ECM_id is not None and (self.super_CAS_id, msg.ECM_id) in resources.ecm_ids:
            code = ECM_ID_IN_USE
        elif p.max_streams and len(self.streams) >= p.max_streams:
            code = TOO_MANY_STREAMS_CHANNEL
        elif resources.streams >= self.config.max_streams_total:
            code = TOO_MANY_STREAMS_ECMG
        elif msg.nominal_CP_duration < p.min_CP_duration:
            code = INVALID_VALUE
        if code is not None:
            return self._invalid(self._stream_error(msg.ECM_stream_id, code), "stream_refused", error_status=code)
        try:
            self.source.check_stream(self.super_CAS_id, msg.ECM_id, now)
        except ECMGenerationError as exc:
            return self._invalid(
                self._stream_error(msg.ECM_stream_id, exc.error_status), "stream_refused", error_status=exc.error_status,
                detail=exc.detail,
            )
        stream = _Stream(msg.ECM_stream_id, msg.ECM_id, msg.nominal_CP_duration)
        self.streams[stream.stream_id] = stream
        resources.streams += 1
        if stream.ECM_id is not None:
            resources.ecm_ids.add((self.super_CAS_id, stream.ECM_id))
        return self._ok(
            Send(self._stream_status(stream)),
            Notify("stream_open", {"channel_id": self.channel_id, "stream_id": stream.stream_id, "ecm_id": stream.ECM_id}),
        )

    def _stream_test(self, msg: m.StreamTest, _now: float, _received_at: float | None) -> list[Output]:
        stream, refused = self._known_stream(msg)
        if refused:
            return refused
        return self._ok(Send(self._stream_status(stream)))

    def _stream_close_request(self, msg: m.StreamCloseRequest, _now: float, _received_at: float | None) -> list[Output]:
        stream, refused = self._known_stream(msg)
        if refused:
            return refused
        del self.streams[stream.stream_id]
        self._release_stream(stream)
        return self._ok(
            Send(m.StreamCloseResponse(protocol_version=self.version, ECM_channel_id=self.channel_id, ECM_stream_id=stream.stream_id)),
            Notify("stream_closed", {"channel_id": self.channel_id, "stream_id": stream.stream_id}),
        )

    def _stream_status(self, stream: _Stream) -> m.StreamStatus:
        return m.StreamStatus(
            protocol_version=self.version,
            ECM_channel_id=self.channel_id,
            ECM_stream_id=stream.stream_id,
            ECM_id=stream.ECM_id,
            access_criteria_transfer_mode=self.config.access_criteria_transfer_mode,
        )

    def _release_stream(self, stream: _Stream) -> None:
        self.resources.streams -= 1
        if stream.ECM_id is not None:
            self.resources.ecm_ids.discard((self.super_CAS_id, stream.ECM_id))

    # -- CW_provision ------------------------------------------------------------------------

    def _cw_provision(self, msg: m.CWProvision, now: float, received_at: float | None) -> list[Output]:
        # The per-STKM hot path: the common case is checked with few operations.
        stream = self.streams.get(msg.ECM_stream_id) if msg.ECM_channel_id == self.channel_id else None
        if stream is None:
            return self._known_stream(msg)[1]
        p = self.config.channel
        combos = msg.CP_CW_combination
        first = (msg.CP_number - self._cws_before) & 0xFFFF
        in_order = len(combos) == p.CW_per_msg
        if in_order:
            expected = first
            for combo in combos:
                if combo[0] != expected:
                    in_order = False
                    break
                expected = (expected + 1) & 0xFFFF
        if not in_order:
            cps = [c.CP_number for c in combos]
            wanted = [(first + k) & 0xFFFF for k in range(p.CW_per_msg)]
            if len(cps) != len(wanted) or sorted(cps) != sorted(wanted):
                return self._invalid(
                    self._stream_error(stream.stream_id, NOT_ENOUGH_CWS, 0x0014),
                    "not_enough_cws",
                    cp_number=msg.CP_number,
                    got=cps,
                )
            combos = tuple(sorted(combos, key=lambda c: wanted.index(c.CP_number)))
        access_criteria = msg.access_criteria if msg.access_criteria is not None else stream.access_criteria
        if msg.access_criteria is None and self.config.access_criteria_transfer_mode:
            return self._invalid(self._stream_error(stream.stream_id, MISSING_PARAMETER, 0x000D), "no_access_criteria")
        if received_at is not None and (now - received_at) * 1000.0 > p.max_comp_time:
            return self._invalid(
                self._stream_error(stream.stream_id, OUT_OF_COMPUTE),
                "deadline_missed",
                cp_number=msg.CP_number,
                waited_ms=round((now - received_at) * 1000.0, 1),
            )
        request = ECMRequest(
            self.super_CAS_id,
            self.mode,
            stream.ECM_id,
            self.channel_id,
            stream.stream_id,
            msg.CP_number,
            combos,
            msg.CP_duration if msg.CP_duration is not None else stream.nominal_CP_duration,
            access_criteria,
            msg.CW_encryption,
            now,
        )
        try:
            datagram = self.source.generate(request)
        except ECMGenerationError as exc:
            return self._invalid(
                self._stream_error(stream.stream_id, exc.error_status),
                "ecm_refused",
                cp_number=msg.CP_number,
                error_status=exc.error_status,
                detail=exc.detail,
            )
        self.invalid_in_a_row = 0
        stream.access_criteria = access_criteria  # remembered once an ECM was made with them
        return [Send(m.ECMResponse.make(self.version, self.channel_id, stream.stream_id, msg.CP_number, datagram))]

    # -- messages an ECMG only takes note of -------------------------------------------------

    def _peer_status(self, msg: Message, _now: float, _received_at: float | None) -> list[Output]:
        return self._ok(Notify("peer_status", {"message_type": msg.NAME}, "debug"))

    def _peer_error(self, msg: m.ChannelError | m.StreamError, _now: float, _received_at: float | None) -> list[Output]:
        return self._ok(
            Notify(
                "peer_error",
                {
                    "message_type": msg.NAME,
                    "channel_id": msg.ECM_channel_id,
                    "stream_id": getattr(msg, "ECM_stream_id", None),
                    "error_status": list(msg.error_status),
                },
                "warn",
            )
        )

    def _wrong_direction(self, msg: Message, _now: float, _received_at: float | None) -> list[Output]:
        return self._invalid(
            self._channel_error(self._channel_of(msg), INVALID_MESSAGE, 1), "wrong_direction", message_type=msg.NAME
        )

    # -- helpers -----------------------------------------------------------------------------

    def _channel_of(self, msg: Message) -> int:
        return getattr(msg, "ECM_channel_id", None) or self.channel_id or 0

    def _check_channel(self, msg: Message) -> list[Output] | None:
        if self.state is State.CHANNEL_OPEN and msg.ECM_channel_id == self.channel_id:
            return None
        return self._invalid(
            self._stream_error(msg.ECM_stream_id, UNKNOWN_CHANNEL, channel_id=msg.ECM_channel_id, version=msg.protocol_version),
            "unknown_channel",
        )

    def _known_stream(self, msg: Message) -> tuple[_Stream | None, list[Output] | None]:
        refused = self._check_channel(msg)
        if refused:
            return None, refused
        stream = self.streams.get(msg.ECM_stream_id)
        if stream is None:
            return None, self._invalid(self._stream_error(msg.ECM_stream_id, UNKNOWN_STREAM), "unknown_stream")
        return stream, None

    def _reply_version(self, hint: int | None) -> int:
        if self.version is not None:
            return self.version
        if hint in self.config.versions:
            return hint
        return max(self.config.versions)

    def _channel_error(self, channel_id: int, code: int, info: int | None = None, version: int | None = None) -> m.ChannelError:
        return m.ChannelError(
            protocol_version=self._reply_version(version),
            ECM_channel_id=channel_id & 0xFFFF,
            error_status=(code,),
            error_information=error_information(info),
        )

    def _stream_error(
        self, stream_id: int, code: int, info: int | None = None, *, channel_id: int | None = None, version: int | None = None
    ) -> m.StreamError:
        return m.StreamError(
            protocol_version=self._reply_version(version),
            ECM_channel_id=(self.channel_id if channel_id is None else channel_id) & 0xFFFF,
            ECM_stream_id=stream_id,
            error_status=(code,),
            error_information=error_information(info),
        )

    def _ok(self, *outputs: Output) -> list[Output]:
        self.invalid_in_a_row = 0
        return list(outputs)

    def _invalid(self, reply: Message, event: str, **fields) -> list[Output]:
        self.invalid_in_a_row += 1
        outputs: list[Output] = [
            Send(reply),
            Notify(event, {"channel_id": getattr(reply, "ECM_channel_id", None), **fields}, "warn"),
        ]
        limit = self.config.max_invalid_messages
        if limit and self.invalid_in_a_row >= limit:
            outputs += self.connection_lost()
            outputs.append(Close(f"{self.invalid_in_a_row} invalid messages in a row"))
        return outputs
