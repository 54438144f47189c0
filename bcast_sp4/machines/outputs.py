"""What a state machine asks its adapter to do (STYLE §2): plain frozen records, no behaviour."""

from __future__ import annotations

from typing import Any, Hashable

import attrs

from ..wire import Message


@attrs.frozen
class Send:
    """Write *message* on the connection."""

    message: Message


@attrs.frozen
class Close:
    """Close the connection after sending what precedes; *reason* is for the log.

    *level* is ``"warn"`` when something went wrong, ``"info"`` for an orderly close.
    """

    reason: str
    level: str = "warn"


@attrs.frozen
class Notify:
    """Something worth a log line or a metric: *event* names it, *fields* are structured.

    *level* is ``"debug"``, ``"info"`` or ``"warn"`` (the peer did something wrong).
    """

    event: str
    fields: dict[str, Any] = attrs.field(factory=dict)
    level: str = "info"


@attrs.frozen
class StartTimer:
    """Arm the timer *key* to fire in *seconds*; a timer already armed under *key* is replaced.

    When it fires the adapter hands *key* back to the machine's timer input.
    """

    key: Hashable
    seconds: float


@attrs.frozen
class CancelTimer:
    """Disarm the timer *key* if it is armed."""

    key: Hashable


Output = Send | Close | Notify | StartTimer | CancelTimer
