"""Doubles shared by the machine tests: reading a pure machine's outputs, and its timers on simulated time.

A machine returns a list of outputs (:mod:`bcast_sp4.machines.outputs`); these helpers pick out
what a test asserts on. Import as ``from tests.doubles import ...`` (pytest runs with
``pythonpath = .``).
"""

from __future__ import annotations

from typing import Hashable, Iterable

from bcast_sp4.machines.outputs import CancelTimer, Notify, Output, Send, StartTimer
from bcast_sp4.wire import Message


def sent(outputs: Iterable[Output]) -> list[Message]:
    """The messages of the :class:`Send` outputs, in order."""
    return [o.message for o in outputs if isinstance(o, Send)]


def one(outputs: Iterable[Output], cls: type[Message]) -> Message:
    """The one message sent, which must be a *cls*."""
    outputs = list(outputs)
    messages = sent(outputs)
    assert len(messages) == 1 and isinstance(messages[0], cls), outputs
    return messages[0]


def error_of(outputs: Iterable[Output], cls: type[Message]) -> int:
    """The error_status of the one *cls* (channel_error / stream_error) sent; it must carry one."""
    message = one(outputs, cls)
    assert len(message.error_status) == 1
    return message.error_status[0]


def of(outputs: Iterable[Output], cls: type) -> list:
    """The outputs of type *cls*, in order."""
    return [o for o in outputs if isinstance(o, cls)]


def notices(outputs: Iterable[Output], event: str | None = None) -> list[Notify]:
    """The :class:`Notify` outputs (of *event* only, when given)."""
    return [o for o in outputs if isinstance(o, Notify) and (event is None or o.event == event)]


class Timers:
    """What an adapter does with :class:`StartTimer` / :class:`CancelTimer`, on simulated time.

    :ivar armed: key -> when it fires.
    """

    def __init__(self) -> None:
        self.armed: dict[Hashable, float] = {}

    def apply(self, output: Output, now: float) -> bool:
        """Arm or disarm for a timer output; ``False`` when *output* is not one."""
        if isinstance(output, StartTimer):
            self.armed[output.key] = now + output.seconds
            return True
        if isinstance(output, CancelTimer):
            self.armed.pop(output.key, None)
            return True
        return False

    def next_at(self) -> float | None:
        """When the next armed timer fires (``None``: none armed)."""
        return min(self.armed.values(), default=None)

    def fire(self, now: float) -> list[Hashable]:
        """Disarm and return the keys due at *now*, earliest first."""
        due = [key for key, at in sorted(self.armed.items(), key=lambda item: item[1]) if at <= now]
        for key in due:
            del self.armed[key]
        return due
