"""The remote STKM sink (SCS -> MUX over EMMG/PDG<=>MUX): config, hand-over at on_air_from, the
held/superseded rule, UDP data, clean stop, the tap. The sink talks to the real MUX adapters through
iosim on one ``UDPMemoryReactor`` clock (as ``test_emmg_client.py`` does); the MUX's play-out
sockets are fakes that timestamp what they send.
"""

from __future__ import annotations

import textwrap

import pytest
from twisted.internet.address import IPv4Address
from twisted.logger import capturedLogs
from twisted.test import iosim

from bcast_sp4.config import ConfigError, load_scs_settings
from bcast_sp4.config.scs import MuxMode
from bcast_sp4.machines.emmg import EMMGState
from bcast_sp4.machines.mux import ClientConfig, MuxConfig, MuxCore, RouteConfig, RouteKind
from bcast_sp4.roles.mux_server import MuxServer
from bcast_sp4.roles.scs_client import SCSRunner
from bcast_sp4.roles.stkm_link import LATE_AFTER, RemoteMuxSink, UnknownSTKMLink, link_settings
from bcast_sp4.tap import scs as scs_tap
from bcast_sp4.wire import emmg_mux as m
from bcast_sp4.wire.params import DataType
from tests.doubles import UDPMemoryReactor


DRM, CARD = 0x00010001, 0x00020001
MUX_UDP = ("127.0.0.1", 5000)
DEST = {(DRM, 1): ("127.0.0.1", 6001), (DRM, 2): ("127.0.0.1", 6002), (CARD, 1): ("127.0.0.1", 6101)}
PERIOD_MS = {(DRM, 1): 100, (DRM, 2): 100, (CARD, 1): 250}

SERVICES = """
[[service]]
name = "a"
crypto_period = 1.0
protection = "srtp"
input = "udp:5004:interface=127.0.0.1"
output = "127.0.0.1:6004"
[[service.ecmg]]
endpoint = "tcp:host=127.0.0.1:port=2222"
super_CAS_id = 0x00010001
ECM_channel_id = 1
ECM_stream_id = 1
ECM_id = 1
[[service.ecmg]]
endpoint = "tcp:host=127.0.0.1:port=2222"
super_CAS_id = 0x00020001
ECM_channel_id = 2
ECM_stream_id = 1
ECM_id = 1
[[service]]
name = "b"
crypto_period = 1.0
protection = "ipsec"
input = "udp:5006:interface=127.0.0.1"
output = "127.0.0.1:6006"
[[service.ecmg]]
endpoint = "tcp:host=127.0.0.1:port=2222"
super_CAS_id = 0x00010001
ECM_channel_id = 1
ECM_stream_id = 2
ECM_id = 2
"""


def config(tmp_path, mux='mode = "remote"\nconnect = "tcp:host=127.0.0.1:port=5000"', services=SERVICES):
    path = tmp_path / "scs.toml"
    path.write_text("[scs]\ngc_tuning = false\nsetup_timeout = 2.0\n[mux]\n" + textwrap.dedent(mux) + "\n" + services)
    return path


class Lab:
    """A RemoteMuxSink and a MuxServer (STKM routes of DEST) on one memory reactor."""

    def __init__(self, tmp_path, mux_extra="", route_bandwidth=0xFFFF):
        self.reactor = UDPMemoryReactor()
        self.reactor.advance(1_000_000.0)
        self.settings = load_scs_settings(
            config(tmp_path, 'mode = "remote"\nconnect = "tcp:host=127.0.0.1:port=5000"\n' + mux_extra))
        clients = {}
        for (scid, ecm_id), destination in DEST.items():
            route = RouteConfig(kind=RouteKind.STKM, data_id=ecm_id, destination=destination,
                                repetition_period=PERIOD_MS[(scid, ecm_id)], max_bandwidth=route_bandwidth)
            clients.setdefault(scid, {})[ecm_id] = route
        core = MuxCore(MuxConfig(clients={s: ClientConfig(client_id=s, routes=r) for s, r in clients.items()}))
        self.mux = MuxServer(core, self.reactor, interface="127.0.0.1", max_message_length=65540)
        self.mux.play_out.startService()
        self.aired: dict[tuple[int, int], list[tuple[float, bytes]]] = {key: [] for key in DEST}
        for port in self.reactor.udp:
            for key, destination in DEST.items():
                if port.connected == destination:
                    port.socket.send = self._stamper(self.aired[key])
        self.sink = RemoteMuxSink(self.settings, self.reactor, retry_policy=lambda attempt: 1.0)
        self.pumps: list[iosim.IOPump] = []

    def _stamper(self, record):
        def send(data):
            record.append((self.reactor.seconds(), bytes(data)))
            return len(data)

        return send

    def now(self) -> float:
        return self.reactor.seconds()

    def connect(self, count=None):
        """Complete the pending TCP attempts (all, or the first *count*) against the MUX, via iosim."""
        pending = self.reactor.tcpClients if count is None else self.reactor.tcpClients[:count]
        for _host, _port, factory, _timeout, _bind in list(pending):
            self.reactor.tcpClients.remove((_host, _port, factory, _timeout, _bind))
            client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
            server = self.mux.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + len(self.pumps)))
            pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=True)
            self.pumps.append(pump)
        self.flush()

    def flush(self):
        for pump in self.pumps:
            pump.flush()
        for port in self.reactor.udp:  # UDP data_provision: from the links' sockets to the MUX port
            if port.connected == MUX_UDP:
                while port.socket.sent:
                    self.mux.udp_protocol.datagramReceived(port.socket.sent.pop(0), ("127.0.0.1", 39999))

    def run(self, seconds, step=0.001):
        for _ in range(round(seconds / step)):
            self.reactor.advance(step)
            self.flush()

    def run_until(self, when, step=0.001):
        self.run(when - self.now(), step)

    def pump_of(self, scid):
        (pump,) = [p for p in self.pumps if p.server.machine.client_id == scid]
        return pump


# -- configuration ----------------------------------------------------------------------------


def test_remote_mode_defaults_and_every_key(tmp_path):
    mux = load_scs_settings(config(tmp_path)).mux
    assert (mux.mode, mux.connect, mux.data_channel_id, mux.bandwidth, mux.protocol_version, mux.udp) == (
        MuxMode.REMOTE, "tcp:host=127.0.0.1:port=5000", 2, 16, 3, False)
    mux = load_scs_settings(config(tmp_path, """\
        mode = "remote"
        connect = "tcp:host=127.0.0.1:port=5001"
        data_channel_id = 7
        bandwidth = 64
        protocol_version = 5
        transport = "udp"
        mux_udp = "127.0.0.1:5002"
        udp_interface = "127.0.0.2"
        """)).mux
    assert (mux.data_channel_id, mux.bandwidth, mux.protocol_version, mux.udp, mux.mux_udp, mux.udp_interface) == (
        7, 64, 5, True, ("127.0.0.1", 5002), "127.0.0.2")


@pytest.mark.parametrize(
    ("mux", "services", "key", "reason"),
    [
        ('mode = "remote"', SERVICES, "mux.connect", "missing"),
        ('mode = "remote"\nconnect = "127.0.0.1:5000"', SERVICES, "mux.connect", "endpoint string"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\nbandwidth = 0', SERVICES, "mux.bandwidth", "outside"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\nprotocol_version = 1', SERVICES, "mux.protocol_version", "outside"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\nprotocol_version = 6', SERVICES, "mux.protocol_version", "outside"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\ndata_channel_id = 70000', SERVICES, "mux.data_channel_id", "outside"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\ntransport = "sctp"', SERVICES, "mux.transport", "not one of ['tcp', 'udp']"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\ntransport = "udp"', SERVICES, "mux.mux_udp", "missing"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\nmux_udp = "here"', SERVICES, "mux.mux_udp", "ADDR:PORT"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\nudp_interface = "lo"', SERVICES, "mux.udp_interface", "IPv4"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"\npath = "x.jsonl"', SERVICES, "mux.path", "unknown key"),
        ('mode = "file"\npath = "x.jsonl"\nconnect = "tcp:host=h:port=1"', SERVICES, "mux.connect", "unknown key"),
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"', SERVICES.replace("0x00020001", "0x4AE60000"),
         "service #1.ecmg #2.super_CAS_id", "0x0001xxxx or 0x0002xxxx"),
        # the same (super_CAS_id, ECM_id) from two ECMGs: fine for the SCS, one route at the MUX
        ('mode = "remote"\nconnect = "tcp:host=h:port=1"',
         SERVICES.replace("port=2222\"\nsuper_CAS_id = 0x00010001\nECM_channel_id = 1\nECM_stream_id = 2\nECM_id = 2",
                          "port=2223\"\nsuper_CAS_id = 0x00010001\nECM_channel_id = 1\nECM_stream_id = 2\nECM_id = 1"),
         "service #2.ecmg #1.ECM_id", "one MUX route"),
    ],
)
def test_remote_mode_errors_name_file_key_and_reason(tmp_path, mux, services, key, reason):
    path = config(tmp_path, mux, services)
    with pytest.raises(ConfigError) as info:
        load_scs_settings(path)
    assert info.value.key == key and reason in info.value.reason and str(path) in str(info.value)


def test_other_modes_are_unchanged_by_the_remote_checks(tmp_path):
    # a DVB super_CAS_id and an ECM_id shared by two ECMGs are still fine when the MUX is not remote
    services = SERVICES.replace("0x00020001", "0x4AE60000")
    assert load_scs_settings(config(tmp_path, 'mode = "in-process"', services)).mux.mode is MuxMode.IN_PROCESS


def test_link_settings_one_data_client_per_super_cas_id(tmp_path):
    settings = load_scs_settings(config(tmp_path, 'mode = "remote"\nconnect = "tcp:host=127.0.0.1:port=5000"\n'
                                                  "bandwidth = 32\nprotocol_version = 4"))
    links = link_settings(settings)
    assert sorted(links) == [DRM, CARD]
    drm = links[DRM].emmg
    assert (drm.client_id, drm.data_channel_id, drm.protocol_version, drm.udp, drm.response_timeout) == (DRM, 2, 4, False, 2.0)
    assert [(s.data_stream_id, s.data_id, s.data_type, s.bandwidth) for s in drm.streams] == [
        (1, 1, DataType.ECM, 32), (2, 2, DataType.ECM, 32)]
    assert [s.data_id for s in links[CARD].emmg.streams] == [1]
    assert links[DRM].connect == "tcp:host=127.0.0.1:port=5000" and links[DRM].sources == {}
    with pytest.raises(ValueError):
        link_settings(load_scs_settings(config(tmp_path, 'mode = "in-process"')))


# -- set-up and hand-over at on_air_from ------------------------------------------------------


def test_channels_and_streams_as_the_mux_sees_them(tmp_path):
    lab = Lab(tmp_path)
    lab.sink.startService()
    assert len(lab.reactor.tcpClients) == 2  # one connection per super_CAS_id
    ready = lab.sink.when_ready()
    lab.connect()
    lab.run(0.01)
    assert ready.called and lab.sink.is_ready(DRM) and lab.sink.is_ready(CARD)
    assert sorted(lab.mux.core.channels) == [(DRM, 2), (CARD, 2)]  # data_channel_id 2 for both
    streams = {(p.server.machine.client_id, s.data_id): s for p in lab.pumps for s in p.server.machine.streams.values()}
    assert set(streams) == set(DEST) and {s.data_type for s in streams.values()} == {DataType.ECM}
    stats = lab.sink.links[DRM].machine.stats()
    assert {k: v["allocation"] for k, v in stats.items()} == {1: 16, 2: 16}


def test_stkm_reaches_the_mux_at_on_air_from_not_before(tmp_path):
    lab = Lab(tmp_path)
    lab.sink.startService()
    lab.connect()
    lab.run(0.01)
    t1 = lab.now() + 0.5
    lab.sink.submit(DRM, 1, 10, b"STKM-10", t1, 100)
    lab.sink.submit(CARD, 1, 10, b"CARD-10", t1 + 0.2, 250)
    lab.run_until(t1 - 0.002)
    assert lab.aired[(DRM, 1)] == [] and lab.mux.core.counters["datagrams_in"] == 0
    lab.run_until(t1 + 0.005)
    first_at, data = lab.aired[(DRM, 1)][0]
    assert data == b"STKM-10" and t1 <= first_at <= t1 + 0.002
    assert lab.aired[(CARD, 1)] == []
    # the next crypto-period: the MUX switches when STKM-11 arrives, i.e. at its on_air_from
    # (half-way between two copies, so no repetition ties with the switch)
    t2 = t1 + 1.05
    lab.sink.submit(DRM, 1, 11, b"STKM-11", t2, 100)
    lab.run_until(t2 + 0.3)
    copies = lab.aired[(DRM, 1)]
    old = [t for t, d in copies if d == b"STKM-10"]
    new = [t for t, d in copies if d == b"STKM-11"]
    assert max(old) < t2 <= min(new) <= t2 + 0.002  # at once (its last copy left over a quarter period before)
    # and it is repeated at the route's period (100 ms for this route, 250 ms for the Smartcard one)
    gaps = [b - a for a, b in zip(old, old[1:])]
    assert len(old) >= 9 and all(abs(g - 0.1) < 0.0015 for g in gaps)
    card = [t for t, _d in lab.aired[(CARD, 1)]]
    assert card[0] >= t1 + 0.2 and all(abs((b - a) - 0.25) < 0.0015 for a, b in zip(card, card[1:]))
    assert lab.sink.counters == {"submitted": 3, "handed_over": 3, "late": 0, "superseded": 0,
                                 "dropped_stopped": 0, "dropped_queue_full": 0}
    assert lab.sink.last_handed_over == {(DRM, 1): 11, (CARD, 1): 10}


def test_a_late_submission_goes_at_once_and_is_counted(tmp_path):
    lab = Lab(tmp_path)
    lab.sink.startService()
    lab.connect()
    lab.run(0.01)
    with capturedLogs() as events:
        lab.sink.submit(DRM, 2, 3, b"LATE", lab.now() - 0.5, 100)
        lab.run(0.002)
    assert lab.aired[(DRM, 2)][0][1] == b"LATE" and lab.sink.counters["late"] == 1
    assert any("after on_air_from" in e.get("log_format", "") and e["late_ms"] >= 500 for e in events)


def test_link_not_ready_keeps_only_the_newest_stkm_per_ecm_id(tmp_path):
    lab = Lab(tmp_path)
    lab.sink.startService()  # connections pending: not ready
    t = lab.now()
    with capturedLogs() as events:
        for n in range(3):
            lab.sink.submit(DRM, 1, n, b"DRM-%d" % n, t + 0.1 + 0.2 * n, 100)
        lab.sink.submit(DRM, 2, 0, b"OTHER-0", t + 0.1, 100)
        lab.run(1.0)
    assert lab.sink.counters["superseded"] == 2 and lab.sink.counters["handed_over"] == 0
    superseded_lines = [e for e in events if "superseded before reaching" in e.get("log_format", "")]
    assert len(superseded_lines) == 1  # one line per outage and pair, not one per STKM
    assert sum("not ready at on_air_from" in e.get("log_format", "") for e in events) == 1
    with capturedLogs() as events:
        lab.connect()
        lab.run(0.05)
    assert [d for _t, d in lab.aired[(DRM, 1)]][:1] == [b"DRM-2"]
    assert {d for _t, d in lab.aired[(DRM, 1)]} == {b"DRM-2"}  # DRM-0 and DRM-1 never reached the MUX
    assert {d for _t, d in lab.aired[(DRM, 2)]} == {b"OTHER-0"}
    assert lab.sink.counters["late"] == 2 and lab.sink.counters["handed_over"] == 2
    (late,) = [e for e in events if "after on_air_from" in e.get("log_format", "") and e["ecm_id"] == 1]
    assert late["superseded"] == 2 and late["cp_number"] == 2


def test_reconnect_resumes_with_the_newest_stkm_and_the_mux_keeps_the_last_meanwhile(tmp_path):
    lab = Lab(tmp_path)
    lab.sink.startService()
    lab.connect()
    lab.run(0.01)
    t = lab.now()
    lab.sink.submit(DRM, 1, 1, b"ONE", t + 0.1, 100)
    lab.run(0.2)
    lab.pump_of(DRM).clientIO.loseConnection()  # the MUX connection of the DRM link drops
    lab.flush()
    assert lab.sink.links[DRM].machine.state is EMMGState.DISCONNECTED and lab.sink.is_ready(CARD)
    lab.sink.submit(DRM, 1, 2, b"TWO", t + 0.5, 100)
    lab.sink.submit(DRM, 1, 3, b"THREE", t + 0.7, 100)
    lab.run_until(t + 0.9)
    # degraded mode at the MUX: the last STKM stays on air while its stream is gone
    assert {d for _t, d in lab.aired[(DRM, 1)]} == {b"ONE"} and lab.aired[(DRM, 1)][-1][0] > t + 0.8
    lab.run(1.0)  # the retry policy waits 1 s
    lab.connect()
    lab.run(0.05)
    after = [d for _t, d in lab.aired[(DRM, 1)] if _t > t + 0.9]
    assert b"TWO" not in after and after[-1] == b"THREE"
    assert lab.sink.counters["superseded"] == 1 and lab.sink.links[DRM].machine.connections == 2


def test_queued_stkms_are_superseded_when_the_mux_grants_no_bandwidth(tmp_path):
    lab = Lab(tmp_path, route_bandwidth=0)  # allocation 0: the streams may not send
    lab.sink.startService()
    lab.connect()
    lab.run(0.01)
    assert lab.sink.is_ready(DRM)
    t = lab.now()
    for n in range(4):
        lab.sink.submit(DRM, 1, n, b"Q-%d" % n, t + 0.1 * (n + 1), 100)
    lab.run(0.5)
    session = lab.sink.links[DRM].machine
    assert session.queued(1) == 1 and lab.sink.counters["superseded"] == 3  # only the newest waits
    assert lab.aired[(DRM, 1)] == []


def test_repetition_is_the_mux_route_s_and_the_ecmg_value_is_logged_once(tmp_path):
    lab = Lab(tmp_path)
    lab.sink.startService()
    lab.connect()
    lab.run(0.01)
    t = lab.now()
    with capturedLogs() as events:
        lab.sink.submit(CARD, 1, 1, b"C1", t + 0.01, 40)  # the ECMG asks 40 ms; the route says 250
        lab.sink.submit(CARD, 1, 2, b"C2", t + 1.11, 40)
        lab.sink.submit(CARD, 1, 3, b"C3", t + 2.11, 80)
    notes = [e for e in events if "cannot travel" in e.get("log_format", "")]
    assert [e["repetition_ms"] for e in notes] == [40, 80]
    lab.run(1.5)
    times = [s for s, d in lab.aired[(CARD, 1)] if d == b"C1"]
    assert all(abs((b - a) - 0.25) < 0.0015 for a, b in zip(times, times[1:])) and len(times) == 5  # t+0.01 .. t+1.01


def test_udp_transport_carries_the_stkms(tmp_path):
    lab = Lab(tmp_path, mux_extra='transport = "udp"\nmux_udp = "127.0.0.1:5000"')
    lab.sink.startService()
    lab.connect()
    lab.run(0.01)
    t = lab.now() + 0.2
    lab.sink.submit(DRM, 1, 1, b"BY-UDP", t, 100)
    lab.run_until(t + 0.01)
    (first_at, data) = lab.aired[(DRM, 1)][0]
    assert data == b"BY-UDP" and t <= first_at <= t + 0.002
    assert lab.mux.core.counters["udp_messages"] == 1 and lab.sink.links[DRM].counters["udp_sent"] == 1


def test_submit_refuses_what_the_settings_do_not_know(tmp_path):
    lab = Lab(tmp_path)
    lab.sink.startService()
    with pytest.raises(UnknownSTKMLink):
        lab.sink.submit(DRM, 9, 1, b"x", lab.now(), 100)
    with pytest.raises(UnknownSTKMLink):
        lab.sink.submit(0x00010002, 1, 1, b"x", lab.now(), 100)
    with pytest.raises(ValueError):
        lab.sink.submit(DRM, 1, 1, b"", lab.now(), 100)
    with pytest.raises(ValueError):
        lab.sink.submit(DRM, 1, 1, bytes(70_000), lab.now(), 100)
    assert lab.sink.counters["submitted"] == 0


def test_stop_drops_what_is_not_due_and_closes_streams_then_channel(tmp_path):
    lab = Lab(tmp_path)
    lab.sink.startService()
    lab.connect()
    lab.run(0.01)
    t = lab.now()
    lab.sink.submit(DRM, 1, 1, b"NOW", t + 0.01, 100)
    lab.sink.submit(DRM, 1, 2, b"LATER", t + 5.0, 100)
    lab.run(0.05)
    assert [call.getTime() for call in lab.sink.timers.values()] == [t + 5.0]  # LATER
    received = []
    for pump in lab.pumps:
        handle = pump.server.handle

        def spy(item, now, received_at, handle=handle):
            received.append(item)
            return handle(item, now, received_at)

        pump.server.handle = spy
    stopped = lab.sink.stopService()
    lab.run(0.05)
    assert stopped.called
    kinds = [type(x) for x in received]
    assert kinds.count(m.StreamCloseRequest) == 3 and kinds.count(m.ChannelClose) == 2
    assert kinds.index(m.ChannelClose) > kinds.index(m.StreamCloseRequest)
    assert all(link.machine.state is EMMGState.CLOSED for link in lab.sink.links.values())
    assert lab.sink.counters["dropped_stopped"] == 1
    lab.run(6.0)
    assert b"LATER" not in {d for _t, d in lab.aired[(DRM, 1)]}
    with capturedLogs() as events:
        lab.sink.submit(DRM, 1, 3, b"AFTER", lab.now(), 100)
    assert lab.sink.counters["dropped_stopped"] == 2 and any("stopped" in e.get("log_format", "") for e in events)
    assert not lab.sink.timers


# -- the tap ----------------------------------------------------------------------------------


def test_tap_builds_the_remote_sink_first_in_the_tree(tmp_path):
    settings = load_scs_settings(config(tmp_path))
    reactor = UDPMemoryReactor()
    top = scs_tap.build_service(settings, reactor)
    assert isinstance(top.sink, RemoteMuxSink) and top.mux_link is top.sink
    children = list(top)
    assert children[0] is top.sink and isinstance(children[-1], SCSRunner)
    assert top.runner.sink is top.sink
    top.startService()
    assert top.sink.running
    ports = [c[1] for c in reactor.tcpClients]
    assert ports.count(5000) == 2 and ports.count(2222) == 2  # two MUX links, two ECMG channels
    top.stopService()
    # an explicit RemoteMuxSink is put in the tree too; other sinks are not services
    sink = RemoteMuxSink(settings, UDPMemoryReactor())
    assert list(scs_tap.build_service(settings, UDPMemoryReactor(), sink=sink))[0] is sink
    in_process = load_scs_settings(config(tmp_path, 'mode = "in-process"'))
    assert scs_tap.build_service(in_process, UDPMemoryReactor()).mux_link is None


def test_late_threshold_is_above_timer_lateness():
    assert 0.001 < LATE_AFTER < 0.25
