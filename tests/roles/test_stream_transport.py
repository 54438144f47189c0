"""The TCP adapter's transport set-up: TCP_NODELAY everywhere, write-through for the ECMG, and the
ECMG's encoded CW_provision replies (StringTransport doubles that declare the TCP interfaces)."""

from __future__ import annotations

import socket

from twisted.internet.interfaces import IReadWriteDescriptor, ITCPTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from bcast_sp4 import wire
from bcast_sp4.wire import ecmg_scs as m

from .test_ecmg_protocol import connect, cw_provision, replies, setup_stream


@implementer(ITCPTransport, IReadWriteDescriptor)
class TCPStringTransport(StringTransport):
    """A StringTransport that records setTcpNoDelay and doWrite (what a tcp.Connection offers)."""

    def __init__(self):
        super().__init__()
        self.no_delay = False
        self.pushes: list[int] = []  # bytes buffered at each doWrite

    def setTcpNoDelay(self, enabled):
        self.no_delay = bool(enabled)

    def getTcpNoDelay(self):
        return self.no_delay

    def doWrite(self):
        self.pushes.append(len(self.value()))


def test_ecmg_sets_no_delay_and_pushes_each_batch_of_replies_at_once():
    first_protocol, _transport, _, _ = connect()
    protocol = first_protocol.factory.buildProtocol(None)
    transport = TCPStringTransport()
    protocol.makeConnection(transport)
    assert transport.no_delay
    setup_stream(protocol, transport)
    assert len(transport.pushes) == 1  # the set-up's replies: one write, one push
    protocol.dataReceived(cw_provision(7).encode() + cw_provision(8).encode())
    assert len(transport.pushes) == 2
    (first, second) = replies(transport)
    assert type(first) is m.ECMResponse and (first.CP_number, second.CP_number) == (7, 8)


def test_encoded_reply_equals_the_message_path():
    protocol, transport, _, clock = connect()
    setup_stream(protocol, transport)
    msg = cw_provision(9)
    fast = protocol.handle(msg, clock.seconds(), clock.seconds())
    assert type(fast) is bytes
    reply = wire.decode(fast)
    assert type(reply) is m.ECMResponse and reply.encode() == fast and reply.CP_number == 9
    # anything else still comes back as outputs
    assert type(protocol.handle(m.ChannelTest(ECM_channel_id=1), clock.seconds(), clock.seconds())) is list


def test_no_write_through_on_a_transport_without_do_write():
    protocol, transport, _, _ = connect()  # a plain StringTransport: no ITCPTransport, no doWrite
    assert protocol.outbox.push is None
    setup_stream(protocol, transport)


def test_no_delay_on_a_real_socket():
    # what setTcpNoDelay does on the real transport: the option is on the socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    accepted, _ = server.accept()
    try:
        from twisted.internet import tcp

        assert not accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        tcp.Connection.setTcpNoDelay(type("T", (), {"socket": accepted})(), True)
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        for s in (client, accepted, server):
            s.close()
