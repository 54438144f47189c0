"""KeyedTimers: one heap of keyed timers above ONE call on the clock (every test on a Clock)."""

from __future__ import annotations

import pytest
from twisted.internet.error import AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock

from bcast_sp4.roles.executor import KeyedTimers


def make(start: float = 100.0):
    clock = Clock()
    clock.advance(start)
    fired: list = []
    timers = KeyedTimers(clock, lambda key: fired.append((key, clock.seconds())))
    return clock, timers, fired


def test_many_keys_fire_in_time_order_ties_in_arming_order_on_one_clock_call():
    clock, timers, fired = make()
    for key, seconds in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0), ("b2", 2.0)):
        timers.start(key, seconds)
    assert len(clock.getDelayedCalls()) == 1 and clock.getDelayedCalls()[0].getTime() == 101.0
    clock.advance(1.0)
    assert fired == [("a", 101.0), ("a2", 101.0)]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [102.0]
    clock.advance(5.0)  # one advance past both: each still fires, in order
    assert [k for k, _ in fired] == ["a", "a2", "b", "b2", "c"]
    assert not timers and not clock.getDelayedCalls()


def test_replacing_a_key_moves_it_both_ways_and_it_fires_once():
    clock, timers, fired = make()
    timers.start("k", 10.0)
    timers.start("k", 2.0)  # earlier: the clock's call moves up
    assert [c.getTime() for c in clock.getDelayedCalls()] == [102.0]
    timers.start("k", 5.0)  # later again: the call for 102 finds only a dead entry and re-arms
    clock.advance(2.0)
    assert fired == [] and [c.getTime() for c in clock.getDelayedCalls()] == [105.0]
    clock.advance(3.0)
    assert fired == [("k", 105.0)]
    clock.advance(10.0)
    assert fired == [("k", 105.0)] and not clock.getDelayedCalls()


def test_due_from_an_input_instant_never_in_the_past():
    clock, timers, fired = make()
    timers.start("k", 1.0, now=99.5)
    timers.start("late", 1.0, now=90.0)
    assert timers["k"].getTime() == 100.5 and timers["late"].getTime() == 100.0
    clock.advance(0)
    assert fired == [("late", 100.0)]


def test_cancel_and_cancel_all_leave_no_call_on_the_clock():
    clock, timers, fired = make()
    timers.start("a", 1.0)
    timers.start("b", 2.0)
    timers.cancel("a")
    timers.cancel("never armed")
    assert set(timers) == {"b"} and len(clock.getDelayedCalls()) == 1
    timers.cancel("b")
    assert not clock.getDelayedCalls()
    timers.start("c", 1.0)
    timers.start("d", 1.0)
    timers.cancel_all()
    clock.advance(5.0)
    assert fired == [] and not timers and not clock.getDelayedCalls()


def test_run_due_fires_what_is_due_before_the_clock_call_and_nothing_else():
    clock, timers, fired = make()
    timers.start("switch", 1.0)
    timers.start("later", 3.0)
    timers.run_due(100.5)
    assert fired == []
    # the reactor is busy with other work past the due instant: the role asks between two pieces of it
    clock.rightNow = 101.2  # time passes without the clock running its calls (a long batch of input)
    timers.run_due(clock.seconds())
    assert fired == [("switch", 101.2)] and set(timers) == {"later"}
    clock.advance(0.0)  # the stale clock call for 101 runs: nothing due
    assert fired == [("switch", 101.2)]
    clock.advance(1.8)
    assert fired == [("switch", 101.2), ("later", 103.0)] and not clock.getDelayedCalls()


def test_a_timer_armed_at_once_inside_a_fire_waits_for_the_next_clock_call():
    clock = Clock()
    fired: list = []
    timers = KeyedTimers(clock, lambda key: (fired.append(key), key == "a" and timers.start("again", 0.0)))
    timers.start("a", 1.0)
    timers.start("b", 1.0)
    calls = []
    original = clock.callLater
    clock.callLater = lambda *a, **kw: calls.append(a[0]) or original(*a, **kw)
    clock.advance(1.0)  # Clock.advance runs the new call too (time <= now), after the run
    assert fired == ["a", "b", "again"] and calls == [0.0]


def test_replaced_entries_do_not_pile_up():
    clock, timers, fired = make()
    for i in range(10_000):
        timers.start(("k", i % 10), 5.0 + i * 1e-4)
    assert len(timers) == 10 and len(timers._heap) <= 3 * 10 + 64
    clock.advance(10.0)
    assert sorted(k for k, _ in fired) == [("k", i) for i in range(10)]


def test_a_handle_reads_and_drives_its_timer_as_an_idelayedcall():
    clock, timers, fired = make()
    timers.start("k", 2.0)
    handle = timers["k"]
    assert IDelayedCall.providedBy(handle) and handle.active() and handle.getTime() == 102.0
    handle.reset(4.0)
    assert handle.getTime() == 104.0 and timers["k"].getTime() == 104.0
    handle.delay(1.0)
    assert handle.getTime() == 105.0
    handle.cancel()
    assert not handle.active() and "k" not in timers
    with pytest.raises(AlreadyCancelled):
        handle.cancel()
    with pytest.raises(KeyError):
        timers["k"]
    clock.advance(10.0)
    assert fired == []


def test_a_failing_fire_does_not_lose_the_other_timers():
    clock = Clock()
    fired: list = []

    def fire(key):
        if key == "bad":
            raise RuntimeError("boom")
        fired.append(key)

    timers = KeyedTimers(clock, fire)
    timers.start("bad", 1.0)
    timers.start("good", 2.0)
    with pytest.raises(RuntimeError):
        clock.advance(1.0)
    clock.advance(1.0)
    assert fired == ["good"]
