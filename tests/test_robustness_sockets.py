"""Issue #13 on real loopback sockets (trial on the real reactor): UDP identity and STKM amplification.

* The issue's forged UDP data_provision (client_id 0x00010001, data_id 0x0100, "INJECTED") sent
  from an unrelated socket (127.0.0.2) while the client's TCP channel comes from 127.0.0.1 is
  dropped and counted; nothing is emitted and nothing reaches the real client's TCP connection.
  The same bytes from the client's own address are emitted.
* The issue's amplification message (one data_provision of 10,000 one-byte STKM datagrams) is
  answered with stream_error 0x0004 and the STKM route keeps emitting its current STKM at its
  repetition period, not 100,000 datagrams a second.

Every wait is bounded (polled every 10 ms) and every port is closed at the end.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bcast_sp4 import wire
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxCore, RouteConfig, RouteKind
from bcast_sp4.roles.mux_server import MuxServer
from bcast_sp4.wire import emmg_mux as m

BSM = 0x00010001
FORGED = bytes.fromhex("030211001a000100040001000100080002010000050008494e4a4543544544")  # the issue's datagram
IDS = dict(protocol_version=3, client_id=BSM, data_channel_id=1)


async def wait_for(predicate, timeout: float, what: str) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Receiver(DatagramProtocol):
    noisy = False

    def __init__(self) -> None:
        self.got: list[tuple[float, bytes]] = []

    def datagramReceived(self, data: bytes, addr) -> None:
        self.got.append((reactor.seconds(), data))


class Sender(DatagramProtocol):
    noisy = False


class Client(Protocol):
    """A test EMMG's TCP control connection: collects decoded replies."""

    def __init__(self) -> None:
        self.framer = wire.Framer()
        self.replies: list = []
        self.lost = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.replies += [wire.decode(f, wire.Interface.EMMG_MUX) for f in self.framer.feed(data)]

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)

    def send(self, *messages) -> None:
        self.transport.write(b"".join(msg.encode() for msg in messages))


class Lab:
    def __init__(self, test: TestCase) -> None:
        self.ltkm_rx, self.stkm_rx = Receiver(), Receiver()
        self.rx_ports = [reactor.listenUDP(0, r, interface="127.0.0.1") for r in (self.ltkm_rx, self.stkm_rx)]
        ltkm_port, stkm_port = (p.getHost().port for p in self.rx_ports)
        routes = {
            0x0100: RouteConfig(kind=RouteKind.LTKM, data_id=0x0100, destination=("127.0.0.1", ltkm_port)),
            1: RouteConfig(kind=RouteKind.STKM, data_id=1, destination=("127.0.0.1", stkm_port), repetition_period=100),
        }
        config = MuxConfig(clients={BSM: ClientConfig(client_id=BSM, routes=routes)}, unthrottled=True)
        self.mux = MuxServer(MuxCore(config), reactor, interface="127.0.0.1", max_message_length=wire.MAX_MESSAGE_LENGTH)
        self.mux.play_out.startService()
        self.tcp = reactor.listenTCP(0, self.mux.factory, interface="127.0.0.1")
        self.udp = reactor.listenUDP(0, self.mux.udp_protocol, interface="127.0.0.1", maxPacketSize=65536)
        self.senders = {host: reactor.listenUDP(0, Sender(), interface=host) for host in ("127.0.0.1", "127.0.0.2")}
        self.client: Client | None = None

    @property
    def udp_address(self):
        return ("127.0.0.1", self.udp.getHost().port)

    async def connect(self) -> Client:
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        self.client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp.getHost().port), Client())
        self.client.send(
            m.ChannelSetup(**IDS, section_TSpkt_flag=2),
            m.StreamSetup(**IDS, data_stream_id=1, data_id=0x0100, data_type=0),
            m.StreamSetup(**IDS, data_stream_id=2, data_id=1, data_type=2),
        )
        await wait_for(lambda: len(self.client.replies) >= 3, 5.0, "channel and stream status")
        assert [type(r) for r in self.client.replies] == [m.ChannelStatus, m.StreamStatus, m.StreamStatus]
        self.client.replies.clear()
        return self.client

    async def round_trip(self) -> None:
        """A channel_test answered: the MUX has handled everything sent before it on TCP."""
        before = len(self.client.replies)
        self.client.send(m.ChannelTest(**IDS))
        await wait_for(lambda: len(self.client.replies) > before, 5.0, "channel_status")

    async def close(self) -> None:
        if self.client is not None:
            self.client.transport.loseConnection()
            await self.client.lost
        await wait_for(lambda: not self.mux.play_out.protocols, 5.0, "MUX connections to close")
        for port in [self.tcp, self.udp, *self.senders.values(), *self.rx_ports]:
            await port.stopListening()
        self.mux.play_out.stopService()


class UdpIdentityTests(TestCase):
    timeout = 60

    async def test_the_issue_forged_datagram_from_an_unrelated_socket_is_dropped_and_never_reported(self):
        lab = Lab(self)
        try:
            await lab.connect()
            core = lab.mux.core
            lab.senders["127.0.0.2"].write(FORGED, lab.udp_address)
            # forged and malformed ones naming the client: unknown data_id, a message UDP never carries
            lab.senders["127.0.0.2"].write(
                m.DataProvision(protocol_version=3, client_id=BSM, data_id=0x0999, datagram=(b"?",)).encode(), lab.udp_address)
            lab.senders["127.0.0.2"].write(m.ChannelTest(**IDS).encode(), lab.udp_address)
            await wait_for(lambda: core.counters["udp_messages"] >= 3, 5.0, "the forged datagrams at the MUX")
            await lab.round_trip()
            await deferLater(reactor, 0.2, lambda: None)
            self.assertEqual(lab.ltkm_rx.got, [])
            self.assertEqual(core.dropped.get("udp_source"), 3)
            self.assertEqual([type(r) for r in lab.client.replies], [m.ChannelStatus])  # no error reported
            # the same bytes from the client's own address are its data
            lab.senders["127.0.0.1"].write(FORGED, lab.udp_address)
            await wait_for(lambda: lab.ltkm_rx.got, 5.0, "the client's UDP datagram emitted")
            self.assertEqual([d for _t, d in lab.ltkm_rx.got], [b"INJECTED"])
        finally:
            await lab.close()

    async def test_the_issue_amplification_message_is_refused_and_the_route_repeats_at_its_period(self):
        lab = Lab(self)
        try:
            client = await lab.connect()
            client.send(m.DataProvision(**IDS, data_stream_id=2, data_id=1, datagram=(b"STKM n",)))
            client.send(m.DataProvision(**IDS, data_stream_id=2, data_id=1, datagram=(b"x",) * 10_000))
            await wait_for(lambda: client.replies, 5.0, "the stream_error")
            (error,) = client.replies
            self.assertIsInstance(error, m.StreamError)
            self.assertEqual((error.data_stream_id, error.error_status), (2, (0x0004,)))
            client.replies.clear()
            start = reactor.seconds()
            await deferLater(reactor, 1.0, lambda: None)
            window = [d for t, d in lab.stkm_rx.got if start <= t]
            self.assertEqual(set(window), {b"STKM n"})
            self.assertLessEqual(len(window), 12)  # one copy per 100 ms (a loaded machine may emit fewer)
            self.assertEqual(lab.mux.core.dropped["stkm_limit"], 10_000)
        finally:
            await lab.close()


class BrokenSource:
    """The issue's bug, generalised: the real ECM source, raising struct.error for some ECM_ids."""

    def __init__(self, real, broken: set[int]) -> None:
        self.real, self.broken = real, broken

    def check_stream(self, super_cas_id, ecm_id, now):
        return self.real.check_stream(super_cas_id, ecm_id, now)

    def generate(self, request):
        if request.ECM_id in self.broken:
            import struct

            struct.pack(">B", 256)  # raises struct.error, as build_dvb_ecm did for a 256-byte CW
        return self.real.generate(request)


class EcmgInternalErrorTests(TestCase):
    """An ECM source raising an unforeseen exception, over a real loopback TCP connection."""

    timeout = 60

    async def test_the_stream_gets_0x7000_and_the_channel_and_other_stream_stay_up(self):
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        from bcast_sp4.bcast.ecm import STKMSource
        from bcast_sp4.bcast.ecm_request import CasMode
        from bcast_sp4.bcast.traffic import TrafficProtection, encode_cw, generate
        from bcast_sp4.config import load_keyfile
        from bcast_sp4.machines.ecmg import ECMGConfig, ECMGResources
        from bcast_sp4.roles.ecmg_server import ECMGFactory
        from bcast_sp4.wire import ecmg_scs as e
        from bcast_sp4.wire.params import CPCWCombination as CW

        drm = 0x00010001
        keys = load_keyfile(Path(__file__).resolve().parents[1] / "etc" / "keys.example.toml")
        source = BrokenSource(STKMSource(keys, {drm: CasMode.DRM_PROFILE}), {2})
        factory = ECMGFactory(ECMGResources(ECMGConfig(cas_modes={drm: CasMode.DRM_PROFILE})), source, reactor,
                              wire.MAX_MESSAGE_LENGTH)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")

        class ScsClient(Client):
            def dataReceived(self, data: bytes) -> None:
                self.replies += [wire.decode(f, wire.Interface.ECMG_SCS) for f in self.framer.feed(data)]

        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), ScsClient())
        try:
            client.send(e.ChannelSetup(ECM_channel_id=1, Super_CAS_id=drm),
                        *[e.StreamSetup(ECM_channel_id=1, ECM_stream_id=s, ECM_id=s, nominal_CP_duration=20) for s in (1, 2)])
            await wait_for(lambda: len(client.replies) >= 3, 5.0, "set-up replies")
            self.assertEqual([type(r) for r in client.replies], [e.ChannelStatus, e.StreamStatus, e.StreamStatus])
            client.replies.clear()
            cw = encode_cw(generate(TrafficProtection.SRTP, mki=b"\x00\x00\x00\x01"))
            for cp in range(1, 5):  # more failures than max_invalid_messages: still no close
                for stream_id in (2, 1):
                    client.send(e.CWProvision(ECM_channel_id=1, ECM_stream_id=stream_id, CP_number=cp,
                                              CP_CW_combination=(CW(cp, cw), CW(cp + 1, cw))))
            await wait_for(lambda: len(client.replies) >= 8, 10.0, "eight replies")
            errors = [r for r in client.replies if isinstance(r, e.StreamError)]
            ecms = [r for r in client.replies if isinstance(r, e.ECMResponse)]
            self.assertEqual([(r.ECM_stream_id, r.error_status) for r in errors], [(2, (0x7000,))] * 4)
            self.assertEqual([(r.ECM_stream_id, r.CP_number) for r in ecms], [(1, cp) for cp in range(1, 5)])
            client.send(e.ChannelTest(ECM_channel_id=1))
            await wait_for(lambda: isinstance(client.replies[-1], e.ChannelStatus), 5.0, "channel_status")
        finally:
            client.transport.loseConnection()
            await client.lost
            await port.stopListening()
