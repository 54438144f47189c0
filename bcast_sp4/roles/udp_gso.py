"""Many datagrams on one connected UDP socket in few system calls: Linux UDP GSO (``UDP_SEGMENT``).

The MUX's unthrottled play-out hands a route many datagrams at once
(:class:`~bcast_sp4.machines.mux.EmitMany`). One ``send`` per datagram costs a system call and a
walk down the network stack each (about 3 µs on loopback, more than the rest of the MUX's work on
that datagram). Since Linux 4.18 a UDP socket takes one buffer plus a segment size (ancillary data
``SOL_UDP``/``UDP_SEGMENT``) and the kernel cuts it into datagrams of that size -- the last may be
shorter -- as late as it can (in the NIC, or in software just before the device). The receivers see
exactly the datagrams of the per-datagram sends, in the same order.

:class:`SegmentedSender` sends a sequence of datagrams so: each run of consecutive datagrams of one
size (plus one shorter one closing it) goes out as one ``sendmsg``; any other datagram as one
``send``. The bounds are the kernel's: at most :data:`MAX_SEGMENTS` segments and
:data:`MAX_BYTES` bytes per send; and a segment must fit the path MTU with its headers, so only
datagrams up to :data:`MAX_SEGMENT_V4` / :data:`MAX_SEGMENT_V6` bytes (an Ethernet MTU of 1500)
are grouped.

Errors: a kernel or device that cannot segment answers the whole send with ``EIO``, ``EINVAL``,
``EMSGSIZE``, ``ENOPROTOOPT`` or ``EOPNOTSUPP``; the sender then turns GSO off for its socket for
good (:attr:`SegmentedSender.enabled`) and sends that run datagram by datagram. Any other error
(``ECONNREFUSED`` after an ICMP refusal, ``EAGAIN``/``ENOBUFS`` on a full send queue) is what the
first datagram's own ``send`` would have met: it counts as that datagram's failure and the rest of
the run is sent one by one, so every datagram is either sent or reported failed, as with one
``send`` each. GSO is used only where a probe of the socket (``setsockopt(SOL_UDP, UDP_SEGMENT,
0)``) succeeds: a kernel that does not know the option would ignore the ancillary data and send
the whole buffer as one datagram.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Sequence

SOL_UDP = socket.IPPROTO_UDP
#: the socket option / ancillary data type (``linux/udp.h``), absent from Python's socket module
UDP_SEGMENT = 103
#: segments per send: the kernel's UDP_MAX_SEGMENTS (64 up to Linux 6.8, more since)
MAX_SEGMENTS = 64
#: bytes per send: one IPv4 UDP datagram's largest payload
MAX_BYTES = 65507
#: largest datagram grouped: what fits a 1500-byte MTU after the IPv4 / IPv6 and UDP headers
MAX_SEGMENT_V4 = 1500 - 20 - 8
MAX_SEGMENT_V6 = 1500 - 40 - 8
#: the errors that mean "this socket cannot segment" (GSO is then turned off for it)
UNSUPPORTED = frozenset({errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP})

_SIZES: dict[int, list[tuple[int, int, bytes]]] = {}  # segment size -> its ancillary data list


def _ancillary(size: int) -> list[tuple[int, int, bytes]]:
    data = _SIZES.get(size)
    if data is None:
        data = _SIZES[size] = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
    return data


def gso_supported(sock) -> bool:
    """Whether *sock* can send segmented (Linux, a real socket, a kernel that knows ``UDP_SEGMENT``)."""
    if not sys.platform.startswith("linux") or not hasattr(sock, "sendmsg"):
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # 0: no segmentation unless a send asks for it
    except OSError:
        return False
    return True


class SegmentedSender:
    """Sends datagrams on one connected UDP socket, equal-size runs as one GSO send (module docstring).

    :param sock: the connected socket (anything with ``send``; GSO only for a real Linux socket).
    :param ipv6: the socket's family is IPv6 (a smaller largest segment).
    :param enabled: use GSO (default: when :func:`gso_supported`).
    """

    __slots__ = ("sock", "max_segment", "enabled", "disabled_by")

    def __init__(self, sock, ipv6: bool = False, enabled: bool | None = None) -> None:
        self.sock = sock
        self.max_segment = MAX_SEGMENT_V6 if ipv6 else MAX_SEGMENT_V4
        self.enabled = gso_supported(sock) if enabled is None else enabled
        #: the error that turned GSO off, once one did
        self.disabled_by: OSError | None = None

    def send_all(self, payloads: Sequence[bytes]) -> list[OSError]:
        """Send every datagram of *payloads* in order; returns one error per datagram not sent."""
        n = len(payloads)
        if n < 2 or not self.enabled:
            return self._one_by_one(payloads)
        failures: list[OSError] = []
        send, sendmsg = self.sock.send, self.sock.sendmsg
        for i, j, size in self._runs(list(map(len, payloads))):
            if j - i == 1:
                try:
                    send(payloads[i])
                except OSError as exc:
                    failures.append(exc)
                continue
            run = payloads[i:j]
            try:
                sendmsg((b"".join(run),), _ancillary(size))
            except OSError as exc:
                if exc.errno in UNSUPPORTED:
                    self.enabled = False
                    self.disabled_by = exc
                    failures += self._one_by_one(run)
                    failures += self._one_by_one(payloads[j:])
                    return failures
                failures.append(exc)  # what the first datagram's own send would have met
                failures += self._one_by_one(run[1:])
        return failures

    def _runs(self, sizes: list[int]) -> list[tuple[int, int, int]]:
        """``(start, end, segment size)`` of each send for datagrams of *sizes* (end - start = 1: a plain send)."""
        n, largest = len(sizes), self.max_segment
        size = sizes[0]
        if 0 < size <= largest and sizes.count(size) == n:  # one size throughout: the usual batch
            step = min(MAX_SEGMENTS, MAX_BYTES // size)
            return [(i, min(i + step, n), size) for i in range(0, n, step)]
        runs = []
        i = 0
        while i < n:
            size = sizes[i]
            j = i + 1
            if 0 < size <= largest:
                limit = min(n, i + MAX_SEGMENTS, i + MAX_BYTES // size)
                while j < limit and sizes[j] == size:
                    j += 1
                if j < limit and 0 < sizes[j] < size:  # a shorter one may close the run
                    j += 1
            runs.append((i, j, size))
            i = j
        return runs

    def _one_by_one(self, payloads: Sequence[bytes]) -> list[OSError]:
        failures: list[OSError] = []
        send = self.sock.send
        for payload in payloads:
            try:
                send(payload)
            except OSError as exc:
                failures.append(exc)
        return failures


__all__ = ["MAX_BYTES", "MAX_SEGMENTS", "MAX_SEGMENT_V4", "MAX_SEGMENT_V6", "SegmentedSender", "gso_supported"]
