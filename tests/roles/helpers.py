"""Test doubles for the role tests: a memory reactor that also does UDP (STYLE §10 trap)."""

from __future__ import annotations

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock


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
