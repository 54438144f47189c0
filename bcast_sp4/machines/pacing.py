"""Token bucket for bandwidth pacing and policing, driven by an injected clock (``now`` arguments).

TS 103 197 §6 (EMMG/PDG<=>MUX): ``bandwidth`` is negotiated in kbit/s (digest ``simulcrypt.md``
§4.2, §4.4); the EMMG must not send faster than allocated, and the MUX may answer a faster sender
with error 0x000F. Both ends use this bucket:

* Rule: a sender may send while ``tokens >= 0``; sending *n* bytes takes *n* tokens, so tokens may
  go negative (a debt) and the next send waits until the debt is repaid at ``rate``. Over any window
  of *T* seconds at most ``rate * T + depth + one message`` bytes pass, and a sender kept busy gets
  exactly ``rate`` in the long run, however late its timers fire (lateness is credited up to
  ``depth``).
* ``depth`` caps the credit saved while idle (the burst); ``floor`` caps the debt (so a policed
  sender that stops recovers in bounded time).

Pure: no clock of its own, no Twisted.
"""

from __future__ import annotations

import math

import attrs

#: bytes per second in one kbit/s (SimulCrypt ``bandwidth`` unit)
BYTES_PER_KBIT = 125.0
#: a debt this small (float rounding of ``elapsed * rate``) counts as none
EPSILON = 1e-6


def kbit_to_bytes(kbit_per_s: int | float) -> float:
    """Bytes per second for a rate in kbit/s."""
    return float(kbit_per_s) * BYTES_PER_KBIT


@attrs.define
class TokenBucket:
    """A token bucket in bytes.

    :ivar rate: refill rate, bytes per second (0 = closed).
    :ivar depth: largest credit, bytes.
    :ivar tokens: current credit (negative = debt).
    :ivar stamp: time of the last refill.
    :ivar floor: largest debt as a negative number, or ``None`` for no limit.
    """

    rate: float
    depth: float
    tokens: float = 0.0
    stamp: float = 0.0
    floor: float | None = None

    def refill(self, now: float) -> None:
        """Credit the time elapsed since the last refill (time never runs backwards here)."""
        if now > self.stamp:
            self.tokens = min(self.depth, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        elif self.tokens > self.depth:
            self.tokens = self.depth

    def ready(self, now: float) -> bool:
        """Whether a send may start now (``rate > 0`` and ``tokens >= 0``)."""
        self.refill(now)
        return self.rate > 0 and self.tokens >= -EPSILON

    def take(self, n: int) -> None:
        """Account *n* bytes sent (after :meth:`ready`, or regardless when policing)."""
        self.tokens -= n
        if self.floor is not None and self.tokens < self.floor:
            self.tokens = self.floor

    def delay(self, now: float) -> float:
        """Seconds until :meth:`ready` turns true (``inf`` when the bucket is closed)."""
        self.refill(now)
        if self.rate <= 0:
            return math.inf
        if self.tokens >= -EPSILON:
            return 0.0
        return -self.tokens / self.rate

    def set_rate(self, rate: float, depth: float, now: float, floor: float | None = None, *, fill: bool = False) -> None:
        """Change rate and depth from *now* on (credit earned so far at the old rate is kept).

        :param fill: start with a full bucket (``depth`` of credit) when it holds less.
        """
        self.refill(now)
        self.rate, self.depth, self.floor = rate, depth, floor
        self.tokens = max(self.tokens, depth) if fill else min(self.tokens, depth)
        if floor is not None:
            self.tokens = max(self.tokens, floor)


__all__ = ["BYTES_PER_KBIT", "EPSILON", "TokenBucket", "kbit_to_bytes"]
