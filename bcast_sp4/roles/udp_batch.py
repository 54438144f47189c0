"""A UDP port that hands its protocol every datagram of a reactor wake-up as one batch.

Twisted's ``udp.Port.doRead`` already reads in a loop, but calls ``datagramReceived`` once per
datagram, so a protocol can only work datagram by datagram. :class:`BatchUDPPort` drains the socket
with ``recvfrom`` until it would block (``EAGAIN``) or a budget of datagrams is reached, then calls
the protocol's ``datagramsReceived(batch)`` once with the list of ``(data, addr)`` pairs; the
protocol takes the whole batch apart in one loop and its machine handles it in one call (the MUX:
:meth:`~bcast_sp4.machines.mux.MuxCore.receive_udp_batch`). ``recvmmsg`` is not in the standard
library; a loop of ``recvfrom`` calls on a non-blocking socket is what one wake-up can do in Python.

The budget bounds one batch (memory, and the time before the reactor serves anything else);
what is left in the socket is read at the next wake-up, which epoll reports at once (level
triggered). With a *turn_time* the wake-up is also bounded in time: the socket is read and handed
over in batches of *chunk* datagrams, and no further batch is read once *turn_time* has passed since
the wake-up (the batch under way finishes; each batch after the first is sized to the time left
at the pace of the ones before), so datagrams that go through the full decoder (a flood of invalid
ones) cannot hold the reactor for the whole budget while a TCP peer waits (issue #13). Errors are Twisted's: ``EAGAIN``/``EINTR`` end the batch, ``ECONNREFUSED`` on a
connected port calls ``connectionRefused`` (after the batch), anything else is logged after the
datagrams read so far were handed over. :func:`listen_udp_batch` falls back to the reactor's own
``listenUDP`` (one ``datagramReceived`` per datagram) on a reactor that is not a POSIX one; the
MUX's tap listens through it (``tap/mux.py``).
"""

from __future__ import annotations

import socket
import time
from typing import Callable
from typing import Protocol as TypingProtocol

from twisted.internet import udp
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.posixbase import PosixReactorBase
from twisted.python import log

#: default number of datagrams read per wake-up at most
DEFAULT_BATCH = 512
#: datagrams per batch when the wake-up has a *turn_time* (the time is checked between batches)
DEFAULT_CHUNK = 32


class BatchDatagramProtocol(TypingProtocol):
    """What :class:`BatchUDPPort` needs of its protocol (a Twisted ``DatagramProtocol`` plus one method)."""

    def datagramsReceived(self, batch: list[tuple[bytes, tuple]]) -> None:
        """Every datagram read at one wake-up, in arrival order, as ``(data, addr)`` pairs."""

    def datagramReceived(self, data: bytes, addr: tuple) -> None:
        """One datagram (the fallback reactors deliver these)."""


class BatchUDPPort(udp.Port):
    """``udp.Port`` whose ``doRead`` drains the socket into one batch per wake-up (bounded in time: batches).

    :param batch: at most this many datagrams per wake-up (>= 1).
    :param turn_time: seconds of reading and handling per wake-up, checked between batches of
        *chunk* datagrams (``None``: one batch of up to *batch*, however long it takes).
    :param chunk: datagrams of the first batch, and the fewest of any batch, when there is a
        *turn_time* (>= 1).
    :param clock: seconds for *turn_time* (``time.monotonic``; tests pass their own).
    """

    _reading = False

    def __init__(self, port: int, proto, interface: str = "", maxPacketSize: int = 8192, reactor=None,
                 batch: int = DEFAULT_BATCH, turn_time: float | None = None, chunk: int = DEFAULT_CHUNK,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if batch < 1 or chunk < 1:
            raise ValueError(f"batch and chunk must be at least 1, not {batch} and {chunk}")
        super().__init__(port, proto, interface, maxPacketSize, reactor)
        self.batch = batch
        self.turn_time = turn_time
        self.chunk = chunk if turn_time is not None else batch
        self.clock = clock

    def startReading(self) -> None:
        self._reading = True
        super().startReading()

    def stopReading(self) -> None:
        self._reading = False
        super().stopReading()

    def doRead(self) -> None:
        if self.turn_time is None:
            self._read_batch(self.batch)
            return
        clock, chunk = self.clock, self.chunk
        start = clock()
        deadline = start + self.turn_time
        left, step = self.batch, chunk
        while True:
            step = min(step, left)
            taken = self._read_batch(step)
            left -= taken
            if taken < step or not left or not self._reading:
                return  # drained (or an error), the budget read, or stopped while handling
            now = clock()
            if now >= deadline:
                return  # the rest at the next wake-up
            # the next batch sized to the time left at this wake-up's pace so far (fewer, larger
            # batches where datagrams are cheap), never fewer than *chunk*
            done = self.batch - left
            step = max(chunk, int(done * (deadline - now) / max(now - start, 1e-6)))

    def _read_batch(self, limit: int) -> int:
        """Read up to *limit* datagrams and hand them over; how many were read (fewer: the socket
        is drained, or an error ended the read)."""
        recvfrom, size = self.socket.recvfrom, self.maxPacketSize
        six = self.addressFamily == socket.AF_INET6
        batch: list[tuple[bytes, tuple]] = []
        append = batch.append
        failure: OSError | None = None
        for _ in range(limit):
            try:
                data, addr = recvfrom(size)
            except OSError as exc:
                if exc.args[0] not in udp._sockErrReadIgnore:
                    failure = exc
                break
            append((data, addr[:2] if six else addr))
        if batch:
            try:
                self.protocol.datagramsReceived(batch)
            except BaseException:
                log.err()
        if failure is not None:
            if failure.args[0] in udp._sockErrReadRefuse:
                if self._connectedAddr:
                    self.protocol.connectionRefused()
                return 0
            raise failure
        return len(batch)


def listen_udp_batch(reactor: IReactorUDP, port: int, protocol, interface: str = "", maxPacketSize: int = 8192,
                     batch: int = DEFAULT_BATCH, turn_time: float | None = None):
    """Listen on UDP *port* with a :class:`BatchUDPPort` (``listenUDP`` on a non-POSIX reactor).

    :param turn_time: seconds per wake-up (:class:`BatchUDPPort`); ``None`` or 0: no time bound.
    :returns: the listening port (``IListeningPort``).
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=maxPacketSize)
    listening = BatchUDPPort(port, protocol, interface, maxPacketSize, reactor, batch, turn_time or None)
    listening.startListening()
    return listening


__all__ = ["DEFAULT_BATCH", "DEFAULT_CHUNK", "BatchDatagramProtocol", "BatchUDPPort", "listen_udp_batch"]
