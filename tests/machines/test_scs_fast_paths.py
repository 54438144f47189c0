"""The SCS's per-stream-period shortcuts against the plain rules they replace, on random event runs.

* the scheduler's poll looks only at its PLANNED periods (``_open``): after every input, ``_open``
  is exactly the PLANNED periods, ascending, and the poll timer is armed for the instant a scan of
  *every* period computes (the scan the poll made before);
* the core returns outputs with nothing to route as they are, and routes the others in FIFO order;
* the scrambler's hand-over of a TEK later than every pending one appends it: the keys pending and
  the switches made are those of the sorted insert (the path every other hand-over takes).
"""

from __future__ import annotations

import bisect
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from bcast_sp4.bcast import traffic
from bcast_sp4.machines.outputs import Notify, Send, StartTimer
from bcast_sp4.machines.scs_core import SCSCore
from bcast_sp4.machines.scs_records import (
    ChannelOutput,
    ChannelSpec,
    ECMArrived,
    ECMGParams,
    LinkSpec,
    ServiceSpec,
    SwitchTEK,
    Timing,
)
from bcast_sp4.machines.scs_scheduler import POLL_SLACK, Acquisition, LinkState, PeriodState, ServiceScheduler
from bcast_sp4.media.scrambler import Scrambler

SCID = 0x00010001
SRTP = traffic.TrafficProtection.SRTP


def params(delay_start: float = -0.2, max_comp_time: float = 0.1) -> ECMGParams:
    return ECMGParams(delay_start=delay_start, transition_delay_start=None, ECM_rep_period=100, lead_CW=1,
                      CW_per_msg=2, max_comp_time=max_comp_time, min_CP_duration=10, section_TSpkt_flag=2)


def scheduler(links: int, period: int) -> ServiceScheduler:
    spec = ServiceSpec(name="svc", crypto_period=period, protection=SRTP, phase=0.25,
                       links=tuple(LinkSpec(channel=f"c{i}", super_CAS_id=SCID, ECM_stream_id=1, ECM_id=i + 1)
                                   for i in range(links)))
    return ServiceScheduler(spec, Timing(start_allowance=0.5, retry_delay=0.3, max_attempts=3),
                            tek_factory=lambda n: traffic.generate(SRTP, rng=lambda k: bytes(k), mki=n.to_bytes(4, "big")))


def started(now: float = 100.0) -> ServiceScheduler:
    """A one-link scheduler on 10 s periods, its link up and its schedule started at *now*."""
    s = scheduler(1, 10)
    s.link_up(0, params(), now)
    s.start(now)
    return s


def scanned_wake(s: ServiceScheduler) -> float:
    """The next due instant by the poll's rule, over every period (the scan the poll made before)."""
    wake = math.inf
    for period in s.periods.values():
        if period.state is not PeriodState.PLANNED:
            continue
        wake = min(wake, period.start)
        for index, link in enumerate(s.links):
            if link.state is not LinkState.UP:
                continue
            fetch = period.fetches[index]
            if fetch.state is Acquisition.REQUESTED:
                wake = min(wake, fetch.deadline)
            elif fetch.state is Acquisition.WAITING:
                wake = min(wake, max(s.provision_at(index, period.n), fetch.not_before))
    return wake


def check(s: ServiceScheduler, out: list, now: float) -> None:
    planned = [n for n, p in s.periods.items() if p.state is PeriodState.PLANNED]
    assert list(s._open) == sorted(planned)
    assert all(s._open[n] is s.periods[n] for n in planned)
    timers = [o for o in out if type(o) is StartTimer and o.key == s.timer_key]
    if timers:  # the poll re-armed: for the instant the full scan finds
        wake = scanned_wake(s)
        assert wake > now
        assert math.isclose(timers[-1].seconds, wake - now + POLL_SLACK, rel_tol=0, abs_tol=1e-6)


events = st.lists(st.tuples(st.sampled_from(["advance", "answer", "refuse", "down", "up", "stale"]),
                            st.floats(0.0, 2.5), st.integers(0, 3)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(links=st.integers(1, 3), period=st.sampled_from([5, 10, 20]), run=events)
def test_poll_scans_planned_periods_as_the_full_scan_did(links, period, run):
    s = scheduler(links, period)
    now = 100.0
    for i in range(links):
        check(s, s.link_up(i, params(), now), now)
    out = s.start(now)
    check(s, out, now)
    for kind, dt, which in run:
        index = which % links
        if kind == "advance":
            now += dt
            out = s.poll(now)
        elif kind in ("answer", "refuse"):
            requested = [(n, p) for n, p in s.periods.items()
                         if p.fetches[index].state is Acquisition.REQUESTED and p.state is PeriodState.PLANNED]
            if not requested:
                continue
            n, _ = requested[which % len(requested)]
            if kind == "answer":
                out = s.ecm_arrived(index, n & 0xFFFF, b"stkm %d" % n, now)
            else:
                out = s.provision_failed(index, n & 0xFFFF, 0x000B, now)
        elif kind == "down":
            out = s.link_down(index, now)
        elif kind == "up":
            out = s.link_up(index, params(), now)
        else:  # an ECM_response for no period of ours
            out = s.ecm_arrived(index, 0xFFFF, b"x", now)
        check(s, out, now)


def test_an_ecm_response_that_readies_a_period_takes_it_out_of_the_poll():
    s = started()
    n = s.first_period
    now = s.provision_at(0, n)
    s.poll(now)
    assert n in s._open and s.periods[n].fetches[0].state is Acquisition.REQUESTED
    out = s.ecm_arrived(0, n & 0xFFFF, b"stkm", now + 0.01)
    assert s.periods[n].state is PeriodState.READY and n not in s._open
    check(s, out, now + 0.01)
    # past T(n), the READY period is not skipped by a poll, and the one after is still planned
    now = s.period_start(n) + 0.001
    out = s.poll(now)
    assert s.periods[n].state is PeriodState.READY and not [o for o in out if type(o) is Notify]
    check(s, out, now)


def test_skipped_periods_leave_the_poll_in_order():
    s = started()
    first = s.first_period
    now = s.period_start(first + 1) + 0.001  # never answered: T(first) and T(first + 1) passed
    out = s.poll(now)
    skipped = [o.fields["cp_number"] for o in out if type(o) is Notify and o.event == "period_skipped"]
    assert skipped == [first & 0xFFFF, (first + 1) & 0xFFFF]
    check(s, out, now)


def core_with(channels: int) -> SCSCore:
    specs = [ChannelSpec(name=f"c{i}", endpoint="tcp:host=127.0.0.1:port=1", backup_endpoint=None, super_CAS_id=SCID,
                         ECM_channel_id=i + 1) for i in range(channels)]
    service = ServiceSpec(name="svc", crypto_period=10, protection=SRTP,
                          links=tuple(LinkSpec(channel=f"c{i}", super_CAS_id=SCID, ECM_stream_id=1, ECM_id=i + 1)
                                      for i in range(channels)))
    return SCSCore(specs, [service], Timing())


def test_route_returns_outputs_with_nothing_to_route_as_they_are():
    core = core_with(1)
    outputs = [StartTimer("k", 1.0), SwitchTEK("svc", 1, 2.0), Notify("x", {})]
    assert core._route(None, outputs, 0.0) is outputs


def test_route_keeps_fifo_order_and_addresses_sends():
    core = core_with(2)
    a, b = Send(object()), Send(object())
    outputs = [Notify("first", {}), a, StartTimer("k", 1.0), b]
    routed = core._route("c1", outputs, 0.0)
    assert routed == [Notify("first", {}), ChannelOutput("c1", a), StartTimer("k", 1.0), ChannelOutput("c1", b)]


def test_route_appends_what_routing_yields_after_the_outputs_already_queued():
    core = core_with(1)
    # an ECM_response for a period the service does not know: the scheduler answers with a notice,
    # which comes after the output queued behind the ECMArrived (first in, first out)
    routed = core._route("c0", [ECMArrived("c0", 1, 5, b"x"), Notify("after", {})], 0.0)
    assert [o.event for o in routed] == ["after", "stale_stkm"]


@settings(max_examples=200, deadline=None)
@given(ats=st.lists(st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), min_size=1, max_size=12),
       activations=st.lists(st.floats(0.0, 7.0), max_size=6))
def test_scrambler_hand_over_matches_the_sorted_insert(ats, activations):
    scrambler = Scrambler("svc", SRTP, history=64)
    model: list[tuple[float, int]] = []  # (at, cp_number): the sorted insert, a same-instant TEK replaced
    switches = []
    steps = iter(activations)
    for cp, at in enumerate(ats):
        material = traffic.generate(SRTP, rng=lambda k, cp=cp: bytes([cp]) * k, mki=cp.to_bytes(4, "big"))
        scrambler.provide(cp, material, at)
        model = [k for k in model if k[0] != at]
        bisect.insort(model, (at, cp), key=lambda k: k[0])
        assert [(k.at, k.cp_number) for k in scrambler._pending] == model
        now = next(steps, None)
        if now is not None:
            made = scrambler.activate(now)
            expected = [k for k in model if k[0] <= now]
            model = [k for k in model if k[0] > now]
            assert [(s.at, s.cp_number) for s in made] == expected
            switches += made
    assert len(scrambler.switches) == len(switches)
