"""SCS -> remote MUX over EMMG/PDG<=>MUX on real loopback sockets (``[mux] mode = "remote"``).

A real ``twistd -n bcast-mux`` and a real ``twistd -n bcast-ecmg`` (DRM Profile 0x00010001 and
Smartcard Profile 0x00020001 in one process); the SCS runs in this process on the real reactor with
its :class:`~bcast_sp4.roles.stkm_link.RemoteMuxSink`. 3 services x 2 ECMGs, crypto-periods of 1 s,
until every STKM route has aired at least ``PERIODS`` + 1 STKMs; a UDP receiver on every STKM route
destination of the MUX checks, for every aired STKM(n) and the next one aired, STKM(n'):

* its on_air_from is T(n) + delay_start, and it decrypts with the key file to the TEK the service's
  scrambler was given for n and switched to at T(n) (never before);
* its first copy arrives no earlier than on_air_from(n) (the sink hands it over then, and the MUX
  switches on receipt), before the first copy of STKM(n'), and no copy of it follows that one;
* meanwhile it is repeated every ``repetition_period`` of the route (100 ms DRM, 250 ms Smartcard:
  the MUX's configuration, not the ECMG's ECM_rep_period): never more copies than repetition slots
  (+ the switch copy), and at least a third of them.

Lateness itself (how long after on_air_from the first copy arrives, the gaps between copies) is a
property of the reactors' timers: ``benchmarks/mux.py`` and ``benchmarks/scs.py`` measure it, and
the MUX machine tests assert it on a ``Clock``. Here the bounds hold on a busy machine too. Only
127.0.0.1; every socket is bound to port 0 and read back; every wait is bounded.
"""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bcast_sp4.bcast import stkm_drm, stkm_mikey
from bcast_sp4.config import load_keyfile
from bcast_sp4.config import load_scs_settings
from bcast_sp4.machines.emmg import EMMGState
from bcast_sp4.roles.stkm_link import RemoteMuxSink
from bcast_sp4.tap.scs import build_service
from tests.doubles import Receiver

from .harness import CARD_SCID, DRM_SCID, RoleProcess
from .test_scs_loopback import DELAY_START, KEYS, TRANSITION_DELAY_START, wait_for

ECMG_PORT_LOG = r"ECMGFactory starting on (\d+)"
MUX_PORT_LOG = r"MuxFactory starting on (\d+)"
SERVICES = 3
PERIODS = 6
REPETITION = {DRM_SCID: 0.100, CARD_SCID: 0.250}  # s, the MUX routes' repetition_period
PROTECTIONS = ["srtp", "ipsec", "ismacryp"]


def write_ecmg(directory: Path) -> Path:
    (directory / "keys.toml").write_text(KEYS + "".join(
        f'[[streams]]\nsuper_cas_id = {scid:#010x}\necm_id = {e}\nkeys = ["{key}"]\n'
        for scid, key in ((DRM_SCID, "drm-sek"), (CARD_SCID, "card-msk")) for e in range(1, SERVICES + 1)))
    (directory / "keys.toml").chmod(0o600)  # the ECMG refuses a key file others may read
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
    """No content flows in this test: scrambler inputs on port 0, outputs to the discard port."""
    lines = ["[scs]", "channel_test_interval = 2.0", "start_allowance = 0.3", "gc_tuning = false",
             "[scs.reconnect]", "initial_delay = 0.05", "max_delay = 0.2",
             "[mux]", 'mode = "remote"', f'connect = "tcp:host=127.0.0.1:port={mux_port}"', "bandwidth = 16"]
    for i in range(SERVICES):
        lines += ["[[service]]", f'name = "s{i}"', "crypto_period = 1.0", f'protection = "{PROTECTIONS[i % 3]}"',
                  'input = "udp:0:interface=127.0.0.1"', 'output = "127.0.0.1:9"']
        for scid, channel in ((DRM_SCID, 1), (CARD_SCID, 2)):
            lines += ["[[service.ecmg]]", f'endpoint = "tcp:host=127.0.0.1:port={ecmg_port}"',
                      f"super_CAS_id = {scid:#010x}", f"ECM_channel_id = {channel}", f"ECM_stream_id = {i + 1}",
                      f"ECM_id = {i + 1}"]
    path = directory / "scs.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class SCSRemoteMuxTest(TestCase):
    timeout = 300

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

    async def test_stkms_reach_the_mux_in_order_decrypt_to_the_scrambler_s_tek_and_repeat(self):
        ecmg = await deferToThread(RoleProcess, "bcast-ecmg", write_ecmg(self.directory), ECMG_PORT_LOG)
        keys = load_keyfile(self.directory / "keys.toml")
        self.processes.append(ecmg)
        receivers = {(scid, e): Receiver(reactor) for scid in (DRM_SCID, CARD_SCID) for e in range(1, SERVICES + 1)}
        for receiver in receivers.values():
            self.ports.append(reactor.listenUDP(0, receiver, interface="127.0.0.1"))
        destinations = {key: port.getHost().port for key, port in zip(receivers, self.ports)}
        mux = await deferToThread(RoleProcess, "bcast-mux", write_mux(self.directory, destinations), MUX_PORT_LOG)
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

        def aired(scid: int, ecm_id: int) -> list[bytes]:
            """The distinct STKMs a route received, in order of their first copy."""
            seen: list[bytes] = []
            for _t, d in receivers[(scid, ecm_id)].got:
                if d not in seen:
                    seen.append(d)
            return seen

        top.startService()
        try:
            await wait_for(lambda: all(sink.is_ready(s) for s in sink.links), 60, "the MUX links")
            # PERIODS windows per route are checked; one more STKM closes the last window
            await wait_for(lambda: all(len(aired(*route)) >= PERIODS + 1 for route in receivers), 180,
                           f"{PERIODS + 1} STKMs aired on every route", step=0.1)
        finally:
            await top.stopService()
        self.assertTrue(all(link.machine.state is EMMGState.CLOSED for link in sink.links.values()))

        stkm_period = {(scid, ecm_id, stkm): cp for (scid, ecm_id, cp), (_on_air, stkm) in submitted.items()}
        checked = 0
        for i in range(SERVICES):
            name = f"s{i}"
            scheduler = top.core.services[name]
            switched = {s.at: s for s in top.scramblers[name].switches}
            for scid in (DRM_SCID, CARD_SCID):
                got = receivers[(scid, i + 1)].got
                period = REPETITION[scid]
                parser = stkm_drm if scid == DRM_SCID else stkm_mikey
                order = aired(scid, i + 1)
                for stkm, following in zip(order, order[1:]):
                    cp = stkm_period[(scid, i + 1, stkm)]  # every STKM aired was submitted by the SCS
                    on_air, _ = submitted[(scid, i + 1, cp)]
                    next_on_air, _ = submitted[(scid, i + 1, stkm_period[(scid, i + 1, following)])]
                    at, material = provided[(name, cp)]
                    n = scheduler.period_at(at)
                    where = (name, hex(scid), n)
                    self.assertEqual(at, scheduler.period_start(n))
                    self.assertAlmostEqual(on_air, at + (TRANSITION_DELAY_START if n == scheduler.first_period
                                                         else DELAY_START), places=6)
                    # the TEK the scrambler used from T(n) (never before), and the STKM carries it
                    self.assertGreaterEqual(switched[at].jitter, -1e-6, where)
                    self.assertEqual(parser.parse_stkm(stkm, keys).material, material, where)
                    copies = [t for t, d in got if d == stkm]
                    first_next = min(t for t, d in got if d == following)
                    self.assertGreaterEqual(copies[0], on_air - 0.001, where)  # never before on_air_from
                    self.assertGreaterEqual(first_next, next_on_air - 0.001, where)
                    self.assertLess(max(copies), first_next, where)  # replaced, not interleaved
                    slots = (first_next - copies[0]) / period
                    self.assertLessEqual(len(copies), slots + 2, (where, len(copies), slots))
                    self.assertGreaterEqual(len(copies), max(1.0, slots / 3 - 1), (where, len(copies), slots))
                    checked += 1
        self.assertGreaterEqual(checked, SERVICES * 2 * PERIODS)
        counters = sink.counters
        self.assertEqual(counters["dropped_queue_full"], 0)
        # every submission was handed over, dropped at the stop, or superseded by a newer one
        unaccounted = counters["submitted"] - counters["handed_over"] - counters["dropped_stopped"]
        self.assertTrue(0 <= unaccounted <= counters["superseded"], counters)
        # clean stop: the MUX saw every stream closed, then both channels (with no stream left)
        await wait_for(lambda: mux.text().count("channel_closed") >= 2, 60, "the MUX to see both channels close")
        text = mux.text()
        self.assertEqual(text.count("stream_closed"), 2 * SERVICES)
        closed = [line for line in text.splitlines() if "channel_closed" in line]
        self.assertTrue(all("streams=0" in line for line in closed), closed)
