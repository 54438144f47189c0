"""EMMG -> MUX -> UDP receiver on real loopback sockets (trial on the real reactor).

* over TCP and over UDP, every LTKM (spool files, subscriber-file LTKMs, LTKMs queued in-process)
  reaches the configured UDP destination byte-identical, none lost, at the allocated bandwidth;
* a stream allocated 200 kbit/s plays every LTKM out in order, none dropped (its rate is a figure
  of ``benchmarks/mux.py`` pacing; on simulated time ``tests/machines/test_emmg_mux_linked.py``
  checks it: no wall-clock measurement here);
* the wire bytes of a whole EMMG session (TCP control and data, UDP data) decode in tshark with
  nothing malformed;
* a client sending garbage, over-running its allocation and spraying bad UDP does not disturb a
  well-behaved EMMG.

Every loop is bounded and every port and connection is closed (trial reports a dirty reactor).
"""

from __future__ import annotations

import tempfile

import json
import random
import shutil
import subprocess
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bcast_sp4 import wire
from bcast_sp4.bcast.ltkm_drm import parse_ltkm
from bcast_sp4.config import load_subscribers
from bcast_sp4.tools.capture import PcapWriter, TcpFlow
from bcast_sp4.config.emmg import EMMGSettings, StreamSources
from bcast_sp4.machines.emmg import EMMGConfig, EMMGStreamConfig
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxCore, RouteConfig, RouteKind
from bcast_sp4.roles.emmg_client import EMMGService
from bcast_sp4.roles.mux_server import MuxProtocol, MuxServer
from bcast_sp4.wire import emmg_mux as m
from tests.doubles import Receiver

from ..tshark_json import problems

REPO = Path(__file__).resolve().parents[2]
BSM, NEIGHBOUR = 0x00010001, 0x00010002
DATA_ID = 0x0100


class RecordingMuxProtocol(MuxProtocol):
    """Records the TCP bytes of each connection, both ways, in order (for the capture)."""

    records: list  # set per test: [(connection number, "c" | "s", bytes)]

    def makeConnection(self, transport) -> None:
        self.number = len({n for n, _d, _b in self.records})
        write = transport.write
        records = self.records

        def recording_write(data: bytes) -> None:
            records.append((self.number, "s", bytes(data)))
            write(data)

        transport.write = recording_write
        records.append((self.number, "open", b""))
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.records.append((self.number, "c", bytes(data)))
        super().dataReceived(data)


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class Lab:
    """A MUX (TCP + UDP + play-out) and its receivers on loopback; EMMGs added on demand."""

    def __init__(self, test: TestCase, *, mux_kw=None, record=False) -> None:
        self.test = test
        self.receivers = {BSM: Receiver(reactor), NEIGHBOUR: Receiver(reactor)}
        self.receiver_ports = {
            c: reactor.listenUDP(0, r, interface="127.0.0.1", maxPacketSize=65536) for c, r in self.receivers.items()
        }
        clients = {
            client: ClientConfig(
                client_id=client,
                max_bandwidth=10_000,
                routes={
                    DATA_ID: RouteConfig(
                        kind=RouteKind.LTKM,
                        data_id=DATA_ID,
                        destination=("127.0.0.1", self.receiver_ports[client].getHost().port),
                        max_bandwidth=5_000,
                    )
                },
            )
            for client in (BSM, NEIGHBOUR)
        }
        self.core = MuxCore(MuxConfig(clients=clients, **(mux_kw or {})))
        self.mux = MuxServer(self.core, reactor, interface="127.0.0.1", max_message_length=wire.MAX_MESSAGE_LENGTH)
        self.records: list = []
        self.udp_records: list[bytes] = []
        if record:
            RecordingMuxProtocol.records = self.records
            self.mux.factory.protocol = RecordingMuxProtocol
            receive = self.mux.udp_protocol.datagramReceived

            def recording_receive(data, addr):
                self.udp_records.append(bytes(data))
                receive(data, addr)

            self.mux.udp_protocol.datagramReceived = recording_receive
        self.mux.play_out.startService()
        self.tcp_port = reactor.listenTCP(0, self.mux.factory, interface="127.0.0.1")
        self.udp_port = reactor.listenUDP(0, self.mux.udp_protocol, interface="127.0.0.1", maxPacketSize=65536)
        self.emmgs: list[EMMGService] = []
        test.addCleanup(self.close)

    def emmg(self, *, udp: bool, kbit: int, client=BSM, subscribers=False, spool: Path | None = None) -> EMMGService:
        settings = EMMGSettings(
            connect=f"tcp:host=127.0.0.1:port={self.tcp_port.getHost().port}",
            emmg=EMMGConfig(
                client_id=client,
                streams=(EMMGStreamConfig(data_stream_id=1, data_id=DATA_ID, bandwidth=kbit, max_queue=100_000),),
                udp=udp,
            ),
            mux_udp=("127.0.0.1", self.udp_port.getHost().port),
            udp_interface="127.0.0.1",
            sources={
                DATA_ID: StreamSources(
                    subscribers=load_subscribers(REPO / "etc" / "subscribers.example.toml") if subscribers else None,
                    spool=spool,
                    poll_interval=0.05,
                )
            },
            retry_max_delay=1.0,
            source_path=REPO / "etc" / "emmg.toml",
        )
        service = EMMGService(settings, reactor)
        service.startService()
        self.emmgs.append(service)
        return service

    async def close(self) -> None:
        for service in self.emmgs:
            if service.running:
                await service.stopService()
        for protocol in list(self.mux.play_out.protocols.values()):
            protocol.transport.loseConnection()
        await self.tcp_port.stopListening()
        await wait_for(lambda: not self.mux.play_out.protocols, 5.0, "MUX connections to close")
        await self.udp_port.stopListening()
        self.mux.play_out.stopService()
        for port in self.receiver_ports.values():
            await port.stopListening()


def random_ltkms(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(60, 1400)) for _ in range(n)]


class LoopbackTests(TestCase):
    timeout = 40

    async def _deliver_everything(self, udp: bool, record: bool = False) -> Lab:
        lab = Lab(self, record=record)
        spool = Path(tempfile.mkdtemp(prefix='bcast-spool-')) / 'spool'  # not trial's mktemp: that writes into the cwd
        spool.mkdir(parents=True)
        files = random_ltkms(40, seed=1)
        for k, data in enumerate(files):
            (spool / f"{k:04d}.ltkm").write_bytes(data)
        emmg = lab.emmg(udp=udp, kbit=4000, subscribers=True, spool=spool)
        await wait_for(lambda: emmg.machine.state.name == "READY", 5.0, "the EMMG to be ready")
        queued = random_ltkms(200, seed=2) + [bytes(range(256)) * 120]  # and one of 30720 bytes
        for data in queued:
            self.assertTrue(emmg.enqueue_ltkm(DATA_ID, data))
        expected = len(files) + 3 + len(queued)
        receiver = lab.receivers[BSM]
        await wait_for(lambda: len(receiver.got) >= expected, 10.0, f"{expected} LTKMs at the receiver")
        await deferLater(reactor, 0.2, lambda: None)  # nothing extra arrives
        got = [d for _t, d in receiver.got]
        self.assertEqual(len(got), expected)
        self.assertEqual(sorted(got), sorted(files + queued + [g for g in got if g not in files and g not in queued]))
        # byte-identical: every spool file and every queued LTKM, in order within its source
        self.assertEqual([g for g in got if g in files], files)
        self.assertEqual([g for g in got if g in queued], queued)
        keys = load_subscribers(REPO / "etc" / "subscribers.example.toml").device_keys()
        issued = [parse_ltkm(g, keys.get) for g in got if g not in files and g not in queued]
        self.assertEqual(sorted(p.device_id.hex() for p in issued), ["0ba5e0000001", "0ba5e0000002", "0ba5e0000003"])
        self.assertEqual(sorted(p.name for p in (spool / "sent").iterdir()), [f"{k:04d}.ltkm" for k in range(40)])
        self.assertEqual(lab.core.dropped, {})
        self.assertEqual(lab.core.counters["overruns"], 0)
        self.assertEqual(lab.core.counters["udp_messages"], expected if udp else 0)
        return lab

    async def test_tcp_every_ltkm_arrives_byte_identical(self):
        lab = await self._deliver_everything(udp=False)  # checks every LTKM at its destination
        self.assertEqual(lab.core.counters["udp_messages"], 0)  # and that all of them came over TCP
        self.assertEqual(lab.core.dropped, {})

    async def test_udp_every_ltkm_arrives_and_the_session_decodes_in_tshark(self):
        lab = await self._deliver_everything(udp=True, record=True)
        for service in lab.emmgs:
            await service.stopService()  # stream_close_request, channel_close: into the capture too
        await wait_for(lambda: not lab.mux.play_out.protocols, 5.0, "the EMMG connection to close")
        self._check_capture(lab)

    def _check_capture(self, lab: Lab) -> None:
        tshark = shutil.which("tshark")
        if tshark is None:
            self.fail("tshark is not installed: the capture cannot be checked (apt-get install tshark)")
        path = Path(tempfile.mkdtemp(prefix="bcast-cap-")) / "emmg.pcap"
        tcp_messages = 0
        with open(path, "wb") as f:
            writer = PcapWriter(f)
            flow = TcpFlow(writer, ("127.0.0.1", 40100), ("127.0.0.1", 5000))
            flow.handshake()
            framers = {"c": wire.Framer(), "s": wire.Framer()}
            for _number, side, data in lab.records:
                if side == "c":
                    flow.send(data)
                elif side == "s":
                    flow.reply(data)
                else:
                    continue
                tcp_messages += len(framers[side].feed(data))
            for datagram in lab.udp_records:
                writer.write_udp(("127.0.0.1", 40101), ("127.0.0.1", 5000), datagram)
            flow.close()
        self.assertGreater(tcp_messages, 8)  # setup, allocation, close: both ways
        result = subprocess.run(
            [tshark, "-r", str(path), "-T", "json", "--no-duplicate-keys",
             "-d", "tcp.port==5000,simulcrypt", "-d", "udp.port==5000,simulcrypt"],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        packets = [p["_source"]["layers"] for p in json.loads(result.stdout)]
        self.assertEqual(problems(packets), [])
        pdus = {"tcp": 0, "udp": 0}
        types = set()
        for layers in packets:
            if "simulcrypt" not in layers:
                continue
            items = layers["simulcrypt"] if isinstance(layers["simulcrypt"], list) else [layers["simulcrypt"]]
            pdus["udp" if "udp" in layers else "tcp"] += len(items)
            types |= {int(i["simulcrypt.header"]["simulcrypt.message.type"], 0) for i in items}
        self.assertEqual(pdus, {"tcp": tcp_messages, "udp": len(lab.udp_records)})
        self.assertTrue({0x0011, 0x0013, 0x0111, 0x0113, 0x0117, 0x0118, 0x0211, 0x0114, 0x0115, 0x0014} <= types)

    async def test_a_paced_200_kbit_stream_plays_every_ltkm_out_in_order(self):
        lab = Lab(self)
        emmg = lab.emmg(udp=False, kbit=200)
        await wait_for(lambda: emmg.machine.state.name == "READY", 5.0, "the EMMG to be ready")
        ltkms = [k.to_bytes(4, "big") * 125 for k in range(100)]  # 50,000 bytes: about 2 s at 25,000 bytes/s
        for data in ltkms:
            emmg.enqueue_ltkm(DATA_ID, data)
        receiver = lab.receivers[BSM]
        await wait_for(lambda: len(receiver.got) >= len(ltkms), 30.0, "every LTKM at the receiver")
        self.assertEqual([d for _t, d in receiver.got], ltkms)
        self.assertEqual(lab.core.dropped, {})

    async def test_a_misbehaving_client_does_not_disturb_another(self):
        lab = Lab(self, mux_kw=dict(overrun_limit=2, queue_datagrams=16, max_invalid_messages=0))
        emmg = lab.emmg(udp=True, kbit=800, client=NEIGHBOUR)
        await wait_for(lambda: emmg.machine.state.name == "READY", 5.0, "the EMMG to be ready")

        replies: list[bytes] = []

        class Rogue(Protocol):
            def dataReceived(self, data):
                replies.append(data)

        rogue = await _connect(lab.tcp_port.getHost().port, Rogue)
        ids = dict(client_id=BSM, data_channel_id=1)
        rogue.transport.write(
            m.ChannelSetup(**ids, section_TSpkt_flag=2).encode()
            + m.StreamSetup(**ids, data_stream_id=1, data_id=DATA_ID, data_type=0).encode()
            + m.StreamBWRequest(**ids, data_stream_id=1, bandwidth=8).encode()
        )
        spray = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        mux_udp = ("127.0.0.1", lab.udp_port.getHost().port)
        good = random_ltkms(150, seed=3)
        for k, data in enumerate(good):
            emmg.enqueue_ltkm(DATA_ID, data)
            if k % 10 == 0:  # the rogue floods its 8 kbit/s stream, sends junk and foreign UDP
                flood = m.DataProvision(**ids, data_stream_id=1, data_id=DATA_ID, datagram=(bytes(1000),) * 8)
                rogue.transport.write(flood.encode() * 5 + bytes.fromhex("03 0999 0000") + b"\xff" * 7)
                spray.write(b"\x03\x02\x11\x00\x01\x00", mux_udp)
                spray.write(m.DataProvision(client_id=NEIGHBOUR, data_id=0x0777, datagram=(b"x",)).encode(), mux_udp)
                await deferLater(reactor, 0.005, lambda: None)
        receiver = lab.receivers[NEIGHBOUR]
        await wait_for(lambda: len(receiver.got) >= len(good), 10.0, "the neighbour's LTKMs")
        self.assertEqual([d for _t, d in receiver.got], good)
        codes = {e.error_status for e in _decode_all(b"".join(replies)) if hasattr(e, "error_status")}
        self.assertIn((0x000F,), codes)  # the rogue was told it exceeds its allocation
        self.assertIn((0x0003,), codes)  # and that its junk is junk
        self.assertGreater(lab.core.dropped.get("queue_full", 0), 0)
        self.assertGreater(lab.core.dropped.get("udp_invalid", 0) + lab.core.dropped.get("udp_unknown", 0), 0)
        await spray.stopListening()
        rogue.transport.loseConnection()


async def _connect(port: int, protocol_class) -> Protocol:
    from twisted.internet.endpoints import TCP4ClientEndpoint

    factory = Factory.forProtocol(protocol_class)
    factory.noisy = False
    return await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)


def _decode_all(data: bytes) -> list:
    out = []
    for frame in wire.Framer().feed(data):
        try:
            out.append(wire.decode(frame, wire.Interface.EMMG_MUX))
        except wire.PeerProtocolError:
            pass
    return out


def test_receiver_that_starts_late_loses_only_what_was_sent_before_it(tmp_path):
    """Regression: the MUX's play-out socket once died on the first ICMP 'port unreachable'.

    The destination port is held from the start by a socket connected to another peer (so no
    other process can take it, and datagrams from the MUX match no socket: the kernel answers
    'port unreachable'); the late receiver then binds the same port beside it (SO_REUSEPORT).
    """
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.connect(("127.0.0.1", 9))  # accepts only what 127.0.0.1:9 sends
    destination = holder.getsockname()[1]
    config = tmp_path / "mux.toml"
    config.write_text(
        """[mux]
endpoint = "tcp:0:interface=127.0.0.1"
[[client]]
client_id = 0x00010001
[[client.stkm]]
ecm_id = 1
destination = "127.0.0.1:%d"
repetition_period = 50
""" % destination
    )
    from .harness import RoleProcess

    port_line = r"MuxFactory starting on (\d+)"
    process = RoleProcess("bcast-mux", config, port_line)
    receiver = None
    try:
        client = socket.create_connection(("127.0.0.1", process.port), timeout=5)
        from bcast_sp4 import wire
        from bcast_sp4.wire import emmg_mux as x

        framer = wire.Framer()

        def request(message):
            client.sendall(message.encode())
            frames = []
            while not frames:
                frames = framer.feed(client.recv(65536))
            return wire.decode(frames[0])

        assert isinstance(request(x.ChannelSetup(client_id=0x00010001, data_channel_id=1, section_TSpkt_flag=2)), x.ChannelStatus)
        assert isinstance(request(x.StreamSetup(client_id=0x00010001, data_channel_id=1, data_stream_id=1, data_id=1, data_type=2)),
                          x.StreamStatus)
        request(x.StreamBWRequest(client_id=0x00010001, data_channel_id=1, data_stream_id=1, bandwidth=16))
        client.sendall(x.DataProvision(client_id=0x00010001, data_channel_id=1, data_stream_id=1, data_id=1,
                                       datagram=(b"stkm-bytes",)).encode())
        process.wait_for(r"dropped .*reason=egress_error", timeout=60)  # the refusals reached the MUX
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        receiver.bind(("127.0.0.1", destination))
        receiver.settimeout(10)
        assert receiver.recvfrom(100)[0] == b"stkm-bytes"  # the route survived the refusals
        client.close()
    finally:
        holder.close()
        if receiver is not None:
            receiver.close()
        assert process.stop() == 0
