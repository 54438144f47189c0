"""A UDP port that hands its protocol every datagram of a reactor wake-up as one batch.

Twisted's ``udp.Port.doRead`` already reads in a loop, but calls ``datagramReceived`` once per
datagram, so a protocol can only work datagram by datagram. :class:`BatchUDPPort` drains the socket
until it would block (``EAGAIN``) or a budget of datagrams is reached, then calls the protocol's
``datagramsReceived(batch)`` once with the list of ``(data, (host, port))`` pairs; the protocol
takes the whole batch apart in one loop and its machine handles it in one call (the MUX:
:meth:`~bcast_sp4.machines.mux.MuxCore.receive_udp_runs`). On Linux it reads with ``recvmmsg``
(not in the standard library: :mod:`.udp_mmsg`, through ``ctypes``), elsewhere with a loop of
``recvfrom`` calls. Measured on loopback, 223-byte datagrams: ``recvfrom`` 2.6 µs each, whatever the
buffer size asked (``recv``, without the source address, 1.7 µs); ``recvfrom_into`` a preallocated
buffer plus the copy out 2.7 µs; ``recvmsg`` 2.9 µs; ``recvmmsg`` 1.9-2.0 µs, the datagrams and
their ``(host, port)`` included.

The kernel keeps what arrives between two wake-ups in the socket's receive buffer; a full buffer
drops (``/proc/net/udp`` ``drops``). The port asks for ``receive_buffer`` bytes
(:func:`set_receive_buffer`; the MUX's ``[mux] udp_receive_buffer``, ``docs/config.md``): at
150,000 datagrams/s of 200 bytes, 8 MiB granted (about 1,280 bytes per queued datagram of the
kernel's accounting) holds 44 ms of input.

The budget bounds one batch (memory, and the time before the reactor serves anything else);
what is left in the socket is read at the next wake-up, which epoll reports at once (level
triggered). With a *turn_time* the wake-up is also bounded in time: the socket is read and handed
over in batches of *chunk* datagrams, and no further batch is read once *turn_time* has passed since
the wake-up (the batch under way finishes; each batch after the first is sized to the time left
at the pace of the ones before), so datagrams that go through the full decoder (a flood of invalid
ones) cannot hold the reactor for the whole budget while a TCP peer waits (issue #13). Errors are
Twisted's: ``EAGAIN``/``EINTR`` end the batch, ``ECONNREFUSED`` on a connected port calls
``connectionRefused`` (after the batch), anything else is logged after the datagrams read so far
were handed over. :func:`listen_udp_batch` falls back to the reactor's own ``listenUDP`` (one
``datagramReceived`` per datagram) on a reactor that is not a POSIX one; the MUX's tap listens
through it (``tap/mux.py``).
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Callable
from typing import Protocol as TypingProtocol

from twisted.internet import udp
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger
from twisted.python import log

from .udp_mmsg import MultiReceiver

#: default number of datagrams read per wake-up at most
DEFAULT_BATCH = 512
#: datagrams per batch when the wake-up has a *turn_time* (the time is checked between batches)
DEFAULT_CHUNK = 32
#: Linux's SO_RCVBUFFORCE (absent from Python's socket module): SO_RCVBUF past net.core.rmem_max,
#: for a process with CAP_NET_ADMIN
SO_RCVBUFFORCE = 33

_log = Logger()


def set_receive_buffer(sock, size: int) -> int:
    """Ask for a receive buffer of *size* bytes on *sock*; returns what the kernel granted.

    ``SO_RCVBUF`` first; Linux caps it at ``net.core.rmem_max`` (and reports twice the request,
    its bookkeeping included). When that is less than *size*, ``SO_RCVBUFFORCE`` (Linux, allowed
    with ``CAP_NET_ADMIN`` only) goes past the cap; when that is refused too, a warning names the
    sysctl to raise. ``0`` leaves the kernel's default.
    """
    if size <= 0:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted >= size or not sys.platform.startswith("linux"):
        return granted
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        _log.warn("UDP receive buffer {granted} bytes, not the {size} asked for: raise net.core.rmem_max "
                  "(sysctl) or run with CAP_NET_ADMIN, or bursts may be dropped in the kernel",
                  granted=granted, size=size)
        return granted
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


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
    :param receive_buffer: bytes of kernel receive buffer asked for (:func:`set_receive_buffer`;
        0: the kernel's default); what was granted is :attr:`receive_buffer_granted` once listening.
    :param multi: read with ``recvmmsg`` where the platform has it (:mod:`.udp_mmsg`).
    """

    _reading = False

    def __init__(self, port: int, proto, interface: str = "", maxPacketSize: int = 8192, reactor=None,
                 batch: int = DEFAULT_BATCH, turn_time: float | None = None, chunk: int = DEFAULT_CHUNK,
                 clock: Callable[[], float] = time.monotonic, receive_buffer: int = 0, multi: bool = True) -> None:
        if batch < 1 or chunk < 1:
            raise ValueError(f"batch and chunk must be at least 1, not {batch} and {chunk}")
        super().__init__(port, proto, interface, maxPacketSize, reactor)
        self.batch = batch
        self.turn_time = turn_time
        self.chunk = chunk if turn_time is not None else batch
        self.clock = clock
        self.receive_buffer = receive_buffer
        self.receive_buffer_granted: int | None = None
        self.multi = multi
        #: the ``recvmmsg`` reader once listening, where the platform has it (:mod:`.udp_mmsg`)
        self.receiver: MultiReceiver | None = None

    def createInternetSocket(self):
        sock = super().createInternetSocket()
        if self.receive_buffer:
            self.receive_buffer_granted = set_receive_buffer(sock, self.receive_buffer)
        if self.multi and MultiReceiver.available(sock):
            self.receiver = MultiReceiver(sock, self.maxPacketSize, self.batch)
        return sock

    def connectionLost(self, reason=None):
        self.receiver = None  # its buffers go with the socket
        return super().connectionLost(reason)

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
        batch: list[tuple[bytes, tuple]] = []
        failure: OSError | None = None
        receiver = self.receiver
        if receiver is not None:  # recvmmsg: many datagrams per call
            left = limit
            while left > 0:
                try:
                    got = receiver.receive(left)
                except OSError as exc:
                    if exc.args[0] not in udp._sockErrReadIgnore:
                        failure = exc
                    break
                batch += got
                left -= len(got)
        else:
            recvfrom, size = self.socket.recvfrom, self.maxPacketSize
            append = batch.append
            if self.addressFamily == socket.AF_INET6:  # Twisted hands over (host, port) of the 4-tuple
                for _ in range(limit):
                    try:
                        data, addr = recvfrom(size)
                    except OSError as exc:
                        if exc.args[0] not in udp._sockErrReadIgnore:
                            failure = exc
                        break
                    append((data, addr[:2]))
            else:  # recvfrom's own (data, (host, port)) pair, as it comes
                for _ in range(limit):
                    try:
                        append(recvfrom(size))
                    except OSError as exc:
                        if exc.args[0] not in udp._sockErrReadIgnore:
                            failure = exc
                        break
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
                     batch: int = DEFAULT_BATCH, turn_time: float | None = None, receive_buffer: int = 0):
    """Listen on UDP *port* with a :class:`BatchUDPPort` (``listenUDP`` on a non-POSIX reactor).

    :param turn_time: seconds per wake-up (:class:`BatchUDPPort`); ``None`` or 0: no time bound.
    :param receive_buffer: kernel receive buffer asked for, bytes (0: the kernel's default).
    :returns: the listening port (``IListeningPort``).
    """
    if not isinstance(reactor, PosixReactorBase):
        listening = reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=maxPacketSize)
        if receive_buffer and isinstance(listening.getHandle(), socket.socket):
            set_receive_buffer(listening.getHandle(), receive_buffer)
        return listening
    listening = BatchUDPPort(port, protocol, interface, maxPacketSize, reactor, batch, turn_time or None,
                             receive_buffer=receive_buffer)
    listening.startListening()
    return listening


__all__ = ["DEFAULT_BATCH", "DEFAULT_CHUNK", "BatchDatagramProtocol", "BatchUDPPort", "listen_udp_batch",
           "set_receive_buffer"]
