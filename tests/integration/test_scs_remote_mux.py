"""SCS -> remote MUX over EMMG/PDG<=>MUX on real loopback sockets (``[mux] mode = "remote"``).

A real ``twistd -n bcast-mux`` and a real ``twistd -n bcast-ecmg`` (DRM Profile 0x00010001 and
Smartcard Profile 0x00020001 in one process); the SCS runs in this process on the real reactor with
its :class:`~bcast_sp4.roles.stkm_link.RemoteMuxSink`. 3 services x 2 ECMGs x 6 crypto-periods of
1 s; a UDP receiver on every STKM route destination of the MUX checks, for every period n and route:

* the first copy of STKM(n) arrives no earlier than on_air_from(n) = T(n) + delay_start (the sink
  hands it over then, and the MUX switches on receipt) and at most ``TOLERANCE(route)`` later;
* it decrypts with the key file to the TEK the service's scrambler was given for n and switched to
  at T(n);
* from then until on_air_from(n+1) only STKM(n) is aired, every ``repetition_period`` of the route
  (100 ms DRM, 250 ms Smartcard: the MUX's configuration, not the ECMG's ECM_rep_period).

Tolerance: the MUX airs a new STKM at once unless its previous copy left less than a quarter
repetition period before (then at that quarter): period / 4 by design. On top, this process's timer
lateness at the hand-over, the MUX's timer and loopback transit (each normally < 5 ms) and the
receiving reactor's own lateness; 60 ms covers a loaded test machine. Repetition gaps are scheduled
by the MUX on absolute times (lateness does not accumulate), so each gap must be within 30 ms of
the period. Only 127.0.0.1; every wait is bounded; the whole test takes about 12 s.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import textwrap
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from bcast_sp4.bcast import stkm_drm, stkm_mikey
from bcast_sp4.config import load_keyfile
from bcast_sp4.config import load_scs_settings
from bcast_sp4.machines.emmg import EMMGState
from bcast_sp4.roles.stkm_link import RemoteMuxSink
from bcast_sp4.tap.scs import build_service

from .harness import CARD_SCID, DRM_SCID, RoleProcess
from .test_scs_loopback import KEYS, free_ports

ECMG_PORT_LOG = r"ECMGFactory starting on (\d+)"
MUX_PORT_LOG = r"MuxFactory starting on (\d+)"
SERVICES = 3
PERIODS = 6
REPETITION = {DRM_SCID: 0.100, CARD_SCID: 0.250}  # s, the MUX routes' repetition_period
PROTECTIONS = ["srtp", "ipsec", "ismacryp"]


def tolerance(scid: int) -> float:
    return REPETITION[scid] / 4 + 0.06


class Receiver(DatagramProtocol):
    """One STKM route destination: (arrival time, datagram)."""

    noisy = False

    def __init__(self) -> None:
        self.got: list[tuple[float, bytes]] = []

    def datagramReceived(self, data: bytes, addr) -> None:
        self.got.append((reactor.seconds(), data))


def write_ecmg(directory: Path) -> Path:
    (directory / "keys.toml").write_text(KEYS + "".join(
        f'[[streams]]\nsuper_cas_id = {scid:#010x}\necm_id = {e}\nkeys = ["{key}"]\n'
        for scid, key in ((DRM_SCID, "drm-sek"), (CARD_SCID, "card-msk")) for e in range(1, SERVICES + 1)))
    path = directory / "ecmg.toml"
    path.write_text(textwrap.dedent(f"""\
        [ecmg]
        endpoint = "tcp:0:interface=127.0.0.1"
        key_file = "keys.toml"
        [channel]
        delay_start = -200
        transition_delay_start = -300
        ECM_rep_period = 100
        max_comp_time = 100
        [[cas]]
        super_CAS_id = {DRM_SCID:#010x}
        mode = "drm"
        [[cas]]
        super_CAS_id = {CARD_SCID:#010x}
        mode = "smartcard"
        """))
    return path


def write_mux(directory: Path, destinations: dict[tuple[int, int], int]) -> Path:
    lines = ["[mux]", 'endpoint = "tcp:0:interface=127.0.0.1"', "[egress]", 'interface = "127.0.0.1"']
    for scid in (DRM_SCID, CARD_SCID):
        lines += ["[[client]]", f"client_id = {scid:#010x}", "max_bandwidth = 1000"]
        for (s, ecm_id), port in sorted(destinations.items()):
            if s == scid:
                lines += ["[[client.stkm]]", f"ecm_id = {ecm_id}", f'destination = "127.0.0.1:{port}"',
                          f"repetition_period = {round(REPETITION[scid] * 1000)}"]
    path = directory / "mux.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_scs(directory: Path, ecmg_port: int, mux_port: int) -> Path:
    inputs, outputs = free_ports(socket.SOCK_DGRAM, SERVICES), free_ports(socket.SOCK_DGRAM, SERVICES)
    lines = ["[scs]", "channel_test_interval = 2.0", "start_allowance = 0.3", "gc_tuning = false",
             "[scs.reconnect]", "initial_delay = 0.05", "max_delay = 0.2",
             "[mux]", 'mode = "remote"', f'connect = "tcp:host=127.0.0.1:port={mux_port}"', "bandwidth = 16"]
    for i in range(SERVICES):
        lines += ["[[service]]", f'name = "s{i}"', "crypto_period = 1.0", f'protection = "{PROTECTIONS[i % 3]}"',
                  f'input = "udp:{inputs[i]}:interface=127.0.0.1"', f'output = "127.0.0.1:{outputs[i]}"']
        for scid, channel in ((DRM_SCID, 1), (CARD_SCID, 2)):
            lines += ["[[service.ecmg]]", f'endpoint = "tcp:host=127.0.0.1:port={ecmg_port}"',
                      f"super_CAS_id = {scid:#010x}", f"ECM_channel_id = {channel}", f"ECM_stream_id = {i + 1}",
                      f"ECM_id = {i + 1}"]
    path = directory / "scs.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


class SCSRemoteMuxTest(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bcast-scs-mux-"))
        self.processes: list[RoleProcess] = []
        self.ports = []

    async def tearDown(self):
        try:
            for port in self.ports:
                await port.stopListening()
            for process in self.processes:
                assert process.stop() == 0, process.text()[-2000:]
                assert "Traceback" not in process.text(), process.text()[-2000:]
        finally:
            shutil.rmtree(self.directory, True)

    async def test_stkms_reach_the_mux_on_time_decrypt_to_the_scrambler_s_tek_and_repeat(self):
        ecmg = RoleProcess("bcast-ecmg", write_ecmg(self.directory), ECMG_PORT_LOG)
        keys = load_keyfile(self.directory / "keys.toml")
        self.processes.append(ecmg)
        receivers = {(scid, e): Receiver() for scid in (DRM_SCID, CARD_SCID) for e in range(1, SERVICES + 1)}
        for receiver in receivers.values():
            self.ports.append(reactor.listenUDP(0, receiver, interface="127.0.0.1"))
        destinations = {key: port.getHost().port for key, port in zip(receivers, self.ports)}
        mux = RoleProcess("bcast-mux", write_mux(self.directory, destinations), MUX_PORT_LOG)
        self.processes.append(mux)

        settings = load_scs_settings(write_scs(self.directory, ecmg.port, mux.port))
        top = build_service(settings, reactor)
        sink = top.sink
        self.assertIsInstance(sink, RemoteMuxSink)
        submitted: dict[tuple[int, int, int], tuple[float, bytes]] = {}  # (scid, ecm_id, cp) -> (on_air_from, stkm)
        submit = sink.submit

        def recording_submit(scid, ecm_id, cp_number, stkm, on_air_from, repetition_ms):
            submitted[(scid, ecm_id, cp_number)] = (on_air_from, bytes(stkm))
            return submit(scid, ecm_id, cp_number, stkm, on_air_from, repetition_ms)

        sink.submit = recording_submit
        provided: dict[tuple[str, int], tuple[float, object]] = {}  # (service, cp) -> (at, material)
        for name, scrambler in top.scramblers.items():
            def recording_provide(cp_number, material, at, name=name, provide=scrambler.provide):
                provided[(name, cp_number)] = (at, material)
                return provide(cp_number, material, at)

            scrambler.provide = recording_provide

        top.startService()
        try:
            await wait_for(lambda: all(sink.is_ready(s) for s in sink.links), 5.0, "the MUX links")
            schedulers = {f"s{i}": top.core.services[f"s{i}"] for i in range(SERVICES)}
            await wait_for(lambda: all(s.first_period is not None for s in schedulers.values()), 5.0, "first periods")

            def all_aired(n_offset: int) -> bool:
                for i in range(SERVICES):
                    n = schedulers[f"s{i}"].first_period + n_offset
                    for scid in (DRM_SCID, CARD_SCID):
                        sub = submitted.get((scid, i + 1, n & 0xFFFF))
                        if sub is None or not any(d == sub[1] for _t, d in receivers[(scid, i + 1)].got):
                            return False
                return True

            # periods first .. first+5 are checked; first+6 bounds the last window
            await wait_for(lambda: all_aired(PERIODS), 1.0 + 1.0 + PERIODS + 3.0, f"STKM(first + {PERIODS}) on air")
        finally:
            await top.stopService()
        self.assertTrue(all(link.session.state is EMMGState.CLOSED for link in sink.links.values()))

        checked = 0
        for i in range(SERVICES):
            name = f"s{i}"
            scheduler = schedulers[name]
            scrambler = top.scramblers[name]
            switched = {(s.cp_number, s.at) for s in scrambler.switches}
            first = scheduler.first_period
            for scid in (DRM_SCID, CARD_SCID):
                got = receivers[(scid, i + 1)].got
                period = REPETITION[scid]
                parser = stkm_drm if scid == DRM_SCID else stkm_mikey
                for n in range(first, first + PERIODS):
                    on_air, stkm = submitted[(scid, i + 1, n & 0xFFFF)]
                    next_on_air, _next = submitted[(scid, i + 1, (n + 1) & 0xFFFF)]
                    T = scheduler.period_start(n)
                    self.assertAlmostEqual(on_air, T + (-0.3 if n == first else -0.2), places=6)
                    # the TEK the scrambler used in period n, and the STKM carries it
                    at, material = provided[(name, n & 0xFFFF)]
                    self.assertAlmostEqual(at, T, places=6)
                    self.assertIn((n & 0xFFFF, at), switched)
                    self.assertEqual(parser.parse_stkm(stkm, keys).material, material)
                    copies = [t for t, d in got if d == stkm]
                    where = (name, hex(scid), n)
                    self.assertTrue(copies, where)
                    self.assertGreaterEqual(min(copies), on_air - 0.001, where)  # never before on_air_from
                    self.assertLessEqual(min(copies), on_air + tolerance(scid), (where, min(copies) - on_air))
                    self.assertLessEqual(max(copies), next_on_air + tolerance(scid), where)
                    window = [(t, d) for t, d in got if on_air + tolerance(scid) <= t < next_on_air]
                    self.assertTrue(window and all(d == stkm for _t, d in window), where)  # only STKM(n) meanwhile
                    in_period = [t for t in copies if t < next_on_air]
                    gaps = [b - a for a, b in zip(in_period, in_period[1:])]
                    self.assertTrue(gaps and all(abs(g - period) <= 0.03 for g in gaps), (where, gaps))
                    expected = (next_on_air - on_air) / period
                    self.assertLessEqual(abs(len(in_period) - expected), 1.01, (where, len(in_period), expected))
                    checked += 1
        self.assertEqual(checked, SERVICES * 2 * PERIODS)
        for scheduler in schedulers.values():
            self.assertEqual((scheduler.stats.periods_skipped, scheduler.stats.stkms_late), (0, 0))
        self.assertEqual((sink.counters["late"], sink.counters["superseded"], sink.counters["dropped_queue_full"]),
                         (0, 0, 0))
        self.assertEqual(sink.counters["handed_over"], len({k for k in submitted}) - sink.counters["dropped_stopped"])
        # clean stop: the MUX saw every stream closed, then both channels (with no stream left)
        await wait_for(lambda: mux.text().count("channel_closed") >= 2, 5.0, "the MUX to see both channels close")
        text = mux.text()
        self.assertEqual(text.count("stream_closed"), 2 * SERVICES)
        closed = [line for line in text.splitlines() if "channel_closed" in line]
        self.assertTrue(all("streams=0" in line for line in closed), closed)
