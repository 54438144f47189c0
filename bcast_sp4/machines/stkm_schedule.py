"""Newest STKM wins: the STKMs of one stream waiting for their on_air_from, pure.

OMA BCAST SP-4 seed §14.1.1.3.1: one STKM per ECM_id is current; the next crypto-period's STKM
replaces it at the period switch. When several STKMs of one stream have reached their time
before anyone could act on them (a MUX tick came late, the link to the MUX was down), only the
newest still means anything: the older ones are *superseded* and their holders count them as
dropped. Used by the MUX's in-process STKM path (:meth:`bcast_sp4.machines.mux.MuxCore.submit_stkm`)
and by the SCS's remote STKM link (:mod:`bcast_sp4.roles.stkm_link`).

Ordering: by on_air_from, then by arrival (an STKM submitted later for the same instant is
newer). Due times within :data:`DUE_EPSILON` of *now* count as reached (float rounding of sums of
periods and of timer delays).
"""

from __future__ import annotations

import bisect
from typing import Generic, TypeVar

T = TypeVar("T")

#: due times this close to *now* count as reached
DUE_EPSILON = 1e-6


def _when(entry: tuple[float, object]) -> float:
    return entry[0]


class STKMSchedule(Generic[T]):
    """STKMs (any record *T*) of one stream, each with its on_air_from; of those due, the newest wins.

    :param limit: most STKMs waiting at once (``None``: no bound).
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._entries: list[tuple[float, T]] = []  # sorted by on_air_from, arrival order on ties

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, on_air_from: float, item: T) -> bool:
        """Schedule *item* for *on_air_from*; ``False`` (nothing kept) when :attr:`limit` are waiting."""
        if self.limit is not None and len(self._entries) >= self.limit:
            return False
        bisect.insort_right(self._entries, (on_air_from, item), key=_when)
        return True

    def next_due(self) -> float | None:
        """The earliest on_air_from waiting, or ``None``."""
        return self._entries[0][0] if self._entries else None

    def is_due(self, now: float) -> bool:
        """Some STKM has reached its on_air_from at *now*."""
        return bool(self._entries) and self._entries[0][0] <= now + DUE_EPSILON

    def settle(self, now: float) -> list[T]:
        """Of the STKMs due at *now*, keep only the newest waiting; return the others, oldest first."""
        due = self._due_count(now)
        if due < 2:
            return []
        superseded = [item for _when, item in self._entries[: due - 1]]
        del self._entries[: due - 1]
        return superseded

    def take_due(self, now: float) -> tuple[T | None, list[T]]:
        """Remove every STKM due at *now*: (the newest, the older ones it supersedes, oldest first).

        ``(None, [])`` when none is due.
        """
        due = self._due_count(now)
        if not due:
            return None, []
        items = [item for _when, item in self._entries[:due]]
        del self._entries[:due]
        return items[-1], items[:-1]

    def clear(self) -> list[T]:
        """Remove and return everything waiting, due or not."""
        items = [item for _when, item in self._entries]
        self._entries.clear()
        return items

    def _due_count(self, now: float) -> int:
        return bisect.bisect_right(self._entries, now + DUE_EPSILON, key=_when)


__all__ = ["DUE_EPSILON", "STKMSchedule"]
