"""Where the SCS hands STKMs to the MUX: the :class:`STKMSink` interface and its in-process sinks.

SP-4 seed §14.1.1.2: the SCS "submits these ECMs (STKMs) to the multiplexer and requests their
repetition according to the channel parameters". One :meth:`STKMSink.submit` per STKM and crypto-
period: air it from ``on_air_from`` (T(n) + delay_start), one copy every ``repetition_ms``
(the ECMG's ECM_rep_period), until the next STKM of the same (super_cas_id, ecm_id) replaces it.

Sinks here are pure (no Twisted, no sockets):

* :class:`RecordingSink` — the MUX side in one process: records and timestamps every submission
  and answers "what is on air now" (:meth:`RecordingSink.on_air`);
* :class:`CallableSink` — hands each :class:`Submission` to a callable (a MUX in the same process);
* :class:`JSONLinesSink` — one JSON object per submission on a text stream (lab / debugging;
  an STKM is encrypted key material, so writing it is no leak of a TEK).

The remote sink over EMMG/PDG<=>MUX (the SCS as a data client: client_id = super_CAS_id, data_id =
ECM_id, section_TSpkt_flag 0x02) needs Twisted and lives in :mod:`bcast_sp4.roles.stkm_link`
(``RemoteMuxSink``).
"""

from __future__ import annotations

import json
from typing import Callable, Protocol, TextIO

import attrs


class STKMSink(Protocol):
    """What the SCS needs from a MUX."""

    def submit(
        self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes, on_air_from: float, repetition_ms: int
    ) -> None:
        """Air *stkm* from *on_air_from*, repeated every *repetition_ms*, until replaced."""


@attrs.frozen
class Submission:
    """One STKM handed to the MUX, with the instant it arrived there."""

    super_cas_id: int
    ecm_id: int
    cp_number: int
    stkm: bytes = attrs.field(repr=False)
    on_air_from: float
    repetition_ms: int
    received_at: float


class RecordingSink:
    """An in-process MUX stand-in: every submission, timestamped with *clock*.

    :param clock: ``() -> seconds`` (e.g. ``reactor.seconds``).
    :param limit: keep at most this many submissions (oldest dropped); ``None`` keeps all.
    """

    def __init__(self, clock: Callable[[], float], limit: int | None = None) -> None:
        self.clock = clock
        self.limit = limit
        self.submissions: list[Submission] = []
        self._latest: dict[tuple[int, int], list[Submission]] = {}

    def submit(self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes, on_air_from: float,
               repetition_ms: int) -> None:
        item = Submission(super_cas_id, ecm_id, cp_number, bytes(stkm), on_air_from, repetition_ms, self.clock())
        self.submissions.append(item)
        if self.limit is not None and len(self.submissions) > self.limit:
            del self.submissions[: len(self.submissions) - self.limit]
        history = self._latest.setdefault((super_cas_id, ecm_id), [])
        history.append(item)
        del history[:-4]

    def on_air(self, super_cas_id: int, ecm_id: int, now: float) -> Submission | None:
        """The STKM a MUX would be airing for the pair at *now* (latest with on_air_from <= now)."""
        for item in reversed(self._latest.get((super_cas_id, ecm_id), [])):
            if item.on_air_from <= now:
                return item
        return None


class CallableSink:
    """Hands each :class:`Submission` to *deliver* (a MUX sharing the process)."""

    def __init__(self, deliver: Callable[[Submission], object], clock: Callable[[], float]) -> None:
        self.deliver, self.clock = deliver, clock

    def submit(self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes, on_air_from: float,
               repetition_ms: int) -> None:
        self.deliver(Submission(super_cas_id, ecm_id, cp_number, bytes(stkm), on_air_from, repetition_ms, self.clock()))


class JSONLinesSink:
    """One JSON line per submission on *stream* (flushed), STKM in hex."""

    def __init__(self, stream: TextIO, clock: Callable[[], float]) -> None:
        self.stream, self.clock = stream, clock

    def submit(self, super_cas_id: int, ecm_id: int, cp_number: int, stkm: bytes, on_air_from: float,
               repetition_ms: int) -> None:
        self.stream.write(json.dumps({
            "super_cas_id": super_cas_id, "ecm_id": ecm_id, "cp_number": cp_number, "stkm": bytes(stkm).hex(),
            "on_air_from": on_air_from, "repetition_ms": repetition_ms, "received_at": self.clock(),
        }) + "\n")
        self.stream.flush()


__all__ = ["CallableSink", "JSONLinesSink", "RecordingSink", "STKMSink", "Submission"]
