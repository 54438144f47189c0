#!/usr/bin/env python3
"""ECMG load: a running ``bcast-ecmg`` process driven from this (separate) process over loopback.

Two kinds of run against the same ECMG, each beside a baseline measured in the same run:

* throughput — N channels x M streams, CW_provisions pipelined (a window per connection);
  prints DRM-Profile STKMs/s, p50/p99 response time and the ECMG's CPU µs per STKM.
  Target (issue #9): >= 0.10 x the bare-Twisted pipelined rate, judged on the median of the
  same-run ratios (each run's rate over its own baseline). Also printed: the build-only bound,
  the ratio an ECMG would reach doing nothing but the bare server's work and the DRM build
  (timed hot in the same run) on one core.
* paced — the load of a real SCS (issue #9): S streams on C-second crypto-periods, each sending
  one CW_provision per period, spread evenly over the period, not pipelined (default 40 channels
  x 100 streams on 1 s periods), for each mode: DRM Profile and Smartcard Profile STKMs (SRTP
  TEKs), and the classic DVB test ECM in sections (8-byte CWs). Prints, per mode, the ECMG's CPU µs
  per STKM, p50/p99/max response time and the crypto cost of one STKM: the pure build function of
  that mode (``stkm_drm.build_stkm``, ``stkm_mikey.build_stkm``, ``ecm.build_dvb_ecm``, as the
  ECMG calls it, with its cached key state) timed in this process in the same run.
  Target (issue #9), every mode: CPU/STKM <= baseline CPU/reply + 1.5 x crypto, p99 <= 2 ms.
* baseline — a bare Twisted server in another process that frames each CW_provision and answers a
  canned ECM_response (no decode, no machine, no crypto), driven with the same throughput and the
  same paced load: the loopback + framework floor, measured now, on this machine.

``--breakdown`` times the steps of one CW_provision in this process; ``--instructions`` counts
their instructions under valgrind's callgrind instead (with ``--compare``, also another tree's):
a figure that does not move with the machine's load, for before/after on a busy machine.

Server CPU comes from /proc/<pid>/task/*/schedstat (nanoseconds; /proc/<pid>/stat ticks where
that is missing). Every figure is a median over --runs runs; within a run the baseline and the
modes take turns. Only 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import gc
import os
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
# The code measured: this tree, or (for --compare's crypto timing, in a child process) another one.
CODE_ROOT = Path(os.environ.get("BCAST_SP4_BENCH_CODE", ROOT))
sys.path.insert(0, str(CODE_ROOT))

from bcast_sp4 import wire  # noqa: E402
from bcast_sp4.bcast import ecm, stkm_drm, stkm_mikey, traffic  # noqa: E402
from bcast_sp4.bcast.keys import ServiceKey  # noqa: E402
from bcast_sp4.wire import ecmg_scs as m  # noqa: E402
from bcast_sp4.wire.params import CPCWCombination  # noqa: E402

SCID = 0x00010001  # DRM Profile (throughput runs)
HZ = os.sysconf("SC_CLK_TCK")
# The paced modes: name -> Super_CAS_id in the ECMG's config
MODES = {"drm": 0x00010001, "smartcard": 0x00020001, "dvb": 0x4AE60000}
SEK_HEX, SAK_HEX = "000102030405060708090a0b0c0d0e0f", "5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1"
MSK_HEX, KEY_DOMAIN_HEX, MSK_ID = "0f0e0d0c0b0a09080706050403020100", "02f810", 0x00010001
DVB_KEY_HEX = "00112233445566778899aabbccddeeff"
PACED_ECM_IDS = 20_000  # first ECM_id of the paced streams (throughput streams stay below)


# -- processes under test ---------------------------------------------------------------------


def write_config(directory: Path, throughput_streams: int, paced_streams: int) -> Path:
    lines = [
        "format = 1",
        "[keys.sek]",
        "key_id = 1",
        f'key = "{SEK_HEX}"',
        f'authentication_key = "{SAK_HEX}"',
        "[keys.msk]",
        f"key_id = {MSK_ID:#010x}",
        f'key = "{MSK_HEX}"',
        f'key_domain_id = "{KEY_DOMAIN_HEX}"',
    ]
    for ecm_id in range(throughput_streams):
        lines += ["[[streams]]", f"super_cas_id = {SCID}", f"ecm_id = {ecm_id}", 'keys = ["sek"]']
    for ecm_id in range(PACED_ECM_IDS, PACED_ECM_IDS + paced_streams):
        if ecm_id >= throughput_streams:
            lines += ["[[streams]]", f"super_cas_id = {MODES['drm']}", f"ecm_id = {ecm_id}", 'keys = ["sek"]']
        lines += ["[[streams]]", f"super_cas_id = {MODES['smartcard']}", f"ecm_id = {ecm_id}", 'keys = ["msk"]']
    (directory / "keys.toml").write_text("\n".join(lines) + "\n")
    (directory / "keys.toml").chmod(0o600)  # the ECMG refuses a key file others may read
    config = directory / "ecmg.toml"
    config.write_text(
        f"""[ecmg]
endpoint = "tcp:0:interface=127.0.0.1"
key_file = "keys.toml"
max_streams = {throughput_streams + paced_streams + 10}
max_invalid_messages = 0
[channel]
max_comp_time = 1000
min_CP_duration = 1
[[cas]]
super_CAS_id = {MODES['drm']:#010x}
mode = "drm"
[[cas]]
super_CAS_id = {MODES['smartcard']:#010x}
mode = "smartcard"
[[cas]]
super_CAS_id = {MODES['dvb']:#010x}
mode = "dvb-sections"
key = "{DVB_KEY_HEX}"
"""
    )
    return config


def start(args: list[str], cwd: Path, marker: str, root: Path = ROOT) -> tuple[subprocess.Popen, int]:
    log = open(cwd / "server.log", "w+")
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (cwd / "server.log").read_text()
        for line in text.splitlines():
            if marker in line:
                return proc, int(line.rsplit(" ", 1)[1])
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{text}")
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


def start_ecmg(directory: Path, throughput_streams: int, paced_streams: int, root: Path = ROOT,
               extra: tuple[str, ...] = (), build_cpu: Path | None = None) -> tuple[subprocess.Popen, int]:
    directory.mkdir(exist_ok=True)
    config = write_config(directory, throughput_streams, paced_streams)
    launcher = (["-c", "from twisted.scripts.twistd import run; run()"] if build_cpu is None
                else [__file__, "--build-cpu-server", str(build_cpu)])
    return start(
        [sys.executable, *launcher, "-n", "--pidfile=", "bcast-ecmg", "--config", str(config), *extra],
        directory,
        "ECMGFactory starting on",
        root,
    )


BUILDS = (("drm", stkm_drm, "build_stkm"), ("smartcard", stkm_mikey, "build_stkm"), ("dvb", ecm, "build_dvb_ecm"))


def build_cpu_server(totals: Path, twistd_args: list[str]) -> None:
    """``twistd`` with each mode's STKM build function timed in this thread's CPU time (``--build-cpu``).

    The ECM source calls the builds through their modules (``stkm_drm.build_stkm``, ...), so each
    is replaced there by a wrapper that adds the thread CPU time (``CLOCK_THREAD_CPUTIME_ID``, not
    wall time: on a VM, wall time also counts the moments the host runs something else) and the
    calls to a total per mode. SIGUSR1 writes the totals to *totals* (``seq`` first, then ``mode
    calls ns`` lines; written whole, then renamed into place).
    """
    from twisted.scripts.twistd import run

    sums = {mode: [0, 0] for mode, _, _ in BUILDS}
    clock = time.thread_time_ns
    for mode, module, name in BUILDS:
        def timed(*args, _build=getattr(module, name), _slot=sums[mode], **kwargs):
            start = clock()
            try:
                return _build(*args, **kwargs)
            finally:
                _slot[0] += 1
                _slot[1] += clock() - start
        setattr(module, name, timed)
    seq = [0]

    def dump(_signum, _frame) -> None:
        seq[0] += 1
        tmp = totals.with_suffix(".tmp")
        tmp.write_text(f"seq {seq[0]}\n" + "".join(f"{mode} {n} {ns}\n" for mode, (n, ns) in sums.items()))
        tmp.replace(totals)

    signal.signal(signal.SIGUSR1, dump)
    sys.argv = ["twistd", *twistd_args]
    run()


def read_build_cpu(pid: int, totals: Path) -> dict[str, tuple[int, int]]:
    """The instrumented ECMG's totals now: mode -> (builds, thread CPU ns) (:func:`build_cpu_server`)."""
    def current() -> tuple[int, dict[str, tuple[int, int]]]:
        try:
            lines = [line.split() for line in totals.read_text().splitlines()]
        except FileNotFoundError:
            return 0, {}
        return int(lines[0][1]), {mode: (int(n), int(ns)) for mode, n, ns in lines[1:]}

    before = current()[0]
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seq, sums = current()
        if seq > before:
            return sums
        time.sleep(0.01)
    raise SystemExit("the --build-cpu ECMG did not write its totals")


def baseline_protocol():
    """The bare server's protocol: frame each message, answer a canned ECM_response. No decode."""
    from twisted.internet import protocol

    canned = m.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=1, ECM_datagram=bytes(120)).encode()
    status = m.ChannelStatus(ECM_channel_id=1, section_TSpkt_flag=2, delay_start=0, delay_stop=0, ECM_rep_period=100,
                             max_streams=0, min_CP_duration=1, lead_CW=1, CW_per_msg=2, max_comp_time=100).encode()

    class Bare(protocol.Protocol):
        def connectionMade(self):
            self.framer = wire.Framer()

        def dataReceived(self, data):
            out = []
            for frame in self.framer.feed(data):
                out.append(canned if frame[1:3] == b"\x02\x01" else status)
            self.transport.write(b"".join(out))

    return Bare()


def baseline_server() -> None:
    """A bare Twisted server (:func:`baseline_protocol`): the loopback + framework floor."""
    from twisted.internet import protocol, reactor

    factory = protocol.Factory()
    factory.buildProtocol = lambda addr: baseline_protocol()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(f"baseline listening on {port.getHost().port}", flush=True)
    reactor.run()


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of *pid* so far (ns resolution from schedstat, else clock ticks)."""
    try:
        return sum(int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
                   for task in os.listdir(f"/proc/{pid}/task")) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / HZ


# -- load generator ---------------------------------------------------------------------------


class Connection:
    def __init__(self, port: int, channel_id: int, streams: list[int], first_ecm_id: int, scid: int = SCID) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.channel_id = channel_id
        self.streams = streams
        self.framer = wire.Framer()
        self.sent: dict[tuple[int, int], float] = {}
        self.outbox = bytearray()
        self.pending: list[bytes] = []
        self.errors: dict[int, int] = {}  # error_status -> stream_errors received
        self._blocking_request(m.ChannelSetup(ECM_channel_id=channel_id, Super_CAS_id=scid))
        for index, stream_id in enumerate(streams):
            self.sock.sendall(m.StreamSetup(ECM_channel_id=channel_id, ECM_stream_id=stream_id,
                                            ECM_id=first_ecm_id + index, nominal_CP_duration=20).encode())
        for _ in streams:
            self._read_one()
        self.sock.setblocking(False)

    def close_streams(self) -> None:
        """stream_close_request for every stream, then wait for every response (frees the ECM_ids)."""
        self.sock.setblocking(True)
        self.sock.sendall(b"".join(m.StreamCloseRequest(ECM_channel_id=self.channel_id, ECM_stream_id=s).encode()
                                   for s in self.streams))
        for _ in self.streams:
            self._read_one(m.StreamCloseResponse)
        self.sock.close()

    def _blocking_request(self, message) -> None:
        self.sock.sendall(message.encode())
        self._read_one()

    def _read_one(self, expected=(m.ChannelStatus, m.StreamStatus)):
        while not self.pending:
            self.pending += self.framer.feed(self.sock.recv(65536))
        reply = wire.decode(self.pending.pop(0))
        if not isinstance(reply, expected):
            raise SystemExit(f"unexpected reply {reply}")
        return reply

    def queue(self, frame: bytes, stream_id: int, cp: int, now: float) -> None:
        self.sent[stream_id, cp] = now
        self.outbox += frame

    def flush(self) -> None:
        if self.outbox:
            try:
                n = self.sock.send(self.outbox)
            except BlockingIOError:
                return
            del self.outbox[:n]

    def receive(self, now: float, latencies: list[float], baseline: bool) -> int:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return 0
        if not data:
            raise SystemExit("server closed a connection")
        count = 0
        for frame in self.framer.feed(data):
            if baseline:
                _stream_id, _cp = next(iter(self.sent))
                sent_at = self.sent.pop((_stream_id, _cp))
            elif frame[1:3] == b"\x01\x06":
                # stream_error (a machine this loaded can miss max_comp_time: 0x000D): counted, and
                # the stream's oldest outstanding request is answered (the ECMG never closes here:
                # max_invalid_messages = 0)
                error = wire.decode(frame)
                if not isinstance(error, m.StreamError):
                    raise SystemExit(f"unexpected reply {error}")
                self.errors[error.error_status[0]] = self.errors.get(error.error_status[0], 0) + 1
                oldest = next((key for key in self.sent if key[0] == error.ECM_stream_id), None)
                if oldest is None:
                    raise SystemExit(f"unexpected reply {error}")
                self.sent.pop(oldest)
                continue
            else:
                # ECM_response: channel(6) stream(6) CP_number(6) ... in our encoder's order
                if frame[1:3] != b"\x02\x02":
                    raise SystemExit(f"unexpected reply {wire.decode(frame)}")
                stream_id = struct.unpack_from(">H", frame, 15)[0]
                cp = struct.unpack_from(">H", frame, 21)[0]
                sent_at = self.sent.pop((stream_id, cp))
            latencies.append(now - sent_at)
            count += 1
        return count


def provision_frames(channel_id: int, stream_id: int, count: int, mode: str = "drm") -> list[tuple[int, bytes]]:
    if mode == "dvb":  # a classic DVB SCS's CWs: 8 bytes (DVB-CSA)
        teks = [os.urandom(8) for _ in range(count + 1)]
    else:
        teks = [traffic.encode_cw(traffic.generate(traffic.TrafficProtection.SRTP)) for _ in range(count + 1)]
    return [
        (cp, m.CWProvision(ECM_channel_id=channel_id, ECM_stream_id=stream_id, CP_number=cp,
                           CP_CW_combination=(CPCWCombination(cp, teks[cp]), CPCWCombination(cp + 1, teks[cp + 1]))).encode())
        for cp in range(count)
    ]


def throughput(port: int, pid: int, channels: int, streams: int, seconds: float, window: int, baseline: bool, base_channel: int):
    conns = [Connection(port, base_channel + c, list(range(1, streams + 1)), (base_channel + c) * streams) for c in range(channels)]
    frames = {(c.channel_id, s): provision_frames(c.channel_id, s, 64) for c in conns for s in c.streams}
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    latencies: list[float] = []
    cursor = {key: 0 for key in frames}
    done = 0
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        for conn in conns:
            budget = window - len(conn.sent)
            while budget > 0:
                for s in conn.streams:
                    if budget <= 0:
                        break
                    key = (conn.channel_id, s)
                    i = cursor[key]
                    cp, frame = frames[key][i % 64]
                    if (s, cp) in conn.sent:
                        continue
                    cursor[key] = i + 1
                    conn.queue(frame, s, cp, now)
                    budget -= 1
                else:
                    continue
                break
            conn.flush()
        for key, _ in sel.select(timeout=0.01):
            done += key.data.receive(time.perf_counter(), latencies, baseline)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    for conn in conns:
        conn.sock.close()
    rate = done / elapsed
    return rate, cpu / max(done, 1) * 1e6, percentile(latencies, 50), percentile(latencies, 99)


def paced(port: int, pid: int, streams: int, period: float, seconds: float, base_channel: int, mode: str,
          baseline: bool, per_channel: int = 100) -> dict[str, float]:
    """One paced run: *streams* streams, one CW_provision each per *period*, spread evenly, not pipelined."""
    channels = (streams + per_channel - 1) // per_channel
    conns = [Connection(port, base_channel + c, list(range(1, min(per_channel, streams - c * per_channel) + 1)),
                        PACED_ECM_IDS + c * per_channel, MODES[mode]) for c in range(channels)]
    frames = {(c.channel_id, s): provision_frames(c.channel_id, s, 8, mode) for c in conns for s in c.streams}
    schedule = sorted(((i / streams) * period, conn, s) for i, (conn, s) in enumerate((c, s) for c in conns for s in c.streams))
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    latencies: list[float] = []
    gc.collect()
    gc.freeze()  # keep the load generator's own GC pauses out of the figures
    periods = max(1, round(seconds / period))
    index, total = 0, len(schedule) * periods
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    while index < total or any(c.sent for c in conns):
        now = time.perf_counter()
        if now - t0 > periods * period + 10:
            raise SystemExit("paced run did not finish in time")
        while index < total:
            offset, conn, s = schedule[index % len(schedule)]
            due = t0 + (index // len(schedule)) * period + offset
            if due > now:
                break
            cp, frame = frames[conn.channel_id, s][(index // len(schedule)) % 8]
            conn.queue(frame, s, cp, now)  # response time counts from the send, not the plan
            index += 1
        for conn in conns:
            conn.flush()
        for key, _ in sel.select(timeout=0.0005):
            key.data.receive(time.perf_counter(), latencies, baseline)
    cpu = cpu_seconds(pid) - cpu0
    gc.unfreeze()
    sel.close()
    for conn in conns:
        if baseline:
            conn.sock.close()
        else:
            conn.close_streams()
    errors: dict[int, int] = {}
    for conn in conns:
        for code, n in conn.errors.items():
            errors[code] = errors.get(code, 0) + n
    return {
        "replies": len(latencies),
        "errors": sum(errors.values()),
        "error_codes": errors,
        "cpu_us": cpu / max(len(latencies), 1) * 1e6,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "max": percentile(latencies, 100),
    }


# -- where one STKM's CPU goes, in this process ------------------------------------------------


def in_process_ecmg():
    """The ECMG as ``twistd bcast-ecmg`` builds it (``tap.ecmg.build_service``, 100 paced streams a
    mode) on a memory reactor: ``(factory, crypto builders)``."""
    from twisted.internet.testing import MemoryReactorClock

    from bcast_sp4.config import load_ecmg_settings, load_keyfile
    from bcast_sp4.tap.ecmg import build_service

    work = Path(tempfile.mkdtemp(prefix="bcast-ecmg-breakdown-"))
    config = write_config(work, 0, 100)
    reactor = MemoryReactorClock()
    reactor.advance(time.time())
    return build_service(load_ecmg_settings(config), load_keyfile(work / "keys.toml"), reactor).factory, crypto_builders()


def mode_connection(factory, channel: int, mode: str):
    """One protocol of *factory* on a ``StringTransport`` with a channel of *mode* and 100 streams:
    ``(protocol, transport, frames)``, frames = 8 CW_provisions a stream (consecutive CPs)."""
    from twisted.internet.testing import StringTransport

    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(m.ChannelSetup(ECM_channel_id=channel, Super_CAS_id=MODES[mode]).encode())
    for stream_id in range(1, 101):
        protocol.dataReceived(m.StreamSetup(ECM_channel_id=channel, ECM_stream_id=stream_id,
                                            ECM_id=PACED_ECM_IDS + stream_id - 1, nominal_CP_duration=20).encode())
    frames = [frame for s in range(1, 101) for _, frame in provision_frames(channel, s, 8, mode)]
    transport.clear()
    return protocol, transport, frames


def breakdown(modes: list[str], seconds: float = 0.05) -> None:
    """CPU µs per CW_provision of each step the ECMG takes, measured in this process.

    The ECMG is built as ``twistd bcast-ecmg`` builds it (``tap.ecmg.build_service`` from the same
    configuration) on a memory reactor; one protocol per mode takes a channel of 100 streams over a
    ``StringTransport``. Rows: the adapter's whole ``dataReceived`` for one CW_provision (framing,
    decoding, machine, source, encoding; no reactor, no socket), and its parts: ``Framer.feed``,
    ``wire.decode``, the machine's ``receive`` (machine + source), the source's ``generate``, the
    build function alone (the crypto cost), and encoding the ECM_response. The bare server's
    ``dataReceived`` is timed the same way. Server CPU per STKM in a paced run minus the whole
    ``dataReceived`` is the reactor and the socket calls.
    """
    from twisted.internet.testing import StringTransport

    factory, builders = in_process_ecmg()

    def per_call(fn) -> float:  # the least of 15 timing runs: the step's own cost on a shared machine
        once = min(timeit.repeat(fn, number=20, repeat=3, timer=time.process_time)) / 20
        number = max(1, int(seconds / max(once, 1e-7)))
        return min(timeit.repeat(fn, number=number, repeat=15, timer=time.process_time)) / number * 1e6

    print(f"breakdown: CPU µs per CW_provision, in this process (least of 15 timing runs of ~{seconds:g} s)")
    print(f"  {'mode':<10}{'dataReceived':>13}{'Framer.feed':>12}{'decode':>8}{'receive':>9}{'generate':>10}"
          f"{'build':>7}{'encode':>8}   (receive = machine + generate; generate = source + build)")
    for channel, mode in enumerate(modes, start=1):
        protocol, transport, frames = mode_connection(factory, channel, mode)
        cursor = iter(range(1 << 62))

        def whole() -> None:
            protocol.dataReceived(frames[next(cursor) % len(frames)])
            transport.clear()

        protocol.dataReceived(frames[0])
        reply = wire.decode(transport.value())
        if not isinstance(reply, m.ECMResponse):
            raise SystemExit(f"breakdown: {mode} answered {reply}")
        transport.clear()
        messages = [wire.decode(frame) for frame in frames]
        framer = wire.Framer()
        requests = []  # the source's requests for every frame, in order (consecutive CPs per stream)
        real_generate = factory.source.generate
        factory.source.generate = lambda request: requests.append(request) or real_generate(request)
        for frame in frames:
            protocol.dataReceived(frame)
        factory.source.generate = real_generate
        transport.clear()
        machine = protocol.machine
        now = factory.clock.seconds()
        row = {
            "dataReceived": per_call(whole),
            "Framer.feed": per_call(lambda: framer.feed(frames[5])),
            "decode": per_call(lambda: wire.decode(frames[5])),
            "receive": per_call(lambda: machine.receive(messages[next(cursor) % len(messages)], now, now)),
            "generate": per_call(lambda: factory.source.generate(requests[next(cursor) % len(requests)])),
            "build": per_call(builders[mode]),
            "encode": per_call(reply.encode),
        }
        for frame in frames:  # every step above was timed on the normal path: each still makes an ECM
            protocol.dataReceived(frame)
            if not isinstance(wire.decode(transport.value()), m.ECMResponse) or transport.disconnecting:
                raise SystemExit(f"breakdown: {mode} answered {wire.decode(transport.value())}")
            transport.clear()
        print(f"  {mode:<10}" + "".join(f"{row[k]:>{w}.1f}" for k, w in zip(row, (13, 12, 8, 9, 10, 7, 8))), flush=True)
        protocol.connectionLost(None)
    bare = baseline_protocol()
    bare.makeConnection(StringTransport())
    frame = provision_frames(1, 1, 1)[0][1]

    def bare_call() -> None:
        bare.dataReceived(frame)
        bare.transport.clear()

    print(f"  {'bare':<10}{per_call(bare_call):>13.1f}   (the baseline server's dataReceived: framing + one canned write)")


# -- instructions per CW_provision, under valgrind --------------------------------------------

_MARK = os.getppid  # a call the child makes between its loops: callgrind dumps its counts there


def instructions_child(modes: list[str], calls: int) -> None:
    """Under callgrind: per mode, loops of *calls* each (whole ``dataReceived``, ``wire.decode``,
    the adapter's ``handle`` = machine + source + build, the build function, an empty loop, the
    bare server's ``dataReceived``), a :data:`_MARK` call before and after each."""
    factory, builders = in_process_ecmg()
    bare = baseline_protocol()
    from twisted.internet.testing import StringTransport

    bare.makeConnection(StringTransport())
    for channel, mode in enumerate(modes, start=1):
        protocol, transport, frames = mode_connection(factory, channel, mode)
        for frame in frames:  # warm: every stream has made STKMs; then the same frames again
            protocol.dataReceived(frame)
            if transport.value()[1:3] != b"\x02\x02":
                raise SystemExit(f"instructions: {mode} answered {wire.decode(transport.value())}")
            transport.clear()
        messages = [wire.decode(frame) for frame in frames]
        n, build, now = len(frames), builders[mode], factory.clock.seconds()
        data_received, clear, handle = protocol.dataReceived, transport.clear, protocol.handle
        _MARK()
        for i in range(calls):
            data_received(frames[i % n])
            clear()
        _MARK()
        for i in range(calls):
            wire.decode(frames[i % n], wire.Interface.ECMG_SCS)
        _MARK()
        for i in range(calls):
            handle(messages[i % n], now, now)
        _MARK()
        for i in range(calls):
            build()
        _MARK()
        for i in range(calls):
            pass
        _MARK()
        for i in range(calls):
            bare.dataReceived(frames[i % n])
            bare.transport.clear()
        _MARK()
        protocol.connectionLost(None)


def instructions(modes: list[str], calls: int, trees: list[Path | None]) -> None:
    """Instructions per CW_provision, counted by valgrind's callgrind: the same on a loaded machine
    as on a quiet one (not time: the kernel, the reactor and cache misses are not in them). Per mode:
    the whole ``dataReceived``, its parts, and ``whole / (bare + 1.5 x build)``, the in-process
    analogue of the paced target; per tree (``None``: this one) in a child process each."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (scripts/bootstrap bench installs it)")
    print(f"instructions: thousands per CW_provision under callgrind, {calls} calls a loop, in this process's code paths")
    print(f"  {'mode':<16}{'whole':>8}{'adapter':>9}{'decode':>8}{'machine+source':>16}{'build':>7}{'bare':>6}"
          f"{'ratio':>7}   ratio = whole / (bare + 1.5 x build); adapter = whole - decode - handle")
    for tree in trees:
        work = Path(tempfile.mkdtemp(prefix="bcast-ecmg-instructions-"))
        env = dict(os.environ, BCAST_SP4_BENCH_CODE=str(tree or ROOT))
        subprocess.run([valgrind, "--tool=callgrind", "--dump-before=os_getppid", f"--callgrind-out-file={work}/cg.out",
                        sys.executable, __file__, "--instructions-child", ",".join(modes), "--calls", str(calls)],
                       env=env, capture_output=True, timeout=3600, check=True)
        parts = sorted(work.glob("cg.out.*"), key=lambda f: int(f.suffix[1:]))
        totals = [int(next(line.split()[1] for line in f.read_text().splitlines() if line.startswith("summary:")))
                  for f in parts]
        loops = totals[1:]  # the first dump is everything before the first mark
        shutil.rmtree(work, ignore_errors=True)
        for index, mode in enumerate(modes):
            whole, decode, handle, build, empty, bare = loops[7 * index: 7 * index + 6]
            whole, decode, handle, build, bare = ((x - empty) / calls / 1000 for x in (whole, decode, handle, build, bare))
            name = mode + (f" [{trees.index(tree)}]" if len(trees) > 1 else "")
            print(f"  {name:<16}{whole:>8.1f}{whole - decode - handle:>9.1f}{decode:>8.1f}{handle - build:>16.1f}"
                  f"{build:>7.1f}{bare:>6.1f}{whole / (bare + 1.5 * build):>7.2f}", flush=True)


# -- the crypto cost of one STKM, in this process ---------------------------------------------


def crypto_builders() -> dict[str, object]:
    """Per mode, the pure build function as the ECMG calls it (its key state cached, as there)."""
    rng = __import__("random").Random(9).randbytes
    cur, nxt = (traffic.generate(traffic.TrafficProtection.SRTP, rng) for _ in range(2))
    sek = ServiceKey(key_id=1, key=bytes.fromhex(SEK_HEX), authentication_key=bytes.fromhex(SAK_HEX))
    msk = ServiceKey(key_id=MSK_ID, key=bytes.fromhex(MSK_HEX), key_domain_id=bytes.fromhex(KEY_DOMAIN_HEX))
    # trees from before DvbEcmKey (--compare) derive the keys per call: measured as their ECMG calls it
    dvb_key = ecm.DvbEcmKey(bytes.fromhex(DVB_KEY_HEX)) if hasattr(ecm, "DvbEcmKey") else bytes.fromhex(DVB_KEY_HEX)
    cws = [(7, rng(8)), (8, rng(8))]
    now = time.time()
    return {
        "drm": lambda: stkm_drm.build_stkm(cur, sek, programme_key=None, next_material=nxt, timestamp=now, access_criteria=()),
        "smartcard": lambda: stkm_mikey.build_stkm(cur, msk, counter=12345, next_material=nxt, access_criteria=()),
        "dvb": lambda: ecm.build_dvb_ecm(dvb_key, 1, 7, cws),
    }


def crypto_cost_us(build, seconds: float = 0.1, repeat: int = 7) -> float:
    """Median CPU µs per call of *build* over *repeat* timing runs of about *seconds* each.

    Timed in process CPU time, as the servers' CPU is (on a shared machine, wall time would count
    the moments this process waits for a core).
    """
    once = min(timeit.repeat(build, number=20, repeat=3, timer=time.process_time)) / 20
    number = max(1, int(seconds / max(once, 1e-7)))
    return statistics.median(timeit.repeat(build, number=number, repeat=repeat, timer=time.process_time)) / number * 1e6


def crypto_cost_of_tree(root: Path, mode: str) -> float:
    """:func:`crypto_cost_us` of *mode* with the build functions of another source tree (a child process)."""
    env = dict(os.environ, BCAST_SP4_BENCH_CODE=str(root))
    out = subprocess.run([sys.executable, __file__, "--crypto-only", mode], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return float(out.stdout.split()[-1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q / 100))] * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=20)
    parser.add_argument("--streams", type=int, default=10, help="streams per channel (throughput run)")
    parser.add_argument("--window", type=int, default=64, help="outstanding CW_provisions per connection")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--paced-streams", type=int, default=4_000)
    parser.add_argument("--per-channel", type=int, default=100, help="streams per channel (paced runs)")
    parser.add_argument("--period", type=float, default=1.0, help="crypto-period of the paced runs (s)")
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="length of each paced run")
    parser.add_argument("--modes", default=",".join(MODES), help="paced modes, comma-separated: drm,smartcard,dvb")
    parser.add_argument("--no-throughput", action="store_true", help="paced runs only")
    parser.add_argument("--metrics", action="store_true",
                        help="run the ECMG with its Prometheus endpoint (--metrics tcp:0): messages counted per type")
    parser.add_argument("--no-paced", action="store_true", help="throughput runs only")
    parser.add_argument("--breakdown", action="store_true",
                        help="only the in-process CPU breakdown of one CW_provision per mode (no servers, no sockets)")
    parser.add_argument("--compare", type=Path, metavar="TREE",
                        help="also run the paced modes against an ECMG from another source tree (e.g. an export of an "
                             "older commit), turn by turn with this one, for before/after figures in the same run")
    parser.add_argument("--instructions", action="store_true",
                        help="only instructions per CW_provision of each in-process step, counted under valgrind "
                             "(deterministic on a loaded machine; with --compare, also for that tree)")
    parser.add_argument("--calls", type=int, default=300, help="calls per counted loop (--instructions)")
    parser.add_argument("--build-cpu", action="store_true",
                        help="time each STKM build inside the ECMG in thread CPU time (two clock reads per build, "
                             "~1 µs): the paced table then shows what one build costs inside the paced ECMG and the "
                             "floor that sets; the ECMG's own CPU then includes the clock reads (judge the target "
                             "on a run without it)")
    parser.add_argument("--instructions-child", metavar="MODES", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--crypto-only", metavar="MODE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server()
        return 0
    if args.crypto_only:
        print(f"{crypto_cost_us(crypto_builders()[args.crypto_only]):.3f}")
        return 0
    modes = [mode for mode in args.modes.split(",") if mode]
    if any(mode not in MODES for mode in modes):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    if args.instructions_child:
        instructions_child(args.instructions_child.split(","), args.calls)
        return 0
    if args.breakdown:
        breakdown(modes)
        return 0
    if args.instructions:
        instructions(modes, args.calls, [None] + ([args.compare.resolve()] if args.compare is not None else []))
        return 0
    throughput_streams = args.channels * args.streams * (args.runs + 1) + 1000 * args.streams
    if throughput_streams > PACED_ECM_IDS or PACED_ECM_IDS + args.paced_streams > 0x10000:
        parser.error("too many streams for 16-bit ECM_ids")

    work = Path(tempfile.mkdtemp(prefix="bcast-ecmg-bench-"))
    print(f"bcast-sp4 ECMG benchmark (python {sys.version.split()[0]}, {os.cpu_count()} CPUs), medians of {args.runs} runs")
    processes = []
    try:
        totals = work / "build-cpu.txt" if args.build_cpu else None
        ecmg, port = start_ecmg(work / "ecmg", throughput_streams, args.paced_streams,
                                extra=("--metrics", "tcp:0:interface=127.0.0.1") if args.metrics else (),
                                build_cpu=totals)
        processes.append(ecmg)
        base_dir = work / "baseline"
        base_dir.mkdir()
        bare, bare_port = start([sys.executable, __file__, "--baseline-server"], base_dir, "baseline listening on")
        processes.append(bare)
        # with --compare, both trees' crypto is timed the same way: in a child process each
        ecmgs = [Subject(str(ROOT), port, ecmg.pid, ROOT if args.compare is not None else None, totals)]
        if args.compare is not None:
            other, other_port = start_ecmg(work / "compare", throughput_streams, args.paced_streams, args.compare.resolve())
            processes.append(other)
            ecmgs.append(Subject(str(args.compare), other_port, other.pid, args.compare.resolve(), None))
        if not args.no_throughput:
            run_throughput(args, port, ecmg.pid, bare_port, bare.pid)
        if not args.no_paced:
            run_paced(args, modes, ecmgs, bare_port, bare.pid)
    finally:
        for proc in processes:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)  # the servers' configs, keys and logs
    return 0


class Subject(NamedTuple):
    """An ECMG under test: its source tree, port, pid, the tree to time its crypto from (None: this
    one), and where it writes its build CPU totals (``--build-cpu``; None: not instrumented)."""

    label: str
    port: int
    pid: int
    crypto_root: Path | None
    build_totals: Path | None


def run_throughput(args, port: int, pid: int, bare_port: int, bare_pid: int) -> None:
    print(f"throughput: {args.channels} channels x {args.streams} streams, window {args.window}, {args.seconds:g} s runs")
    rows, base, ratios, bounds = [], [], [], []
    build = crypto_builders()["drm"]
    for run in range(args.runs):
        rows.append(throughput(port, pid, args.channels, args.streams, args.seconds, args.window, False,
                               1000 + run * args.channels))
        base.append(throughput(bare_port, bare_pid, args.channels, args.streams, args.seconds, args.window, True, 1))
        crypto = crypto_cost_us(build)
        ratios.append(rows[-1][0] / base[-1][0])
        # an ECMG doing the bare server's work and the build, nothing else, on one core: its rate over the bare server's
        bounds.append(1e6 / (crypto + base[-1][1]) / base[-1][0])
        print(f"  run {run + 1}: {rows[-1][0]:,.0f} STKMs/s, {rows[-1][1]:.1f} µs CPU/STKM, p50 {rows[-1][2]:.2f} ms, "
              f"p99 {rows[-1][3]:.2f} ms; baseline {base[-1][0]:,.0f} replies/s, {base[-1][1]:.1f} µs CPU/reply; "
              f"ratio {ratios[-1]:.3f}; crypto {crypto:.1f} µs/STKM (build-only bound {bounds[-1]:.3f})", flush=True)
    rate, cpu_us, p50, p99 = (statistics.median(r[i] for r in rows) for i in range(4))
    base_rate, base_cpu = statistics.median(b[0] for b in base), statistics.median(b[1] for b in base)
    ratio = statistics.median(ratios)  # each run against its own baseline, then the median
    print(f"throughput (median): {rate:,.0f} DRM STKMs/s, server CPU {cpu_us:.1f} µs/STKM, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"baseline bare Twisted server: {base_rate:,.0f} replies/s, {base_cpu:.1f} µs CPU/reply; "
          f"ECMG / baseline rate = {ratio:.3f}, median of the same-run ratios [target >= 0.10: "
          f"{'met' if ratio >= 0.10 else 'NOT met'}] (ratio of the medians {rate / base_rate:.3f}), "
          f"CPU ratio = {cpu_us / base_cpu:.1f}x; build-only bound {statistics.median(bounds):.3f}")


def run_paced(args, modes: list[str], ecmgs: list[Subject], bare_port: int, bare_pid: int) -> None:
    print(f"paced: {args.paced_streams} streams ({args.per_channel} per channel) on {args.period:g} s crypto-periods, "
          f"one CW_provision per stream per period, {args.paced_seconds:g} s runs; modes {', '.join(modes)}")
    if len(ecmgs) > 1:
        print("  ECMGs, turn by turn: " + "; ".join(f"[{i}] {e.label}" for i, e in enumerate(ecmgs)))
    builders = crypto_builders()
    turns = [("baseline", None)] + [(mode, i) for mode in modes for i in range(len(ecmgs))]
    results: dict[tuple, list[dict[str, float]]] = {turn: [] for turn in turns}
    for run in range(args.runs):
        for number, (mode, which) in enumerate(turns):
            baseline = which is None
            subject = ecmgs[which] if not baseline else None
            before = (read_build_cpu(subject.pid, subject.build_totals)
                      if subject is not None and subject.build_totals is not None else None)
            row = paced(bare_port if baseline else subject.port, bare_pid if baseline else subject.pid, args.paced_streams,
                        args.period, args.paced_seconds, 10_000 + (run * len(turns) + number) * 100 % 50_000,
                        modes[0] if baseline else mode, baseline, args.per_channel)
            if before is not None:
                after = read_build_cpu(subject.pid, subject.build_totals)
                builds = after[mode][0] - before[mode][0]
                row["build_us"] = (after[mode][1] - before[mode][1]) / max(builds, 1) / 1000.0
            if not baseline:
                row["crypto_us"] = (crypto_cost_us(builders[mode]) if subject.crypto_root is None
                                    else crypto_cost_of_tree(subject.crypto_root, mode))
            results[mode, which].append(row)
            name = "baseline" if baseline else mode + (f" [{which}]" if len(ecmgs) > 1 else "")
            crypto = f", crypto {row['crypto_us']:.1f} µs/STKM" if not baseline else ""
            if "build_us" in row:
                crypto += f" (in the ECMG: {row['build_us']:.1f})"
            errors = (f", {row['errors']} stream_errors {dict((f'{c:#06x}', n) for c, n in row['error_codes'].items())}"
                      if row["errors"] else "")
            print(f"  run {run + 1} {name:<14}: {row['replies']} replies{errors}, {row['cpu_us']:.1f} µs CPU/reply{crypto}, "
                  f"p50 {row['p50']:.2f} ms, p99 {row['p99']:.2f} ms, max {row['max']:.2f} ms", flush=True)

    def med(turn: tuple, field: str) -> float:
        return statistics.median(row[field] for row in results[turn])

    base = ("baseline", None)
    base_cpu = med(base, "cpu_us")
    print(f"paced (medians): baseline bare Twisted {base_cpu:.1f} µs CPU/reply, p50 {med(base, 'p50'):.2f} ms, "
          f"p99 {med(base, 'p99'):.2f} ms, max {med(base, 'max'):.2f} ms")
    print(f"  {'mode':<14}{'CPU µs/STKM':>12}{'baseline':>10}{'crypto µs':>10}{'allowed':>9}{'ratio':>7}"
          f"{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}   target: CPU <= baseline + 1.5 x crypto, p99 <= 2 ms")
    for mode in modes:
        for which in range(len(ecmgs)):
            turn = (mode, which)
            # the ratio per run (each against its own run's baseline and crypto cost), then the median
            ratios = [row["cpu_us"] / (b["cpu_us"] + 1.5 * row["crypto_us"]) for row, b in zip(results[turn], results[base])]
            cpu, crypto, p99 = med(turn, "cpu_us"), med(turn, "crypto_us"), med(turn, "p99")
            ratio = statistics.median(ratios)
            verdict = "met" if ratio <= 1.0 and p99 <= 2.0 else "NOT met"
            name = mode + (f" [{which}]" if len(ecmgs) > 1 else "")
            print(f"  {name:<14}{cpu:>12.1f}{base_cpu:>10.1f}{crypto:>10.1f}{base_cpu + 1.5 * crypto:>9.1f}{ratio:>7.2f}"
                  f"{med(turn, 'p50'):>8.2f}{p99:>8.2f}{med(turn, 'max'):>8.2f}   {verdict}")
    instrumented = [(mode, which) for mode in modes for which in range(len(ecmgs)) if ecmgs[which].build_totals]
    if instrumented:
        print("  --build-cpu: one build's thread CPU inside the paced ECMG, against the same build timed hot in this "
              "process; floor = (baseline + that build) / allowed: the ratio of an ECMG that did nothing but the bare "
              "server's work and the build (> 1: the allowance is smaller than the build alone costs at this pace)")
        print(f"  {'mode':<14}{'in ECMG µs':>11}{'hot µs':>8}{'x hot':>7}{'floor':>7}")
        for turn in instrumented:
            rows = list(zip(results[turn], results[base]))
            floors = [(b["cpu_us"] + row["build_us"]) / (b["cpu_us"] + 1.5 * row["crypto_us"]) for row, b in rows]
            inflation = [row["build_us"] / row["crypto_us"] for row, _ in rows]
            print(f"  {turn[0]:<14}{med(turn, 'build_us'):>11.1f}{med(turn, 'crypto_us'):>8.1f}"
                  f"{statistics.median(inflation):>7.2f}{statistics.median(floors):>7.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build-cpu-server"]:  # not an option of main(): twistd reads the rest
        build_cpu_server(Path(sys.argv[2]), sys.argv[3:])
        sys.exit(0)
    sys.exit(main())
