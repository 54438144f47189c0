"""SimulCrypt Synchroniser (SCS) end of one ECMG<=>SCS connection: a pure machine.

TS 103 197 §5 (digest ``simulcrypt.md`` §3, §5.1, §5.4, §6.1, §6.2, §6.4, §6.5); OMA BCAST SP-4 seed
§14.1.1.3.3 (channel per connection, stream per STKM stream; ECM_id = SDP ``stkmstream``).

:class:`SCSChannel` touches no reactor, socket or logger: every input takes ``now`` (seconds) and
returns a list of outputs — :class:`~.outputs.Send`, :class:`~.outputs.Close`,
:class:`~.outputs.Notify`, :class:`~.outputs.StartTimer` / :class:`~.outputs.CancelTimer` keyed by
:class:`ChannelTimer`, and the events the core routes to the schedulers (:class:`~.scs_records.ChannelUp`,
:class:`~.scs_records.StreamUp`, :class:`~.scs_records.StreamDown`, :class:`~.scs_records.ECMArrived`,
:class:`~.scs_records.ProvisionFailed`).

SCS channel (per connection; TSD ``ECMGClient``, BS ``dvb_ecmg_test``)::

  state           input                               action                                   next
  DISCONNECTED    connection_made                     send channel_setup; arm setup timer      WAIT_CH_STATUS
  WAIT_CH_STATUS  channel_status, section_TSpkt_flag   refused: channel_close, close TCP; the    DISCONNECTED
                  not in section_TSpkt_flags          reason names the flag and both values;
                  (default 0x02 only)                 counted (lengthens the back-off)
  WAIT_CH_STATUS  channel_status (own id)             store parameters; stream_setup for each  CH_OPEN
                                                      stream whose nominal_CP_duration >=
                                                      min_CP_duration (within max_streams);
                                                      arm channel_test timer
  WAIT_CH_STATUS  channel_error (any code) / setup    refusal counted (it lengthens the         DISCONNECTED
                  timer / channel_status other id     reconnect back-off); close TCP
  CH_OPEN         channel_status                      answer to our channel_test: disarm;       CH_OPEN
                                                      new parameters reach the schedulers
  CH_OPEN         channel_test timer                  send channel_test; arm reply timer        CH_OPEN
  CH_OPEN         reply timer                         peer dead: close TCP                      DISCONNECTED
  CH_OPEN         channel_test / stream_test (ECMG)   echo the last channel_status /           CH_OPEN
                                                      stream_status (stream_error 0x0007 for
                                                      a stream that is not open)
  CH_OPEN         channel_error 0x0006                ECMG lost the channel: streams down;      WAIT_CH_STATUS
                                                      channel_setup again on this connection
  CH_OPEN         channel_error 0x7001                channel_close; close TCP (reconnect)      DISCONNECTED
  CH_OPEN         channel_error, other codes          logged (warn); pending requests time out CH_OPEN
  *               codec error / wrong-direction msg   channel_error with the codec's code /    (same)
                                                      0x0001, logged
  *               connection_lost                     streams down; timers cancelled            DISCONNECTED
  CH_OPEN         close (shutdown)                    stream_close_request per open (or still   CLOSING
                                                      setting-up) stream;
                                                      arm close timer (close_timeout); none
                                                      open: channel_close, close TCP            (DISCONNECTED)
  CLOSING         stream_close_response / stream_     that stream closed; the last one:         DISCONNECTED
                  error for each closing stream       channel_close, close TCP
  CLOSING         close timer                         warn; channel_close, close TCP            DISCONNECTED
  other           close (shutdown)                    close TCP                                 DISCONNECTED

SCS stream (per stream, inside CH_OPEN; "refused" = ST_BACKOFF, retried after
``stream_retry_delay`` x 2^refusals, at most 32 x)::

  state           input                               action                                   next
  IDLE            channel open                        send stream_setup; arm timer (at most     WAIT_ST_STATUS
                                                      setups_in_flight awaiting an answer; the
                                                      others wait in a queue for a place)
  WAIT_ST_STATUS  stream_status (ECM_id echoed)       stream up -> scheduler                    ST_OPEN
  WAIT_ST_STATUS  stream_error 0x0014 (id in use)     stream_close_request, then set up again   ST_CLOSING
  WAIT_ST_STATUS  stream_error 0x0006                 as channel_error 0x0006                   (channel)
  WAIT_ST_STATUS  stream_error other (0x0009, 0x000A, refused, logged (error for 0x0011, 0x0012,  ST_BACKOFF
                  0x0011, 0x0012, 0x0015, BCAST        BCAST 0x8000+n: configuration / keys)
                  0x8000+n, ...) / timer
  ST_BACKOFF      retry timer                         send stream_setup                         WAIT_ST_STATUS
  ST_BACKOFF      stream_status (late: the set-up     stream up -> scheduler (no retry)         ST_OPEN
                  timer ran out before it came)
  ST_OPEN         CW_provision (scheduler)            send; remember CP_number (FIFO)           ST_OPEN
  ST_OPEN         ECM_response (CP outstanding)       STKM -> scheduler                         ST_OPEN
  ST_OPEN         ECM_response (CP not outstanding)   ignored, logged                           ST_OPEN
  ST_OPEN         stream_error 0x0007                 ECMG lost the stream: down; set up again  WAIT_ST_STATUS
  ST_OPEN         stream_error 0x0006                 as channel_error 0x0006                   (channel)
  ST_OPEN         stream_error 0x7001                 down; stream_close_request, set up again  ST_CLOSING
  ST_OPEN         stream_error other (0x000B,         the oldest outstanding CW_provision       ST_OPEN
                  0x000C, 0x000D, 0x0010, 0x0011,     failed (stream_error carries no
                  0x7000, BCAST 0x8000+n, ...)        CP_number; the ECMG answers in order)
                                                      -> scheduler retries
  ST_CLOSING      stream_close_response / error /     set up again (or IDLE at shutdown)        WAIT_ST_STATUS
                  timer

A stream_error names no CP_number: it is matched to the oldest outstanding CW_provision of that
stream (an ECMG answers in order).

The states, timer keys, error-code names and refusal texts are in :mod:`.scs_channel_states`
(imported from here as before).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from ..wire import Message, PeerProtocolError
from ..wire import ecmg_scs as m
from ..wire.errors import BCAST_ERROR_BASE as BCAST_BASE
from ..wire.errors import ECMGSCSErrorStatus as ErrorStatus
from ..wire.params import describe_flag, describe_flags
from .channel import ecmg_scs_channel_error, ecmg_scs_stream_error, internal_error
from .outputs import CancelTimer, Close, Notify, Send, StartTimer
from .scs_channel_states import (
    CHANNEL_TIMERS,
    CONFIGURATION_CODES,
    INVALID_MESSAGE,
    STREAM_ID_IN_USE,
    STREAM_TIMERS,
    UNKNOWN_CHANNEL,
    UNKNOWN_STREAM,
    UNRECOVERABLE,
    AfterClose,
    ChannelStream,
    ChannelTimer,
    ChannelTimerKind,
    SCSChannelState,
    SCSStreamState,
    SetupWindow,
    channel_refusal_text,
)
from .scs_records import (
    ChannelSpec,
    ChannelUp,
    ECMArrived,
    ECMGParams,
    LinkSpec,
    ProvisionFailed,
    RequestCWProvision,
    StreamDown,
    StreamUp,
    Timing,
)


class SCSChannel:
    """The SCS end of one ECMG connection: one channel and its streams (see the module table).

    :param streams: ``(service name, link, nominal_CP_duration)`` for each stream of the channel.
    """

    def __init__(self, spec: ChannelSpec, streams: Iterable[tuple[str, LinkSpec, int]], timing: Timing) -> None:
        self.spec = spec
        self.name = spec.name
        self.timing = timing
        self.version = spec.protocol_version
        self.state = SCSChannelState.DISCONNECTED
        self.status: m.ChannelStatus | None = None
        self.params: ECMGParams | None = None
        self.streams: dict[int, ChannelStream] = {}
        for service, link, nominal in streams:
            if link.ECM_stream_id in self.streams:
                raise ValueError(f"channel {spec.name}: ECM_stream_id {link.ECM_stream_id} used twice")
            self.streams[link.ECM_stream_id] = ChannelStream(service, link, nominal)
        #: channel set-ups that failed in a row (lengthens the reconnect back-off)
        self.refusals = 0
        #: streams whose first stream_setup waits for a place (Timing.setups_in_flight)
        self._setups = SetupWindow()
        self._handlers: dict[type, Callable[[Any, float], list]] = {
            m.ChannelStatus: self._channel_status,
            m.ChannelError: self._channel_error_message,
            m.ChannelTest: self._channel_test,
            m.StreamStatus: self._stream_status,
            m.StreamError: self._stream_error,
            m.StreamTest: self._stream_test,
            m.ECMResponse: self._ecm_response,
            m.StreamCloseResponse: self._stream_close_response,
        }

    # -- timer keys ----------------------------------------------------------------------------

    def _key(self, kind: ChannelTimerKind, stream_id: int | None = None) -> ChannelTimer:
        return ChannelTimer(self.name, kind, stream_id)

    def timer_keys(self) -> list[ChannelTimer]:
        """Every timer key this channel may arm."""
        keys = [self._key(kind) for kind in CHANNEL_TIMERS]
        for sid in self.streams:
            keys += [self._key(kind, sid) for kind in STREAM_TIMERS]
        return keys

    def _notify(self, event: str, level: str = "info", **fields: Any) -> Notify:
        return Notify(event, {"channel": self.name, **fields}, level)

    # -- connection inputs ---------------------------------------------------------------------

    def connection_made(self, now: float) -> list:
        """The TCP connection is up: set the channel up (called from prepareConnection)."""
        self.state = SCSChannelState.WAIT_CH_STATUS
        return [
            Send(m.ChannelSetup(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id,
                                Super_CAS_id=self.spec.super_CAS_id)),
            StartTimer(self._key(ChannelTimerKind.SETUP), self.timing.setup_timeout),
        ]

    def connection_lost(self, now: float) -> list:
        """All streams of the channel are gone (digest §6.5)."""
        out: list = [CancelTimer(k) for k in self.timer_keys()]
        if self.state is SCSChannelState.WAIT_CH_STATUS:
            self.refusals += 1
        out += self._streams_down("connection_lost")
        self.state = SCSChannelState.DISCONNECTED
        return out

    def close(self, now: float) -> list:
        """Shut down in order: stream_close_request per open stream, then -- once each is answered
        (or ``close_timeout`` passed) -- channel_close, then the TCP close."""
        out: list = [CancelTimer(k) for k in self.timer_keys()]
        if self.state is SCSChannelState.CLOSING:
            return []
        self._setups.clear()  # streams never set up stay IDLE: nothing to close
        if self.state is not SCSChannelState.CH_OPEN:
            out += self._streams_down("shutdown")
            if self.state is not SCSChannelState.DISCONNECTED:
                out.append(Close("shutdown", "info"))
            self.state = SCSChannelState.DISCONNECTED
            return out
        # a stream whose stream_setup is still unanswered is closed too: the ECMG handles messages
        # in order, so it sets the stream up, then closes it (or answers an error for both)
        closing = [s for s in self.streams.values()
                   if s.state in (SCSStreamState.ST_OPEN, SCSStreamState.ST_CLOSING, SCSStreamState.WAIT_ST_STATUS)]
        for stream in self.streams.values():
            out += self._stream_down(stream, "shutdown")
            if stream not in closing:
                stream.state = SCSStreamState.IDLE
        self.state = SCSChannelState.CLOSING
        for stream in closing:
            stream.state = SCSStreamState.ST_CLOSING
            stream.after_close = AfterClose.STAY_CLOSED
            stream.outstanding.clear()
            out.append(Send(m.StreamCloseRequest(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id,
                                                 ECM_stream_id=stream.stream_id)))
        if not closing:
            return out + self._finish_close()
        return out + [StartTimer(self._key(ChannelTimerKind.CLOSE), self.timing.close_timeout)]

    def _finish_close(self, timed_out: bool = False) -> list:
        """channel_close, then the TCP close (the last step of :meth:`close`)."""
        out: list = [CancelTimer(self._key(ChannelTimerKind.CLOSE))]
        if timed_out:
            unanswered = [s.stream_id for s in self.streams.values() if s.state is SCSStreamState.ST_CLOSING]
            out.append(self._notify("close_timeout", "warn", unanswered=unanswered))
        for stream in self.streams.values():
            stream.state = SCSStreamState.IDLE
        self.state = SCSChannelState.DISCONNECTED
        return out + [Send(m.ChannelClose(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id)),
                      Close("shutdown", "info")]

    def receive(self, item: Message | PeerProtocolError, now: float) -> list:
        """One decoded message from the ECMG (or the codec's error for one)."""
        if isinstance(item, PeerProtocolError):
            channel = item.channel_id if item.channel_id is not None else self.spec.ECM_channel_id
            return [
                Send(ecmg_scs_channel_error(self.version, channel, item.error_status, item.error_information)),
                self._notify("decode_error", "warn", error_status=item.error_status, detail=item.detail),
            ]
        handler = self._handlers.get(type(item))
        if handler is None:  # a message only an SCS sends
            channel = getattr(item, "ECM_channel_id", self.spec.ECM_channel_id)
            return [
                Send(ecmg_scs_channel_error(self.version, channel, INVALID_MESSAGE, 1)),
                self._notify("wrong_direction", "warn", message_type=item.NAME),
            ]
        out = handler(item, now)
        if self._setups:  # only while the channel's streams are being set up
            out += self._pump_setups()
        return out

    def timer(self, key: ChannelTimer, now: float) -> list:
        """The timer *key* (one of :meth:`timer_keys`) fired."""
        out = self._timer(key, now)
        if self._setups:
            out += self._pump_setups()
        return out

    def _pump_setups(self) -> list:
        """Send the queued stream_setups the window has room for."""
        if self.state is not SCSChannelState.CH_OPEN:
            self._setups.clear()
            return []
        out: list = []
        for stream in self._setups.due(self.streams, self.timing.setups_in_flight):
            out += self._setup_stream(stream)
        return out

    def _timer(self, key: ChannelTimer, now: float) -> list:
        kind = key.kind
        if kind is ChannelTimerKind.CLOSE:
            return self._finish_close(timed_out=True) if self.state is SCSChannelState.CLOSING else []
        if kind is ChannelTimerKind.SETUP:
            if self.state is not SCSChannelState.WAIT_CH_STATUS:
                return []
            self.refusals += 1
            return [self._notify("channel_setup_timeout", "warn", refusals=self.refusals), Close("no channel_status")]
        if kind is ChannelTimerKind.TEST:
            if self.state is not SCSChannelState.CH_OPEN:
                return []
            return [
                Send(m.ChannelTest(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id)),
                StartTimer(self._key(ChannelTimerKind.TEST_REPLY), self.timing.setup_timeout),
                StartTimer(self._key(ChannelTimerKind.TEST), self.timing.channel_test_interval),
            ]
        if kind is ChannelTimerKind.TEST_REPLY:
            return [self._notify("channel_test_unanswered", "warn"), Close("channel_test unanswered")]
        stream = self.streams.get(key.stream_id)
        if stream is None or self.state is not SCSChannelState.CH_OPEN:
            return []
        if kind is ChannelTimerKind.STREAM_SETUP and stream.state is SCSStreamState.WAIT_ST_STATUS:
            return self._refuse_stream(stream, None, "stream_setup_timeout")
        if kind is ChannelTimerKind.STREAM_RETRY and stream.state is SCSStreamState.ST_BACKOFF:
            return self._setup_stream(stream)
        if kind is ChannelTimerKind.STREAM_CLOSE and stream.state is SCSStreamState.ST_CLOSING:
            return self._after_close(stream)
        return []

    def provision(self, request: RequestCWProvision, now: float) -> list:
        """Send a CW_provision on *request*'s stream (the stream must be open)."""
        stream = self.streams.get(request.stream_id)
        if stream is None or stream.state is not SCSStreamState.ST_OPEN or self.state is not SCSChannelState.CH_OPEN:
            return [ProvisionFailed(self.name, request.stream_id, request.cp_number, None)]
        stream.outstanding.append(request.cp_number)
        return [
            Send(m.CWProvision(
                protocol_version=self.version,
                ECM_channel_id=self.spec.ECM_channel_id,
                ECM_stream_id=request.stream_id,
                CP_number=request.cp_number,
                CW_encryption=request.cw_encryption,
                CP_CW_combination=request.combinations,
                access_criteria=request.access_criteria,
            ))
        ]

    # -- channel messages ----------------------------------------------------------------------

    def _channel_status(self, msg: m.ChannelStatus, now: float) -> list:
        if msg.ECM_channel_id != self.spec.ECM_channel_id:
            return [self._notify("foreign_channel_status", "warn", ecm_channel_id=msg.ECM_channel_id)]
        if self.state is SCSChannelState.WAIT_CH_STATUS:
            flag = msg.section_TSpkt_flag
            if flag not in self.spec.section_TSpkt_flags:
                # a peer that cannot carry STKMs: refused, and retried with a growing back-off
                self.refusals += 1
                reason = (f"ECMG answered section_TSpkt_flag {describe_flag(flag)}; BCAST STKMs need 0x02 "
                          f"(this ECMG entry accepts {describe_flags(self.spec.section_TSpkt_flags)}: "
                          "section_TSpkt_flags)")
                self.state = SCSChannelState.DISCONNECTED
                return [
                    CancelTimer(self._key(ChannelTimerKind.SETUP)),
                    self._notify("channel_status_refused", "error", reason=reason, section_tspkt_flag=flag,
                                 refusals=self.refusals),
                    Send(m.ChannelClose(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id)),
                    Close(reason),
                ]
            self.refusals = 0
            self.state = SCSChannelState.CH_OPEN
            self.status, self.params = msg, ECMGParams.from_status(msg)
            out: list = [
                CancelTimer(self._key(ChannelTimerKind.SETUP)),
                ChannelUp(self.name, self.params),
                self._notify(
                    "channel_open", lead_cw=msg.lead_CW, cw_per_msg=msg.CW_per_msg, delay_start=msg.delay_start,
                    ecm_rep_period=msg.ECM_rep_period, max_comp_time=msg.max_comp_time,
                    section_tspkt_flag=msg.section_TSpkt_flag,
                ),
            ]
            if msg.section_TSpkt_flag != 0x02:
                out.append(self._notify(
                    "classic_ecmg", "warn", section_tspkt_flag=msg.section_TSpkt_flag,
                    reason=f"ECMG answered section_TSpkt_flag {describe_flag(msg.section_TSpkt_flag)}: its ECM "
                           "datagrams are carried opaque to the MUX route (section_TSpkt_flags allows it)"))
            if self.timing.channel_test_interval > 0:
                out.append(StartTimer(self._key(ChannelTimerKind.TEST), self.timing.channel_test_interval))
            started = 0
            for stream in self.streams.values():
                if stream.nominal_CP_duration < msg.min_CP_duration:
                    out.append(self._notify("crypto_period_too_short", "error", stream_id=stream.stream_id,
                                            service=stream.service, min_cp_duration=msg.min_CP_duration))
                    continue
                if msg.max_streams and started >= msg.max_streams:
                    out.append(self._notify("max_streams_reached", "error", stream_id=stream.stream_id,
                                            service=stream.service, max_streams=msg.max_streams))
                    continue
                started += 1
                self._setups.queue.append(stream)  # set up through the window (_pump_setups)
            self._setups.in_flight.clear()
            return out + self._pump_setups()
        if self.state is SCSChannelState.CH_OPEN:
            out = [CancelTimer(self._key(ChannelTimerKind.TEST_REPLY))]
            params = ECMGParams.from_status(msg)
            self.status = msg
            if params != self.params:
                self.params = params
                out += [ChannelUp(self.name, params), self._notify("channel_parameters_changed", "warn")]
            return out
        return [self._notify("unexpected_channel_status", "warn", state=self.state.value)]

    def internal_error(self, item: Message | PeerProtocolError, exc: Exception) -> list:
        """What answers *item* when handling it raised *exc* (our bug): 0x7000 to the ECMG, an event.

        A stream_error when the message names a stream, else a channel_error; the channel stays.
        """
        name = getattr(item, "NAME", "decode_error")
        channel_id = getattr(item, "ECM_channel_id", None)
        channel_id = self.spec.ECM_channel_id if channel_id is None else channel_id
        stream_id = getattr(item, "ECM_stream_id", None)
        if stream_id is None:
            reply = ecmg_scs_channel_error(self.version, channel_id, ErrorStatus.UNKNOWN_ERROR)
        else:
            reply = ecmg_scs_stream_error(self.version, channel_id, stream_id, ErrorStatus.UNKNOWN_ERROR)
        return [Send(reply), internal_error(name, exc, channel=self.name, stream_id=stream_id)]

    def _channel_error_received(self, codes: tuple[int, ...], now: float, info: tuple[bytes, ...] = ()) -> list:
        if self.state is SCSChannelState.WAIT_CH_STATUS:
            self.refusals += 1
            reason = channel_refusal_text(codes, info)
            return [
                CancelTimer(self._key(ChannelTimerKind.SETUP)),
                self._notify("channel_refused", "error", error_status=list(codes), refusals=self.refusals, reason=reason),
                Close(reason),
            ]
        if self.state is not SCSChannelState.CH_OPEN:
            return [self._notify("channel_error", "warn", error_status=list(codes))]
        if UNRECOVERABLE in codes:
            out: list = [self._notify("channel_unrecoverable", "warn", error_status=list(codes))]
            out += [CancelTimer(k) for k in self.timer_keys()]
            out += self._streams_down("unrecoverable_error")
            out += [Send(m.ChannelClose(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id)),
                    Close("unrecoverable error")]
            self.state = SCSChannelState.DISCONNECTED
            return out
        if UNKNOWN_CHANNEL in codes:
            out = [self._notify("channel_lost_by_ecmg", "warn", error_status=list(codes))]
            out += [CancelTimer(k) for k in self.timer_keys()]
            out += self._streams_down("channel_unknown_to_ecmg")
            return out + self.connection_made(now)
        return [self._notify("channel_error", "warn", error_status=list(codes))]

    def _channel_test(self, msg: m.ChannelTest, now: float) -> list:
        if self.state in (SCSChannelState.CH_OPEN, SCSChannelState.CLOSING) and msg.ECM_channel_id == self.spec.ECM_channel_id and self.status:
            return [Send(self.status)]
        return [Send(ecmg_scs_channel_error(self.version, msg.ECM_channel_id, UNKNOWN_CHANNEL)),
                self._notify("channel_test_unknown_channel", "warn", ecm_channel_id=msg.ECM_channel_id)]

    # -- stream messages -----------------------------------------------------------------------

    def _stream_for(self, msg: Message) -> ChannelStream | None:
        if msg.ECM_channel_id != self.spec.ECM_channel_id:
            return None
        return self.streams.get(msg.ECM_stream_id)

    def _setup_stream(self, stream: ChannelStream) -> list:
        stream.state = SCSStreamState.WAIT_ST_STATUS
        stream.outstanding.clear()
        return [
            CancelTimer(self._key(ChannelTimerKind.STREAM_RETRY, stream.stream_id)),
            Send(m.StreamSetup(
                protocol_version=self.version,
                ECM_channel_id=self.spec.ECM_channel_id,
                ECM_stream_id=stream.stream_id,
                ECM_id=None if self.version == 1 else stream.link.ECM_id,
                nominal_CP_duration=stream.nominal_CP_duration,
            )),
            StartTimer(self._key(ChannelTimerKind.STREAM_SETUP, stream.stream_id), self.timing.setup_timeout),
        ]

    def _refuse_stream(self, stream: ChannelStream, code: int | None, event: str) -> list:
        stream.refusals += 1
        stream.state = SCSStreamState.ST_BACKOFF
        delay = self.timing.stream_retry_delay * (2 ** min(stream.refusals - 1, 5))
        level = "error" if code is not None and (code in CONFIGURATION_CODES or code >= BCAST_BASE) else "warn"
        return [
            CancelTimer(self._key(ChannelTimerKind.STREAM_SETUP, stream.stream_id)),
            self._notify(event, level, stream_id=stream.stream_id, service=stream.service, error_status=code,
                         retry_in=delay),
            StartTimer(self._key(ChannelTimerKind.STREAM_RETRY, stream.stream_id), delay),
        ]

    def _close_stream(self, stream: ChannelStream, after: AfterClose) -> list:
        stream.state = SCSStreamState.ST_CLOSING
        stream.after_close = after
        stream.outstanding.clear()
        return [
            Send(m.StreamCloseRequest(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id,
                                      ECM_stream_id=stream.stream_id)),
            StartTimer(self._key(ChannelTimerKind.STREAM_CLOSE, stream.stream_id), self.timing.setup_timeout),
        ]

    def _after_close(self, stream: ChannelStream) -> list:
        out: list = [CancelTimer(self._key(ChannelTimerKind.STREAM_CLOSE, stream.stream_id))]
        if stream.after_close is AfterClose.SET_UP_AGAIN and self.state is SCSChannelState.CH_OPEN:
            return out + self._setup_stream(stream)
        stream.state = SCSStreamState.IDLE
        if self.state is SCSChannelState.CLOSING and not any(
                s.state is SCSStreamState.ST_CLOSING for s in self.streams.values()):
            out += self._finish_close()
        return out

    def _stream_down(self, stream: ChannelStream, reason: str) -> list:
        was_open = stream.state is SCSStreamState.ST_OPEN
        stream.outstanding.clear()
        return [StreamDown(self.name, stream.stream_id, reason)] if was_open else []

    def _streams_down(self, reason: str) -> list:
        self._setups.clear()
        out: list = []
        for stream in self.streams.values():
            out += self._stream_down(stream, reason)
            stream.state = SCSStreamState.IDLE
        return out

    def _stream_status(self, msg: m.StreamStatus, now: float) -> list:
        stream = self._stream_for(msg)
        if stream is not None and self.state is SCSChannelState.CLOSING and stream.state is SCSStreamState.ST_CLOSING:
            return []  # the answer to a stream_setup sent before the close; its stream_close_request follows it
        if stream is None or self.state is not SCSChannelState.CH_OPEN:
            return [self._notify("unexpected_stream_status", "warn", stream_id=msg.ECM_stream_id)]
        if stream.state is SCSStreamState.WAIT_ST_STATUS or stream.state is SCSStreamState.ST_BACKOFF:
            # in ST_BACKOFF: the late answer to a stream_setup whose timer ran out (an ECMG working
            # through thousands of set-ups): the ECMG opened the stream, so it is open; a retry
            # would only be refused with 0x0014 (stream id in use) and start a close and set-up
            out: list = [CancelTimer(self._key(ChannelTimerKind.STREAM_SETUP, stream.stream_id)),
                         CancelTimer(self._key(ChannelTimerKind.STREAM_RETRY, stream.stream_id))]
            if self.version >= 2 and msg.ECM_id != stream.link.ECM_id:
                out.append(self._notify("ecm_id_not_echoed", "warn", stream_id=stream.stream_id,
                                        ecm_id=msg.ECM_id, expected=stream.link.ECM_id))
            stream.state = SCSStreamState.ST_OPEN
            stream.refusals = 0
            stream.last_status = msg
            return out + [
                StreamUp(self.name, stream.stream_id),
                self._notify("stream_open", "debug", stream_id=stream.stream_id, service=stream.service,
                             ecm_id=stream.link.ECM_id),
            ]
        stream.last_status = msg  # an answer to a stream_test
        return []

    def _stream_test(self, msg: m.StreamTest, now: float) -> list:
        stream = self._stream_for(msg)
        if stream is not None and stream.state is SCSStreamState.ST_OPEN and stream.last_status is not None:
            return [Send(stream.last_status)]
        return [Send(ecmg_scs_stream_error(self.version, msg.ECM_channel_id, msg.ECM_stream_id, UNKNOWN_STREAM)),
                self._notify("stream_test_unknown_stream", "warn", stream_id=msg.ECM_stream_id)]

    def _channel_error_message(self, msg: m.ChannelError, now: float) -> list:
        return self._channel_error_received(tuple(msg.error_status), now, tuple(msg.error_information))

    def _stream_error(self, msg: m.StreamError, now: float) -> list:
        codes = tuple(msg.error_status)
        if UNKNOWN_CHANNEL in codes and self.state is SCSChannelState.CH_OPEN:
            return self._channel_error_received(codes, now)
        stream = self._stream_for(msg)
        if stream is not None and self.state is SCSChannelState.CLOSING and stream.state is SCSStreamState.ST_CLOSING:
            return [self._notify("stream_close_refused", "warn", stream_id=stream.stream_id,
                                 error_status=list(codes))] + self._after_close(stream)
        if stream is None or self.state is not SCSChannelState.CH_OPEN:
            return [self._notify("stream_error_unknown_stream", "warn", stream_id=msg.ECM_stream_id,
                                 error_status=list(codes))]
        code = codes[0]
        if stream.state is SCSStreamState.WAIT_ST_STATUS:
            if code == STREAM_ID_IN_USE:
                return [CancelTimer(self._key(ChannelTimerKind.STREAM_SETUP, stream.stream_id)),
                        self._notify("stream_id_in_use", "warn", stream_id=stream.stream_id)] + self._close_stream(
                    stream, AfterClose.SET_UP_AGAIN)
            return self._refuse_stream(stream, code, "stream_refused")
        if stream.state is SCSStreamState.ST_CLOSING:
            return self._after_close(stream)
        if stream.state is not SCSStreamState.ST_OPEN:
            return [self._notify("stream_error", "warn", stream_id=stream.stream_id, error_status=list(codes))]
        if code == UNKNOWN_STREAM:
            return (self._stream_down(stream, "stream_unknown_to_ecmg")
                    + [self._notify("stream_lost_by_ecmg", "warn", stream_id=stream.stream_id)]
                    + self._setup_stream(stream))
        if code == UNRECOVERABLE:
            return (self._stream_down(stream, "unrecoverable_error")
                    + [self._notify("stream_unrecoverable", "warn", stream_id=stream.stream_id)]
                    + self._close_stream(stream, AfterClose.SET_UP_AGAIN))
        if not stream.outstanding:
            return [self._notify("stream_error", "warn", stream_id=stream.stream_id, error_status=list(codes))]
        cp = stream.outstanding.popleft()
        return [ProvisionFailed(self.name, stream.stream_id, cp, code)]

    def _ecm_response(self, msg: m.ECMResponse, now: float) -> list:
        stream = self._stream_for(msg)
        if stream is None or stream.state is not SCSStreamState.ST_OPEN or msg.CP_number not in stream.outstanding:
            return [self._notify("unexpected_ecm_response", "warn", stream_id=msg.ECM_stream_id, cp_number=msg.CP_number)]
        stream.outstanding.remove(msg.CP_number)
        return [ECMArrived(self.name, stream.stream_id, msg.CP_number, msg.ECM_datagram)]

    def _stream_close_response(self, msg: m.StreamCloseResponse, now: float) -> list:
        stream = self._stream_for(msg)
        if stream is None or stream.state is not SCSStreamState.ST_CLOSING:
            return [self._notify("unexpected_stream_close_response", "warn", stream_id=msg.ECM_stream_id)]
        return self._after_close(stream)


__all__ = [
    "AfterClose",
    "ChannelTimer",
    "ChannelTimerKind",
    "SCSChannel",
    "SCSChannelState",
    "SCSStreamState",
]
