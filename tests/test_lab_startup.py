"""The lab's start-up on the session's Deferreds, on simulated time (a memory reactor: no sockets).

The roles report into the session as they would over loopback; the test publishes those events
itself, in order, and checks what the lab does at each step and when a step never completes.
"""

from __future__ import annotations

import io

import pytest
from twisted.python import usage

from bcast_sp4.config import load_lab_settings
from bcast_sp4.config.lab_ports import move_ports, ports_of
from bcast_sp4.machines.scs_records import CP_NUMBER_MASK
from bcast_sp4.tap import lab as lab_tap

from .integration.harness import ROOT
from .doubles import UDPMemoryReactor

LAB = ROOT / "etc" / "lab" / "lab.toml"


@pytest.fixture(scope="module")
def settings():
    return load_lab_settings(LAB)


class Started:
    def __init__(self, settings, timeout=30.0):
        self.reactor = UDPMemoryReactor()
        self.reactor.advance(1_000_000.0)
        self.out = io.StringIO()
        self.status = []
        self.lab = lab_tap.build_service(settings, self.reactor, periods=2, on_done=self.status.append, out=self.out,
                                         startup_timeout=timeout)
        self.session = self.lab.session
        self.settings = settings
        self.lab.startService()

    def listen(self):
        self.session.listening(self.settings.mux.endpoint, "mux")
        for ecmg in self.settings.ecmgs:
            self.session.listening(ecmg.endpoint, "ecmg")
        self.reactor.advance(0)

    def connect(self, skip_stream=None):
        s = self.settings
        for channel in s.scs.channels:
            self.session.observe("scs", channel.name, "channel_open", {"channel": channel.name})
        for service in s.scs.services:
            for link in service.spec.links:
                if (service.spec.name, link.ECM_id, link.channel) != skip_stream:
                    self.session.observe("scs", link.channel, "stream_open", {"channel": link.channel,
                                                                              "stream_id": link.ECM_stream_id})
        for stream in s.emmg.emmg.streams:
            self.session.observe("mux", "127.0.0.1:5", "bandwidth_allocated",
                                 {"client_id": s.emmg.emmg.client_id, "data_id": stream.data_id, "allocation": 64})
        self.reactor.advance(0)

    def first_stkms(self):
        for scheduler in self.lab.scs.runner.core.services.values():
            for link in scheduler.spec.links:
                self.session.stkm_ready(link.super_CAS_id, link.ECM_id, scheduler.first_period & CP_NUMBER_MASK, b"s")
        self.reactor.advance(0)


def test_each_step_waits_for_the_one_before(settings):
    run = Started(settings)
    runner, terminal = run.lab.scs.runner, run.lab.terminal.terminal
    run.reactor.advance(5.0)
    run.connect()  # channels up before the servers said they listen: nothing moves yet
    assert not runner.begun
    run.listen()
    assert runner.begun  # schedulers start only now, the first period chosen from now
    first = {s.first_period for s in runner.core.services.values()}
    assert all(s.period_start(s.first_period) >= run.reactor.seconds() for s in runner.core.services.values())
    assert "waiting for LTKMs" not in run.out.getvalue()
    run.first_stkms()
    assert "waiting for LTKMs and STKMs" in run.out.getvalue()  # the terminal waits for keys from now
    assert run.lab.started.called and not run.status and first


def test_a_stream_that_never_opens_fails_the_lab_naming_it(settings):
    run = Started(settings, timeout=20.0)
    run.listen()
    run.connect(skip_stream=("radio", 2, settings.scs.channels[1].name))
    run.reactor.advance(19.9)
    assert not run.status
    run.reactor.advance(0.2)
    assert run.status == [lab_tap.STARTUP_FAILED]
    line = run.out.getvalue().strip().splitlines()[-1]
    assert line.startswith("lab start-up, channels and streams: not ready after 20 s: SCS stream radio ECM_id 2 on ")
    assert "," not in line.split("after 20 s: ")[1]  # only that one
    assert not run.lab.scs.runner.begun
    assert run.lab.started.called and run.lab.startup_failure == line


def test_a_server_that_never_listens_is_named(settings):
    run = Started(settings, timeout=10.0)
    run.session.listening(settings.mux.endpoint, "mux")
    run.reactor.advance(10.0)
    assert run.status == [lab_tap.STARTUP_FAILED]
    missing = run.out.getvalue().strip().splitlines()[-1].split("after 10 s: ")[1].split(", ")
    assert missing == [f"ECMG listening on {e.endpoint}" for e in settings.ecmgs]
    assert run.lab.startup_failure.startswith("lab start-up, servers: ")


def test_no_first_stkm_fails_the_lab(settings):
    run = Started(settings, timeout=15.0)
    run.listen()
    run.connect()
    run.reactor.advance(15.0)
    assert run.status == [lab_tap.STARTUP_FAILED]
    assert "lab start-up, first STKMs: not ready after 15 s: STKM(" in run.out.getvalue()
    assert run.lab.startup_failure.startswith("lab start-up, first STKMs: ")


def test_port_base_moves_every_port_together(settings):
    ports = sorted(ports_of(settings))
    moved = move_ports(settings, 40000)
    assert sorted(ports_of(moved)) == [p - ports[0] + 40000 for p in ports]
    assert moved.mux.endpoint == settings.mux.endpoint.replace(":15000:", f":{15000 - ports[0] + 40000}:")
    # a client and its server still agree
    assert moved.emmg.connect.endswith(f"port={int(moved.mux.endpoint.split(':')[1])}")
    assert {c.endpoint.rsplit("=", 1)[1] for c in moved.scs.channels} == {e.endpoint.split(":")[1] for e in moved.ecmgs}
    assert {s.scrambler.input_port for s in moved.scs.services} == {s.source_destination[1] for s in moved.terminal.services}
    assert {s.scrambler.output[1] for s in moved.scs.services} == {s.listen[0] for s in moved.terminal.services}
    routes = {r.destination[1] for c in moved.mux.mux.clients.values() for r in c.routes.values()}
    assert routes == {moved.terminal.ltkm_listen[0], *(s.listen[0] for s in moved.terminal.stkm_streams)}
    assert {l.channel for s in moved.scs.services for l in s.spec.links} == {c.name for c in moved.scs.channels}
    with pytest.raises(ValueError, match="above 65535"):
        move_ports(settings, 65000)


def test_lab_options(settings):
    options = lab_tap.Options()
    options.parseOptions(["--config", str(LAB), "--port-base", "30000", "--role", "ecmg2"])
    assert options["settings"].ecmgs[1].endpoint.startswith("tcp:30001:")
    with pytest.raises(usage.UsageError, match="--role must be one of mux, ecmg1, ecmg2, emmg, scs, terminal"):
        lab_tap.Options().parseOptions(["--config", str(LAB), "--role", "nope"])


def test_lab_apart_refuses_a_bad_port_base_before_starting_anything(capsys):
    from bcast_sp4.tap import lab_apart

    assert lab_apart.main(["--config", str(LAB), "--port-base", "65000"]) == 78
    assert "above 65535" in capsys.readouterr().err
    assert lab_apart.exit_status(-15) == 0 and lab_apart.exit_status(-9) == 1 and lab_apart.exit_status(3) == 3


def test_stopping_while_starting_up_gives_no_verdict(settings):
    run = Started(settings, timeout=15.0)
    run.listen()
    run.lab.stopService()
    run.reactor.advance(60.0)
    assert run.status == [] and run.lab.startup_failure is None and not run.lab.scs.runner.begun
    assert run.session.waiting("channel") == run.session.waiting("stream") == run.session.waiting("allocation") == 0
