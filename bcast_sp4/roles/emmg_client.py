"""EMMG / LTKM generator role: TCP control via ClientService, data_provision over TCP or UDP (TS 103 197 §6).

Adapters only (STYLE §4): :class:`EMMGProtocol` (the shared TCP adapter) feeds the MUX's messages to
the process-wide :class:`~bcast_sp4.machines.emmg.EMMGClient`; :class:`EMMGService` owns that
machine, a ``ClientService`` with ``backoffPolicy()`` (``prepareConnection`` starts the setup after
every (re)connect), the keyed timers, the UDP data socket (a :class:`EMMGDatagramProtocol` on a
connected UDP port, the same ``wire`` encoder) and the LTKM sources:

* :class:`SubscriberSource`: DRM Profile LTKMs (PROVISIONAL PROV-LTKM-1) generated from the
  subscriber file, issued at start and again every ``repeat_interval`` seconds;
* :class:`SpoolSource`: ready-made LTKM files ``*.ltkm`` in a spool directory, read in name order,
  each sent once and then moved to ``sent/`` (unreadable, empty or over-long files to ``rejected/``).
  Writers should create ``name.ltkm.tmp`` and rename it, so a half-written file is never read.

Queues live in the client machine, so LTKMs queued when the connection drops are sent after the next
setup. A UDP send that fails puts its LTKMs back at the head of the queue. ``ClientService`` resets
its attempt counter on every TCP connect, so the retry policy adds the machine's count of setups
that failed in a row: a MUX that keeps refusing the channel is retried with a growing delay too.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Callable, Hashable, Iterable

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..bcast.status import BcastError
from ..bcast.subscribers import IssuedLTKM, Subscribers
from ..config.emmg import EMMGSettings
from ..machines.emmg import Delivered, EMMGClient, EMMGState, Ready, SendDatagram
from ..machines.outputs import Output
from ..wire import Interface, Message, PeerProtocolError
from ._stream import SimulCryptStreamProtocol, peer_name
from .executor import Outbox, OutputExecutor
from .guard import ConnectionGuard
from .reconnect import ReportingClientService


class SubscriberSource:
    """LTKMs generated from a subscriber file, re-issued every *repeat_interval* s (0 = once).

    A device whose LTKM cannot be built is logged and skipped; the others still get theirs.
    """

    log = Logger()

    def __init__(self, subscribers: Subscribers, repeat_interval: float) -> None:
        self.subscribers = subscribers
        self.repeat_interval = repeat_interval
        self.sequence: int | None = None
        self.issues = 0
        self.failures = 0
        self._devices: list = []
        self._issued_at = 0.0
        self._next_issue: float | None = 0.0

    def take(self, n: int, now: float) -> list[IssuedLTKM]:
        """Up to *n* LTKMs of the running issue (starting a new issue when one is due)."""
        if not self._devices and self._next_issue is not None and now >= self._next_issue:
            if self.sequence is None:
                self.sequence = int(now) & 0xFFFFFFFF
            self._devices = list(self.subscribers.devices)
            self._issued_at = now
            self.issues += 1
            self._next_issue = now + self.repeat_interval if self.repeat_interval > 0 else None
        out: list[IssuedLTKM] = []
        while self._devices and len(out) < n:
            device = self._devices.pop(0)
            try:
                issued = self.subscribers.ltkm_for(device, self._issued_at, self.sequence)
            except BcastError as exc:
                self.failures += 1
                self.log.error("no LTKM for device {device}: {why}", device=device.device_id.hex(), why=str(exc))
                continue
            except Exception:  # the source's bug: this device is skipped, the others still get theirs
                self.failures += 1
                self.log.failure("LTKM source failed for device {device}", device=device.device_id.hex())
                continue
            if issued is not None:
                out.append(issued)
                self.sequence = (issued.sequence + 1) & 0xFFFFFFFF
        return out


class SpoolSource:
    """Ready-made LTKM files: ``*.ltkm`` in *directory*, each sent once, then moved to ``sent/``."""

    log = Logger()
    SUFFIX = ".ltkm"

    def __init__(self, directory: Path, max_size: int) -> None:
        self.directory = Path(directory)
        self.sent = self.directory / "sent"
        self.rejected = self.directory / "rejected"
        self.max_size = max_size
        self.in_flight: set[Path] = set()

    def prepare(self) -> None:
        for path in (self.directory, self.sent, self.rejected):
            path.mkdir(parents=True, exist_ok=True)

    def take(self, n: int) -> list[tuple[Path, bytes]]:
        """Up to *n* files not yet queued, in name order, with their bytes."""
        if n <= 0:
            return []
        try:
            names = sorted(e.name for e in os.scandir(self.directory) if e.is_file() and e.name.endswith(self.SUFFIX))
        except OSError as exc:
            self.log.warn("cannot list spool {directory}: {error}", directory=str(self.directory), error=str(exc))
            return []
        out: list[tuple[Path, bytes]] = []
        for name in names:
            if len(out) >= n:
                break
            path = self.directory / name
            if path in self.in_flight:
                continue
            try:
                data = path.read_bytes()
            except OSError as exc:
                self._reject(path, f"unreadable: {exc.strerror}")
                continue
            if not 1 <= len(data) <= self.max_size:
                self._reject(path, f"{len(data)} bytes outside 1..{self.max_size}")
                continue
            self.in_flight.add(path)
            out.append((path, data))
        return out

    def done(self, path: Path) -> None:
        """The LTKM in *path* was sent: move the file aside."""
        self.in_flight.discard(path)
        self._move(path, self.sent)

    def _reject(self, path: Path, why: str) -> None:
        self.log.warn("spool file {name} rejected: {why}", name=path.name, why=why)
        self._move(path, self.rejected)

    def _move(self, path: Path, where: Path) -> None:
        target = where / path.name
        counter = 1
        while target.exists():
            target = where / f"{path.stem}.{counter}{path.suffix}"
            counter += 1
        try:
            path.rename(target)
        except OSError as exc:
            self.log.error("cannot move {name} to {where}: {error}", name=path.name, where=str(where), error=str(exc))


class EMMGProtocol(SimulCryptStreamProtocol):
    """The TCP control connection to the MUX."""

    interface = Interface.EMMG_MUX

    def __init__(self, service: "EMMGService") -> None:
        super().__init__(service.executor, service.settings.emmg.max_message_length, service.guard)
        self.service = service

    def connectionMade(self) -> None:
        self.outbox.attach(self.transport, peer_name(self.transport))
        self.prepare_transport()
        self.start_watch()
        self.log.info("connected to the MUX at {peer}", peer=self.peer)

    def begin_session(self) -> None:
        """Called by ``prepareConnection`` after every (re)connect: channel_setup and the rest."""
        self.service._attach(self)

    def handle(self, item: Message | PeerProtocolError, now: float, received_at: float) -> list[Output]:
        return self.service.machine.receive(item, now)

    def connectionLost(self, reason: Failure) -> None:
        self.outbox.lost()
        self.stop_watch()
        self.service._detach(self)


class EMMGDatagramProtocol(DatagramProtocol):
    """The UDP data socket (connected to the MUX's UDP port); nothing is expected back."""

    log = Logger()
    noisy = False

    def datagramReceived(self, data: bytes, addr) -> None:
        self.log.warn("unexpected UDP datagram of {size} bytes from {addr}", size=len(data), addr=addr)

    def connectionRefused(self) -> None:
        self.log.warn("the MUX's UDP port refused a datagram (ICMP port unreachable)")


class _Factory(Factory):
    noisy = False

    def __init__(self, service: "EMMGService") -> None:
        self.service = service

    def buildProtocol(self, addr) -> EMMGProtocol:
        protocol = EMMGProtocol(self.service)
        protocol.factory = self
        return protocol


class EMMGService(Service):
    """The LTKM generator: client machine, connection, UDP data socket, timers and LTKM sources.

    :param session: the process's :class:`~bcast_sp4.session.SessionManager` (told of the
        channel, its streams and their allocations), or ``None``.
    :param guard: the connection guard of the MUX connection (per-turn budget, buffers,
        unfinished-message timeout), or ``None``.
    """

    log = Logger()

    def __init__(
        self,
        settings: EMMGSettings,
        reactor,
        *,
        endpoint=None,
        retry_policy: Callable[[int], float] | None = None,
        session=None,
        guard: ConnectionGuard | None = None,
        meter=None,
    ) -> None:
        self.settings = settings
        self.guard = guard
        self.reactor = reactor
        self.clock = reactor
        self.machine = EMMGClient(settings.emmg)
        self.protocol: EMMGProtocol | None = None
        self.udp_port = None
        self.udp_socket: socket.socket | None = None
        self.executor = OutputExecutor(
            reactor, self.log, "emmg", session=session, timer_input=self._timer_fired,
            handlers={SendDatagram: lambda o, _now: self._send_datagram(o),
                      Delivered: lambda o, _now: self._delivered(o.tokens), Ready: self._ready},
            default_outbox=self._outbox, peer_of=lambda _event: settings.connect,
            limiter=guard.limiter if guard is not None else None, meter=meter,
        )
        self.setup_failures = 0
        self.counters = {"udp_sent": 0, "udp_errors": 0, "requeued": 0, "spool_sent": 0, "subscriber_ltkms": 0,
                         "source_errors": 0}
        self._ready_waiters: list[Deferred] = []
        self._closed_waiters: list[Deferred] = []
        self._base_policy = retry_policy or backoffPolicy(maxDelay=settings.retry_max_delay)
        self.subscriber_sources: dict[int, SubscriberSource] = {}
        self.spools: dict[int, SpoolSource] = {}
        for data_id, sources in settings.sources.items():
            if sources.subscribers is not None:
                self.subscriber_sources[data_id] = SubscriberSource(sources.subscribers, sources.repeat_interval)
            if sources.spool is not None:
                self.spools[data_id] = SpoolSource(sources.spool, settings.emmg.max_datagram)
        polls = [s.poll_interval for s in settings.sources.values() if s.spool is not None]
        self.poll_interval = min(polls) if polls else 1.0
        self.endpoint = endpoint if endpoint is not None else clientFromString(reactor, settings.connect)
        # one line per attempt: "MUX tcp:host=..:port=.. unreachable (connection refused), retry in 0.8 s"
        self.client_service = ReportingClientService(
            "MUX", lambda: settings.connect, self.endpoint, _Factory(self), self._retry_policy, reactor,
            prepareConnection=lambda protocol: protocol.begin_session(), metrics=meter, role="emmg",
        )
        self._refiller = LoopingCall(self.refill)
        self._refiller.clock = reactor

    def _retry_policy(self, attempt: int) -> float:
        return self._base_policy(attempt + self.setup_failures)

    # -- service -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for spool in self.spools.values():
            spool.prepare()
        if self.settings.emmg.udp:
            self.udp_port = self.reactor.listenUDP(0, EMMGDatagramProtocol(), interface=self.settings.udp_interface)
            self.udp_port.connect(*self.settings.mux_udp)
            # Not read: a read-watched connected UDP port is closed by the epoll reactor on an ICMP
            # "port unreachable" (MUX not up yet, or restarting); the send error requeues instead.
            self.udp_port.stopReading()
            self.udp_socket = self.udp_port.getHandle()
        self._refiller.start(self.poll_interval, now=True)
        self.client_service.startService()
        self.log.info(
            "EMMG client_id={client_id:#010x} to {connect}, data over {transport}",
            client_id=self.settings.emmg.client_id,
            connect=self.settings.connect,
            transport="udp" if self.settings.emmg.udp else "tcp",
        )

    def stopService(self) -> Deferred:
        """Close streams and channel in order (bounded by the response timeout), then stop."""
        super().stopService()
        if self._refiller.running:
            self._refiller.stop()
        config = self.settings.emmg
        done: Deferred
        if self.protocol is not None:
            done = Deferred()
            self._closed_waiters.append(done)
            done.addTimeout(config.close_timeout + config.udp_end_wait + 0.5, self.clock)
            done.addErrback(lambda _f: None)
            self._run(self.machine.shutdown(self.clock.seconds()))
        else:
            self.machine.shutdown(self.clock.seconds())
            done = succeed(None)

        def finish(_):
            self.executor.stop()
            stopping = self.client_service.stopService()
            if self.udp_port is not None:
                self.udp_port.stopListening()
                self.udp_port = self.udp_socket = None
            return stopping

        return done.addCallback(finish)

    def when_ready(self) -> Deferred:
        """A new Deferred firing (on a later turn) once the client machine is READY."""
        d = Deferred()
        if self.machine.state is EMMGState.READY:
            self.clock.callLater(0, d.callback, self.protocol)
        else:
            self._ready_waiters.append(d)
        return d

    # -- LTKM intake -------------------------------------------------------------------------

    def enqueue_ltkm(self, data_id: int, ltkm: bytes) -> bool:
        """Queue one LTKM from elsewhere in the process (``False`` when the queue is full)."""
        accepted = self.machine.enqueue(data_id, ltkm)
        if accepted:
            self._poke()
        return accepted

    def refill(self) -> None:
        """Top up every stream's queue from its spool, then from its subscriber file.

        A source that raises (its bug) is logged and counted (``source_errors``); the other
        streams are still served and the refill timer keeps running.
        """
        machine = self.machine
        queued = 0
        for data_id in machine.by_data_id:
            try:
                queued += self._refill(data_id)
            except Exception:
                self.counters["source_errors"] += 1
                self.log.failure("LTKM source of data_id {data_id} failed", data_id=data_id)
        if queued:
            self._poke()

    def _refill(self, data_id: int) -> int:
        machine = self.machine
        now = self.clock.seconds()
        queued = 0
        spool = self.spools.get(data_id)
        if spool is not None:
            for path, data in spool.take(machine.room(data_id)):
                machine.enqueue(data_id, data, token=("spool", data_id, path))
                queued += 1
        source = self.subscriber_sources.get(data_id)
        if source is not None:
            for issued in source.take(machine.room(data_id), now):
                try:
                    machine.enqueue(data_id, issued.data)
                except ValueError as exc:
                    self.log.error("LTKM for device {device} not queued: {why}", device=issued.device_id.hex(), why=str(exc))
                    continue
                self.counters["subscriber_ltkms"] += 1
                queued += 1
        return queued

    # -- connection plumbing -----------------------------------------------------------------

    def _attach(self, protocol: EMMGProtocol) -> None:
        self.protocol = protocol
        self.setup_failures += 1  # until Ready says otherwise
        protocol.run(self.machine.connection_made(self.clock.seconds()))

    def _detach(self, protocol: EMMGProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self._run(self.machine.connection_lost(self.clock.seconds()))  # no connection: Sends dropped
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def _outbox(self) -> Outbox | None:
        return None if self.protocol is None else self.protocol.outbox

    def _run(self, outputs: Iterable[Output]) -> None:
        self.executor.run(outputs, self.clock.seconds())

    def _ready(self, _output: Ready, _now) -> None:
        self.setup_failures = 0
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            self.clock.callLater(0, d.callback, self.protocol)

    def _send_datagram(self, output: SendDatagram) -> None:
        data = output.message.encode()
        sock = self.udp_socket
        try:
            if sock is None:
                raise OSError(errno.ENOTCONN, "UDP socket not open")
            sock.send(data)
        except OSError as exc:
            self.counters["udp_errors"] += 1
            self.counters["requeued"] += len(output.message.datagram)
            self.machine.requeue(output.message.data_id, output.message.datagram, output.tokens)
            self.log.warn(
                "UDP data_provision not sent ({error}); {count} LTKMs back in the queue",
                error=errno.errorcode.get(exc.errno, str(exc)), count=len(output.message.datagram),
            )
            return
        self.counters["udp_sent"] += 1
        if output.tokens:
            self._delivered(tuple(t for t in output.tokens if t is not None))

    def _delivered(self, tokens: tuple[Hashable, ...]) -> None:
        for token in tokens:
            if isinstance(token, tuple) and token[0] == "spool":
                _kind, data_id, path = token
                self.spools[data_id].done(path)
                self.counters["spool_sent"] += 1

    def _timer_fired(self, key: Hashable, now: float) -> list[Output]:
        if key == "pace":
            return self._poke_outputs(now)
        return self.machine.timer_fired(key, now)

    def _poke_outputs(self, now: float) -> list[Output]:
        """What the client machine sends now within its allocation, unless the connection is closing.

        While a close is under way the machine still believes it is READY; LTKMs it popped now
        would be written on a dying connection and lost. They wait for the next connection.
        """
        if self.protocol is not None and not self.protocol.closing:
            return self.machine.poke(now)
        return []

    def _poke(self) -> None:
        self._run(self._poke_outputs(self.clock.seconds()))


__all__ = ["EMMGDatagramProtocol", "EMMGProtocol", "EMMGService", "SpoolSource", "SubscriberSource"]
