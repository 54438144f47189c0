#!/usr/bin/env python3
"""ECMG load: a running ``bcast-ecmg`` process driven from this (separate) process over loopback.

Two runs against the same ECMG, plus a baseline:

* throughput — N channels x M streams, CW_provisions pipelined (a window per connection);
  prints DRM-Profile STKMs/s, p50/p99 response time and the ECMG's CPU µs per STKM (from
  /proc/<pid>/stat). Target (issue #3): >= 50,000 STKMs/s.
* paced — S streams on C-second crypto-periods (one CW_provision per stream per period, spread
  evenly); prints p50/p99 response time. Target: p99 <= 2 ms for 10,000 streams on 2 s periods.
* baseline — the same throughput run against a bare Twisted server in another process that
  frames each CW_provision and answers a canned ECM_response (no decode, no machine, no crypto):
  the loopback + framework ceiling, measured now, on this machine.

Every figure is a median over --runs runs. Only 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import gc
import os
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bcast_sp4 import wire  # noqa: E402
from bcast_sp4.bcast import traffic  # noqa: E402
from bcast_sp4.wire import ecmg_scs as m  # noqa: E402
from bcast_sp4.wire.params import CPCWCombination  # noqa: E402

SCID = 0x00010001
HZ = os.sysconf("SC_CLK_TCK")


# -- processes under test ---------------------------------------------------------------------


def write_config(directory: Path, streams: int) -> Path:
    lines = [
        "format = 1",
        "[keys.sek]",
        "key_id = 1",
        'key = "000102030405060708090a0b0c0d0e0f"',
        'authentication_key = "5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1"',
    ]
    for ecm_id in range(streams):
        lines += ["[[streams]]", f"super_cas_id = {SCID}", f"ecm_id = {ecm_id}", 'keys = ["sek"]']
    (directory / "keys.toml").write_text("\n".join(lines) + "\n")
    config = directory / "ecmg.toml"
    config.write_text(
        f"""[ecmg]
endpoint = "tcp:0:interface=127.0.0.1"
key_file = "keys.toml"
max_streams = {streams + 10}
[channel]
max_comp_time = 1000
min_CP_duration = 1
[[cas]]
super_CAS_id = {SCID:#010x}
mode = "drm"
"""
    )
    return config


def start(args: list[str], cwd: Path, marker: str) -> tuple[subprocess.Popen, int]:
    log = open(cwd / "server.log", "w+")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
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


def start_ecmg(directory: Path, streams: int) -> tuple[subprocess.Popen, int]:
    config = write_config(directory, streams)
    return start(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "bcast-ecmg",
         "--config", str(config)],
        directory,
        "ECMGFactory starting on",
    )


def baseline_server() -> None:
    """A bare Twisted server: frame each message, answer a canned ECM_response. No decode."""
    from twisted.internet import protocol, reactor

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

    factory = protocol.Factory.forProtocol(Bare)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(f"baseline listening on {port.getHost().port}", flush=True)
    reactor.run()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


# -- load generator ---------------------------------------------------------------------------


class Connection:
    def __init__(self, port: int, channel_id: int, streams: list[int], first_ecm_id: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.channel_id = channel_id
        self.streams = streams
        self.framer = wire.Framer()
        self.sent: dict[tuple[int, int], float] = {}
        self.outbox = bytearray()
        self.pending: list[bytes] = []
        self._blocking_request(m.ChannelSetup(ECM_channel_id=channel_id, Super_CAS_id=SCID))
        for index, stream_id in enumerate(streams):
            self.sock.sendall(m.StreamSetup(ECM_channel_id=channel_id, ECM_stream_id=stream_id,
                                            ECM_id=first_ecm_id + index, nominal_CP_duration=20).encode())
        for _ in streams:
            self._read_one()
        self.sock.setblocking(False)

    def _blocking_request(self, message) -> None:
        self.sock.sendall(message.encode())
        self._read_one()

    def _read_one(self):
        while not self.pending:
            self.pending += self.framer.feed(self.sock.recv(65536))
        reply = wire.decode(self.pending.pop(0))
        assert isinstance(reply, (m.ChannelStatus, m.StreamStatus)), reply
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


def provision_frames(channel_id: int, stream_id: int, count: int) -> list[tuple[int, bytes]]:
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


def paced(port: int, streams: int, period: float, seconds: float, base_channel: int):
    per_channel = 100
    channels = (streams + per_channel - 1) // per_channel
    conns = [Connection(port, base_channel + c, list(range(1, min(per_channel, streams - c * per_channel) + 1)),
                        50_000 + c * per_channel) for c in range(channels)]
    frames = {(c.channel_id, s): provision_frames(c.channel_id, s, 8) for c in conns for s in c.streams}
    schedule = sorted(((i / streams) * period, conn, s) for i, (conn, s) in enumerate((c, s) for c in conns for s in c.streams))
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn.sock, selectors.EVENT_READ, conn)
    latencies: list[float] = []
    gc.collect()
    gc.freeze()  # keep the load generator's own GC pauses out of the figures
    t0 = time.perf_counter()
    periods = max(1, int(seconds / period))
    index, total = 0, len(schedule) * periods
    while index < total or any(c.sent for c in conns):
        now = time.perf_counter()
        if now - t0 > seconds + 10:
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
            key.data.receive(time.perf_counter(), latencies, False)
    for conn in conns:
        conn.sock.close()
    return len(latencies), percentile(latencies, 50), percentile(latencies, 99)


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
    parser.add_argument("--paced-streams", type=int, default=10_000)
    parser.add_argument("--period", type=float, default=2.0, help="crypto-period of the paced run (s)")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        baseline_server()
        return 0

    work = Path(tempfile.mkdtemp(prefix="bcast-ecmg-bench-"))
    total_streams = args.channels * args.streams * (args.runs + 1) + args.paced_streams + 50_000
    print(f"bcast-sp4 ECMG benchmark: {args.channels} channels x {args.streams} streams, window {args.window}, "
          f"{args.seconds:.0f} s x {args.runs} runs; paced {args.paced_streams} streams on {args.period:g} s periods")
    ecmg, port = start_ecmg(work, total_streams)
    base_dir = work / "baseline"
    base_dir.mkdir()
    bare, bare_port = start([sys.executable, __file__, "--baseline-server"], base_dir, "baseline listening on")
    try:
        rows = []
        for run in range(args.runs):
            rows.append(throughput(port, ecmg.pid, args.channels, args.streams, args.seconds, args.window, False,
                                   1000 + run * args.channels))
            print(f"  run {run + 1}: {rows[-1][0]:,.0f} STKMs/s, {rows[-1][1]:.1f} µs CPU/STKM, "
                  f"p50 {rows[-1][2]:.2f} ms, p99 {rows[-1][3]:.2f} ms", flush=True)
        base = [throughput(bare_port, bare.pid, args.channels, args.streams, args.seconds, args.window, True, 1)
                for _ in range(args.runs)]
        rate, cpu_us, p50, p99 = (statistics.median(r[i] for r in rows) for i in range(4))
        base_rate, base_cpu = statistics.median(b[0] for b in base), statistics.median(b[1] for b in base)
        print(f"throughput (median): {rate:,.0f} DRM STKMs/s, server CPU {cpu_us:.1f} µs/STKM, "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms  [target >= 50,000/s: {'met' if rate >= 50_000 else 'NOT met'}]")
        print(f"baseline bare Twisted server: {base_rate:,.0f} replies/s, {base_cpu:.1f} µs CPU/reply; "
              f"ECMG / baseline rate = {rate / base_rate:.2f}, CPU ratio = {cpu_us / base_cpu:.1f}x")
        count, p50, p99 = paced(port, args.paced_streams, args.period, args.paced_seconds, 30_000)
        print(f"paced: {args.paced_streams} streams on {args.period:g} s periods, {count} STKMs: p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms  [target p99 <= 2 ms: {'met' if p99 <= 2.0 else 'NOT met'}]")
    finally:
        for proc in (ecmg, bare):
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
