"""The MUX core: routes, channel and stream registries, bandwidth, LTKM queues, STKM carousels, UDP.

TS 103 197 §6 (digest ``simulcrypt.md`` §4, §5.2, §6.3-§6.5); OMA BCAST SP-4 seed §14.1.1.3.4-.5.
One :class:`MuxCore` per MUX process; the per-connection rules are :mod:`.connection`'s, which
reaches the core only through its public registry API (:meth:`MuxCore.channel_refusal`,
:meth:`~MuxCore.open_channel`, :meth:`~MuxCore.close_channel`, :meth:`~MuxCore.open_stream`,
:meth:`~MuxCore.close_stream`, :meth:`~MuxCore.allocate`, :meth:`~MuxCore.ingest`,
:meth:`~MuxCore.drop`); the UDP input (:mod:`.udp`) answers UDP errors with the owning
connection's public :meth:`~bcast_sp4.machines.channel.ServerChannel.channel_error` /
``stream_error`` (found by :meth:`~MuxCore.connection_of`). The records the core keeps and
emits (:class:`Emit`, :class:`MuxStream`, :class:`MuxRoute`, ...) are in :mod:`.records`; both
modules' names are re-exported here.

UDP ``data_provision`` (digest §4.5): accepted only for a stream set up over TCP, found by
``client_id`` + ``data_id``, and only from a source address allowed for that client_id (its
configured ``udp_sources``, else the addresses of its TCP channels: :class:`.limits.UdpSources`;
others are dropped, counted ``udp_source`` and never reported); ``data_channel_id`` /
``data_stream_id`` are optional and must match when present. Anything else is dropped, counted and
logged; when the client_id has an open channel,
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
allocation (:mod:`..pacing`). Ingress is policed by a second bucket at the same rate with
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
stays on air when its stream or connection goes away (TSDuck's degraded mode: last ECM kept), but
only for ``stkm_sender_grace``; the bounds of :mod:`.limits` apply to every set: datagrams per
message and STKM size (refused with 0x0004 / 0x000D), repetition never above the route's bandwidth
(repeated more slowly, 0x000F), validity (an in-process ``valid_until``, ``stkm_max_age``).
:meth:`MuxCore.submit_stkm` is the in-process path for a co-located SCS: same carousel, with
``on_air_from`` scheduling the switch and an optional ``repetition_ms`` (the ECMG's ECM_rep_period
as the SCS knows it) replacing the route's configured period from that switch on; at most
``max_pending_stkms`` future switches per route; of several due at once the newest wins, the
others count as superseded (:mod:`..stkm_schedule`).
STKM ingress is not policed: the carousel, not the sender, sets the egress rate.

Drops: every datagram that arrives and is not emitted is counted under a reason and logged
(:mod:`.drops`); ``refused`` is a data_provision answered with an error.

An exception escaping the UDP input or :meth:`MuxCore.tick` (our bug) is caught there: counted
(``internal_errors``), notified ``internal_error``, the datagram dropped; the MUX goes on. TCP
input is guarded by the server channel (:mod:`bcast_sp4.machines.channel`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from ...wire import Message, PeerProtocolError
from ...wire import emmg_mux as m
from ...wire.errors import EMMGMUXErrorStatus as ErrorStatus
from ...wire.params import EMMG_MUX_PARAMS, SectionTSpktFlag
from ..channel import error_information, internal_error
from ..outputs import Notify, Output, Send
from ..pacing import TokenBucket, kbit_to_bytes
from ..stkm_schedule import DUE_EPSILON, STKMSchedule
from . import classic
from .config import ClientConfig, MuxConfig, RouteKey, RouteKind
from .drops import DropLog
from .limits import UdpSources, min_gap, stkm_refusal
from .records import Deliver, Emit, EmitMany, MuxRoute, MuxStream, UnknownRoute
from .udp import UdpIngress

if TYPE_CHECKING:
    from .connection import MuxConnection

# error_information: the offending parameter_type (digest §5.3)
_DATAGRAM = EMMG_MUX_PARAMS["datagram"].code


class MuxCore:
    """What all connections of one MUX share; also the UDP and in-process (co-located SCS) inputs.

    Read-only for others: :attr:`routes`, :attr:`channels` ((client_id, data_channel_id) -> the
    owning connection), :attr:`client_channels`, :attr:`streams` (how many are open),
    :attr:`allocated`, :attr:`client_allocated`, :attr:`counters`, :attr:`dropped`.
    """

    def __init__(self, config: MuxConfig) -> None:
        self.config = config
        self.routes: dict[RouteKey, MuxRoute] = {}
        for client in config.clients.values():
            for route in client.routes.values():
                key = (client.client_id, route.data_id)
                self.routes[key] = MuxRoute(
                    config=route, client=client, key=key, period=route.repetition_period / 1000.0,
                    pending=STKMSchedule(config.max_pending_stkms),
                )
        self.channels: dict[tuple[int, int], MuxConnection] = {}  # (client_id, channel_id) -> owner
        self.client_channels: dict[int, int] = {}
        self.streams = 0
        self.allocated = 0  # kbit/s, all streams
        self.client_allocated: dict[int, int] = {}
        self.dirty = False
        self._busy: set[MuxRoute] = set()  # LTKM routes with a queue
        self._carousels: set[MuxRoute] = set()  # STKM routes with a current set or pending ones
        self._drops = DropLog(config.drop_log_interval)
        self.udp_sources = UdpSources(config.limits.udp_sources)
        #: counters: message and datagram totals, and drops by reason
        names = ("data_provisions", "datagrams_in", "bytes_in", "datagrams_out", "bytes_out", "udp_messages", "overruns",
                 "stkm_refused", "stkm_stretched", "stkm_stopped", "internal_errors")
        self.counters: dict[str, int] = dict.fromkeys(names, 0)
        #: the UDP input (:mod:`.udp`); its entries are the ``receive_udp*`` methods below
        self.udp = UdpIngress(self)

    @property
    def dropped(self) -> dict[str, int]:
        """Datagrams dropped so far, by reason."""
        return self._drops.counts

    # -- channel and stream registries (the connections' API) ---------------------------------

    def channel_refusal(self, client: ClientConfig, channel_id: int) -> int | None:
        """The error_status refusing a new channel of *client*, or ``None`` when it may open."""
        if (client.client_id, channel_id) in self.channels:
            return ErrorStatus.DATA_CHANNEL_ID_IN_USE
        if self.client_channels.get(client.client_id, 0) >= client.max_channels:
            return ErrorStatus.CLIENT_ID_IN_USE
        if len(self.channels) >= self.config.max_channels:
            return ErrorStatus.TOO_MANY_CHANNELS_ON_MUX
        return None

    def open_channel(self, connection: MuxConnection, client_id: int, channel_id: int) -> None:
        """Register *connection* as the owner of (client_id, channel_id)."""
        self.channels[(client_id, channel_id)] = connection
        self.client_channels[client_id] = self.client_channels.get(client_id, 0) + 1
        self.udp_sources.opened(client_id, connection.peer_host)

    def close_channel(self, connection: MuxConnection, client_id: int, channel_id: int) -> None:
        """Forget the channel of *connection* (its streams are closed first, one by one)."""
        self.channels.pop((client_id, channel_id), None)
        self.client_channels[client_id] -= 1
        self.udp.forget(connection)
        self.udp_sources.closed(client_id, connection.peer_host)

    def connection_of(self, client_id: int | None) -> MuxConnection | None:
        """A connection holding a channel of *client_id* (where UDP errors are reported), or ``None``."""
        if client_id is None or not self.client_channels.get(client_id):
            return None
        for (cid, _ch), connection in self.channels.items():
            if cid == client_id:
                return connection
        return None

    def open_stream(
        self, connection: MuxConnection, channel_id: int, stream_id: int, data_id: int, data_type: int, route: MuxRoute,
        now: float,
    ) -> MuxStream:
        """Open a stream of *connection* on *route* (free: checked by the caller) with its default allocation."""
        stream = MuxStream(
            connection=connection, channel_id=channel_id, stream_id=stream_id, data_id=data_id, data_type=data_type, route=route
        )
        route.stream = stream
        route.sender_gone_at = None
        self.streams += 1
        config = self.config
        free = self._free_bandwidth(route, None)
        stream.allocation = min(route.config.default_bandwidth, route.config.max_bandwidth, free)
        self._account(stream, stream.allocation)
        rate = kbit_to_bytes(stream.allocation)
        stream.ingress = TokenBucket(
            rate=rate, depth=self._ingress_depth(rate), tokens=self._ingress_depth(rate), stamp=now, floor=-float(config.queue_bytes)
        )
        if route.config.kind.queued:
            route.egress = TokenBucket(rate=rate, depth=rate * config.egress_burst, tokens=0.0, stamp=now)
        return stream

    def close_stream(self, stream: MuxStream, now: float, why: str) -> list[Output]:
        """Close *stream*: its allocation is freed, what its LTKM route still queues is dropped (counted)."""
        route = stream.route
        outputs: list[Output] = []
        if route.stream is stream:
            route.stream = None
            route.sender_gone_at = now if now is not None else route.last_emit or 0.0
            if route.queue:
                outputs += self.drop(route.key, "stream_closed", len(route.queue), now, why=why)
                route.queue.clear()
                route.queued_bytes = 0
                self._busy.discard(route)
        self.streams -= 1
        self._account(stream, -stream.allocation)
        stream.allocation = 0
        return outputs

    def allocate(self, stream: MuxStream, requested: int | None, now: float) -> int:
        """Grant *stream* what it asks within every limit (see the module docstring); ``None`` asks nothing."""
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

    def drop(self, route: RouteKey | None, reason: str, count: int, now: float, **fields: Any) -> list[Output]:
        """Count *count* datagrams dropped for *reason*; log the first at once, then summaries."""
        return self._drops.drop(route, reason, count, now, **fields)

    def _ingress_depth(self, rate: float) -> float:
        return rate * self.config.ingress_burst

    def _free_bandwidth(self, route: MuxRoute, stream: MuxStream | None) -> int:
        own = stream.allocation if stream is not None else 0
        client = route.client
        client_free = client.max_bandwidth - (self.client_allocated.get(client.client_id, 0) - own)
        total_free = self.config.max_bandwidth - (self.allocated - own)
        return max(0, min(client_free, total_free))

    def _account(self, stream: MuxStream, delta: int) -> None:
        client_id = stream.route.client.client_id
        self.allocated += delta
        self.client_allocated[client_id] = self.client_allocated.get(client_id, 0) + delta

    # -- data path ---------------------------------------------------------------------------

    def ingest(self, stream: MuxStream, datagrams: tuple[bytes, ...], now: float, *, tcp: bool) -> list[Output]:
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
            outputs += self.drop(route.key, "too_long", len(long), now, max_datagram_size=limit)
            too_long = {"error_status": (ErrorStatus.INVALID_VALUE,), "error_information": error_information(_DATAGRAM)}
            outputs.append(self._to_stream(stream, m.StreamError, tcp, **too_long))
            if not datagrams:
                return outputs
            count = len(datagrams)
        if stream.section_TSpkt_flag != SectionTSpktFlag.BCAST:
            datagrams, bad, fault = classic.screen(stream.section_TSpkt_flag, datagrams)
            if bad:
                outputs += self.drop(route.key, "bad_format", bad, now, section_TSpkt_flag=stream.section_TSpkt_flag,
                                     fault=fault)
                invalid = {"error_status": (ErrorStatus.INVALID_VALUE,), "error_information": error_information(_DATAGRAM)}
                outputs.append(self._to_stream(stream, m.StreamError, tcp, **invalid))
                if not datagrams:
                    return outputs
                count, size = len(datagrams), sum(map(len, datagrams))
        if route.config.kind is RouteKind.STKM:
            refused = stkm_refusal(config.limits, datagrams)
            if refused is not None:
                what, code = refused
                counters["stkm_refused"] += 1
                reply = {"error_status": (code,), "error_information": error_information(_DATAGRAM)}
                outputs.append(self._to_stream(stream, m.StreamError, tcp, **reply))
                return outputs + self.drop(route.key, "stkm_limit", count, now, limit=what, stream_id=stream.stream_id)
            outputs += self._replace_stkm(route, datagrams, now, stream=stream, tcp=tcp)
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
                outputs.append(self._to_stream(stream, m.StreamError, tcp, error_status=(ErrorStatus.EXCEEDED_BANDWIDTH,)))
                fields = {"client_id": route.key[0], "data_id": route.key[1], "stream_id": stream.stream_id,
                          "allocation": stream.allocation, "overruns": stream.overruns}
                outputs.append(Notify("exceeded_bandwidth", fields, "warn"))
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
            outputs += self.drop(
                route.key, "queue_full", len(datagrams) - accepted, now, queued=len(queue), allocation=stream.allocation
            )
        if accepted:
            self._busy.add(route)
            self.dirty = True
        return outputs

    def ingest_run(self, stream: MuxStream, datagrams: Sequence[bytes], now: float) -> list[Output] | None:
        """:meth:`ingest` of several accepted TCP data_provisions of *stream*, one datagram each, at once.

        Only unthrottled, on an LTKM or data route of a BCAST channel, with every datagram within
        ``max_datagram_size``: counted as that many data_provisions and emitted as one
        :class:`EmitMany` (in order). Anything else (policing, queues, the STKM carousel, classic
        screening): ``None``, and the caller ingests them one by one.
        """
        route = stream.route
        config = self.config
        if not (config.unthrottled and route.config.kind is not RouteKind.STKM
                and stream.section_TSpkt_flag == SectionTSpktFlag.BCAST and max(map(len, datagrams)) <= config.max_datagram_size):
            return None
        return [self.pass_through(route, datagrams)]

    def pass_through(self, route: MuxRoute, datagrams: Sequence[bytes]) -> EmitMany:
        """Count *datagrams*, each one accepted data_provision of *route*, as taken in and sent on at
        once (``unthrottled``); the :class:`EmitMany` that sends them, in order."""
        count, size = len(datagrams), sum(map(len, datagrams))
        counters = self.counters
        counters["data_provisions"] += count
        counters["datagrams_in"] += count
        counters["bytes_in"] += size
        counters["datagrams_out"] += count
        counters["bytes_out"] += size
        route.datagrams_in += count
        route.bytes_in += size
        route.datagrams_out += count
        route.bytes_out += size
        return EmitMany(route.key, tuple(datagrams))

    def _replace_stkm(
        self, route: MuxRoute, datagrams: tuple[bytes, ...], now: float, period: float | None = None,
        valid_until: float | None = None, stream: MuxStream | None = None, tcp: bool = True,
    ) -> list[Output]:
        outputs: list[Output] = []
        if route.current and not route.current_emitted:
            outputs += self.drop(route.key, "superseded", len(route.current), now)
        route.current = tuple(datagrams)
        route.current_emitted = False
        route.current_since, route.valid_until = now, valid_until
        if period is not None:
            route.period = period
        period = route.period
        route.gap = min_gap(route, datagrams)
        if route.gap > period:  # repeated at the route's bandwidth, not faster (.limits)
            self.counters["stkm_stretched"] += 1
            fields = {"client_id": route.key[0], "data_id": route.key[1], "bytes": sum(map(len, datagrams)),
                      "period_ms": round(period * 1000.0, 1), "stretched_ms": round(route.gap * 1000.0, 1)}
            outputs.append(Notify("stkm_exceeds_bandwidth", fields, "warn"))
            if stream is not None:
                outputs.append(self._to_stream(stream, m.StreamError, tcp, error_status=(ErrorStatus.EXCEEDED_BANDWIDTH,)))
        soonest = now if route.last_emit is None else max(now, route.last_emit + period / 4, route.free_at)
        route.next_emit = soonest if route.next_emit is None else min(route.next_emit, soonest)
        self._carousels.add(route)
        self.dirty = True
        return outputs

    def _stkm_expiry(self, route: MuxRoute, now: float) -> str | None:
        """Why the current STKM set of *route* must stop repeating at *now*, or ``None`` (.limits)."""
        limits = self.config.limits
        if route.sender_gone_at is not None and now >= route.sender_gone_at + limits.stkm_sender_grace - DUE_EPSILON:
            return "sender_gone"
        if route.valid_until is not None and now >= route.valid_until - DUE_EPSILON:
            return "validity_ended"
        if limits.stkm_max_age and now >= route.current_since + limits.stkm_max_age - DUE_EPSILON:
            return "max_age"
        return None

    def _stop_stkm(self, route: MuxRoute, why: str, now: float) -> list[Output]:
        count = len(route.current)
        route.current, route.next_emit, route.valid_until = (), None, None
        if not route.pending:
            self._carousels.discard(route)
        self.counters["stkm_stopped"] += 1
        fields = {"client_id": route.key[0], "data_id": route.key[1], "why": why, "datagrams": count}
        return [Notify("stkm_stopped", fields, "warn")]

    def submit_stkm(
        self, super_cas_id: int, ecm_id: int, stkm: bytes, on_air_from: float | None, now: float,
        repetition_ms: int | None = None, valid_until: float | None = None,
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
        :param valid_until: when this STKM's crypto-period ends: its repetition stops then unless
            a newer STKM replaced it (``None``: the ``stkm_max_age`` limit only).
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
        route.sender_gone_at = None
        self.counters["datagrams_in"] += 1
        self.counters["bytes_in"] += len(stkm)
        if on_air_from is None or on_air_from <= now:
            return self._replace_stkm(route, (stkm,), now, period, valid_until)
        if not route.pending.add(on_air_from, ((stkm,), period, valid_until)):
            return self.drop(route.key, "pending_overflow", 1, now, pending=len(route.pending))
        self._carousels.add(route)
        self.dirty = True
        return []

    def tick(self, now: float) -> list[Output]:
        """Emit what is due at *now*: paced LTKMs, STKM repetitions and switches, drop summaries.

        An exception (our bug) is notified as ``internal_error`` and counted; the next tick runs as usual.
        """
        try:
            return self._tick(now)
        except Exception as exc:
            self.dirty = False
            self.counters["internal_errors"] += 1
            return [internal_error("tick", exc)]

    def _tick(self, now: float) -> list[Output]:
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
            if pending.is_due(now):
                newest, superseded = pending.take_due(now)
                for datagrams, _period, _valid in superseded:
                    outputs += self.drop(route.key, "superseded", len(datagrams), now)
                datagrams, period, valid_until = newest
                outputs += self._replace_stkm(route, datagrams, now, period, valid_until)
            if route.current and route.next_emit is not None and route.next_emit <= now + DUE_EPSILON:
                why = self._stkm_expiry(route, now)
                if why is not None:
                    outputs += self._stop_stkm(route, why, now)
                    continue
                period = max(route.period, route.gap)
                for d in route.current:
                    outputs.append(Emit(route.key, d))
                    route.datagrams_out += 1
                    route.bytes_out += len(d)
                    counters["datagrams_out"] += 1
                    counters["bytes_out"] += len(d)
                route.current_emitted = True
                route.last_emit = now
                route.free_at = now + route.gap
                following = route.next_emit + period
                route.next_emit = following if following > now else now + period
            if not route.current and not pending:
                self._carousels.discard(route)
        drops_due = self._drops.due
        if drops_due is not None and drops_due <= now + DUE_EPSILON:
            outputs += self._drops.flush(now)
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
            switch = route.pending.next_due()
            if switch is not None:
                best = min(best, switch)
        if self._drops.due is not None:
            best = min(best, self._drops.due)
        return None if best == math.inf else max(best, now)

    def egress_failed(self, route: RouteKey, reason: str, now: float) -> list[Output]:
        """The adapter could not send one datagram of *route* (socket error): count and log it."""
        self.counters["datagrams_out"] -= 1
        known = self.routes.get(route)
        if known is not None:
            known.datagrams_out -= 1
        return self.drop(route, "egress_error", 1, now, error=reason)

    # -- UDP input (:mod:`.udp`) ---------------------------------------------------------------

    def receive_udp(self, item: Message | PeerProtocolError, now: float, source: str | None = None) -> list[Output]:
        """One UDP datagram from an EMMG: :meth:`.udp.UdpIngress.receive_udp`."""
        return self.udp.receive_udp(item, now, source)

    def receive_udp_fast(
        self, version: int, client_id: int, data_id: int, datagram: bytes, now: float, source: str | None = None
    ) -> list[Output] | None:
        """The usual UDP shape, already taken apart: :meth:`.udp.UdpIngress.receive_udp_fast`."""
        return self.udp.receive_udp_fast(version, client_id, data_id, datagram, now, source)

    def receive_udp_batch(
        self, items: list[tuple[int, int, int, bytes, str | None]], now: float
    ) -> tuple[list[Output], int]:
        """Many usual UDP datagrams in one call: :meth:`.udp.UdpIngress.receive_udp_batch`."""
        return self.udp.receive_udp_batch(items, now)

    def receive_udp_runs(
        self, runs: list[tuple[int, int, int, str | None, Sequence[bytes]]], now: float
    ) -> tuple[list[Output], int]:
        """Runs of usual UDP datagrams with one header and sender each: :meth:`.udp.UdpIngress.receive_udp_runs`."""
        return self.udp.receive_udp_runs(runs, now)

    def _to_stream(self, stream: MuxStream, cls: type, tcp: bool, **fields) -> Output:
        message = cls(
            protocol_version=stream.connection.version,
            client_id=stream.route.key[0],
            data_channel_id=stream.channel_id,
            data_stream_id=stream.stream_id,
            **fields,
        )
        return Send(message) if tcp else Deliver(stream.connection, message)

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


__all__ = ["Deliver", "Emit", "EmitMany", "MuxCore", "MuxRoute", "MuxStream", "UnknownRoute"]
