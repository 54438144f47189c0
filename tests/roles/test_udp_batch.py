"""BatchUDPPort: every datagram of a wake-up in one batch, in order, bounded; real sockets on 127.0.0.1.

The port is built on a reactor instance that never runs: the test calls ``doRead`` itself once
``select`` says the socket is readable (bounded waits, no sleeps).
"""

from __future__ import annotations

import select
import socket

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import DatagramProtocol

from bcast_sp4.roles.udp_batch import BatchUDPPort, listen_udp_batch

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


def test_without_a_turn_time_one_wake_up_reads_up_to_the_budget_in_one_batch(reactor):
    protocol = Recorder()
    port = BatchUDPPort(0, protocol, "127.0.0.1", 8192, reactor, batch=512, turn_time=None, chunk=8)
    assert port.chunk == 512
    with pytest.raises(ValueError):
        BatchUDPPort(0, protocol, "127.0.0.1", 8192, reactor, turn_time=0.001, chunk=0)
