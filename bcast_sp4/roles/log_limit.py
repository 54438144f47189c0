"""Rate-limited, bounded log lines for what peers do wrong (issue #13, "log flood").

A peer that sends 200,000 bad messages must not write 200,000 warnings. :class:`LogLimiter`
lets the first ``burst`` warnings of one kind about one peer through in each ``window``; the
rest are counted, and when the window closes one line says how many were held back::

    ... and 1,234 more invalid messages from 127.0.0.1:40000 in the last 10 s

The number of peers tracked per window is bounded (past :data:`MAX_PEERS` they share one
``other peers`` entry), so a flood from many source ports costs no more memory than one peer.
Lines about connections (opened, closed, closing) are limited per host (:func:`host_of`): a
flood of 2,000 connections from one address writes a few lines and one summary per window
(before, each connection wrote two or three lines). A summary has the level of the lines it
stands for (``info`` for connection lines, ``warn`` for warnings).

:func:`shorten` bounds each value that goes into a log line: a stream_error carrying 10,000
error_status values becomes one short line (the first values, then ``... (9,992 more)``).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: distinct (peer, kind) pairs counted per window before they are pooled under "other peers"
MAX_PEERS = 64
#: items of a list or tuple kept in a log value
MAX_ITEMS = 8
#: characters of a string (or repr) kept in a log value
MAX_CHARS = 160

OTHER_PEERS = "other peers"


def shorten(value: Any, max_items: int = MAX_ITEMS, max_chars: int = MAX_CHARS) -> Any:
    """*value* made short enough for a log line; short values come back unchanged.

    Lists and tuples keep their first *max_items* items (each shortened) and a note of how many
    more there were; strings and byte strings keep *max_chars* characters (bytes as hex) and the
    full length; ints, floats, booleans and ``None`` pass through.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        if len(value) <= max_items and all(v is None or isinstance(v, (bool, int, float)) for v in value):
            return value
        head = [shorten(v, max_items, max_chars) for v in value[:max_items]]
        if len(value) > max_items:
            return f"[{', '.join(_text(v) for v in head)}, ... ({len(value) - max_items:,} more)]"
        return type(value)(head)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if 2 * len(data) <= max_chars:
            return data.hex()
        return f"{data[: max_chars // 2].hex()}... ({len(data):,} bytes)"
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= max_chars:
        return value if isinstance(value, str) else text
    return f"{text[:max_chars]}... ({len(text):,} chars)"


def host_of(peer: str) -> str:
    """The host of a ``host:port`` peer name (``::1:40000`` -> ``::1``); other names unchanged."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


def _text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def shorten_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Each value of *fields* through :func:`shorten` (a new dict; the input is not changed)."""
    return {key: shorten(value) for key, value in fields.items()}


class LogLimiter:
    """Per-peer, per-kind warning budget with a summary line per window.

    :param clock: arms the end-of-window call that writes the summaries.
    :param window: seconds per window.
    :param burst: warnings per (peer, kind) logged one by one in a window (0: only summaries).
    :param log: where summaries go (its ``warn``).
    """

    def __init__(self, clock: IReactorTime, window: float = 10.0, burst: int = 5, log: Logger | None = None) -> None:
        self.clock = clock
        self.window = window
        self.burst = burst
        self.log = log if log is not None else Logger(namespace="bcast_sp4.roles.log_limit")
        #: (peer, kind) -> [logged, held back] in the current window
        self._counts: dict[tuple[str, Hashable], list[int]] = {}
        self._what: dict[Hashable, tuple[str, str]] = {}  # kind -> (what, level)
        self._call: IDelayedCall | None = None
        self._started = 0.0
        #: warnings held back since the limiter was made (all peers, all kinds)
        self.suppressed = 0

    def allow(self, peer: str, kind: Hashable, what: str = "warnings", level: str = "warn") -> bool:
        """Whether this warning about *peer* may be logged; otherwise it is counted for the summary.

        :param kind: groups warnings (e.g. ``"invalid"``); *what* names them in the summary
            (``"invalid messages"``).
        :param level: the level of the lines of this *kind*, and of their summary.
        """
        key = (peer, kind)
        counts = self._counts.get(key)
        if counts is None:
            if len(self._counts) >= MAX_PEERS:
                key = (OTHER_PEERS, kind)
                counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0, 0]
                self._what[kind] = (what, level)
                if self._call is None:
                    self._started = self.clock.seconds()
                    self._call = self.clock.callLater(self.window, self._end_window)
        if counts[0] < self.burst and key[0] != OTHER_PEERS:
            counts[0] += 1
            return True
        counts[1] += 1
        self.suppressed += 1
        return False

    def _end_window(self) -> None:
        self._call = None
        counts, self._counts = self._counts, {}
        seconds = self.clock.seconds() - self._started
        log = self.log
        for (peer, kind), (_logged, held) in counts.items():
            if held:
                what, level = self._what.get(kind, ("warnings", "warn"))
                emit = log.info if level == "info" else log.debug if level == "debug" else log.warn
                emit("... and {count:,} more {what} from {peer} in the last {seconds:g} s",
                     count=held, what=what, peer=peer, seconds=round(seconds, 1))

    def flush(self) -> None:
        """Write the pending summaries now (at shutdown) and stop the window timer."""
        if self._call is not None:
            self._call.cancel()
            self._end_window()

    def warn(self, log: Logger, peer: str, kind: Hashable, what: str, text: str, **fields: Any) -> None:
        """``log.warn(text, peer=peer, **fields)`` when :meth:`allow` lets it through, fields shortened."""
        if self.allow(peer, kind, what):
            log.warn(text, peer=peer, **shorten_fields(fields))


def limited(limiter: LogLimiter | None, emit: Callable[..., None], peer: str, kind: Hashable, what: str,
            text: str, **fields: Any) -> None:
    """Emit a warning through *limiter* when there is one, else directly (fields shortened either way)."""
    if limiter is None or limiter.allow(peer, kind, what):
        emit(text, peer=peer, **shorten_fields(fields))


__all__ = ["LogLimiter", "MAX_CHARS", "MAX_ITEMS", "MAX_PEERS", "host_of", "limited", "shorten", "shorten_fields"]
