"""SCS role: ECMG<=>SCS TCP clients, the scramblers' UDP ports, timers (TS 103 197 §5; SP-4 §14.1.1.3.3).

Thin adapters around the pure :class:`~bcast_sp4.machines.scs_core.SCSCore` (channels + crypto-period
schedulers) and :class:`~bcast_sp4.media.scrambler.Scrambler`:

* one ``ClientService`` per ECMG channel, with a back-off retry policy (lengthened by the channel
  refusals in a row the machine counts) and ``prepareConnection`` sending channel_setup after
  every (re)connect; its endpoint is a :class:`FailoverEndpoint` (primary, then backup ECMG);
* :class:`SCSProtocol` per connection: bytes -> framer -> codec -> core -> outputs, replies to
  the same connection coalesced in one write;
* :class:`SCSRunner`: the core's outputs through the role's one
  :class:`~bcast_sp4.roles.executor.OutputExecutor` — its keyed timers (channel, period and TEK
  switch timers alike; a delay counts from the ``now`` the core was given, so the work done since
  does not make it late), Send / Close to the connection of the channel named, events to the log;
  the SCS's own outputs are TEKs to the scramblers ahead of T(n), the switch at T(n) (the core's
  :class:`~bcast_sp4.machines.scs_records.SwitchTEK`, whose lateness is the measured switch
  jitter) and STKMs to the :class:`~bcast_sp4.roles.stkm_sink.STKMSink`;
* :class:`ScramblerProtocol`: one UDP datagram in, one protected datagram out.

``prepareConnection`` only sends channel_setup and returns at once: with Twisted 26 a connection
lost while a ``prepareConnection`` Deferred is pending raises ``NoTransition`` inside
``ClientService`` and stops its reconnecting, so the handshake belongs to the machine.
"""

from __future__ import annotations

import collections
import random
from typing import Callable, Hashable, Iterable

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as StopTimeout
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..machines.outputs import Send
from ..machines.scs_core import SCSCore
from ..machines.scs_records import ChannelOutput, ProvideTEK, SubmitSTKM, SwitchTEK
from ..media.scrambler import Scrambler, Switch
from ..wire import Interface, Message, PeerProtocolError
from ._stream import SimulCryptStreamProtocol, peer_name
from .executor import KeyedTimers, OutputExecutor
from .gc_tuning import YoungCollector, tune_gc
from .guard import ConnectionGuard
from .stkm_sink import STKMSink


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """Connect to the first endpoint that answers, starting with the preferred one.

    After an established connection is lost (:meth:`rotate`), the next attempt starts with the
    other endpoint, so a backup ECMG takes over at the first retry.
    """

    def __init__(self, endpoints: list[tuple[str, IStreamClientEndpoint]]) -> None:
        self.endpoints = endpoints
        self.preferred = 0
        self.current: int | None = None

    @property
    def current_name(self) -> str | None:
        return None if self.current is None else self.endpoints[self.current][0]

    def connect(self, factory) -> Deferred:
        count = len(self.endpoints)

        def attempt(index: int, tried: int) -> Deferred:
            d = self.endpoints[index][1].connect(factory)

            def connected(protocol):
                self.current = self.preferred = index
                return protocol

            def failed(failure: Failure):
                if tried + 1 >= count:
                    return failure
                return attempt((index + 1) % count, tried + 1)

            return d.addCallbacks(connected, failed)

        return attempt(self.preferred, 0)

    def rotate(self) -> None:
        """The connection was lost: prefer the next endpoint."""
        if self.current is not None:
            self.preferred = (self.current + 1) % len(self.endpoints)
        self.current = None


class SCSProtocol(SimulCryptStreamProtocol):
    """One ECMG connection of the SCS: carries one channel."""

    interface = Interface.ECMG_SCS
    #: a CW_provision leaves when its poll ends, not at the reactor's next turn (one wake-up less
    #: per stream-period; the ECMG is waiting for it)
    write_through = True

    def __init__(self, runner: "SCSRunner", channel: str) -> None:
        super().__init__(runner.executor, runner.max_message_length, runner.guard)
        self.runner, self.channel = runner, channel
        self.reply_outbox = None  # the core addresses every Send / Close to a channel (ChannelOutput)

    def connectionMade(self) -> None:
        self.outbox.attach(self.transport, peer_name(self.transport))
        self.prepare_transport()
        self.start_watch()
        self.log.info("channel {channel}: connected to ECMG {peer}", channel=self.channel, peer=self.peer)

    def start_channel(self) -> None:
        """``prepareConnection``: send channel_setup (the rest of the handshake is the machine's)."""
        self.runner.connected(self)

    def handle(self, item: Message | PeerProtocolError, now: float, received_at: float) -> list:
        # the timers due by now first (a TEK switch must not wait behind a batch of ECM_responses)
        self.runner.executor.timers.run_due(now)
        return self.runner.core.receive(self.channel, item, now)

    def connectionLost(self, reason: Failure) -> None:
        self.outbox.lost()
        self.stop_watch()
        self.log.info("channel {channel}: connection to {peer} closed", channel=self.channel, peer=self.peer)
        self.runner.lost(self)


class SCSClientFactory(Factory):
    """Builds the :class:`SCSProtocol` of one channel."""

    noisy = False

    def __init__(self, runner: "SCSRunner", channel: str) -> None:
        self.runner, self.channel = runner, channel

    def buildProtocol(self, addr) -> SCSProtocol:
        protocol = SCSProtocol(self.runner, self.channel)
        protocol.factory = self
        return protocol


class ScramblerProtocol(DatagramProtocol):
    """Reads one service's content from UDP, writes it protected to *output*."""

    noisy = False  # no "Starting protocol <... object at 0x...>" line (the port logs where it listens)

    def __init__(self, scrambler: Scrambler, output: tuple[str, int], clock: IReactorTime,
                 guard: ConnectionGuard | None = None) -> None:
        self.scrambler, self.output, self.clock = scrambler, output, clock
        #: the udp_allow check, when the guard has a list (else every source passes)
        self.admit = guard.admit_datagram if guard is not None and guard.udp_allowed.networks is not None else None

    def datagramReceived(self, data: bytes, addr) -> None:
        if self.admit is not None and not self.admit(addr):
            return
        out = self.scrambler.protect(data, self.clock.seconds(), (addr[0], addr[1]))
        if out is not None:
            self.transport.write(out, self.output)


def retry_policy(initial_delay: float, max_delay: float, factor: float, jitter: float,
                 refusals: Callable[[], int]) -> Callable[[int], float]:
    """Exponential back-off on failed attempts plus the channel refusals in a row."""
    base = backoffPolicy(initial_delay, max_delay, factor, jitter=lambda: random.random() * jitter)
    return lambda attempt: base(attempt + refusals())


class SCSRunner(Service):
    """Executes the outputs of the :class:`SCSCore` (see the module docstring).

    :param sink: where STKMs go (the MUX).
    :param scramblers: service name -> its scrambler.
    :param session: the process's :class:`~bcast_sp4.session.SessionManager` (told of channels and
        streams, peer = channel name), or ``None``.
    :param log_switches: a debug log event per TEK switch; one per stream-period, so off by default
        (:attr:`switch_log` keeps every switch with its jitter anyway).
    :param autostart: start the schedulers with the service (choosing the first period
        ``start_allowance`` ahead); ``False``: only when :meth:`begin` is called (the lab calls it
        once every channel and stream is up).
    :param guard: the connection guard of the ECMG connections (per-turn budget, buffers,
        unfinished-message timeout), or ``None``.
    """

    log = Logger()
    #: the timer key of the one-off garbage collector tuning
    GC_TUNING = "gc_tuning"

    def __init__(self, core: SCSCore, clock: IReactorTime, sink: STKMSink, scramblers: dict[str, Scrambler],
                 max_message_length: int = 65540, endpoints: dict[str, FailoverEndpoint] | None = None,
                 jitter_history: int = 100_000, gc_tuning_after: float | None = None, session=None,
                 autostart: bool = True, guard: ConnectionGuard | None = None, log_switches: bool = False,
                 meter=None) -> None:
        #: a debug log event per TEK switch (see the class docstring)
        self.log_switches = log_switches
        self.guard = guard
        self.core = core
        self.clock = clock
        self.sink = sink
        self.scramblers = scramblers
        self.max_message_length = max_message_length
        self.endpoints = endpoints or {}
        self.protocols: dict[str, SCSProtocol] = {}
        self.executor = OutputExecutor(
            clock, self.log, "scs", session=session, timer_input=self._timer,
            handlers={ChannelOutput: self._to_channel, SubmitSTKM: self._submit, SwitchTEK: self._switch,
                      ProvideTEK: self._provide},
            peer_of=lambda event: str(event.fields.get("channel", "")),
            limiter=guard.limiter if guard is not None else None, meter=meter,
        )
        #: every TEK switch made by a SwitchTEK output: (service, Switch)
        self.switch_log: collections.deque[tuple[str, Switch]] = collections.deque(maxlen=jitter_history)
        self.on_switch: Callable[[str, Switch], object] | None = None
        self.gc_tuning_after = gc_tuning_after
        #: the young-generation collector once the GC is tuned (:func:`~.gc_tuning.tune_gc`)
        self.young_collector: YoungCollector | None = None
        self.autostart = autostart
        #: the schedulers were started (:meth:`begin`)
        self.begun = False
        self._stopping = False
        self._disconnect_waiters: list[Deferred] = []

    # -- service lifecycle ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.autostart:
            self.begin()

    def begin(self) -> None:
        """Start every service's scheduler now (once): the first period is chosen from now on."""
        if self.begun or not self.running:
            return
        self.begun = True
        now = self.clock.seconds()
        self.execute(self.core.start(now), now)
        if self.gc_tuning_after is not None:
            self.executor.timers.start(self.GC_TUNING, self.gc_tuning_after)

    @property
    def timers(self) -> KeyedTimers:
        """The armed timers of the core, by key."""
        return self.executor.timers

    def stopService(self) -> Deferred:
        """Close every channel in order (streams, each stream_close_response awaited up to the
        close timeout, channel_close, TCP close); fires once every connection is gone."""
        self._stopping = True
        now = self.clock.seconds()
        self.execute(self.core.stop(now), now)
        done = self._when_disconnected(self.core.timing.close_timeout + 1.0)

        def finish(_):
            self.executor.stop()
            if self.young_collector is not None:
                self.young_collector.stop()
                self.young_collector = None
            return super(SCSRunner, self).stopService()

        return done.addCallback(finish)

    def _when_disconnected(self, bound: float) -> Deferred:
        """Fires when no channel connection is left, or after *bound* s (the rest are dropped)."""
        if not self.protocols:
            return succeed(None)
        d = Deferred()
        self._disconnect_waiters.append(d)

        def late(failure: Failure) -> None:
            failure.trap(StopTimeout, CancelledError)
            self.log.warn("stop: {count} ECMG connections still open after {bound} s; dropped",
                          count=len(self.protocols), bound=bound)
            for protocol in list(self.protocols.values()):
                protocol.transport.loseConnection()

        return d.addTimeout(bound, self.clock).addErrback(late)

    def _timer(self, key: Hashable, now: float) -> list:
        if type(key) is str and key == self.GC_TUNING:  # the core's keys: no __eq__ call with a str
            self._tune_gc()
            return []
        return self.core.timer(key, now)

    def _tune_gc(self) -> None:
        collector = tune_gc(self.clock)
        if isinstance(collector, YoungCollector):
            self.young_collector = collector
        self.log.info("garbage collector tuned: set-up state frozen, young generations collected every 50 ms, "
                      "rare full passes")

    # -- connection events ----------------------------------------------------------------------

    def connected(self, protocol: SCSProtocol) -> None:
        if self._stopping:  # a reconnect that raced the stop: no new channel
            protocol.transport.loseConnection()
            return
        self.protocols[protocol.channel] = protocol
        now = self.clock.seconds()
        self.execute(self.core.connection_made(protocol.channel, now), now)

    def lost(self, protocol: SCSProtocol) -> None:
        if self.protocols.get(protocol.channel) is not protocol:
            return
        del self.protocols[protocol.channel]
        endpoint = self.endpoints.get(protocol.channel)
        if endpoint is not None:
            endpoint.rotate()
        now = self.clock.seconds()
        self.execute(self.core.connection_lost(protocol.channel, now), now)
        if not self.protocols:
            waiters, self._disconnect_waiters = self._disconnect_waiters, []
            for d in waiters:
                d.callback(None)

    # -- outputs ----------------------------------------------------------------------------------

    def execute(self, outputs: Iterable, now: float) -> None:
        """Carry out the core's *outputs* of an input made at *now*."""
        self.executor.run(outputs, now)

    def _to_channel(self, output: ChannelOutput, _now) -> None:
        protocol = self.protocols.get(output.channel)
        if protocol is None:
            return
        if type(output.output) is Send:
            self.executor.send(protocol.outbox, output.output.message)
        else:
            self.executor.close(protocol.outbox, output.output)

    def _submit(self, output: SubmitSTKM, _now) -> None:
        try:
            self.sink.submit(output.super_cas_id, output.ecm_id, output.cp_number, output.stkm,
                             output.on_air_from, output.repetition_ms)
        except Exception:
            self.log.failure("STKM sink failed for super_cas_id {super_cas_id:#010x} ecm_id {ecm_id}",
                             super_cas_id=output.super_cas_id, ecm_id=output.ecm_id)

    def _provide(self, output: ProvideTEK, _now) -> None:
        scrambler = self.scramblers.get(output.service)
        if scrambler is not None:
            scrambler.provide(output.cp_number, output.material, output.at)

    def _switch(self, output: SwitchTEK, _now) -> None:
        service = output.service
        scrambler = self.scramblers.get(service)
        if scrambler is None:
            return
        for switch in scrambler.activate(self.clock.seconds()):
            self.switch_log.append((service, switch))
            if self.on_switch is not None:
                self.on_switch(service, switch)
            if self.log_switches:
                self.log.debug("{service}: TEK {cp_number} on at {at} (jitter {jitter_ms} ms)", service=service,
                               cp_number=switch.cp_number, at=switch.at, jitter_ms=round(switch.jitter * 1000, 3))


__all__ = [
    "FailoverEndpoint",
    "SCSClientFactory",
    "SCSProtocol",
    "SCSRunner",
    "ScramblerProtocol",
    "retry_policy",
]
