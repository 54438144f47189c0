"""ECMG / STKM generator side of ECMG<=>SCS: channel and stream lifecycles, as a pure machine.

TS 103 197 §5 (digest ``simulcrypt.md`` §3, §5.1, §5.4, §6.1); OMA BCAST SP-4 seed §14.1.1.3.1.

One :class:`ECMGConnection` per TCP connection (one ECM channel per connection); one
:class:`ECMGResources` per ECMG process holds what must be unique across connections (active
ECM_channel_ids, ECM_ids per Super_CAS_id, the stream budget). Inputs are decoded messages or the
codec's :class:`PeerProtocolError`; outputs are :class:`Send` / :class:`Close` / :class:`Notify`.
The STKM itself comes from an :class:`~bcast_sp4.bcast.ecm_request.ECMSource`
(:class:`bcast_sp4.bcast.ecm.STKMSource` for the real one). The receive prologue, the channel
test / close, stream test, invalid counting and error replies are the shared server channel's
(:mod:`.channel`); this module holds what only an ECMG does.

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
reply counts as an invalid message (but 0x000D: that is the ECMG's own lateness, not the peer's
fault), and ``max_invalid_messages`` of them in a row close the connection (TSDuck closes after
3); any valid message resets the count.
"""

from __future__ import annotations

import attrs

from ..bcast.ecm_request import CasMode, ECMGenerationError, ECMRequest, ECMSource
from ..wire import ecmg_scs as m
from ..wire.errors import ECMGSCSErrorStatus as ErrorStatus
from ..wire.params import ECMG_SCS_PARAMS
from .channel import (
    ECMG_SCS_CHANNEL,
    PROTOCOL_VERSION_OFFSET,
    ServerChannel,
    ServerChannelState,
    ecmg_scs_channel_error,
    ecmg_scs_stream_error,
)
from .outputs import Notify, Output, Send

_new_request = tuple.__new__
_encode_ecm_response, _MAX_ECM_DATAGRAM = m.encode_ecm_response, m.MAX_ECM_DATAGRAM

# error_information: the offending parameter_type (digest §5.3)
_SUPER_CAS_ID = ECMG_SCS_PARAMS["Super_CAS_id"].code
_ACCESS_CRITERIA = ECMG_SCS_PARAMS["access_criteria"].code
_CP_CW_COMBINATION = ECMG_SCS_PARAMS["CP_CW_combination"].code


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


class ECMGConnection(ServerChannel):
    """The ECMG end of one TCP connection (one ECM channel)."""

    INTERFACE = ECMG_SCS_CHANNEL
    HANDLERS = {
        m.ChannelSetup: "_channel_setup",
        m.StreamSetup: "_stream_setup",
        m.StreamCloseRequest: "_stream_close_request",
        m.CWProvision: "_cw_provision",
    }

    def __init__(self, resources: ECMGResources, source: ECMSource) -> None:
        super().__init__(resources.config)
        self.resources = resources
        self.source = source
        self.super_CAS_id: int | None = None
        self.mode: CasMode | None = None
        self.streams: dict[int, _Stream] = {}
        # CWs before CP_number in each CW_provision (digest §3.4: n-(CW_per_msg-1-lead_CW)..n+lead_CW)
        self._cws_before = self.config.channel.CW_per_msg - 1 - self.config.channel.lead_CW
        # the frozen configuration's values the per-STKM path reads
        self._cw_per_msg = self.config.channel.CW_per_msg
        self._max_comp_time = self.config.channel.max_comp_time
        self._ac_transfer_mode = self.config.access_criteria_transfer_mode

    # -- replies -----------------------------------------------------------------------------

    def channel_error(
        self, code: int, info: int | None = None, *, channel_id: int | None = None, version: int | None = None
    ) -> m.ChannelError:
        channel = self.channel_id or 0 if channel_id is None else channel_id
        return ecmg_scs_channel_error(self._reply_version(version), channel, code, info)

    def stream_error(
        self, stream_id: int, code: int, info: int | None = None, *, channel_id: int | None = None, version: int | None = None
    ) -> m.StreamError:
        channel = self.channel_id or 0 if channel_id is None else channel_id
        return ecmg_scs_stream_error(self._reply_version(version), channel, stream_id, code, info)

    # -- channel messages --------------------------------------------------------------------

    def _channel_setup(self, msg: m.ChannelSetup, now: float, _received_at: float | None) -> list[Output]:
        if self.state is ServerChannelState.CHANNEL_OPEN:
            return self._second_channel_setup(msg)
        channel_id = msg.ECM_channel_id
        version = msg.protocol_version
        if version not in self.config.versions:
            return self._invalid(
                self.channel_error(ErrorStatus.UNSUPPORTED_PROTOCOL_VERSION, PROTOCOL_VERSION_OFFSET, channel_id=channel_id),
                "version_refused",
            )
        mode = self.config.cas_modes.get(msg.Super_CAS_id)
        if mode is None:
            reply = self.channel_error(ErrorStatus.UNKNOWN_SUPER_CAS_ID, _SUPER_CAS_ID, channel_id=channel_id)
            return self._invalid(reply, "unknown_super_cas_id")
        resources = self.resources
        if channel_id in resources.channels:
            reply = self.channel_error(ErrorStatus.ECM_CHANNEL_ID_IN_USE, channel_id=channel_id)
            return self._invalid(reply, "channel_id_in_use")
        if len(resources.channels) >= self.config.max_channels:
            reply = self.channel_error(ErrorStatus.TOO_MANY_CHANNELS_ON_ECMG, channel_id=channel_id)
            return self._invalid(reply, "too_many_channels")
        resources.channels[channel_id] = self
        self.state = ServerChannelState.CHANNEL_OPEN
        self.channel_id, self.super_CAS_id, self.mode, self.version = channel_id, msg.Super_CAS_id, mode, version
        return self._ok(
            Send(self._channel_status()),
            Notify("channel_open", {"channel_id": self.channel_id, "super_cas_id": self.super_CAS_id, "mode": mode.value}),
        )

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

    def _free_channel(self, why: str, _now: float | None) -> list[Output]:
        resources = self.resources
        for stream in self.streams.values():
            self._release_stream(stream)
        count = len(self.streams)
        self.streams.clear()
        resources.channels.pop(self.channel_id, None)
        outputs: list[Output] = [Notify("channel_closed", {"channel_id": self.channel_id, "why": why, "streams": count})]
        self.state = ServerChannelState.NO_CHANNEL
        self.channel_id = self.super_CAS_id = self.mode = self.version = None
        return outputs

    # -- stream messages ---------------------------------------------------------------------

    def _stream_setup(self, msg: m.StreamSetup, now: float, _received_at: float | None) -> list[Output]:
        refused = self._stream_channel(msg)
        if refused:
            return refused
        p, resources = self.config.channel, self.resources
        code = None
        if msg.ECM_stream_id in self.streams:
            code = ErrorStatus.ECM_STREAM_ID_IN_USE
        elif msg.ECM_id is not None and (self.super_CAS_id, msg.ECM_id) in resources.ecm_ids:
            code = ErrorStatus.ECM_ID_IN_USE
        elif p.max_streams and len(self.streams) >= p.max_streams:
            code = ErrorStatus.TOO_MANY_ECM_STREAMS_ON_CHANNEL
        elif resources.streams >= self.config.max_streams_total:
            code = ErrorStatus.TOO_MANY_ECM_STREAMS_ON_ECMG
        elif msg.nominal_CP_duration < p.min_CP_duration:
            code = ErrorStatus.INVALID_VALUE
        if code is not None:
            return self._invalid(self.stream_error(msg.ECM_stream_id, code), "stream_refused", error_status=code)
        try:
            self.source.check_stream(self.super_CAS_id, msg.ECM_id, now)
        except ECMGenerationError as exc:
            return self._invalid(
                self.stream_error(msg.ECM_stream_id, exc.error_status), "stream_refused", error_status=exc.error_status,
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

    def _stream_close_request(self, msg: m.StreamCloseRequest, _now: float, _received_at: float | None) -> list[Output]:
        stream, refused = self._known_stream(msg)
        if refused:
            return refused
        del self.streams[stream.stream_id]
        self._release_stream(stream)
        return self._ok(
            Send(
                m.StreamCloseResponse(protocol_version=self.version, ECM_channel_id=self.channel_id, ECM_stream_id=stream.stream_id)
            ),
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

    def cw_provision(self, msg: m.CWProvision, now: float, received_at: float | None = None) -> bytes | list[Output]:
        """The per-STKM hot path for the adapter: :meth:`receive` of a CW_provision, except that
        the ECM_response comes back already encoded (``bytes``, to write as it is) instead of as
        ``[Send(ECMResponse)]``; every other outcome is the same list of outputs (an exception
        too: stream_error 0x7000, as :meth:`receive` answers it)."""
        version = self.version
        if version is not None and msg.protocol_version != version:
            return self.receive(msg, now, received_at)
        self._now = now
        try:
            return self._provision(msg, now, received_at, True)
        except Exception as exc:  # the ECM source's bug or ours: answered, the channel stays
            return self._internal_error(msg, exc)

    def _cw_provision(self, msg: m.CWProvision, now: float, received_at: float | None) -> list[Output]:
        return self._provision(msg, now, received_at, False)  # type: ignore[return-value]

    def cw_provision_fields(self, fields: tuple, now: float, received_at: float | None = None) -> bytes | list[Output] | None:
        """:meth:`cw_provision` of a CW_provision read by a
        :class:`~bcast_sp4.wire.ecmg_scs.CWProvisionReader` (its field tuple), without a message
        object; ``None`` (and nothing done) when it is not for an open stream of
        this channel in its version: the caller decodes it and hands it to :meth:`receive`, which
        answers it."""
        version, channel_id, stream_id, cp_number, combos, cw_encryption, cp_duration, access_criteria = fields
        if version != self.version or channel_id != self.channel_id:
            return None
        stream = self.streams.get(stream_id)
        if stream is None:
            return None
        self._now = now
        try:
            return self._provide(stream, cp_number, combos, cw_encryption, cp_duration, access_criteria, now, received_at,
                                 True)
        except Exception as exc:  # as cw_provision answers it (0x7000), with the message rebuilt for the reply
            msg = m.CWProvision(protocol_version=version, ECM_channel_id=channel_id, ECM_stream_id=stream_id,
                                CP_number=cp_number, CW_encryption=cw_encryption, CP_CW_combination=combos,
                                CP_duration=cp_duration, access_criteria=access_criteria)
            return self._internal_error(msg, exc)

    def _provision(
        self, msg: m.CWProvision, now: float, received_at: float | None, encoded: bool
    ) -> bytes | list[Output]:
        """A CW_provision: the ECM_response (encoded when *encoded* and it fits, else in a
        ``Send``), or the error outputs."""
        stream = self.streams.get(msg.ECM_stream_id) if msg.ECM_channel_id == self.channel_id else None
        if stream is None:
            return self._known_stream(msg)[1]
        return self._provide(stream, msg.CP_number, msg.CP_CW_combination, msg.CW_encryption, msg.CP_duration,
                             msg.access_criteria, now, received_at, encoded)

    def _provide(
        self, stream: _Stream, cp_number: int, combos: tuple, cw_encryption: bytes | None, cp_duration: int | None,
        access_criteria: bytes | None, now: float, received_at: float | None, encoded: bool,
    ) -> bytes | list[Output]:
        """A CW_provision for *stream* (its parameters as decoded): the per-STKM hot path, the
        common case checked with few operations."""
        first = (cp_number - self._cws_before) & 0xFFFF
        in_order = len(combos) == self._cw_per_msg
        if in_order:
            expected = first
            for combo in combos:
                if combo[0] != expected:
                    in_order = False
                    break
                expected = (expected + 1) & 0xFFFF
        if not in_order:
            cps = [combo.CP_number for combo in combos]
            wanted = [(first + k) & 0xFFFF for k in range(self._cw_per_msg)]
            if len(cps) != len(wanted) or sorted(cps) != sorted(wanted):
                return self._invalid(
                    self.stream_error(stream.stream_id, ErrorStatus.NOT_ENOUGH_CONTROL_WORDS, _CP_CW_COMBINATION),
                    "not_enough_cws",
                    cp_number=cp_number,
                    got=cps,
                )
            combos = tuple(sorted(combos, key=lambda combo: wanted.index(combo.CP_number)))
        if access_criteria is None:
            if self._ac_transfer_mode:
                reply = self.stream_error(stream.stream_id, ErrorStatus.MISSING_MANDATORY_PARAMETER, _ACCESS_CRITERIA)
                return self._invalid(reply, "no_access_criteria")
            access_criteria = stream.access_criteria
        if received_at is not None and (now - received_at) * 1000.0 > self._max_comp_time:
            # Our lateness, not the peer's fault: answered and logged, but not counted as an invalid
            # message (an overloaded ECMG must not close the SCS's channel for it).
            self.invalid_in_a_row = 0
            reply = self.stream_error(stream.stream_id, ErrorStatus.OUT_OF_COMPUTATIONAL_RESOURCES)
            return [Send(reply), Notify("deadline_missed", {**self._reply_fields(reply), "error_status": reply.error_status[0],
                                                            "cp_number": cp_number,
                                                            "waited_ms": round((now - received_at) * 1000.0, 1)}, "warn")]
        request = _new_request(  # the NamedTuple's fields in order, without its __new__ frame
            ECMRequest,
            (
                self.super_CAS_id,
                self.mode,
                stream.ECM_id,
                self.channel_id,
                stream.stream_id,
                cp_number,
                combos,
                cp_duration if cp_duration is not None else stream.nominal_CP_duration,
                access_criteria,
                cw_encryption,
                now,
            ),
        )
        try:
            datagram = self.source.generate(request)
        except ECMGenerationError as exc:
            return self._invalid(
                self.stream_error(stream.stream_id, exc.error_status),
                "ecm_refused",
                cp_number=cp_number,
                error_status=exc.error_status,
                detail=exc.detail,
            )
        self.invalid_in_a_row = 0
        stream.access_criteria = access_criteria  # remembered once an ECM was made with them
        if encoded and 0 < len(datagram) <= _MAX_ECM_DATAGRAM:
            return _encode_ecm_response(self.version, self.channel_id, stream.stream_id, cp_number, datagram)
        return [Send(m.ECMResponse.make(self.version, self.channel_id, stream.stream_id, cp_number, datagram))]


__all__ = ["ChannelParameters", "ECMGConfig", "ECMGConnection", "ECMGResources"]
