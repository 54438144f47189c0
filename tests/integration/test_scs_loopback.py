"""The SCS against the project's ECMG over real loopback TCP, with real UDP content.

The ECMGs run as ``twistd -n bcast-ecmg`` processes; the SCS runs in this process on the real
reactor (trial's TestCase drives it) so the "MUX side" is an in-process :class:`RecordingSink`
that timestamps each STKM's arrival. Content is RTP sent by the test to each service's scrambler
input; the protected output comes back to the test, which opens it with the TEK decrypted from the
period's STKMs, using receivers independent of the scrambler (``tests/test_scrambler.py``).
A last test runs ``twistd -n bcast-scs`` itself. Only 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import tempfile
import textwrap
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from bcast_sp4.bcast import stkm_drm, stkm_mikey, traffic
from bcast_sp4.bcast.keys import load_keyfile
from bcast_sp4.config import load_scs_settings
from bcast_sp4.roles.stkm_sink import RecordingSink
from bcast_sp4.tap.scs import build_service

from ..test_scrambler import LibSRTPReceiver, open_datagram
from .harness import CARD_SCID, DRM_SCID, RoleProcess

PORT_LOG = r"ECMGFactory starting on (\d+)"
PROTECTIONS = ["srtp", "ipsec", "ismacryp"]
KEYS = """format = 1
[keys.drm-sek]
key_id = 0x00000001
key = "000102030405060708090a0b0c0d0e0f"
authentication_key = "5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1"
[keys.card-msk]
key_id = 0x00010001
key_domain_id = "02f810"
key = "0f0e0d0c0b0a09080706050403020100"
"""
CW_KEY = "2b7e151628aed2a6abf7158809cf4f3c"


def free_ports(kind: int, count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, kind) for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def write_ecmg(directory: Path, name: str, scid: int, mode: str, port: int = 0, ecm_ids=range(1, 41)) -> Path:
    keys = KEYS + "".join(
        f'[[streams]]\nsuper_cas_id = {s:#010x}\necm_id = {e}\nkeys = ["{k}"]\n'
        for s, k in ((DRM_SCID, "drm-sek"), (CARD_SCID, "card-msk")) for e in ecm_ids
    )
    (directory / "keys.toml").write_text(keys)
    config = directory / f"{name}.toml"
    config.write_text(textwrap.dedent(f"""\
        [ecmg]
        endpoint = "tcp:{port}:interface=127.0.0.1"
        key_file = "keys.toml"
        [channel]
        delay_start = -200
        transition_delay_start = -300
        max_comp_time = 100
        [[cas]]
        super_CAS_id = {scid:#010x}
        mode = "{mode}"
        [[cw_encryption_key]]
        key_id = 7
        key = "{CW_KEY}"
        """))
    return config


def scs_config(directory: Path, services: list[dict], **scs) -> Path:
    """An SCS config: each service dict has name, protection, input, output, ecmgs [(endpoint, backup, scid, channel id)]."""
    top = {"channel_test_interval": 2.0, "start_allowance": 0.3, "gc_tuning": "false", **scs}
    lines = ["[scs]"] + [f"{k} = {v}" for k, v in top.items()]
    lines += ["[scs.reconnect]", "initial_delay = 0.05", "max_delay = 0.2", "factor = 1.5", "jitter = 0.02",
              "[mux]", 'mode = "in-process"']
    for svc in services:
        lines += ["[[service]]", f'name = "{svc["name"]}"', "crypto_period = 1.0",
                  f'protection = "{svc["protection"]}"', f'input = "udp:{svc["input"]}:interface=127.0.0.1"',
                  f'output = "127.0.0.1:{svc["output"]}"']
        if svc["protection"] == "srtp":
            lines += [f"[service.srtp]", "mki_length = 4"]
        elif svc["protection"] == "ipsec":
            lines += [f"[service.ipsec]", "authenticated = true"]
        else:
            lines += [f"[service.ismacryp]", "key_indicator_length = 4"]
        for k, (endpoint, backup, scid, channel_id) in enumerate(svc["ecmgs"]):
            lines += ["[[service.ecmg]]", f'endpoint = "{endpoint}"', f"super_CAS_id = {scid:#010x}",
                      f"ECM_channel_id = {channel_id}", f"ECM_stream_id = {svc.get('stream_id', 1)}", f'ECM_id = {svc["ecm_id"]}']
            if backup:
                lines.append(f'backup_endpoint = "{backup}"')
            if svc.get("cw_encryption") and k == 0:
                lines.append(f'cw_encryption = {{ algorithm = "aes128-key-wrap", key_id = 7, key = "{CW_KEY}" }}')
    path = directory / "scs.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Content(DatagramProtocol):
    """Receives one service's protected output: (arrival time, datagram)."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []

    def datagramReceived(self, data, addr) -> None:
        self.received.append((reactor.seconds(), data))


def rtp(service: int, seq: int) -> bytes:
    return struct.pack(">BBHII", 0x80, 96, seq & 0xFFFF, seq * 3000, 0x5000 + service) + struct.pack(">II", service, seq) + b"payload" * 8


def material_of(submission, keys):
    parser = stkm_drm if submission.super_cas_id == DRM_SCID else stkm_mikey
    return parser.parse_stkm(submission.stkm, keys).material


def tcp(port: int) -> str:
    return f"tcp:host=127.0.0.1:port={port}"


class SCSLoopbackTest(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="bcast-scs-"))
        self.processes: list[RoleProcess] = []

    def tearDown(self):
        try:
            for process in self.processes:
                assert process.stop() == 0, process.text()[-2000:]
                assert "Traceback" not in process.text()
        finally:
            shutil.rmtree(self.directory, True)

    def ecmg(self, name: str, scid: int, mode: str, port: int = 0) -> RoleProcess:
        directory = self.directory / name
        directory.mkdir(exist_ok=True)
        process = RoleProcess("bcast-ecmg", write_ecmg(directory, name, scid, mode, port), PORT_LOG)
        self.processes.append(process)
        return process

    async def run_scs(self, config: Path, seconds: float, traffic_services: list[int] = (), during=None):
        """Start the SCS from *config*, feed content for *seconds*, stop it; returns (top, sink, contents, sent)."""
        settings = load_scs_settings(config)
        sink = RecordingSink(reactor.seconds)
        top = build_service(settings, reactor, sink=sink)
        contents, ports = {}, []
        for index in traffic_services:
            service = settings.services[index]
            contents[index] = Content()
            ports.append(reactor.listenUDP(service.scrambler.output[1], contents[index], interface="127.0.0.1"))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent: dict[tuple[int, int], float] = {}
        seq = [0]

        def send() -> None:
            seq[0] += 1
            for index in traffic_services:
                sent[(index, seq[0])] = reactor.seconds()
                sender.sendto(rtp(index, seq[0]), ("127.0.0.1", settings.services[index].scrambler.input_port))

        loop = LoopingCall(send)
        top.startService()
        if traffic_services:
            loop.start(0.1)
        try:
            if during is not None:
                await during(top)
            await deferLater(reactor, max(0.0, seconds - (reactor.seconds() - self.started)), lambda: None)
        finally:
            if loop.running:
                loop.stop()
            await top.stopService()
            for port in ports:
                await port.stopListening()
            sender.close()
        return top, sink, contents, sent

    def check_periods(self, top, sink, settings, periods_range, keys, *, allowed_missing=0, allowed_late=0):
        """Every period: an STKM per ECMG on time, all carrying the same TEK. Returns {(service, n): material}."""
        teks, missing, late = {}, [], []
        for service in settings.services:
            scheduler = top.core.services[service.spec.name]
            for n in periods_range(scheduler):
                T = scheduler.period_start(n)
                materials = []
                for link in service.spec.links:
                    subs = [s for s in sink.submissions if (s.super_cas_id, s.ecm_id, s.cp_number)
                            == (link.super_CAS_id, link.ECM_id, n & 0xFFFF) and T - 3 < s.on_air_from < T + 3]
                    if not subs:
                        missing.append((service.spec.name, n, link.super_CAS_id))
                        continue
                    (sub,) = subs
                    delay = -0.3 if n == scheduler.first_period else -0.2  # transition_delay_start, delay_start
                    self.assertAlmostEqual(sub.on_air_from, T + delay, places=6)
                    if sub.received_at > sub.on_air_from:
                        late.append((service.spec.name, n, link.super_CAS_id))
                    self.assertEqual(sub.repetition_ms, 100)
                    materials.append(material_of(sub, keys))
                if materials:
                    self.assertTrue(all(x == materials[0] for x in materials), "ECMGs got different TEKs")
                    teks[(service.spec.name, n)] = materials[0]
        self.assertLessEqual(len({(s, n) for s, n, _ in missing}), allowed_missing, missing)
        self.assertLessEqual(len(late), allowed_late, late)
        return teks, missing

    def check_content(self, top, settings, contents, sent, teks, *, margin=0.05, min_checked=8):
        """Packets sent well inside period n come out protected with TEK(n), decrypting to what was sent."""
        for index, content in contents.items():
            service = settings.services[index]
            scheduler = top.core.services[service.spec.name]
            receiver = LibSRTPReceiver()
            checked = 0
            for arrived, datagram in content.received:
                for n in (scheduler.period_at(arrived), scheduler.period_at(arrived) - 1):
                    material = teks.get((service.spec.name, n))
                    if material is None:
                        continue
                    try:
                        plain = open_datagram(material, datagram, receiver)
                    except (AssertionError, Exception):
                        continue
                    svc, seq = struct.unpack_from(">II", plain, 12)
                    self.assertEqual(plain, rtp(svc, seq))
                    self.assertEqual(svc, index)
                    sent_at = sent[(index, seq)]
                    T = scheduler.period_start(n)
                    if T + margin <= sent_at <= T + scheduler.period_length - margin:
                        self.assertEqual(scheduler.period_at(sent_at), n, "protected with another period's TEK")
                        checked += 1
                    break
                else:
                    if (service.spec.name, scheduler.period_at(arrived)) in teks:
                        self.fail(f"{service.spec.name}: a datagram at {arrived} opens with no TEK of its period")
            self.assertGreaterEqual(checked, min_checked, service.spec.name)

    # -- 2 ECMGs (DRM, Smartcard) x 20 services x 30 crypto-periods of 1 s -----------------------

    async def test_twenty_services_two_ecmgs_thirty_periods(self):
        drm = self.ecmg("drm", DRM_SCID, "drm")
        card = self.ecmg("card", CARD_SCID, "smartcard")
        keys = load_keyfile(self.directory / "drm" / "keys.toml")
        inputs, outputs = free_ports(socket.SOCK_DGRAM, 20), free_ports(socket.SOCK_DGRAM, 20)
        services = [
            {"name": f"svc{i:02d}", "protection": PROTECTIONS[i % 3], "input": inputs[i], "output": outputs[i],
             "ecm_id": i + 1, "cw_encryption": i % 4 == 0,
             "ecmgs": [(tcp(drm.port), None, DRM_SCID, 100 + i), (tcp(card.port), None, CARD_SCID, 200 + i)]}
            for i in range(20)
        ]
        config = scs_config(self.directory, services)
        settings = load_scs_settings(config)
        self.started = reactor.seconds()
        # first periods start >= 0.8 s after start; 30 periods later, + 1 s of phase spread
        top, sink, contents, sent = await self.run_scs(config, 0.8 + 1.0 + 30 + 1.2, traffic_services=range(20))
        first = lambda s: range(s.first_period, s.first_period + 30)  # noqa: E731
        teks, _ = self.check_periods(top, sink, settings, first, keys)
        self.assertEqual(len(teks), 20 * 30)
        self.check_content(top, settings, contents, sent, teks)
        # the scrambler switched to each TEK at its T(n) (by its timer or by a datagram), promptly
        for name, scheduler in top.core.services.items():
            switches = list(top.scramblers[name].switches)
            ats = {s.at for s in switches}
            self.assertEqual({scheduler.period_start(n) for n in first(scheduler)} - ats, set())
            self.assertEqual([s for s in switches if not 0 <= s.jitter < 0.05], [])
            self.assertEqual(scheduler.stats.periods_skipped, 0)
            self.assertEqual(scheduler.stats.stkms_late, 0)

    # -- ECMG stopped mid-run and restarted --------------------------------------------------------

    async def test_ecmg_restart_at_most_one_period_without_a_fresh_stkm(self):
        (port,) = free_ports(socket.SOCK_STREAM, 1)
        drm = self.ecmg("drm", DRM_SCID, "drm", port)
        keys = load_keyfile(self.directory / "drm" / "keys.toml")
        inputs, outputs = free_ports(socket.SOCK_DGRAM, 3), free_ports(socket.SOCK_DGRAM, 3)
        services = [{"name": f"r{i}", "protection": PROTECTIONS[i], "input": inputs[i], "output": outputs[i],
                     "ecm_id": i + 1, "ecmgs": [(tcp(port), None, DRM_SCID, 10 + i)]} for i in range(3)]
        config = scs_config(self.directory, services)
        settings = load_scs_settings(config)
        restarted = []

        async def restart(top):
            await deferLater(reactor, 3.4, lambda: None)
            stopped_at = reactor.seconds()
            await deferToThread(drm.stop)
            self.processes.remove(drm)
            process = await deferToThread(RoleProcess, "bcast-ecmg", self.directory / "drm" / "drm.toml", PORT_LOG)
            self.processes.append(process)
            restarted.append((stopped_at, reactor.seconds()))

        self.started = reactor.seconds()
        top, sink, contents, sent = await self.run_scs(config, 9.5, traffic_services=range(3), during=restart)
        self.assertTrue(restarted)
        stopped_at, back_at = restarted[0]
        self.assertLess(back_at - stopped_at, 3.0)

        def window(s):
            return range(s.first_period, s.period_at(self.started + 9.5) - 1)

        teks, missing = self.check_periods(top, sink, settings, window, keys, allowed_missing=3, allowed_late=3)
        for service in settings.services:  # per service: at most one period without a fresh STKM
            scheduler = top.core.services[service.spec.name]
            gaps = [n for s, n, _ in missing if s == service.spec.name]
            self.assertLessEqual(len(gaps), 1, (service.spec.name, gaps, back_at - stopped_at))
            self.assertEqual(scheduler.stats.periods_skipped, len(gaps))
            last = window(scheduler)[-3:]  # and it resumed
            self.assertTrue(all((service.spec.name, n) in teks for n in last))
        self.check_content(top, settings, contents, sent, teks, min_checked=30)

    async def test_backup_ecmg_takes_over_without_a_missing_period(self):
        primary = self.ecmg("primary", DRM_SCID, "drm")
        backup = self.ecmg("backup", DRM_SCID, "drm")
        keys = load_keyfile(self.directory / "primary" / "keys.toml")
        inputs, outputs = free_ports(socket.SOCK_DGRAM, 3), free_ports(socket.SOCK_DGRAM, 3)
        services = [{"name": f"b{i}", "protection": PROTECTIONS[i], "input": inputs[i], "output": outputs[i],
                     "ecm_id": i + 1, "ecmgs": [(tcp(primary.port), tcp(backup.port), DRM_SCID, 10 + i)]}
                    for i in range(3)]
        config = scs_config(self.directory, services)
        settings = load_scs_settings(config)

        serving = []

        async def kill_primary(top):
            await deferLater(reactor, 3.4, lambda: None)
            serving.append({e.current_name for e in top.runner.endpoints.values()})
            await deferToThread(primary.stop)
            self.processes.remove(primary)
            await deferLater(reactor, 1.5, lambda: None)
            serving.append({e.current_name for e in top.runner.endpoints.values()})

        self.started = reactor.seconds()
        top, sink, contents, sent = await self.run_scs(config, 8.5, traffic_services=range(3), during=kill_primary)

        def window(s):
            return range(s.first_period, s.period_at(self.started + 8.5) - 1)

        teks, missing = self.check_periods(top, sink, settings, window, keys)
        self.assertEqual(missing, [])
        self.check_content(top, settings, contents, sent, teks, min_checked=30)
        self.assertIn("connection from", backup.text())  # the backup served after the primary died
        self.assertEqual(serving, [{tcp(primary.port)}, {tcp(backup.port)}])


def test_twistd_bcast_scs_plugin_file_sink_and_logs_without_keys(tmp_path):
    """``twistd -n bcast-scs`` for real: STKMs in the file sink decrypt; no TEK byte string in the log."""
    (tmp_path / "drm").mkdir()
    process = RoleProcess("bcast-ecmg", write_ecmg(tmp_path / "drm", "drm", DRM_SCID, "drm"), PORT_LOG)
    try:
        inputs, outputs = free_ports(socket.SOCK_DGRAM, 2), free_ports(socket.SOCK_DGRAM, 2)
        services = [{"name": f"p{i}", "protection": PROTECTIONS[i], "input": inputs[i], "output": outputs[i],
                     "ecm_id": i + 1, "stream_id": i + 1, "cw_encryption": True, "ecmgs": [(tcp(process.port), None, DRM_SCID, 1)]}
                    for i in range(2)]
        config = scs_config(tmp_path, services)
        text = config.read_text().replace('mode = "in-process"', 'mode = "file"\npath = "stkms.jsonl"')
        config.write_text(text)
        scs = RoleProcess("bcast-scs", config, r"service_start service=p1 first_cp=(\d+)")
        time.sleep(4.0)
        assert scs.stop() == 0, scs.text()[-3000:]
    finally:
        assert process.stop() == 0
    log = scs.text()
    assert "Traceback" not in log and "channel_open" in log
    lines = [json.loads(line) for line in (tmp_path / "stkms.jsonl").read_text().splitlines()]
    assert len(lines) >= 4 and {line["ecm_id"] for line in lines} == {1, 2}
    keys = load_keyfile(tmp_path / "drm" / "keys.toml")
    for line in lines:
        material = stkm_drm.parse_stkm(bytes.fromhex(line["stkm"]), keys).material
        secret = traffic.key_material_plaintext(material)
        for chunk in (secret.hex(), secret[:8].hex(), secret[:8].hex().upper(), repr(secret[:8])):
            assert chunk not in log
        assert line["received_at"] <= line["on_air_from"]
