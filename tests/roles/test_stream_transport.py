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


class BufferingTransport:
    """What direct_writer reads of a Twisted FileDescriptor: its buffer fields and write (recorded)."""

    def __init__(self):
        self.connected, self.disconnecting = True, False
        self.dataBuffer, self.offset, self._tempDataLen = b"", 0, 0
        self.written: list[bytes] = []

    def write(self, data):
        self.written.append(data)
        self._tempDataLen += len(data)


def test_direct_writer_sends_while_nothing_is_buffered_and_keeps_the_order_once_something_is():
    from bcast_sp4.roles._stream import direct_writer

    ours, peer = socket.socketpair()
    try:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = BufferingTransport()
        send = direct_writer(transport, ours)
        send(b"first")
        assert transport.written == [] and peer.recv(100) == b"first"  # straight to the socket
        chunk, sent_direct = bytes(range(256)) * 64, 0  # 16 KiB a write: the socket fills up
        for _ in range(200):
            send(chunk)
            if transport.written:
                break
            sent_direct += len(chunk)
        assert transport.written, "the socket never filled up"
        rest = transport.written[0]
        assert 0 < len(rest) <= len(chunk) and chunk.endswith(rest)  # what the socket did not take
        send(b"later")  # buffered now: behind the rest, never before it
        assert transport.written == [rest, b"later"]
        received = bytearray()
        peer.settimeout(5)
        while len(received) < sent_direct + len(chunk) - len(rest):
            received += peer.recv(1 << 16)
        assert bytes(received) == chunk * (sent_direct // len(chunk)) + chunk[: len(chunk) - len(rest)]
        # a closing or gone transport is always written through its own write
        for field, value in (("disconnecting", True), ("connected", False)):
            fresh = BufferingTransport()
            setattr(fresh, field, value)
            direct_writer(fresh, ours)(b"x")
            assert fresh.written == [b"x"]
    finally:
        ours.close()
        peer.close()


def test_direct_writer_leaves_a_socket_error_to_the_transport():
    from bcast_sp4.roles._stream import direct_writer

    ours, peer = socket.socketpair()
    peer.close()
    ours.setblocking(False)
    try:
        transport = BufferingTransport()
        for _ in range(3):  # EPIPE / ECONNRESET: buffered, the transport's send reports the loss
            direct_writer(transport, ours)(b"reply")
        assert transport.written[-1] == b"reply"
    finally:
        ours.close()


def test_socket_writer_only_for_a_plain_tcp_connection():
    from twisted.internet import tcp

    from bcast_sp4.roles._stream import socket_writer

    assert socket_writer(TCPStringTransport()) is None  # a double: its doWrite push instead
    assert socket_writer(StringTransport()) is None
    ours, peer = socket.socketpair()
    try:
        for kind in (tcp.Server, tcp.Client):  # accepted (the ECMG, the MUX) and connected (the SCS)
            transport = object.__new__(kind)
            transport.socket, transport.dataBuffer, transport.offset, transport._tempDataLen = ours, b"", 0, 0
            transport.connected, transport.disconnecting = 1, False
            send = socket_writer(transport)
            assert send is not None
            send(b"ping")
            assert peer.recv(10) == b"ping"
            transport.write = lambda data: None  # a write wrapped on the transport (a capture): its own
            assert socket_writer(transport) is None
    finally:
        ours.close()
        peer.close()
