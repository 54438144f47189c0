"""The ``/status.json`` document (issue #12, item 3): what a process serves, right now.

Read from the session manager's registry (channels and streams every role reports into, STKMs
and allocations published there) and from what :class:`StatusBoard` has seen go through the
session (last STKM per Super_CAS_id / ECM_id, last error per peer). Ids are hex strings, times
ISO 8601 UTC, bandwidth in bits per second. No key material: STKMs are counted and timed, never
included.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from .metrics import hex16, hex32, _role_interface

#: fields of a role's channel / stream record that are ids (rendered in hex)
_HEX32 = {"super_cas_id", "super_CAS_id", "client_id"}
_HEX16 = {"ecm_id", "ECM_id", "data_id", "error_status"}
#: fields of a role's record that are safe to show (never key material)
_SHOWN = {"channel_id", "stream_id", "super_cas_id", "client_id", "ecm_id", "data_id", "mode", "version",
          "allocation", "channel", "service", "link", "cp_number", "nominal_cp_duration", "access_criteria_length"}


def iso_utc(seconds: float | None) -> str | None:
    """``2026-12-03T03:40:00.123Z`` for a POSIX time, ``None`` for ``None``."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _field(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    if name in _HEX32:
        return hex32(value)
    if name in _HEX16:
        return hex16(value)
    return value


def _record(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        return {}
    return {k: _field(k, v) for k, v in record.items() if k in _SHOWN}


#: peers whose last error the board keeps (the most recent; a flood from many ports is not kept whole)
MAX_PEER_ERRORS = 256


class StatusBoard:
    """Builds the status document; an observer of the session manager (:meth:`observe`).

    :param role: the process's plugin name.
    :param clock: ``seconds()`` (the reactor).
    """

    def __init__(self, role: str, clock) -> None:
        self.role = role
        self.clock = clock
        self.started = clock.seconds()
        self.session = None
        self.stkms: dict[tuple[int, int], tuple[int, float]] = {}  # (Super_CAS_id, ECM_id) -> (CP_number, at)
        self.peer_errors: dict[str, dict[str, Any]] = {}
        self.sections: list[tuple[str, Callable[[], Any]]] = []

    def watch_session(self, session) -> None:
        self.session = session

    def add_section(self, name: str, build: Callable[[], Any]) -> None:
        """Add ``name: build()`` to every document (e.g. the MUX routes, the SCS services)."""
        self.sections.append((name, build))

    def observe(self, role: str, peer: str, event: str, fields: dict[str, Any]) -> None:
        """Session events: STKMs ready, errors from or about a peer."""
        if event == "stkm_ready":
            self.stkms[(fields["super_cas_id"], fields["ecm_id"])] = (fields["cp_number"], self.clock.seconds())
        elif "error_status" in fields or event in ("peer_error", "connection_lost", "setup_refused", "unrecoverable_error"):
            codes = fields.get("error_status")
            if isinstance(codes, (list, tuple)):
                codes = [hex16(c) for c in codes]
            elif isinstance(codes, int):
                codes = [hex16(codes)]
            errors, key = self.peer_errors, f"{role} {peer}"
            if errors.pop(key, None) is None and len(errors) >= MAX_PEER_ERRORS:
                del errors[next(iter(errors))]  # the peer whose last error is the oldest
            errors[key] = {
                "role": _role_interface(role)[0], "peer": peer, "event": event, "error_status": codes,
                "reason": str(fields.get("reason", fields.get("why", ""))) or None, "time": self.clock.seconds(),
            }  # the time made readable when a document is built: a fuzz flood sends an error a message

    def document(self) -> dict[str, Any]:
        now = self.clock.seconds()
        doc: dict[str, Any] = {
            "role": self.role, "time": iso_utc(now), "uptime_seconds": round(now - self.started, 3),
            "channels": [], "streams": [], "stkms": [], "allocations": [], "peer_errors": [],
        }
        session = self.session
        if session is not None:
            for key, record in session.items("channel"):
                role, interface = _role_interface(key[0])
                doc["channels"].append({"role": role, "interface": interface, "peer": key[1],
                                        **_record(record), "channel_id": key[2]})
            for key, record in session.items("stream"):
                role, interface = _role_interface(key[0])
                doc["streams"].append({"role": role, "interface": interface, "peer": key[1], **_record(record),
                                       "channel_id": key[2], "stream_id": key[3]})
            for (client_id, data_id), kbps in session.items("allocation"):
                doc["allocations"].append({"client_id": hex32(client_id), "data_id": hex16(data_id),
                                           "bits_per_second": None if kbps is None else kbps * 1000})
        for (super_cas_id, ecm_id), (cp, at) in sorted(self.stkms.items()):
            doc["stkms"].append({"super_CAS_id": hex32(super_cas_id), "ECM_id": hex16(ecm_id), "last_CP_number": cp,
                                 "last_stkm_time": iso_utc(at)})
        doc["peer_errors"] = [dict(error, time=iso_utc(error["time"])) for error in self.peer_errors.values()]
        for name, build in self.sections:
            doc[name] = build()
        return doc


def mux_routes(core) -> Callable[[], list[dict[str, Any]]]:
    """A status section: each MUX route, its allocation and traffic."""

    def build() -> list[dict[str, Any]]:
        rows = []
        for (client_id, data_id), route in sorted(core.routes.items()):
            rows.append({
                "client_id": hex32(client_id), "data_id": hex16(data_id), "kind": route.config.kind.value,
                "stream_open": route.stream is not None,
                "allocated_bits_per_second": (route.stream.allocation if route.stream is not None else 0) * 1000,
                "datagrams_out": route.datagrams_out, "bytes_out": route.bytes_out, "queued": len(route.queue),
            })
        return rows

    return build


def scs_services(schedulers: Callable[[], dict], scramblers: dict) -> Callable[[], list[dict[str, Any]]]:
    """A status section: each SCS service, its current CP_number, STKM and period counters."""

    def build() -> list[dict[str, Any]]:
        rows = []
        for name, scheduler in sorted(schedulers().items()):
            scrambler = scramblers.get(name)
            last = scrambler.switches[-1] if scrambler is not None and scrambler.switches else None
            s = scheduler.stats
            rows.append({
                "service": name, "current_CP_number": None if scrambler is None else scrambler.current_cp,
                "last_switch_time": iso_utc(getattr(last, "at", None)),
                "stkms_received": s.stkms_received, "periods_ready": s.periods_ready,
                "periods_skipped": s.periods_skipped, "stkms_late": s.stkms_late,
            })
        return rows

    return build


def terminal_summary(terminal) -> Callable[[], dict[str, Any]]:
    """A status section: the reference terminal's state, period and counts."""

    def build() -> dict[str, Any]:
        return {"state": terminal.state, "period": terminal.period,
                "datagrams": {str(k): v for k, v in sorted(terminal.counts.items())}}

    return build


__all__ = ["StatusBoard", "iso_utc", "mux_routes", "scs_services", "terminal_summary"]
