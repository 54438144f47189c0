"""Token bucket: long-run rate, burst bound, late timers credited, debt floor, closed bucket."""

import math

import pytest

from bcast_sp4.machines.pacing import TokenBucket, kbit_to_bytes


def run(bucket, size, until, lateness=0.0):
    """Send *size*-byte messages whenever allowed, waking as the bucket says (plus *lateness*)."""
    now, sent = bucket.stamp, []
    while now < until:
        while bucket.ready(now):
            bucket.take(size)
            sent.append(now)
        now += bucket.delay(now) + lateness
    return sent


def test_kbit_unit():
    assert kbit_to_bytes(200) == 25_000.0


def test_long_run_rate_is_exact_even_with_late_timers():
    for lateness in (0.0, 0.0004, 0.003):
        bucket = TokenBucket(rate=25_000.0, depth=25_000.0 * 0.01, stamp=0.0)
        sent = run(bucket, 500, 10.0, lateness)
        assert abs(len(sent) * 500 / 10.0 - 25_000) / 25_000 < 0.003, (lateness, len(sent))


def test_no_window_exceeds_rate_times_window_plus_depth_plus_one_message():
    depth, size, rate = 250.0, 500, 25_000.0
    bucket = TokenBucket(rate=rate, depth=depth, stamp=0.0)
    sent = run(bucket, size, 5.0, lateness=0.002)
    for i, start in enumerate(sent):
        for window in (0.05, 0.5, 2.0):
            count = sum(1 for t in sent[i:] if t < start + window)
            assert count * size <= rate * window + depth + size


def test_idle_credit_is_capped_at_depth():
    bucket = TokenBucket(rate=1000.0, depth=300.0, stamp=0.0)
    bucket.refill(100.0)
    assert bucket.tokens == 300.0


def test_debt_floor_bounds_recovery():
    bucket = TokenBucket(rate=1000.0, depth=500.0, tokens=500.0, stamp=0.0, floor=-2000.0)
    for _ in range(100):
        bucket.take(1000)
    assert bucket.tokens == -2000.0
    assert bucket.delay(0.0) == pytest.approx(2.0)
    assert bucket.ready(2.0)


def test_closed_bucket_never_ready():
    bucket = TokenBucket(rate=0.0, depth=0.0, stamp=0.0)
    assert not bucket.ready(10.0) and math.isinf(bucket.delay(10.0))


def test_set_rate_keeps_credit_and_fill_tops_up():
    bucket = TokenBucket(rate=1000.0, depth=1000.0, tokens=0.0, stamp=0.0)
    bucket.set_rate(2000.0, 100.0, now=1.0)  # 1000 earned at the old rate, capped to the new depth
    assert bucket.tokens == 100.0 and bucket.rate == 2000.0
    bucket.take(600)
    bucket.set_rate(4000.0, 2000.0, now=1.0, fill=True)
    assert bucket.tokens == 2000.0
