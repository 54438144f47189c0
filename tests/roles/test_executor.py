"""The roles' one output executor: write-then-close, keyed timers on a Clock, every log level."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, globalLogPublisher

from bcast_sp4.machines.outputs import CancelTimer, Close, Notify, Send, StartTimer
from bcast_sp4.roles.executor import KeyedTimers, Outbox, OutputExecutor
from bcast_sp4.session import SessionManager
from bcast_sp4.wire import ecmg_scs as m

log = Logger(namespace="test_executor")


def _test(n: int) -> m.ChannelTest:
    return m.ChannelTest(protocol_version=3, ECM_channel_id=n)


def _outbox(peer: str = "10.0.0.1:4000") -> tuple[Outbox, StringTransport]:
    transport = StringTransport()
    outbox = Outbox(log)
    outbox.attach(transport, peer)
    return outbox, transport


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        if event.get("log_namespace") == "test_executor":
            self.events.append(event)

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)


def test_sends_of_one_batch_leave_in_one_write_then_the_close():
    clock = Clock()
    executor = OutputExecutor(clock, log, "ecmg")
    outbox, transport = _outbox()
    writes = []
    transport.write = lambda data: writes.append(data)
    executor.begin()
    executor.run([Send(_test(1)), Send(_test(2))], 0.0, outbox)
    executor.run([Send(_test(3)), Close("bye", "info"), Send(_test(4))], 0.0, outbox)
    assert writes == [] and not transport.disconnecting
    executor.end()
    assert writes == [_test(1).encode() + _test(2).encode() + _test(3).encode()]  # 4 came after the close
    assert transport.disconnecting
    executor.run([Send(_test(5))], 0.0, outbox)
    assert len(writes) == 1  # closing: nothing more is written


def test_a_send_outside_a_batch_is_written_at_once():
    executor = OutputExecutor(Clock(), log, "mux")
    outbox, transport = _outbox()
    executor.send(outbox, _test(7))
    assert transport.value() == _test(7).encode()


def test_keyed_timers_are_due_at_now_plus_seconds_and_replaced_by_key():
    clock = Clock()
    fired = []
    executor = OutputExecutor(clock, log, "scs", timer_input=lambda key, now: fired.append((key, now)) or [])
    clock.advance(10.0)
    executor.run([StartTimer("a", 1.0), StartTimer("b", 2.0)], now=9.5)  # the input was made at 9.5
    assert executor.timers["a"].getTime() == 10.5 and executor.timers["b"].getTime() == 11.5
    executor.run([StartTimer("a", 3.0), CancelTimer("b")], now=10.0)
    assert set(executor.timers) == {"a"}
    clock.advance(2.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [("a", 13.0)] and not executor.timers


def test_outputs_of_a_fired_timer_are_executed_on_the_default_outbox():
    clock = Clock()
    outbox, transport = _outbox()
    executor = OutputExecutor(clock, log, "emmg", timer_input=lambda key, now: [Send(_test(9)), StartTimer(key, 1.0)],
                              default_outbox=lambda: outbox)
    executor.run([StartTimer("test", 1.0)], clock.seconds())
    clock.advance(1.0)
    assert transport.value() == _test(9).encode() and "test" in executor.timers
    executor.stop()
    assert not executor.timers and not clock.getDelayedCalls()


def test_a_failing_timer_input_is_logged_and_the_role_keeps_going():
    clock = Clock()
    executor = OutputExecutor(clock, log, "scs", timer_input=lambda key, now: 1 / 0)
    with Recorder() as recorder:
        executor.run([StartTimer("x", 0.5)], 0.0)
        clock.advance(0.5)
    assert [e["log_level"] for e in recorder.events] == [LogLevel.critical]
    assert recorder.events[0]["key"] == "x"


def test_every_level_is_logged_at_its_level_and_the_session_is_told():
    clock = Clock()
    session = SessionManager(clock)
    channel = session.when_channel_ready("scs", "ecmg-a", 0)
    executor = OutputExecutor(clock, log, "scs", session=session, peer_of=lambda event: event.fields.get("channel", ""))
    outputs = [Notify(f"e_{level}", {"channel": "ecmg-a"}, level) for level in ("debug", "info", "warn", "error")]
    outputs.append(Notify("channel_open", {"channel": "ecmg-a"}))
    with Recorder() as recorder:
        executor.run(outputs, 0.0)
    assert [e["log_level"] for e in recorder.events] == [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error,
                                                         LogLevel.info]
    assert all(e["peer"] == "ecmg-a" for e in recorder.events)
    clock.advance(0)
    assert channel.called


def test_an_output_without_a_handler_is_an_error_not_a_crash():
    executor = OutputExecutor(Clock(), log, "mux")
    with Recorder() as recorder:
        executor.run([object()], 0.0)
    assert [e["log_level"] for e in recorder.events] == [LogLevel.error]


def test_keyed_timers_read_as_a_mapping():
    clock = Clock()
    fired = []
    timers = KeyedTimers(clock, fired.append)
    timers.start(("k", 1), 2.0)
    assert len(timers) == 1 and ("k", 1) in timers
    timers.cancel(("k", 1))
    timers.cancel("never armed")
    clock.advance(5)
    assert fired == [] and not timers


def test_nothing_is_written_on_a_lost_connection():
    executor = OutputExecutor(Clock(), log, "ecmg")
    outbox, transport = _outbox()
    outbox.lost()
    executor.run([Send(_test(1)), Close("bye")], 0.0, outbox)
    assert transport.value() == b"" and not transport.disconnecting and outbox.closing
