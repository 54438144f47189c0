"""SCS -> MUX: STKMs over EMMG/PDG<=>MUX, the SCS as a data client (TS 103 197 §6; SP-4 seed §14.1.1.2).

TS 103 197 leaves the SCS->MUX link to the implementer. This project carries STKMs over the
EMMG/PDG<=>MUX protocol: per super_CAS_id one data channel (client_id = super_CAS_id,
``data_channel_id`` from ``[mux]``, section_TSpkt_flag 0x02), per ECM_id one data stream (data_id =
ECM_id, data_type 0x02, the DVB value for ECMs), each STKM one ``datagram`` of a data_provision, over
the TCP connection or (``transport = "udp"``) the MUX's UDP port. The channel machinery is the EMMG
client's: one :class:`~bcast_sp4.roles.emmg_client.EMMGService` per super_CAS_id (``ClientService``
with back-off, setup after every reconnect, paced sending, orderly close).
:class:`RemoteMuxSink` owns them and implements :class:`~bcast_sp4.roles.stkm_sink.STKMSink`.

Rules (where an STKM differs from an LTKM)::

  when                                  what the sink does
  submit(..., on_air_from, ...)         keep the STKM; hand it to the link at on_air_from
                                        (callLater(max(0, on_air_from - now))): the MUX makes the
                                        newest data_provision of a stream its current STKM at once,
                                        so the hand-over time IS the switch time
  on_air_from, link READY               data_provision now (paced by the stream's allocation: the
                                        first STKM after a quiet spell leaves at once)
  on_air_from, link not READY           hold it: only the newest held STKM per ECM_id is kept (an
                                        older one is superseded: counted, logged); it is sent as
                                        soon as the link is READY again (late, counted)
  a newer STKM goes out or is held      older STKMs of that ECM_id still in the EMMG client's
                                        queue (queued while READY, not yet paced out, or kept
                                        across a reconnect) are removed, counted as superseded: the
                                        EMMG client keeps its queues across reconnects because
                                        every LTKM must arrive; for STKMs only the newest counts
  stopService                           STKMs not yet due and held ones are dropped (counted); each
                                        EMMGService closes its streams and channel in order

The STKMs of each (super_CAS_id, ECM_id) wait in a :class:`~bcast_sp4.machines.stkm_schedule.STKMSchedule`
(the "newest STKM wins" rule the MUX's in-process path uses too): due ones that could not be
handed over are the held ones, and of several due at once only the newest is kept.

Repetition: ``repetition_ms`` (the ECMG's ECM_rep_period) has no parameter on EMMG/PDG<=>MUX
(neither stream_setup nor data_provision carries one). The MUX repeats the current STKM at the
``repetition_period`` of its ``[[client.stkm]]`` route; keep the two equal by configuration. The
SCS learns nothing of the MUX's value, so there is nothing to compare: the ECMG's value is logged
once per (super_CAS_id, ECM_id), and again when it changes, for the operator to check.

Timing at the MUX: an STKM arrives at on_air_from plus this process's timer lateness plus transit;
the MUX airs the first copy at once, unless its previous copy left less than a quarter repetition
period before (then at that quarter). ``bandwidth`` (kbit/s per stream) only bounds how soon an
STKM can follow the previous one of the same ECM_id (its size / allocation); the MUX does not
police STKM ingress. A MUX granting 0 kbit/s stops the stream: STKMs then wait in the EMMG client's
queue and each newer one supersedes the older.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Callable

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from ..config.emmg import EMMGSettings
from ..config.scs import MuxMode, SCSSettings
from ..machines.emmg import EMMGConfig, EMMGState, EMMGStreamConfig
from ..machines.stkm_schedule import STKMSchedule
from ..wire.params import DataType
from .emmg_client import EMMGService
from .executor import KeyedTimers
from .guard import ConnectionGuard

#: handed over this long after on_air_from or later: counted and logged as late (timer lateness is not)
LATE_AFTER = 0.05
#: s between two looks at a link whose connection is closing (READY, but nothing may be written)
RECHECK_INTERVAL = 0.05
#: STKMs per stream in the EMMG client's queue (newer ones supersede older ones, so 1 is normal)
_MAX_QUEUE = 2

PairKey = tuple[int, int]  # (super_cas_id, ecm_id)


class UnknownSTKMLink(ValueError):
    """:meth:`RemoteMuxSink.submit` named a (super_CAS_id, ECM_id) absent from the SCS settings."""


@attrs.frozen
class _DueTimer:
    """Timer key: an STKM of *pair* reaches its on_air_from (*token* tells STKMs apart)."""

    token: int
    pair: PairKey


@attrs.frozen
class _RecheckTimer:
    """Timer key: look again at the link of *super_cas_id* (READY, but its connection was closing)."""

    super_cas_id: int


@attrs.frozen
class HeldSTKM:
    """One STKM between :meth:`RemoteMuxSink.submit` and its hand-over to the link."""

    cp_number: int
    stkm: bytes = attrs.field(repr=False)
    on_air_from: float


def link_settings(settings: SCSSettings) -> dict[int, EMMGSettings]:
    """One EMMG client configuration per super_CAS_id of the SCS's ECMG entries.

    Streams: one per ECM_id of that super_CAS_id, data_stream_id 1, 2, ... in ECM_id order,
    data_type 0x02, ``[mux] bandwidth`` kbit/s requested. Setup answers are awaited
    ``[scs] setup_timeout`` s; the reconnect back-off is ``[scs.reconnect]``'s.

    :raises ValueError: ``[mux] mode`` is not ``remote``.
    """
    mux = settings.mux
    if mux.mode is not MuxMode.REMOTE or mux.connect is None:
        raise ValueError(f"[mux] mode is {mux.mode.value!r}, not 'remote' with a connect endpoint")
    ecm_ids: dict[int, set[int]] = {}
    for service in settings.services:
        for link in service.spec.links:
            ecm_ids.setdefault(link.super_CAS_id, set()).add(link.ECM_id)
    out: dict[int, EMMGSettings] = {}
    for scid, ids in ecm_ids.items():
        streams = tuple(
            EMMGStreamConfig(data_stream_id=k, data_id=ecm_id, bandwidth=mux.bandwidth, data_type=DataType.ECM,
                             max_queue=_MAX_QUEUE)
            for k, ecm_id in enumerate(sorted(ids), 1)
        )
        config = EMMGConfig(
            client_id=scid,
            streams=streams,
            data_channel_id=mux.data_channel_id,
            protocol_version=mux.protocol_version,
            udp=mux.udp,
            response_timeout=settings.timing.setup_timeout,
        )
        out[scid] = EMMGSettings(
            connect=mux.connect,
            emmg=config,
            mux_udp=mux.mux_udp,
            udp_interface=mux.udp_interface,
            sources={},
            retry_max_delay=settings.reconnect.max_delay,
            source_path=settings.source_path or Path("scs.toml"),
        )
    return out


class RemoteMuxSink(MultiService):
    """The SCS's :class:`~bcast_sp4.roles.stkm_sink.STKMSink` for a MUX reached over EMMG/PDG<=>MUX.

    A ``MultiService`` whose children are the :class:`EMMGService` of each super_CAS_id (in
    :attr:`links`); add it to the SCS's tree before the runner, so it runs before the first STKM.

    :param settings: the SCS settings (``[mux] mode = "remote"``).
    :param reactor: clock and connector (tests pass a memory reactor).
    :param endpoints: super_CAS_id -> client endpoint, instead of ``[mux] connect`` (tests).
    :param guard: the SCS's connection guard, for the links' MUX connections (or ``None``).
    :param retry_policy: reconnect delays, instead of ``[scs.reconnect]``'s back-off (tests).
    """

    log = Logger()

    def __init__(self, settings: SCSSettings, reactor, *, endpoints: dict[int, object] | None = None,
                 retry_policy: Callable[[int], float] | None = None, session=None,
                 guard: ConnectionGuard | None = None) -> None:
        super().__init__()
        self.clock = reactor
        self.settings = settings
        rc = settings.reconnect
        policy = retry_policy or backoffPolicy(rc.initial_delay, rc.max_delay, rc.factor,
                                               jitter=lambda: random.random() * rc.jitter)
        self.links: dict[int, EMMGService] = {}
        for scid, emmg_settings in sorted(link_settings(settings).items()):
            link = EMMGService(emmg_settings, reactor, endpoint=(endpoints or {}).get(scid), retry_policy=policy,
                               session=session, guard=guard)
            link.setName(f"stkm-link-{scid:#010x}")
            link.setServiceParent(self)
            self.links[scid] = link
        self.counters = {"submitted": 0, "handed_over": 0, "late": 0, "superseded": 0, "dropped_stopped": 0,
                         "dropped_queue_full": 0}
        #: per (super_cas_id, ecm_id): the cp_number last handed to the link
        self.last_handed_over: dict[PairKey, int] = {}
        #: the armed timers: each held STKM's on_air_from, and rechecks of a link whose connection was closing
        self.timers = KeyedTimers(reactor, self._timer)
        self._tokens = itertools.count()
        #: per (super_cas_id, ecm_id): STKMs not yet handed over, due or not (newest due wins)
        self._pending: dict[PairKey, STKMSchedule[HeldSTKM]] = {}
        self._superseded_while_held: dict[PairKey, int] = {}
        self._awaiting: set[int] = set()
        self._repetition: dict[PairKey, int] = {}

    # -- service -------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        mux = self.settings.mux
        self.log.info(
            "STKM link to the MUX at {connect} ({transport}): {clients} client_ids, {streams} STKM streams, "
            "data_channel_id {channel_id}",
            connect=mux.connect, transport="udp" if mux.udp else "tcp", clients=len(self.links),
            streams=sum(len(link.machine.streams) for link in self.links.values()), channel_id=mux.data_channel_id,
        )

    def stopService(self) -> Deferred:
        """Drop what is not yet handed over (counted), then close every link's streams and channel."""
        self.timers.cancel_all()
        dropped = sum(len(pending.clear()) for pending in self._pending.values())
        self._awaiting.clear()
        if dropped:
            self.counters["dropped_stopped"] += dropped
            self.log.info("stopping: {count} STKMs not yet handed to the MUX dropped", count=dropped)
        return super().stopService()

    def when_ready(self, super_cas_id: int | None = None) -> Deferred:
        """A new Deferred firing once the link of *super_cas_id* (default: every link) is READY."""
        links = self.links.values() if super_cas_id is None else [self.links[super_cas_id]]
        return gatherResults([link.when_ready() for link in links]).addCallback(lambda _r: None)

    def is_ready(self, super_cas_id: int) -> bool:
        """The link of *super_cas_id* is set up and may send now."""
        return self._ready(self.links[super_cas_id])

    # -- STKMSink ------------------------------------------------------------------------------

    def submit(self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes, on_air_from: float,
               repetition_ms: int) -> None:
        """Hand *stkm* to the MUX at *on_air_from* (see the module docstring).

        :raises UnknownSTKMLink: no ECMG entry of the SCS has this (super_cas_id, ecm_id).
        :raises ValueError: empty, or too long for one data_provision.
        """
        key = (super_cas_id, ecm_id)
        link = self.links.get(super_cas_id)
        if link is None or ecm_id not in link.machine.by_data_id:
            raise UnknownSTKMLink(f"no STKM stream for super_CAS_id {super_cas_id:#010x} ECM_id {ecm_id}")
        stkm = bytes(stkm)
        limit = link.settings.emmg.max_datagram
        if not 1 <= len(stkm) <= limit:
            raise ValueError(f"STKM of {len(stkm)} bytes outside 1..{limit}")
        self.counters["submitted"] += 1
        self._note_repetition(key, repetition_ms)
        if not self.running:
            self.counters["dropped_stopped"] += 1
            self.log.warn("STKM for super_cas_id={super_cas_id:#010x} ecm_id={ecm_id} cp_number={cp_number} "
                          "dropped: the MUX link is stopped", super_cas_id=super_cas_id, ecm_id=ecm_id, cp_number=cp_number)
            return
        self._pending.setdefault(key, STKMSchedule()).add(on_air_from, HeldSTKM(cp_number, stkm, on_air_from))
        self.timers.start(_DueTimer(next(self._tokens), key), max(0.0, on_air_from - self.clock.seconds()))

    # -- hand-over -----------------------------------------------------------------------------

    @staticmethod
    def _ready(link: EMMGService) -> bool:
        protocol = link.protocol
        return link.machine.state is EMMGState.READY and protocol is not None and not protocol.closing

    def _timer(self, key: _DueTimer | _RecheckTimer) -> None:
        if type(key) is _DueTimer:
            self._due(key.pair)
        else:
            self._link_ready(key.super_cas_id)

    def _due(self, key: PairKey) -> None:
        """An STKM of *key* reached its on_air_from: hand the newest due one over, or hold it."""
        pending = self._pending[key]
        now = self.clock.seconds()
        superseded = pending.settle(now)  # due together (a late timer): only the newest counts
        if superseded:
            self._supersede(key, len(superseded), superseded[-1].cp_number)
        if not pending.is_due(now):  # already handed over with an earlier timer of the same instant
            return
        scid = key[0]
        if self._ready(self.links[scid]):
            self._hand_over(key, now)
            return
        self._purge_queue(key)
        if scid not in self._awaiting:
            self.log.warn("MUX link for super_cas_id={super_cas_id:#010x} not ready at on_air_from: holding the newest "
                          "STKM per ECM_id until it is", super_cas_id=scid)
        self._await_ready(scid)

    def _await_ready(self, scid: int) -> None:
        if scid in self._awaiting:
            return
        self._awaiting.add(scid)
        link = self.links[scid]
        if link.machine.state is EMMGState.READY:  # READY, but its connection is closing: look again soon
            self.timers.start(_RecheckTimer(scid), RECHECK_INTERVAL)
            return
        d = link.when_ready()
        d.addCallback(lambda _protocol: self._link_ready(scid))
        d.addErrback(lambda failure: self.log.failure("STKM link {super_cas_id:#010x}: ready observer failed",
                                                      failure, super_cas_id=scid))

    def _link_ready(self, scid: int) -> None:
        if scid not in self._awaiting or not self.running:
            return
        self._awaiting.discard(scid)
        if not self._ready(self.links[scid]):
            self._await_ready(scid)
            return
        now = self.clock.seconds()
        for key in sorted(k for k, pending in self._pending.items() if k[0] == scid and pending.is_due(now)):
            self._hand_over(key, now)

    def _hand_over(self, key: PairKey, now: float) -> None:
        """Give the newest due STKM of *key* to the link; older ones, due or queued, are superseded."""
        scid, ecm_id = key
        item, older = self._pending[key].take_due(now)
        if older:  # held while the link was down
            self._supersede(key, len(older), older[-1].cp_number)
        self._purge_queue(key)
        link = self.links[scid]
        if not link.enqueue_ltkm(ecm_id, item.stkm):  # pragma: no cover - the queue was just emptied
            self.counters["dropped_queue_full"] += 1
            self.log.error("STKM super_cas_id={super_cas_id:#010x} ecm_id={ecm_id} cp_number={cp_number} dropped: "
                           "queue full", super_cas_id=scid, ecm_id=ecm_id, cp_number=item.cp_number)
            return
        self.counters["handed_over"] += 1
        self.last_handed_over[key] = item.cp_number
        late = now - item.on_air_from
        superseded = self._superseded_while_held.pop(key, 0)
        if late > LATE_AFTER:
            self.counters["late"] += 1
            self.log.warn(
                "STKM super_cas_id={super_cas_id:#010x} ecm_id={ecm_id} cp_number={cp_number} handed to the MUX "
                "{late_ms} ms after on_air_from ({superseded} older ones superseded meanwhile)",
                super_cas_id=scid, ecm_id=ecm_id, cp_number=item.cp_number, late_ms=round(late * 1000, 1),
                superseded=superseded,
            )

    def _purge_queue(self, key: PairKey) -> None:
        """Remove older STKMs of *key* still queued in the EMMG client (a newer one replaces them)."""
        scid, ecm_id = key
        count = self.links[scid].machine.discard_queued(ecm_id)
        if count:
            self._supersede(key, count, None)

    def _supersede(self, key: PairKey, count: int, cp_number: int | None) -> None:
        self.counters["superseded"] += count
        first = key not in self._superseded_while_held
        self._superseded_while_held[key] = self._superseded_while_held.get(key, 0) + count
        if first:  # one line per outage and pair; the hand-over reports the total
            self.log.warn("super_cas_id={super_cas_id:#010x} ecm_id={ecm_id}: {count} STKM(s) superseded before "
                          "reaching the MUX (cp_number {cp_number})", super_cas_id=key[0], ecm_id=key[1], count=count,
                          cp_number="queued" if cp_number is None else cp_number)

    def _note_repetition(self, key: PairKey, repetition_ms: int) -> None:
        if self._repetition.get(key) == repetition_ms:
            return
        self._repetition[key] = repetition_ms
        self.log.info(
            "super_cas_id={super_cas_id:#010x} ecm_id={ecm_id}: ECM_rep_period {repetition_ms} ms cannot travel over "
            "EMMG/PDG<=>MUX; the MUX repeats this STKM at its route's repetition_period",
            super_cas_id=key[0], ecm_id=key[1], repetition_ms=repetition_ms,
        )


__all__ = ["HeldSTKM", "LATE_AFTER", "RemoteMuxSink", "UnknownSTKMLink", "link_settings"]
