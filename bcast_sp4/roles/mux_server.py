"""MUX role: TCP server of EMMG/PDG<=>MUX channels, UDP data_provision port, UDP play-out (TS 103 197 §6).

Adapters only (STYLE §4): :class:`MuxProtocol` feeds one TCP connection to a
:class:`~bcast_sp4.machines.mux.MuxConnection`; :class:`MuxDatagramProtocol` feeds UDP
data_provision to :meth:`MuxCore.receive_udp`; :class:`PlayOut` executes :class:`Emit` outputs on
one connected UDP socket per route (IPv4 or IPv6, unicast or multicast, TTL / hop limit set), runs :meth:`MuxCore.tick` when
input made something due and at :meth:`MuxCore.next_wakeup` (one keyed ``IDelayedCall``), and
routes :class:`Deliver` outputs to the connection they name. :class:`MuxServer` ties them together
and offers :meth:`MuxServer.submit_stkm`, the in-process STKM path for a co-located SCS.

A socket error on play-out is not silent: the datagram is counted as dropped (``egress_error``) and
logged through the core's drop reports.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Iterable

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..machines.channel import ServerChannelState
from ..machines.mux import Deliver, Emit, EmitMany, MuxConnection, MuxCore, RouteKey
from ..machines.outputs import Output
from ..wire import VERSION_GROUPS, Deviation, Interface, Message, PeerProtocolError, decode_datagram, emmg_mux
from ._stream import ServerFactory, SimulCryptStreamProtocol, bare
from .executor import OutputExecutor
from .guard import ConnectionGuard
from .log_limit import LogLimiter

log = Logger()
_V1_TOLERATED = frozenset({Deviation.V1_DATA_ID})


class _EgressProtocol(DatagramProtocol):
    """Play-out sockets never expect input (they are not read); an ICMP refusal shows up on the next send."""

    noisy = False

    def datagramReceived(self, data: bytes, addr) -> None:  # pragma: no cover - nothing sends to us
        pass

    def connectionRefused(self) -> None:
        pass


def set_hop_limit(sock, ipv6: bool, multicast: bool, hops: int, interface4: str, index6: int) -> None:
    """TTL / hop limit of one play-out socket, and the interface its multicast leaves by."""
    if ipv6:
        if multicast:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
            if index6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index6)
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
    elif multicast:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, hops)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface4))
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)


class PlayOut(Service):
    """Executes the core's egress: one connected UDP socket per route, the tick timer, deliveries.

    :param core: the shared :class:`MuxCore`.
    :param reactor: provides ``listenUDP`` and the clock.
    :param interface: source address of the IPv4 play-out sockets (and the IPv4 multicast interface).
    :param session: the process's :class:`~bcast_sp4.session.SessionManager`, or ``None``.
    :param interface6: source address of the IPv6 play-out sockets.
    :param multicast_interface6: name of the interface IPv6 multicast leaves by ("": the kernel's route).

    Its :attr:`executor` is the MUX's one output executor, shared by the TCP connections: Emit
    and Deliver are play-out's own outputs, the tick is its timer ``"tick"``.
    """

    log = Logger()
    TICK = "tick"

    def __init__(self, core: MuxCore, reactor, interface: str = "127.0.0.1", session=None,
                 limiter: LogLimiter | None = None, *, interface6: str = "::1", multicast_interface6: str = "",
                 meter=None) -> None:
        self.core = core
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.interface = interface
        self.interface6 = interface6
        self.multicast_interface6 = multicast_interface6
        self.ports: dict[RouteKey, object] = {}
        self.sockets: dict[RouteKey, socket.socket] = {}
        self.protocols: dict[MuxConnection, SimulCryptStreamProtocol] = {}
        self._wake_at: float | None = None
        self.executor = OutputExecutor(
            reactor, self.log, "mux", session=session, timer_input=self._tick, meter=meter,
            handlers={Emit: lambda output, _now: self.emit(output), EmitMany: lambda output, _now: self.emit_many(output),
                      Deliver: self._deliver}, limiter=limiter,
        )

    # -- service -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        index6 = socket.if_nametoindex(self.multicast_interface6) if self.multicast_interface6 else 0
        for key, route in self.core.routes.items():
            cfg = route.config
            port = self.reactor.listenUDP(0, _EgressProtocol(), interface=self.interface6 if cfg.ipv6 else self.interface)
            port.connect(*cfg.destination)
            # Never read: with the epoll reactor a readable connected UDP port that meets an ICMP
            # "port unreachable" (receiver not up yet) is closed for good. Unwatched, the refusal
            # surfaces on the next send as ECONNREFUSED, which is counted as a drop.
            port.stopReading()
            sock = port.getHandle()
            set_hop_limit(sock, cfg.ipv6, cfg.multicast, cfg.ttl, self.interface, index6)
            self.ports[key] = port
            self.sockets[key] = sock
            self.log.info(
                "route client_id={client_id:#010x} {kind} {data_id} -> {host}:{port} ttl={ttl}",
                client_id=key[0], kind=cfg.kind.value, data_id=key[1], host=cfg.destination[0], port=cfg.destination[1],
                ttl=cfg.ttl,
            )
        self.run()

    def stopService(self):
        super().stopService()
        self.executor.stop()
        self._wake_at = None
        ports, self.ports = self.ports, {}
        self.sockets = {}
        for port in ports.values():
            port.stopListening()

    # -- execution ---------------------------------------------------------------------------

    def kick(self) -> None:
        """Input arrived: run the core now if it has something new to emit."""
        if self.core.dirty:
            self.run()

    def run(self) -> None:
        """Tick the core, emit what is due, and arm the timer for the next due time."""
        now = self.clock.seconds()
        self.execute(self.core.tick(now))
        timers = self.executor.timers
        wake = self.core.next_wakeup(self.clock.seconds())
        if wake is None:
            timers.cancel(self.TICK)
            self._wake_at = None
            return
        if self._wake_at == wake and self.TICK in timers:
            return
        timers.start(self.TICK, max(0.0, wake - self.clock.seconds()))
        self._wake_at = wake

    def _tick(self, _key, _now: float) -> list:
        self._wake_at = None
        self.run()
        return []

    def _deliver(self, output: Deliver, _now) -> None:
        protocol = self.protocols.get(output.connection)
        if protocol is not None:
            protocol.send(output.message)

    def emit(self, output: Emit) -> None:
        """Send one datagram on its route's socket; a failure is counted and logged as a drop."""
        sock = self.sockets.get(output.route)
        if sock is None:
            self.execute(self.core.egress_failed(output.route, "not started", self.clock.seconds()))
            return
        try:
            sock.send(output.payload)
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno, str(exc.errno))
            self.execute(self.core.egress_failed(output.route, reason, self.clock.seconds()))

    def emit_many(self, output: EmitMany) -> None:
        """Send each datagram of *output* on its route's socket, in order (failures as in :meth:`emit`)."""
        sock = self.sockets.get(output.route)
        if sock is None:
            for _ in output.payloads:
                self.execute(self.core.egress_failed(output.route, "not started", self.clock.seconds()))
            return
        send = sock.send
        for payload in output.payloads:
            try:
                send(payload)
            except OSError as exc:
                reason = errno.errorcode.get(exc.errno, str(exc.errno))
                self.execute(self.core.egress_failed(output.route, reason, self.clock.seconds()))

    def execute(self, outputs: Iterable[Output]) -> None:
        """Carry out core outputs (Emit, EmitMany, Deliver, Notify) through the executor."""
        self.executor.run(outputs, self.clock.seconds())


class MuxProtocol(SimulCryptStreamProtocol):
    """One EMMG/PDG (or SCS) TCP connection."""

    interface = Interface.EMMG_MUX
    #: replies leave before the reactor's next turn: written at the next turn's write phase, a
    #: reply (a channel_test's channel_status) waited behind another peer's whole turn first
    write_through = True

    def __init__(self, factory: "MuxFactory") -> None:
        super().__init__(factory.play_out.executor, factory.max_message_length, factory.guard)
        self.play_out = factory.play_out
        self.machine = MuxConnection(factory.core)
        if 1 in factory.core.config.versions:  # v1 peers that send data_id anyway (digest §2.1)
            self.tolerate = _V1_TOLERATED

    def has_channel(self) -> bool:
        return self.machine.state is ServerChannelState.CHANNEL_OPEN

    def channel_test(self) -> bool:
        machine = self.machine
        if machine.channel_id is None or machine.version is None or machine.client_id is None:
            return False
        self.send(emmg_mux.ChannelTest(protocol_version=machine.version, client_id=machine.client_id,
                                       data_channel_id=machine.channel_id))
        return True

    def connectionMade(self) -> None:
        super().connectionMade()
        peer = self.transport.getPeer()  # UDP for this client_id must come from here (machines/mux/limits.py)
        self.machine.peer_host = peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else None
        self.play_out.protocols[self.machine] = self

    def handle(self, item: Message | PeerProtocolError, now: float, received_at: float) -> list[Output]:
        return self.machine.receive(item, now)

    def handle_frames(self, frames: list, received_at: float) -> int:
        handled = super().handle_frames(frames, received_at)
        self.play_out.kick()
        return handled

    def connectionLost(self, reason: Failure) -> None:
        self.outbox.lost()
        self.stop_watch()
        self.play_out.protocols.pop(self.machine, None)
        self.play_out.execute(self.machine.connection_lost(self.clock.seconds()))  # its Sends have no connection
        self.log_connection("closed", "connection from {peer} closed")


class MuxFactory(ServerFactory):
    """Builds one :class:`MuxProtocol` per accepted connection (``protocol`` may be overridden; see
    :class:`~._stream.ServerFactory` for admission and the session)."""

    protocol = MuxProtocol
    role = "mux"

    def __init__(self, core: MuxCore, play_out: PlayOut, clock: IReactorTime, max_message_length: int,
                 session=None, listening_on: str | None = None, guard: ConnectionGuard | None = None) -> None:
        super().__init__(session, listening_on, guard)
        self.core = core
        self.play_out = play_out
        self.clock = clock
        self.max_message_length = max_message_length


#: The usual UDP data_provision (digest §4.5 and example M8; what our EMMG sends): header, then
#: client_id (4), data_id (2) and ONE datagram, in that order, no channel/stream ids:
#: version, message_type, message_length, 0x0001, 4, client_id, 0x0008, 2, data_id, 0x0005, length
_UDP_SHAPE = struct.Struct(">BHHHHIHHHHH")
_UDP_SHAPE_SIZE = _UDP_SHAPE.size  # 23
_EMMG_VERSIONS = frozenset(v for v in VERSION_GROUPS[Interface.EMMG_MUX] if v >= 2)


def parse_usual_udp(data: bytes) -> tuple[int, int, int, bytes] | None:
    """``(version, client_id, data_id, datagram)`` when *data* is exactly the usual UDP shape.

    A fast path for the MUX's UDP port: it accepts only byte strings that the codec decodes to a
    data_provision with those values and nothing else (``tests/roles`` checks this against
    ``decode_datagram``); for anything else it returns ``None`` and the full codec decides.
    """
    n = len(data)
    if n <= _UDP_SHAPE_SIZE:
        return None
    version, kind, length, t1, l1, client_id, t2, l2, data_id, t3, l3 = _UDP_SHAPE.unpack_from(data)
    if (
        kind != 0x0211
        or length != n - 5
        or (t1, l1, t2, l2, t3) != (0x0001, 4, 0x0008, 2, 0x0005)
        or l3 != n - _UDP_SHAPE_SIZE
        or version not in _EMMG_VERSIONS
    ):
        return None
    return version, client_id, data_id, data[_UDP_SHAPE_SIZE:]


class MuxDatagramProtocol(DatagramProtocol):
    """The MUX's UDP port: one data_provision per datagram (digest §4.5)."""

    log = Logger()
    noisy = False

    def __init__(self, core: MuxCore, play_out: PlayOut, clock: IReactorTime, max_message_length: int,
                 guard: ConnectionGuard | None = None) -> None:
        self.core = core
        self.play_out = play_out
        self.clock = clock
        self.max_message_length = min(max_message_length, 65535)
        #: the udp_allow check, when the guard has a list (else every source passes)
        self.admit = guard.admit_datagram if guard is not None and guard.udp_allowed.networks is not None else None

    def datagramReceived(self, data: bytes, addr) -> None:
        if self.admit is not None and not self.admit(addr):
            return
        core = self.core
        now = self.clock.seconds()
        outputs = None
        usual = parse_usual_udp(data) if len(data) <= self.max_message_length else None
        if usual is not None:
            outputs = core.receive_udp_fast(*usual, now, addr[0])
        if outputs is None:
            try:
                item = decode_datagram(data, Interface.EMMG_MUX, self.max_message_length)
            except PeerProtocolError as exc:
                item = bare(exc)  # no reference cycle left per invalid datagram
            outputs = core.receive_udp(item, now, addr[0])
        if outputs:
            if len(outputs) == 1 and type(outputs[0]) is Emit:  # the usual unthrottled case
                self.play_out.emit(outputs[0])
            else:
                self.play_out.execute(outputs)
        if core.dirty:
            self.play_out.run()

    def datagramsReceived(self, batch: list[tuple[bytes, tuple]]) -> None:
        """Every datagram of one wake-up (:class:`~.udp_batch.BatchUDPPort`), handled as a batch.

        The usual ones go to :meth:`MuxCore.receive_udp_batch` in runs; any other one (and one the
        core does not take as it is) goes through the full decode and :meth:`MuxCore.receive_udp`
        where it stands, so everything a route emits keeps the arrival order.
        """
        core, limit, admit = self.core, self.max_message_length, self.admit
        now = self.clock.seconds()
        run: list[tuple[int, int, int, bytes, str]] = []
        raw: list[bytes] = []
        for data, addr in batch:
            if admit is not None and not admit(addr):
                continue
            usual = parse_usual_udp(data) if len(data) <= limit else None
            if usual is not None:
                run.append(usual + (addr[0],))
                raw.append(data)
                continue
            if run:
                self._run(run, raw, now)
                run, raw = [], []
            self._full(data, addr[0], now)
        if run:
            self._run(run, raw, now)
        if core.dirty:
            self.play_out.run()

    def _run(self, run: list[tuple[int, int, int, bytes, str]], raw: list[bytes], now: float) -> None:
        core, execute = self.core, self.play_out.execute
        start = 0
        while start < len(run):
            outputs, taken = core.receive_udp_batch(run[start:] if start else run, now)
            if outputs:
                execute(outputs)
            start += taken
            if start < len(run):  # not taken as it is: the full decode judges this one
                self._full(raw[start], run[start][4], now)
                start += 1

    def _full(self, data: bytes, source: str, now: float) -> None:
        try:
            item = decode_datagram(data, Interface.EMMG_MUX, self.max_message_length)
        except PeerProtocolError as exc:
            item = bare(exc)  # no reference cycle left per invalid datagram
        outputs = self.core.receive_udp(item, now, source)
        if outputs:
            self.play_out.execute(outputs)


class MuxServer:
    """The MUX's parts, and the in-process API for a co-located SCS."""

    def __init__(self, core: MuxCore, reactor, *, interface: str, max_message_length: int, session=None,
                 listening_on: str | None = None, guard: ConnectionGuard | None = None,
                 interface6: str = "::1", multicast_interface6: str = "", meter=None) -> None:
        self.core = core
        self.clock: IReactorTime = reactor
        self.guard = guard
        self.play_out = PlayOut(core, reactor, interface, session, guard.limiter if guard is not None else None,
                                interface6=interface6, multicast_interface6=multicast_interface6, meter=meter)
        self.factory = MuxFactory(core, self.play_out, reactor, max_message_length, session, listening_on, guard)
        self.udp_protocol = MuxDatagramProtocol(core, self.play_out, reactor, max_message_length, guard)

    def submit_stkm(
        self,
        super_cas_id: int,
        ecm_id: int,
        stkm_bytes: bytes,
        on_air_from: float | None = None,
        repetition_ms: int | None = None,
    ) -> None:
        """Make *stkm_bytes* the current STKM of (super_cas_id, ecm_id), at once or from *on_air_from*.

        :param on_air_from: reactor time (``clock.seconds()``) of the switch; ``None`` = now.
        :param repetition_ms: repetition period from then on; ``None`` keeps the route's.
        :raises bcast_sp4.machines.mux.UnknownRoute: no STKM route for the pair.
        :raises ValueError: empty or over-long STKM, repetition period outside 1..65535 ms.
        """
        self.play_out.execute(
            self.core.submit_stkm(super_cas_id, ecm_id, stkm_bytes, on_air_from, self.clock.seconds(), repetition_ms)
        )
        self.play_out.run()

    def submit(
        self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes, on_air_from: float, repetition_ms: int
    ) -> None:
        """The SCS's ``STKMSink`` interface (``bcast_sp4.roles.stkm_sink``): :meth:`submit_stkm` by another name.

        *cp_number* is only for the SCS's bookkeeping; the MUX airs whatever is current.
        """
        self.submit_stkm(super_cas_id, ecm_id, stkm, on_air_from, repetition_ms)


__all__ = ["MuxDatagramProtocol", "MuxFactory", "MuxProtocol", "MuxServer", "PlayOut", "parse_usual_udp"]
