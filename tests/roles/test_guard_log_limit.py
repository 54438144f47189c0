"""Rate-limited warnings and bounded log values."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs, formatEvent

from bcast_sp4.roles import log_limit
from bcast_sp4.roles.log_limit import LogLimiter, shorten, shorten_fields


def test_the_first_burst_passes_then_one_summary_per_peer_and_kind():
    clock = Clock()
    limiter = LogLimiter(clock, window=10.0, burst=3)
    with capturedLogs() as events:
        passed = [limiter.allow("127.0.0.1:40000", "invalid", "invalid messages") for _ in range(1237)]
        other = limiter.allow("127.0.0.1:40001", "invalid", "invalid messages")
        clock.advance(10)
    assert passed[:3] == [True] * 3 and not any(passed[3:]) and other
    lines = [formatEvent(e) for e in events]
    assert lines == ["... and 1,234 more invalid messages from 127.0.0.1:40000 in the last 10 s"]
    assert limiter.suppressed == 1234
    # a new window starts afresh
    assert limiter.allow("127.0.0.1:40000", "invalid", "invalid messages")


def test_no_summary_when_nothing_was_held_back_and_no_timer_without_warnings():
    clock = Clock()
    limiter = LogLimiter(clock, window=5.0, burst=5)
    assert clock.getDelayedCalls() == []
    with capturedLogs() as events:
        limiter.allow("p", "k")
        clock.advance(5)
    assert events == [] and clock.getDelayedCalls() == []


def test_many_peers_share_one_entry_past_the_bound(monkeypatch):
    monkeypatch.setattr(log_limit, "MAX_PEERS", 4)
    clock = Clock()
    limiter = LogLimiter(clock, window=10.0, burst=1)
    with capturedLogs() as events:
        allowed = [limiter.allow(f"10.0.0.1:{port}", "refused", "refused connections") for port in range(100)]
        clock.advance(10)
    assert sum(allowed) == 4
    lines = [formatEvent(e) for e in events]
    assert lines == ["... and 96 more refused connections from other peers in the last 10 s"]


def test_flush_writes_pending_summaries():
    clock = Clock()
    limiter = LogLimiter(clock, window=10.0, burst=0)
    with capturedLogs() as events:
        limiter.allow("p", "k", "things")
        clock.advance(2)
        limiter.flush()
    assert [formatEvent(e) for e in events] == ["... and 1 more things from p in the last 2 s"]
    assert clock.getDelayedCalls() == []


def test_a_stream_error_with_10000_statuses_logs_one_short_line():
    log = Logger(namespace="test")
    fields = {"error_status": tuple(range(10_000)), "channel_id": 1, "detail": "x" * 50_000, "data": b"\x01" * 5000}
    with capturedLogs() as events:
        log.warn("peer error " + " ".join(f"{k}={{{k}}}" for k in fields), **shorten_fields(fields))
    line = formatEvent(events[0])
    assert len(line) < 700, line
    assert "9,992 more" in line and "50,000 chars" in line and "5,000 bytes" in line
    assert "channel_id=1" in line


def test_shorten_keeps_short_values():
    assert shorten((1, 2, 3)) == (1, 2, 3)
    assert shorten("short") == "short"
    assert shorten(7) == 7 and shorten(None) is None
    assert shorten(b"\x00\x01") == "0001"
    assert shorten([1] * 9) == "[1, 1, 1, 1, 1, 1, 1, 1, ... (1 more)]"


def test_limiter_warn_helper_truncates():
    clock = Clock()
    limiter = LogLimiter(clock, window=10.0, burst=1)
    log = Logger(namespace="test")
    with capturedLogs() as events:
        limiter.warn(log, "p", "k", "things", "bad {values}", values=list(range(100)))
        limiter.warn(log, "p", "k", "things", "bad {values}", values=list(range(100)))
    assert len(events) == 1 and "92 more" in formatEvent(events[0])


def test_after_stop_every_line_passes_and_no_window_timer_is_armed():
    from twisted.internet.task import Clock

    from bcast_sp4.roles.log_limit import LogLimiter

    clock = Clock()
    limiter = LogLimiter(clock, window=10.0, burst=1)
    assert limiter.allow("10.0.0.1", "closing") and not limiter.allow("10.0.0.1", "closing")
    assert len(clock.getDelayedCalls()) == 1
    limiter.stop()
    assert clock.getDelayedCalls() == []
    assert all(limiter.allow("10.0.0.1", "closing") for _ in range(3))
    assert clock.getDelayedCalls() == [] and limiter.suppressed == 1
    limiter.start()
    assert limiter.allow("10.0.0.2", "closing") and len(clock.getDelayedCalls()) == 1
