"""BatchUDPPort: every datagram of a wake-up in one batch, in order, bounded; real sockets on 127.0.0.1.

The port is built on a reactor instance that never runs: the test calls ``doRead`` itself once
``select`` says the socket is readable (bounded waits, no sleeps).
"""

from __future__ import annotations

import select
import socket
import sys

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import capturedLogs

from bcast_sp4.roles.udp_batch import SO_RCVBUFFORCE, BatchUDPPort, listen_udp_batch, set_receive_buffer

from ..doubles import UDPMemoryReactor


class Recorder(DatagramProtocol):
    def __init__(self):
        self.batches: list[list[tuple[bytes, tuple]]] = []
        self.single: list[bytes] = []

    def datagramsReceived(self, batch):
        self.batches.append(list(batch))

    def datagramReceived(self, data, addr):
        self.single.append(data)


@pytest.fixture
def reactor():
    reactor = EPollReactor()
    yield reactor
    reactor._poller.close()


def read_all(port, protocol, expected: int) -> None:
    for _ in range(200):  # bounded: each round waits at most 1 s for the socket
        if sum(len(b) for b in protocol.batches) >= expected:
            return
        readable, _, _ = select.select([port.socket], [], [], 1.0)
        if readable:
            port.doRead()
    raise AssertionError("datagrams did not arrive")


def test_batches_keep_order_and_respect_the_budget(reactor):
    protocol = Recorder()
    port = listen_udp_batch(reactor, 0, protocol, interface="127.0.0.1", batch=16)
    assert isinstance(port, BatchUDPPort)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.connect(("127.0.0.1", port.getHost().port))
        sent = [f"datagram {k}".encode() for k in range(50)]
        for data in sent:
            sender.send(data)
        read_all(port, protocol, len(sent))
        received = [data for batch in protocol.batches for data, _addr in batch]
        assert received == sent
        assert all(1 <= len(batch) <= 16 for batch in protocol.batches)
        assert len(protocol.batches) >= 4  # 50 datagrams cannot fit fewer batches of 16
        assert {addr for batch in protocol.batches for _d, addr in batch} == {sender.getsockname()}
        assert protocol.single == []
        # nothing waiting: a wake-up that finds nothing hands over no batch
        batches = len(protocol.batches)
        port.doRead()
        assert len(protocol.batches) == batches
    finally:
        sender.close()
        port.stopListening()


def test_a_protocol_error_is_logged_and_the_port_keeps_reading(reactor):
    class Failing(Recorder):
        def datagramsReceived(self, batch):
            super().datagramsReceived(batch)
            raise RuntimeError("bug in the protocol")

    protocol = Failing()
    port = listen_udp_batch(reactor, 0, protocol, interface="127.0.0.1")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"one", ("127.0.0.1", port.getHost().port))
        read_all(port, protocol, 1)
        sender.sendto(b"two", ("127.0.0.1", port.getHost().port))
        read_all(port, protocol, 2)
        assert [d for b in protocol.batches for d, _a in b] == [b"one", b"two"]
    finally:
        sender.close()
        port.stopListening()


def test_batch_budget_must_be_positive(reactor):
    with pytest.raises(ValueError):
        BatchUDPPort(0, Recorder(), "127.0.0.1", 8192, reactor, batch=0)


def test_non_posix_reactor_falls_back_to_listen_udp():
    reactor = UDPMemoryReactor()
    protocol = Recorder()
    listening = listen_udp_batch(reactor, 4000, protocol, interface="127.0.0.1", maxPacketSize=65536)
    (port,) = reactor.udp
    assert listening is port
    assert (port.port, port.protocol, port.interface, port.max_packet_size) == (4000, protocol, "127.0.0.1", 65536)


def test_the_receive_buffer_asked_for_is_set_before_the_first_datagram(reactor):
    protocol = Recorder()
    port = listen_udp_batch(reactor, 0, protocol, interface="127.0.0.1", receive_buffer=96 * 1024)
    try:
        granted = port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert port.receive_buffer_granted == granted >= 96 * 1024  # Linux grants twice the request
    finally:
        port.stopListening()


class CappedSocket:
    """SO_RCVBUF capped at *cap* (Linux reports twice it); SO_RCVBUFFORCE refused or honoured."""

    def __init__(self, cap: int, force: bool) -> None:
        self.cap, self.force, self.size = cap, force, 1000

    def setsockopt(self, level, option, value):
        if option == SO_RCVBUFFORCE:
            if not self.force:
                raise PermissionError(1, "Operation not permitted")
            self.size = 2 * value
        else:
            self.size = 2 * min(value, self.cap)

    def getsockopt(self, level, option):
        return self.size


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_RCVBUFFORCE is Linux's")
def test_a_capped_receive_buffer_is_forced_or_warned_about():
    assert set_receive_buffer(CappedSocket(cap=212992, force=True), 4 << 20) == 8 << 20
    with capturedLogs() as events:
        assert set_receive_buffer(CappedSocket(cap=212992, force=False), 4 << 20) == 2 * 212992
    (event,) = [e for e in events if "rmem_max" in e.get("log_format", "")]
    assert event["granted"] == 2 * 212992 and event["size"] == 4 << 20
    with capturedLogs() as events:  # within the cap: no force, no warning
        assert set_receive_buffer(CappedSocket(cap=212992, force=False), 100_000) == 200_000
    assert not events
    assert set_receive_buffer(CappedSocket(cap=1, force=False), 0) == 1000  # 0: the kernel's default, untouched


def _sent_and_batched(reactor, multi: bool, count: int, batch: int, sizes=(1, 100, 1400)):
    protocol = Recorder()
    port = listen_udp_batch(reactor, 0, protocol, interface="127.0.0.1", maxPacketSize=2048, batch=batch,
                            receive_buffer=1 << 20) if multi else BatchUDPPort(
        0, protocol, "127.0.0.1", 2048, reactor, batch=batch, receive_buffer=1 << 20, multi=False)
    if not multi:
        port.startListening()
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        sent = []
        for k in range(count):
            sender = senders[k % 3]
            data = bytes([k % 256]) * sizes[k % len(sizes)]
            sender.sendto(data, ("127.0.0.1", port.getHost().port))
            sent.append((data, ("127.0.0.1", sender.getsockname()[1])))
        sender.sendto(b"L" * 3000, ("127.0.0.1", port.getHost().port))  # longer than maxPacketSize: cut
        sent.append((b"L" * 2048, ("127.0.0.1", sender.getsockname()[1])))
        read_all(port, protocol, len(sent))
        return port.receiver is not None, sent, [pair for b in protocol.batches for pair in b], protocol.batches
    finally:
        for sender in senders:
            sender.close()
        port.stopListening()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="recvmmsg is Linux's")
def test_recvmmsg_reads_what_recvfrom_reads(reactor):
    used, sent, received, batches = _sent_and_batched(reactor, True, 300, batch=100)
    assert used  # read with recvmmsg
    assert received == sent  # data, cut as recvfrom cuts it, and (host, port) of each sender, in order
    assert all(len(b) <= 100 for b in batches) and len(batches) >= 4
    used, sent2, received2, _batches = _sent_and_batched(reactor, False, 300, batch=100)
    assert not used and received2 == sent2


def test_recvmmsg_slots_are_bounded(reactor):
    from bcast_sp4.roles.udp_mmsg import MAX_BUFFER, MultiReceiver

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if MultiReceiver.available(sock):
            assert MultiReceiver(sock, 65536, 512).slots == MAX_BUFFER // 65536  # many calls per wake-up
            assert MultiReceiver(sock, 2048, 512).slots == 512
    finally:
        sock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not socket.has_ipv6, reason="recvmmsg is Linux's")
def test_recvmmsg_on_ipv6_hands_over_host_and_port(reactor):
    protocol = Recorder()
    try:
        port = listen_udp_batch(reactor, 0, protocol, interface="::1", maxPacketSize=2048)
    except Exception:
        pytest.skip("no ::1")
    sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        assert port.receiver is not None
        sent = [b"six %d" % k for k in range(40)]
        for data in sent:
            sender.sendto(data, ("::1", port.getHost().port))
        read_all(port, protocol, len(sent))
        assert [pair for b in protocol.batches for pair in b] == [(d, ("::1", sender.getsockname()[1])) for d in sent]
    finally:
        sender.close()
        port.stopListening()


def test_a_wake_up_stops_reading_once_its_turn_time_has_passed(reactor):
    """With a turn_time the socket is read in batches; past the time no further batch is read in
    that wake-up (the rest stays in the socket for the next one); after the first batch (*chunk*
    datagrams) each is sized to the time left at the pace so far."""
    now = [0.0]

    class Slow(Recorder):
        def datagramsReceived(self, batch):
            super().datagramsReceived(batch)
            now[0] += 0.00005 * len(batch)  # 50 us a datagram

    protocol = Slow()
    port = BatchUDPPort(0, protocol, "127.0.0.1", 8192, reactor, batch=512, turn_time=0.001, chunk=8,
                        clock=lambda: now[0])
    port.startListening()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.connect(("127.0.0.1", port.getHost().port))
        for k in range(50):
            sender.send(b"d%d" % k)
        per_wake_up = []
        while sum(per_wake_up) < 50 and len(per_wake_up) < 100:
            readable, _, _ = select.select([port.socket], [], [], 1.0)
            if readable:
                before = sum(len(b) for b in protocol.batches)
                port.doRead()
                per_wake_up.append(sum(len(b) for b in protocol.batches) - before)
        received = [data for batch in protocol.batches for data, _addr in batch]
        assert received == [b"d%d" % k for k in range(50)]
        assert len(protocol.batches[0]) == 8
        # 8 datagrams took 0.4 ms: the next batch is the 12 that fit the 0.6 ms left, then the
        # time is up (loopback delivers each datagram within its send: the first wake-up finds all 50)
        assert per_wake_up[0] == 20 and len(protocol.batches[1]) == 12
        assert max(per_wake_up) <= 20 and len(per_wake_up) >= 3
    finally:
        sender.close()
        port.stopListening()


def test_recvmmsg_errors_end_the_batch_as_recvfrom_errors_do(reactor):
    import errno

    from bcast_sp4.roles.udp_mmsg import MultiReceiver

    class Refused(Recorder):
        refused = 0

        def connectionRefused(self):
            self.refused += 1

    protocol = Refused()
    port = listen_udp_batch(reactor, 0, protocol, interface="127.0.0.1")
    try:
        if port.receiver is not None:
            with pytest.raises(OSError) as caught:  # an empty socket: EAGAIN, as recvfrom's
                port.receiver.receive(8)
            assert caught.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
        port.doRead()  # nothing to read: no batch, no error
        assert protocol.batches == []

        class Failing:
            def receive(self, limit):
                raise OSError(errno.ECONNREFUSED, "refused")

        port.receiver = Failing()
        port._connectedAddr = ("127.0.0.1", 9)
        port.doRead()  # a connected port's refusal: connectionRefused, as Twisted's recvfrom loop does
        assert protocol.refused == 1 and protocol.batches == []
        assert isinstance(MultiReceiver.available(port.socket), bool)
    finally:
        port._connectedAddr = None
        port.stopListening()


def test_without_a_turn_time_one_wake_up_reads_up_to_the_budget_in_one_batch(reactor):
    protocol = Recorder()
    port = BatchUDPPort(0, protocol, "127.0.0.1", 8192, reactor, batch=512, turn_time=None, chunk=8)
    assert port.chunk == 512
    with pytest.raises(ValueError):
        BatchUDPPort(0, protocol, "127.0.0.1", 8192, reactor, turn_time=0.001, chunk=0)
