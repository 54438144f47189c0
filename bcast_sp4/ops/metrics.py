"""Prometheus metrics of one process (issue #12, item 2), with ``prometheus-client``.

One :class:`Metrics` per process (the lab shares one across its roles), owning its own
``CollectorRegistry`` — never the global one, so tests and several lab instances in one
interpreter do not collide. Most figures are read at scrape time from counters the roles keep
anyway (``SchedulerStats``, ``ScramblerStats``, the MUX's route and drop counters, the EMMG's
counters, the terminal's counts, the session manager's registry): a role registers a *source*,
a function yielding ``(family, labels, value)`` samples, with one of the ``watch_*`` methods. What
no role counts — messages and errors by type and code, the ECM_response latency, connections,
reconnects and peer losses — is counted here by small hooks (:meth:`Metrics.message_received`,
:meth:`Metrics.message_sent`, :meth:`Metrics.observe`), each a dictionary increment.

Names follow the Prometheus conventions: ``bcast_sp4_`` prefix, ``_total`` for counters, base
units (seconds, bytes, bits per second); ids as labels, Super_CAS_id / client_id as
``0x00010001``, ECM_id / data_id as ``0x0001``, error codes as ``0x7000``.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterable, Iterator

import bisect

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

PREFIX = "bcast_sp4_"

#: family -> (type, help, label names). Counters are named with their ``_total`` suffix.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # every role, from the session manager and the adapters
    "channels_open": ("gauge", "SimulCrypt channels open", ("role", "interface")),
    "streams_open": ("gauge", "SimulCrypt streams open", ("role", "interface")),
    "messages_received_total": ("counter", "SimulCrypt messages received", ("role", "interface", "message_type")),
    "messages_sent_total": ("counter", "SimulCrypt messages sent", ("role", "interface", "message_type")),
    "errors_received_total": ("counter", "channel_error / stream_error received, by error_status",
                              ("role", "interface", "error_status")),
    "errors_sent_total": ("counter", "channel_error / stream_error sent, by error_status",
                          ("role", "interface", "error_status")),
    "connections_total": ("counter", "TCP connections made or accepted", ("role",)),
    "reconnects_total": ("counter", "client connections made again after a loss", ("role",)),
    "peer_losses_total": ("counter", "connections or channels lost to a peer", ("role",)),
    # ECMG
    "stkms_generated_total": ("counter", "STKMs (ECMs) generated, by profile", ("role", "profile")),
    # SCS
    "stkms_received_total": ("counter", "STKMs received from ECMGs", ("role", "service")),
    "stkms_submitted_total": ("counter", "STKMs handed to the MUX", ("role", "service")),
    "cw_provisions_sent_total": ("counter", "CW_provisions sent", ("role", "service")),
    "cw_provisions_late_total": ("counter", "crypto-periods whose STKMs came after the period started",
                                 ("role", "service")),
    "cw_provision_retries_total": ("counter", "CW_provisions sent again after a timeout", ("role", "service")),
    "cw_provision_timeouts_total": ("counter", "CW_provisions without ECM_response in time", ("role", "service")),
    "periods_ready_total": ("counter", "crypto-periods with every STKM in time", ("role", "service")),
    "periods_skipped_total": ("counter", "crypto-periods skipped (an STKM missing)", ("role", "service")),
    "tek_switches_total": ("counter", "TEK switches by the scrambler", ("role", "service")),
    "scrambler_packets_total": ("counter", "content packets through the scrambler, by outcome",
                                ("role", "service", "outcome")),
    # MUX
    "mux_datagrams_total": ("counter", "MUX datagrams per route, in (received) or out (emitted)",
                            ("role", "client_id", "data_id", "direction")),
    "mux_bytes_total": ("counter", "MUX payload bytes per route, in or out", ("role", "client_id", "data_id", "direction")),
    "mux_allocated_bandwidth_bits_per_second": ("gauge", "bandwidth allocated to the route's stream",
                                                ("role", "client_id", "data_id")),
    "mux_allocated_bandwidth_total_bits_per_second": ("gauge", "bandwidth allocated to all streams", ("role",)),
    "mux_drops_total": ("counter", "datagrams the MUX did not emit, by cause", ("role", "cause")),
    # EMMG
    "ltkms_generated_total": ("counter", "LTKMs generated from the subscriber file", ("role",)),
    "ltkms_sent_total": ("counter", "LTKMs sent to the MUX, by source", ("role", "source")),
    "emmg_udp_errors_total": ("counter", "data_provision datagrams the EMMG could not send", ("role",)),
    # terminal
    "terminal_datagrams_received_total": ("counter", "key-stream datagrams received by the terminal, by kind",
                                          ("role", "kind")),
    "terminal_periods_total": ("counter", "crypto-periods of content the terminal reported", ("role",)),
    "terminal_packets_total": ("counter", "content packets received by the terminal, by outcome",
                               ("role", "profile", "service", "outcome")),
    "terminal_teks_learned_total": ("counter", "TEKs the terminal took from STKMs", ("role", "profile", "service")),
}

#: ECM_response latency buckets, seconds (a CW_provision answered within max_comp_time = 100 ms)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

Sample = tuple[str, tuple[str, ...], float]
Source = Callable[[], Iterable[Sample]]


def hex32(value: int) -> str:
    """``0x00010001``: a Super_CAS_id or client_id label."""
    return f"{value:#010x}"


def hex16(value: int) -> str:
    """``0x0001``: an ECM_id, data_id or error_status label."""
    return f"{value:#06x}"



#: channel_setups whose Super_CAS_id labels the ECM_response latency (4x the default
#: max_connections: one per live channel, and the oldest of a connection flood's go first)
MAX_CHANNELS_REMEMBERED = 8192

class _Collector:
    """The registry's view of :class:`Metrics`: every source's samples grouped into families."""

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def describe(self):
        return []  # families are only known at scrape time; nothing to check at registration

    def collect(self) -> Iterator:
        for name, samples in self.metrics.snapshot().items():
            kind, doc, labelnames = FAMILIES[name]
            if kind == "counter":
                family = CounterMetricFamily(PREFIX + name, doc, labels=labelnames)
            else:
                family = GaugeMetricFamily(PREFIX + name, doc, labels=labelnames)
            for labels, value in sorted(samples.items()):
                family.add_metric(labels, value)
            yield family
        latency = self.metrics.latency
        if latency.series:
            family = HistogramMetricFamily(PREFIX + "ecm_response_latency_seconds", latency.doc,
                                           labels=("role", "super_CAS_id"))
            for (role, super_cas_id), (counts, total) in sorted(latency.series.items()):
                running, buckets = 0, []
                for bound, n in zip(LATENCY_BUCKETS, counts):
                    running += n
                    buckets.append((repr(float(bound)), running))
                buckets.append(("+Inf", running + counts[-1]))
                family.add_metric((role, hex32(super_cas_id)), buckets, total)
            yield family


class LatencyHistogram:
    """ECM_response latency per (role, Super_CAS_id): plain bucket counts (one bisect and two
    additions per observation, no lock: the reactor thread is the only writer), exposed as a
    Prometheus histogram at scrape time."""

    doc = ("time from a CW_provision sent to its ECM_response received (SCS), or from a CW_provision "
           "received to its ECM_response sent (ECMG)")

    def __init__(self) -> None:
        #: (role, Super_CAS_id) -> (count per bucket, the last one above every bound; sum of seconds)
        self.series: dict[tuple[str, int], tuple[list[int], float]] = {}

    def observe(self, role: str, super_cas_id: int, seconds: float) -> None:
        key = (role, super_cas_id)
        entry = self.series.get(key)
        if entry is None:
            entry = self.series[key] = ([0] * (len(LATENCY_BUCKETS) + 1), 0.0)
        counts, total = entry
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.series[key] = (counts, total + seconds)


class Metrics:
    """The metrics of one process (see the module docstring).

    :param role: the process's role name (``bcast-ecmg``, ``bcast-lab``, ...); the ``role`` label
        of each sample is the role that produced it (``ecmg``, ``scs``, ...).
    :param clock: ``seconds()`` for the ECM_response latency (the reactor, or a ``Clock``).
    """

    def __init__(self, role: str, clock) -> None:
        self.role = role
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self._sources: list[Source] = [self._event_samples]
        self._events: collections.Counter[tuple[str, tuple[str, ...]]] = collections.Counter()
        self._pending: dict[tuple, float] = {}  # (role, peer, channel, stream, CP) -> CW_provision sent at
        self._channels: dict[tuple, int] = {}  # (role, peer, ECM_channel_id) -> Super_CAS_id (channel_setup)
        self._kinds: dict[tuple, tuple] = {}  # (role, message class, sent) -> see _describe
        self.latency = LatencyHistogram()
        self.registry.register(_Collector(self))

    # -- sources -------------------------------------------------------------------------------

    def add_source(self, source: Source) -> None:
        """Read *source* at every scrape (it yields ``(family, labels, value)``)."""
        self._sources.append(source)

    def sources(self) -> list[Source]:
        return list(self._sources)

    def snapshot(self) -> dict[str, dict[tuple[str, ...], float]]:
        """Every source read now: family -> labels -> value (samples with equal labels add up)."""
        values: dict[str, dict[tuple[str, ...], float]] = collections.defaultdict(dict)
        for source in self.sources():
            for name, labels, value in source():
                family = values[name]
                family[labels] = family.get(labels, 0) + value
        return values

    def count(self, family: str, labels: tuple[str, ...], n: int = 1) -> None:
        """Add *n* to an event counter (a family of :data:`FAMILIES`)."""
        self._events[(family, labels)] += n

    def _event_samples(self) -> Iterator[Sample]:
        for (family, labels), value in list(self._events.items()):
            yield family, labels, value

    # -- hooks of the adapters -----------------------------------------------------------------

    def message_received(self, role: str, peer: str, message: Any, now: float) -> None:
        """A decoded SimulCrypt message came in (called by the roles' adapters)."""
        entry = self._kinds.get((role, type(message), False))
        if entry is None:
            entry = self._describe(role, type(message), False)
        self._events[entry[0]] += 1
        if entry[1]:
            self._special(entry, role, peer, message, now)

    def message_sent(self, role: str, peer: str, message: Any, now: float) -> None:
        """A SimulCrypt message went out (called by the roles' output executor)."""
        entry = self._kinds.get((role, type(message), True))
        if entry is None:
            entry = self._describe(role, type(message), True)
        self._events[entry[0]] += 1
        if entry[1]:
            self._special(entry, role, peer, message, now)

    def encoded_reply(self, role: str, peer: str, request: Any, now: float) -> None:
        """A hot path answered *request* (a CW_provision) with an ECM_response encoded by the machine
        (no message object to count): count it and its latency as :meth:`message_sent` would."""
        self.ecm_response_sent(role, peer, request.ECM_channel_id, request.ECM_stream_id, request.CP_number, now)

    def cw_provision_received(self, role: str, peer: str, channel_id: int, stream_id: int, cp_number: int,
                              now: float) -> None:
        """:meth:`message_received` of a CW_provision the ECMG read by its layout (no message object)."""
        self._events[("messages_received_total", (role, "ECMG<=>SCS", "CW_provision"))] += 1
        self._remember((role, peer, channel_id, stream_id, cp_number), now)

    def ecm_response_sent(self, role: str, peer: str, channel_id: int, stream_id: int, cp_number: int,
                          now: float) -> None:
        """:meth:`message_sent` of an ECM_response a hot path encoded (no message object): its count,
        and the latency since its CW_provision."""
        self._events[("messages_sent_total", (role, "ECMG<=>SCS", "ECM_response"))] += 1
        start = self._pending.pop((role, peer, channel_id, stream_id, cp_number), None)
        if start is not None:
            super_cas_id = self._channels.get((role, peer, channel_id), 0)
            self.latency.observe(role, super_cas_id, now - start if now > start else 0.0)

    # what a message kind needs beyond its count
    _PLAIN, _ERROR, _CW_PROVISION, _ECM_RESPONSE, _CHANNEL_SETUP = range(5)

    def _describe(self, role: str, kind: type, sent: bool) -> tuple:
        """(counter key, what else, interface) of messages of *kind* sent / received by *role* (cached)."""
        name = kind.NAME
        interface = "EMMG<=>MUX" if kind.__module__.endswith("emmg_mux") else "ECMG<=>SCS"
        key = ("messages_sent_total" if sent else "messages_received_total", (role, interface, name))
        special = self._PLAIN
        if name.endswith("_error"):
            special = self._ERROR
        elif interface == "ECMG<=>SCS":
            special = {"CW_provision": self._CW_PROVISION, "ECM_response": self._ECM_RESPONSE,
                       "channel_setup": self._CHANNEL_SETUP}.get(name, self._PLAIN)
        entry = (key, special, interface, sent)
        self._events.setdefault(key, 0)
        self._kinds[(role, kind, sent)] = entry
        return entry

    def _special(self, entry: tuple, role: str, peer: str, message: Any, now: float) -> None:
        special = entry[1]
        if special == self._ERROR:
            family = "errors_sent_total" if entry[3] else "errors_received_total"
            for code in message.error_status:
                self._events[(family, (role, entry[2], hex16(code)))] += 1
        elif special == self._CW_PROVISION:
            self._remember((role, peer, message.ECM_channel_id, message.ECM_stream_id, message.CP_number), now)
        elif special == self._ECM_RESPONSE:
            start = self._pending.pop((role, peer, message.ECM_channel_id, message.ECM_stream_id, message.CP_number), None)
            if start is not None:
                super_cas_id = self._channels.get((role, peer, message.ECM_channel_id), 0)
                self.latency.observe(role, super_cas_id, now - start if now > start else 0.0)
        elif special == self._CHANNEL_SETUP:
            channels, key = self._channels, (role, peer, message.ECM_channel_id)
            if channels.pop(key, None) is None and len(channels) >= MAX_CHANNELS_REMEMBERED:
                del channels[next(iter(channels))]  # the oldest channel_setup: its connection is long gone
            channels[key] = message.Super_CAS_id

    def _remember(self, key: tuple, now: float) -> None:
        pending = self._pending
        pending[key] = now
        if len(pending) > 100_000:  # answers that never came: forget the oldest half
            for stale in list(pending)[:50_000]:
                del pending[stale]

    def observe(self, role: str, peer: str, event: str, fields: dict[str, Any]) -> None:
        """A role's lifecycle event (what the session manager is told): a server's lost peers.

        Client roles count their connections, reconnects and losses themselves
        (:class:`~bcast_sp4.roles.reconnect.ReportingClientService`); servers count each accepted
        connection (:meth:`connection_made`) and each channel freed by a lost connection here."""
        if event == "connection_lost" or (event == "channel_closed" and fields.get("why") == "connection_lost"):
            self._events[("peer_losses_total", (_role_interface(role)[0],))] += 1

    def connection_made(self, role: str) -> None:
        """A server accepted a connection (called by the roles' TCP adapter)."""
        self._events[("connections_total", (role,))] += 1

    # -- role sources --------------------------------------------------------------------------

    def watch_session(self, session) -> None:
        """Channels and streams open, per role, from the session manager's registry."""

        def samples() -> Iterator[Sample]:
            channels: collections.Counter = collections.Counter()
            streams: collections.Counter = collections.Counter()
            for key in session.keys("channel"):
                channels[_role_interface(key[0])] += 1
            for key in session.keys("stream"):
                streams[_role_interface(key[0])] += 1
            for labels, n in channels.items():
                yield "channels_open", labels, n
            for labels, n in streams.items():
                yield "streams_open", labels, n

        self.add_source(samples)

    def watch_scs(self, schedulers: Callable[[], dict], scramblers: dict, role: str = "scs") -> None:
        """The SCS's ``SchedulerStats`` per service (*schedulers* returns name -> scheduler) and its
        scramblers' ``ScramblerStats`` and switches."""

        def samples() -> Iterator[Sample]:
            for name, scheduler in schedulers().items():
                s = scheduler.stats
                labels = (role, name)
                yield "stkms_received_total", labels, s.stkms_received
                yield "stkms_submitted_total", labels, s.stkms_submitted
                yield "cw_provisions_sent_total", labels, s.provisions_sent
                yield "cw_provisions_late_total", labels, s.stkms_late
                yield "cw_provision_retries_total", labels, s.retries
                yield "cw_provision_timeouts_total", labels, s.timeouts
                yield "periods_ready_total", labels, s.periods_ready
                yield "periods_skipped_total", labels, s.periods_skipped
            for name, scrambler in scramblers.items():
                s = scrambler.stats
                yield "tek_switches_total", (role, name), s.switches
                yield "scrambler_packets_total", (role, name, "sent"), s.sent
                yield "scrambler_packets_total", (role, name, "dropped_no_key"), s.dropped_no_key
                yield "scrambler_packets_total", (role, name, "dropped_invalid"), s.dropped_invalid

        self.add_source(samples)

    def watch_ecmg(self, source, role: str = "ecmg") -> None:
        """The ECMG's STKM source: STKMs (ECM_datagrams) generated, by profile."""
        profiles = {"drm": "drm", "smartcard": "smartcard", "dvb-sections": "dvb", "dvb-ts": "dvb"}

        def samples() -> Iterator[Sample]:
            for mode, n in source.generated.items():
                yield "stkms_generated_total", (role, profiles.get(mode.value, mode.value)), n

        self.add_source(samples)

    def watch_mux(self, core, role: str = "mux") -> None:
        """The MUX core's route counters, allocations and drops by cause."""

        def samples() -> Iterator[Sample]:
            for (client_id, data_id), route in core.routes.items():
                ids = (role, hex32(client_id), hex16(data_id))
                yield "mux_datagrams_total", ids + ("in",), route.datagrams_in
                yield "mux_datagrams_total", ids + ("out",), route.datagrams_out
                yield "mux_bytes_total", ids + ("in",), route.bytes_in
                yield "mux_bytes_total", ids + ("out",), route.bytes_out
                allocation = route.stream.allocation if route.stream is not None else 0
                yield "mux_allocated_bandwidth_bits_per_second", ids, allocation * 1000
            yield "mux_allocated_bandwidth_total_bits_per_second", (role,), core.allocated * 1000
            # UDP data_provisions take the MUX's fast path, not the TCP adapter: counted by the core
            yield "messages_received_total", (role, "EMMG<=>MUX", "data_provision (UDP)"), core.counters["udp_messages"]
            for cause, n in core.dropped.items():
                yield "mux_drops_total", (role, cause), n

        self.add_source(samples)

    def watch_emmg(self, counters: dict[str, int], role: str = "emmg") -> None:
        """The EMMG's counters: LTKMs generated and sent."""

        def samples() -> Iterator[Sample]:
            yield "ltkms_generated_total", (role,), counters.get("subscriber_ltkms", 0)
            yield "ltkms_sent_total", (role, "subscribers"), counters.get("subscriber_sent", counters.get("subscriber_ltkms", 0))
            yield "ltkms_sent_total", (role, "spool"), counters.get("spool_sent", 0)
            yield "emmg_udp_errors_total", (role,), counters.get("udp_errors", 0)
            yield "messages_sent_total", (role, "EMMG<=>MUX", "data_provision (UDP)"), counters.get("udp_sent", 0)

        self.add_source(samples)

    def watch_terminal(self, terminal, role: str = "terminal") -> None:
        """The reference terminal's datagram counts, periods and per-service outcomes."""

        def samples() -> Iterator[Sample]:
            for kind, n in terminal.counts.items():
                yield "terminal_datagrams_received_total", (role, str(kind)), n
            yield "terminal_periods_total", (role,), terminal.period
            for profile, core in terminal.cores.items():
                for service, stats in core.stats().items():
                    label = getattr(profile, "value", str(profile))
                    yield "terminal_teks_learned_total", (role, str(label), service), stats.teks_learned
                    for outcome, n in stats.counts.items():
                        yield ("terminal_packets_total", (role, str(label), service, getattr(outcome, "value", str(outcome))),
                               n)

        self.add_source(samples)


def _role_interface(role: str) -> tuple[str, str]:
    """The session's role key (``ECMG<=>SCS:ECMGProtocol``, ``scs``) as (role, interface) labels."""
    interface, sep, kind = role.partition(":")
    if not sep:
        return role, ""
    name = kind.replace("Protocol", "").lower() or interface
    return name, interface


__all__ = ["FAMILIES", "LATENCY_BUCKETS", "Metrics", "PREFIX", "hex16", "hex32"]
