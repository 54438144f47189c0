"""The connection guard on simulated time: admission, allow-lists, fair turns, buffers, timeouts."""

from __future__ import annotations

import ipaddress

import attrs
import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from bcast_sp4.config.limits import Limits
from bcast_sp4.roles.guard import AllowList, ConnectionGuard


def nets(*texts):
    return tuple(ipaddress.ip_network(t) for t in texts)


class Peer:
    """What a protocol gives the watch: a transport, a framer's partial bytes, a channel flag."""

    def __init__(self, guard: ConnectionGuard, server: bool = True) -> None:
        self.transport = StringTransport()
        self.handled: list[tuple[list, float]] = []
        self.closed: list[str] = []
        self.partial = 0
        self.channel = False
        self.tests_sent = 0
        self.watch = guard.watch(
            "127.0.0.1:40000", self.transport, handle_frames=self.handle, close=self.closed.append,
            partial=lambda: self.partial, has_channel=(lambda: self.channel) if server else None,
            channel_test=self.channel_test,
        )

    def handle(self, frames, received_at):
        self.handled.append((list(frames), received_at))
        return len(frames)

    def channel_test(self) -> bool:
        self.tests_sent += 1
        return True

    def receive(self, frames, received_at):
        """What the protocol's dataReceived does: take the turn's frames, handle them, report."""
        now = self.watch.take(frames, received_at)
        handled = self.handle(now, received_at) if now else 0
        self.watch.put_back(now, handled, received_at)
        self.watch.turn_done(handled > 0)


def one_turn(clock: Clock) -> None:
    """Run the calls due now that were armed before this turn (``Clock.advance`` would also run
    the ones they arm for "now", i.e. every later turn at once)."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = True
        call.func(*call.args, **call.kw)


def make(clock=None, **changes):
    clock = clock or Clock()
    return clock, ConnectionGuard(attrs.evolve(Limits(), **changes), clock, role="TEST", server=True)


def test_allow_list_matches_networks_and_mapped_ipv4():
    allow = AllowList(nets("10.0.0.0/8", "::1/128"))
    assert allow("10.1.2.3") and allow("::1") and allow("::ffff:10.9.9.9")
    assert not allow("127.0.0.1") and not allow("::2") and not allow(None) and not allow("not-an-ip")
    assert AllowList(None)("127.0.0.1")


def test_admission_refuses_outside_the_allow_list_and_over_max_connections():
    clock, guard = make(allow=nets("10.0.0.0/8"), max_connections=2)
    assert not guard.admit(IPv4Address("TCP", "127.0.0.1", 40000))
    assert not guard.admit(IPv6Address("TCP", "::1", 40000))
    assert guard.counters["refused_address"] == 2
    assert guard.admit(IPv4Address("TCP", "10.0.0.1", 1))
    a, b = Peer(guard), Peer(guard)
    assert guard.connections == 2
    assert not guard.admit(IPv4Address("TCP", "10.0.0.1", 2))
    assert guard.counters["refused_max_connections"] == 1
    a.watch.connection_lost()
    a.watch.connection_lost()  # twice: counted once
    assert guard.connections == 1
    assert guard.admit(IPv4Address("TCP", "10.0.0.1", 3))
    b.watch.connection_lost()


def test_udp_allow_list_drops_and_counts():
    clock, guard = make(udp_allow=nets("192.0.2.0/24"))
    assert guard.admit_datagram(("192.0.2.7", 5000))
    assert not guard.admit_datagram(("127.0.0.1", 5000))
    assert guard.counters["udp_refused_address"] == 1


def test_a_batch_over_the_budget_pauses_reading_and_runs_on_later_turns_in_order():
    clock, guard = make(messages_per_turn=3)
    peer = Peer(guard)
    frames = [bytes([i]) * 10 for i in range(8)]
    peer.receive(frames, 5.0)
    assert peer.handled == [(frames[:3], 5.0)]
    assert peer.transport.producerState == "paused"
    assert peer.watch.buffered == 50
    # more data arriving meanwhile (a transport may deliver once more) queues behind the backlog
    peer.receive([b"late"], 6.0)
    assert len(peer.handled) == 1
    one_turn(clock)
    assert peer.handled[1] == (frames[3:6], 5.0)
    assert peer.transport.producerState == "paused"
    one_turn(clock)
    assert peer.handled[2] == (frames[6:8], 5.0) and peer.handled[3] == ([b"late"], 6.0)
    assert peer.transport.producerState == "producing"
    assert peer.watch.buffered == 0 and guard.buffered_total == 0
    assert guard.counters["deferred_turns"] == 2


def test_within_the_budget_nothing_is_deferred():
    clock, guard = make(messages_per_turn=3)
    peer = Peer(guard)
    peer.receive([b"a", b"b", b"c"], 1.0)
    assert peer.handled == [([b"a", b"b", b"c"], 1.0)] and peer.transport.producerState == "producing"
    assert not clock.getDelayedCalls() or all(c.getTime() > 0 for c in clock.getDelayedCalls())


def test_a_close_during_a_deferred_batch_drops_the_rest():
    clock, guard = make(messages_per_turn=1)
    peer = Peer(guard)
    peer.receive([b"1", b"2", b"3"], 0.0)
    peer.watch.close("closed_test", "test")
    peer.watch.connection_lost()
    clock.advance(0)
    assert len(peer.handled) == 1 and guard.buffered_total == 0 and guard.connections == 0


def test_a_deferred_message_whose_handling_loses_the_connection_ends_the_turn_quietly():
    # the protocol's handler may close the connection (a reply then close, an internal error):
    # the watch's queue goes with it, and the turn must not touch it again
    clock, guard = make(messages_per_turn=2)
    peer = Peer(guard)

    def handle_and_lose(frames, received_at):
        peer.handled.append((list(frames), received_at))
        peer.watch.connection_lost()
        return len(frames)

    peer.receive([b"1", b"2", b"3"], 0.0)
    peer.watch._handle_frames = handle_and_lose  # the next turn's (last) message loses the connection
    one_turn(clock)  # raised IndexError (pop from an empty deque) before
    assert [f for f, _ in peer.handled] == [[b"1", b"2"], [b"3"]]
    assert guard.buffered_total == 0 and guard.connections == 0 and not clock.getDelayedCalls()


def test_no_channel_setup_within_the_timeout_closes():
    clock, guard = make(first_channel_setup_timeout=30.0, idle_timeout=0.0)
    peer = Peer(guard)
    clock.advance(29.9)
    assert peer.closed == []
    clock.advance(0.2)
    assert len(peer.closed) == 1 and "first_channel_setup_timeout" in peer.closed[0]
    assert guard.counters["closed_no_channel"] == 1


def test_a_channel_in_time_stops_the_first_setup_timer_and_losing_it_restarts_it():
    clock, guard = make(first_channel_setup_timeout=30.0, idle_timeout=0.0)
    peer = Peer(guard)
    clock.advance(10)
    peer.channel = True
    peer.receive([b"channel_setup"], clock.seconds())
    clock.advance(100)
    assert peer.closed == []
    peer.channel = False  # channel_close
    peer.receive([b"channel_close"], clock.seconds())
    clock.advance(29)
    assert peer.closed == []
    clock.advance(2)
    assert guard.counters["closed_no_channel"] == 1


def test_an_unfinished_message_must_complete_within_the_message_timeout():
    clock, guard = make(message_timeout=10.0, first_channel_setup_timeout=0.0)
    peer = Peer(guard)
    peer.partial = 5  # a header claiming more than arrives
    peer.receive([], 0.0)
    clock.advance(6)
    peer.receive([], clock.seconds())  # more bytes of the same message: the clock does not restart
    clock.advance(4.5)
    assert len(peer.closed) == 1 and "message_timeout" in peer.closed[0]


def test_completed_messages_restart_the_message_clock_and_an_empty_buffer_stops_it():
    clock, guard = make(message_timeout=10.0, first_channel_setup_timeout=0.0)
    peer = Peer(guard)
    peer.partial = 5
    for _ in range(5):
        peer.receive([b"whole"], clock.seconds())  # each read completes one and starts the next
        clock.advance(8)
    assert peer.closed == []
    peer.partial = 0
    peer.receive([b"whole"], clock.seconds())
    clock.advance(60)
    assert peer.closed == []


def test_an_idle_channel_gets_a_channel_test_then_is_closed_without_an_answer():
    clock, guard = make(idle_timeout=60.0, channel_test_timeout=10.0)
    peer = Peer(guard)
    peer.channel = True
    peer.receive([b"channel_setup"], 0.0)
    clock.advance(30)
    peer.receive([b"cw_provision"], clock.seconds())  # activity postpones the test
    clock.advance(59)
    assert peer.tests_sent == 0
    clock.advance(1.5)
    assert peer.tests_sent == 1 and peer.closed == []
    peer.receive([b"channel_status"], clock.seconds())  # the answer
    clock.advance(30)
    assert peer.closed == [] and peer.tests_sent == 1
    clock.advance(31)
    assert peer.tests_sent == 2
    clock.advance(10.5)
    assert len(peer.closed) == 1 and "channel_test" in peer.closed[0]
    assert guard.counters["closed_idle"] == 1 and guard.counters["channel_tests"] == 2


def test_clients_have_no_channel_timeouts():
    clock = Clock()
    guard = ConnectionGuard(Limits(), clock, role="SCS", server=False)
    peer = Peer(guard, server=False)
    peer.receive([b"x"], 0.0)
    clock.advance(10_000)
    assert peer.closed == [] and peer.tests_sent == 0


def test_buffer_bounds_per_connection_and_in_total():
    clock, guard = make(messages_per_turn=1, max_buffered_bytes=100, max_buffered_bytes_total=150)
    a = Peer(guard)
    a.partial = 101
    a.receive([], 0.0)
    assert guard.counters["closed_buffer"] == 1 and guard.buffered_total == 0
    b, c = Peer(guard), Peer(guard)
    b.partial = 90
    b.receive([], 0.0)
    assert b.closed == [] and guard.buffered_total == 90
    c.receive([b"1", b"2" * 70], 0.0)  # one handled, 70 bytes queued: 160 > 150
    assert len(c.closed) == 1 and guard.counters["closed_buffer_total"] == 1
    c.watch.connection_lost()
    assert guard.buffered_total == 90
    b.watch.connection_lost()
    assert guard.buffered_total == 0


def test_guard_closes_are_rate_limited_in_the_log():
    from twisted.logger import capturedLogs, formatEvent

    clock, guard = make(first_channel_setup_timeout=1.0, log_burst=2, log_window=10.0)
    with capturedLogs() as events:
        peers = [Peer(guard) for _ in range(50)]
        clock.advance(1.5)
        clock.advance(10)
    assert all(p.closed for p in peers)
    closing = [e for e in events if "closing connection" in e.get("log_format", "")]
    summaries = [formatEvent(e) for e in events if "more" in e.get("log_format", "")]
    assert len(closing) == 2
    assert summaries == ["... and 48 more connections closed (no_channel) from 127.0.0.1 in the last 10 s"]


@pytest.mark.parametrize("text", ["10.0.0.0/8", "::1", "192.0.2.1/32"])
def test_allow_list_networks_parse(text):
    assert AllowList(nets(text)).networks == nets(text)


def test_memory_is_reclaimed_once_after_a_flood_goes():
    from bcast_sp4.roles.guard import Reclaimer

    clock = Clock()
    trims = []
    reclaimer = Reclaimer(clock, connections=100, delay=2.0, trim=lambda: trims.append(clock.seconds()))
    guard = ConnectionGuard(Limits(), clock, role="TEST", server=True, reclaimer=reclaimer)
    peers = [Peer(guard) for _ in range(150)]
    for peer in peers[:99]:
        peer.watch.connection_lost()
    clock.advance(10)
    assert trims == []  # 99 gone: below the mark
    for peer in peers[99:]:
        peer.watch.connection_lost()
    assert trims == []  # not at once: the rest of the flood goes first
    clock.advance(2)
    assert trims == [clock.seconds()] and reclaimer.runs == 1
    clock.advance(60)
    assert reclaimer.runs == 1


def test_reclaim_after_buffered_bytes_go():
    from bcast_sp4.roles.guard import Reclaimer

    clock = Clock()
    trims = []
    reclaimer = Reclaimer(clock, connections=10_000, buffered=1000, delay=1.0, trim=lambda: trims.append(1))
    guard = ConnectionGuard(Limits(), clock, role="TEST", server=True, reclaimer=reclaimer)
    peers = [Peer(guard) for _ in range(3)]
    for peer in peers:
        peer.partial = 600
        peer.receive([], 0.0)
    for peer in peers:
        peer.watch.connection_lost()
    clock.advance(1)
    assert trims == [1]


def test_the_turn_time_stops_a_batch_and_the_rest_goes_first_next_turn():
    clock, guard = make(messages_per_turn=100, turn_time=0.005)
    class SlowPeer(Peer):
        def handle(self, frames, received_at):
            count = 0
            for frame in frames:
                self.handled.append(([frame], received_at))
                clock.rightNow += 0.002
                count += 1
                if clock.seconds() > self.watch.deadline:
                    break
            return count

    peer = SlowPeer(guard)
    frames = [bytes([i]) for i in range(10)]
    peer.receive(frames, 0.0)
    assert [f for batch, _ in peer.handled for f in batch] == frames[:3]  # 2, 4, 6 ms: past 5 ms after the third
    assert peer.transport.producerState == "paused"
    peer.receive([b"later"], clock.seconds())  # queued behind the rest
    one_turn(clock)
    assert [f for batch, _ in peer.handled for f in batch] == frames[:6]
    for _ in range(3):
        one_turn(clock)
    assert [f for batch, _ in peer.handled for f in batch] == frames + [b"later"]
    assert all(r == 0.0 for batch, r in peer.handled[:10])
    assert peer.transport.producerState == "producing" and guard.buffered_total == 0
