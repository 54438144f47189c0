"""SCS role: ECMG<=>SCS TCP clients, the scramblers' UDP ports, timers (TS 103 197 §5; SP-4 §14.1.1.3.3).

Thin adapters around the pure :class:`~bcast_sp4.machines.scs_core.SCSCore` (channels + crypto-period
schedulers) and :class:`~bcast_sp4.media.scrambler.Scrambler`:

* one ``ClientService`` per ECMG channel, with a back-off retry policy (lengthened by the channel
  refusals in a row the machine counts) and ``prepareConnection`` sending channel_setup after
  every (re)connect; its endpoint is a :class:`FailoverEndpoint` (primary, then backup ECMG);
* :class:`SCSProtocol` per connection: bytes -> framer -> codec -> core -> outputs, replies to
  the same connection coalesced in one write;
* :class:`SCSRunner`: executes the core's outputs — timers through the injected clock (one
  registry of keyed ``IDelayedCall``s; a timer's delay counts from the ``now`` the core was given,
  so the work done since does not make it late), TEKs to the scramblers ahead of T(n), the switch
  at T(n) (the core's :class:`~bcast_sp4.machines.scs_records.SwitchTEK`, whose lateness is the
  measured switch jitter), STKMs to the :class:`~bcast_sp4.roles.stkm_sink.STKMSink`, events to the
  log (structured fields, never key material);
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
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..machines.outputs import CancelTimer, Notify, Send, StartTimer
from ..machines.scs_core import SCSCore
from ..machines.scs_records import ChannelOutput, ProvideTEK, SubmitSTKM, SwitchTEK
from ..media.scrambler import Scrambler, Switch
from ..wire import Interface, Message, PeerProtocolError
from ._stream import SimulCryptStreamProtocol
from .gc_tuning import YoungCollector, tune_gc
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

    def __init__(self, runner: "SCSRunner", channel: str) -> None:
        super().__init__(runner.clock, runner.max_message_length)
        self.runner, self.channel = runner, channel

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.log.info("channel {channel}: connected to ECMG {peer}", channel=self.channel, peer=self.peer)

    def start_channel(self) -> None:
        """``prepareConnection``: send channel_setup (the rest of the handshake is the machine's)."""
        self.runner.connected(self)

    def handle(self, item: Message | PeerProtocolError, now: float, received_at: float) -> list:
        return self.runner.dispatch(self, self.runner.core.receive(self.channel, item, now), now)

    def connectionLost(self, reason: Failure) -> None:
        self.log.info("channel {channel}: connection to {peer} closed", channel=self.channel, peer=self.peer)
        self.runner.lost(self)


class SCSClientFactory(Factory):
    """Builds the :class:`SCSProtocol` of one channel."""

    def __init__(self, runner: "SCSRunner", channel: str) -> None:
        self.runner, self.channel = runner, channel

    def buildProtocol(self, addr) -> SCSProtocol:
        protocol = SCSProtocol(self.runner, self.channel)
        protocol.factory = self
        return protocol


class ScramblerProtocol(DatagramProtocol):
    """Reads one service's content from UDP, writes it protected to *output*."""

    def __init__(self, scrambler: Scrambler, output: tuple[str, int], clock: IReactorTime) -> None:
        self.scrambler, self.output, self.clock = scrambler, output, clock

    def datagramReceived(self, data: bytes, addr) -> None:
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
    """

    log = Logger()

    def __init__(self, core: SCSCore, clock: IReactorTime, sink: STKMSink, scramblers: dict[str, Scrambler],
                 max_message_length: int = 65540, endpoints: dict[str, FailoverEndpoint] | None = None,
                 jitter_history: int = 100_000, gc_tuning_after: float | None = None) -> None:
        self.core = core
        self.clock = clock
        self.sink = sink
        self.scramblers = scramblers
        self.max_message_length = max_message_length
        self.endpoints = endpoints or {}
        self.protocols: dict[str, SCSProtocol] = {}
        self.timers: dict[Hashable, IDelayedCall] = {}
        #: every TEK switch made by a SwitchTEK output: (service, Switch)
        self.switch_log: collections.deque[tuple[str, Switch]] = collections.deque(maxlen=jitter_history)
        self.on_switch: Callable[[str, Switch], object] | None = None
        self.gc_tuning_after = gc_tuning_after
        self._gc_call: IDelayedCall | None = None
        #: the young-generation collector once the GC is tuned (:func:`~.gc_tuning.tune_gc`)
        self.young_collector: YoungCollector | None = None
        self._stopping = False
        self._disconnect_waiters: list[Deferred] = []

    # -- service lifecycle ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        now = self.clock.seconds()
        self.execute(self.core.start(now), now)
        if self.gc_tuning_after is not None:
            self._gc_call = self.clock.callLater(self.gc_tuning_after, self._tune_gc)

    def stopService(self) -> Deferred:
        """Close every channel in order (streams, each stream_close_response awaited up to the
        close timeout, channel_close, TCP close); fires once every connection is gone."""
        self._stopping = True
        now = self.clock.seconds()
        self.execute(self.core.stop(now), now)
        done = self._when_disconnected(self.core.timing.close_timeout + 1.0)

        def finish(_):
            for call in self.timers.values():
                if call.active():
                    call.cancel()
            self.timers.clear()
            if self._gc_call is not None and self._gc_call.active():
                self._gc_call.cancel()
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
            failure.trap(CancelledError)
            self.log.warn("stop: {count} ECMG connections still open after {bound} s; dropped",
                          count=len(self.protocols), bound=bound)
            for protocol in list(self.protocols.values()):
                protocol.transport.loseConnection()

        return d.addTimeout(bound, self.clock).addErrback(late)

    def _tune_gc(self) -> None:
        self._gc_call = None
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

    def dispatch(self, protocol: SCSProtocol, outputs: Iterable, now: float) -> list:
        """Execute *outputs* (of an input at *now*), except Send / Close for *protocol*'s own
        connection, returned plain."""
        own: list = []
        rest: list = []
        for output in outputs:
            if type(output) is ChannelOutput and output.channel == protocol.channel:
                own.append(output.output)
            else:
                rest.append(output)
        self.execute(rest, now)
        return own

    # -- outputs ----------------------------------------------------------------------------------

    def execute(self, outputs: Iterable, now: float) -> None:
        """Carry out the core's *outputs* of an input made at *now*."""
        for output in outputs:
            kind = type(output)
            if kind is StartTimer:
                old = self.timers.pop(output.key, None)
                if old is not None and old.active():
                    old.cancel()
                # due at now + seconds: the time spent since *now* (earlier outputs) is not added
                delay = max(0.0, now + output.seconds - self.clock.seconds())
                self.timers[output.key] = self.clock.callLater(delay, self._fire, output.key)
            elif kind is ChannelOutput:
                self._to_channel(output)
            elif kind is SubmitSTKM:
                try:
                    self.sink.submit(output.super_cas_id, output.ecm_id, output.cp_number, output.stkm,
                                     output.on_air_from, output.repetition_ms)
                except Exception:
                    self.log.failure("STKM sink failed for super_cas_id {super_cas_id:#010x} ecm_id {ecm_id}",
                                     super_cas_id=output.super_cas_id, ecm_id=output.ecm_id)
            elif kind is SwitchTEK:
                self._switch(output.service)
            elif kind is ProvideTEK:
                scrambler = self.scramblers.get(output.service)
                if scrambler is not None:
                    scrambler.provide(output.cp_number, output.material, output.at)
            elif kind is CancelTimer:
                old = self.timers.pop(output.key, None)
                if old is not None and old.active():
                    old.cancel()
            elif kind is Notify:
                self._log_event(output)
            else:
                self.log.error("unknown output {output!r}", output=output)

    def _to_channel(self, output: ChannelOutput) -> None:
        protocol = self.protocols.get(output.channel)
        if protocol is None or protocol.transport is None:
            return
        if type(output.output) is Send:
            protocol.transport.write(output.output.message.encode())
        else:
            self.log.info("channel {channel}: closing: {reason}", channel=output.channel, reason=output.output.reason)
            protocol._closing = True
            protocol.transport.loseConnection()

    def _fire(self, key: Hashable) -> None:
        self.timers.pop(key, None)
        now = self.clock.seconds()
        try:
            self.execute(self.core.timer(key, now), now)
        except Exception:
            self.log.failure("SCS timer {key!r} failed", key=key)

    def _switch(self, service: str) -> None:
        scrambler = self.scramblers.get(service)
        if scrambler is None:
            return
        for switch in scrambler.activate(self.clock.seconds()):
            self.switch_log.append((service, switch))
            if self.on_switch is not None:
                self.on_switch(service, switch)
            self.log.debug("{service}: TEK {cp_number} on at {at} (jitter {jitter_ms} ms)", service=service,
                           cp_number=switch.cp_number, at=switch.at, jitter_ms=round(switch.jitter * 1000, 3))

    def _log_event(self, event: Notify) -> None:
        fields = dict(event.fields)
        session = getattr(self, "session", None)
        if session is not None:
            session.observe("scs", str(fields.get("channel", "")), event.event, fields)
        text = "{event} " + " ".join(f"{k}={{{k}}}" for k in fields)
        emit = {"debug": self.log.debug, "warn": self.log.warn, "error": self.log.error}.get(event.level, self.log.info)
        emit(text, event=event.event, **fields)


__all__ = [
    "FailoverEndpoint",
    "SCSClientFactory",
    "SCSProtocol",
    "SCSRunner",
    "ScramblerProtocol",
    "retry_policy",
]
