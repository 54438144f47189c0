"""The session manager: one registry of channels, streams and peers per process, with Deferreds.

Every role registers what it sets up and publishes the events others wait on; co-located roles
find each other here (the SCS hands STKMs to an in-process MUX, the EMMG its LTKMs), so the same
role code works in one lab process and in separate processes (where the link is SimulCrypt).

Events are *topics* keyed by ids:

=================  ==========================================  ===============================
topic              key                                         value
=================  ==========================================  ===============================
``channel``        (role, peer, channel_id)                    the role's channel record
``stream``         (role, peer, channel_id, stream_id)         the role's stream record
``stkm``           (super_CAS_id, ECM_id, CP_number)           STKM bytes
``allocation``     (client_id, data_id)                        granted bandwidth, kbit/s
``peer_lost``      peer                                        the reason (a string)
``listening``      the server's endpoint description           the role's name
=================  ==========================================  ===============================

The SCS names its channels itself (peer = the channel's name, channel_id 0); the ECMG and MUX
name the peer by address and the channel by its id.

:meth:`SessionManager.when` hands each caller a fresh Deferred (STYLE §5), fired on a later
reactor turn so no callback re-enters a role mid-transition; an event already published fires it
at once (on the next turn). A timeout errbacks with :class:`twisted.internet.defer.TimeoutError`;
:meth:`SessionManager.fail` (e.g. a channel going away) errbacks every waiter of that key with
the given error. The store of published values is bounded per topic (oldest evicted first).
:meth:`SessionManager.all_ready` waits for many named events at once under one deadline and
fails with :class:`NotReady` naming every one still missing (how the lab starts up).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

TOPICS = ("channel", "stream", "stkm", "allocation", "peer_lost", "listening")


class ChannelLost(Exception):
    """What a waiter gets when the channel, stream or peer it waited on went away."""


class NotReady(Exception):
    """:meth:`SessionManager.all_ready` gave up: the message names what never became ready."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class _Topic:
    def __init__(self, limit: int) -> None:
        self.values: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
        self.waiters: dict[Hashable, list[Deferred]] = {}
        self.limit = limit


class SessionManager:
    """Shared by every role of one process (created in ``makeService``; the lab shares one).

    :param clock: the reactor (or a ``Clock`` in tests).
    :param limit: published values kept per topic.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, limit: int = 100_000) -> None:
        self.clock = clock
        self._topics = {name: _Topic(limit) for name in TOPICS}
        self._services: dict[str, Any] = {}
        self._observers: list[Callable[[str, str, str, dict[str, Any]], None]] = []

    # -- generic publish / wait ----------------------------------------------------------------

    def publish(self, topic: str, key: Hashable, value: Any) -> None:
        """Record *value* for *key* and fire everyone waiting on it."""
        store = self._topics[topic]
        store.values[key] = value
        store.values.move_to_end(key)
        while len(store.values) > store.limit:
            store.values.popitem(last=False)
        for d in store.waiters.pop(key, ()):
            self.clock.callLater(0, self._fire, d, value)

    def forget(self, topic: str, key: Hashable) -> None:
        """Drop a published value (the channel or stream is gone)."""
        self._topics[topic].values.pop(key, None)

    def fail(self, topic: str, key: Hashable, error: Exception) -> None:
        """Errback every waiter of *key* with *error* and drop its value."""
        store = self._topics[topic]
        store.values.pop(key, None)
        for d in store.waiters.pop(key, ()):
            self.clock.callLater(0, self._fire, d, Failure(error))

    def current(self, topic: str, key: Hashable, default: Any = None) -> Any:
        """The value published for *key*, if any (no waiting)."""
        return self._topics[topic].values.get(key, default)

    def when(self, topic: str, key: Hashable, timeout: float | None = None) -> Deferred:
        """A fresh Deferred that fires with the value of *key* (already published, or when it is)."""
        store = self._topics[topic]

        def cancel(d: Deferred) -> None:
            waiting = store.waiters.get(key, [])
            if d in waiting:
                waiting.remove(d)
                if not waiting:
                    del store.waiters[key]

        d: Deferred = Deferred(cancel)
        if key in store.values:
            self.clock.callLater(0, self._fire, d, store.values[key])
        else:
            store.waiters.setdefault(key, []).append(d)
        if timeout is not None:
            d.addTimeout(timeout, self.clock)
        return d

    def keys(self, topic: str) -> list[Hashable]:
        """The keys published on *topic* and not forgotten (for metrics and the status page)."""
        return list(self._topics[topic].values)

    def items(self, topic: str) -> list[tuple[Hashable, Any]]:
        """The (key, value) pairs published on *topic* and not forgotten."""
        return list(self._topics[topic].values.items())

    def waiting(self, topic: str) -> int:
        """How many Deferreds wait on *topic* (for tests and metrics)."""
        return sum(len(v) for v in self._topics[topic].waiters.values())

    @staticmethod
    def _fire(d: Deferred, result: Any) -> None:
        if not d.called:
            d.callback(result) if not isinstance(result, Failure) else d.errback(result)

    # -- named events ----------------------------------------------------------------------------

    def channel_ready(self, role: str, peer: str, channel_id: int, record: Any) -> None:
        self.publish("channel", (role, peer, channel_id), record)

    def when_channel_ready(self, role: str, peer: str, channel_id: int, timeout: float | None = None) -> Deferred:
        return self.when("channel", (role, peer, channel_id), timeout)

    def stream_ready(self, role: str, peer: str, channel_id: int, stream_id: int, record: Any) -> None:
        self.publish("stream", (role, peer, channel_id, stream_id), record)

    def when_stream_ready(self, role: str, peer: str, channel_id: int, stream_id: int, timeout: float | None = None) -> Deferred:
        return self.when("stream", (role, peer, channel_id, stream_id), timeout)

    def channel_lost(self, role: str, peer: str, channel_id: int, reason: str) -> None:
        """The channel and every stream of it are gone: waiters get :class:`ChannelLost`."""
        error = ChannelLost(f"{role} channel {channel_id} with {peer}: {reason}")
        self.fail("channel", (role, peer, channel_id), error)
        for topic in ("stream",):
            store = self._topics[topic]
            for key in [k for k in list(store.values) + list(store.waiters) if k[:3] == (role, peer, channel_id)]:
                self.fail(topic, key, error)

    def stkm_ready(self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes) -> None:
        self.publish("stkm", (super_cas_id, ecm_id, cp_number), stkm)
        if self._observers:
            self._tell("stkm", "", "stkm_ready",
                       {"super_cas_id": super_cas_id, "ecm_id": ecm_id, "cp_number": cp_number, "length": len(stkm)})

    def when_stkm(self, super_cas_id: int, ecm_id: int, cp_number: int, timeout: float | None = None) -> Deferred:
        return self.when("stkm", (super_cas_id, ecm_id, cp_number), timeout)

    def allocation_granted(self, client_id: int, data_id: int, kbps: int | None) -> None:
        self.publish("allocation", (client_id, data_id), kbps)

    def when_allocation(self, client_id: int, data_id: int, timeout: float | None = None) -> Deferred:
        return self.when("allocation", (client_id, data_id), timeout)

    def listening(self, endpoint: str, role: str) -> None:
        """A server of *role* listens on *endpoint* (its description string)."""
        self.publish("listening", endpoint, role)

    def when_listening(self, endpoint: str, timeout: float | None = None) -> Deferred:
        return self.when("listening", endpoint, timeout)

    def all_ready(self, waits: dict[str, Deferred], timeout: float, what: str) -> Deferred:
        """A Deferred firing with ``{name: value}`` once every Deferred of *waits* has fired.

        After *timeout* seconds it fails with :class:`NotReady` ("*what*: not ready after N s:
        name, name") and cancels the waits still pending; the first wait that fails makes it fail
        at once with :class:`NotReady` naming that wait and its reason.
        """
        pending = dict(waits)
        results: dict[str, Any] = {}
        finished: list[bool] = []

        def release() -> None:
            finished.append(True)
            if deadline.active():
                deadline.cancel()
            rest = list(pending.values())
            pending.clear()
            for d in rest:
                d.cancel()

        def finish(outcome: Any) -> None:
            if finished:
                return
            release()
            done.callback(outcome) if not isinstance(outcome, Failure) else done.errback(outcome)

        done: Deferred = Deferred(lambda _d: None if finished else release())

        def expire() -> None:
            missing = list(pending)
            finish(Failure(NotReady(f"{what}: not ready after {timeout:g} s: {', '.join(missing)}", missing)))

        def track(name: str, d: Deferred) -> None:
            def ok(value: Any) -> None:
                if finished:
                    return
                results[name] = value
                pending.pop(name, None)
                if not pending:
                    finish(results)

            def failed(failure: Failure) -> None:
                if not finished:
                    finish(Failure(NotReady(f"{what}: {name}: {failure.getErrorMessage()}", [name])))

            d.addCallbacks(ok, failed)

        deadline = self.clock.callLater(timeout, expire)
        if not pending:
            finish(results)
        for name, d in waits.items():
            track(name, d)
        return done

    def peer_lost(self, peer: str, reason: str) -> None:
        self.publish("peer_lost", peer, reason)

    def when_peer_lost(self, peer: str, timeout: float | None = None) -> Deferred:
        self.forget("peer_lost", peer)  # only a loss after this call counts
        return self.when("peer_lost", peer, timeout)

    # -- what the roles report -----------------------------------------------------------------

    def observe(self, role: str, peer: str, event: str, fields: dict[str, Any]) -> None:
        """Turn a role's lifecycle event (its machines' ``Notify``) into session state and events.

        ``channel_open`` / ``stream_open`` publish the channel / stream, ``channel_closed`` fails
        everything waiting on that channel and its streams, ``stream_closed`` forgets the stream,
        ``bandwidth_allocated`` publishes the allocation of (client_id, data_id). Other events
        are not the session's business.
        """
        if self._observers:
            self._tell(role, peer, event, fields)
        channel = fields.get("channel_id", 0)
        if event == "channel_open":
            self.channel_ready(role, peer, channel, dict(fields))
        elif event == "stream_open":
            self.stream_ready(role, peer, channel, fields.get("stream_id", 0), dict(fields))
        elif event == "channel_closed":
            self.channel_lost(role, peer, channel, str(fields.get("why", "closed")))
        elif event == "stream_closed":
            self.fail("stream", (role, peer, channel, fields.get("stream_id", 0)), ChannelLost("stream closed"))
        elif event == "bandwidth_allocated" and "client_id" in fields:
            self.allocation_granted(fields["client_id"], fields.get("data_id", 0), fields.get("allocation"))

    def connection_lost(self, role: str, peer: str, reason: str) -> None:
        """A role lost its connection to *peer*."""
        self.peer_lost(f"{role}:{peer}", reason)
        if self._observers:
            self._tell(role, peer, "connection_lost", {"reason": reason})

    # -- observers (metrics, status page) ------------------------------------------------------

    def add_observer(self, observer: Callable[[str, str, str, dict[str, Any]], None]) -> None:
        """Call ``observer(role, peer, event, fields)`` for every event the roles report
        (:meth:`observe`), every STKM made ready (event ``stkm_ready``; length, never bytes) and
        every connection lost (event ``connection_lost``). An observer's exception is logged."""
        self._observers.append(observer)

    def _tell(self, role: str, peer: str, event: str, fields: dict[str, Any]) -> None:
        for observer in self._observers:
            try:
                observer(role, peer, event, fields)
            except Exception:
                self.log.failure("session observer {observer!r} failed on {event}", Failure(), observer=observer,
                                 event=event)

    # -- co-located roles --------------------------------------------------------------------------

    def register(self, name: str, service: Any) -> None:
        """Make an in-process role API findable (e.g. ``"mux"`` for the MUX's STKM/LTKM intake)."""
        if name in self._services:
            raise ValueError(f"a {name!r} is already registered in this process")
        self._services[name] = service

    def unregister(self, name: str) -> None:
        self._services.pop(name, None)

    def lookup(self, name: str) -> Any | None:
        """The in-process role registered as *name*, or ``None`` (then use the network link)."""
        return self._services.get(name)

    def call_guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call into another role; an exception there is logged, never propagated to the caller."""
        try:
            return fn(*args)
        except Exception:
            self.log.failure("{what} failed", Failure(), what=what)
            return None
