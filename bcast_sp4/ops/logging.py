"""Operator logs (issue #12, item 4): ``--log-level``, ``--log-format text|json``, ``--log-keys``.

:class:`OperatorLogObserver` is a ``twisted.logger`` observer that every plugin can put in place of
twistd's own (as the application's ``ILogObserver`` component). Each event becomes one line:

* ``text``: ``2026-12-03T03:04:39.120Z info  bcast-ecmg: <message>``;
* ``json``: one flat object per line, ``{"time", "level", "role", "event", <fields>...}``, that
  ``jq`` reads; ``event`` is the formatted message, the fields are the event's own named fields.

Values are made readable on the way: Super_CAS_id / client_id as ``0x00010001``, ECM_id /
data_id / error codes as ``0x0001``, POSIX times (fields named ``*_at``, ``at``, ``time``...)
as ISO 8601 UTC. Bytes are never written: a ``bytes`` field becomes ``<16 bytes>`` at every
level, unless ``--log-keys`` is given (then hex; a debug switch for lab work only).
:class:`KeyLog` is what roles call to log key material: it emits nothing unless that switch is on.
"""

from __future__ import annotations

import json
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, Logger, formatEvent
from zope.interface import implementer

from ..logfields import HEX16, HEX32, TIMES, iso_utc, readable

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error,
          "critical": LogLevel.critical}
FORMATS = ("text", "json")
_ORDER = {level: n for n, level in enumerate(LEVELS.values())}

#: keys twisted.python.log adds to an event (not the event's own fields)
_LEGACY = frozenset({"format", "message", "system", "isError", "why", "failure", "printed"})
#: reserved keys of a JSON line; an event field of the same name is written as field_<name>
_RESERVED = frozenset({"time", "level", "role", "event", "namespace", "traceback"})



@implementer(ILogObserver)
class OperatorLogObserver:
    """Writes each event at or above *level* to *out* as one text or JSON line (module docstring).

    :param role: the plugin's name (``bcast-ecmg``), the ``role`` of every line.
    :param out: a text stream (flushed per line).
    :param fmt: ``text`` or ``json``.
    :param level: the lowest level written.
    :param keys: ``--log-keys``: write bytes fields (key material) as hex instead of redacting them.
    """

    def __init__(self, role: str, out: IO[str], fmt: str = "text", level: LogLevel = LogLevel.info,
                 keys: bool = False) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"log format {fmt!r} is not one of {FORMATS}")
        self.role = role
        self.out = out
        self.fmt = fmt
        self.level = _ORDER[level]
        self.keys = keys

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        if _ORDER.get(level, 1) < self.level:
            return
        fields = {k: readable(k, v, self.keys) for k, v in event.items()
                  if not k.startswith("log_") and k not in _LEGACY}
        if "time" in fields and event.get("time") == event.get("log_time"):
            del fields["time"]  # twisted.python.log's copy of log_time
        # format the message from the readable values, so ids, times and bytes read the same in the text
        text = formatEvent({**event, **fields})
        if text.startswith("Unable to format event"):  # a format spec ({client_id:#010x}) wants the raw value
            text = formatEvent(event)
        failure = event.get("log_failure")
        when = iso_utc(event.get("log_time") or 0.0)
        if self.fmt == "json":
            line: dict[str, Any] = {"time": when, "level": level.name, "role": self.role, "event": text,
                                    "namespace": event.get("log_namespace", "")}
            for key, value in fields.items():
                line[f"field_{key}" if key in _RESERVED else key] = value
            if failure is not None:
                line["traceback"] = failure.getTraceback()
            self.out.write(json.dumps(line, default=str) + "\n")
        else:
            body = text if failure is None else text + "\n" + failure.getTraceback().rstrip("\n")
            self.out.write(f"{when} {level.name:<5} {self.role}: {body}\n")
        self.out.flush()


#: what :func:`twistd_observer` builds: set by the plugin's options, read once by twistd
_TWISTD_OBSERVER: list = []


def use_for_twistd(make) -> str:
    """Make ``make()`` twistd's log observer: returns the name to put in twistd's ``logger``
    option (twistd resolves that option by name, after the plugin's options were parsed)."""
    _TWISTD_OBSERVER[:] = [make]
    return f"{__name__}.twistd_observer"


def twistd_observer() -> OperatorLogObserver:
    """twistd's ``--logger`` factory (see :func:`use_for_twistd`)."""
    return _TWISTD_OBSERVER[0]()


class KeyLog:
    """How roles log key material: only with ``--log-keys``, at debug level, never otherwise.

    ``key_log.key("SEK", material, sek_id=...)`` emits ``debug: key SEK <hex> sek_id=...`` when
    :attr:`enabled`, and nothing at all when not (so no observer, twistd's own included, ever
    sees the bytes).
    """

    log = Logger(namespace="bcast_sp4.keys")

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled

    def key(self, what: str, material: bytes, **ids: Any) -> None:
        if not self.enabled:
            return
        names = " ".join(f"{k}={{{k}}}" for k in ids)
        self.log.debug("key {what} {key_hex} " + names, what=what, key_hex=bytes(material).hex(), **ids)

    def service_key(self, what: str, key, **ids: Any) -> None:
        """A :class:`~bcast_sp4.bcast.keys.ServiceKey`: its key and, when it has one, its authentication key."""
        if not self.enabled:
            return
        self.key(what, key.key, key_id=f"{key.key_id:#010x}", name=key.name, **ids)
        if key.authentication_key:
            self.key(what + " authentication key", key.authentication_key, key_id=f"{key.key_id:#010x}", **ids)

    def key_store(self, store) -> None:
        """Every key of an ECMG key store."""
        if not self.enabled:
            return
        for key in store.keys():
            self.service_key("SEK/PEK", key)

    def subscribers(self, subscribers) -> None:
        """Every device key and entitled key of a subscriber file."""
        if not self.enabled:
            return
        for device in subscribers.devices:
            self.key("device key", device.device_key, device_id=device.device_id.hex())
            for key in device.entitlements:
                self.service_key("entitlement", key, device_id=device.device_id.hex())


__all__ = ["FORMATS", "KeyLog", "twistd_observer", "use_for_twistd", "LEVELS", "OperatorLogObserver", "iso_utc", "readable"]
