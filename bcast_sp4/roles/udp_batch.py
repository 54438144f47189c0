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
triggered). Errors are Twisted's: ``EAGAIN``/``EINTR`` end the batch, ``ECONNREFUSED`` on a
connected port calls ``connectionRefused`` (after the batch), anything else is logged after the
datagrams read so far were handed over. :func:`listen_udp_batch` falls back to the reactor's own
``listenUDP`` (one ``datagramReceived`` per datagram) on a reactor that is not a POSIX one; the
MUX's tap listens through it (``tap/mux.py``).
"""

from __future__ import annotations

import socket
from typing import Protocol as TypingProtocol

from twisted.internet import udp
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.posixbase import PosixReactorBase
from twisted.python import log

#: default number of datagrams read per wake-up at most
DEFAULT_BATCH = 512


class BatchDatagramProtocol(TypingProtocol):
    """What :class:`BatchUDPPort` needs of its protocol (a Twisted ``DatagramProtocol`` plus one method)."""

    def datagramsReceived(self, batch: list[tuple[bytes, tuple]]) -> None:
        """Every datagram read at one wake-up, in arrival order, as ``(data, addr)`` pairs."""

    def datagramReceived(self, data: bytes, addr: tuple) -> None:
        """One datagram (the fallback reactors deliver these)."""


class BatchUDPPort(udp.Port):
    """``udp.Port`` whose ``doRead`` drains the socket into one batch per wake-up.

    :param batch: at most this many datagrams per batch (>= 1).
    """

    def __init__(self, port: int, proto, interface: str = "", maxPacketSize: int = 8192, reactor=None,
                 batch: int = DEFAULT_BATCH) -> None:
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        super().__init__(port, proto, interface, maxPacketSize, reactor)
        self.batch = batch

    def doRead(self) -> None:
        recvfrom, size = self.socket.recvfrom, self.maxPacketSize
        six = self.addressFamily == socket.AF_INET6
        batch: list[tuple[bytes, tuple]] = []
        append = batch.append
        failure: OSError | None = None
        for _ in range(self.batch):
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
                return
            raise failure


def listen_udp_batch(reactor: IReactorUDP, port: int, protocol, interface: str = "", maxPacketSize: int = 8192,
                     batch: int = DEFAULT_BATCH):
    """Listen on UDP *port* with a :class:`BatchUDPPort` (``listenUDP`` on a non-POSIX reactor).

    :returns: the listening port (``IListeningPort``).
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenUDP(port, protocol, interface=interface, maxPacketSize=maxPacketSize)
    listening = BatchUDPPort(port, protocol, interface, maxPacketSize, reactor, batch)
    listening.startListening()
    return listening


__all__ = ["DEFAULT_BATCH", "BatchDatagramProtocol", "BatchUDPPort", "listen_udp_batch"]
