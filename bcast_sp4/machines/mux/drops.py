"""The MUX's drop accounting: every datagram that arrives and is not emitted is counted and logged.

Reasons (see :mod:`bcast_sp4.machines.mux`): ``queue_full``, ``stream_closed``, ``too_long``,
``refused``, ``bad_format`` (classic data that is not whole sections / TS packets), ``udp_unknown``,
``udp_invalid``, ``superseded``, ``pending_overflow``, ``egress_error``. The first drop of a (route, reason) is logged at once, then one summary per
``drop_log_interval`` while drops go on.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..outputs import Notify, Output
from .config import RouteKey


@attrs.define
class _DropReport:
    pending: int = 0
    total: int = 0
    last: float | None = None
    fields: dict = attrs.field(factory=dict)


class DropLog:
    """Drop counters by reason, and their rate-limited ``dropped`` notifications.

    :param interval: seconds between two notifications of one (route, reason).
    :ivar counts: reason -> datagrams dropped so far.
    :ivar due: when :meth:`flush` has a summary to give (``None``: nothing pending).
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.counts: dict[str, int] = {}
        self.due: float | None = None
        self._reports: dict[tuple[RouteKey | None, str], _DropReport] = {}

    def drop(self, route: RouteKey | None, reason: str, count: int, now: float, **fields: Any) -> list[Output]:
        """Count *count* dropped datagrams; notify the first at once, then summaries (rate-limited)."""
        self.counts[reason] = self.counts.get(reason, 0) + count
        report = self._reports.get((route, reason))
        if report is None:
            report = self._reports[(route, reason)] = _DropReport()
        report.total += count
        report.fields = fields
        interval = self.interval
        if report.last is None or now - report.last >= interval:
            count += report.pending
            report.pending = 0
            report.last = now
            return [self._notify(route, reason, count, report)]
        report.pending += count
        due = report.last + interval
        if self.due is None or due < self.due:
            self.due = due
        return []

    def flush(self, now: float) -> list[Output]:
        """The summaries whose interval has passed at *now*."""
        outputs: list[Output] = []
        interval = self.interval
        due: float | None = None
        for (route, reason), report in self._reports.items():
            if not report.pending:
                continue
            if now - report.last >= interval:
                outputs.append(self._notify(route, reason, report.pending, report))
                report.pending = 0
                report.last = now
            else:
                at = report.last + interval
                due = at if due is None else min(due, at)
        self.due = due
        return outputs

    @staticmethod
    def _notify(route: RouteKey | None, reason: str, count: int, report: _DropReport) -> Notify:
        where = {"client_id": route[0], "data_id": route[1]} if route is not None else {}
        return Notify("dropped", {**report.fields, **where, "reason": reason, "count": count, "total": report.total}, "warn")


__all__ = ["DropLog"]
