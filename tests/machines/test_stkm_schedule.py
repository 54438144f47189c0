"""Newest STKM wins: the pure schedule the MUX's in-process path and the SCS's remote link share."""

from __future__ import annotations

from bcast_sp4.machines.stkm_schedule import DUE_EPSILON, STKMSchedule


def test_nothing_is_due_before_its_on_air_from():
    schedule = STKMSchedule()
    assert schedule.next_due() is None and not schedule.is_due(0.0) and schedule.take_due(100.0) == (None, [])
    schedule.add(2.0, "b")
    schedule.add(1.0, "a")
    assert len(schedule) == 2 and schedule.next_due() == 1.0
    assert not schedule.is_due(0.5) and schedule.take_due(0.5) == (None, []) and len(schedule) == 2


def test_of_several_due_the_newest_wins_and_the_others_are_superseded_oldest_first():
    schedule = STKMSchedule()
    for when, item in [(3.0, "c"), (1.0, "a"), (2.0, "b"), (9.0, "later")]:
        schedule.add(when, item)
    assert schedule.take_due(3.0) == ("c", ["a", "b"])
    assert len(schedule) == 1 and schedule.next_due() == 9.0


def test_same_instant_the_later_arrival_is_newer():
    schedule = STKMSchedule()
    schedule.add(1.0, "first")
    schedule.add(1.0, "second")
    assert schedule.take_due(1.0) == ("second", ["first"])


def test_due_within_the_epsilon_of_float_rounding():
    schedule = STKMSchedule()
    schedule.add(0.1 + 0.2, "x")  # 0.30000000000000004
    assert schedule.is_due(0.3) and schedule.take_due(0.3) == ("x", [])
    schedule.add(1.0, "y")
    assert not schedule.is_due(1.0 - 10 * DUE_EPSILON)


def test_settle_keeps_only_the_newest_due_one_waiting():
    schedule = STKMSchedule()
    for when, item in [(1.0, "a"), (2.0, "b"), (5.0, "future")]:
        schedule.add(when, item)
    assert schedule.settle(1.5) == []  # one due: nothing to supersede
    assert schedule.settle(2.5) == ["a"] and len(schedule) == 2
    assert schedule.take_due(2.5) == ("b", []) and schedule.next_due() == 5.0


def test_limit_refuses_beyond_it_and_clear_returns_everything():
    schedule = STKMSchedule(limit=2)
    assert schedule.add(1.0, "a") and schedule.add(2.0, "b")
    assert not schedule.add(0.5, "refused") and len(schedule) == 2
    assert schedule.clear() == ["a", "b"] and len(schedule) == 0 and schedule.add(3.0, "c")
