"""The connection guard of the TCP roles: fair service, timeouts, buffer budgets, allow-lists (issue #13).

TS 103 197 leaves a node's defences to the implementation; these are ours. One
:class:`ConnectionGuard` per role (per listening factory, or per client role) holds the limits
(:class:`~bcast_sp4.config.limits.Limits`), the counts shared by its connections and the
:class:`~.log_limit.LogLimiter` of its warnings; one :class:`ConnectionWatch` per connection
carries out the per-connection rules. The protocols only call the small hooks named below.

Rules (times from :class:`Limits`; 0 turns a timeout off):

* **Admission** (:meth:`ConnectionGuard.admit`, from ``buildProtocol``): a peer outside the
  allow-list, or one more connection than ``max_connections`` (channel or not), is refused:
  ``buildProtocol`` returns ``None`` and Twisted closes the socket at once.
* **Fair service** (:meth:`ConnectionWatch.take`): a connection has at most
  ``messages_per_turn`` messages handled per reactor turn, and no more once ``turn_time`` has
  passed in the turn (the message under way finishes). The rest stays queued, the transport
  stops reading (``pauseProducing``) and the next batch runs on the next turn
  (``callLater(0)``); reading resumes when the queue is empty. The queued messages keep the time
  their bytes arrived, so a deadline (the ECMG's ``max_comp_time``, error 0x000D) counts the wait.
* **Buffers** (:meth:`ConnectionWatch.turn_done`): bytes received and not yet handled (an
  unfinished message plus the queue) are bounded per connection and for the role as a whole;
  the connection that goes past either bound is closed. A server's connection without a channel
  (none opened, nothing waiting to be handled) may hold only ``max_buffered_bytes_no_channel``
  of an unfinished message: before its channel_setup a peer has nothing big to send, and a flood
  of half-sent messages is dropped as it arrives instead of holding 32 KiB per connection for the
  ``message_timeout``.
* **Timeouts**: a server closes a connection that has no channel ``first_channel_setup_timeout``
  after it was accepted (or after its channel closed); any connection whose unfinished message
  is not complete ``message_timeout`` after its first byte; a channel silent for
  ``idle_timeout`` is sent a channel_test, and closed when nothing arrives within
  ``channel_test_timeout``.

* **Memory return** (:class:`Reclaimer`): a closed connection is freed by reference counting (the
  protocol, its framer and buffer, and the ECMG and MUX machines, whose message dispatch is a
  per-class table of functions). When many connections or many buffered bytes have gone (a flood
  ended), once they stopped going, the process runs a full garbage collection (any cycles, the free lists
  of the interpreter, whose cached objects keep allocator pools in use) and asks the C allocator
  to give free pages back to the system (glibc ``malloc_trim``). Measured with
  ``benchmarks/robustness.py`` (issue #13), what stays after a flood of 2,000 idle connections is
  CPython's small-object allocator: about 7 of its 1 MiB arenas that a few long-lived objects made
  during the flood (timers re-armed, log-limiter entries) keep, each with almost all its pools
  free; a second flood reuses them.

Every refusal and close is counted (:attr:`ConnectionGuard.counters`) and logged through the
limiter, so a flood writes a few lines and a summary, never one line per connection.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import ipaddress
import resource
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper

from ..config.limits import Limits, Network
from .log_limit import LogLimiter

#: hosts remembered by :class:`AllowList` (cleared when full)
_CACHE_SIZE = 4096
#: received bytes cut into messages per step: a 64 KiB read of small messages is ~2,800 of them,
#: whose framing alone would outlast a turn
READ_SLICE = 8192


class AllowList:
    """CIDR allow-list of peer addresses; ``None`` networks allow everyone.

    IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``) are checked as the IPv4 address they carry.
    Results are cached per host string, so the UDP hot path pays one dict look-up.
    """

    def __init__(self, networks: Sequence[Network] | None) -> None:
        self.networks = None if networks is None else tuple(networks)
        self._cache: dict[str, bool] = {}

    def __call__(self, host: str | None) -> bool:
        if self.networks is None:
            return True
        known = self._cache.get(host)  # type: ignore[arg-type]
        if known is not None:
            return known
        allowed = self._check(host)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[host] = allowed  # type: ignore[index]
        return allowed

    def _check(self, host: str | None) -> bool:
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False  # not an IP peer (a UNIX socket): only an explicit allow-list entry could match
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)  # type: ignore[union-attr]


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or ``None`` where the C library has none."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS), or no C library handle (Windows)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0)


def _rss_kib() -> int | None:
    """This process's resident set size (Linux ``/proc``), else ``None``."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * (resource.getpagesize() // 1024)
    except (OSError, ValueError, IndexError):
        return None


class Reclaimer:
    """Gives memory back after a flood: full GC, then ``malloc_trim``, once things calmed down.

    :meth:`note` is told the connection count and buffered bytes whenever they change. Once at
    least *connections* connections or *buffered* bytes have gone since the high-water mark, a
    reclaim is due *delay* seconds after the last change: each further change (the rest of the
    flood going) postpones it again, but never past *max_wait* seconds after it first became due,
    so that steady churn still gets one. A reclaim that ran while connections were still going
    (it waited *max_wait*) is followed by another once at least a quarter of the marks more have
    gone: the tail of a flood that closes over tens of seconds. A reclaim after *delay* quiet
    seconds starts the marks again from what is open.

    Run too early (the first connections of a flood gone, most still open) the collection finds
    little and the allocator keeps the pages of everything that goes after it: measured with the
    harness (issue #13), a reclaim 2 s after the first 256 closes left ~9 MB of glibc heap that the
    last few hundred closes freed and nobody trimmed.

    :param collect: the collection (``gc.collect``: a full one, which also empties the
        interpreter's free lists, whose cached objects would keep allocator pools in use).
    :ivar runs: reclaims done.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, *, connections: int = 256, buffered: int = 8 << 20,
                 delay: float = 2.0, max_wait: float = 10.0, trim: Callable[[], object] | None = None,
                 collect: Callable[[], int] = gc.collect) -> None:
        self.clock = clock
        self.connections = connections
        self.buffered = buffered
        self.delay = delay
        self.max_wait = max_wait
        self._trim = trim if trim is not None else _malloc_trim()
        self._collect = collect
        self._high_connections = self._now_connections = 0
        self._high_buffered = self._now_buffered = 0
        self._call: IDelayedCall | None = None
        self._latest = 0.0  # a due reclaim runs by then at the latest
        self._changed_at = 0.0  # when the counts last changed
        self._draining: tuple[int, int] | None = None  # counts at a reclaim made while they went on changing
        self.runs = 0

    def note(self, connections: int, buffered: int) -> None:
        """Connections open and bytes buffered now (call on every change worth watching)."""
        changed = connections != self._now_connections or buffered != self._now_buffered
        self._now_connections, self._now_buffered = connections, buffered
        if changed:
            self._changed_at = self.clock.seconds()
        if connections > self._high_connections:
            self._high_connections = connections
        if buffered > self._high_buffered:
            self._high_buffered = buffered
        call = self._call
        if call is None:
            draining = self._draining
            if draining is not None:
                due = (draining[0] - connections >= self.connections // 4
                       or draining[1] - buffered >= self.buffered // 4)
            else:
                due = (self._high_connections - connections >= self.connections
                       or self._high_buffered - buffered >= self.buffered)
            if due:
                self._latest = self.clock.seconds() + self.max_wait
                self._call = self.clock.callLater(self.delay, self.reclaim)
        elif changed and call.active():
            call.reset(max(0.0, min(self.delay, self._latest - self.clock.seconds())))

    def reclaim(self) -> None:
        self._call = None
        now = (self._now_connections, self._now_buffered)
        self._high_connections, self._high_buffered = now
        # still going: watch the tail from here
        self._draining = now if self.clock.seconds() - self._changed_at < self.delay else None
        self.runs += 1
        before = _rss_kib()
        found = self._collect()
        if self._trim is not None:
            self._trim()
        self.log.info("after a burst of connections: {found} unreachable objects collected, RSS {before} -> {after} KiB",
                      found=found, before=before, after=_rss_kib())

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def peer_host(addr: Any) -> str | None:
    """The host of an IP address (``IPv4Address``/``IPv6Address``), else ``None`` (a UNIX socket)."""
    if isinstance(addr, (IPv4Address, IPv6Address)):
        return addr.host
    return None


class ConnectionGuard(Service):
    """What the connections of one role share: limits, counts, the warning limiter.

    A service: when its parent stops, the pending log summaries are written and the reclaim
    timer is disarmed.

    :param limits: the role's :class:`Limits`.
    :param clock: timers (the reactor, or a ``Clock`` in tests).
    :param role: names the role in log lines (``"ECMG"``).
    :param server: the role accepts connections (admission, channel timeouts apply).
    :param limiter: the role's warning limiter (a new one from *limits* when ``None``).
    """

    log = Logger()

    def __init__(self, limits: Limits, clock: IReactorTime, *, role: str, server: bool,
                 limiter: LogLimiter | None = None, reclaimer: Reclaimer | None = None) -> None:
        self.limits = limits
        self.clock = clock
        self.role = role
        self.server = server
        self.limiter = limiter if limiter is not None else LogLimiter(clock, limits.log_window, limits.log_burst)
        self.reclaimer = reclaimer if reclaimer is not None else Reclaimer(clock)
        self.tcp_allowed = AllowList(limits.allow)
        self.udp_allowed = AllowList(limits.udp_allow)
        #: connections open now (accepted and not yet lost)
        self.connections = 0
        #: bytes received and not yet handled, all connections together
        self.buffered_total = 0
        #: refusals and closes by reason, deferred turns (``deferred_turns``), UDP drops
        self.counters: collections.Counter[str] = collections.Counter()

    def startService(self):
        self.limiter.start()
        return super().startService()

    def stopService(self):
        self.stop()
        return super().stopService()

    def stop(self) -> None:
        """Write the pending log summaries (later lines go out unlimited), disarm the reclaim timer."""
        self.limiter.stop()
        self.reclaimer.stop()

    # -- admission -----------------------------------------------------------------------------

    def admit(self, addr: Any) -> bool:
        """Whether to accept a connection from *addr* (call from ``buildProtocol``)."""
        host = peer_host(addr)
        if not self.tcp_allowed(host):
            self._refuse("refused_address", host, "not in the allow-list")
            return False
        if self.server and self.connections >= self.limits.max_connections:
            self._refuse("refused_max_connections", host, f"{self.connections} connections open (max_connections)")
            return False
        return True

    def admit_datagram(self, addr: Any) -> bool:
        """Whether a UDP datagram from *addr* (``(host, port)``) may be handled; drops are counted."""
        host = addr[0] if isinstance(addr, tuple) else peer_host(addr)
        if self.udp_allowed(host):
            return True
        self.counters["udp_refused_address"] += 1
        if self.limiter.allow(str(host), "udp_refused", "datagrams from addresses outside udp_allow"):
            self.log.warn("{role}: datagram from {peer} dropped: not in udp_allow", role=self.role, peer=str(host))
        return False

    def _refuse(self, counter: str, host: str | None, why: str) -> None:
        self.counters[counter] += 1
        peer = str(host)
        if self.limiter.allow(peer, counter, "refused connections"):
            self.log.warn("{role}: connection from {peer} refused: {why}", role=self.role, peer=peer, why=why)

    # -- per connection --------------------------------------------------------------------------

    def watch(self, peer: str, transport: Any, *, handle_frames: Callable[[list, float], int],
              close: Callable[[str], None], partial: Callable[[], int],
              has_channel: Callable[[], bool] | None = None,
              channel_test: Callable[[], bool] | None = None,
              feed: Callable[[bytes], list] | None = None) -> "ConnectionWatch":
        """A :class:`ConnectionWatch` for a connection just made (it counts as open from now)."""
        return ConnectionWatch(self, peer, transport, handle_frames=handle_frames, close=close, partial=partial,
                               has_channel=has_channel, channel_test=channel_test, feed=feed)

    def note_close(self, counter: str, peer: str, reason: str) -> None:
        """Count and (rate-limited per host: a flood comes from many ports) log a close the guard decided."""
        self.counters[counter] += 1
        host = peer.rsplit(":", 1)[0]
        if self.limiter.allow(host, counter, f"connections closed ({counter.removeprefix('closed_')})"):
            self.log.warn("{role}: closing connection with {peer}: {reason}", role=self.role, peer=peer, reason=reason)


def _gone(*_args: Any) -> int:
    return 0


def _no_bytes() -> int:
    return 0


class ConnectionWatch:
    """The guard's rules for one connection (see the module docstring).

    :param handle_frames: ``(frames, received_at) -> handled``: the protocol handles these whole
        messages in order, stopping after the one that ends past :attr:`deadline`; returns how
        many it handled (called for batches taken off the queue on later turns).
    :param close: ``(reason)``: the protocol closes the connection (already logged and counted).
    :param partial: bytes of an unfinished message the framer holds.
    :param has_channel: whether the connection carries a channel now (servers; ``None``: a client,
        no channel timeouts).
    :param channel_test: sends a channel_test on the channel; returns ``False`` when it could not.
    :param feed: the connection's framer (bytes -> whole messages), for :meth:`receive`.
    """

    def __init__(self, guard: ConnectionGuard, peer: str, transport: Any, *,
                 handle_frames: Callable[[list, float], int], close: Callable[[str], None],
                 partial: Callable[[], int], has_channel: Callable[[], bool] | None,
                 channel_test: Callable[[], bool] | None, feed: Callable[[bytes], list] | None = None) -> None:
        self.guard = guard
        self.peer = peer
        # reading is paused on the socket's transport, under a TLS layer when there is one
        self.transport = transport.transport if isinstance(transport, ProtocolWrapper) else transport
        self.clock = guard.clock
        self.limits = guard.limits
        self._handle_frames = handle_frames
        self._close = close
        self._partial = partial
        self._has_channel = has_channel
        self._channel_test = channel_test
        self._feed = feed
        self.budget = self.limits.messages_per_turn
        self.turn_time = self.limits.turn_time if self.limits.turn_time else float("inf")
        #: when the current turn's handling stops (clock seconds); see :meth:`take`
        self.deadline = float("inf")
        # (frames, index, received_at): a deque from the first message that waits (an empty deque
        # is ~760 bytes, a third of what a connection holds that never sends anything)
        self._queue: collections.deque | tuple = ()
        self._queued_bytes = 0
        self._next_turn: IDelayedCall | None = None
        self._paused = False
        self.buffered = 0  # counted in guard.buffered_total
        self.closed = False
        now = self.clock.seconds()
        self._activity = now  # last message handled
        self._partial_since: float | None = None
        self._no_channel_since: float | None = now if has_channel is not None else None
        self._test_sent_at: float | None = None
        self._timers: dict[str, IDelayedCall] = {}
        self._counted = True
        guard.connections += 1
        guard.reclaimer.note(guard.connections, guard.buffered_total)
        if has_channel is not None and self.limits.first_channel_setup_timeout:
            self._arm("channel", self.limits.first_channel_setup_timeout)

    # -- fair service --------------------------------------------------------------------------

    def receive(self, data: bytes, received_at: float) -> list:
        """Bytes just read: the messages to handle in this turn (framed from at most
        :data:`READ_SLICE` bytes, at most the budget); the rest waits for the next turns, the
        bytes behind a backlog unframed (they are framed in order, a slice at a time)."""
        assert self._feed is not None
        if self._queue:
            self.deadline = self.clock.seconds() + self.turn_time
            self._enqueue_raw(data, received_at)
            return []
        rest = None
        if len(data) > READ_SLICE:
            data, rest = data[:READ_SLICE], data[READ_SLICE:]
        frames = self.take(self._feed(data), received_at)
        if rest:
            self._enqueue_raw(rest, received_at)
        return frames

    def _enqueue_raw(self, data: bytes, received_at: float) -> None:
        self._backlog().append([data, -1, received_at])
        self._queued_bytes += len(data)
        self._schedule()

    def take(self, frames: list, received_at: float) -> list:
        """The frames to handle in this turn; any beyond the budget wait for the next turns.

        Starts the turn's clock: :attr:`deadline` is when the protocol stops handling (it gives
        the rest back with :meth:`put_back`).
        """
        self.deadline = self.clock.seconds() + self.turn_time
        if self._queue:  # a backlog is waiting: keep the order
            self._enqueue(frames, 0, received_at)
            return []
        if len(frames) <= self.budget:
            return frames
        self._enqueue(frames, self.budget, received_at)
        return frames[: self.budget]

    def put_back(self, frames: list, handled: int, received_at: float) -> None:
        """The turn's time ran out after *handled* of *frames*: the rest goes first next turn."""
        if handled >= len(frames) or self.closed:
            return
        self._backlog().appendleft([frames, handled, received_at])
        self._queued_bytes += sum(len(f) for f in frames[handled:] if isinstance(f, bytes))
        self._schedule()

    def _enqueue(self, frames: list, start: int, received_at: float) -> None:
        if start >= len(frames):
            return
        self._backlog().append([frames, start, received_at])
        self._queued_bytes += sum(len(f) for f in frames[start:] if isinstance(f, bytes))
        self._schedule()

    def _backlog(self) -> collections.deque:
        queue = self._queue
        if type(queue) is tuple:
            queue = self._queue = collections.deque()
        return queue

    def _schedule(self) -> None:
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        if self._next_turn is None:
            self._next_turn = self.clock.callLater(0, self._run_queue)
            self.guard.counters["deferred_turns"] += 1

    def _run_queue(self) -> None:
        self._next_turn = None
        if self.closed:
            return
        self.deadline = self.clock.seconds() + self.turn_time
        left = self.budget
        any_handled = False
        while left and self._queue and not self.closed:
            entry = self._queue[0]
            frames, start, received_at = entry
            if start < 0:  # bytes not yet framed: the next slice of them becomes messages, first in line
                chunk = frames[:READ_SLICE]
                if len(frames) > READ_SLICE:
                    entry[0] = frames[READ_SLICE:]
                else:
                    self._queue.popleft()
                self._queued_bytes -= len(chunk)
                framed = self._feed(chunk)  # type: ignore[misc]
                if framed:
                    self._queue.appendleft([framed, 0, received_at])
                    self._queued_bytes += sum(len(f) for f in framed if isinstance(f, bytes))
                continue
            batch = frames[start : start + left]
            handled = self._handle_frames(batch, received_at)
            if self.closed or not self._queue or self._queue[0] is not entry:
                return  # handling closed the connection (its queue went with it)
            any_handled = any_handled or handled > 0
            entry[1] = start + handled
            if entry[1] >= len(frames):
                self._queue.popleft()
            left -= handled
            self._queued_bytes -= sum(len(f) for f in batch[:handled] if isinstance(f, bytes))
            if handled < len(batch):
                break  # out of time: the rest next turn
        if self.closed:
            return
        if self._queue:
            self._next_turn = self.clock.callLater(0, self._run_queue)
            self.guard.counters["deferred_turns"] += 1
        elif self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self.turn_done(any_handled)

    @property
    def queued(self) -> int:
        """Messages waiting for a later turn."""
        return sum(len(frames) - start for frames, start, _r in self._queue if start >= 0)

    # -- after each turn -------------------------------------------------------------------------

    def takes_whole(self, size: int, messages: int = 1) -> bool:
        """Whether a read of *size* bytes made of *messages* whole messages may be handled at once
        by the protocol's own path (then :meth:`put_back` of what the turn's time left, and
        :meth:`turn_done`): the connection is open, nothing of it
        waits for a later turn, the read fits one :data:`READ_SLICE` and the messages the budget,
        so :meth:`receive` would hand them all back to be handled in this turn (its
        :attr:`deadline` is the protocol's to keep: the read's time + :attr:`turn_time`)."""
        return not self.closed and not self._queue and size <= READ_SLICE and messages <= self.budget

    def turn_done(self, handled: bool) -> None:
        """Call after each batch was handled (*handled*: at least one message was).

        Checks the buffer bounds and (re)arms the timeouts.
        """
        if self.closed:
            return
        now = self.clock.seconds()
        partial = self._partial()
        buffered = partial + self._queued_bytes
        guard = self.guard
        guard.buffered_total += buffered - self.buffered
        self.buffered = buffered
        limits = self.limits
        if buffered > limits.max_buffered_bytes:
            self.close("closed_buffer", f"{buffered} bytes buffered (max_buffered_bytes {limits.max_buffered_bytes})")
            return
        if guard.buffered_total > limits.max_buffered_bytes_total:
            self.close("closed_buffer_total", f"{guard.buffered_total} bytes buffered by all connections "
                                              f"(max_buffered_bytes_total {limits.max_buffered_bytes_total})")
            return
        if (partial > limits.max_buffered_bytes_no_channel and limits.max_buffered_bytes_no_channel
                and not self._queue and self._has_channel is not None and not self._has_channel()):
            self.close("closed_buffer_no_channel", f"{partial} bytes of a message and no channel "
                                                   f"(max_buffered_bytes_no_channel {limits.max_buffered_bytes_no_channel})")
            return
        if handled:
            self._activity = now
            self._test_sent_at = None
        # unfinished message: timed from its first byte (a completed message restarts the clock)
        if partial and limits.message_timeout:
            if self._partial_since is None or handled:
                self._partial_since = now
            if "message" not in self._timers:
                self._arm("message", limits.message_timeout)
        else:
            self._partial_since = None
        if self._has_channel is not None:
            self._channel_timers(now)

    def _channel_timers(self, now: float) -> None:
        """(Re)arm the idle or the first-channel_setup timeout, as a channel is open or not."""
        limits = self.limits
        if self._has_channel():
            self._no_channel_since = None
            if limits.idle_timeout and "idle" not in self._timers:
                self._arm("idle", limits.idle_timeout)
        elif self._no_channel_since is None:
            self._no_channel_since = now
            if limits.first_channel_setup_timeout and "channel" not in self._timers:
                self._arm("channel", limits.first_channel_setup_timeout)

    # -- timers ----------------------------------------------------------------------------------

    def _arm(self, name: str, seconds: float) -> None:
        self._timers[name] = self.clock.callLater(max(seconds, 0.0), self._fire, name)

    def _fire(self, name: str) -> None:
        del self._timers[name]
        if self.closed:
            return
        now = self.clock.seconds()
        limits = self.limits
        if name == "message":
            if self._partial_since is None or not self._partial():
                return
            due = self._partial_since + limits.message_timeout
            if now < due:
                self._arm(name, due - now)
            else:
                self.close("closed_message_timeout",
                           f"message unfinished {limits.message_timeout:g} s after its first byte (message_timeout)")
        elif name == "channel":
            if self._no_channel_since is None:
                return
            due = self._no_channel_since + limits.first_channel_setup_timeout
            if now < due:
                self._arm(name, due - now)
            else:
                self.close("closed_no_channel",
                           f"no channel {limits.first_channel_setup_timeout:g} s after connecting "
                           "(first_channel_setup_timeout)")
        elif name == "idle":
            assert self._has_channel is not None
            if not self._has_channel():
                return
            if self._test_sent_at is not None:
                due = self._test_sent_at + limits.channel_test_timeout
                if now >= due:
                    self.close("closed_idle",
                               f"no answer to channel_test within {limits.channel_test_timeout:g} s "
                               "(channel_test_timeout)")
                else:
                    self._arm(name, due - now)
                return
            due = self._activity + limits.idle_timeout
            if now < due:
                self._arm(name, due - now)
            elif self._channel_test is not None and self._channel_test():
                self._test_sent_at = now
                self.guard.counters["channel_tests"] += 1
                self._arm(name, limits.channel_test_timeout)
            else:
                self.close("closed_idle", f"channel silent for {limits.idle_timeout:g} s (idle_timeout)")

    # -- end -------------------------------------------------------------------------------------

    def close(self, counter: str, reason: str) -> None:
        """Close the connection for a guard rule: counted, logged (rate-limited), then the protocol's close."""
        if self.closed:
            return
        self.guard.note_close(counter, self.peer, reason)
        self._stop()
        self._close(reason)

    def closing(self) -> None:
        """The protocol is closing the connection (its machine said so): drop what waits, stop the
        timers, read no more (the loss follows)."""
        self._stop()

    def connection_lost(self) -> None:
        """The connection is gone: stop the timers, give back the counts."""
        if self._counted:
            self.guard.reclaimer.note(self.guard.connections, self.guard.buffered_total)
        self._stop()
        # the callbacks are the protocol's bound methods: drop them, so protocol and watch are
        # freed by reference counting when the connection goes, not by a later cyclic collection
        self._handle_frames = self._close = _gone  # type: ignore[assignment]
        self._partial = _no_bytes
        self._has_channel = self._channel_test = None
        if self._counted:
            self._counted = False
            guard = self.guard
            guard.connections -= 1
            guard.reclaimer.note(guard.connections, guard.buffered_total)

    def _stop(self) -> None:
        self.closed = True
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        if self._next_turn is not None and self._next_turn.active():
            self._next_turn.cancel()
        self._next_turn = None
        self._queue = ()
        self._queued_bytes = 0
        self.guard.buffered_total -= self.buffered
        self.buffered = 0


__all__ = ["AllowList", "ConnectionGuard", "ConnectionWatch", "Reclaimer", "peer_host"]
