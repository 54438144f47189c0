"""A classic DVB EMMG feeds the MUX on real loopback sockets; its capture matches what comes out.

The test's own classic EMMG (written here with the wire codec, not the project's EMMG) runs five
sessions against a MUX loaded from a configuration file with a ``section_TSpkt_flags = [0, 1, 2]``
client: TS packets (flag 1) and sections (flag 0, several sections per datagram and several
datagrams per data_provision), protocol versions 2 and 3, data over TCP and over UDP, plus a v1
session carrying data_id (the tolerated deviation). Every byte it sends and receives is written to a
pcap (:class:`~bcast_sp4.tools.capture.PcapWriter`); the capture is then read back with the
project's capture reader, and the datagrams of its data_provisions must be exactly, byte for byte
and in order, the UDP payloads received at the two destinations. A datagram that is not whole TS
packets is refused with stream_error 0x000D and never reaches a destination.

Every wait is bounded; every port and connection is closed.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bcast_sp4 import wire
from bcast_sp4.config.mux import load_mux_settings
from bcast_sp4.machines.mux import MuxCore
from bcast_sp4.roles.mux_server import MuxServer
from bcast_sp4.tools.capture import PcapWriter, TcpFlow, TcpReassembler, read_packets
from bcast_sp4.wire import emmg_mux as m

from ..tshark_json import problems

CLIENT = 0x4ADC0001
TS_ID, SECTIONS_ID = 1, 2
TOLERATE = frozenset({wire.Deviation.V1_DATA_ID})
MUX_TCP, MUX_UDP = ("127.0.0.1", 5010), ("127.0.0.1", 5010)  # the ports as written in the capture


def ts_datagram(rng: random.Random) -> bytes:
    return b"".join(b"\x47" + rng.randbytes(187) for _ in range(rng.randint(1, 7)))


def section(rng: random.Random) -> bytes:
    length = rng.randint(8, 1000)
    return bytes([0x82, 0x70 | (length >> 8), length & 0xFF]) + rng.randbytes(length)


def sections_datagram(rng: random.Random) -> bytes:
    return b"".join(section(rng) for _ in range(rng.randint(1, 4)))


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class Receiver(DatagramProtocol):
    noisy = False

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagramReceived(self, data: bytes, addr) -> None:
        self.got.append(data)


class Sender(DatagramProtocol):
    noisy = False


class ClassicEMMG(Protocol):
    """The test's classic EMMG: sends what the script says, records both directions in order."""

    def __init__(self, events: list, session: int) -> None:
        self.events, self.session = events, session
        self.framer = wire.Framer()
        self.inbox: list[wire.Message] = []

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("tcp", self.session, "s", bytes(data)))
        for frame in self.framer.feed(data):
            self.inbox.append(wire.decode(frame, wire.Interface.EMMG_MUX, tolerate=TOLERATE))

    def send(self, message: wire.Message, *, v1_with_data_id: bool = False) -> None:
        data = message.encode()
        if v1_with_data_id:  # what the deviating EMMG does: v2 parameters, version byte 1
            data = b"\x01" + data[1:]
        self.events.append(("tcp", self.session, "c", data))
        self.transport.write(data)

    async def expect(self, cls: type) -> wire.Message:
        await wait_for(lambda: any(isinstance(x, cls) for x in self.inbox), 5.0, cls.NAME)
        found = next(x for x in self.inbox if isinstance(x, cls))
        self.inbox.remove(found)
        return found


class ClassicEMMGTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.receivers = {TS_ID: Receiver(), SECTIONS_ID: Receiver()}
        self.receiver_ports = {k: reactor.listenUDP(0, r, interface="127.0.0.1") for k, r in self.receivers.items()}
        folder = Path(tempfile.mkdtemp(prefix="bcast-classic-"))
        config = folder / "mux.toml"
        config.write_text(f"""
[mux]
endpoint = "tcp:0:interface=127.0.0.1"
versions = [1, 2, 3]
[[client]]
client_id = {CLIENT:#010x}
section_TSpkt_flags = [0, 1, 2]
max_bandwidth = 20000
[[client.data]]
data_id = {TS_ID}
destination = "127.0.0.1:{self.receiver_ports[TS_ID].getHost().port}"
max_bandwidth = 8000
[[client.data]]
data_id = {SECTIONS_ID}
destination = "127.0.0.1:{self.receiver_ports[SECTIONS_ID].getHost().port}"
data_type = 1
max_bandwidth = 8000
""")
        self.capture = folder / "classic-emmg.pcap"
        settings = load_mux_settings(config)
        self.core = MuxCore(settings.mux)
        self.mux = MuxServer(self.core, reactor, interface=settings.egress_interface,
                             max_message_length=settings.max_message_length)
        self.mux.play_out.startService()
        self.tcp_port = reactor.listenTCP(0, self.mux.factory, interface="127.0.0.1")
        self.udp_port = reactor.listenUDP(0, self.mux.udp_protocol, interface="127.0.0.1")
        self.sender_port = reactor.listenUDP(0, Sender(), interface="127.0.0.1")
        self.sender_port.connect("127.0.0.1", self.udp_port.getHost().port)
        self.events: list = []

    async def tearDown(self) -> None:
        await self.tcp_port.stopListening()
        for protocol in list(self.mux.play_out.protocols.values()):
            protocol.transport.loseConnection()
        await wait_for(lambda: not self.mux.play_out.protocols, 5.0, "MUX connections to close")
        await self.udp_port.stopListening()
        await self.sender_port.stopListening()
        self.mux.play_out.stopService()
        for port in self.receiver_ports.values():
            await port.stopListening()

    async def _session(self, number: int, *, version: int, flag: int, data_id: int, udp: bool,
                       messages: list[tuple[bytes, ...]], v1_with_data_id: bool = False) -> None:
        ids = {"protocol_version": version, "client_id": CLIENT, "data_channel_id": number}
        deviant = {"v1_with_data_id": v1_with_data_id}
        wire_version = 2 if v1_with_data_id else version
        wide = {**ids, "protocol_version": wire_version}
        done = Factory.forProtocol(lambda: ClassicEMMG(self.events, number))
        client: ClassicEMMG = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port.getHost().port).connect(done)
        self.events.append(("open", number, "", b""))
        client.send(m.ChannelSetup(**ids, section_TSpkt_flag=flag))
        status = await client.expect(m.ChannelStatus)
        self.assertEqual(status.section_TSpkt_flag, flag)
        data_type = 1 if data_id == SECTIONS_ID else 0
        client.send(m.StreamSetup(**wide, data_stream_id=1, data_id=data_id, data_type=data_type), **deviant)
        await client.expect(m.StreamStatus)
        client.send(m.StreamBWRequest(**ids, data_stream_id=1, bandwidth=8000))
        self.assertEqual((await client.expect(m.StreamBWAllocation)).bandwidth, 8000)
        receiver = self.receivers[data_id]
        expected = len(receiver.got) + sum(len(d) for d in messages)
        for datagrams in messages:
            if udp:
                data = m.DataProvision(protocol_version=version, client_id=CLIENT, data_id=data_id,
                                       datagram=datagrams).encode()
                self.events.append(("udp", number, "c", data))
                self.sender_port.write(data)
            else:
                client.send(m.DataProvision(**wide, data_stream_id=1, data_id=data_id, datagram=datagrams), **deviant)
            await deferLater(reactor, 0.002, lambda: None)  # a generator's pace; the MUX paces egress itself
        await wait_for(lambda: len(receiver.got) >= expected, 10.0, f"{expected} datagrams at data_id {data_id}")
        client.send(m.StreamCloseRequest(**ids, data_stream_id=1))
        await client.expect(m.StreamCloseResponse)
        client.send(m.ChannelClose(**ids))
        client.transport.loseConnection()
        self.events.append(("close", number, "", b""))
        await wait_for(lambda: not self.mux.play_out.protocols, 5.0, "the session's connection to close")

    def _write_capture(self) -> None:
        with open(self.capture, "wb") as f:
            writer = PcapWriter(f)
            flows: dict[int, TcpFlow] = {}
            for transport, session, side, data in self.events:
                if transport == "open":
                    flows[session] = TcpFlow(writer, ("127.0.0.1", 41000 + session), MUX_TCP)
                    flows[session].handshake()
                elif transport == "close":
                    flows[session].close()
                elif transport == "udp":
                    writer.write_udp(("127.0.0.1", 42000), MUX_UDP, data)
                elif side == "c":
                    flows[session].send(data)
                else:
                    flows[session].reply(data)

    def _datagrams_in_capture(self) -> tuple[dict[int, list[bytes]], int]:
        """data_id -> the datagrams of the client's data_provisions, in capture order; and how many
        data_provisions the capture holds."""
        reassembler = TcpReassembler()
        framers: dict[tuple, wire.Framer] = {}
        out: dict[int, list[bytes]] = {TS_ID: [], SECTIONS_ID: []}
        provisions = 0
        for segment in read_packets(self.capture):
            if segment.transport == "udp":
                frames = [segment.payload]
            else:
                frames = []
                for key, data in reassembler.feed(segment):
                    if key[1] == MUX_TCP:  # client -> MUX
                        frames += framers.setdefault(key, wire.Framer()).feed(data)
            for frame in frames:
                message = wire.decode(frame, wire.Interface.EMMG_MUX, tolerate=TOLERATE)
                if isinstance(message, m.DataProvision):
                    provisions += 1
                    out[message.data_id if message.data_id is not None else TS_ID] += message.datagram
        return out, provisions

    async def test_a_classic_emmg_capture_is_delivered_byte_identical(self):
        rng = random.Random(10)
        ts = lambda n: [tuple(ts_datagram(rng) for _ in range(rng.randint(1, 3))) for _ in range(n)]  # noqa: E731
        secs = lambda n: [tuple(sections_datagram(rng) for _ in range(rng.randint(2, 4))) for _ in range(n)]  # noqa: E731
        await self._session(1, version=2, flag=1, data_id=TS_ID, udp=False, messages=ts(12))
        await self._session(2, version=3, flag=0, data_id=SECTIONS_ID, udp=True, messages=secs(12))
        await self._session(3, version=3, flag=1, data_id=TS_ID, udp=True, messages=ts(12))
        await self._session(4, version=2, flag=0, data_id=SECTIONS_ID, udp=False, messages=secs(12))
        await self._session(5, version=1, flag=1, data_id=TS_ID, udp=False, messages=ts(6), v1_with_data_id=True)
        self._write_capture()
        captured, provisions = self._datagrams_in_capture()
        self.assertEqual(provisions, 54)
        self.assertGreater(sum(len(d) > 1 for d in captured.values()), 1)
        self.assertEqual(self.receivers[TS_ID].got, captured[TS_ID])
        self.assertEqual(self.receivers[SECTIONS_ID].got, captured[SECTIONS_ID])
        self.assertGreater(len(captured[SECTIONS_ID]), 48)  # several datagrams per data_provision
        self.assertEqual(self.core.dropped, {})
        self._check_in_tshark(provisions)

    def _check_in_tshark(self, provisions: int) -> None:
        """Wireshark decodes the capture with nothing malformed, every data_provision included."""
        tshark = shutil.which("tshark")
        if tshark is None:
            self.fail("tshark is not installed: the capture cannot be checked (scripts/bootstrap installs it)")
        result = subprocess.run(
            [tshark, "-r", str(self.capture), "-T", "json", "--no-duplicate-keys",
             "-d", f"tcp.port=={MUX_TCP[1]},simulcrypt", "-d", f"udp.port=={MUX_UDP[1]},simulcrypt"],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        packets = [p["_source"]["layers"] for p in json.loads(result.stdout)]
        self.assertEqual(problems(packets), [])
        types = []
        for layers in packets:
            items = layers.get("simulcrypt", [])
            for item in items if isinstance(items, list) else [items]:
                types.append(int(item["simulcrypt.header"]["simulcrypt.message.type"], 0))
        self.assertEqual(types.count(0x0211), provisions)

    async def test_a_broken_ts_datagram_is_refused_and_the_rest_still_flows(self):
        client: ClassicEMMG = await TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port.getHost().port).connect(
            Factory.forProtocol(lambda: ClassicEMMG(self.events, 1)))
        ids = {"protocol_version": 3, "client_id": CLIENT, "data_channel_id": 1}
        client.send(m.ChannelSetup(**ids, section_TSpkt_flag=1))
        await client.expect(m.ChannelStatus)
        client.send(m.StreamSetup(**ids, data_stream_id=1, data_id=TS_ID, data_type=0))
        await client.expect(m.StreamStatus)
        client.send(m.StreamBWRequest(**ids, data_stream_id=1, bandwidth=8000))
        await client.expect(m.StreamBWAllocation)
        good = b"\x47" + bytes(187)
        client.send(m.DataProvision(**ids, data_stream_id=1, data_id=TS_ID, datagram=(good, b"\x00" + bytes(187), good)))
        error = await client.expect(m.StreamError)
        self.assertEqual(error.error_status, (0x000D,))
        await wait_for(lambda: len(self.receivers[TS_ID].got) >= 2, 5.0, "the two whole datagrams")
        await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.receivers[TS_ID].got, [good, good])
        self.assertEqual(self.core.dropped, {"bad_format": 1})
        client.transport.loseConnection()
