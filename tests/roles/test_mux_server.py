"""MUX role adapters: StringTransport + task.Clock (UDPMemoryReactor), play-out sockets, logging."""

from __future__ import annotations

import errno
import socket

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from bcast_sp4 import wire
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxCore, RouteConfig, RouteKind
from bcast_sp4.roles.mux_server import MuxServer
from bcast_sp4.wire import emmg_mux as m


BSM, CARD = 0x00010001, 0x00020001


def make_server(**kw):
    clients = {
        BSM: ClientConfig(
            client_id=BSM,
            max_channels=2,
            routes={
                0x100: RouteConfig(kind=RouteKind.LTKM, data_id=0x100, destination=("127.0.0.1", 4359), ttl=3),
                1: RouteConfig(kind=RouteKind.STKM, data_id=1, destination=("239.255.0.1", 6001), ttl=7),
            },
        ),
        CARD: ClientConfig(
            client_id=CARD,
            routes={1: RouteConfig(kind=RouteKind.STKM, data_id=1, destination=("127.0.0.1", 6101), repetition_period=250)},
        ),
    }
    reactor = UDPMemoryReactor()
    reactor.advance(1000.0)
    core = MuxCore(MuxConfig(clients=clients, **kw))
    server = MuxServer(core, reactor, interface="127.0.0.1", max_message_length=wire.MAX_MESSAGE_LENGTH)
    server.play_out.startService()
    return reactor, server


def guarded_connection(limits):
    """A MUX server as ``bcast-mux`` builds it, under a guard of *limits* on its memory reactor, and
    one TCP connection to it on a StringTransport: ``(reactor, server, guard, protocol, transport)``."""
    from bcast_sp4.roles.guard import ConnectionGuard

    reactor, server = make_server()
    guard = ConnectionGuard(limits, reactor, role="MUX", server=True)
    server = MuxServer(server.core, reactor, interface="127.0.0.1", max_message_length=wire.MAX_MESSAGE_LENGTH,
                       guard=guard)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = server.factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return reactor, server, guard, protocol, transport


def egress(reactor, destination):
    (port,) = [p for p in reactor.udp if p.connected == destination]
    return port.socket


def connect(server, port=40000):
    protocol = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
    protocol.makeConnection(transport)
    return protocol, transport


def replies(transport):
    framer = wire.Framer()
    out = [wire.decode(f, wire.Interface.EMMG_MUX) for f in framer.feed(transport.value())]
    transport.clear()
    return out


def send(protocol, *messages, chunk=None):
    data = b"".join(msg.encode() for msg in messages)
    if chunk is None:
        protocol.dataReceived(data)
    else:
        for i in range(0, len(data), chunk):
            protocol.dataReceived(data[i : i + chunk])


IDS = dict(client_id=BSM, data_channel_id=1)


def open_ltkm_stream(protocol, transport, kbit=200):
    send(
        protocol,
        m.ChannelSetup(**IDS, section_TSpkt_flag=2),
        m.StreamSetup(**IDS, data_stream_id=1, data_id=0x100, data_type=0),
        m.StreamBWRequest(**IDS, data_stream_id=1, bandwidth=kbit),
        chunk=3,  # any chunking is legal on TCP
    )
    kinds = [type(r) for r in replies(transport)]
    assert kinds == [m.ChannelStatus, m.StreamStatus, m.StreamBWAllocation]


def test_play_out_sockets_are_connected_per_route_with_ttl():
    reactor, server = make_server()
    assert sorted(p.connected for p in reactor.udp) == [("127.0.0.1", 4359), ("127.0.0.1", 6101), ("239.255.0.1", 6001)]
    assert all(p.interface == "127.0.0.1" for p in reactor.udp)
    assert egress(reactor, ("127.0.0.1", 4359)).options[(socket.IPPROTO_IP, socket.IP_TTL)] == 3
    multicast = egress(reactor, ("239.255.0.1", 6001)).options
    assert multicast[(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL)] == 7
    assert multicast[(socket.IPPROTO_IP, socket.IP_MULTICAST_IF)] == socket.inet_aton("127.0.0.1")
    server.play_out.stopService()
    assert not any(p.listening for p in reactor.udp)


def test_ltkms_over_tcp_are_played_out_paced_by_the_clock():
    reactor, server = make_server(queue_datagrams=5000, overrun_limit=10**6)
    protocol, transport = connect(server)
    open_ltkm_stream(protocol, transport, kbit=200)
    ltkms = [k.to_bytes(2, "big") * 250 for k in range(600)]  # 500 bytes each, 12 s at 25000 bytes/s
    for chunk in range(0, 600, 50):
        send(protocol, *[m.DataProvision(**IDS, data_stream_id=1, data_id=0x100, datagram=(d,)) for d in ltkms[chunk:chunk + 50]])
    sock = egress(reactor, ("127.0.0.1", 4359))
    times = []
    start = reactor.seconds()
    while reactor.seconds() - start < 13.0:
        before = len(sock.sent)
        reactor.advance(0.003)
        times += [reactor.seconds() - start] * (len(sock.sent) - before)
    assert sock.sent == ltkms
    in_window = sum(1 for t in times if 1.0 < t <= 11.0) * 500
    assert abs(in_window * 8 / 10.0 - 200_000) / 200_000 < 0.01
    assert replies(transport) == []


def test_udp_data_provision_and_errors_reported_over_tcp():
    reactor, server = make_server()
    protocol, transport = connect(server)
    open_ltkm_stream(protocol, transport, kbit=1000)
    udp = server.udp_protocol
    udp.datagramReceived(m.DataProvision(client_id=BSM, data_id=0x100, datagram=(b"by udp",)).encode(), ("127.0.0.1", 5555))
    reactor.advance(0.1)
    assert egress(reactor, ("127.0.0.1", 4359)).sent == [b"by udp"]
    udp.datagramReceived(m.DataProvision(client_id=BSM, data_id=0x0999, datagram=(b"?",)).encode(), ("127.0.0.1", 5555))
    (report,) = replies(transport)
    assert isinstance(report, m.ChannelError) and report.error_status == (0x0010,)
    udp.datagramReceived(b"\x03\x02\x11\x00", ("127.0.0.1", 5555))  # truncated: nobody to tell, counted
    assert server.core.dropped == {"udp_unknown": 1, "udp_invalid": 1}


def test_egress_socket_errors_are_counted_and_logged():
    reactor, server = make_server()
    protocol, transport = connect(server)
    open_ltkm_stream(protocol, transport, kbit=1000)
    sock = egress(reactor, ("127.0.0.1", 4359))
    sock.fail = OSError(errno.ENOBUFS, "no buffer space")
    with capturedLogs() as events:
        send(protocol, m.DataProvision(**IDS, data_stream_id=1, data_id=0x100, datagram=(b"lost",)))
        reactor.advance(0.1)
    assert server.core.dropped == {"egress_error": 1}
    (event,) = [e for e in events if e.get("event") == "dropped"]
    assert event["reason"] == "egress_error" and event["error"] == "ENOBUFS" and event["log_level"].name == "warn"
    assert event["client_id"] == BSM and event["data_id"] == 0x100


def test_stkm_carousel_runs_on_the_reactor_clock_and_in_process_api():
    reactor, server = make_server()
    server.submit_stkm(CARD, 1, b"STKM-A")
    sock = egress(reactor, ("127.0.0.1", 6101))
    assert sock.sent == [b"STKM-A"]
    reactor.advance(0.25)
    reactor.advance(0.25)
    assert sock.sent == [b"STKM-A"] * 3
    server.submit_stkm(CARD, 1, b"STKM-B", on_air_from=reactor.seconds() + 0.1)
    reactor.advance(0.1)
    assert sock.sent[-1] == b"STKM-B"
    # the SCS's STKMSink interface: cp_number for its books, its ECM_rep_period honoured
    server.submit(CARD, 1, 7, b"STKM-C", reactor.seconds() + 0.05, 40)
    reactor.advance(0.05)
    count = len(sock.sent)
    reactor.advance(0.04)
    reactor.advance(0.04)
    assert sock.sent[count - 1 :] == [b"STKM-C"] * 3
    # over TCP: an SCS data client with data_type 0x02 on the ECM_id route
    protocol, transport = connect(server)
    send(
        protocol,
        m.ChannelSetup(**IDS, section_TSpkt_flag=2),
        m.StreamSetup(**IDS, data_stream_id=9, data_id=1, data_type=2),
        m.DataProvision(**IDS, data_stream_id=9, data_id=1, datagram=(b"DRM-STKM",)),
    )
    assert egress(reactor, ("239.255.0.1", 6001)).sent == [b"DRM-STKM"]


def test_connection_loss_frees_the_channel_and_logs_structured_fields():
    reactor, server = make_server()
    protocol, transport = connect(server)
    with capturedLogs() as events:
        open_ltkm_stream(protocol, transport)
        protocol.connectionLost(None)
    assert not server.core.channels and server.core.streams == 0
    opened = [e for e in events if e.get("event") == "stream_open"][0]
    assert (opened["client_id"], opened["data_id"], opened["stream_id"], opened["peer"]) == (BSM, 0x100, 1, "127.0.0.1:40000")
    assert [e for e in events if e.get("event") == "channel_closed"][0]["why"] == "connection_lost"
    # and a new connection of the same client is accepted
    protocol, transport = connect(server, 40001)
    open_ltkm_stream(protocol, transport)


def test_bad_bytes_get_the_emmg_code_and_repeated_ones_close_only_that_connection():
    reactor, server = make_server(max_invalid_messages=3)
    good, good_transport = connect(server, 40001)
    open_ltkm_stream(good, good_transport)
    bad, transport = connect(server, 40002)
    bad.dataReceived(bytes.fromhex("03" "0999" "0000"))  # unknown message_type
    (error,) = replies(transport)
    assert error.error_status == (0x0003,)
    bad.dataReceived(bytes.fromhex("09" "0011" "0000") + bytes.fromhex("03" "0999" "0000"))
    assert [r.error_status for r in replies(transport)] == [(0x0002,), (0x0003,)]
    assert transport.disconnecting and not good_transport.disconnecting
    send(good, m.ChannelTest(**IDS))
    assert isinstance(replies(good_transport)[0], m.ChannelStatus)


def test_stream_error_for_overrun_goes_to_the_tcp_connection_of_a_udp_stream():
    reactor, server = make_server(overrun_limit=2)
    protocol, transport = connect(server)
    open_ltkm_stream(protocol, transport, kbit=8)
    udp = server.udp_protocol
    for _ in range(6):
        udp.datagramReceived(m.DataProvision(client_id=BSM, data_id=0x100, datagram=(b"x" * 400,)).encode(), ("127.0.0.1", 1))
    errors = replies(transport)
    assert errors and all(isinstance(e, m.StreamError) and e.error_status == (0x000F,) for e in errors)


# -- the UDP fast path agrees with the codec ----------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bcast_sp4.roles.mux_server import parse_usual_udp  # noqa: E402
from tests.doubles import UDPMemoryReactor


def _codec_view(frame):
    try:
        message = wire.decode_datagram(frame)
    except wire.PeerProtocolError:
        return None
    if (
        type(message) is m.DataProvision
        and message.data_channel_id is None
        and message.data_stream_id is None
        and len(message.datagram) == 1
    ):
        return message.protocol_version, message.client_id, message.data_id, message.datagram[0]
    return "other"


@settings(max_examples=300, deadline=None)
@given(
    version=st.integers(2, 5),
    client_id=st.integers(0, 2**32 - 1),
    data_id=st.integers(0, 0xFFFF),
    datagrams=st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=3),
    ids=st.booleans(),
    flips=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3),
)
def test_usual_udp_shape_is_taken_apart_exactly_as_the_codec_does(version, client_id, data_id, datagrams, ids, flips):
    extra = dict(data_channel_id=1, data_stream_id=2) if ids else {}
    frame = bytearray(
        m.DataProvision(protocol_version=version, client_id=client_id, data_id=data_id, datagram=tuple(datagrams), **extra).encode()
    )
    for position, value in flips:  # corrupt a few bytes: the fast path must then agree or step aside
        if position < len(frame):
            frame[position] = value
    frame = bytes(frame)
    fast = parse_usual_udp(frame)
    if fast is not None:
        assert _codec_view(frame) == fast
    elif not ids and not flips and len(datagrams) == 1:
        raise AssertionError("the canonical shape must take the fast path")


def test_udp_fast_path_falls_back_for_errors_and_odd_shapes():
    reactor, server = make_server(udp_error_interval=0.0)
    protocol, transport = connect(server)
    open_ltkm_stream(protocol, transport, kbit=1000)
    udp = server.udp_protocol
    # a fast-path shape for a data_id without a stream: answered like any other (0x0010)
    udp.datagramReceived(m.DataProvision(client_id=BSM, data_id=0x0999, datagram=(b"?",)).encode(), ("127.0.0.1", 1))
    # an older version than the channel's (v3): 0x0002 from the full path
    udp.datagramReceived(m.DataProvision(protocol_version=2, client_id=BSM, data_id=0x100, datagram=(b"v2",)).encode(), ("127.0.0.1", 1))
    assert [r.error_status for r in replies(transport)] == [(0x0010,), (0x0002,)]
    assert server.core.counters["udp_messages"] == 2
