"""MUX side of EMMG/PDG<=>MUX: channels, streams, bandwidth, LTKM queues and STKM carousels, pure.

TS 103 197 §6 (digest ``simulcrypt.md`` §4, §5.2, §5.4, §6.3-§6.5); OMA BCAST SP-4 seed
§14.1.1.3.4-.5: the BSM's LTKM generator is an EMMG (client_id 0x0001xxxx, data_type 0x00,
section_TSpkt_flag 0x02, data_id -> IP address and port); the MUX puts LTKMs on the air as UDP
datagrams. This project also carries the SCS's STKMs to the MUX over the same protocol (TS 103 197
leaves SCS->MUX to the implementer): the SCS is a data client whose client_id is its Super_CAS_id
and whose data_id is the ECM_id, with data_type 0x02 (the DVB value for ECMs).

Pieces: one :class:`MuxCore` per MUX process holds the allow-list, the routes (``(client_id,
data_id)`` -> UDP destination), channel and stream registries, bandwidth accounting, the bounded
LTKM queues with their egress token buckets, the STKM carousels and the drop counters. One
:class:`MuxConnection` per TCP connection (one data channel) turns messages into core calls. UDP
``data_provision`` goes to :meth:`MuxCore.receive_udp`; a co-located SCS calls
:meth:`MuxCore.submit_stkm`. Time is always passed in as ``now`` (seconds). Outputs: ``Send``
(this connection), ``Close``, ``Notify``, plus :class:`Deliver` (a message for another connection:
errors about UDP traffic go to the TCP connection owning the stream) and :class:`Emit` (one
datagram to a route's destination). The adapter calls :meth:`MuxCore.tick` after input when
:attr:`MuxCore.dirty` is set and at :meth:`MuxCore.next_wakeup`.

Per-connection state table (``own`` = the channel this connection set up; ``Send`` replies on TCP)::

  state         input                  checks (error_status)                              reply / next
  NO_CHANNEL    channel_setup          version accepted (0x0002); client_id allowed       channel_status
                                       (0x000E); section_TSpkt_flag 0x02 (0x000D);          -> CHANNEL_OPEN
                                       (client_id, channel id) not active (0x0011); client
                                       below its max_channels (0x0014); MUX below
                                       max_channels (0x0007)
  CHANNEL_OPEN  channel_setup          same id: 0x0011; other id: 0x0007 (one channel     channel_error
                                       per TCP connection)
  CHANNEL_OPEN  channel_test           own channel (0x0006), own client_id (0x000E)       channel_status
  CHANNEL_OPEN  channel_close          own channel (0x0006), own client_id (0x000E)       (none); streams
                                                                                           freed -> NO_CHANNEL
  CHANNEL_OPEN  stream_setup           own channel (0x0006), client (0x000E); stream id   stream_status
                                       free (0x0012); a route for (client_id, data_id)
                                       (0x0010); data_type = route's (LTKM 0x00, STKM
                                       0x02) (0x000D); route not fed by another stream
                                       (0x0013); streams on channel (0x0008) and on MUX
                                       (0x0009)
  CHANNEL_OPEN  stream_test            known stream (0x0005)                              stream_status
  CHANNEL_OPEN  stream_BW_request      known stream (0x0005)                              stream_BW_allocation
  CHANNEL_OPEN  stream_close_request   known stream (0x0005)                              stream_close_response
  CHANNEL_OPEN  data_provision (TCP)   own channel (0x0006), client (0x000E); stream by   (none)
                                       data_stream_id (0x0005) with the same data_id
                                       (0x0010), or by data_id when the ids are absent
                                       (0x0010); each datagram <= max_datagram_size
                                       (0x000D, that datagram dropped); overrun (0x000F)
  NO_CHANNEL    channel-level message  -                                                  channel_error 0x0006
  NO_CHANNEL    stream-level message,  -                                                  stream_error 0x0006
                data_provision                                                            (channel_error when
                                                                                           no stream id)
  *             channel_status, stream_status (answers to tests), *_error: noted, no reply
  *             stream_close_response, stream_BW_allocation (MUX -> EMMG only): channel_error 0x0001
  *             message in a version other than the channel's: channel_error 0x0002
  *             codec error: channel_error with its code (channel id read, else own, else 0)
  *             TCP closed: channel and streams freed, queued LTKMs dropped (counted)

UDP ``data_provision`` (digest §4.5): accepted only for a stream set up over TCP, found by
``client_id`` + ``data_id``; ``data_channel_id`` / ``data_stream_id`` are optional and must match
when present. Anything else is dropped, counted and logged; when the client_id has an open channel,
the error also goes to it over TCP (undecodable: channel_error with the codec's code; not
data_provision: 0x0001; version other than the channel's: 0x0002; no stream for data_id: 0x0010
as channel_error, or stream_error when the stream ids were given; ids mismatching 0x0006/0x0005),
at most one such report per connection per ``udp_error_interval``.

Bandwidth (kbit/s, UDP payload bytes only: IP/UDP headers are not counted): a stream starts with
``min(route.default_bandwidth, what is free)``; stream_BW_request grants ``min(requested,
route.max_bandwidth, client.max_bandwidth - client's other streams, max_bandwidth - all other
streams)``; one without a bandwidth value is answered with the current allocation [UNCONFIRMED
reading, digest §4.4]. The MUX never sends an unsolicited allocation.

LTKM streams: each datagram is queued on its route (bounded by ``queue_datagrams`` and
``queue_bytes``; a full queue drops, counted) and emitted by an egress token bucket at the stream's
allocation (:mod:`.pacing`). Ingress is policed by a second bucket at the same rate with
``ingress_burst`` seconds of depth: a data_provision arriving while that bucket is in debt is an
overrun; ``overrun_limit`` overruns in a row draw stream_error 0x000F (then the count restarts).
Overrun traffic is still queued while there is room, so the MUX never loses what a sender within
its allocation sends, and never emits above the allocation. ``unthrottled`` (lab and benchmark)
turns pacing and policing off: datagrams leave as they arrive. A stream that closes drops what is
still queued (counted).

STKM streams (the "current STKM" carousel): the datagrams of the newest data_provision replace the
current set at once (normally one STKM; several are repeated together) -- this is how an SCS
signals the crypto-period switch over the wire. The set is emitted at once (unless it went out
less than a quarter period ago; then at that quarter) and then every ``repetition_period`` ms until
replaced. A set replaced before it was ever emitted counts as dropped ("superseded"). The STKM
stays on air when its stream or connection goes away (TSDuck's degraded mode: last ECM kept).
:meth:`MuxCore.submit_stkm` is the in-process path for a co-located SCS: same carousel, with
``on_air_from`` scheduling the switch and an optional ``repetition_ms`` (the ECMG's ECM_rep_period
as the SCS knows it) replacing the route's configured period from that switch on; at most
``max_pending_stkms`` future switches per route.
STKM ingress is not policed: the carousel, not the sender, sets the egress rate.

Drops: every datagram that arrives and is not emitted is counted under a reason
(``queue_full``, ``stream_closed``, ``too_long``, ``refused`` (a data_provision answered with an
error), ``udp_unknown``, ``udp_invalid``, ``superseded``, ``pending_overflow``, ``egress_error``)
and logged: the first drop of a (route, reason) at once, then one summary per
``drop_log_interval`` while drops go on.

Decisions where the sources are silent or differ, beyond those above: one data channel per TCP
connection (all examined implementations, [UNCONFIRMED] as a rule); a client_id may hold
``max_channels`` channels at once (default 1: its second channel is "client_id in use"; an SCS and
an LTKM generator sharing one BSM id need 2); a stream-level message naming an unknown channel is
answered with stream_error 0x0006 (TSDuck); error replies count as invalid messages and
``max_invalid_messages`` of them in a row close the connection (not 0x000F, which is about rate).
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import deque
from typing import Callable

import attrs

from ..wire import Message, PeerProtocolError
from ..wire import emmg_mux as m
from ..wire.params import DataType, SectionTSpktFlag
from .outputs import Close, Notify, Output, Send, error_information
from .pacing import TokenBucket, kbit_to_bytes

# error_status values used here (TS 103 197 §6.2.6, digest §5.2)
INVALID_MESSAGE = 0x0001
UNSUPPORTED_VERSION = 0x0002
UNKNOWN_STREAM = 0x0005
UNKNOWN_CHANNEL = 0x0006
TOO_MANY_CHANNELS = 0x0007
TOO_MANY_STREAMS_CHANNEL = 0x0008
TOO_MANY_STREAMS_MUX = 0x0009
INVALID_VALUE = 0x000D
UNKNOWN_CLIENT = 0x000E
EXCEEDED_BANDWIDTH = 0x000F
UNKNOWN_DATA_ID = 0x0010
CHANNEL_ID_IN_USE = 0x0011
STREAM_ID_IN_USE = 0x0012
DATA_ID_IN_USE = 0x0013
CLIENT_ID_IN_USE = 0x0014

#: largest UDP payload over IPv4
MAX_UDP_PAYLOAD = 65507
#: due times this close to *now* (float rounding of sums of periods) count as reached
_TIME_EPSILON = 1e-6

RouteKey = tuple[int, int]  # (client_id, data_id)


class RouteKind(enum.Enum):
    """What a route carries: queued LTKMs or a repeated current STKM."""

    LTKM = "ltkm"
    STKM = "stkm"

    @property
    def data_type(self) -> int:
        """The data_type a stream_setup must announce for this kind."""
        return DataType.EMM if self is RouteKind.LTKM else DataType.ECM


@attrs.frozen(kw_only=True)
class RouteConfig:
    """One ``(client_id, data_id)`` -> UDP destination mapping (data_id = ECM_id for STKM routes)."""

    kind: RouteKind
    data_id: int
    destination: tuple[str, int]
    ttl: int = 1
    max_bandwidth: int = 0xFFFF  # kbit/s, cap for the stream on this route
    default_bandwidth: int = 0  # kbit/s allocated at stream_setup
    repetition_period: int = 100  # ms, STKM routes

    @property
    def multicast(self) -> bool:
        return ipaddress.ip_address(self.destination[0]).is_multicast


@attrs.frozen(kw_only=True)
class ClientConfig:
    """One allowed client_id (an LTKM generator, or an SCS sending STKMs, or both)."""

    client_id: int
    routes: dict[int, RouteConfig]
    name: str = ""
    max_channels: int = 1
    max_bandwidth: int = 0xFFFF  # kbit/s, all streams of this client


@attrs.frozen(kw_only=True)
class MuxConfig:
    """The MUX's behaviour; every limit is enforced with the spec's error codes, never fatal."""

    clients: dict[int, ClientConfig]
    versions: frozenset[int] = frozenset({2, 3, 4, 5})
    max_channels: int = 64
    max_streams: int = 256
    max_streams_per_channel: int = 16
    max_bandwidth: int = 100_000  # kbit/s, all streams together
    queue_datagrams: int = 1024  # per LTKM route
    queue_bytes: int = 1 << 20  # per LTKM route
    max_datagram_size: int = MAX_UDP_PAYLOAD
    overrun_limit: int = 5
    ingress_burst: float = 0.5  # s of allocation tolerated above the rate
    egress_burst: float = 0.02  # s of allocation the pacer may catch up
    unthrottled: bool = False
    max_invalid_messages: int = 3
    drop_log_interval: float = 1.0
    udp_error_interval: float = 1.0
    max_pending_stkms: int = 8

    def __attrs_post_init__(self) -> None:
        if any(v < 2 for v in self.versions):
            raise ValueError("EMMG<=>MUX v1 has no data_id: the MUX could not map streams; use versions 2..5")


@attrs.frozen(repr=False)
class Emit:
    """Send *payload* as one UDP datagram to the destination of *route*."""

    route: RouteKey
    payload: bytes

    def __repr__(self) -> str:
        return f"Emit(route=({self.route[0]:#010x}, {self.route[1]}), {len(self.payload)} bytes)"


@attrs.frozen
class Deliver:
    """Send *message* on another connection's TCP transport."""

    connection: "MuxConnection"
    message: Message


class UnknownRoute(LookupError):
    """:meth:`MuxCore.submit_stkm` named no configured STKM route."""


@attrs.define(eq=False)
class _Stream:
    connection: "MuxConnection"
    channel_id: int
    stream_id: int
    data_id: int
    data_type: int
    route: "_Route"
    allocation: int = 0  # kbit/s
    ingress: TokenBucket | None = None
    overruns_in_a_row: int = 0
    overruns: int = 0


@attrs.define(eq=False)
class _Route:
    config: RouteConfig
    client: ClientConfig
    key: RouteKey
    stream: _Stream | None = None
    # LTKM
    queue: deque = attrs.field(factory=deque)
    queued_bytes: int = 0
    egress: TokenBucket | None = None
    # STKM
    current: tuple[bytes, ...] = ()
    current_emitted: bool = True
    period: float = 0.1  # s between two copies of the current STKM set
    next_emit: float | None = None
    last_emit: float | None = None
    pending: list = attrs.field(factory=list)  # [(on_air_from, datagrams, period)], sorted
    # counters
    datagrams_in: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0


@attrs.define
class _DropReport:
    pending: int = 0
    total: int = 0
    last: float | None = None
    fields: dict = attrs.field(factory=dict)


class MuxCore:
    """What all connections of one MUX share; also the UDP and in-process (co-located SCS) inputs."""

    def __init__(self, config: MuxConfig) -> None:
        self.config = config
        self.routes: dict[RouteKey, _Route] = {}
        for client in config.clients.values():
            for route in client.routes.values():
                key = (client.client_id, route.data_id)
                self.routes[key] = _Route(config=route, client=client, key=key, period=route.repetition_period / 1000.0)
        self.channels: dict[tuple[int, int], MuxConnection] = {}  # (client_id, channel_id) -> owner
        self.client_channels: dict[int, int] = {}
        self.streams = 0
        self.allocated = 0  # kbit/s, all streams
        self.client_allocated: dict[int, int] = {}
        self.dirty = False
        self._busy: set[_Route] = set()  # LTKM routes with a queue
        self._carousels: set[_Route] = set()  # STKM routes with a current set or pending ones
        self._reports: dict[tuple[RouteKey | None, str], _DropReport] = {}
        self._report_due: float | None = None
        self._udp_reported: dict[MuxConnection, float] = {}
        #: counters: message and datagram totals, and drops by reason
        self.counters: dict[str, int] = {
            "data_provisions": 0,
            "datagrams_in": 0,
            "bytes_in": 0,
            "datagrams_out": 0,
            "bytes_out": 0,
            "udp_messages": 0,
            "overruns": 0,
        }
        self.dropped: dict[str, int] = {}

    # -- data path ---------------------------------------------------------------------------

    def ingest(self, stream: _Stream, datagrams: tuple[bytes, ...], now: float, *, tcp: bool) -> list[Output]:
        """Take the datagrams of one accepted data_provision of *stream* (TCP or UDP)."""
        route = stream.route
        config = self.config
        counters = self.counters
        count = len(datagrams)
        size = sum(map(len, datagrams))
        counters["data_provisions"] += 1
        counters["datagrams_in"] += count
        counters["bytes_in"] += size
        route.datagrams_in += count
        route.bytes_in += size
        outputs: list[Output] = []
        limit = config.max_datagram_size
        if max(map(len, datagrams)) > limit:
            long = [d for d in datagrams if len(d) > limit]
            datagrams = tuple(d for d in datagrams if len(d) <= limit)
            size -= sum(map(len, long))
            outputs += self._drop(route.key, "too_long", len(long), now, max_datagram_size=limit)
            outputs.append(self._to_stream(stream, m.StreamError, tcp, error_status=(INVALID_VALUE,), error_information=(b"\x00\x05",)))
            if not datagrams:
                return outputs
            count = len(datagrams)
        if route.config.kind is RouteKind.STKM:
            outputs += self._replace_stkm(route, datagrams, now)
            return outputs
        if config.unthrottled:
            counters["datagrams_out"] += count
            counters["bytes_out"] += size
            route.datagrams_out += count
            route.bytes_out += size
            key = route.key
            if count == 1:
                outputs.append(Emit(key, datagrams[0]))
            else:
                outputs += [Emit(key, d) for d in datagrams]
            return outputs
        # policing: a message starting while the ingress bucket is in debt is an overrun
        ingress = stream.ingress
        if ingress.ready(now):
            stream.overruns_in_a_row = 0
        else:
            stream.overruns += 1
            stream.overruns_in_a_row += 1
            counters["overruns"] += 1
            if stream.overruns_in_a_row >= config.overrun_limit:
                stream.overruns_in_a_row = 0
                outputs.append(self._to_stream(stream, m.StreamError, tcp, error_status=(EXCEEDED_BANDWIDTH,)))
                outputs.append(
                    Notify(
                        "exceeded_bandwidth",
                        {
                            "client_id": route.key[0],
                            "data_id": route.key[1],
                            "stream_id": stream.stream_id,
                            "allocation": stream.allocation,
                            "overruns": stream.overruns,
                        },
                        "warn",
                    )
                )
        ingress.take(size)
        queue = route.queue
        accepted = 0
        for d in datagrams:
            if len(queue) >= config.queue_datagrams or route.queued_bytes + len(d) > config.queue_bytes:
                break
            queue.append(d)
            route.queued_bytes += len(d)
            accepted += 1
        if accepted < len(datagrams):
            outputs += self._drop(
                route.key, "queue_full", len(datagrams) - accepted, now, queued=len(queue), allocation=stream.allocation
            )
        if accepted:
            self._busy.add(route)
            self.dirty = True
        return outputs

    def _replace_stkm(self, route: _Route, datagrams: tuple[bytes, ...], now: float, period: float | None = None) -> list[Output]:
        outputs: list[Output] = []
        if route.current and not route.current_emitted:
            outputs += self._drop(route.key, "superseded", len(route.current), now)
        route.current = tuple(datagrams)
        route.current_emitted = False
        if period is not None:
            route.period = period
        period = route.period
        soonest = now if route.last_emit is None else max(now, route.last_emit + period / 4)
        route.next_emit = soonest if route.next_emit is None else min(route.next_emit, soonest)
        self._carousels.add(route)
        self.dirty = True
        return outputs

    def submit_stkm(
        self,
        super_cas_id: int,
        ecm_id: int,
        stkm: bytes,
        on_air_from: float | None,
        now: float,
        repetition_ms: int | None = None,
    ) -> list[Output]:
        """In-process STKM submission for a co-located SCS (same carousel as a TCP/UDP STKM stream).

        :param super_cas_id: the STKM stream's Super_CAS_id (= the route's client_id).
        :param ecm_id: its ECM_id (= the route's data_id).
        :param stkm: the STKM bytes (1..max_datagram_size).
        :param on_air_from: when it replaces the current STKM (same clock as *now*); ``None`` or a
            past time = at once.
        :param repetition_ms: repetition period of this STKM (the ECMG's ECM_rep_period, as an
            SCS knows it); ``None`` keeps the route's (configured ``repetition_period`` until an
            SCS gives one).
        :raises UnknownRoute: no STKM route for (super_cas_id, ecm_id).
        :raises ValueError: empty or over-long STKM.
        """
        route = self.routes.get((super_cas_id, ecm_id))
        if route is None or route.config.kind is not RouteKind.STKM:
            raise UnknownRoute(f"no STKM route for Super_CAS_id {super_cas_id:#010x} ECM_id {ecm_id}")
        stkm = bytes(stkm)
        if not 1 <= len(stkm) <= self.config.max_datagram_size:
            raise ValueError(f"STKM of {len(stkm)} bytes outside 1..{self.config.max_datagram_size}")
        if repetition_ms is not None and not 1 <= repetition_ms <= 0xFFFF:
            raise ValueError(f"repetition period {repetition_ms} ms outside 1..65535")
        period = None if repetition_ms is None else repetition_ms / 1000.0
        route.datagrams_in += 1
        route.bytes_in += len(stkm)
        self.counters["datagrams_in"] += 1
        self.counters["bytes_in"] += len(stkm)
        if on_air_from is None or on_air_from <= now:
            return self._replace_stkm(route, (stkm,), now, period)
        if len(route.pending) >= self.config.max_pending_stkms:
            return self._drop(route.key, "pending_overflow", 1, now, pending=len(route.pending))
        route.pending.append((on_air_from, (stkm,), period))
        route.pending.sort(key=lambda p: p[0])
        self._carousels.add(route)
        self.dirty = True
        return []

    def tick(self, now: float) -> list[Output]:
        """Emit what is due at *now*: paced LTKMs, STKM repetitions and switches, drop summaries."""
        self.dirty = False
        outputs: list[Output] = []
        counters = self.counters
        for route in list(self._busy):
            bucket = route.egress
            queue = route.queue
            emitted = nbytes = 0
            while queue and bucket.ready(now):
                d = queue.popleft()
                route.queued_bytes -= len(d)
                bucket.take(len(d))
                outputs.append(Emit(route.key, d))
                emitted += 1
                nbytes += len(d)
            if emitted:
                route.datagrams_out += emitted
                route.bytes_out += nbytes
                counters["datagrams_out"] += emitted
                counters["bytes_out"] += nbytes
            if not queue:
                self._busy.discard(route)
        for route in list(self._carousels):
            pending = route.pending
            if pending and pending[0][0] <= now + _TIME_EPSILON:
                due = [p for p in pending if p[0] <= now + _TIME_EPSILON]
                del pending[: len(due)]
                for _when, datagrams, _period in due[:-1]:
                    outputs += self._drop(route.key, "superseded", len(datagrams), now)
                _when, datagrams, period = due[-1]
                outputs += self._replace_stkm(route, datagrams, now, period)
            if route.current and route.next_emit is not None and route.next_emit <= now + _TIME_EPSILON:
                period = route.period
                for d in route.current:
                    outputs.append(Emit(route.key, d))
                    route.datagrams_out += 1
                    route.bytes_out += len(d)
                    counters["datagrams_out"] += 1
                    counters["bytes_out"] += len(d)
                route.current_emitted = True
                route.last_emit = now
                following = route.next_emit + period
                route.next_emit = following if following > now else now + period
            if not route.current and not pending:
                self._carousels.discard(route)
        if self._report_due is not None and self._report_due <= now + _TIME_EPSILON:
            outputs += self._flush_reports(now)
        self.dirty = False
        return outputs

    def next_wakeup(self, now: float) -> float | None:
        """When :meth:`tick` next has something to do (``None``: only new input can change that)."""
        best = math.inf
        for route in self._busy:
            delay = route.egress.delay(now)
            if now + delay < best:
                best = now + delay
        for route in self._carousels:
            if route.current and route.next_emit is not None:
                best = min(best, route.next_emit)
            if route.pending:
                best = min(best, route.pending[0][0])
        if self._report_due is not None:
            best = min(best, self._report_due)
        return None if best == math.inf else max(best, now)

    def egress_failed(self, route: RouteKey, reason: str, now: float) -> list[Output]:
        """The adapter could not send one datagram of *route* (socket error): count and log it."""
        self.counters["datagrams_out"] -= 1
        known = self.routes.get(route)
        if known is not None:
            known.datagrams_out -= 1
        return self._drop(route, "egress_error", 1, now, error=reason)

    # -- UDP input ---------------------------------------------------------------------------

    def receive_udp(self, item: Message | PeerProtocolError, now: float) -> list[Output]:
        """One UDP datagram from an EMMG: a decoded message or the codec's error for it."""
        self.counters["udp_messages"] += 1
        if type(item) is m.DataProvision and item.data_channel_id is None and item.data_stream_id is None:
            # the usual shape (digest §4.5: no channel/stream ids on UDP), for a live stream
            route = self.routes.get((item.client_id, item.data_id))
            if route is not None:
                stream = route.stream
                if stream is not None and item.protocol_version == stream.connection.version:
                    return self.ingest(stream, item.datagram, now, tcp=False)
        if isinstance(item, PeerProtocolError):
            outputs = self._drop(None, "udp_invalid", 1, now, error_status=item.error_status, client_id=item.client_id)
            connection = self._any_connection(item.client_id)
            if connection is not None:
                outputs += self._udp_report(
                    connection,
                    connection._channel_error(item.error_status, item.error_information, version=item.protocol_version),
                    now,
                )
            return outputs
        client_id = getattr(item, "client_id", None)
        if type(item) is not m.DataProvision:
            outputs = self._drop(None, "udp_invalid", 1, now, message_type=item.NAME, client_id=client_id)
            connection = self._any_connection(client_id)
            if connection is not None:
                outputs += self._udp_report(connection, connection._channel_error(INVALID_MESSAGE, 1), now)
            return outputs
        count = len(item.datagram)
        route = self.routes.get((item.client_id, item.data_id))
        stream = route.stream if route is not None else None
        if stream is None:
            outputs = self._drop(
                None if route is None else route.key, "udp_unknown", count, now, client_id=item.client_id, data_id=item.data_id
            )
            connection = self._any_connection(item.client_id)
            if connection is not None:
                if item.data_channel_id is not None and item.data_stream_id is not None:
                    reply = connection._stream_error(
                        item.data_stream_id, UNKNOWN_DATA_ID, 0x0008, channel_id=item.data_channel_id
                    )
                else:
                    reply = connection._channel_error(UNKNOWN_DATA_ID, 0x0008)
                outputs += self._udp_report(connection, reply, now)
            return outputs
        connection = stream.connection
        code = None
        if item.protocol_version != connection.version:
            code, reply = UNSUPPORTED_VERSION, connection._channel_error(UNSUPPORTED_VERSION, 0)
        elif item.data_channel_id is not None and item.data_channel_id != stream.channel_id:
            code = UNKNOWN_CHANNEL
            reply = connection._stream_error(
                item.data_stream_id or stream.stream_id, UNKNOWN_CHANNEL, channel_id=item.data_channel_id
            )
        elif item.data_stream_id is not None and item.data_stream_id != stream.stream_id:
            code, reply = UNKNOWN_STREAM, connection._stream_error(item.data_stream_id, UNKNOWN_STREAM)
        if code is not None:
            outputs = self._drop(route.key, "udp_unknown", count, now, error_status=code)
            return outputs + self._udp_report(connection, reply, now)
        return self.ingest(stream, item.datagram, now, tcp=False)

    def receive_udp_fast(self, version: int, client_id: int, data_id: int, datagram: bytes, now: float) -> list[Output] | None:
        """:meth:`receive_udp` for the usual UDP shape, already taken apart by the adapter.

        Handles only a datagram for a live stream of the same version; returns ``None`` for
        anything else, and the caller then decodes the bytes in full and calls :meth:`receive_udp`
        (so every error is judged and answered in one place).
        """
        route = self.routes.get((client_id, data_id))
        if route is None:
            return None
        stream = route.stream
        if stream is None or version != stream.connection.version:
            return None
        self.counters["udp_messages"] += 1
        return self.ingest(stream, (datagram,), now, tcp=False)

    def _any_connection(self, client_id: int | None) -> "MuxConnection | None":
        if client_id is None or not self.client_channels.get(client_id):
            return None
        for (cid, _ch), connection in self.channels.items():
            if cid == client_id:
                return connection
        return None

    def _udp_report(self, connection: "MuxConnection", message: Message, now: float) -> list[Output]:
        last = self._udp_reported.get(connection)
        if last is not None and now - last < self.config.udp_error_interval:
            return []
        self._udp_reported[connection] = now
        return [Deliver(connection, message)]

    def _to_stream(self, stream: _Stream, cls: type, tcp: bool, **fields) -> Output:
        message = cls(
            protocol_version=stream.connection.version,
            client_id=stream.route.key[0],
            data_channel_id=stream.channel_id,
            data_stream_id=stream.stream_id,
            **fields,
        )
        return Send(message) if tcp else Deliver(stream.connection, message)

    # -- drops -------------------------------------------------------------------------------

    def _drop(self, route: RouteKey | None, reason: str, count: int, now: float, **fields) -> list[Output]:
        """Count *count* dropped datagrams; log the first at once, then summaries (rate-limited)."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        report = self._reports.get((route, reason))
        if report is None:
            report = self._reports[(route, reason)] = _DropReport()
        report.total += count
        report.fields = fields
        interval = self.config.drop_log_interval
        if report.last is None or now - report.last >= interval:
            count += report.pending
            report.pending = 0
            report.last = now
            return [self._drop_notify(route, reason, count, report)]
        report.pending += count
        due = report.last + interval
        if self._report_due is None or due < self._report_due:
            self._report_due = due
        return []

    def _drop_notify(self, route: RouteKey | None, reason: str, count: int, report: _DropReport) -> Notify:
        where = {"client_id": route[0], "data_id": route[1]} if route is not None else {}
        return Notify("dropped", {**report.fields, **where, "reason": reason, "count": count, "total": report.total}, "warn")

    def _flush_reports(self, now: float) -> list[Output]:
        outputs: list[Output] = []
        interval = self.config.drop_log_interval
        due: float | None = None
        for (route, reason), report in self._reports.items():
            if not report.pending:
                continue
            if now - report.last >= interval:
                outputs.append(self._drop_notify(route, reason, report.pending, report))
                report.pending = 0
                report.last = now
            else:
                at = report.last + interval
                due = at if due is None else min(due, at)
        self._report_due = due
        return outputs

    # -- registries (used by MuxConnection) --------------------------------------------------

    def _open_stream(self, stream: _Stream, now: float) -> None:
        route = stream.route
        route.stream = stream
        self.streams += 1
        config = self.config
        free = self._free_bandwidth(route, None)
        stream.allocation = min(route.config.default_bandwidth, route.config.max_bandwidth, free)
        self._account(stream, stream.allocation)
        rate = kbit_to_bytes(stream.allocation)
        stream.ingress = TokenBucket(
            rate=rate, depth=self._ingress_depth(rate), tokens=self._ingress_depth(rate), stamp=now, floor=-float(config.queue_bytes)
        )
        if route.config.kind is RouteKind.LTKM:
            route.egress = TokenBucket(rate=rate, depth=rate * config.egress_burst, tokens=0.0, stamp=now)

    def _ingress_depth(self, rate: float) -> float:
        return rate * self.config.ingress_burst

    def _close_stream(self, stream: _Stream, now: float, why: str) -> list[Output]:
        route = stream.route
        outputs: list[Output] = []
        if route.stream is stream:
            route.stream = None
            if route.queue:
                outputs += self._drop(route.key, "stream_closed", len(route.queue), now, why=why)
                route.queue.clear()
                route.queued_bytes = 0
                self._busy.discard(route)
        self.streams -= 1
        self._account(stream, -stream.allocation)
        stream.allocation = 0
        return outputs

    def _free_bandwidth(self, route: _Route, stream: _Stream | None) -> int:
        own = stream.allocation if stream is not None else 0
        client = route.client
        client_free = client.max_bandwidth - (self.client_allocated.get(client.client_id, 0) - own)
        total_free = self.config.max_bandwidth - (self.allocated - own)
        return max(0, min(client_free, total_free))

    def _account(self, stream: _Stream, delta: int) -> None:
        client_id = stream.route.client.client_id
        self.allocated += delta
        self.client_allocated[client_id] = self.client_allocated.get(client_id, 0) + delta

    def _allocate(self, stream: _Stream, requested: int | None, now: float) -> int:
        if requested is None:
            return stream.allocation
        route = stream.route
        grant = max(0, min(requested, route.config.max_bandwidth, self._free_bandwidth(route, stream)))
        raised = grant > stream.allocation
        self._account(stream, grant - stream.allocation)
        stream.allocation = grant
        rate = kbit_to_bytes(grant)
        # a raised allocation starts with its full burst allowance
        stream.ingress.set_rate(rate, self._ingress_depth(rate), now, floor=-float(self.config.queue_bytes), fill=raised)
        if route.egress is not None and route.stream is stream:
            route.egress.set_rate(rate, rate * self.config.egress_burst, now)
        return grant

    # -- introspection -----------------------------------------------------------------------

    def route_stats(self, key: RouteKey) -> dict[str, int]:
        """Counters of one route (for tests, benchmarks and logs)."""
        r = self.routes[key]
        return {
            "datagrams_in": r.datagrams_in,
            "bytes_in": r.bytes_in,
            "datagrams_out": r.datagrams_out,
            "bytes_out": r.bytes_out,
            "queued": len(r.queue),
            "allocation": r.stream.allocation if r.stream is not None else 0,
        }


class State(enum.Enum):
    NO_CHANNEL = "NO_CHANNEL"
    CHANNEL_OPEN = "CHANNEL_OPEN"


class MuxConnection:
    """The MUX end of one TCP connection (one data channel)."""

    def __init__(self, core: MuxCore) -> None:
        self.core = core
        self.config = core.config
        self.state = State.NO_CHANNEL
        self.client: ClientConfig | None = None
        self.channel_id: int | None = None
        self.version: int | None = None
        self.streams: dict[int, _Stream] = {}
        self.invalid_in_a_row = 0
        self._now = 0.0
        self._handlers: dict[type[Message], Callable[[Message, float], list[Output]]] = {
            m.ChannelSetup: self._channel_setup,
            m.ChannelTest: self._channel_test,
            m.ChannelClose: self._channel_close,
            m.StreamSetup: self._stream_setup,
            m.StreamTest: self._stream_test,
            m.StreamCloseRequest: self._stream_close_request,
            m.StreamBWRequest: self._stream_bw_request,
            m.DataProvision: self._data_provision,
            m.ChannelStatus: self._peer_status,
            m.StreamStatus: self._peer_status,
            m.ChannelError: self._peer_error,
            m.StreamError: self._peer_error,
            m.StreamCloseResponse: self._wrong_direction,
            m.StreamBWAllocation: self._wrong_direction,
        }

    @property
    def client_id(self) -> int | None:
        return self.client.client_id if self.client is not None else None

    # -- inputs ------------------------------------------------------------------------------

    def receive(self, item: Message | PeerProtocolError, now: float) -> list[Output]:
        """Handle one decoded message from the TCP connection (or the codec's error for one)."""
        self._now = now
        if isinstance(item, PeerProtocolError):
            channel = item.channel_id if item.channel_id is not None else self.channel_id or 0
            return self._invalid(
                self._channel_error(item.error_status, item.error_information, channel_id=channel, version=item.protocol_version),
                "decode_error",
                error_status=item.error_status,
                detail=item.detail,
            )
        if self.version is not None and item.protocol_version != self.version:
            return self._invalid(
                self._channel_error(UNSUPPORTED_VERSION, 0, channel_id=self._channel_of(item)),
                "version_mismatch",
                message_version=item.protocol_version,
            )
        return self._handlers[type(item)](item, now)

    def connection_lost(self, now: float) -> list[Output]:
        """Free the channel and its streams (digest §6.5); UDP for them is refused from now on."""
        if self.state is State.CHANNEL_OPEN:
            return self._free_channel("connection_lost", now)
        return []

    # -- channel messages --------------------------------------------------------------------

    def _channel_setup(self, msg: m.ChannelSetup, now: float) -> list[Output]:
        ch = msg.data_channel_id
        if self.state is State.CHANNEL_OPEN:
            code = CHANNEL_ID_IN_USE if ch == self.channel_id else TOO_MANY_CHANNELS
            return self._invalid(self._channel_error(code, channel_id=ch, client_id=msg.client_id), "second_channel_setup")
        core, config = self.core, self.config
        version = msg.protocol_version
        code = info = None
        client = config.clients.get(msg.client_id)
        if version not in config.versions:
            code, info = UNSUPPORTED_VERSION, 0
        elif client is None:
            code, info = UNKNOWN_CLIENT, 0x0001
        elif msg.section_TSpkt_flag != SectionTSpktFlag.BCAST:
            code, info = INVALID_VALUE, 0x0002
        elif (msg.client_id, ch) in core.channels:
            code = CHANNEL_ID_IN_USE
        elif core.client_channels.get(msg.client_id, 0) >= client.max_channels:
            code = CLIENT_ID_IN_USE
        elif len(core.channels) >= config.max_channels:
            code = TOO_MANY_CHANNELS
        if code is not None:
            return self._invalid(
                self._channel_error(code, info, channel_id=ch, client_id=msg.client_id, version=version),
                "channel_refused",
                error_status=code,
                client_id=msg.client_id,
            )
        core.channels[(msg.client_id, ch)] = self
        core.client_channels[msg.client_id] = core.client_channels.get(msg.client_id, 0) + 1
        self.state = State.CHANNEL_OPEN
        self.client, self.channel_id, self.version = client, ch, version
        return self._ok(
            Send(self._channel_status()),
            Notify("channel_open", {"channel_id": ch, "client_id": msg.client_id, "version": version}),
        )

    def _own_channel(self, msg: Message) -> list[Output] | None:
        if self.state is not State.CHANNEL_OPEN or msg.data_channel_id != self.channel_id:
            return self._invalid(
                self._channel_error(UNKNOWN_CHANNEL, channel_id=msg.data_channel_id, client_id=msg.client_id),
                "unknown_channel",
            )
        if msg.client_id != self.client_id:
            return self._invalid(self._channel_error(UNKNOWN_CLIENT, 0x0001, client_id=msg.client_id), "wrong_client_id")
        return None

    def _channel_test(self, msg: m.ChannelTest, _now: float) -> list[Output]:
        return self._own_channel(msg) or self._ok(Send(self._channel_status()))

    def _channel_close(self, msg: m.ChannelClose, now: float) -> list[Output]:
        refused = self._own_channel(msg)
        if refused:
            return refused
        self.invalid_in_a_row = 0
        return self._free_channel("channel_close", now)

    def _channel_status(self) -> m.ChannelStatus:
        return m.ChannelStatus(
            protocol_version=self.version,
            client_id=self.client_id,
            data_channel_id=self.channel_id,
            section_TSpkt_flag=SectionTSpktFlag.BCAST,
        )

    def _free_channel(self, why: str, now: float) -> list[Output]:
        core = self.core
        outputs: list[Output] = []
        for stream in self.streams.values():
            outputs += core._close_stream(stream, now, why)
        count = len(self.streams)
        self.streams.clear()
        core.channels.pop((self.client_id, self.channel_id), None)
        core.client_channels[self.client_id] -= 1
        core._udp_reported.pop(self, None)
        outputs.append(
            Notify("channel_closed", {"channel_id": self.channel_id, "client_id": self.client_id, "why": why, "streams": count})
        )
        self.state = State.NO_CHANNEL
        self.client = self.channel_id = self.version = None
        return outputs

    # -- stream messages ---------------------------------------------------------------------

    def _stream_channel(self, msg: Message) -> list[Output] | None:
        """A stream-level message must name our channel (else stream_error 0x0006) and client."""
        if self.state is not State.CHANNEL_OPEN or msg.data_channel_id != self.channel_id:
            return self._invalid(
                self._stream_error(
                    msg.data_stream_id, UNKNOWN_CHANNEL, channel_id=msg.data_channel_id, client_id=msg.client_id,
                    version=msg.protocol_version,
                ),
                "unknown_channel",
            )
        if msg.client_id != self.client_id:
            return self._invalid(
                self._stream_error(msg.data_stream_id, UNKNOWN_CLIENT, 0x0001, client_id=msg.client_id), "wrong_client_id"
            )
        return None

    def _known_stream(self, msg: Message) -> tuple[_Stream | None, list[Output] | None]:
        refused = self._stream_channel(msg)
        if refused:
            return None, refused
        stream = self.streams.get(msg.data_stream_id)
        if stream is None:
            return None, self._invalid(self._stream_error(msg.data_stream_id, UNKNOWN_STREAM), "unknown_stream")
        return stream, None

    def _stream_setup(self, msg: m.StreamSetup, now: float) -> list[Output]:
        refused = self._stream_channel(msg)
        if refused:
            return refused
        core, config = self.core, self.config
        route = core.routes.get((self.client_id, msg.data_id))
        code = info = None
        if msg.data_stream_id in self.streams:
            code = STREAM_ID_IN_USE
        elif route is None:
            code, info = UNKNOWN_DATA_ID, 0x0008
        elif msg.data_type != route.config.kind.data_type:
            code, info = INVALID_VALUE, 0x0007
        elif route.stream is not None:
            code, info = DATA_ID_IN_USE, 0x0008
        elif len(self.streams) >= config.max_streams_per_channel:
            code = TOO_MANY_STREAMS_CHANNEL
        elif core.streams >= config.max_streams:
            code = TOO_MANY_STREAMS_MUX
        if code is not None:
            return self._invalid(
                self._stream_error(msg.data_stream_id, code, info), "stream_refused", error_status=code, data_id=msg.data_id
            )
        stream = _Stream(
            connection=self,
            channel_id=self.channel_id,
            stream_id=msg.data_stream_id,
            data_id=msg.data_id,
            data_type=msg.data_type,
            route=route,
        )
        self.streams[stream.stream_id] = stream
        core._open_stream(stream, now)
        return self._ok(
            Send(self._stream_status(stream)),
            Notify(
                "stream_open",
                {
                    "channel_id": self.channel_id,
                    "stream_id": stream.stream_id,
                    "client_id": self.client_id,
                    "data_id": stream.data_id,
                    "kind": route.config.kind.value,
                    "allocation": stream.allocation,
                },
            ),
        )

    def _stream_status(self, stream: _Stream) -> m.StreamStatus:
        return m.StreamStatus(
            protocol_version=self.version,
            client_id=self.client_id,
            data_channel_id=self.channel_id,
            data_stream_id=stream.stream_id,
            data_id=stream.data_id,
            data_type=stream.data_type,
        )

    def _stream_test(self, msg: m.StreamTest, _now: float) -> list[Output]:
        stream, refused = self._known_stream(msg)
        return refused or self._ok(Send(self._stream_status(stream)))

    def _stream_close_request(self, msg: m.StreamCloseRequest, now: float) -> list[Output]:
        stream, refused = self._known_stream(msg)
        if refused:
            return refused
        del self.streams[stream.stream_id]
        outputs = self.core._close_stream(stream, now, "stream_close_request")
        return self._ok(
            Send(
                m.StreamCloseResponse(
                    protocol_version=self.version,
                    client_id=self.client_id,
                    data_channel_id=self.channel_id,
                    data_stream_id=stream.stream_id,
                )
            ),
            *outputs,
            Notify("stream_closed", {"channel_id": self.channel_id, "stream_id": stream.stream_id, "data_id": stream.data_id}),
        )

    def _stream_bw_request(self, msg: m.StreamBWRequest, now: float) -> list[Output]:
        stream, refused = self._known_stream(msg)
        if refused:
            return refused
        grant = self.core._allocate(stream, msg.bandwidth, now)
        return self._ok(
            Send(
                m.StreamBWAllocation(
                    protocol_version=self.version,
                    client_id=self.client_id,
                    data_channel_id=self.channel_id,
                    data_stream_id=stream.stream_id,
                    bandwidth=grant,
                )
            ),
            Notify(
                "bandwidth_allocated",
                {"stream_id": stream.stream_id, "data_id": stream.data_id, "requested": msg.bandwidth, "allocation": grant},
            ),
        )

    def _data_provision(self, msg: m.DataProvision, now: float) -> list[Output]:
        core = self.core
        count = len(msg.datagram)
        if self.state is not State.CHANNEL_OPEN or (msg.data_channel_id is not None and msg.data_channel_id != self.channel_id):
            if msg.data_stream_id is not None:
                reply = self._stream_error(
                    msg.data_stream_id, UNKNOWN_CHANNEL, channel_id=msg.data_channel_id or 0, client_id=msg.client_id,
                    version=msg.protocol_version,
                )
            else:
                reply = self._channel_error(
                    UNKNOWN_CHANNEL, channel_id=msg.data_channel_id or 0, client_id=msg.client_id, version=msg.protocol_version
                )
            return self._refused(reply, "data_before_setup", count, now, None)
        if msg.client_id != self.client_id:
            reply = (
                self._stream_error(msg.data_stream_id, UNKNOWN_CLIENT, 0x0001, client_id=msg.client_id)
                if msg.data_stream_id is not None
                else self._channel_error(UNKNOWN_CLIENT, 0x0001, client_id=msg.client_id)
            )
            return self._refused(reply, "wrong_client_id", count, now, None)
        if msg.data_stream_id is not None:
            stream = self.streams.get(msg.data_stream_id)
            if stream is None:
                return self._refused(self._stream_error(msg.data_stream_id, UNKNOWN_STREAM), "unknown_stream", count, now, None)
            if stream.data_id != msg.data_id:
                return self._refused(
                    self._stream_error(stream.stream_id, UNKNOWN_DATA_ID, 0x0008), "wrong_data_id", count, now, stream
                )
        else:
            stream = next((s for s in self.streams.values() if s.data_id == msg.data_id), None)
            if stream is None:
                return self._refused(self._channel_error(UNKNOWN_DATA_ID, 0x0008), "unknown_data_id", count, now, None)
        self.invalid_in_a_row = 0
        return core.ingest(stream, msg.datagram, now, tcp=True)

    def _refused(self, reply: Message, event: str, count: int, now: float, stream: _Stream | None) -> list[Output]:
        route = stream.route.key if stream is not None else None
        return self._invalid(reply, event) + self.core._drop(route, "refused", count, now, client_id=self.client_id)

    # -- messages a MUX only takes note of ---------------------------------------------------

    def _peer_status(self, msg: Message, _now: float) -> list[Output]:
        return self._ok(Notify("peer_status", {"message_type": msg.NAME}, "debug"))

    def _peer_error(self, msg: m.ChannelError | m.StreamError, _now: float) -> list[Output]:
        return self._ok(
            Notify(
                "peer_error",
                {
                    "message_type": msg.NAME,
                    "channel_id": msg.data_channel_id,
                    "stream_id": getattr(msg, "data_stream_id", None),
                    "error_status": list(msg.error_status),
                },
                "warn",
            )
        )

    def _wrong_direction(self, msg: Message, _now: float) -> list[Output]:
        return self._invalid(
            self._channel_error(INVALID_MESSAGE, 1, channel_id=self._channel_of(msg)), "wrong_direction", message_type=msg.NAME
        )

    # -- helpers -----------------------------------------------------------------------------

    def _channel_of(self, msg: Message) -> int:
        return getattr(msg, "data_channel_id", None) or self.channel_id or 0

    def _reply_version(self, hint: int | None) -> int:
        if self.version is not None:
            return self.version
        if hint in self.config.versions:
            return hint
        return max(self.config.versions)

    def _channel_error(
        self, code: int, info: int | None = None, *, channel_id: int | None = None, client_id: int | None = None,
        version: int | None = None,
    ) -> m.ChannelError:
        return m.ChannelError(
            protocol_version=self._reply_version(version),
            client_id=(client_id if client_id is not None else self.client_id or 0) & 0xFFFFFFFF,
            data_channel_id=(channel_id if channel_id is not None else self.channel_id or 0) & 0xFFFF,
            error_status=(code,),
            error_information=error_information(info),
        )

    def _stream_error(
        self, stream_id: int, code: int, info: int | None = None, *, channel_id: int | None = None,
        client_id: int | None = None, version: int | None = None,
    ) -> m.StreamError:
        return m.StreamError(
            protocol_version=self._reply_version(version),
            client_id=(client_id if client_id is not None else self.client_id or 0) & 0xFFFFFFFF,
            data_channel_id=(channel_id if channel_id is not None else self.channel_id or 0) & 0xFFFF,
            data_stream_id=stream_id,
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
            Notify(
                event,
                {
                    "channel_id": getattr(reply, "data_channel_id", None),
                    "client_id": getattr(reply, "client_id", None),
                    "error_status": reply.error_status[0],
                    **fields,
                },
                "warn",
            ),
        ]
        limit = self.config.max_invalid_messages
        if limit and self.invalid_in_a_row >= limit:
            outputs += self.connection_lost(self._now)
            outputs.append(Close(f"{self.invalid_in_a_row} invalid messages in a row"))
        return outputs


__all__ = [
    "ClientConfig",
    "Deliver",
    "Emit",
    "MAX_UDP_PAYLOAD",
    "MuxConfig",
    "MuxConnection",
    "MuxCore",
    "RouteConfig",
    "RouteKind",
    "State",
    "UnknownRoute",
]
