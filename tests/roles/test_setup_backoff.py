"""A peer that can never agree (it answers section_TSpkt_flag 1): the reason is logged with the field
and both values, and the client retries with a growing, capped back-off -- not in a tight loop.

EMMG -> "MUX" and SCS -> "ECMG" on a memory reactor with a clock (``UDPMemoryReactor``); each TCP
attempt is completed through iosim against a fake peer that answers every channel_setup with a
channel_status carrying section_TSpkt_flag 1 (TS packets).
"""

from __future__ import annotations

from pathlib import Path

import attrs
from twisted.application.internet import backoffPolicy
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs
from twisted.test import iosim

from bcast_sp4 import wire
from bcast_sp4.config import load_scs_settings
from bcast_sp4.config.scs import ReconnectPolicy
from bcast_sp4.config.emmg import EMMGSettings, StreamSources
from bcast_sp4.machines.emmg import EMMGConfig, EMMGStreamConfig
from bcast_sp4.roles.emmg_client import EMMGService
from bcast_sp4.roles.stkm_sink import RecordingSink
from bcast_sp4.tap import scs as scs_tap
from bcast_sp4.wire import ecmg_scs, emmg_mux

from ..doubles import UDPMemoryReactor

REPO = Path(__file__).resolve().parents[2]
CLIENT = 0x00010001


class ClassicPeer(Protocol):
    """Answers every channel_setup (either interface) with section_TSpkt_flag 1."""

    def __init__(self, interface: wire.Interface, setups: list) -> None:
        self.interface, self.setups = interface, setups
        self.framer = wire.Framer()

    def dataReceived(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            message = wire.decode(frame, self.interface)
            if isinstance(message, emmg_mux.ChannelSetup):
                self.setups.append(message)
                self.transport.write(emmg_mux.ChannelStatus(
                    protocol_version=message.protocol_version, client_id=message.client_id,
                    data_channel_id=message.data_channel_id, section_TSpkt_flag=1).encode())
            elif isinstance(message, ecmg_scs.ChannelSetup):
                self.setups.append(message)
                self.transport.write(ecmg_scs.ChannelStatus(
                    protocol_version=message.protocol_version, ECM_channel_id=message.ECM_channel_id,
                    section_TSpkt_flag=1, delay_start=0, delay_stop=0, ECM_rep_period=100, max_streams=0,
                    min_CP_duration=1, lead_CW=1, CW_per_msg=2, max_comp_time=100).encode())


def run_against_peer(reactor: UDPMemoryReactor, interface: wire.Interface, seconds: float) -> list[float]:
    """Complete every TCP attempt for *seconds* of clock; the times of the attempts."""
    attempts: list[float] = []
    setups: list = []
    pumps = []
    step = 0.05
    for _ in range(int(seconds / step)):
        while reactor.tcpClients:
            _host, _port, factory, _timeout, _bind = reactor.tcpClients.pop(0)
            attempts.append(reactor.seconds())
            client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2222))
            server = ClassicPeer(interface, setups)
            pumps.append(iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client)))
        for pump in pumps:
            pump.flush()
        pumps = [p for p in pumps if not (p.clientIO.disconnected and p.serverIO.disconnected)]
        reactor.advance(step)
    assert len(setups) == len(attempts)  # every attempt got as far as channel_setup
    return attempts


def check_backoff(delays: list[float], cap: float) -> None:
    assert len(delays) >= 4
    assert all(d <= cap + 0.1 for d in delays)  # capped
    assert delays[-1] >= cap - 0.1  # and it got there
    growing = delays[: next(i for i, d in enumerate(delays) if d >= cap - 0.1) + 1]
    assert all(b > a for a, b in zip(growing, growing[1:])), delays  # exponential until the cap
    assert growing[-1] >= 3 * growing[0]


def test_emmg_against_a_mux_that_answers_ts_packets_backs_off_and_says_why():
    reactor = UDPMemoryReactor()
    reactor.advance(1000.0)
    settings = EMMGSettings(
        connect="tcp:host=127.0.0.1:port=5000",
        emmg=EMMGConfig(client_id=CLIENT, streams=(EMMGStreamConfig(data_stream_id=1, data_id=0x0100, bandwidth=100),)),
        mux_udp=None, udp_interface="127.0.0.1", sources={0x0100: StreamSources(spool=Path("/nonexistent"))},
        retry_max_delay=8.0, source_path=REPO / "etc" / "emmg.toml",
    )
    service = EMMGService(settings, reactor, retry_policy=backoffPolicy(0.5, 8.0, 2.0, jitter=lambda: 0.0))
    service.spools.clear()  # no spool directory in this test
    with capturedLogs() as events:
        service.startService()
        attempts = run_against_peer(reactor, wire.Interface.EMMG_MUX, 60.0)
    delays = [b - a for a, b in zip(attempts, attempts[1:])]
    check_backoff(delays, 8.0)
    assert len(attempts) < 15  # a tight loop would make hundreds in 60 s
    text = "\n".join(str(e.get("reason", "")) for e in events)
    assert "MUX answered section_TSpkt_flag 1 (TS packets); BCAST LTKMs need 0x02" in text


def test_scs_against_an_ecmg_that_answers_ts_packets_backs_off_and_says_why():
    reactor = UDPMemoryReactor()
    reactor.advance(1000.0)
    settings = load_scs_settings(REPO / "etc" / "scs.toml")
    settings = attrs.evolve(settings, reconnect=ReconnectPolicy(initial_delay=0.5, max_delay=8.0, factor=2.0, jitter=0.0))
    top = scs_tap.build_service(settings, reactor, sink=RecordingSink(reactor.seconds))
    with capturedLogs() as events:
        top.startService()
        attempts = run_against_peer(reactor, wire.Interface.ECMG_SCS, 60.0)
    # two channels (DRM and Smartcard) on the same ECMG: each backs off on its own
    assert len(top.clients) == 2
    refused = [e for e in events if e.get("event") == "channel_status_refused"]
    assert refused and refused[0]["reason"].startswith(
        "ECMG answered section_TSpkt_flag 1 (TS packets); BCAST STKMs need 0x02")
    per_channel = {}
    for e in refused:
        per_channel.setdefault(e["channel"], []).append(e["refusals"])
    assert all(counts == list(range(1, len(counts) + 1)) for counts in per_channel.values())
    assert len(attempts) < 2 * 15
    machines = [top.core.channels[name] for name in top.clients]
    assert all(m.refusals >= 4 for m in machines)
    top.stopService()
