"""Doubles shared by the tests. Import as ``from tests.doubles import ...`` (pytest runs with
``pythonpath = .``).

* Reading a pure machine's outputs (:mod:`bcast_sp4.machines.outputs`): :func:`sent`, :func:`one`,
  :func:`error_of`, :func:`of`, :func:`notices`; its timers on simulated time: :class:`Timers`.
* The roles on a memory reactor that also does UDP: :class:`UDPMemoryReactor` (its ports are
  :class:`FakeUDPPort` with a :class:`FakeSocket`) — STYLE §10 trap: ``MemoryReactorClock`` has
  no ``listenUDP``.
* A real UDP destination on loopback: :class:`Receiver` (arrival time, datagram).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Hashable, Iterable, Iterator

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock

from bcast_sp4.machines.outputs import CancelTimer, Notify, Output, Send, StartTimer
from bcast_sp4.wire import Message


@contextlib.contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """The cyclic collector off inside the block: what goes there is freed by reference counting
    alone (or not at all: a reference cycle)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


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


class FakeSocket:
    """What the roles use of a UDP socket: ``send`` and ``setsockopt``."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.options: dict[tuple[int, int], object] = {}
        self.fail: OSError | None = None

    def send(self, data: bytes) -> int:
        if self.fail is not None:
            raise self.fail
        self.sent.append(bytes(data))
        return len(data)

    def setsockopt(self, level: int, option: int, value) -> None:
        self.options[(level, option)] = value


@attrs.define(eq=False)
class FakeUDPPort:
    port: int
    protocol: object
    interface: str
    max_packet_size: int = 8192
    connected: tuple[str, int] | None = None
    socket: FakeSocket = attrs.field(factory=FakeSocket)
    listening: bool = True
    reading: bool = True

    def __attrs_post_init__(self) -> None:
        self.protocol.makeConnection(self)

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def stopReading(self) -> None:
        self.reading = False

    def getHandle(self) -> FakeSocket:
        return self.socket

    def write(self, data: bytes, addr=None) -> None:
        self.socket.send(data)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)

    def stopListening(self):
        self.listening = False
        self.protocol.doStop()


class UDPMemoryReactor(MemoryReactorClock):
    """``MemoryReactorClock`` plus ``listenUDP`` returning :class:`FakeUDPPort` (recorded in ``udp``)."""

    def __init__(self) -> None:
        super().__init__()
        self.udp: list[FakeUDPPort] = []
        self._next_port = 40000

    def listenUDP(self, port, protocol, interface="", maxPacketSize=8192):
        if port == 0:
            self._next_port += 1
            port = self._next_port
        fake = FakeUDPPort(port, protocol, interface, maxPacketSize)
        self.udp.append(fake)
        return fake


class Receiver(DatagramProtocol):
    """A UDP destination on loopback: every datagram with the *clock*'s time of arrival, in :attr:`got`."""

    noisy = False

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.got: list[tuple[float, bytes]] = []

    def datagramReceived(self, data: bytes, addr) -> None:
        self.got.append((self.clock.seconds(), data))
