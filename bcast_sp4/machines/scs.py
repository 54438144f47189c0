"""SimulCrypt Synchroniser (SCS) side of ECMG<=>SCS, and its crypto-period scheduler: pure machines.

TS 103 197 §5 (digest ``simulcrypt.md`` §3, §5.1, §5.4, §6.1, §6.2, §6.4, §6.5); OMA BCAST SP-4 seed
§14.1.1.2 (the SCS's duties) and §14.1.1.3.3 (one SCS instance per encrypted service; channel per
connection, stream per STKM stream; ECM_id = SDP ``stkmstream``; optional TEK encryption).

Three machines, none of which touches a reactor, socket or logger; every input takes ``now``
(seconds) and returns a list of frozen output records:

* :class:`SCSChannel` — one per ECMG TCP connection: the channel and its streams.
* :class:`ServiceScheduler` — one per encrypted service: crypto-period numbering, the TEK
  generator (CWG), CW_provision timing, ECM_response matching, retries, STKM submission to the
  MUX and TEK hand-over to the scrambler.
* :class:`SCSCore` — the whole SCS: routes channel events to schedulers and provisioning
  requests to channels, and addresses connection outputs (:class:`ChannelOutput`).

Outputs: :class:`~.outputs.Send` / :class:`~.outputs.Close` (wrapped in :class:`ChannelOutput`
by the core), :class:`~.outputs.Notify`, :class:`StartTimer` (arm or re-arm a keyed timer),
:class:`CancelTimer`, :class:`ProvideTEK` (scrambler: use this TEK from ``at``) and
:class:`SubmitSTKM` (MUX: air this STKM from ``on_air_from``, repeated every ``repetition_ms``).

SCS channel (per connection; TSD ``ECMGClient``, BS ``dvb_ecmg_test``)::

  state           input                               action                                   next
  DISCONNECTED    connection_made                     send channel_setup; arm setup timer      WAIT_CH_STATUS
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
  *               close (shutdown)                    stream_close_request per open stream,    DISCONNECTED
                                                      channel_close, close TCP

SCS stream (per stream, inside CH_OPEN; "refused" = ST_BACKOFF, retried after
``stream_retry_delay`` x 2^refusals, at most 32 x)::

  state           input                               action                                   next
  IDLE            channel open                        send stream_setup; arm timer              WAIT_ST_STATUS
  WAIT_ST_STATUS  stream_status (ECM_id echoed)       stream up -> scheduler                    ST_OPEN
  WAIT_ST_STATUS  stream_error 0x0014 (id in use)     stream_close_request, then set up again   ST_CLOSING
  WAIT_ST_STATUS  stream_error 0x0006                 as channel_error 0x0006                   (channel)
  WAIT_ST_STATUS  stream_error other (0x0009, 0x000A, refused, logged (error for 0x0011, 0x0012,  ST_BACKOFF
                  0x0011, 0x0012, 0x0015, BCAST        BCAST 0x8000+n: configuration / keys)
                  0x8000+n, ...) / timer
  ST_BACKOFF      retry timer                         send stream_setup                         WAIT_ST_STATUS
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

Crypto-period scheduler (per service; periods are numbered on a wall-clock grid
``T(n) = phase + n * D``, ``CP_number = n mod 65536``; E = the service's ECMG links)::

  period state  event                                  action                                   next
  PLANNED       now >= provision_at(n, e), link e up   CW_provision(n) to e with CWs              PLANNED
                                                       n-(CW_per_msg-1-lead_CW) .. n+lead_CW
  PLANNED       ECM_response(n) from e                 STKM(n, e) kept                            PLANNED
  PLANNED       STKM(n, e) in hand for every e in E,   SubmitSTKM per e (on air from              READY
                now < T(n)                             T(n) + delay_start_e, late if now is past
                                                       it), ProvideTEK(n, at=T(n))
  PLANNED       response timer / stream_error (e)      retry after retry_delay while now < T(n)   PLANNED
                                                       and attempts < max_attempts, counted
  PLANNED       link e down                            outstanding request -> re-sent on up       PLANNED
  PLANNED       now >= T(n)                            missing STKM(s) logged and counted; no     SKIPPED
                                                       TEK switch: the scrambler and the MUX
                                                       stay on the last good period
  READY         now >= T(n)                            (the scrambler switched at T(n) itself)    ON_AIR

  provision_at(n, e) = min(T(n), T(n) + delay_start_e) - max(provision_lead, max_comp_time_e + 50 ms)
  response timeout   = max(2 x max_comp_time_e, response_timeout_floor)
  provision_lead defaults to half a crypto-period. delay_start_e is the ECMG's delay_start, its
  transition_delay_start for the service's first scrambled period when it announces one.

Decisions ([UNCONFIRMED] in the digest, or ours):

* A period is switched to only when *every* ECMG link of the service has delivered its STKM
  before T(n): otherwise some receivers would lose the service. A skipped period keeps TEK(n-1)
  on the scrambler and STKM(n-1) on air; its own STKMs are never submitted, so the MUX never airs
  an STKM whose TEK is not in use. While an ECMG is down the service therefore keeps its key.
* STKMs are submitted together when the period becomes READY (not as each arrives).
* A stream_error names no CP_number: it is matched to the oldest outstanding CW_provision of
  that stream (an ECMG answers in order).
* delay_stop / AC delays are not used: one STKM per ECM_id is on air at a time, replaced by the
  next (as TSD's scrambler does); ``CP_duration`` is never sent (every period is nominal).
* After a reconnect the streams are set up again and every period that has not started and whose
  STKM is not in hand is provisioned at once if due (the "current and next" periods; the running
  period was either switched to, with its STKMs in hand, or skipped for good).
* TEK identifiers: SRTP MKI and ISMACryp key indicator = n on their configured length (distinct for
  2^(8 x length) consecutive periods); IPsec SPI random >= 256, never one of the service's last 16.
"""

from __future__ import annotations

import collections
import enum
import math
import os
from typing import Any, Callable, Hashable, Iterable

import attrs

from ..bcast import cw_encryption, traffic
from ..wire import Message, PeerProtocolError
from ..wire import ecmg_scs as m
from ..wire.params import CPCWCombination
from .outputs import CancelTimer, Close, Notify, Send, StartTimer

from ..wire.errors import BCAST_ERROR_BASE as BCAST_BASE
from ..wire.errors import ECMGSCSErrorStatus as ErrorStatus

# error_status values (TS 103 197 §5.6, digest §5.1), under the names used below
INVALID_MESSAGE = ErrorStatus.INVALID_MESSAGE
UNKNOWN_CHANNEL = ErrorStatus.UNKNOWN_ECM_CHANNEL_ID
UNKNOWN_STREAM = ErrorStatus.UNKNOWN_ECM_STREAM_ID
STREAM_ID_IN_USE = ErrorStatus.ECM_STREAM_ID_IN_USE
UNRECOVERABLE = ErrorStatus.UNRECOVERABLE_ERROR
#: stream_setup refusals that point at configuration or keys rather than load (logged as errors)
CONFIGURATION_CODES = frozenset(
    {ErrorStatus.UNKNOWN_SUPER_CAS_ID, ErrorStatus.INVALID_VALUE, ErrorStatus.UNKNOWN_ECM_ID, ErrorStatus.ECM_ID_IN_USE}
)

CP_MODULUS = 0x10000
_WIRE = CP_MODULUS - 1


# ---------------------------------------------------------------------------------------------
# Output records (besides Send / Close / Notify)
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class ProvideTEK:
    """Scrambler: protect *service*'s traffic with *material* from instant *at* (= T(n)) on."""

    service: str
    cp_number: int  # 16-bit, as on the wire
    material: traffic.TrafficKeyMaterial = attrs.field(repr=False)
    at: float


@attrs.frozen
class SubmitSTKM:
    """MUX: air *stkm* for (super_cas_id, ecm_id) from *on_air_from*, every *repetition_ms* ms,
    until the next STKM of the same pair replaces it."""

    super_cas_id: int
    ecm_id: int
    cp_number: int  # 16-bit, as on the wire
    stkm: bytes = attrs.field(repr=False)
    on_air_from: float
    repetition_ms: int


@attrs.frozen
class ChannelOutput:
    """A :class:`Send` or :class:`Close` for the connection of ECMG channel *channel*."""

    channel: str
    output: Send | Close


# ---------------------------------------------------------------------------------------------
# Configuration records (built by bcast_sp4.config.scs)
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CWEncryptionSpec:
    """TEK protection on the ECMG link (:mod:`bcast_sp4.bcast.cw_encryption`)."""

    algorithm: cw_encryption.CWAlgorithm
    key_id: int
    key: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class ChannelSpec:
    """One ECMG channel: one TCP connection (to *endpoint*, else *backup_endpoint*)."""

    name: str
    endpoint: str
    backup_endpoint: str | None
    super_CAS_id: int
    ECM_channel_id: int
    protocol_version: int = 3


@attrs.frozen(kw_only=True)
class LinkSpec:
    """One STKM stream of a service on one ECMG channel."""

    channel: str
    super_CAS_id: int
    ECM_stream_id: int
    ECM_id: int
    access_criteria: bytes | None = None
    cw_encryption: CWEncryptionSpec | None = None


@attrs.frozen(kw_only=True)
class ServiceSpec:
    """One encrypted service (one SCS instance in the seed's words).

    :param crypto_period: D in units of 100 ms (the stream's nominal_CP_duration).
    :param tek_params: passed to :func:`bcast_sp4.bcast.traffic.generate` besides the identifier
        (IPsec ``authenticated``; SRTP ``mki_length``; ISMACryp ``key_indicator_length``).
    :param phase: seconds; T(n) = phase + n x D.
    """

    name: str
    crypto_period: int
    protection: traffic.TrafficProtection
    links: tuple[LinkSpec, ...]
    tek_params: dict[str, Any] = attrs.field(factory=dict)
    phase: float = 0.0

    @property
    def period_seconds(self) -> float:
        return self.crypto_period / 10.0


@attrs.frozen(kw_only=True)
class Timing:
    """SCS timing policy (seconds)."""

    channel_test_interval: float = 10.0  # 0 = never
    setup_timeout: float = 5.0  # channel_setup / stream_setup / channel_test answers
    response_timeout_floor: float = 0.25  # ECM_response timeout is max(2 x max_comp_time, this)
    provision_lead: float | None = None  # None: half a crypto-period
    max_attempts: int = 3  # CW_provisions per period and ECMG
    retry_delay: float = 0.05  # after a stream_error answering a CW_provision
    stream_retry_delay: float = 1.0  # after a refused stream_setup (doubles per refusal)
    start_allowance: float = 0.5  # first scrambled period: time to connect and set up


@attrs.frozen(kw_only=True)
class ECMGParams:
    """What a channel_status announced, in seconds where the wire says ms."""

    delay_start: float
    transition_delay_start: float | None
    ECM_rep_period: int  # ms
    lead_CW: int
    CW_per_msg: int
    max_comp_time: float
    min_CP_duration: int  # x 100 ms
    section_TSpkt_flag: int

    @classmethod
    def from_status(cls, status: m.ChannelStatus) -> "ECMGParams":
        tds = status.transition_delay_start
        return cls(
            delay_start=status.delay_start / 1000.0,
            transition_delay_start=None if tds is None else tds / 1000.0,
            ECM_rep_period=status.ECM_rep_period,
            lead_CW=status.lead_CW,
            CW_per_msg=status.CW_per_msg,
            max_comp_time=status.max_comp_time / 1000.0,
            min_CP_duration=status.min_CP_duration,
            section_TSpkt_flag=status.section_TSpkt_flag,
        )

    def cp_window(self, n: int) -> range:
        """The CPs a CW_provision for CP *n* carries (digest §3.4)."""
        first = n - (self.CW_per_msg - 1 - self.lead_CW)
        return range(first, first + self.CW_per_msg)


# ---------------------------------------------------------------------------------------------
# Channel machine events consumed by the core
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class ChannelUp:
    channel: str
    params: ECMGParams


@attrs.frozen
class StreamUp:
    channel: str
    stream_id: int


@attrs.frozen
class StreamDown:
    channel: str
    stream_id: int
    reason: str


@attrs.frozen
class ECMArrived:
    channel: str
    stream_id: int
    cp_number: int
    datagram: bytes = attrs.field(repr=False)


@attrs.frozen
class ProvisionFailed:
    """A CW_provision was answered with stream_error *error_status* (``None``: never sent)."""

    channel: str
    stream_id: int
    cp_number: int
    error_status: int | None


@attrs.frozen
class RequestCWProvision:
    """Scheduler -> core: send this CW_provision on the link's stream."""

    service: str
    link: int
    stream_id: int
    cp_number: int
    combinations: tuple[CPCWCombination, ...] = attrs.field(repr=False)
    cw_encryption: bytes | None = attrs.field(repr=False)
    access_criteria: bytes | None


# ---------------------------------------------------------------------------------------------
# SCS channel
# ---------------------------------------------------------------------------------------------


class ChannelState(enum.Enum):
    DISCONNECTED = "DISCONNECTED"
    WAIT_CH_STATUS = "WAIT_CH_STATUS"
    CH_OPEN = "CH_OPEN"


class StreamState(enum.Enum):
    IDLE = "IDLE"
    WAIT_ST_STATUS = "WAIT_ST_STATUS"
    ST_OPEN = "ST_OPEN"
    ST_CLOSING = "ST_CLOSING"
    ST_BACKOFF = "ST_BACKOFF"


class AfterClose(enum.Enum):
    """What a stream does once its stream_close_request is answered."""

    SET_UP_AGAIN = "set_up_again"
    STAY_CLOSED = "stay_closed"


@attrs.define
class _Stream:
    service: str
    link: LinkSpec
    nominal_CP_duration: int
    state: StreamState = StreamState.IDLE
    outstanding: collections.deque = attrs.field(factory=collections.deque)
    last_status: m.StreamStatus | None = None
    refusals: int = 0
    after_close: AfterClose = AfterClose.SET_UP_AGAIN

    @property
    def stream_id(self) -> int:
        return self.link.ECM_stream_id


class SCSChannel:
    """The SCS end of one ECMG connection: one channel and its streams (see the module table).

    :param streams: ``(service name, link, nominal_CP_duration)`` for each stream of the channel.
    """

    def __init__(self, spec: ChannelSpec, streams: Iterable[tuple[str, LinkSpec, int]], timing: Timing) -> None:
        self.spec = spec
        self.name = spec.name
        self.timing = timing
        self.version = spec.protocol_version
        self.state = ChannelState.DISCONNECTED
        self.status: m.ChannelStatus | None = None
        self.params: ECMGParams | None = None
        self.streams: dict[int, _Stream] = {}
        for service, link, nominal in streams:
            if link.ECM_stream_id in self.streams:
                raise ValueError(f"channel {spec.name}: ECM_stream_id {link.ECM_stream_id} used twice")
            self.streams[link.ECM_stream_id] = _Stream(service, link, nominal)
        #: channel set-ups that failed in a row (lengthens the reconnect back-off)
        self.refusals = 0
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

    def _key(self, what: str, stream_id: int | None = None) -> tuple:
        return ("channel", self.name, what) if stream_id is None else ("channel", self.name, what, stream_id)

    def _all_timer_keys(self) -> list[tuple]:
        keys = [self._key(w) for w in ("setup", "test", "test_reply")]
        for sid in self.streams:
            keys += [self._key(w, sid) for w in ("stream_setup", "stream_retry", "stream_close")]
        return keys

    def _notify(self, event: str, level: str = "info", **fields: Any) -> Notify:
        return Notify(event, {"channel": self.name, **fields}, level)

    # -- connection inputs ---------------------------------------------------------------------

    def connection_made(self, now: float) -> list:
        """The TCP connection is up: set the channel up (called from prepareConnection)."""
        self.state = ChannelState.WAIT_CH_STATUS
        return [
            Send(m.ChannelSetup(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id,
                                Super_CAS_id=self.spec.super_CAS_id)),
            StartTimer(self._key("setup"), self.timing.setup_timeout),
        ]

    def connection_lost(self, now: float) -> list:
        """All streams of the channel are gone (digest §6.5)."""
        out: list = [CancelTimer(k) for k in self._all_timer_keys()]
        if self.state is ChannelState.WAIT_CH_STATUS:
            self.refusals += 1
        out += self._streams_down("connection_lost")
        self.state = ChannelState.DISCONNECTED
        return out

    def close(self, now: float) -> list:
        """Shut down: close the open streams and the channel, then the connection."""
        out: list = [CancelTimer(k) for k in self._all_timer_keys()]
        if self.state is ChannelState.CH_OPEN:
            for stream in self.streams.values():
                if stream.state is StreamState.ST_OPEN:
                    out.append(Send(m.StreamCloseRequest(protocol_version=self.version,
                                                         ECM_channel_id=self.spec.ECM_channel_id,
                                                         ECM_stream_id=stream.stream_id)))
            out.append(Send(m.ChannelClose(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id)))
        out += self._streams_down("shutdown")
        if self.state is not ChannelState.DISCONNECTED:
            out.append(Close("shutdown", "info"))
        self.state = ChannelState.DISCONNECTED
        return out

    def receive(self, item: Message | PeerProtocolError, now: float) -> list:
        """One decoded message from the ECMG (or the codec's error for one)."""
        if isinstance(item, PeerProtocolError):
            channel = item.channel_id if item.channel_id is not None else self.spec.ECM_channel_id
            return [
                Send(self._make_channel_error(channel, item.error_status, item.error_information)),
                self._notify("decode_error", "warn", error_status=item.error_status, detail=item.detail),
            ]
        handler = self._handlers.get(type(item))
        if handler is None:  # a message only an SCS sends
            return [
                Send(self._make_channel_error(getattr(item, "ECM_channel_id", self.spec.ECM_channel_id), INVALID_MESSAGE, 1)),
                self._notify("wrong_direction", "warn", message_type=item.NAME),
            ]
        return handler(item, now)

    def timer(self, key: tuple, now: float) -> list:
        what = key[2]
        if what == "setup":
            if self.state is not ChannelState.WAIT_CH_STATUS:
                return []
            self.refusals += 1
            return [self._notify("channel_setup_timeout", "warn", refusals=self.refusals), Close("no channel_status")]
        if what == "test":
            if self.state is not ChannelState.CH_OPEN:
                return []
            return [
                Send(m.ChannelTest(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id)),
                StartTimer(self._key("test_reply"), self.timing.setup_timeout),
                StartTimer(self._key("test"), self.timing.channel_test_interval),
            ]
        if what == "test_reply":
            return [self._notify("channel_test_unanswered", "warn"), Close("channel_test unanswered")]
        stream = self.streams.get(key[3])
        if stream is None or self.state is not ChannelState.CH_OPEN:
            return []
        if what == "stream_setup" and stream.state is StreamState.WAIT_ST_STATUS:
            return self._refuse_stream(stream, None, "stream_setup_timeout")
        if what == "stream_retry" and stream.state is StreamState.ST_BACKOFF:
            return self._setup_stream(stream)
        if what == "stream_close" and stream.state is StreamState.ST_CLOSING:
            return self._after_close(stream)
        return []

    def provision(self, request: RequestCWProvision, now: float) -> list:
        """Send a CW_provision on *request*'s stream (the stream must be open)."""
        stream = self.streams.get(request.stream_id)
        if stream is None or stream.state is not StreamState.ST_OPEN or self.state is not ChannelState.CH_OPEN:
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
        if self.state is ChannelState.WAIT_CH_STATUS:
            self.refusals = 0
            self.state = ChannelState.CH_OPEN
            self.status, self.params = msg, ECMGParams.from_status(msg)
            out: list = [
                CancelTimer(self._key("setup")),
                ChannelUp(self.name, self.params),
                self._notify(
                    "channel_open", lead_cw=msg.lead_CW, cw_per_msg=msg.CW_per_msg, delay_start=msg.delay_start,
                    ecm_rep_period=msg.ECM_rep_period, max_comp_time=msg.max_comp_time,
                    section_tspkt_flag=msg.section_TSpkt_flag,
                ),
            ]
            if msg.section_TSpkt_flag != 0x02:
                out.append(self._notify("not_stkm_format", "warn", section_tspkt_flag=msg.section_TSpkt_flag))
            if self.timing.channel_test_interval > 0:
                out.append(StartTimer(self._key("test"), self.timing.channel_test_interval))
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
                out += self._setup_stream(stream)
            return out
        if self.state is ChannelState.CH_OPEN:
            out = [CancelTimer(self._key("test_reply"))]
            params = ECMGParams.from_status(msg)
            self.status = msg
            if params != self.params:
                self.params = params
                out += [ChannelUp(self.name, params), self._notify("channel_parameters_changed", "warn")]
            return out
        return [self._notify("unexpected_channel_status", "warn", state=self.state.value)]

    def _make_channel_error(self, channel_id: int, code: int, info: int | None = None) -> m.ChannelError:
        return m.ChannelError(
            protocol_version=self.version,
            ECM_channel_id=channel_id & 0xFFFF,
            error_status=(code,),
            error_information=() if info is None else ((info & 0xFFFF).to_bytes(2, "big"),),
        )

    def _channel_error_received(self, codes: tuple[int, ...], now: float) -> list:
        if self.state is ChannelState.WAIT_CH_STATUS:
            self.refusals += 1
            return [
                CancelTimer(self._key("setup")),
                self._notify("channel_refused", "error", error_status=list(codes), refusals=self.refusals),
                Close("channel refused"),
            ]
        if self.state is not ChannelState.CH_OPEN:
            return [self._notify("channel_error", "warn", error_status=list(codes))]
        if UNRECOVERABLE in codes:
            out: list = [self._notify("channel_unrecoverable", "warn", error_status=list(codes))]
            out += [CancelTimer(k) for k in self._all_timer_keys()]
            out += self._streams_down("unrecoverable_error")
            out += [Send(m.ChannelClose(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id)),
                    Close("unrecoverable error")]
            self.state = ChannelState.DISCONNECTED
            return out
        if UNKNOWN_CHANNEL in codes:
            out = [self._notify("channel_lost_by_ecmg", "warn", error_status=list(codes))]
            out += [CancelTimer(k) for k in self._all_timer_keys()]
            out += self._streams_down("channel_unknown_to_ecmg")
            return out + self.connection_made(now)
        return [self._notify("channel_error", "warn", error_status=list(codes))]

    def _channel_test(self, msg: m.ChannelTest, now: float) -> list:
        if self.state is ChannelState.CH_OPEN and msg.ECM_channel_id == self.spec.ECM_channel_id and self.status:
            return [Send(self.status)]
        return [Send(self._make_channel_error(msg.ECM_channel_id, UNKNOWN_CHANNEL)),
                self._notify("channel_test_unknown_channel", "warn", ecm_channel_id=msg.ECM_channel_id)]

    # -- stream messages -----------------------------------------------------------------------

    def _stream_for(self, msg: Message) -> _Stream | None:
        if msg.ECM_channel_id != self.spec.ECM_channel_id:
            return None
        return self.streams.get(msg.ECM_stream_id)

    def _setup_stream(self, stream: _Stream) -> list:
        stream.state = StreamState.WAIT_ST_STATUS
        stream.outstanding.clear()
        return [
            CancelTimer(self._key("stream_retry", stream.stream_id)),
            Send(m.StreamSetup(
                protocol_version=self.version,
                ECM_channel_id=self.spec.ECM_channel_id,
                ECM_stream_id=stream.stream_id,
                ECM_id=None if self.version == 1 else stream.link.ECM_id,
                nominal_CP_duration=stream.nominal_CP_duration,
            )),
            StartTimer(self._key("stream_setup", stream.stream_id), self.timing.setup_timeout),
        ]

    def _refuse_stream(self, stream: _Stream, code: int | None, event: str) -> list:
        stream.refusals += 1
        stream.state = StreamState.ST_BACKOFF
        delay = self.timing.stream_retry_delay * (2 ** min(stream.refusals - 1, 5))
        level = "error" if code is not None and (code in CONFIGURATION_CODES or code >= BCAST_BASE) else "warn"
        return [
            CancelTimer(self._key("stream_setup", stream.stream_id)),
            self._notify(event, level, stream_id=stream.stream_id, service=stream.service, error_status=code,
                         retry_in=delay),
            StartTimer(self._key("stream_retry", stream.stream_id), delay),
        ]

    def _close_stream(self, stream: _Stream, after: AfterClose) -> list:
        stream.state = StreamState.ST_CLOSING
        stream.after_close = after
        stream.outstanding.clear()
        return [
            Send(m.StreamCloseRequest(protocol_version=self.version, ECM_channel_id=self.spec.ECM_channel_id,
                                      ECM_stream_id=stream.stream_id)),
            StartTimer(self._key("stream_close", stream.stream_id), self.timing.setup_timeout),
        ]

    def _after_close(self, stream: _Stream) -> list:
        out: list = [CancelTimer(self._key("stream_close", stream.stream_id))]
        if stream.after_close is AfterClose.SET_UP_AGAIN:
            return out + self._setup_stream(stream)
        stream.state = StreamState.IDLE
        return out

    def _stream_down(self, stream: _Stream, reason: str) -> list:
        was_open = stream.state is StreamState.ST_OPEN
        stream.outstanding.clear()
        return [StreamDown(self.name, stream.stream_id, reason)] if was_open else []

    def _streams_down(self, reason: str) -> list:
        out: list = []
        for stream in self.streams.values():
            out += self._stream_down(stream, reason)
            stream.state = StreamState.IDLE
        return out

    def _stream_status(self, msg: m.StreamStatus, now: float) -> list:
        stream = self._stream_for(msg)
        if stream is None or self.state is not ChannelState.CH_OPEN:
            return [self._notify("unexpected_stream_status", "warn", stream_id=msg.ECM_stream_id)]
        if stream.state is StreamState.WAIT_ST_STATUS:
            out: list = [CancelTimer(self._key("stream_setup", stream.stream_id))]
            if self.version >= 2 and msg.ECM_id != stream.link.ECM_id:
                out.append(self._notify("ecm_id_not_echoed", "warn", stream_id=stream.stream_id,
                                        ecm_id=msg.ECM_id, expected=stream.link.ECM_id))
            stream.state = StreamState.ST_OPEN
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
        if stream is not None and stream.state is StreamState.ST_OPEN and stream.last_status is not None:
            return [Send(stream.last_status)]
        return [Send(m.StreamError(protocol_version=self.version, ECM_channel_id=msg.ECM_channel_id,
                                   ECM_stream_id=msg.ECM_stream_id, error_status=(UNKNOWN_STREAM,))),
                self._notify("stream_test_unknown_stream", "warn", stream_id=msg.ECM_stream_id)]

    def _channel_error_message(self, msg: m.ChannelError, now: float) -> list:
        return self._channel_error_received(tuple(msg.error_status), now)

    def _stream_error(self, msg: m.StreamError, now: float) -> list:
        codes = tuple(msg.error_status)
        if UNKNOWN_CHANNEL in codes and self.state is ChannelState.CH_OPEN:
            return self._channel_error_received(codes, now)
        stream = self._stream_for(msg)
        if stream is None or self.state is not ChannelState.CH_OPEN:
            return [self._notify("stream_error_unknown_stream", "warn", stream_id=msg.ECM_stream_id,
                                 error_status=list(codes))]
        code = codes[0]
        if stream.state is StreamState.WAIT_ST_STATUS:
            if code == STREAM_ID_IN_USE:
                return [CancelTimer(self._key("stream_setup", stream.stream_id)),
                        self._notify("stream_id_in_use", "warn", stream_id=stream.stream_id)] + self._close_stream(
                    stream, AfterClose.SET_UP_AGAIN)
            return self._refuse_stream(stream, code, "stream_refused")
        if stream.state is StreamState.ST_CLOSING:
            return self._after_close(stream)
        if stream.state is not StreamState.ST_OPEN:
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
        if stream is None or stream.state is not StreamState.ST_OPEN or msg.CP_number not in stream.outstanding:
            return [self._notify("unexpected_ecm_response", "warn", stream_id=msg.ECM_stream_id, cp_number=msg.CP_number)]
        stream.outstanding.remove(msg.CP_number)
        return [ECMArrived(self.name, stream.stream_id, msg.CP_number, msg.ECM_datagram)]

    def _stream_close_response(self, msg: m.StreamCloseResponse, now: float) -> list:
        stream = self._stream_for(msg)
        if stream is None or stream.state is not StreamState.ST_CLOSING:
            return [self._notify("unexpected_stream_close_response", "warn", stream_id=msg.ECM_stream_id)]
        return self._after_close(stream)


# ---------------------------------------------------------------------------------------------
# Crypto-period scheduler
# ---------------------------------------------------------------------------------------------


class PeriodState(enum.Enum):
    PLANNED = "PLANNED"
    READY = "READY"
    ON_AIR = "ON_AIR"
    SKIPPED = "SKIPPED"


class Acquisition(enum.Enum):
    """Where the STKM of one period from one ECMG link stands."""

    WAITING = "WAITING"  # to be requested at provision_at (or retried at not_before)
    REQUESTED = "REQUESTED"
    RECEIVED = "RECEIVED"
    ABANDONED = "ABANDONED"


class LinkState(enum.Enum):
    DOWN = "DOWN"
    UP = "UP"


@attrs.define
class _Fetch:
    state: Acquisition = Acquisition.WAITING
    attempts: int = 0
    not_before: float = 0.0
    deadline: float = math.inf
    stkm: bytes | None = attrs.field(default=None, repr=False)
    received_at: float | None = None


@attrs.define
class _Period:
    n: int
    start: float
    fetches: list[_Fetch]
    state: PeriodState = PeriodState.PLANNED


@attrs.define
class _Link:
    spec: LinkSpec
    state: LinkState = LinkState.DOWN
    params: ECMGParams | None = None


@attrs.define
class SchedulerStats:
    """Counters of one service (monotonic)."""

    stkms_received: int = 0
    stkms_submitted: int = 0
    stkms_late: int = 0
    periods_ready: int = 0
    periods_skipped: int = 0
    provisions_sent: int = 0
    retries: int = 0
    timeouts: int = 0
    refusals: int = 0


def _identifier(n: int, length: int) -> bytes:
    return (n % (1 << (8 * length))).to_bytes(length, "big") if length else b""


class ServiceScheduler:
    """Crypto-periods of one service (see the module table).

    :param tek_factory: ``(n) -> material`` overriding the CSPRNG TEK generator (tests).
    :param rng: the TEK generator's randomness (the OS CSPRNG by default).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        timing: Timing,
        tek_factory: Callable[[int], traffic.TrafficKeyMaterial] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.timing = timing
        self.D = spec.period_seconds
        self.lead = timing.provision_lead if timing.provision_lead is not None else self.D / 2
        self.links = [_Link(link) for link in spec.links]
        self.periods: dict[int, _Period] = {}
        self.teks: dict[int, traffic.TrafficKeyMaterial] = {}
        self.first_period: int | None = None
        self.stats = SchedulerStats()
        self._tek_factory = tek_factory or self._generate_tek
        self._rng = rng
        self._recent_spis: collections.deque[int] = collections.deque(maxlen=16)
        self._timer_key = ("service", spec.name)
        self._armed_at: float | None = None

    # -- time grid -------------------------------------------------------------------------------

    def period_start(self, n: int) -> float:
        """T(n)."""
        return self.spec.phase + n * self.D

    def period_at(self, now: float) -> int:
        """The n with T(n) <= now < T(n+1)."""
        return math.floor((now - self.spec.phase) / self.D + 1e-9)

    def delay_start(self, index: int, n: int) -> float:
        params = self.links[index].params
        if n == self.first_period and params.transition_delay_start is not None:
            return params.transition_delay_start
        return params.delay_start

    def on_air_from(self, index: int, n: int) -> float:
        return self.period_start(n) + self.delay_start(index, n)

    def provision_at(self, index: int, n: int) -> float:
        params = self.links[index].params
        lead = max(self.lead, params.max_comp_time + 0.05)
        return min(self.period_start(n), self.on_air_from(index, n)) - lead

    def response_timeout(self, index: int) -> float:
        return max(2 * self.links[index].params.max_comp_time, self.timing.response_timeout_floor)

    # -- TEK generator (CWG) -----------------------------------------------------------------------

    def _generate_tek(self, n: int) -> traffic.TrafficKeyMaterial:
        protection = self.spec.protection
        params = dict(self.spec.tek_params)
        if protection is traffic.TrafficProtection.SRTP:
            params["mki"] = _identifier(n, params.pop("mki_length", 4))
        elif protection is traffic.TrafficProtection.ISMACRYP:
            params["key_indicator"] = _identifier(n, params.pop("key_indicator_length", 4))
        else:
            spi = None
            while spi is None or spi < 256 or spi in self._recent_spis:
                spi = int.from_bytes(self._rng(4), "big")
            self._recent_spis.append(spi)
            params["spi"] = spi
        return traffic.generate(protection, rng=self._rng, **params)

    def tek(self, n: int) -> traffic.TrafficKeyMaterial:
        """TEK(n): generated once, shared by every ECMG link of the service."""
        material = self.teks.get(n)
        if material is None:
            material = self.teks[n] = self._tek_factory(n)
        return material

    # -- inputs ------------------------------------------------------------------------------------

    def start(self, now: float) -> list:
        """Choose the first scrambled period and arm the timer."""
        n = self.period_at(now) + 1
        while self.period_start(n) - self.lead < now + self.timing.start_allowance:
            n += 1
        self.first_period = n
        return [
            Notify("service_start", {"service": self.name, "first_cp": n & _WIRE, "first_switch_at": self.period_start(n),
                                     "crypto_period": self.D, "protection": self.spec.protection.name}),
            *self.poll(now),
        ]

    def link_up(self, index: int, params: ECMGParams, now: float) -> list:
        link = self.links[index]
        link.state, link.params = LinkState.UP, params
        return self.poll(now)

    def link_params(self, index: int, params: ECMGParams, now: float) -> list:
        self.links[index].params = params
        return self.poll(now) if self.links[index].state is LinkState.UP else []

    def link_down(self, index: int, now: float) -> list:
        self.links[index].state = LinkState.DOWN
        for period in self.periods.values():
            fetch = period.fetches[index]
            if period.state is PeriodState.PLANNED and fetch.state is Acquisition.REQUESTED:
                fetch.state, fetch.not_before, fetch.deadline = Acquisition.WAITING, now, math.inf
        return self.poll(now)

    def _period_of(self, cp_number: int) -> _Period | None:
        for n, period in self.periods.items():
            if n & _WIRE == cp_number:
                return period
        return None

    def ecm_arrived(self, index: int, cp_number: int, stkm: bytes, now: float) -> list:
        period = self._period_of(cp_number)
        if period is None or period.state is not PeriodState.PLANNED:
            return [Notify("stale_stkm", {"service": self.name, "link": index, "cp_number": cp_number}, "debug")]
        fetch = period.fetches[index]
        if fetch.state is Acquisition.RECEIVED:
            return []
        fetch.state, fetch.stkm, fetch.received_at, fetch.deadline = Acquisition.RECEIVED, stkm, now, math.inf
        self.stats.stkms_received += 1
        out = self._try_ready(period, now)
        return out + self.poll(now)

    def provision_failed(self, index: int, cp_number: int, error_status: int | None, now: float) -> list:
        period = self._period_of(cp_number)
        if period is None or period.state is not PeriodState.PLANNED:
            return []
        fetch = period.fetches[index]
        if fetch.state is not Acquisition.REQUESTED:
            return []
        out: list = []
        if error_status is None:  # never sent (the stream went down in between): not an attempt
            fetch.attempts -= 1
            fetch.state, fetch.not_before, fetch.deadline = Acquisition.WAITING, now + self.timing.retry_delay, math.inf
        else:
            self.stats.refusals += 1
            fetch.state, fetch.not_before, fetch.deadline = Acquisition.WAITING, now + self.timing.retry_delay, math.inf
            out.append(Notify("stkm_refused", {"service": self.name, "link": index, "cp_number": cp_number,
                                               "error_status": error_status, "attempt": fetch.attempts}, "warn"))
        return out + self.poll(now)

    def poll(self, now: float) -> list:
        """Everything due at *now*; re-arms the service timer for the next due instant."""
        if self.first_period is None:
            return []
        out: list = []
        current = self.period_at(now)
        # plan the periods whose provisioning can be due within about a period
        horizon = current + 2 + math.ceil((self.lead + 1.0) / self.D)
        for n in range(max(self.first_period, current), horizon + 1):
            if n not in self.periods:
                self.periods[n] = _Period(n, self.period_start(n), [_Fetch() for _ in self.links])
        wake = math.inf
        for n in sorted(self.periods):
            period = self.periods[n]
            if period.state is PeriodState.PLANNED:
                if now >= period.start:
                    out += self._skip(period)
                    continue
                wake = min(wake, period.start)
                for index, link in enumerate(self.links):
                    if link.state is not LinkState.UP:
                        continue
                    wake = min(wake, self._advance_fetch(period, index, now, out))
            elif period.state is PeriodState.READY:
                if now >= period.start:
                    period.state = PeriodState.ON_AIR
                else:
                    wake = min(wake, period.start)
        for n in [n for n in self.periods if n < current - 1]:
            del self.periods[n]
        keep_from = current - 1 - max((l.params.CW_per_msg if l.params else 1) for l in self.links)
        for n in [n for n in self.teks if n < keep_from]:
            del self.teks[n]
        if wake < math.inf:
            out.append(StartTimer(self._timer_key, max(0.0, wake - now)))
        return out

    # -- helpers -----------------------------------------------------------------------------------

    def _advance_fetch(self, period: _Period, index: int, now: float, out: list) -> float:
        """Send or retry the request if due; return when this fetch next needs attention."""
        fetch = period.fetches[index]
        if fetch.state is Acquisition.REQUESTED:
            if now < fetch.deadline:
                return fetch.deadline
            self.stats.timeouts += 1
            out.append(Notify("stkm_timeout", {"service": self.name, "link": index, "cp_number": period.n & _WIRE,
                                               "attempt": fetch.attempts}, "warn"))
            fetch.state, fetch.not_before, fetch.deadline = Acquisition.WAITING, now, math.inf
        if fetch.state is not Acquisition.WAITING:
            return math.inf
        due = max(self.provision_at(index, period.n), fetch.not_before)
        if now < due:
            return due
        if fetch.attempts >= self.timing.max_attempts:
            fetch.state = Acquisition.ABANDONED
            out.append(Notify("stkm_abandoned", {"service": self.name, "link": index, "cp_number": period.n & _WIRE,
                                                 "attempts": fetch.attempts}, "warn"))
            return math.inf
        if fetch.attempts:
            self.stats.retries += 1
        fetch.attempts += 1
        fetch.state = Acquisition.REQUESTED
        fetch.deadline = now + self.response_timeout(index)
        self.stats.provisions_sent += 1
        out.append(self._request(period.n, index))
        return fetch.deadline

    def _request(self, n: int, index: int) -> RequestCWProvision:
        link = self.links[index]
        combos = [(cp & _WIRE, traffic.encode_cw(self.tek(cp))) for cp in link.params.cp_window(n)]
        header = None
        encryption = link.spec.cw_encryption
        if encryption is not None:
            header, encrypted = cw_encryption.encrypt(encryption.algorithm, encryption.key_id, encryption.key, combos)
            combos = [(cp, cw) for (cp, _), cw in zip(combos, encrypted)]
        return RequestCWProvision(
            service=self.name,
            link=index,
            stream_id=link.spec.ECM_stream_id,
            cp_number=n & _WIRE,
            combinations=tuple(CPCWCombination(cp, cw) for cp, cw in combos),
            cw_encryption=header,
            access_criteria=link.spec.access_criteria,
        )

    def _try_ready(self, period: _Period, now: float) -> list:
        if any(f.state is not Acquisition.RECEIVED for f in period.fetches) or now >= period.start:
            return []
        period.state = PeriodState.READY
        self.stats.periods_ready += 1
        out: list = []
        late = []
        for index, (link, fetch) in enumerate(zip(self.links, period.fetches)):
            on_air = self.on_air_from(index, period.n)
            if now > on_air:
                late.append(index)
                self.stats.stkms_late += 1
            self.stats.stkms_submitted += 1
            out.append(SubmitSTKM(link.spec.super_CAS_id, link.spec.ECM_id, period.n & _WIRE, fetch.stkm, on_air,
                                  link.params.ECM_rep_period))
        out.append(ProvideTEK(self.name, period.n & _WIRE, self.tek(period.n), period.start))
        if late:
            out.append(Notify("stkm_late", {"service": self.name, "cp_number": period.n & _WIRE, "links": late,
                                            "late_by_ms": round((now - min(self.on_air_from(i, period.n) for i in late)) * 1000, 1)},
                              "warn"))
        return out

    def _skip(self, period: _Period) -> list:
        period.state = PeriodState.SKIPPED
        self.stats.periods_skipped += 1
        missing = [i for i, f in enumerate(period.fetches) if f.state is not Acquisition.RECEIVED]
        for i in missing:
            period.fetches[i].state = Acquisition.ABANDONED
        return [Notify("period_skipped", {"service": self.name, "cp_number": period.n & _WIRE, "missing_links": missing},
                       "warn")]


# ---------------------------------------------------------------------------------------------
# The SCS core: channels + schedulers
# ---------------------------------------------------------------------------------------------


class SCSCore:
    """All channels and services of one SCS process, linked in memory.

    Inputs name a channel (by :attr:`ChannelSpec.name`) or a timer key; outputs are
    :class:`ChannelOutput`, :class:`StartTimer`, :class:`CancelTimer`, :class:`Notify`,
    :class:`ProvideTEK` and :class:`SubmitSTKM`.
    """

    def __init__(
        self,
        channels: Iterable[ChannelSpec],
        services: Iterable[ServiceSpec],
        timing: Timing = Timing(),
        tek_factory: Callable[[str, int], traffic.TrafficKeyMaterial] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.timing = timing
        self.channel_specs = {c.name: c for c in channels}
        self.services: dict[str, ServiceScheduler] = {}
        members: dict[str, list] = {name: [] for name in self.channel_specs}
        self._links: dict[tuple[str, int], tuple[str, int]] = {}  # (channel, stream id) -> (service, link)
        self._members: dict[str, list[tuple[str, int]]] = {name: [] for name in self.channel_specs}
        for spec in services:
            factory = None if tek_factory is None else (lambda n, _s=spec.name: tek_factory(_s, n))
            self.services[spec.name] = ServiceScheduler(spec, timing, factory, rng)
            for index, link in enumerate(spec.links):
                if link.channel not in members:
                    raise ValueError(f"service {spec.name}: unknown channel {link.channel!r}")
                if self.channel_specs[link.channel].super_CAS_id != link.super_CAS_id:
                    raise ValueError(f"service {spec.name}: link super_CAS_id differs from channel {link.channel!r}")
                members[link.channel].append((spec.name, link, spec.crypto_period))
                self._links[(link.channel, link.ECM_stream_id)] = (spec.name, index)
                self._members[link.channel].append((spec.name, index))
        self.channels: dict[str, SCSChannel] = {}
        for name, spec in self.channel_specs.items():
            channel = SCSChannel(spec, members[name], timing)
            self.channels[name] = channel

    # -- inputs ------------------------------------------------------------------------------------

    def start(self, now: float) -> list:
        out: list = []
        for scheduler in self.services.values():
            out += scheduler.start(now)
        return out

    def stop(self, now: float) -> list:
        out: list = []
        for name, channel in self.channels.items():
            out += self._route(name, channel.close(now), now)
        for scheduler in self.services.values():
            out.append(CancelTimer(scheduler._timer_key))
        return out

    def connection_made(self, channel: str, now: float) -> list:
        return self._route(channel, self.channels[channel].connection_made(now), now)

    def receive(self, channel: str, item: Message | PeerProtocolError, now: float) -> list:
        return self._route(channel, self.channels[channel].receive(item, now), now)

    def connection_lost(self, channel: str, now: float) -> list:
        return self._route(channel, self.channels[channel].connection_lost(now), now)

    def timer(self, key: tuple, now: float) -> list:
        if key[0] == "service":
            return self._route(None, self.services[key[1]].poll(now), now)
        return self._route(key[1], self.channels[key[1]].timer(key, now), now)

    # -- routing -----------------------------------------------------------------------------------

    def _route(self, source: str | None, outputs: list, now: float) -> list:
        result: list = []
        queue = collections.deque((source, o) for o in outputs)
        while queue:
            origin, output = queue.popleft()
            kind = type(output)
            if kind is Send or kind is Close:
                result.append(ChannelOutput(origin, output))
            elif kind is RequestCWProvision:
                channel = self.services[output.service].spec.links[output.link].channel
                queue.extend((channel, o) for o in self.channels[channel].provision(output, now))
            elif kind is ECMArrived:
                svc, index = self._links[(output.channel, output.stream_id)]
                queue.extend((None, o) for o in self.services[svc].ecm_arrived(index, output.cp_number, output.datagram, now))
            elif kind is ProvisionFailed:
                svc, index = self._links[(output.channel, output.stream_id)]
                queue.extend((None, o) for o in self.services[svc].provision_failed(index, output.cp_number, output.error_status, now))
            elif kind is StreamUp:
                svc, index = self._links[(output.channel, output.stream_id)]
                params = self.channels[output.channel].params
                queue.extend((None, o) for o in self.services[svc].link_up(index, params, now))
            elif kind is StreamDown:
                svc, index = self._links[(output.channel, output.stream_id)]
                queue.extend((None, o) for o in self.services[svc].link_down(index, now))
            elif kind is ChannelUp:
                for svc, index in self._members[output.channel]:
                    if self.services[svc].links[index].state is LinkState.UP:
                        queue.extend((None, o) for o in self.services[svc].link_params(index, output.params, now))
            else:
                result.append(output)
        return result


__all__ = [
    "Acquisition",
    "AfterClose",
    "CancelTimer",
    "ChannelOutput",
    "ChannelSpec",
    "ChannelState",
    "CWEncryptionSpec",
    "ECMGParams",
    "LinkSpec",
    "LinkState",
    "PeriodState",
    "ProvideTEK",
    "SCSChannel",
    "SCSCore",
    "SchedulerStats",
    "ServiceScheduler",
    "ServiceSpec",
    "StartTimer",
    "StreamState",
    "SubmitSTKM",
    "Timing",
]
