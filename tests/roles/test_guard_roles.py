"""The connection guard in the roles: ECMG and MUX adapters on StringTransport and Clock.

Fair turns (a pipelined burst is served over several turns, another connection is answered in
between, a CW_provision that waited past max_comp_time gets 0x000D), the timeouts, admission,
UDP allow-lists and the rate-limited, shortened logs, as ``bcast-ecmg`` / ``bcast-mux`` wire them.
"""

from __future__ import annotations

import ipaddress

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from bcast_sp4 import wire
from bcast_sp4.bcast import traffic
from bcast_sp4.bcast.ecm import STKMSource
from bcast_sp4.bcast.ecm_request import CasMode
from bcast_sp4.config import load_keyfile
from bcast_sp4.config.limits import Limits
from bcast_sp4.machines.ecmg import ECMGConfig, ECMGResources
from bcast_sp4.machines.mux import MuxCore
from bcast_sp4.roles.ecmg_server import ECMGFactory
from bcast_sp4.roles.guard import ConnectionGuard
from bcast_sp4.roles.mux_server import MuxServer
from bcast_sp4.wire import ecmg_scs as m
from bcast_sp4.wire import emmg_mux
from bcast_sp4.wire.errors import ECMGSCSErrorStatus
from bcast_sp4.wire.params import CPCWCombination as CW

from ..integration.harness import ROOT
from .test_guard import one_turn
from .test_mux_server import BSM, guarded_connection, make_server

KEYS = load_keyfile(ROOT / "etc" / "keys.example.toml")
DRM = 0x00010001


class ECMG:
    """An ECMG factory as ``bcast-ecmg`` builds it, with a guard of *limits* on a Clock."""

    def __init__(self, max_length: int = 4096, max_invalid_messages: int = 3, **limits) -> None:
        self.clock = Clock()
        self.clock.advance(1_750_000_000)  # inside the example keys' validity
        self.guard = ConnectionGuard(attrs.evolve(Limits(), **limits), self.clock, role="ECMG", server=True)
        resources = ECMGResources(ECMGConfig(cas_modes={DRM: CasMode.DRM_PROFILE},
                                             max_invalid_messages=max_invalid_messages))
        self.factory = ECMGFactory(resources, STKMSource(KEYS, {DRM: CasMode.DRM_PROFILE}), self.clock, max_length,
                                   guard=self.guard)

    def connect(self, host: str = "127.0.0.1", port: int = 40000):
        address = IPv4Address("TCP", host, port)
        protocol = self.factory.buildProtocol(address)
        if protocol is None:
            return None, None
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport


def replies(transport, interface=wire.Interface.ECMG_SCS):
    out = [wire.decode(f, interface) for f in wire.Framer().feed(transport.value())]
    transport.clear()
    return out


def cw_provision(cp: int) -> m.CWProvision:
    tek = traffic.encode_cw(traffic.generate(traffic.TrafficProtection.ISMACRYP))
    return m.CWProvision(ECM_channel_id=1, ECM_stream_id=1, CP_number=cp, CP_CW_combination=(CW(cp, tek), CW(cp + 1, tek)))


def open_stream(protocol, transport) -> None:
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode()
                          + m.StreamSetup(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=20).encode())
    assert [type(r) for r in replies(transport)] == [m.ChannelStatus, m.StreamStatus]


def test_a_pipelined_burst_is_served_over_turns_and_another_channel_in_between():
    ecmg = ECMG(messages_per_turn=64)
    hog, hog_transport = ecmg.connect(port=40001)
    hog.dataReceived(m.ChannelSetup(ECM_channel_id=2, Super_CAS_id=DRM).encode())
    replies(hog_transport)
    other, other_transport = ecmg.connect(port=40002)
    open_stream(other, other_transport)

    hog.dataReceived(m.ChannelTest(ECM_channel_id=2).encode() * 200)
    assert len(replies(hog_transport)) == 64
    assert hog_transport.producerState == "paused"
    other.dataReceived(cw_provision(5).encode())  # the other channel is served before the hog's rest
    assert [type(r) for r in replies(other_transport)] == [m.ECMResponse]
    counts = []
    for _ in range(3):
        one_turn(ecmg.clock)
        counts.append(len(replies(hog_transport)))
    assert counts == [64, 64, 8]
    assert hog_transport.producerState == "producing"
    assert ecmg.guard.counters["deferred_turns"] == 3


def test_a_big_read_is_framed_a_slice_per_step_in_order():
    ecmg = ECMG(messages_per_turn=1000, max_invalid_messages=0)
    protocol, transport = ecmg.connect()
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode())
    replies(transport)
    tests = b"".join(m.StreamTest(ECM_channel_id=1, ECM_stream_id=s).encode() for s in range(1, 1001))
    protocol.dataReceived(tests + m.ChannelTest(ECM_channel_id=1).encode())  # 14 KB in one read
    first = replies(transport)
    assert 0 < len(first) < 1000  # only the first 8 KiB were framed in this turn
    assert transport.producerState == "paused"
    ecmg.clock.advance(0)
    rest = replies(transport)
    answers = first + rest
    assert len(answers) == 1001 and isinstance(answers[-1], m.ChannelStatus)
    assert [a.ECM_stream_id for a in answers[:-1]] == list(range(1, 1001))  # unknown streams: stream_error each, in order
    assert transport.producerState == "producing" and ecmg.guard.buffered_total == 0


def test_a_close_asked_by_the_machine_drops_the_backlog():
    ecmg = ECMG(messages_per_turn=10, max_invalid_messages=3)
    protocol, transport = ecmg.connect()
    protocol.dataReceived(m.StreamTest(ECM_channel_id=9, ECM_stream_id=1).encode() * 100)
    assert len(replies(transport)) == 3 and transport.disconnecting  # 3 invalid in a row: closed
    ecmg.clock.advance(0)
    assert replies(transport) == [] and ecmg.guard.buffered_total == 0
    protocol.connectionLost(None)
    assert ecmg.guard.connections == 0


def test_a_cw_provision_that_waited_past_max_comp_time_is_answered_0x000D():
    ecmg = ECMG(messages_per_turn=4)
    protocol, transport = ecmg.connect()
    open_stream(protocol, transport)
    protocol.dataReceived(m.ChannelTest(ECM_channel_id=1).encode() * 4 + cw_provision(7).encode())
    assert len(replies(transport)) == 4
    ecmg.clock.advance(0.25)  # other connections held the reactor for 250 ms (max_comp_time: 100 ms)
    (late,) = replies(transport)
    assert isinstance(late, m.StreamError) and late.error_status == (ECMGSCSErrorStatus.OUT_OF_COMPUTATIONAL_RESOURCES,)
    protocol.dataReceived(cw_provision(8).encode())  # on time again
    assert [type(r) for r in replies(transport)] == [m.ECMResponse]



def test_late_answers_do_not_close_the_channel():
    """0x000D is the ECMG's lateness, not the SCS's fault: five in a row (max_invalid_messages 3) keep the channel."""
    ecmg = ECMG(messages_per_turn=1, max_invalid_messages=3)
    protocol, transport = ecmg.connect()
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode())
    protocol.dataReceived(m.StreamSetup(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=20).encode())
    assert [type(r) for r in replies(transport)] == [m.ChannelStatus, m.StreamStatus]
    protocol.dataReceived(m.ChannelTest(ECM_channel_id=1).encode() + b"".join(cw_provision(cp).encode() for cp in range(5)))
    replies(transport)
    for _ in range(5):
        ecmg.clock.rightNow += 0.15  # the turns come 150 ms apart: each CW_provision waited past 100 ms
        one_turn(ecmg.clock)
    late = replies(transport)
    assert [r.error_status for r in late] == [(ECMGSCSErrorStatus.OUT_OF_COMPUTATIONAL_RESOURCES,)] * 5
    assert not transport.disconnecting


def test_no_channel_setup_in_30_s_closes_and_the_count_goes_back():
    ecmg = ECMG()
    protocol, transport = ecmg.connect()
    assert ecmg.guard.connections == 1
    ecmg.clock.advance(29)
    assert not transport.disconnecting
    ecmg.clock.advance(1.5)
    assert transport.disconnecting and ecmg.guard.counters["closed_no_channel"] == 1
    protocol.connectionLost(None)
    assert ecmg.guard.connections == 0


def test_a_half_sent_message_is_dropped_after_10_s():
    ecmg = ECMG()
    protocol, transport = ecmg.connect()
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode())
    replies(transport)
    protocol.dataReceived(bytes([3, 0x02, 0x01, 0x03, 0xE8]) + bytes(10))  # claims 1,000 bytes, sends 10
    assert ecmg.guard.buffered_total == 15
    ecmg.clock.advance(9)
    protocol.dataReceived(bytes(10))  # trickling does not restart the clock
    ecmg.clock.advance(1.5)
    assert transport.disconnecting and ecmg.guard.counters["closed_message_timeout"] == 1
    assert replies(transport) == []  # no reply for it, the connection is simply dropped
    protocol.connectionLost(None)
    assert ecmg.guard.buffered_total == 0


def test_an_idle_channel_is_tested_then_closed_when_silent():
    ecmg = ECMG(idle_timeout=60.0, channel_test_timeout=10.0)
    protocol, transport = ecmg.connect()
    open_stream(protocol, transport)
    ecmg.clock.advance(60.5)
    (test,) = replies(transport)
    assert test == m.ChannelTest(protocol_version=test.protocol_version, ECM_channel_id=1)
    protocol.dataReceived(m.ChannelStatus(**_status_fields()).encode())  # the SCS answers
    ecmg.clock.advance(30)
    assert not transport.disconnecting
    ecmg.clock.advance(31)
    assert isinstance(replies(transport)[0], m.ChannelTest)
    ecmg.clock.advance(10.5)
    assert transport.disconnecting and ecmg.guard.counters["closed_idle"] == 1


def _status_fields() -> dict:
    return dict(ECM_channel_id=1, section_TSpkt_flag=2, delay_start=0, delay_stop=0, ECM_rep_period=100,
                max_streams=0, min_CP_duration=1, lead_CW=1, CW_per_msg=2, max_comp_time=100)


def test_max_connections_counts_connections_without_a_channel():
    ecmg = ECMG(max_connections=2)
    first, _ = ecmg.connect(port=1)
    second, _ = ecmg.connect(port=2)
    assert ecmg.connect(port=3) == (None, None)
    first.connectionLost(None)
    third, _ = ecmg.connect(port=4)
    assert third is not None and ecmg.guard.counters["refused_max_connections"] == 1


def test_the_allow_list_refuses_before_any_protocol_exists():
    ecmg = ECMG(allow=(ipaddress.ip_network("10.0.0.0/8"),))
    assert ecmg.connect("127.0.0.1") == (None, None)
    assert ecmg.connect("10.1.1.1")[0] is not None
    assert ecmg.guard.connections == 1


def test_a_flood_of_invalid_messages_logs_a_few_lines_and_one_summary():
    ecmg = ECMG(max_invalid_messages=0, log_burst=5, log_window=10.0)
    protocol, transport = ecmg.connect()
    with capturedLogs() as events:
        for _ in range(20):
            protocol.dataReceived(m.StreamTest(ECM_channel_id=9, ECM_stream_id=1).encode() * 50)
            ecmg.clock.advance(0)
        assert len(replies(transport)) == 1000  # every one answered
        ecmg.clock.advance(10)
    warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 6, warnings
    assert warnings[-1] == ("... and 995 more invalid messages and peer errors from 127.0.0.1:40000 "
                            "in the last 10 s")


def test_a_stream_error_with_10000_statuses_is_one_short_line():
    ecmg = ECMG(max_length=wire.MAX_MESSAGE_LENGTH)
    protocol, transport = ecmg.connect()
    open_stream(protocol, transport)
    error = m.StreamError(ECM_channel_id=1, ECM_stream_id=1, error_status=tuple([0x7000] * 10_000))
    with capturedLogs() as events:
        protocol.dataReceived(error.encode())
        ecmg.clock.advance(0)  # 60 KB: framed 8 KiB per step, over the next turns
    lines = [formatEvent(e) for e in events if "error" in formatEvent(e)]
    assert len(lines) == 1 and len(lines[0]) < 400, lines
    assert "9,992 more" in lines[0]


def test_the_mux_tests_an_idle_channel_with_its_client_id_and_checks_udp_sources():
    limits = attrs.evolve(Limits(), idle_timeout=5.0, udp_allow=(ipaddress.ip_network("192.0.2.0/24"),))
    reactor, server, guard, protocol, transport = guarded_connection(limits)
    protocol.dataReceived(emmg_mux.ChannelSetup(client_id=BSM, data_channel_id=3, section_TSpkt_flag=2,
                                                protocol_version=3).encode())
    assert [type(r) for r in replies(transport, wire.Interface.EMMG_MUX)] == [emmg_mux.ChannelStatus]
    reactor.advance(5.5)
    (test,) = replies(transport, wire.Interface.EMMG_MUX)
    assert isinstance(test, emmg_mux.ChannelTest) and (test.client_id, test.data_channel_id) == (BSM, 3)
    datagram = emmg_mux.DataProvision(client_id=BSM, data_id=0x100, datagram=(b"LTKM",), protocol_version=3).encode()
    server.udp_protocol.datagramReceived(datagram, ("127.0.0.1", 5555))
    assert guard.counters["udp_refused_address"] == 1


def test_mux_core_is_untouched_by_a_refused_datagram():
    reactor, plain = make_server()
    guard = ConnectionGuard(attrs.evolve(Limits(), udp_allow=(ipaddress.ip_network("10.0.0.0/8"),)), reactor,
                            role="MUX", server=True)
    core = MuxCore(plain.core.config)
    server = MuxServer(core, reactor, interface="127.0.0.1", max_message_length=wire.MAX_MESSAGE_LENGTH, guard=guard)
    with capturedLogs() as events:
        for _ in range(100):
            server.udp_protocol.datagramReceived(b"\x03\x02\x11\x00\x00", ("127.0.0.1", 5555))
    assert guard.counters["udp_refused_address"] == 100
    assert len([e for e in events if e["log_level"] == LogLevel.warn]) == 5


class RealSocketTimeoutsTest(TestCase):
    """A few real loopback connections to the ECMG ``bcast-ecmg`` builds: idle and half-sent ones
    are closed by the timeouts and every count and byte goes back (bounded waits, no timing asserted)."""

    async def test_idle_and_half_sent_connections_are_closed(self):
        from twisted.internet import reactor
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
        from twisted.internet.protocol import Factory, Protocol
        from twisted.internet.task import deferLater

        from bcast_sp4.config import load_ecmg_settings
        from bcast_sp4.tap.ecmg import build_service

        settings = load_ecmg_settings(ROOT / "etc" / "ecmg.toml")
        # the half-sent ones hit the message timeout long before the channel timeout
        limits = attrs.evolve(settings.limits, first_channel_setup_timeout=5.0, message_timeout=0.2)
        top = build_service(attrs.evolve(settings, limits=limits), KEYS, reactor)
        guard = top.factory.guard
        self.addCleanup(guard.stop)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(top.factory)
        self.addCleanup(port.stopListening)
        lost = []

        class Peer(Protocol):
            def __init__(self, payload: bytes) -> None:
                self.payload = payload

            def connectionMade(self) -> None:
                if self.payload:
                    self.transport.write(self.payload)

            def connectionLost(self, reason) -> None:
                lost.append(self.payload)

        half = bytes([3, 0x02, 0x01, 0xFF, 0xFF]) + bytes(1000)  # claims 65,535 bytes, sends 1,000
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        for payload in (b"", b"", b"", half, half, half):
            await endpoint.connect(Factory.forProtocol(lambda p=payload: Peer(p)))
        for _ in range(3000):  # 60 s at most on a busy machine
            if len(lost) == 6 and guard.connections == 0:
                break
            await deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(sorted(lost), [b"", b"", b"", half, half, half])
        self.assertEqual((guard.counters["closed_no_channel"], guard.counters["closed_message_timeout"]), (3, 3))
        self.assertEqual((guard.connections, guard.buffered_total), (0, 0))
