"""The SCS adapters with test doubles (StringTransport, Clock, MemoryReactorClock), the tap, the config."""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from bcast_sp4 import wire
from bcast_sp4.bcast import traffic
from bcast_sp4.config import ConfigError, load_scs_settings
from bcast_sp4.config.scs import MuxMode
from bcast_sp4.machines.outputs import StartTimer
from bcast_sp4.machines.scs_channel import ChannelTimer, ChannelTimerKind
from bcast_sp4.machines.scs_core import SCSCore
from bcast_sp4.machines.scs_records import ChannelSpec, LinkSpec, ServiceSpec, Timing
from bcast_sp4.machines.scs_scheduler import TEKSwitchTimer
from bcast_sp4.roles.scs_client import FailoverEndpoint, SCSClientFactory, SCSRunner, retry_policy
from bcast_sp4.media.scrambler import Scrambler
from bcast_sp4.roles.stkm_sink import JSONLinesSink, RecordingSink
from bcast_sp4.tap import scs as tap
from bcast_sp4.wire import ecmg_scs as m
from tests.doubles import UDPMemoryReactor

from ..integration.harness import ROOT

SCID = 0x00010001


def replies(transport: StringTransport) -> list:
    out = [wire.decode(f, wire.Interface.ECMG_SCS) for f in wire.Framer().feed(transport.value())]
    transport.clear()
    return out


def status() -> m.ChannelStatus:
    return m.ChannelStatus(ECM_channel_id=1, section_TSpkt_flag=2, delay_start=-200, delay_stop=0, ECM_rep_period=100,
                           max_streams=0, min_CP_duration=10, lead_CW=1, CW_per_msg=2, max_comp_time=100)


def connected_runner():
    clock = Clock()
    clock.advance(2000.0)
    channel = ChannelSpec(name="c", endpoint="tcp:host=127.0.0.1:port=1", backup_endpoint=None, super_CAS_id=SCID,
                          ECM_channel_id=1)
    service = ServiceSpec(name="svc", crypto_period=10, protection=traffic.TrafficProtection.SRTP,
                          links=(LinkSpec(channel="c", super_CAS_id=SCID, ECM_stream_id=1, ECM_id=5),))
    core = SCSCore([channel], [service], Timing(channel_test_interval=3.0))
    sink = RecordingSink(clock.seconds)
    scrambler = Scrambler("svc", traffic.TrafficProtection.SRTP)
    runner = SCSRunner(core, clock, sink, {"svc": scrambler})
    runner.startService()
    protocol = SCSClientFactory(runner, "c").buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.start_channel()  # what ClientService's prepareConnection does
    return clock, runner, protocol, transport, sink, scrambler


def test_adapter_runs_the_whole_cycle_on_a_clock():
    with capturedLogs() as events:
        clock, runner, protocol, transport, sink, scrambler = connected_runner()
        (setup,) = replies(transport)
        assert isinstance(setup, m.ChannelSetup) and setup.Super_CAS_id == SCID
        protocol.dataReceived(status().encode())
        (stream_setup,) = replies(transport)
        assert stream_setup.ECM_id == 5 and stream_setup.nominal_CP_duration == 10
        protocol.dataReceived(m.StreamStatus(ECM_channel_id=1, ECM_stream_id=1, ECM_id=5,
                                             access_criteria_transfer_mode=False).encode())
        scheduler = runner.core.services["svc"]
        first = scheduler.first_period
        clock.advance(scheduler.provision_at(0, first) - clock.seconds() - 0.01)
        assert replies(transport) == []  # not yet
        clock.advance(0.02)
        (provision,) = replies(transport)
        assert provision.CP_number == first & 0xFFFF
        # the ECM_response makes the period READY: STKM to the sink, TEK to the scrambler
        protocol.dataReceived(m.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=provision.CP_number,
                                            ECM_datagram=b"an stkm").encode())
        (submission,) = sink.submissions
        assert (submission.ecm_id, submission.stkm, submission.on_air_from) == (5, b"an stkm", scheduler.period_start(first) - 0.2)
        assert scrambler.protect(b"\x80" + bytes(20), scheduler.period_start(first) - 0.001) is None
        assert runner.timers[TEKSwitchTimer("svc", first)].getTime() == scheduler.period_start(first)
        clock.advance(scheduler.period_start(first) - clock.seconds())
        assert scrambler.current_cp == first & 0xFFFF  # switched by the core's switch timer at T(n)
        assert runner.switch_log[-1][1].jitter == 0.0
        assert TEKSwitchTimer("svc", first) not in runner.timers
        # keep-alive through the clock, and its answer
        clock.advance(3.0 - (clock.seconds() % 3.0) + 0.001)
        assert any(isinstance(x, m.ChannelTest) for x in replies(transport))
        tek = traffic.key_material_plaintext(scrambler.current.material).hex()
    text = "\n".join(str(e) for e in events)
    assert "channel_open" in text and tek not in text and tek[:16] not in text


def test_connection_loss_cancels_timers_and_the_stream():
    clock, runner, protocol, transport, sink, _ = connected_runner()
    protocol.dataReceived(status().encode())
    assert ChannelTimer("c", ChannelTimerKind.TEST) in runner.timers
    protocol.connectionLost(None)
    assert ChannelTimer("c", ChannelTimerKind.TEST) not in runner.timers and "c" not in runner.protocols
    assert runner.core.channels["c"].streams[1].state.value == "IDLE"
    runner.stopService()
    assert not runner.timers


def test_refused_channel_closes_the_connection_and_lengthens_backoff():
    clock, runner, protocol, transport, _, _ = connected_runner()
    replies(transport)
    protocol.dataReceived(m.ChannelError(ECM_channel_id=1, error_status=(0x0005,)).encode())
    assert transport.disconnecting
    machine = runner.core.channels["c"]
    policy = retry_policy(1.0, 100.0, 2.0, 0.0, lambda: machine.refusals)
    assert machine.refusals == 1 and policy(1) == 4.0


def test_failover_endpoint_tries_the_backup_and_rotates():
    calls = []

    class Endpoint:
        def __init__(self, name, ok):
            self.name, self.ok = name, ok

        def connect(self, factory):
            calls.append(self.name)
            return succeed(self.name) if self.ok else fail(ConnectionRefusedError())

    endpoint = FailoverEndpoint([("p", Endpoint("p", False)), ("b", Endpoint("b", True))])
    results = []
    endpoint.connect(None).addCallback(results.append)
    assert results == ["b"] and calls == ["p", "b"] and endpoint.current_name == "b"
    endpoint.rotate()  # lost: next time the primary first
    assert endpoint.current_name is None and endpoint.preferred == 0
    dead = FailoverEndpoint([("p", Endpoint("p", False)), ("b", Endpoint("b", False))])
    failures = []
    dead.connect(None).addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(ConnectionRefusedError)


def test_build_service_from_the_example_config(tmp_path):
    settings = load_scs_settings(ROOT / "etc" / "scs.toml")
    assert settings.mux.mode is MuxMode.FILE and len(settings.services) == 2 and len(settings.channels) == 2
    reactor = UDPMemoryReactor()
    top = tap.build_service(settings, reactor, sink=RecordingSink(reactor.seconds))
    top.startService()
    assert sorted(port.port for port in reactor.udp) == [5004, 5006]
    assert {(host, port) for host, port, *_ in reactor.tcpClients} == {("127.0.0.1", 2222)}
    assert set(top.core.services) == {"news", "radio"}
    assert top.core.channels[settings.channels[0].name].streams.keys() == {1, 2}  # shared DRM channel
    top.stopService()


def test_options_and_plugin():
    options = tap.Options()
    options.parseOptions(["--config", str(ROOT / "etc" / "scs.toml")])
    assert options["settings"].services[0].spec.name == "news"
    with pytest.raises(SystemExit, match="78"):  # one line on stderr, no help (test_config_and_plugins.py)
        tap.Options().parseOptions(["--config", "/nonexistent/scs.toml"])
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    assert "bcast-scs" in {maker.tapname for maker in getPlugins(IServiceMaker)}


def test_json_lines_sink(tmp_path):
    import io
    import json

    stream = io.StringIO()
    JSONLinesSink(stream, lambda: 5.0).submit(SCID, 3, 9, b"\x01\x02", 6.0, 100)
    assert json.loads(stream.getvalue()) == {"super_cas_id": SCID, "ecm_id": 3, "cp_number": 9, "stkm": "0102",
                                             "on_air_from": 6.0, "repetition_ms": 100, "received_at": 5.0}


SERVICE = {"name": '"a"', "crypto_period": "1.0", "protection": '"srtp"', "input": '"udp:5004"',
           "output": '"127.0.0.1:6004"'}
ECMG = {"endpoint": '"tcp:host=127.0.0.1:port=2222"', "super_CAS_id": "0x00010001", "ECM_channel_id": "1",
        "ECM_stream_id": "1", "ECM_id": "1"}


def config_text(service: str = "", ecmg: str = "", tail: str = "") -> str:
    """The base config; ``key = value`` lines in *service* / *ecmg* replace or extend those tables,
    other lines of *service* (sub-tables) follow the service's keys."""

    def table(base: dict, text: str) -> tuple[str, str]:
        values, extra = dict(base), []
        for line in text.splitlines():
            key = line.split("=")[0].strip()
            if "=" in line and not line.startswith("[") and not extra:
                values[key] = line.split("=", 1)[1].strip()
            else:
                extra.append(line)
        return "\n".join(f"{k} = {v}" for k, v in values.items()), "\n".join(extra)

    keys, sub = table(SERVICE, service)
    ecmg_keys, _ = table(ECMG, ecmg)
    return f'[mux]\nmode = "in-process"\n[[service]]\n{keys}\n{sub}\n[[service.ecmg]]\n{ecmg_keys}\n{tail}\n'


SECOND = """[[service]]
name = "b"
crypto_period = 1.0
protection = "ipsec"
input = "udp:5006"
output = "127.0.0.1:6006"
[[service.ecmg]]
endpoint = "tcp:host=127.0.0.1:port=2222"
super_CAS_id = {scid}
ECM_channel_id = 1
ECM_stream_id = {sid}
ECM_id = {ecm}
"""


@pytest.mark.parametrize(
    ("service", "ecmg", "tail", "key", "reason"),
    [
        ("", "", "[scs]\ncolour = 1\n", "scs.colour", "unknown key"),
        ("", "", "[scs]\nmax_attempts = 0\n", "scs.max_attempts", "outside"),
        ("", "", '[scs]\nretry_delay = "soon"\n', "scs.retry_delay", "number"),
        ("", "", '[mux]\nmode = "carrier-pigeon"\n', None, "not valid TOML"),  # [mux] twice
        ("crypto_period = 1.05", "", "", "service #1.crypto_period", "multiple of 0.1"),
        ('protection = "dcf"', "", "", "service #1.protection", "not one of"),
        ('input = "5004"', "", "", "service #1.input", "udp:PORT"),
        ('output = "localhost"', "", "", "service #1.output", "ADDR:PORT"),
        ("[service.ipsec]\nauthenticated = true", "", "", "service #1.ipsec", "but protection is srtp"),
        ("[service.srtp]\nprofile = \"AES256\"", "", "", "service #1.srtp.profile", "not one of"),
        ("", 'endpoint = "localhost:2222"', "", "service #1.ecmg #1.endpoint", "endpoint string"),
        ("", "protocol_version = 4", "", "service #1.ecmg #1.protocol_version", "outside"),
        ("", 'access_criteria = "zz"', "", "service #1.ecmg #1.access_criteria", "hex"),
        ("", 'cw_encryption = { algorithm = "rot13", key_id = 1, key = "00" }', "",
         "service #1.ecmg #1.cw_encryption.algorithm", "not one of"),
        ("", 'cw_encryption = { algorithm = "aes128-cbc", key_id = 1, key = "00" }', "",
         "service #1.ecmg #1.cw_encryption.key", "16 bytes"),
        ("", "", SECOND.format(scid="0x00020001", sid=2, ecm=2), "service #2.ecmg #1.ECM_channel_id", "another super_CAS_id"),
        ("", "", SECOND.format(scid="0x00010001", sid=1, ecm=2), "service #2.ecmg #1.ECM_stream_id", "used twice"),
        ("", "", SECOND.format(scid="0x00010001", sid=2, ecm=1), "service #2.ecmg #1.ECM_id", "already used"),
        ("", "", SECOND.format(scid="0x00010001", sid=2, ecm=2).replace('name = "b"', 'name = "a"'),
         "service #2.name", "twice"),
    ],
)
def test_config_errors_name_file_key_and_reason(tmp_path, service, ecmg, tail, key, reason):
    text = config_text(service, ecmg, tail)
    path = tmp_path / "scs.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_scs_settings(path)
    assert info.value.key == key and reason in info.value.reason and str(path) in str(info.value)


def test_config_without_services_or_ecmgs_and_remote_mux(tmp_path):
    path = tmp_path / "scs.toml"
    path.write_text("[scs]\n")
    with pytest.raises(ConfigError, match="no service"):
        load_scs_settings(path)
    path.write_text(config_text().replace('mode = "in-process"', 'mode = "remote"'))
    with pytest.raises(ConfigError, match="mux.connect: missing"):
        load_scs_settings(path)
    path.write_text(config_text().replace('mode = "in-process"', 'mode = "carrier-pigeon"'))
    with pytest.raises(ConfigError) as info:
        load_scs_settings(path)
    assert info.value.key == "mux.mode" and "not one of" in info.value.reason


def test_stagger_spreads_phases(tmp_path):
    path = tmp_path / "scs.toml"
    path.write_text(config_text(tail=SECOND.format(scid="0x00010001", sid=2, ecm=2)))
    assert [s.spec.phase for s in load_scs_settings(path).services] == [0.0, 0.5]
    path.write_text("[scs]\nstagger = false\n" + path.read_text())
    assert [s.spec.phase for s in load_scs_settings(path).services] == [0.0, 0.0]


def test_pure_modules_import_no_twisted():
    code = (
        "import sys, bcast_sp4.machines.scs_core, bcast_sp4.media.scrambler, bcast_sp4.roles.stkm_sink, bcast_sp4.config.scs;"
        "bad = sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runner_tunes_the_garbage_collector_once_set_up(monkeypatch):
    import bcast_sp4.roles.scs_client as module

    calls = []
    clock = Clock()
    monkeypatch.setattr(module, "tune_gc", lambda on: calls.append("tuned") if on is clock else None)
    core = SCSCore([], [], Timing())
    runner = SCSRunner(core, clock, RecordingSink(clock.seconds), {}, gc_tuning_after=20.0)
    runner.startService()
    clock.advance(19.9)
    assert calls == []
    clock.advance(0.2)
    assert calls == ["tuned"]
    runner.stopService()
    stopped = SCSRunner(core, clock, RecordingSink(clock.seconds), {}, gc_tuning_after=5.0)
    stopped.startService()
    stopped.stopService()
    clock.advance(10)
    assert calls == ["tuned"] and not clock.getDelayedCalls()


def test_timer_delay_counts_from_the_input_instant():
    """A StartTimer of an input made at *now* fires at now + seconds, however long the outputs took."""
    clock, runner, *_ = connected_runner()
    now = clock.seconds()
    clock.advance(0.3)  # as if the outputs before the timer had taken 300 ms
    runner.execute([StartTimer("k", 1.0), StartTimer("late", 0.1)], now)
    assert runner.timers["k"].getTime() == pytest.approx(now + 1.0)
    assert runner.timers["late"].getTime() == clock.seconds()  # already due: at once, never in the past


def test_a_due_tek_switch_runs_before_the_next_received_message_not_after_the_batch():
    """The reactor is busy past T(n) (a long batch of input): the switch runs before the next
    message of the batch is handled, so it is late by one message, not by the batch."""
    clock, runner, protocol, transport, sink, scrambler = connected_runner()
    replies(transport)
    protocol.dataReceived(status().encode())
    replies(transport)
    protocol.dataReceived(m.StreamStatus(ECM_channel_id=1, ECM_stream_id=1, ECM_id=5,
                                         access_criteria_transfer_mode=False).encode())
    scheduler = runner.core.services["svc"]
    first = scheduler.first_period
    clock.advance(scheduler.provision_at(0, first) - clock.seconds() + 0.01)
    (provision,) = replies(transport)
    protocol.dataReceived(m.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=provision.CP_number,
                                        ECM_datagram=b"an stkm").encode())
    assert scrambler.current_cp is None
    t_n = scheduler.period_start(first)
    clock.advance(t_n - clock.seconds() - 0.001)
    seen = []
    runner.on_switch = lambda service, switch: seen.append(("switch", switch.cp_number))
    handle = runner.core.receive

    def receive(channel, item, now):
        seen.append(("message", type(item).__name__))
        return handle(channel, item, now)

    runner.core.receive = receive
    clock.rightNow = t_n + 0.004  # 4 ms past T(n) and the clock has not run its calls yet
    tests = b"".join(m.ChannelTest(ECM_channel_id=1).encode() for _ in range(2))
    protocol.dataReceived(tests)
    assert seen == [("switch", first & 0xFFFF), ("message", "ChannelTest"), ("message", "ChannelTest")]
    assert runner.switch_log[-1][1].jitter == pytest.approx(0.004)
    clock.advance(0)  # the clock's own call for T(n) finds nothing left to do
    assert len(runner.switch_log) == 1 and scrambler.current_cp == first & 0xFFFF


def test_a_cw_provision_is_pushed_when_its_poll_ends_not_at_the_next_reactor_turn():
    from .test_stream_transport import TCPStringTransport

    clock, runner, *_ = connected_runner()
    protocol = SCSClientFactory(runner, "c").buildProtocol(None)
    transport = TCPStringTransport()
    protocol.makeConnection(transport)
    assert transport.no_delay and protocol.outbox.push is not None
    runner.protocols["c"] = protocol
    protocol.start_channel()
    protocol.dataReceived(status().encode())
    protocol.dataReceived(m.StreamStatus(ECM_channel_id=1, ECM_stream_id=1, ECM_id=5,
                                         access_criteria_transfer_mode=False).encode())
    pushes = len(transport.pushes)
    scheduler = runner.core.services["svc"]
    clock.advance(scheduler.provision_at(0, scheduler.first_period) - clock.seconds() + 0.01)
    assert len(transport.pushes) == pushes + 1 and isinstance(replies(transport)[-1], m.CWProvision)


@pytest.fixture
def gc_state():
    """Undo what GC tuning does to this process (frozen objects, thresholds)."""
    import gc

    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_gc_tuning_runs_on_the_injected_clock_not_the_global_reactor(gc_state):
    import gc

    from twisted.internet import reactor

    from bcast_sp4.roles.gc_tuning import YoungCollector, tune_gc

    with pytest.raises(TypeError):
        tune_gc()  # the clock is required: no silent fallback to the global reactor
    before = set(reactor.getDelayedCalls())
    clock = Clock()
    runner = SCSRunner(SCSCore([], [], Timing()), clock, RecordingSink(clock.seconds), {}, gc_tuning_after=20.0)
    runner.startService()
    clock.advance(20.0)
    assert gc.get_freeze_count() > 0 and gc.get_threshold()[2] == 2**30
    assert isinstance(runner.young_collector, YoungCollector) and runner.young_collector.clock is clock
    assert set(reactor.getDelayedCalls()) == before  # nothing scheduled on the real reactor
    clock.pump([0.05] * 3)
    assert runner.young_collector.passes == 3
    collector = runner.young_collector
    runner.stopService()
    assert not clock.getDelayedCalls() and runner.young_collector is None
    clock.advance(1.0)
    assert collector.passes == 3


def _streams_open(protocol, transport):
    replies(transport)
    protocol.dataReceived(status().encode())
    replies(transport)
    protocol.dataReceived(m.StreamStatus(ECM_channel_id=1, ECM_stream_id=1, ECM_id=5,
                                         access_criteria_transfer_mode=False).encode())
    replies(transport)


def test_stop_closes_the_stream_waits_for_its_response_then_channel_close_then_tcp():
    clock, runner, protocol, transport, _sink, _ = connected_runner()
    _streams_open(protocol, transport)
    stopped = runner.stopService()
    (request,) = replies(transport)
    assert isinstance(request, m.StreamCloseRequest) and not transport.disconnecting
    clock.advance(1.0)
    assert replies(transport) == [] and not stopped.called  # still waiting for the ECMG
    protocol.dataReceived(m.StreamCloseResponse(ECM_channel_id=1, ECM_stream_id=1).encode())
    (close,) = replies(transport)
    assert isinstance(close, m.ChannelClose) and transport.disconnecting
    assert not stopped.called  # until the connection is gone
    protocol.connectionLost(None)
    assert stopped.called and not runner.timers and not runner.running


def test_stop_close_timeout_bounds_the_wait_then_closes_in_order():
    clock, runner, protocol, transport, _sink, _ = connected_runner()
    _streams_open(protocol, transport)
    stopped = runner.stopService()
    replies(transport)
    clock.advance(runner.core.timing.close_timeout + 0.01)  # the ECMG never answers
    (close,) = replies(transport)
    assert isinstance(close, m.ChannelClose) and transport.disconnecting
    protocol.connectionLost(None)
    assert stopped.called


def test_stop_when_the_connection_never_goes_is_bounded_too():
    clock, runner, protocol, transport, _sink, _ = connected_runner()
    _streams_open(protocol, transport)
    stopped = runner.stopService()
    clock.advance(runner.core.timing.close_timeout + 1.01)  # channel_close sent, the TCP close never completes
    assert stopped.called and not runner.running
