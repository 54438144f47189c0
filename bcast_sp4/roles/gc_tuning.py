"""Keeping CPython's cyclic garbage collector out of the roles' timing-critical paths.

The roles keep their long-lived state (key stores, configuration, per-stream records) for the
process's lifetime and allocate few reference cycles per message, so the collector's default
schedule costs pauses that find nothing: a full pass over 10,000 services' state stops the
reactor for hundreds of ms (``benchmarks/scs.py``). Each role calls what fits it once set up:

* :func:`freeze_long_lived` — collect once, then move everything alive to the permanent
  generation (``gc.freeze``); optionally make the automatic young passes rarer (the ECMG).
* :func:`tune_gc` — the SCS: frozen state, full passes rare, and the young generations collected
  on *clock* by a :class:`YoungCollector` rather than by the stalled allocation count.

Everything that schedules takes the clock (the reactor, or a test's ``Clock``) as an argument:
nothing here imports the global reactor.
"""

from __future__ import annotations

import gc

from twisted.internet.interfaces import IDelayedCall, IReactorTime


def freeze_long_lived(young_threshold: int | None = None) -> None:
    """Collect, then freeze everything alive (``gc.freeze``): later passes no longer traverse it.

    :param young_threshold: when given, the generation-0 threshold (generations 1 and 2 keep a
        ratio of 10): for processes whose per-message objects hold no cycles, so that young passes
        find nothing and may be rarer.
    """
    gc.collect()
    gc.freeze()
    if young_threshold is not None:
        gc.set_threshold(young_threshold, 10, 10)


class YoungCollector:
    """Time-driven young-generation passes: ``gc.collect(1)`` every *interval* seconds on *clock*.

    CPython starts a generation-0 pass when allocations minus deallocations of container objects
    exceed threshold 0. In the SCS's steady state every period frees about as many objects as it
    allocates (periods, TEKs, timers, STKMs of older periods die as new ones are made), so that
    count hardly moves: automatic passes become rare, the young generations fill with everything
    allocated since the last pass (the next periods' state lives seconds, so it survives gen0) and
    each pass - above all every 10th, the generation-1 pass - traverses tens of thousands of objects,
    stopping the reactor for tens of ms, more as the process approaches its steady state
    (``benchmarks/scs.py``: 42,000 objects in generation 1, 10-43 ms per pass). Collecting
    generations 0 and 1 on a clock instead bounds each pass to what the process allocated in
    *interval* (a ms or two at 10,000 streams). Every *full_every* passes the pass is a full one.
    """

    def __init__(self, clock: IReactorTime, interval: float, full_every: int | None) -> None:
        self.clock, self.interval, self.full_every = clock, interval, full_every
        self.passes = 0
        self._call: IDelayedCall | None = clock.callLater(interval, self._collect)

    def _collect(self) -> None:
        self.passes += 1
        full = self.full_every is not None and self.passes % self.full_every == 0
        gc.collect(2 if full else 1)
        self._call = self.clock.callLater(self.interval, self._collect)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


def tune_gc(clock: IReactorTime, full_collection_every: int = 1000,
            young_interval: float | None = 0.05) -> YoungCollector | None:
    """Keep the cyclic garbage collector's passes out of the CW-switch path (the SCS).

    With 10,000 services a full (generation-2) pass over the SCS's state stops the reactor for
    several hundred ms (``benchmarks/scs.py`` measured 430 ms). Called once the services are set
    up: collect, move everything alive to the permanent generation (``gc.freeze``), and run a full
    pass only every *full_collection_every* generation-1 passes instead of every 10.

    Young generations: with *young_interval* (default), the automatic passes (triggered by the
    allocation count, which stalls in the steady state, so they grow to tens of ms) are replaced
    by a :class:`YoungCollector` on *clock* collecting generations 0 and 1 every *young_interval*
    seconds; its full pass comes every *full_collection_every* x 10 young passes (the automatic
    generation-1 pass came every 10 generation-0 passes), i.e. every ~8 min at 0.05 s. The
    automatic thresholds stay as a safety net for allocation bursts, with full passes left to the
    collector. ``young_interval=None``: thresholds only (nothing is scheduled on *clock*).

    :returns: the collector to :meth:`~YoungCollector.stop` at shutdown, or ``None``.
    """
    freeze_long_lived()
    threshold0, threshold1, _ = gc.get_threshold()
    if young_interval is None:
        gc.set_threshold(threshold0, threshold1, full_collection_every)
        return None
    # an explicit pass counts towards the generation-2 trigger too: keep the full passes scheduled
    gc.set_threshold(threshold0, threshold1, 2**30)
    return YoungCollector(clock, young_interval, full_collection_every * 10)


__all__ = ["YoungCollector", "freeze_long_lived", "tune_gc"]
