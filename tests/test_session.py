"""SessionManager: fresh Deferreds per caller, later-turn firing, timeouts, failure, bounds."""

import pytest
from twisted.internet.defer import TimeoutError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from bcast_sp4.session import ChannelLost, NotReady, SessionManager


class SessionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.session = SessionManager(self.clock, limit=3)

    def test_waiters_fire_on_a_later_turn_with_the_value(self):
        a = self.session.when_stkm(1, 2, 3)
        b = self.session.when_stkm(1, 2, 3)
        assert a is not b
        self.session.stkm_ready(1, 2, 3, b"stkm")
        self.assertNoResult(a)  # not re-entrant
        self.clock.advance(0)
        assert self.successResultOf(a) == b"stkm" and self.successResultOf(b) == b"stkm"

    def test_already_published_fires_next_turn(self):
        self.session.allocation_granted(0x00010001, 5, 200)
        d = self.session.when_allocation(0x00010001, 5)
        self.clock.advance(0)
        assert self.successResultOf(d) == 200

    def test_timeout(self):
        d = self.session.when_channel_ready("scs", "ecmg-a", 1, timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, TimeoutError)
        assert self.session.waiting("channel") == 0

    def test_cancel_removes_the_waiter(self):
        d = self.session.when_stream_ready("scs", "p", 1, 2)
        d.cancel()
        self.failureResultOf(d)
        assert self.session.waiting("stream") == 0

    def test_channel_lost_fails_channel_and_its_streams_only(self):
        ch = self.session.when_channel_ready("scs", "p", 1)
        st = self.session.when_stream_ready("scs", "p", 1, 9)
        other = self.session.when_stream_ready("scs", "p", 2, 9)
        self.session.stream_ready("scs", "p", 1, 8, "record")
        self.session.channel_lost("scs", "p", 1, "TCP lost")
        self.clock.advance(0)
        assert "TCP lost" in str(self.failureResultOf(ch, ChannelLost).value)
        self.failureResultOf(st, ChannelLost)
        self.assertNoResult(other)
        assert self.session.current("stream", ("scs", "p", 1, 8)) is None

    def test_published_values_are_bounded(self):
        for cp in range(10):
            self.session.stkm_ready(1, 1, cp, bytes([cp]))
        assert [self.session.current("stkm", (1, 1, cp)) for cp in (6, 7, 8, 9)] == [None, b"\x07", b"\x08", b"\x09"]

    def test_peer_lost_counts_only_after_the_call(self):
        self.session.peer_lost("mux", "earlier")
        d = self.session.when_peer_lost("mux")
        self.clock.advance(0)
        self.assertNoResult(d)
        self.session.peer_lost("mux", "now")
        self.clock.advance(0)
        assert self.successResultOf(d) == "now"

    def test_registry_of_colocated_roles(self):
        self.session.register("mux", self)
        assert self.session.lookup("mux") is self and self.session.lookup("emmg") is None
        with pytest.raises(ValueError):
            self.session.register("mux", object())
        self.session.unregister("mux")
        assert self.session.lookup("mux") is None

    def test_guarded_call_logs_and_survives(self):
        def boom():
            raise RuntimeError("other role's bug")

        assert self.session.call_guarded("submit", boom) is None
        assert len(self.flushLoggedErrors(RuntimeError)) == 1


class ObserveTests(SynchronousTestCase):
    """Role lifecycle events (the machines' Notify) become session state and fired Deferreds."""

    def test_lifecycle_events(self):
        clock = Clock()
        session = SessionManager(clock)
        channel = session.when_channel_ready("ecmg", "peer", 3)
        stream = session.when_stream_ready("ecmg", "peer", 3, 1)
        allocation = session.when_allocation(0x00010001, 0x100)
        session.observe("ecmg", "peer", "channel_open", {"channel_id": 3, "super_cas_id": 0x00010001})
        session.observe("ecmg", "peer", "stream_open", {"channel_id": 3, "stream_id": 1, "ecm_id": 9})
        session.observe("mux", "p2", "bandwidth_allocated", {"client_id": 0x00010001, "data_id": 0x100, "allocation": 64})
        session.observe("ecmg", "peer", "not_enough_cws", {"channel_id": 3})  # not the session's business
        clock.advance(0)
        assert self.successResultOf(channel)["super_cas_id"] == 0x00010001
        assert self.successResultOf(stream)["ecm_id"] == 9
        assert self.successResultOf(allocation) == 64
        later = session.when_stream_ready("ecmg", "peer", 3, 2)
        session.observe("ecmg", "peer", "channel_closed", {"channel_id": 3, "why": "connection_lost"})
        clock.advance(0)
        self.failureResultOf(later, ChannelLost)
        assert session.current("channel", ("ecmg", "peer", 3)) is None


def test_lab_roles_report_into_one_session():
    """Every lab role reaches the shared session manager (no sockets: a memory reactor)."""
    from bcast_sp4.tap import lab

    from .integration.harness import ROOT
    from .doubles import UDPMemoryReactor

    settings = lab.load_lab_settings(ROOT / "etc" / "lab" / "lab.toml")
    service = lab.build_service(settings, UDPMemoryReactor())
    session = service.session
    assert session.lookup("mux") is service.mux.mux and session.lookup("emmg") is service.emmg.emmg
    executors = [service.mux.mux.play_out.executor, service.emmg.emmg.executor, service.scs.runner.executor]
    executors += [e.factory.executor for e in service.ecmgs]
    assert all(executor.session is session for executor in executors)


class AllReadyTests(SynchronousTestCase):
    """all_ready: many named waits under one deadline; the failure names what is missing."""

    def setUp(self):
        self.clock = Clock()
        self.session = SessionManager(self.clock)

    def test_fires_with_every_value_once_all_are_published(self):
        d = self.session.all_ready({"a": self.session.when_allocation(1, 1), "b": self.session.when_listening("tcp:1")},
                                   10.0, "start")
        self.session.allocation_granted(1, 1, 64)
        self.clock.advance(0)
        self.assertNoResult(d)
        self.session.listening("tcp:1", "mux")
        self.clock.advance(0)
        assert self.successResultOf(d) == {"a": 64, "b": "mux"}
        assert not self.clock.getDelayedCalls()  # the deadline is disarmed

    def test_timeout_names_every_missing_wait_and_cancels_them(self):
        d = self.session.all_ready({"MUX listening": self.session.when_listening("tcp:1"),
                                    "ECMG listening": self.session.when_listening("tcp:2"),
                                    "LTKM allocation": self.session.when_allocation(1, 1)}, 5.0, "lab start-up")
        self.session.listening("tcp:2", "ecmg")
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, NotReady).value
        assert str(error) == "lab start-up: not ready after 5 s: MUX listening, LTKM allocation"
        assert error.missing == ["MUX listening", "LTKM allocation"]
        assert self.session.waiting("listening") == 0 and self.session.waiting("allocation") == 0

    def test_a_failed_wait_fails_at_once_naming_it(self):
        d = self.session.all_ready({"SCS channel": self.session.when_channel_ready("scs", "c", 0),
                                    "other": self.session.when_allocation(1, 1)}, 5.0, "lab start-up")
        self.session.channel_lost("scs", "c", 0, "refused")
        self.clock.advance(0)
        error = self.failureResultOf(d, NotReady).value
        assert str(error).startswith("lab start-up: SCS channel: ") and "refused" in str(error)
        assert self.session.waiting("allocation") == 0

    def test_nothing_to_wait_for_is_ready_at_once(self):
        assert self.successResultOf(self.session.all_ready({}, 1.0, "none")) == {}
