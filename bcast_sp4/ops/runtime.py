"""What a role process runs for its operators beside its own service tree (issue #12).

:class:`Operations` bundles the process's :class:`~.metrics.Metrics`, its
:class:`~.status.StatusBoard`, its :class:`~.logging.KeyLog` and, as services, the HTTP endpoint
(when ``[metrics] endpoint`` / ``--metrics`` names one) and the periodic INFO summary. A tap
creates one per process in ``makeService`` and hands it to ``build_service``; the lab creates one
for all its roles.
"""

from __future__ import annotations

import collections
from typing import Iterator

from twisted.application.service import MultiService, Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .logging import KeyLog
from .metrics import Metrics
from .status import StatusBoard
from .web import OpsWebService

#: summary figures: name -> (families summed, label filter)
SUMMARY: tuple[tuple[str, tuple[str, ...], dict[str, str]], ...] = (
    ("channels", ("channels_open",), {}),
    ("streams", ("streams_open",), {}),
    ("STKMs", ("stkms_generated_total", "stkms_received_total"), {}),
    ("STKMs_received", ("terminal_datagrams_received_total",), {"kind": "stkm"}),
    ("periods", ("periods_ready_total", "terminal_periods_total"), {}),
    ("skipped", ("periods_skipped_total",), {}),
    ("LTKMs", ("ltkms_sent_total",), {}),
    ("datagrams_out", ("mux_datagrams_total",), {"direction": "out"}),
    ("allocated_bps", ("mux_allocated_bandwidth_total_bits_per_second",), {}),
    ("drops", ("mux_drops_total",), {}),
)


class SummaryService(Service):
    """One INFO line per role every *interval* seconds: channels, streams, STKMs, bandwidth, drops.

    Read from the metrics (so the line and ``/metrics`` always agree); a figure no source of that
    role provides is left out, a counter shows its total and its increase since the last line.
    """

    log = Logger()

    def __init__(self, metrics: Metrics, clock, interval: float = 10.0) -> None:
        self.metrics = metrics
        self.interval = interval
        self._loop = LoopingCall(self.report)
        self._loop.clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self):
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def figures(self) -> dict[str, dict[str, float]]:
        """role -> figure -> value, now."""
        snapshot = self.metrics.snapshot()
        out: dict[str, dict[str, float]] = collections.defaultdict(dict)
        from .metrics import FAMILIES

        for figure, families, wanted in SUMMARY:
            for family in families:
                labelnames = FAMILIES[family][2]
                for labels, value in snapshot.get(family, {}).items():
                    named = dict(zip(labelnames, labels))
                    if any(not named.get(k, "").startswith(v) for k, v in wanted.items()):
                        continue
                    role = named.get("role", "")
                    out[role][figure] = out[role].get(figure, 0) + value
        for figures in out.values():  # a MUX that emits and has dropped nothing says so
            if "datagrams_out" in figures:
                figures.setdefault("drops", 0)
        return out

    def report(self) -> None:
        for role, figures in sorted(self.figures().items()):
            parts, fields = [], {}
            for figure, families, _wanted in SUMMARY:
                if figure not in figures:
                    continue
                value = int(figures[figure])
                fields[figure] = value
                if families[0].endswith("_total"):
                    delta = value - int(self._last.get((role, figure), 0))
                    fields[figure + "_delta"] = delta
                    parts.append(f"{figure} {{{figure}}} (+{{{figure}_delta}})")
                else:
                    parts.append(f"{figure} {{{figure}}}")
                self._last[(role, figure)] = value
            if parts:
                self.log.info("{summary_role} summary: " + ", ".join(parts), summary_role=role,
                              interval=self.interval, **fields)


class Operations:
    """The operator side of one process (see the module docstring).

    :param role: the plugin's name (``bcast-ecmg``, ``bcast-lab``).
    :param reactor: the process's reactor (clock and listener).
    :param endpoint: the HTTP endpoint string, or ``None`` for none.
    :param log_keys: ``--log-keys`` (see :class:`~.logging.KeyLog`).
    :param summary_interval: seconds between two INFO summaries (0 = none).
    """

    def __init__(self, role: str, reactor, endpoint: str | None = None, log_keys: bool = False,
                 summary_interval: float = 10.0) -> None:
        self.role = role
        self.reactor = reactor
        self.endpoint = endpoint
        self.metrics = Metrics(role, reactor)
        self.board = StatusBoard(role, reactor)
        self.keys = KeyLog(log_keys)
        self.summary_interval = summary_interval
        self.web: OpsWebService | None = None

    @property
    def meter(self) -> Metrics | None:
        """What the roles' adapters count messages into: the metrics when an HTTP endpoint serves
        them, else ``None`` (no per-message cost: measured 3-6 µs per CW_provision / ECM_response
        pair on the development machine, against ~18 µs of ECMG CPU per STKM)."""
        return self.metrics if self.endpoint else None

    def watch_session(self, session) -> None:
        """Read channels and streams from *session* and observe its events (metrics and status)."""
        self.metrics.watch_session(session)
        self.board.watch_session(session)
        session.add_observer(self.metrics.observe)
        session.add_observer(self.board.observe)

    def services(self) -> Iterator[Service]:
        if self.endpoint:
            self.web = OpsWebService(self.reactor, self.endpoint, self.metrics, self.board)
            yield self.web
        if self.summary_interval:
            yield SummaryService(self.metrics, self.reactor, self.summary_interval)

    def attach(self, parent: MultiService) -> None:
        """Add the endpoint and the summary to *parent* (the endpoint string is parsed here: a bad
        one raises :class:`~.startup.StartupError`)."""
        for service in self.services():
            service.setServiceParent(parent)

    def attached(self, parent: MultiService) -> MultiService:
        """:meth:`attach`, returning *parent*."""
        self.attach(parent)
        return parent


__all__ = ["Operations", "SummaryService"]
