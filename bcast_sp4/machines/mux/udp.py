"""The MUX's UDP input: data_provision datagrams from EMMGs, judged, answered and handed to the core.

TS 103 197 §6 (digest ``simulcrypt.md`` §4.5, §5.2): the rules are in :mod:`.core`'s docstring (UDP
``data_provision``). One :class:`UdpIngress` per :class:`~.core.MuxCore`, which creates it and
exposes its entries as its own methods (:meth:`~.core.MuxCore.receive_udp`,
:meth:`~.core.MuxCore.receive_udp_fast`, :meth:`~.core.MuxCore.receive_udp_batch`,
:meth:`~.core.MuxCore.receive_udp_runs`). It reaches the core only through the core's public API:
:attr:`~.core.MuxCore.routes`, :attr:`~.core.MuxCore.counters`, :attr:`~.core.MuxCore.config`,
:attr:`~.core.MuxCore.udp_sources` (shared by reference), :meth:`~.core.MuxCore.ingest`,
:meth:`~.core.MuxCore.pass_through`, :meth:`~.core.MuxCore.drop` and
:meth:`~.core.MuxCore.connection_of`. It keeps when it last reported an error to each connection (at
most one report per ``udp_error_interval``); the core calls :meth:`UdpIngress.forget` when a channel
closes. Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from ...wire import Message, PeerProtocolError
from ...wire import emmg_mux as m
from ...wire.errors import EMMGMUXErrorStatus as ErrorStatus
from ...wire.params import EMMG_MUX_PARAMS, SectionTSpktFlag
from ..channel import MESSAGE_TYPE_OFFSET, PROTOCOL_VERSION_OFFSET, internal_error
from ..outputs import Output
from .config import RouteKind
from .records import Deliver, MuxRoute

if TYPE_CHECKING:
    from .connection import MuxConnection
    from .core import MuxCore

# error_information: the offending parameter_type (digest §5.3)
_DATA_ID = EMMG_MUX_PARAMS["data_id"].code


class UdpIngress:
    """The UDP input of one :class:`~.core.MuxCore` (see the module docstring)."""

    def __init__(self, core: MuxCore) -> None:
        self.core = core
        # the core's tables, shared by reference (never rebound by the core)
        self.config = core.config
        self.routes = core.routes
        self.counters = core.counters
        self.udp_sources = core.udp_sources
        self._reported: dict[MuxConnection, float] = {}

    def forget(self, connection: MuxConnection) -> None:
        """*connection*'s channel closed: no report to it is remembered any more."""
        self._reported.pop(connection, None)

    def receive_udp(self, item: Message | PeerProtocolError, now: float, source: str | None = None) -> list[Output]:
        """One UDP datagram from an EMMG: a decoded message or the codec's error for it.

        :param source: the sender's address; a message naming a configured client_id from an
            address not allowed for it (:class:`.limits.UdpSources`) is dropped and counted
            (``udp_source``), never answered. ``None``: not checked (in-process callers).
        """
        self.counters["udp_messages"] += 1
        if source is not None:
            client_id = getattr(item, "client_id", None)
            if client_id in self.config.clients and not self.udp_sources.allowed(client_id, source):
                count = len(item.datagram) if type(item) is m.DataProvision else 1
                return self.core.drop(None, "udp_source", count, now, client_id=client_id, source=source)
        try:
            return self._receive_udp(item, now)
        except Exception as exc:  # our bug: the datagram is dropped and counted, the MUX goes on
            self.counters["internal_errors"] += 1
            return self.core.drop(None, "internal_error", 1, now) + [internal_error("udp", exc)]

    def _receive_udp(self, item: Message | PeerProtocolError, now: float) -> list[Output]:
        if type(item) is m.DataProvision and item.data_channel_id is None and item.data_stream_id is None:
            # the usual shape (digest §4.5: no channel/stream ids on UDP), for a live stream
            route = self.routes.get((item.client_id, item.data_id))
            if route is not None:
                stream = route.stream
                if stream is not None and item.protocol_version == stream.connection.version:
                    return self.core.ingest(stream, item.datagram, now, tcp=False)
        if isinstance(item, PeerProtocolError):
            outputs = self.core.drop(None, "udp_invalid", 1, now, error_status=item.error_status, client_id=item.client_id)
            connection = self.core.connection_of(item.client_id)
            if connection is not None:
                outputs += self._udp_report(
                    connection,
                    connection.channel_error(item.error_status, item.error_information, version=item.protocol_version),
                    now,
                )
            return outputs
        client_id = getattr(item, "client_id", None)
        if type(item) is not m.DataProvision:
            outputs = self.core.drop(None, "udp_invalid", 1, now, message_type=item.NAME, client_id=client_id)
            connection = self.core.connection_of(client_id)
            if connection is not None:
                reply = connection.channel_error(ErrorStatus.INVALID_MESSAGE, MESSAGE_TYPE_OFFSET)
                outputs += self._udp_report(connection, reply, now)
            return outputs
        count = len(item.datagram)
        route = self.routes.get((item.client_id, item.data_id))
        stream = route.stream if route is not None else None
        if stream is None:
            outputs = self.core.drop(
                None if route is None else route.key, "udp_unknown", count, now, client_id=item.client_id, data_id=item.data_id
            )
            connection = self.core.connection_of(item.client_id)
            if connection is not None:
                if item.data_channel_id is not None and item.data_stream_id is not None:
                    reply = connection.stream_error(
                        item.data_stream_id, ErrorStatus.UNKNOWN_DATA_ID, _DATA_ID, channel_id=item.data_channel_id
                    )
                else:
                    reply = connection.channel_error(ErrorStatus.UNKNOWN_DATA_ID, _DATA_ID)
                outputs += self._udp_report(connection, reply, now)
            return outputs
        connection = stream.connection
        code = None
        if item.protocol_version != connection.version:
            code = ErrorStatus.UNSUPPORTED_PROTOCOL_VERSION
            reply = connection.channel_error(code, PROTOCOL_VERSION_OFFSET)
        elif item.data_channel_id is not None and item.data_channel_id != stream.channel_id:
            code = ErrorStatus.UNKNOWN_DATA_CHANNEL_ID
            reply = connection.stream_error(item.data_stream_id or stream.stream_id, code, channel_id=item.data_channel_id)
        elif item.data_stream_id is not None and item.data_stream_id != stream.stream_id:
            code = ErrorStatus.UNKNOWN_DATA_STREAM_ID
            reply = connection.stream_error(item.data_stream_id, code)
        if code is not None:
            outputs = self.core.drop(route.key, "udp_unknown", count, now, error_status=code)
            return outputs + self._udp_report(connection, reply, now)
        return self.core.ingest(stream, item.datagram, now, tcp=False)

    def receive_udp_fast(
        self, version: int, client_id: int, data_id: int, datagram: bytes, now: float, source: str | None = None
    ) -> list[Output] | None:
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
        if source is not None and not self.udp_sources.allowed(client_id, source):
            return None
        self.counters["udp_messages"] += 1
        try:
            return self.core.ingest(stream, (datagram,), now, tcp=False)
        except Exception as exc:
            self.counters["internal_errors"] += 1
            return self.core.drop(route.key, "internal_error", 1, now) + [internal_error("udp", exc)]

    def receive_udp_batch(
        self, items: list[tuple[int, int, int, bytes, str | None]], now: float
    ) -> tuple[list[Output], int]:
        """:meth:`receive_udp_fast` for many usual UDP datagrams in arrival order, in one call.

        *items* are ``(version, client_id, data_id, datagram, source)``: :meth:`receive_udp_runs`
        with one datagram per run (same outputs, counters and stopping point).
        """
        return self.receive_udp_runs([(v, c, d, s, (p,)) for v, c, d, p, s in items], now)

    def receive_udp_runs(
        self, runs: list[tuple[int, int, int, str | None, Sequence[bytes]]], now: float
    ) -> tuple[list[Output], int]:
        """:meth:`receive_udp_fast` for many usual UDP datagrams in arrival order, in one call.

        *runs* are ``(version, client_id, data_id, source, datagrams)``: consecutive datagrams
        that arrived with the same header from the same sender (``source``: its host, ``None`` = not
        checked), so one judgement holds for all of a run. Takes runs from the first on and stops at
        the first one :meth:`receive_udp_fast` would not take (no live stream of that version, or
        a source the client's UDP may not come from). Returns the outputs for the runs taken and
        how many it took; the caller decodes each datagram of the run it stopped at in full (then
        :meth:`receive_udp`) and hands the rest back. Same counters, queues, drops and outputs as
        one :meth:`receive_udp_fast` per datagram, except that with ``unthrottled`` the datagrams
        of an LTKM route on a BCAST channel come out as one :class:`.records.EmitMany` (order kept within
        the route); STKM routes, classic (section / TS packet) channels, paced routes and datagrams
        over ``max_datagram_size`` go through :meth:`.core.MuxCore.ingest` datagram by datagram.
        """
        routes = self.routes
        outputs: list[Output] = []
        pending: dict[MuxRoute, list[bytes]] = {}  # unthrottled LTKM routes: payloads to emit
        fast = self.config.unthrottled
        limit = self.config.max_datagram_size
        stkm, bcast = RouteKind.STKM, SectionTSpktFlag.BCAST
        allowed = self.udp_sources.allowed
        counters = self.counters
        ingest = self.core.ingest
        taken = 0
        for version, client_id, data_id, source, datagrams in runs:
            route = routes.get((client_id, data_id))
            if route is None:
                break
            stream = route.stream
            if stream is None or version != stream.connection.version:
                break
            if source is not None and not allowed(client_id, source):
                break
            taken += 1
            if (fast and route.config.kind is not stkm and stream.section_TSpkt_flag == bcast
                    and max(map(len, datagrams)) <= limit):
                payloads = pending.get(route)
                if payloads is None:
                    pending[route] = list(datagrams)
                else:
                    payloads += datagrams
                continue
            if pending:  # what came before these goes out before them
                outputs += self._emit_pending(pending)
                pending = {}
            for datagram in datagrams:
                counters["udp_messages"] += 1
                try:
                    outputs += ingest(stream, (datagram,), now, tcp=False)
                except Exception as exc:  # as receive_udp_fast: counted, dropped, logged; the run goes on
                    counters["internal_errors"] += 1
                    outputs += self.core.drop(route.key, "internal_error", 1, now) + [internal_error("udp", exc)]
        if pending:
            outputs += self._emit_pending(pending)
        return outputs, taken

    def _emit_pending(self, pending: dict[MuxRoute, list[bytes]]) -> list[Output]:
        """Count and emit the unthrottled datagrams :meth:`receive_udp_runs` gathered per route
        (each was one data_provision of one datagram, as :meth:`.core.MuxCore.ingest` counts them)."""
        counters, pass_through = self.counters, self.core.pass_through
        outputs: list[Output] = []
        for route, payloads in pending.items():
            counters["udp_messages"] += len(payloads)
            outputs.append(pass_through(route, payloads))
        return outputs

    def _udp_report(self, connection: MuxConnection, message: Message, now: float) -> list[Output]:
        last = self._reported.get(connection)
        if last is not None and now - last < self.config.udp_error_interval:
            return []
        self._reported[connection] = now
        return [Deliver(connection, message)]


__all__ = ["UdpIngress"]
