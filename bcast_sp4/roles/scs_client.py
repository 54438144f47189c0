"""SCS role: ECMG<=>SCS TCP clients, the scramblers' UDP ports, timers (TS 103 197 §5; SP-4 §14.1.1.3.3).

Thin adapters around the pure :class:`~bcast_sp4.machines.scs.SCSCore` (channels + crypto-period
schedulers) and :class:`~bcast_sp4.media.scrambler.Scrambler`:

* one ``ClientService`` per ECMG channel, with a back-off retry policy (lengthened by the channel
  refusals in a row the machine counts) and ``prepareConnection`` sending channel_setup after
  every (re)connect; its endpoint is a :class:`FailoverEndpoint` (primary, then backup ECMG);
* :class:`SCSProtocol` per connection: bytes -> framer -> codec -> core -> outputs, replies to
  the same connection coalesced in one write;
* :class:`SCSRunner`: executes the core's outputs — timers through the injected clock (keyed
  ``IDelayedCall``s), TEKs to the scramblers (plus a timer at T(n) that makes the switch happen
  and measures its jitter), STKMs to the :class:`~bcast_sp4.roles.stkm_sink.STKMSink`, events to the
  log (structured fields, never key material);
* :class:`ScramblerProtocol`: one UDP datagram in, one protected datagram out.

``prepareConnection`` only sends channel_setup and returns at once: with Twisted 26 a connection
lost while a ``prepareConnection`` Deferred is pending raises ``NoTransition`` inside
``ClientService`` and stops its reconnecting, so the handshake belongs to the machine.
"""

from __future__ import annotations

import collections
import gc
import random
from typing import Callable, Hashable, Iterable

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..machines.outputs import Notify, Send
from ..machines.scs import CancelTimer, ChannelOutput, ProvideTEK, SCSCore, StartTimer, SubmitSTKM
from ..media.scrambler import Scrambler, Switch
from .stkm_sink import STKMSink
from ..wire import Interface, Message, PeerProtocolError
from ._stream import SimulCryptStreamProtocol


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
        return self.runner.dispatch(self, self.runner.core.receive(self.channel, item, now))

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


class YoungCollector:
    """Time-driven young-generation passes: ``gc.collect(1)`` every *interval* seconds.

    CPython starts a generation-0 pass when allocations minus deallocations of container objects
    exceed threshold 0. In the SCS's steady state every period frees about as many objects as it
    allocates (periods, TEKs, timers, STKMs of older periods die as new ones are made), so that
    count hardly moves: automatic passes become rare, the young generations fill with everything
    allocated since the last pass (the next periods' state lives seconds, so it survives gen0) and
    each pass - above all every 10th, the generation-1 pass - traverses tens of thousands of objects,
    stopping the reactor for tens of ms, more as the process approaches its steady state
    (``benchmarks/scs.py``: 42,000 objects in generation 1, 10-43 ms per pass). Collecting
    generations 0 and 1 on a clock instead bounds each pass to what the process allocated in
    *interval* (a ms or two at 10,000 streams). Every *full_every* passes the pass is a full one.
    """

    def __init__(self, clock: IReactorTime, interval: float, full_every: int | None) -> None:
        self.clock, self.interval, self.full_every = clock, interval, full_every
        self.passes = 0
        self._call: IDelayedCall | None = clock.callLater(interval, self._collect)

    def _collect(self) -> None:
        self.passes += 1
        full = self.full_every is not None and self.passes % self.full_every == 0
        gc.collect(2 if full else 1)
        self._call = self.clock.callLater(self.interval, self._collect)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def tune_gc(full_collection_every: int = 1000, clock: IReactorTime | None = None,
            young_interval: float | None = 0.05) -> YoungCollector | None:
    """Keep the cyclic garbage collector's passes out of the CW-switch path.

    With 10,000 services a full (generation-2) pass over the SCS's state stops the reactor for
    several hundred ms (``benchmarks/scs.py`` measured 430 ms). Called once the services are set
    up: collect, move everything alive to the permanent generation (``gc.freeze``), and run a full
    pass only every *full_collection_every* generation-1 passes instead of every 10.

    Young generations: with *young_interval* (default), the automatic passes (triggered by the
    allocation count, which stalls in the steady state, so they grow to tens of ms) are replaced
    by a :class:`YoungCollector` on *clock* (default: the global reactor) collecting generations
    0 and 1 every *young_interval* seconds; its full pass comes every *full_collection_every* x 10
    young passes (the automatic generation-1 pass came every 10 generation-0 passes), i.e. every
    ~8 min at 0.05 s. The automatic thresholds stay as a safety net for allocation bursts, with
    full passes left to the collector. ``young_interval=None``: thresholds only, as before.
    """
    gc.collect()
    gc.freeze()
    threshold0, threshold1, _ = gc.get_threshold()
    if young_interval is None:
        gc.set_threshold(threshold0, threshold1, full_collection_every)
        return None
    if clock is None:
        from twisted.internet import reactor as clock  # noqa: PLC0415
    # an explicit pass counts towards the generation-2 trigger too: keep the full passes scheduled
    gc.set_threshold(threshold0, threshold1, 2**30)
    return YoungCollector(clock, young_interval, full_collection_every * 10)


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
        self._switch_calls: dict[tuple[str, float], IDelayedCall] = {}
        #: every TEK switch made by a switch timer: (service, Switch)
        self.switch_log: collections.deque[tuple[str, Switch]] = collections.deque(maxlen=jitter_history)
        self.on_switch: Callable[[str, Switch], object] | None = None
        self.gc_tuning_after = gc_tuning_after
        self._gc_call: IDelayedCall | None = None
        self._young_collector: YoungCollector | None = None

    # -- service lifecycle ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.execute(self.core.start(self.clock.seconds()))
        if self.gc_tuning_after is not None:
            self._gc_call = self.clock.callLater(self.gc_tuning_after, self._tune_gc)

    def stopService(self):
        self.execute(self.core.stop(self.clock.seconds()))
        for call in list(self.timers.values()) + list(self._switch_calls.values()):
            if call.active():
                call.cancel()
        self.timers.clear()
        self._switch_calls.clear()
        if self._gc_call is not None and self._gc_call.active():
            self._gc_call.cancel()
        if self._young_collector is not None:
            self._young_collector.stop()
            self._young_collector = None
        return super().stopService()

    def _tune_gc(self) -> None:
        self._gc_call = None
        collector = tune_gc()
        if isinstance(collector, YoungCollector):
            self._young_collector = collector
        self.log.info("garbage collector tuned: set-up state frozen, young generations collected every 50 ms, "
                      "rare full passes")

    # -- connection events ----------------------------------------------------------------------

    def connected(self, protocol: SCSProtocol) -> None:
        self.protocols[protocol.channel] = protocol
        self.execute(self.core.connection_made(protocol.channel, self.clock.seconds()))

    def lost(self, protocol: SCSProtocol) -> None:
        if self.protocols.get(protocol.channel) is not protocol:
            return
        del self.protocols[protocol.channel]
        endpoint = self.endpoints.get(protocol.channel)
        if endpoint is not None:
            endpoint.rotate()
        self.execute(self.core.connection_lost(protocol.channel, self.clock.seconds()))

    def dispatch(self, protocol: SCSProtocol, outputs: Iterable) -> list:
        """Execute *outputs*, except Send / Close for *protocol*'s own connection, returned plain."""
        own: list = []
        rest: list = []
        for output in outputs:
            if type(output) is ChannelOutput and output.channel == protocol.channel:
                own.append(output.output)
            else:
                rest.append(output)
        self.execute(rest)
        return own

    # -- outputs ----------------------------------------------------------------------------------

    def execute(self, outputs: Iterable) -> None:
        for output in outputs:
            kind = type(output)
            if kind is StartTimer:
                old = self.timers.pop(output.key, None)
                if old is not None and old.active():
                    old.cancel()
                self.timers[output.key] = self.clock.callLater(output.seconds, self._fire, output.key)
            elif kind is ChannelOutput:
                self._to_channel(output)
            elif kind is SubmitSTKM:
                try:
                    self.sink.submit(output.super_cas_id, output.ecm_id, output.cp_number, output.stkm,
                                     output.on_air_from, output.repetition_ms)
                except Exception:
                    self.log.failure("STKM sink failed for super_cas_id {super_cas_id:#010x} ecm_id {ecm_id}",
                                     super_cas_id=output.super_cas_id, ecm_id=output.ecm_id)
            elif kind is ProvideTEK:
                self._provide(output)
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
        try:
            self.execute(self.core.timer(key, self.clock.seconds()))
        except Exception:
            self.log.failure("SCS timer {key!r} failed", key=key)

    def _provide(self, output: ProvideTEK) -> None:
        scrambler = self.scramblers.get(output.service)
        if scrambler is None:
            return
        scrambler.provide(output.cp_number, output.material, output.at)
        key = (output.service, output.at)
        old = self._switch_calls.pop(key, None)
        if old is not None and old.active():
            old.cancel()
        self._switch_calls[key] = self.clock.callLater(max(0.0, output.at - self.clock.seconds()), self._switch, key)

    def _switch(self, key: tuple[str, float]) -> None:
        self._switch_calls.pop(key, None)
        service = key[0]
        for switch in self.scramblers[service].activate(self.clock.seconds()):
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
    "YoungCollector",
    "retry_policy",
    "tune_gc",
]
