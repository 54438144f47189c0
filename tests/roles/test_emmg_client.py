"""EMMG role: ClientService + backoff, prepareConnection setup, spool and subscriber sources, UDP data,
reconnection, graceful stop. The EMMG service talks to the real MUX adapters through iosim, on one
``UDPMemoryReactor`` clock; UDP datagrams are carried by hand from the EMMG's fake socket to the MUX.
"""

from __future__ import annotations

import errno
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from bcast_sp4 import wire
from bcast_sp4.bcast.ltkm_drm import parse_ltkm
from bcast_sp4.config import load_subscribers
from bcast_sp4.config.emmg import EMMGSettings, StreamSources
from bcast_sp4.machines.emmg import EMMGConfig, EMMGState, EMMGStreamConfig
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxCore, RouteConfig, RouteKind
from bcast_sp4.roles.emmg_client import EMMGService
from bcast_sp4.roles.mux_server import MuxServer
from bcast_sp4.wire import emmg_mux as m
from tests.doubles import UDPMemoryReactor


REPO = Path(__file__).resolve().parents[2]
CLIENT, DATA_ID = 0x00010001, 0x0100
MUX_UDP = ("127.0.0.1", 5000)
LTKM_DEST = ("127.0.0.1", 4359)


def settings(tmp_path, udp=False, subscribers=False, spool=True, kbit=400, **kw):
    sources = StreamSources(
        subscribers=load_subscribers(REPO / "etc" / "subscribers.example.toml") if subscribers else None,
        repeat_interval=kw.pop("repeat_interval", 0.0),
        spool=tmp_path / "spool" if spool else None,
        poll_interval=0.5,
    )
    return EMMGSettings(
        connect="tcp:host=127.0.0.1:port=5000",
        emmg=EMMGConfig(
            client_id=CLIENT,
            streams=(EMMGStreamConfig(data_stream_id=1, data_id=DATA_ID, bandwidth=kbit, max_queue=kw.pop("max_queue", 1000)),),
            udp=udp,
            **kw,
        ),
        mux_udp=MUX_UDP,
        udp_interface="127.0.0.1",
        sources={DATA_ID: sources},
        retry_max_delay=30.0,
        source_path=tmp_path / "emmg.toml",
    )


class Lab:
    """An EMMGService and a MuxServer on one memory reactor."""

    def __init__(self, tmp_path, mux_kw=None, retry=None, **kw):
        self.reactor = UDPMemoryReactor()
        self.reactor.advance(1_000_000.0)
        self.settings = settings(tmp_path, **kw)
        route = RouteConfig(kind=RouteKind.LTKM, data_id=DATA_ID, destination=LTKM_DEST, max_bandwidth=2000)
        core = MuxCore(MuxConfig(clients={CLIENT: ClientConfig(client_id=CLIENT, routes={DATA_ID: route})}, **(mux_kw or {})))
        self.mux = MuxServer(core, self.reactor, interface="127.0.0.1", max_message_length=65540)
        self.mux.play_out.startService()
        self.emmg = EMMGService(self.settings, self.reactor, retry_policy=retry or (lambda attempt: 2.0 * (attempt + 1)))
        self.pump = None
        self.spool = tmp_path / "spool"

    def start(self):
        self.emmg.startService()

    def connect(self):
        """Complete the ClientService's pending TCP attempt against the MUX, via iosim."""
        _host, _port, factory, _timeout, _bind = self.reactor.tcpClients.pop(0)
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        server = self.mux.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=True)
        self.pump.flush()
        return self.pump

    def carry_udp(self):
        """Hand whatever the EMMG wrote on its UDP socket to the MUX's UDP protocol."""
        port = self.emmg_udp()
        while port.socket.sent:
            self.mux.udp_protocol.datagramReceived(port.socket.sent.pop(0), ("127.0.0.1", 39999))

    def emmg_udp(self):
        (port,) = [p for p in self.reactor.udp if p.connected == MUX_UDP]
        return port

    def emmg_udp_exists(self):
        return any(p.connected == MUX_UDP and p.listening for p in self.reactor.udp)

    def aired(self):
        (port,) = [p for p in self.reactor.udp if p.connected == LTKM_DEST]
        return port.socket.sent

    def run(self, seconds, step=0.01):
        for _ in range(int(seconds / step)):
            self.reactor.advance(step)
            if self.pump is not None:
                self.pump.flush()
            if self.settings.emmg.udp and any(p.connected == MUX_UDP for p in self.reactor.udp):
                self.carry_udp()

    def write_spool(self, n, size=200):
        self.spool.mkdir(exist_ok=True)
        files = []
        for k in range(n):
            data = bytes([k % 256]) * size
            (self.spool / f"{k:05d}.ltkm").write_bytes(data)
            files.append(data)
        return files


def test_connects_sets_up_and_sends_spool_files_once_then_moves_them(tmp_path):
    lab = Lab(tmp_path)
    files = lab.write_spool(20)
    (lab.spool / "notes.txt").write_text("not an LTKM")  # ignored: only *.ltkm
    lab.start()
    assert len(lab.reactor.tcpClients) == 1
    ready = lab.emmg.when_ready()
    lab.connect()
    lab.run(0.1)
    assert lab.emmg.machine.state is EMMGState.READY and ready.called
    lab.run(1.0)
    assert lab.aired() == files
    assert sorted(p.name for p in (lab.spool / "sent").iterdir()) == [f"{k:05d}.ltkm" for k in range(20)]
    assert sorted(p.name for p in lab.spool.iterdir()) == ["notes.txt", "rejected", "sent"]
    lab.run(2.0)  # polls again: nothing is sent twice
    assert len(lab.aired()) == 20 and lab.emmg.counters["spool_sent"] == 20


def test_unusable_spool_files_are_rejected(tmp_path):
    lab = Lab(tmp_path, udp=True)
    lab.spool.mkdir()
    (lab.spool / "empty.ltkm").write_bytes(b"")
    (lab.spool / "huge.ltkm").write_bytes(bytes(70_000))
    (lab.spool / "fine.ltkm").write_bytes(b"ok")
    lab.start()
    lab.connect()
    lab.run(0.5)
    assert sorted(p.name for p in (lab.spool / "rejected").iterdir()) == ["empty.ltkm", "huge.ltkm"]
    assert lab.aired() == [b"ok"]


def test_subscriber_ltkms_over_udp_open_with_the_device_keys(tmp_path):
    lab = Lab(tmp_path, udp=True, subscribers=True, spool=False, repeat_interval=5.0)
    lab.start()
    lab.connect()
    lab.run(0.5)
    aired = list(lab.aired())
    assert len(aired) == 3
    keys = load_subscribers(REPO / "etc" / "subscribers.example.toml").device_keys()
    parsed = [parse_ltkm(a, keys.get) for a in aired]
    assert [p.device_id.hex() for p in parsed] == ["0ba5e0000001", "0ba5e0000002", "0ba5e0000003"]
    # the TCP connection carried only control messages; data went over UDP
    assert lab.emmg.counters["udp_sent"] == 3 and lab.mux.core.counters["udp_messages"] == 3
    lab.run(5.0)  # re-issued after repeat_interval, with fresh sequence numbers
    again = [parse_ltkm(a, keys.get) for a in lab.aired()[3:]]
    assert len(again) == 3 and [p.sequence for p in again] == [p.sequence + 3 for p in parsed]


def test_failed_udp_send_is_retried_without_loss(tmp_path):
    lab = Lab(tmp_path, udp=True)
    files = lab.write_spool(5)
    lab.start()
    lab.emmg_udp().socket.fail = OSError(errno.EAGAIN, "busy")
    lab.connect()
    lab.run(0.3)
    assert lab.aired() == [] and lab.emmg.counters["udp_errors"] > 0
    assert not list((lab.spool / "sent").iterdir())  # not delivered: not moved
    lab.emmg_udp().socket.fail = None
    lab.run(0.5)
    assert lab.aired() == files and len(list((lab.spool / "sent").iterdir())) == 5


def test_reconnects_and_resumes_without_losing_queued_ltkms(tmp_path):
    lab = Lab(tmp_path, kbit=16)  # 2000 bytes/s: 200-byte LTKMs leave 10 a second
    files = lab.write_spool(30)
    lab.start()
    lab.connect()
    lab.run(1.0)
    sent_before = len(lab.aired())
    assert 5 <= sent_before < 30
    lab.pump.clientIO.loseConnection()  # the MUX connection drops
    lab.pump.flush()
    assert lab.emmg.machine.state is EMMGState.DISCONNECTED and lab.emmg.machine.queued(DATA_ID) > 0
    lab.run(3.5)
    assert len(lab.reactor.tcpClients) == 0  # waiting for the retry delay (policy(1) = 4 s)
    lab.run(1.0)
    assert len(lab.reactor.tcpClients) == 1  # ClientService tries again
    lab.connect()
    lab.run(3.0)
    assert lab.aired() == files and lab.mux.core.dropped == {}
    assert lab.emmg.machine.connections == 2


def test_setup_refusals_grow_the_retry_delay(tmp_path):
    lab = Lab(tmp_path, retry=lambda attempt: float(attempt))
    lab.start()
    delays = []
    for _ in range(3):
        _h, _p, factory, _t, _b = lab.reactor.tcpClients.pop(0)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        setup = wire.decode(transport.value(), wire.Interface.EMMG_MUX)
        assert isinstance(setup, m.ChannelSetup)
        protocol.dataReceived(m.ChannelError(client_id=CLIENT, data_channel_id=1, error_status=(0x0014,)).encode())
        assert transport.disconnecting
        protocol.connectionLost(Failure(ConnectionDone()))
        waited = 0.0
        while not lab.reactor.tcpClients:
            lab.reactor.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [2.0, 3.0, 4.0]  # attempt 1 + 1, 1 + 2, 1 + 3 failed setups


def test_tests_from_the_mux_are_answered_and_response_timeout_closes(tmp_path):
    lab = Lab(tmp_path, spool=False, subscribers=True, response_timeout=2.0)
    lab.start()
    _h, _p, factory, _t, _b = lab.reactor.tcpClients.pop(0)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    transport.clear()
    protocol.dataReceived(m.ChannelStatus(client_id=CLIENT, data_channel_id=1, section_TSpkt_flag=2).encode())
    transport.clear()
    protocol.dataReceived(m.ChannelTest(client_id=CLIENT, data_channel_id=1).encode())
    status = wire.decode(transport.value(), wire.Interface.EMMG_MUX)
    assert isinstance(status, m.ChannelStatus) and status.section_TSpkt_flag == 2
    assert not transport.disconnecting
    lab.reactor.advance(2.1)  # no stream_status: give up, ClientService will retry
    assert transport.disconnecting


def test_graceful_stop_closes_stream_then_channel(tmp_path):
    lab = Lab(tmp_path)
    lab.write_spool(3)
    lab.start()
    lab.connect()
    lab.run(0.5)
    stopped = lab.emmg.stopService()
    lab.pump.flush()
    lab.run(0.1)
    assert stopped.called
    assert not lab.mux.core.channels and lab.emmg.machine.state is EMMGState.CLOSED
    assert not lab.emmg_udp_exists()


def test_stop_while_disconnected_is_immediate(tmp_path):
    lab = Lab(tmp_path, udp=True)
    lab.start()
    stopped = lab.emmg.stopService()
    assert stopped.called and not lab.emmg_udp_exists()


def test_enqueue_from_the_process(tmp_path):
    lab = Lab(tmp_path, spool=False, subscribers=True, max_queue=4)
    lab.start()
    lab.connect()
    lab.run(0.1)
    assert lab.emmg.enqueue_ltkm(DATA_ID, b"from elsewhere")
    lab.run(0.2)
    assert lab.aired()[-1] == b"from elsewhere"


def test_a_device_whose_ltkm_cannot_be_built_is_logged_and_skipped():
    from twisted.logger import capturedLogs

    from bcast_sp4.roles.emmg_client import SubscriberSource

    source = SubscriberSource(load_subscribers(REPO / "etc" / "subscribers.example.toml"), 0.0)
    with capturedLogs() as events:
        assert source.take(10, float(2**32 + 5)) == []  # issue time past the 32-bit range
    assert source.failures == 3
    failures = [e for e in events if e["log_level"].name == "error"]
    assert [e["device"] for e in failures] == ["0ba5e0000001", "0ba5e0000002", "0ba5e0000003"]
    assert source.take(10, float(2**32 + 10)) == []  # a one-off issue: nothing more


def test_nothing_is_popped_while_the_connection_is_closing(tmp_path):
    lab = Lab(tmp_path, kbit=16)
    files = lab.write_spool(10)
    lab.start()
    lab.connect()
    lab.run(0.3)
    sent = len(lab.aired())
    # the MUX declares an unrecoverable error: the EMMG closes; its pace timer must not drain the queue
    lab.pump.server.transport.write(m.ChannelError(client_id=CLIENT, data_channel_id=1, error_status=(0x7001,)).encode())
    lab.pump.pump()  # deliver the error only: the close itself is not processed yet
    protocol = lab.emmg.protocol
    assert protocol.closing
    queued = lab.emmg.machine.queued(DATA_ID)
    lab.reactor.advance(1.0)  # pace timers fire while the close is pending
    assert lab.emmg.machine.queued(DATA_ID) == queued
    lab.pump.flush()
    lab.run(5.0)
    lab.connect()
    lab.run(2.0)
    assert lab.aired() == files and sent < 10
