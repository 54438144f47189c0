"""Memory and log lines after a connection flood (issue #13: "memory returns after a flood").

A closed connection is freed by reference counting (its framer's buffer with it), not left for a
later full collection; the reclaim (full collection, ``malloc_trim``) runs once the flood has
gone, not while it is going; the per-connection log lines of a flood are a few lines and a
summary per window.
"""

from __future__ import annotations

import weakref

import attrs
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, Logger, capturedLogs, formatEvent

from bcast_sp4.config.limits import Limits
from bcast_sp4.machines.outputs import Close
from bcast_sp4.roles.executor import Outbox
from bcast_sp4.roles.guard import ConnectionGuard, Reclaimer
from bcast_sp4.roles.log_limit import LogLimiter, host_of
from bcast_sp4.wire import ecmg_scs as m

from tests.doubles import cyclic_gc_off

from .test_guard import Peer
from .test_guard_roles import DRM, ECMG
from .test_mux_server import guarded_connection


def test_a_closed_connection_is_freed_without_the_cyclic_collector():
    ecmg = ECMG(max_length=65540)
    protocol, transport = ecmg.connect()
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode())
    protocol.dataReceived(bytes([3, 0x02, 0x01, 0xFF, 0xFF]) + bytes(32 * 1024))  # claims 65,535 bytes
    ecmg.clock.advance(0)  # the bytes past the first read slice are framed on the next turns
    assert ecmg.guard.buffered_total == 32 * 1024 + 5
    alive = [weakref.ref(protocol), weakref.ref(protocol.framer)]
    with cyclic_gc_off():
        ecmg.clock.advance(10.5)  # message_timeout
        assert transport.disconnecting and ecmg.guard.counters["closed_message_timeout"] == 1
        protocol.connectionLost(None)
        del protocol
        # freed now, by reference counting (a Logger bound to the protocol in its outbox made a cycle)
        assert [ref() for ref in alive] == [None, None]
    assert ecmg.guard.buffered_total == 0 and ecmg.guard.connections == 0


def test_a_closed_mux_connection_is_freed_without_the_cyclic_collector():
    reactor, server, guard, protocol, transport = guarded_connection(
        attrs.evolve(Limits(), first_channel_setup_timeout=30.0))
    protocol.dataReceived(bytes([3, 0x01, 0x11, 0x00, 0x20]) + bytes(10))  # half-sent
    alive = [weakref.ref(protocol), weakref.ref(protocol.framer)]
    with cyclic_gc_off():
        reactor.advance(10.5)  # the message_timeout closes it
        assert transport.disconnecting and guard.counters["closed_message_timeout"] == 1
        protocol.connectionLost(None)
        del protocol
        assert [ref() for ref in alive] == [None, None]
    assert guard.connections == 0 and server.play_out.protocols == {}


def reclaiming_guard():
    """A guard whose reclaimer (after 100 connections; 2 s after the last went, at most 10 s on)
    notes when it collects: ``(clock, guard, reclaimer, collects)``."""
    clock = Clock()
    collects = []
    reclaimer = Reclaimer(clock, connections=100, delay=2.0, max_wait=10.0, trim=lambda: None,
                          collect=lambda: collects.append(clock.seconds()) or 0)
    return clock, ConnectionGuard(Limits(), clock, role="TEST", server=True, reclaimer=reclaimer), reclaimer, collects


def test_the_reclaim_waits_for_the_end_of_the_flood():
    clock, guard, reclaimer, collects = reclaiming_guard()
    peers = [Peer(guard) for _ in range(1000)]
    # the flood goes over 5 s: 200 connections a second
    for second in range(5):
        for peer in peers[second * 200 : (second + 1) * 200]:
            peer.watch.connection_lost()
        clock.advance(1)
    assert collects == []  # still going one second ago: not yet
    clock.advance(1)
    assert collects == [6.0] and guard.connections == 0  # 2 s after the last one went
    clock.advance(60)
    assert reclaimer.runs == 1


def test_steady_churn_still_gets_a_reclaim_within_max_wait():
    clock, guard, _reclaimer, collects = reclaiming_guard()
    peers = [Peer(guard) for _ in range(400)]
    for peer in peers[:100]:
        peer.watch.connection_lost()
    for peer in peers[100:]:  # one connection goes every half second from then on
        clock.advance(0.5)
        peer.watch.connection_lost()
        if collects:
            break
    assert collects == [10.0]


def test_the_tail_of_a_slow_flood_gets_a_reclaim_after_the_last_connection_went():
    clock = Clock()
    collects = []
    reclaimer = Reclaimer(clock, connections=256, delay=2.0, max_wait=10.0, trim=lambda: None,
                          collect=lambda: collects.append(clock.seconds()) or 0)
    guard = ConnectionGuard(Limits(), clock, role="TEST", server=True, reclaimer=reclaimer)
    peers = [Peer(guard) for _ in range(2000)]
    for n, peer in enumerate(peers):  # 2,000 connections go over 40 s (each 30 s after it came)
        if n % 50 == 0:
            clock.advance(1)
        peer.watch.connection_lost()
    last = clock.seconds()
    for _ in range(60):
        clock.advance(0.5)
    assert collects[-1] == last + 2.0  # the last one: after everything went
    assert all(b - a >= 2.0 for a, b in zip(collects, collects[1:])) and len(collects) <= 6, collects
    # then steady churn at a stable count: no more reclaims
    runs = reclaimer.runs
    for _ in range(500):
        Peer(guard).watch.connection_lost()
        clock.advance(0.1)
    assert reclaimer.runs == runs


def test_a_reclaim_starts_the_marks_again_from_what_is_open():
    clock = Clock()
    reclaimer = Reclaimer(clock, connections=100, delay=1.0, trim=lambda: None, collect=lambda: 0)
    guard = ConnectionGuard(Limits(), clock, role="TEST", server=True, reclaimer=reclaimer)
    peers = [Peer(guard) for _ in range(300)]
    for peer in peers[:150]:
        peer.watch.connection_lost()
    clock.advance(1)
    assert reclaimer.runs == 1
    for peer in peers[150:249]:  # 99 more gone: under the mark counted from the 150 left open
        peer.watch.connection_lost()
    clock.advance(5)
    assert reclaimer.runs == 1
    peers[249].watch.connection_lost()
    clock.advance(1)
    assert reclaimer.runs == 2


def test_host_of():
    assert host_of("127.0.0.1:40000") == "127.0.0.1"
    assert host_of("::1:40000") == "::1"
    assert host_of("?") == "?"


def test_a_connection_flood_writes_a_few_lines_and_one_summary_per_kind():
    ecmg = ECMG(log_burst=3)
    with capturedLogs() as events:
        connections = [ecmg.connect(port=40000 + n) for n in range(200)]
        for protocol, _transport in connections:
            protocol.connectionLost(None)
        ecmg.guard.limiter.flush()
    lines = [formatEvent(e) for e in events]
    assert len([line for line in lines if line.startswith("connection from")]) == 6  # 3 opened, 3 closed
    assert "... and 197 more connections opened from 127.0.0.1 in the last 0 s" in lines
    assert "... and 197 more connections closed from 127.0.0.1 in the last 0 s" in lines
    assert len(lines) == 8
    summaries = [e for e in events if "more" in formatEvent(e)]
    assert {e["log_level"] for e in summaries} == {LogLevel.info}  # a summary of info lines is info
    # another host has its own budget
    with capturedLogs() as events:
        ecmg.connect(host="127.0.0.2")
    assert [formatEvent(e) for e in events] == ["connection from 127.0.0.2:40000"]


def test_outbox_closing_lines_are_limited_per_host():
    clock = Clock()
    limiter = LogLimiter(clock, window=10.0, burst=2)
    log = Logger(namespace="test")
    with capturedLogs() as events:
        for port in range(50):
            outbox = Outbox(log, limiter=limiter)
            outbox.attach(StringTransport(), f"10.0.0.7:{port}")
            outbox.ask_close(Close("too many invalid messages", "warn"))
            outbox.flush()
        clock.advance(10)
    lines = [formatEvent(e) for e in events]
    assert lines == ["closing connection with 10.0.0.7:0: too many invalid messages",
                     "closing connection with 10.0.0.7:1: too many invalid messages",
                     "... and 48 more connections closed from 10.0.0.7 in the last 10 s"]
    assert events[-1]["log_level"] is LogLevel.warn


def test_an_outbox_without_a_limiter_logs_every_close():
    log = Logger(namespace="test")
    with capturedLogs() as events:
        for port in range(10):
            outbox = Outbox(log)
            outbox.attach(StringTransport(), f"10.0.0.7:{port}")
            outbox.ask_close(Close("bye", "info"))
            outbox.flush()
    assert len(events) == 10


def test_a_channel_still_opens_after_a_flood_was_summarised():
    ecmg = ECMG(log_burst=1)
    for n in range(20):
        ecmg.connect(port=41000 + n)
    protocol, transport = ecmg.connect(port=42000)
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode())
    assert transport.value()  # channel_status


def test_a_connection_without_a_channel_may_not_hold_a_big_unfinished_message():
    ecmg = ECMG(max_length=65540)  # max_buffered_bytes_no_channel: 4096 by default
    protocol, transport = ecmg.connect()
    protocol.dataReceived(bytes([3, 0x02, 0x01, 0xFF, 0xFF]) + bytes(4000))
    assert not transport.disconnecting and ecmg.guard.buffered_total == 4005
    protocol.dataReceived(bytes(28 * 1024))
    ecmg.clock.advance(0)  # framed a read slice per turn: the bound applies once nothing waits
    assert transport.disconnecting and ecmg.guard.counters["closed_buffer_no_channel"] == 1
    assert ecmg.guard.buffered_total == 0  # dropped at once, not held for the message_timeout
    # with a channel, the same message may be buffered up to max_buffered_bytes
    protocol, transport = ecmg.connect(port=40001)
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode()
                          + bytes([3, 0x02, 0x01, 0xFF, 0xFF]) + bytes(32 * 1024))
    ecmg.clock.advance(0)
    assert not transport.disconnecting and ecmg.guard.buffered_total == 32 * 1024 + 5


def test_the_no_channel_bound_waits_for_a_pipelined_channel_setup_and_can_be_off():
    ecmg = ECMG(max_length=65540, messages_per_turn=1)
    protocol, transport = ecmg.connect()
    # a channel_setup and a stream_setup handled on the next turn, a big message started behind them
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode()
                          + m.StreamSetup(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=20).encode()
                          + bytes([3, 0x02, 0x01, 0xFF, 0xFF]) + bytes(8000))
    ecmg.clock.advance(0)
    assert not transport.disconnecting and protocol.has_channel()
    off = ECMG(max_length=65540, max_buffered_bytes_no_channel=0)
    protocol, transport = off.connect()
    protocol.dataReceived(bytes([3, 0x02, 0x01, 0xFF, 0xFF]) + bytes(32 * 1024))
    off.clock.advance(0)
    assert not transport.disconnecting and off.guard.buffered_total == 32 * 1024 + 5


def test_the_default_reclaim_collects_and_trims_where_the_c_library_can():
    import platform

    from bcast_sp4.roles import guard

    trim = guard._malloc_trim()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert trim is not None
    reclaimer = Reclaimer(Clock())
    reclaimer.reclaim()  # a full collection, then malloc_trim(0) when there is one: no crash either way
    assert reclaimer.runs == 1


def test_a_connection_holds_a_backlog_queue_only_once_messages_wait():
    clock = Clock()
    guard = ConnectionGuard(Limits(messages_per_turn=1), clock, role="TEST", server=True)
    idle, busy = Peer(guard), Peer(guard)
    assert type(idle.watch._queue) is tuple and not idle.watch._queue  # none made for an idle connection
    busy.receive([b"1", b"2", b"3"], 0.0)
    assert busy.watch.queued == 2
    clock.advance(0)
    assert [frames for frames, _t in busy.handled] == [[b"1"], [b"2"], [b"3"]] and busy.watch.queued == 0
    busy.watch.connection_lost()
    assert not busy.watch._queue
