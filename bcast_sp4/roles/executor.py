"""The one output executor of the roles: carries out what a pure machine asks for (STYLE §2).

Every role turns its machines' outputs (:mod:`bcast_sp4.machines.outputs`) into effects the same
way, here:

==========================  ==================================================================
output                      effect
==========================  ==================================================================
:class:`Send`               the encoded message joins its connection's :class:`Outbox`; every
                            outbox touched in one batch is written with ONE ``transport.write``
                            when the batch ends
:class:`Close`              the connection is closed after those writes (write-then-close);
                            later Sends to it are dropped
:class:`Notify`             one structured log event at the output's level (debug, info, warn,
                            error), and the event handed to the process's
                            :class:`~bcast_sp4.session.SessionManager` when there is one
:class:`StartTimer`         a keyed timer on the injected clock (:class:`KeyedTimers`: one
                            heap, one ``IDelayedCall`` for its earliest), due at
                            ``now + seconds`` (the work done since *now* does not make it late);
                            a timer armed under the same key is replaced
:class:`CancelTimer`        that timer disarmed
anything else               the role's handler for that output type
==========================  ==================================================================

A fired timer's key goes back to the role's ``timer_input(key, now)`` and what that returns is
executed in turn. Logs carry ids, codes and message names, never parameter values.
"""

from __future__ import annotations

import math
from heapq import heapify, heappop, heappush
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping

from twisted.internet.error import AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..logfields import HEX16, HEX32, readable
from ..machines.outputs import CancelTimer, Close, Notify, Output, Send, StartTimer
from ..wire import Message
from .log_limit import LogLimiter, host_of, shorten_fields

#: the levels a :class:`Notify` or :class:`Close` may carry, and the logger method of each
LEVELS = ("debug", "info", "warn", "error")


def log_at(log: Logger, level: str) -> Callable[..., None]:
    """The method of *log* for *level* (an unknown level logs at info)."""
    if level == "warn":
        return log.warn
    if level == "debug":
        return log.debug
    if level == "error":
        return log.error
    return log.info


_LOST = Close("connection lost", "info")


def event_text(peer: str, event: str, fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The log format and fields of a machine's event: ids stay integers in the fields and read in
    hex in the text (``client_id=0x00010001``), POSIX times become ISO 8601 UTC, bytes are never
    shown (:func:`bcast_sp4.logfields.readable`)."""
    parts = ["{peer} {event}" if peer else "{event}"]
    shown: dict[str, Any] = {"peer": peer, "event": event}
    for key, value in fields.items():
        if type(value) is int and key in HEX32:
            parts.append(f" {key}={{{key}:#010x}}")
            shown[key] = value
        elif type(value) is int and key in HEX16:
            parts.append(f" {key}={{{key}:#06x}}")
            shown[key] = value
        else:
            parts.append(f" {key}={{{key}}}")
            keep = isinstance(value, (int, str)) or (isinstance(value, (list, tuple)) and key not in HEX16 | HEX32)
            shown[key] = value if keep else readable(key, value)
    return "".join(parts), shown


class Outbox:
    """Write-then-close for one connection: queued bytes go out in one write, a close after them.

    :ivar peer: how the logs name the other end (``host:port``).
    :param limiter: the role's :class:`~.log_limit.LogLimiter`: the "closing connection" lines are
        limited per host (a flood's closes are a few lines and a summary), or ``None``: each logged.
    """

    __slots__ = ("transport", "peer", "log", "limiter", "chunks", "close", "closed", "push", "send")

    def __init__(self, log: Logger, peer: str = "?", limiter: LogLimiter | None = None) -> None:
        self.transport = None
        #: called right after each write when set: the transport's ``doWrite``, which sends now what
        #: the write buffered (write-through, :attr:`~._stream.SimulCryptStreamProtocol.write_through`)
        self.push = None
        #: when set, writes instead of ``transport.write`` + :attr:`push` while no close is asked:
        #: ``send(data)`` sends at once what the socket takes and leaves the rest to the transport
        #: (:func:`~._stream.socket_writer`, for a plain TCP connection)
        self.send = None
        self.peer = peer
        self.log = log
        self.limiter = limiter
        self.chunks: list[bytes] = []
        #: the :class:`Close` asked for, once one was
        self.close: Close | None = None
        self.closed = False

    @property
    def closing(self) -> bool:
        """A close was asked for: nothing more is written."""
        return self.close is not None

    def attach(self, transport, peer: str) -> None:
        self.transport, self.peer = transport, peer

    def queue(self, data: bytes) -> bool:
        """Queue *data*; ``True`` when the outbox was empty (it needs a flush)."""
        if self.close is not None:
            return False
        chunks = self.chunks
        chunks.append(data)
        return len(chunks) == 1

    def ask_close(self, close: Close) -> bool:
        """Ask for a close after what is queued; ``True`` when this is the first ask."""
        if self.close is not None:
            return False
        self.close = close
        return True

    def lost(self) -> None:
        """The connection is gone: nothing more is queued, written or closed."""
        self.closed = True
        self.chunks.clear()
        if self.close is None:
            self.close = _LOST

    def flush(self) -> None:
        """Write what is queued (one write), then close if asked."""
        transport = self.transport
        if self.chunks:
            data = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
            self.chunks.clear()
            if transport is not None and not self.closed:
                if self.send is not None and self.close is None:
                    self.send(data)
                else:
                    transport.write(data)
                    if self.push is not None and self.close is None:
                        self.push()
        if self.close is not None and not self.closed and transport is not None:
            self.closed = True
            level, limiter = self.close.level, self.limiter
            if limiter is None or limiter.allow(host_of(self.peer), ("closing", level), "connections closed", level):
                log_at(self.log, level)("closing connection with {peer}: {reason}", peer=self.peer,
                                        reason=self.close.reason)
            transport.loseConnection()


@implementer(IDelayedCall)
class TimerHandle:
    """The armed timer of one key of a :class:`KeyedTimers`, read (and driven) as an ``IDelayedCall``."""

    __slots__ = ("_timers", "_key", "_entry")

    def __init__(self, timers: "KeyedTimers", key: Hashable, entry: list) -> None:
        self._timers, self._key, self._entry = timers, key, entry

    def getTime(self) -> float:
        return self._entry[0]

    def active(self) -> bool:
        return self._timers._entries.get(self._key) is self._entry

    def cancel(self) -> None:
        if not self.active():
            raise AlreadyCancelled
        self._timers.cancel(self._key)

    def reset(self, secondsFromNow: float) -> None:
        if not self.active():
            raise AlreadyCancelled
        self._timers.start(self._key, secondsFromNow)
        self._entry = self._timers._entries[self._key]

    def delay(self, secondsLater: float) -> None:
        if not self.active():
            raise AlreadyCancelled
        self._timers.start(self._key, max(0.0, self._entry[0] + secondsLater - self._timers.clock.seconds()))
        self._entry = self._timers._entries[self._key]


class KeyedTimers(Mapping[Hashable, TimerHandle]):
    """Timers by key on an injected clock; *fire(key)* runs when one is due.

    One heap of ``[time, sequence, key]`` entries and ONE ``IDelayedCall`` on the clock, armed for
    the earliest entry (a timer heap above the reactor's): arming, replacing or cancelling a key is
    a dict update and a push compared in C, not an ``IDelayedCall`` per key in the reactor's heap
    (whose ``reset`` to an earlier time is a linear search of that heap). A replaced or cancelled
    entry stays in the heap, dead, until it comes up (or a rebuild when dead entries outnumber the
    live ones). When the clock's call runs, every entry due by then fires in time order, those due
    at the same instant in the order they were armed. :meth:`run_due` lets a role fire the timers
    due between two pieces of other work (the SCS between two received messages), so one long
    batch of input does not hold a due timer back until the reactor's next turn.

    Read as a mapping: key -> :class:`TimerHandle` (``getTime()``, ``active()``, ``cancel()``).
    """

    def __init__(self, clock: IReactorTime, fire: Callable[[Hashable], None]) -> None:
        self.clock = clock
        self._fire = fire
        #: key -> its live heap entry [time, sequence, key]
        self._entries: dict[Hashable, list] = {}
        self._heap: list[list] = []
        self._sequence = 0
        #: the clock's call, armed for :attr:`_call_at` (the earliest entry, live or dead)
        self._call: IDelayedCall | None = None
        self._call_at = math.inf
        self._running = False

    def start(self, key: Hashable, seconds: float, now: float | None = None) -> None:
        """Arm *key* to fire *seconds* after *now* (default: the clock's now; never in the past),
        replacing it if armed."""
        current = self.clock.seconds()
        if now is None:
            at = current + seconds
        else:
            at = now + seconds
            if at < current:
                at = current
        self._sequence += 1
        entry = [at, self._sequence, key]
        self._entries[key] = entry
        heap = self._heap
        heappush(heap, entry)
        if at < self._call_at and not self._running:  # while a run is on, it arms once at its end
            self._arm(at, current)
        elif len(heap) > 64 and len(heap) > 3 * len(self._entries):
            self._compact()

    def cancel(self, key: Hashable) -> None:
        if self._entries.pop(key, None) is not None and not self._entries:
            self._disarm()

    def cancel_all(self) -> None:
        self._entries.clear()
        self._disarm()

    def run_due(self, now: float) -> None:
        """Fire every timer due by *now* (called between other work; a no-op when none is due)."""
        heap = self._heap
        if heap and heap[0][0] <= now and not self._running:
            self._run(now)

    # -- internals ---------------------------------------------------------------------------------

    def _arm(self, at: float, current: float) -> None:
        call = self._call
        if call is not None and call.active():
            call.cancel()
        self._call_at = at
        self._call = self.clock.callLater(at - current if at > current else 0.0, self._due)

    def _disarm(self) -> None:
        self._heap.clear()
        self._call_at = math.inf
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _compact(self) -> None:
        self._heap = list(self._entries.values())
        heapify(self._heap)

    def _due(self) -> None:
        """The clock's call: everything due by the instant it was armed for (or by now) fires."""
        self._call = None
        at, self._call_at = self._call_at, math.inf
        now = self.clock.seconds()
        self._run(at if at > now else now)

    def _run(self, until: float) -> None:
        """Fire the entries due by *until* that were armed before this run began; one armed while it
        runs (even at once) waits for the clock's next call, as a ``callLater`` made in a
        ``callLater`` would."""
        heap, entries, fire, last = self._heap, self._entries, self._fire, self._sequence
        self._running = True
        try:
            while heap and heap[0][0] <= until and heap[0][1] <= last:
                entry = heappop(heap)
                key = entry[2]
                if entries.get(key) is entry:
                    del entries[key]
                    fire(key)
                    heap = self._heap  # a start() may have compacted it
        finally:
            self._running = False
            heap = self._heap
            while heap and entries.get(heap[0][2]) is not heap[0]:
                heappop(heap)  # dead entries on top: the clock's call is armed for a live one
            if not heap:
                self._disarm()
            elif self._call is None or heap[0][0] < self._call_at:
                self._arm(heap[0][0], self.clock.seconds())

    def __getitem__(self, key: Hashable) -> TimerHandle:
        return TimerHandle(self, key, self._entries[key])

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)


class OutputExecutor:
    """Carries out machine outputs for one role (see the module docstring).

    :param clock: the reactor (a ``Clock`` in tests): timers and ``now``.
    :param log: the role's logger.
    :param role: the role's name in the session manager (``"ecmg"``, ``"mux"``, ``"emmg"``, ``"scs"``).
    :param session: the process's session manager, told of every :class:`Notify`; ``None`` = none.
    :param timer_input: ``(key, now) -> outputs`` for a fired timer.
    :param handlers: output type -> ``handler(output, now)`` for the role's own outputs.
    :param default_outbox: ``() -> Outbox | None``: where Send / Close go when a batch names no
        connection (a client role's one connection); ``None`` drops them.
    :param peer_of: ``(notify) -> str``: how a Notify made without a connection names its peer.
    :param limiter: rate-limits warn-level events per peer (:mod:`.log_limit`); ``None``: every
        one is logged. Logged values are shortened either way (a 10,000-item list is one short line).
    :param meter: the process's metrics (``message_sent(role, peer, message, now)``), or ``None``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        log: Logger,
        role: str,
        *,
        session=None,
        timer_input: Callable[[Hashable, float], Iterable[Output]] | None = None,
        handlers: dict[type, Callable[[Any, float], None]] | None = None,
        default_outbox: Callable[[], Outbox | None] | None = None,
        peer_of: Callable[[Notify], str] | None = None,
        limiter: LogLimiter | None = None,
        meter=None,
    ) -> None:
        self.clock = clock
        self.log = log
        self.role = role
        self.session = session
        self.timer_input = timer_input
        self.handlers = dict(handlers or {})
        self.default_outbox = default_outbox
        self.peer_of = peer_of
        self.limiter = limiter
        self.meter = meter
        self.timers = KeyedTimers(clock, self._timer_fired)
        self._depth = 0
        self._touched: list[Outbox] = []

    # -- batches -----------------------------------------------------------------------------

    def begin(self) -> None:
        """Open a batch: writes wait for :meth:`end` (batches nest; the outermost flushes)."""
        self._depth += 1

    def end(self) -> None:
        """Close a batch; the outermost writes every outbox touched, then closes those asked to."""
        self._depth -= 1
        if self._depth == 0 and self._touched:
            touched, self._touched = self._touched, []
            for outbox in touched:
                outbox.flush()

    def run(self, outputs: Iterable[Output], now: float | None = None, outbox: Outbox | None = None) -> None:
        """Carry out *outputs* of an input made at *now*; Send / Close go to *outbox*."""
        self._depth += 1
        try:
            for output in outputs:
                kind = type(output)
                if kind is Send:
                    self.send(outbox, output.message)
                elif kind is Notify:
                    self.notify(output, outbox)
                elif kind is StartTimer:
                    self.timers.start(output.key, output.seconds, now)
                elif kind is CancelTimer:
                    self.timers.cancel(output.key)
                elif kind is Close:
                    self.close(outbox, output)
                else:
                    handler = self.handlers.get(kind)
                    if handler is None:
                        self.log.error("{role}: no handler for output {output!r}", role=self.role, output=output)
                    else:
                        handler(output, now)
        finally:
            self.end()

    # -- the basic outputs, also for handlers that route them --------------------------------

    def send(self, outbox: Outbox | None, message: Message) -> None:
        """Queue *message* on *outbox* (default: :attr:`default_outbox`); dropped when closing or absent."""
        if self.meter is not None:
            if outbox is None and self.default_outbox is not None:
                outbox = self.default_outbox()
            if outbox is not None:
                self.meter.message_sent(self.role, outbox.peer, message, self.clock.seconds())
        self.send_encoded(outbox, message.encode())

    def send_encoded(self, outbox: Outbox | None, data: bytes) -> None:
        """:meth:`send` of a message already encoded (a machine's hot-path reply)."""
        if outbox is None:
            outbox = self.default_outbox() if self.default_outbox is not None else None
            if outbox is None:
                return
        if outbox.close is None:  # outbox.queue(data), inline: once per reply on a hot path
            chunks = outbox.chunks
            chunks.append(data)
            if len(chunks) == 1:
                self._touched.append(outbox)
                if self._depth == 0:
                    self.end_now()

    def close(self, outbox: Outbox | None, close: Close) -> None:
        """Close *outbox*'s connection after what is queued on it."""
        if outbox is None:
            outbox = self.default_outbox() if self.default_outbox is not None else None
            if outbox is None:
                return
        if outbox.ask_close(close):
            self._touched.append(outbox)
            if self._depth == 0:
                self.end_now()

    def end_now(self) -> None:
        """Flush outside any batch (a routed Send made from a callback)."""
        self._depth += 1
        self.end()

    def notify(self, event: Notify, outbox: Outbox | None = None) -> None:
        """Log *event* at its level; tell the session manager."""
        if outbox is not None:
            peer = outbox.peer
        elif self.peer_of is not None:
            peer = self.peer_of(event)
        else:
            peer = ""
        fields = event.fields
        if self.session is not None:
            self.session.observe(self.role, peer, event.event, fields)
        if event.level == "warn" and self.limiter is not None and not self.limiter.allow(
                peer or self.role, "warn", "invalid messages and peer errors"):
            return
        if fields:
            fields = shorten_fields(fields)
        text, shown = event_text(peer, event.event, fields)
        log_at(self.log, event.level)(text, **shown)

    # -- timers --------------------------------------------------------------------------------

    def _timer_fired(self, key: Hashable) -> None:
        now = self.clock.seconds()
        try:
            if self.timer_input is None:
                raise LookupError(f"{self.role}: timer {key!r} fired but nothing takes timers")
            self.run(self.timer_input(key, now), now)
        except Exception:
            self.log.failure("{role}: timer {key!r} failed", Failure(), role=self.role, key=key)

    def stop(self) -> None:
        """Disarm every timer."""
        self.timers.cancel_all()


__all__ = ["KeyedTimers", "LEVELS", "Outbox", "OutputExecutor", "TimerHandle", "log_at"]
