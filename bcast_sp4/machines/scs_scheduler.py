"""The SCS's crypto-period scheduler for one encrypted service: a pure machine.

TS 103 197 §5 (digest ``simulcrypt.md`` §3.4, §6.2, §6.4); OMA BCAST SP-4 seed §14.1.1.2 (the
SCS's duties) and §14.1.1.3.3 (one SCS instance per encrypted service; optional TEK encryption).

:class:`ServiceScheduler` owns crypto-period numbering, the TEK generator (CWG), CW_provision
timing, ECM_response matching, retries, STKM submission to the MUX and TEK hand-over to the
scrambler. It touches no reactor, socket or logger: every input takes ``now`` (seconds) and
returns a list of outputs — :class:`~.scs_records.RequestCWProvision` (routed to a channel by the
core), :class:`~.scs_records.SubmitSTKM`, :class:`~.scs_records.ProvideTEK`,
:class:`~.scs_records.SwitchTEK`, :class:`~.outputs.Notify` and :class:`~.outputs.StartTimer` /
:class:`~.outputs.CancelTimer` keyed by :class:`PeriodTimer` (the next instant something is due)
or :class:`TEKSwitchTimer` (T(n) of a READY period).

Crypto-period scheduler (per service; periods are numbered on a wall-clock grid
``T(n) = phase + n * D``, ``CP_number = n mod 65536``; E = the service's ECMG links)::

  period state  event                                  action                                   next
  PLANNED       now >= provision_at(n, e), link e up   CW_provision(n) to e with CWs              PLANNED
                                                       n-(CW_per_msg-1-lead_CW) .. n+lead_CW
  PLANNED       ECM_response(n) from e                 STKM(n, e) kept                            PLANNED
  PLANNED       STKM(n, e) in hand for every e in E,   SubmitSTKM per e (on air from              READY
                now < T(n)                             T(n) + delay_start_e, late if now is past
                                                       it), ProvideTEK(n, at=T(n)), arm
                                                       TEKSwitchTimer(n) for T(n)
  PLANNED       response timer / stream_error (e)      retry after retry_delay while now < T(n)   PLANNED
                                                       and attempts < max_attempts, counted
  PLANNED       link e down                            outstanding request -> re-sent on up       PLANNED
  PLANNED       now >= T(n)                            missing STKM(s) logged and counted; no     SKIPPED
                                                       TEK switch: the scrambler and the MUX
                                                       stay on the last good period
  READY         TEKSwitchTimer(n) (at T(n))            SwitchTEK(n): the scrambler switches now   ON_AIR
                                                       (or switched at its first datagram >= T(n))

  provision_at(n, e) = min(T(n), T(n) + delay_start_e) - max(provision_lead, max_comp_time_e + 50 ms)
  response timeout   = max(2 x max_comp_time_e, response_timeout_floor)
  provision_lead defaults to half a crypto-period. delay_start_e is the ECMG's delay_start, its
  transition_delay_start for the service's first scrambled period when it announces one.

Decisions ([UNCONFIRMED] in the digest, or ours):

* A period is switched to only when *every* ECMG link of the service has delivered its STKM
  before T(n): otherwise some receivers would lose the service. A skipped period keeps TEK(n-1)
  on the scrambler and STKM(n-1) on air; its own STKMs are never submitted, so the MUX never airs
  an STKM whose TEK is not in use. While an ECMG is down the service therefore keeps its key.
* STKMs are submitted together when the period becomes READY (not as each arrives).
* delay_stop / AC delays are not used: one STKM per ECM_id is on air at a time, replaced by the
  next (as TSD's scrambler does); ``CP_duration`` is never sent (every period is nominal).
* After a reconnect the streams are set up again and every period that has not started and whose
  STKM is not in hand is provisioned at once if due (the "current and next" periods; the running
  period was either switched to, with its STKMs in hand, or skipped for good).
* The switch is the scheduler's own timer (:class:`TEKSwitchTimer`), armed when the period
  becomes READY, together with the hand-over of TEK(n) (:class:`~.scs_records.ProvideTEK`), so the
  scrambler prepares its context well before T(n) and only swaps it at T(n).
* TEK identifiers: SRTP MKI and ISMACryp key indicator = n on their configured length (distinct for
  2^(8 x length) consecutive periods); IPsec SPI random >= 256, never one of the service's last 16.
"""

from __future__ import annotations

import collections
import enum
import math
import os
from typing import Callable

import attrs

from ..bcast import cw_encryption, traffic
from ..wire.params import CPCWCombination
from .outputs import CancelTimer, Notify, StartTimer
from .scs_records import (
    CP_NUMBER_MASK,
    ECMGParams,
    LinkSpec,
    ProvideTEK,
    RequestCWProvision,
    ServiceSpec,
    SubmitSTKM,
    SwitchTEK,
    Timing,
)


#: The poll timer is armed this long after the instant something is due. Provisioning instants
#: sit on the same grid as T(n) (T(n) - delay - lead, phases staggered by whole ms), so another
#: service's TEK switch is often due at the very instant of a poll; a reactor runs timers due
#: together in time order, so the switch - the one timer whose lateness matters - goes first.
#: 10 us: far above the float resolution of an epoch-seconds clock, far below what a poll cares about.
POLL_SLACK = 1e-5


@attrs.frozen(cache_hash=True)  # a timer key is hashed at every arm, cancel and fire
class PeriodTimer:
    """Timer key: the next instant the scheduler of *service* has something due (its poll)."""

    service: str


@attrs.frozen(cache_hash=True)
class TEKSwitchTimer:
    """Timer key: T(*n*) of service *service*, when TEK(n) takes over on the scrambler."""

    service: str
    n: int


class PeriodState(enum.Enum):
    """Where one crypto-period stands (module table)."""

    PLANNED = "PLANNED"
    READY = "READY"
    ON_AIR = "ON_AIR"
    SKIPPED = "SKIPPED"


class Acquisition(enum.Enum):
    """Where the STKM of one period from one ECMG link stands."""

    WAITING = "WAITING"  # to be requested at provision_at (or retried at not_before)
    REQUESTED = "REQUESTED"
    RECEIVED = "RECEIVED"
    ABANDONED = "ABANDONED"


class LinkState(enum.Enum):
    """Whether the ECMG stream of one link of the service is open."""

    DOWN = "DOWN"
    UP = "UP"


@attrs.define
class _Fetch:
    state: Acquisition = Acquisition.WAITING
    attempts: int = 0
    not_before: float = 0.0
    deadline: float = math.inf
    stkm: bytes | None = attrs.field(default=None, repr=False)
    received_at: float | None = None
    #: provision_at of this fetch, computed with :attr:`provision_params` (recomputed when they change)
    provision_at: float = math.nan
    provision_params: object = attrs.field(default=None, repr=False)


@attrs.define
class _Period:
    n: int
    start: float
    fetches: list[_Fetch]
    state: PeriodState = PeriodState.PLANNED


@attrs.define
class _Link:
    spec: LinkSpec
    state: LinkState = LinkState.DOWN
    params: ECMGParams | None = None


@attrs.define
class SchedulerStats:
    """Counters of one service (monotonic)."""

    stkms_received: int = 0
    stkms_submitted: int = 0
    stkms_late: int = 0
    periods_ready: int = 0
    periods_skipped: int = 0
    provisions_sent: int = 0
    retries: int = 0
    timeouts: int = 0
    refusals: int = 0


def _identifier(n: int, length: int) -> bytes:
    return (n % (1 << (8 * length))).to_bytes(length, "big") if length else b""


class ServiceScheduler:
    """Crypto-periods of one service (see the module table).

    :param tek_factory: ``(n) -> material`` overriding the CSPRNG TEK generator (tests).
    :param rng: the TEK generator's randomness (the OS CSPRNG by default).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        timing: Timing,
        tek_factory: Callable[[int], traffic.TrafficKeyMaterial] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.timing = timing
        self.period_length = spec.period_seconds
        self.lead = timing.provision_lead if timing.provision_lead is not None else self.period_length / 2
        self.links = [_Link(link) for link in spec.links]
        self.periods: dict[int, _Period] = {}
        #: the PLANNED periods of :attr:`periods`, ascending (what a poll looks at; the others wait
        #: only for their switch or their removal)
        self._open: dict[int, _Period] = {}
        self.teks: dict[int, traffic.TrafficKeyMaterial] = {}
        self.first_period: int | None = None
        self.stats = SchedulerStats()
        self._tek_factory = tek_factory or self._generate_tek
        self._rng = rng
        self._recent_spis: collections.deque[int] = collections.deque(maxlen=16)
        #: n -> the plaintext CP_CW_combination of TEK(n), built once (every CW_provision carrying
        #: TEK(n) reuses it; dropped with the TEK)
        self._combinations: dict[int, CPCWCombination] = {}
        #: the key of the timer that makes the scheduler :meth:`poll`
        self.timer_key = PeriodTimer(spec.name)
        #: periods are planned up to current + this (about a period of provisioning ahead)
        self._plan_ahead = 2 + math.ceil((self.lead + 1.0) / self.period_length)
        #: the highest n planned so far (periods are only ever added above it)
        self._planned_until: int | None = None

    # -- time grid -------------------------------------------------------------------------------

    def period_start(self, n: int) -> float:
        """T(n)."""
        return self.spec.phase + n * self.period_length

    def period_at(self, now: float) -> int:
        """The n with T(n) <= now < T(n+1)."""
        return math.floor((now - self.spec.phase) / self.period_length + 1e-9)

    def delay_start(self, index: int, n: int) -> float:
        params = self.links[index].params
        if n == self.first_period and params.transition_delay_start is not None:
            return params.transition_delay_start
        return params.delay_start

    def on_air_from(self, index: int, n: int) -> float:
        return self.period_start(n) + self.delay_start(index, n)

    def provision_at(self, index: int, n: int) -> float:
        # min(T(n), on_air_from(index, n)) - lead, in one frame (called at every poll per fetch)
        params = self.links[index].params
        start = self.spec.phase + n * self.period_length
        if n == self.first_period and params.transition_delay_start is not None:
            delay = params.transition_delay_start
        else:
            delay = params.delay_start
        lead = max(self.lead, params.max_comp_time + 0.05)
        return (start + delay if delay < 0 else start) - lead

    def response_timeout(self, index: int) -> float:
        return max(2 * self.links[index].params.max_comp_time, self.timing.response_timeout_floor)

    # -- TEK generator (CWG) -----------------------------------------------------------------------

    def _generate_tek(self, n: int) -> traffic.TrafficKeyMaterial:
        protection = self.spec.protection
        params = dict(self.spec.tek_params)
        if protection is traffic.TrafficProtection.SRTP:
            params["mki"] = _identifier(n, params.pop("mki_length", 4))
        elif protection is traffic.TrafficProtection.ISMACRYP:
            params["key_indicator"] = _identifier(n, params.pop("key_indicator_length", 4))
        else:
            spi = None
            while spi is None or spi < 256 or spi in self._recent_spis:
                spi = int.from_bytes(self._rng(4), "big")
            self._recent_spis.append(spi)
            params["spi"] = spi
        return traffic.generate(protection, rng=self._rng, **params)

    def tek(self, n: int) -> traffic.TrafficKeyMaterial:
        """TEK(n): generated once, shared by every ECMG link of the service."""
        material = self.teks.get(n)
        if material is None:
            material = self.teks[n] = self._tek_factory(n)
        return material

    # -- inputs ------------------------------------------------------------------------------------

    def start(self, now: float) -> list:
        """Choose the first scrambled period and arm the timer."""
        n = self.period_at(now) + 1
        while self.period_start(n) - self.lead < now + self.timing.start_allowance:
            n += 1
        self.first_period = n
        return [
            Notify("service_start", {"service": self.name, "first_cp": n & CP_NUMBER_MASK,
                                     "first_switch_at": self.period_start(n), "crypto_period": self.period_length,
                                     "protection": self.spec.protection.name}),
            *self.poll(now),
        ]

    def stop(self, now: float) -> list:
        """Shut down: disarm the poll timer and the switch timers of the READY periods."""
        out: list = [CancelTimer(self.timer_key)]
        out += [CancelTimer(TEKSwitchTimer(self.name, n)) for n, period in self.periods.items()
                if period.state is PeriodState.READY]
        return out

    def switch(self, n: int, now: float) -> list:
        """T(n) of a READY period has come (its :class:`TEKSwitchTimer`): the scrambler switches."""
        period = self.periods.get(n)
        if period is not None and period.state is PeriodState.READY:
            period.state = PeriodState.ON_AIR
        return [SwitchTEK(self.name, n & CP_NUMBER_MASK, self.period_start(n))]

    def link_up(self, index: int, params: ECMGParams, now: float) -> list:
        link = self.links[index]
        link.state, link.params = LinkState.UP, params
        return self.poll(now)

    def link_params(self, index: int, params: ECMGParams, now: float) -> list:
        """The channel of an up link announced new parameters (ignored for a link that is down)."""
        link = self.links[index]
        if link.state is not LinkState.UP:
            return []
        link.params = params
        return self.poll(now)

    def link_down(self, index: int, now: float) -> list:
        self.links[index].state = LinkState.DOWN
        for period in self.periods.values():
            fetch = period.fetches[index]
            if period.state is PeriodState.PLANNED and fetch.state is Acquisition.REQUESTED:
                fetch.state, fetch.not_before, fetch.deadline = Acquisition.WAITING, now, math.inf
        return self.poll(now)

    def _period_of(self, cp_number: int) -> _Period | None:
        for n, period in self.periods.items():
            if n & CP_NUMBER_MASK == cp_number:
                return period
        return None

    def ecm_arrived(self, index: int, cp_number: int, stkm: bytes, now: float) -> list:
        period = self._period_of(cp_number)
        if period is None or period.state is not PeriodState.PLANNED:
            return [Notify("stale_stkm", {"service": self.name, "link": self._link_name(index), "cp_number": cp_number}, "debug")]
        fetch = period.fetches[index]
        if fetch.state is Acquisition.RECEIVED:
            return []
        fetch.state, fetch.stkm, fetch.received_at, fetch.deadline = Acquisition.RECEIVED, stkm, now, math.inf
        self.stats.stkms_received += 1
        out = self._try_ready(period, now)
        return out + self.poll(now)

    def provision_failed(self, index: int, cp_number: int, error_status: int | None, now: float) -> list:
        period = self._period_of(cp_number)
        if period is None or period.state is not PeriodState.PLANNED:
            return []
        fetch = period.fetches[index]
        if fetch.state is not Acquisition.REQUESTED:
            return []
        out: list = []
        if error_status is None:  # never sent (the stream went down in between): not an attempt
            fetch.attempts -= 1
            fetch.state, fetch.not_before, fetch.deadline = Acquisition.WAITING, now + self.timing.retry_delay, math.inf
        else:
            self.stats.refusals += 1
            fetch.state, fetch.not_before, fetch.deadline = Acquisition.WAITING, now + self.timing.retry_delay, math.inf
            out.append(Notify("stkm_refused", {"service": self.name, "link": self._link_name(index), "cp_number": cp_number,
                                               "error_status": error_status, "attempt": fetch.attempts}, "warn"))
        return out + self.poll(now)

    def poll(self, now: float) -> list:
        """Everything due at *now*; re-arms the service timer for the next due instant."""
        first = self.first_period
        if first is None:
            return []
        out: list = []
        current = self.period_at(now)
        periods, links, open_ = self.periods, self.links, self._open
        # plan the periods whose provisioning can be due within about a period
        horizon = current + self._plan_ahead
        planned_until = self._planned_until
        if planned_until is None or planned_until < horizon:
            low = max(first, current)
            if planned_until is not None and planned_until >= low:
                low = planned_until + 1
            start = self.period_start
            for n in range(low, horizon + 1):
                periods[n] = open_[n] = _Period(n, start(n), [_Fetch() for _ in links])
            if low <= horizon:
                self._planned_until = horizon
        # the PLANNED periods whose T(n) has come are skipped: they are the first ones (ascending n,
        # ascending T(n)), and every one left starts after now
        while open_:
            n = next(iter(open_))
            period = open_[n]
            if now < period.start:
                break
            del open_[n]
            out += self._skip(period)
        wake = math.inf
        requested, waiting, up = Acquisition.REQUESTED, Acquisition.WAITING, LinkState.UP
        for period in open_.values():
            if period.start < wake:
                wake = period.start
            fetches = period.fetches
            for index, link in enumerate(links):
                if link.state is not up:
                    continue
                fetch = fetches[index]
                state = fetch.state
                # the usual answers first, inline: waiting for the answer, or for provision_at
                if state is requested:
                    due = fetch.deadline
                    if now < due:
                        if due < wake:
                            wake = due
                        continue
                elif state is waiting:
                    if fetch.provision_params is not link.params:
                        fetch.provision_at = self.provision_at(index, period.n)
                        fetch.provision_params = link.params
                    due = fetch.provision_at if fetch.provision_at > fetch.not_before else fetch.not_before
                    if now < due:
                        if due < wake:
                            wake = due
                        continue
                else:
                    continue
                due = self._advance_fetch(period, index, now, out)
                if due < wake:
                    wake = due
        while periods and next(iter(periods)) < current - 1:
            del periods[next(iter(periods))]
        teks = self.teks
        if len(teks) > 4:  # the window's few TEKs; older ones go
            keep_from = current - 1 - max((l.params.CW_per_msg if l.params else 1) for l in links)
            combinations = self._combinations
            for n in [n for n in teks if n < keep_from]:
                del teks[n]
                combinations.pop(n, None)
        if wake < math.inf:
            out.append(StartTimer(self.timer_key, max(0.0, wake - now) + POLL_SLACK))
        return out

    # -- helpers -----------------------------------------------------------------------------------

    def _advance_fetch(self, period: _Period, index: int, now: float, out: list) -> float:
        """Send or retry the request if due; return when this fetch next needs attention."""
        fetch = period.fetches[index]
        if fetch.state is Acquisition.REQUESTED:
            if now < fetch.deadline:
                return fetch.deadline
            self.stats.timeouts += 1
            out.append(Notify("stkm_timeout", {"service": self.name, "link": self._link_name(index), "cp_number": period.n & CP_NUMBER_MASK,
                                               "attempt": fetch.attempts}, "warn"))
            fetch.state, fetch.not_before, fetch.deadline = Acquisition.WAITING, now, math.inf
        if fetch.state is not Acquisition.WAITING:
            return math.inf
        due = max(self.provision_at(index, period.n), fetch.not_before)
        if now < due:
            return due
        if fetch.attempts >= self.timing.max_attempts:
            fetch.state = Acquisition.ABANDONED
            out.append(Notify("stkm_abandoned", {"service": self.name, "link": self._link_name(index), "cp_number": period.n & CP_NUMBER_MASK,
                                                 "attempts": fetch.attempts}, "warn"))
            return math.inf
        if fetch.attempts:
            self.stats.retries += 1
        fetch.attempts += 1
        fetch.state = Acquisition.REQUESTED
        fetch.deadline = now + self.response_timeout(index)
        self.stats.provisions_sent += 1
        out.append(self._request(period.n, index))
        return fetch.deadline

    def _combination(self, n: int) -> CPCWCombination:
        """The plaintext CP_CW_combination of TEK(n) (CP_number n mod 2^16, the CW layout of TEK(n))."""
        combination = self._combinations.get(n)
        if combination is None:
            combination = self._combinations[n] = CPCWCombination(n & CP_NUMBER_MASK, traffic.encode_cw(self.tek(n)))
        return combination

    def _request(self, n: int, index: int) -> RequestCWProvision:
        link = self.links[index]
        combinations = tuple([self._combination(cp) for cp in link.params.cp_window(n)])
        header = None
        encryption = link.spec.cw_encryption
        if encryption is not None:
            combos = [(c.CP_number, c.CW) for c in combinations]
            header, encrypted = cw_encryption.encrypt(encryption.algorithm, encryption.key_id, encryption.key, combos)
            combinations = tuple(CPCWCombination(cp, cw) for (cp, _), cw in zip(combos, encrypted))
        return RequestCWProvision(
            service=self.name,
            link=index,
            stream_id=link.spec.ECM_stream_id,
            cp_number=n & CP_NUMBER_MASK,
            combinations=combinations,
            cw_encryption=header,
            access_criteria=link.spec.access_criteria,
        )

    def _try_ready(self, period: _Period, now: float) -> list:
        if now >= period.start:
            return []
        received = Acquisition.RECEIVED
        for fetch in period.fetches:
            if fetch.state is not received:
                return []
        period.state = PeriodState.READY
        del self._open[period.n]
        self.stats.periods_ready += 1
        out: list = []
        late = []
        n, start, stats = period.n, period.start, self.stats
        cp_number = n & CP_NUMBER_MASK
        for index, (link, fetch) in enumerate(zip(self.links, period.fetches)):
            on_air = self.on_air_from(index, n)
            if now > on_air:
                late.append(index)
                stats.stkms_late += 1
            stats.stkms_submitted += 1
            spec = link.spec
            out.append(SubmitSTKM(spec.super_CAS_id, spec.ECM_id, cp_number, fetch.stkm, on_air, link.params.ECM_rep_period))
        out.append(ProvideTEK(self.name, cp_number, self.tek(n), start))
        out.append(StartTimer(TEKSwitchTimer(self.name, n), start - now))
        if late:
            out.append(Notify("stkm_late", {"service": self.name, "cp_number": period.n & CP_NUMBER_MASK, "links": [self._link_name(i) for i in late],
                                            "late_by_ms": round((now - min(self.on_air_from(i, period.n) for i in late)) * 1000, 1)},
                              "warn"))
        return out

    def _link_name(self, index: int) -> str:
        """How events name link *index*: its ECMG channel (endpoint#ECM_channel_id) and ECM_id, not
        a list index."""
        spec = self.links[index].spec
        return f"{spec.channel} ECM_id {spec.ECM_id:#06x}"

    def _skip(self, period: _Period) -> list:
        period.state = PeriodState.SKIPPED  # (the poll took it out of _open)
        self.stats.periods_skipped += 1
        missing = [i for i, f in enumerate(period.fetches) if f.state is not Acquisition.RECEIVED]
        for i in missing:
            period.fetches[i].state = Acquisition.ABANDONED
        return [Notify("period_skipped", {"service": self.name, "cp_number": period.n & CP_NUMBER_MASK, "missing_links": [self._link_name(i) for i in missing]},
                       "warn")]


__all__ = [
    "Acquisition",
    "LinkState",
    "PeriodState",
    "PeriodTimer",
    "SchedulerStats",
    "ServiceScheduler",
    "TEKSwitchTimer",
]
