#!/usr/bin/env python3
"""Fair service and flood recovery of a running ``bcast-ecmg`` (issue #13), measured from other processes.

Two measurements, each against ECMG processes started here on 127.0.0.1:

* ``fair`` — one SCS-like channel sends paced CW_provisions (``--rate`` per second over
  ``--streams`` streams, never pipelined) and records each ECM_response's time from send to
  reply; meanwhile a hog (another process) pipelines ``--hog-batch`` stream_setups in one write,
  then as many stream_close_requests, over and over. Three rows, same run: the paced channel
  alone (quiet), with the hog against an ECMG whose per-turn budget is off
  (``messages_per_turn = 1000000``: the behaviour before issue #13), and with the hog against the
  default budget. Each row: replies, p50 / p99 / max response time, how many came back as
  stream_error 0x000D (later than max_comp_time, said so), and the hog's messages per second.
  Target (issue #13): p99 <= 20 ms with the hog and the default budget.
* ``flood`` — RSS of the ECMG before, during and after ``--idle`` connections that send nothing
  and ``--half`` connections that send a header claiming 65,535 bytes and ``--half-bytes`` of
  it, then nothing. The ECMG runs with short timeouts (``--timeout`` s for both
  first_channel_setup_timeout and message_timeout) and room for them all (max_connections,
  max_buffered_bytes_total); the script waits until the ECMG has closed every one of them and
  reads the RSS again ``--settle`` s later; ``--floods`` floods one after the other show whether
  memory keeps growing. ``--pythonmalloc malloc`` runs the ECMG with ``PYTHONMALLOC=malloc``
  (CPython's small-object arenas stay mapped while any object in them lives; glibc's heap is
  trimmed by the guard). Target (issue #13): every connection closed by the timeouts, RSS after
  within 10 MB of before.

Only 127.0.0.1; every loop is bounded in time. ``python benchmarks/fairness.py [fair|flood|all]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import selectors
import socket
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
SEK_HEX, SAK_HEX = "000102030405060708090a0b0c0d0e0f", "5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1"
PACED_ECM_IDS = 1  # the paced channel's streams
HOG_ECM_IDS = 10_000  # the hog's streams
OUT_OF_COMPUTE = 0x000D


# -- the ECMG under test ------------------------------------------------------------------------


def listening_port(pid: int) -> int | None:
    """The TCP port *pid* listens on (from /proc: its socket inodes in LISTEN state), if any yet."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def start_ecmg(directory: Path, hog_streams: int, limits: dict[str, object],
               env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    directory.mkdir(parents=True, exist_ok=True)
    keys = ["format = 1", "[keys.sek]", "key_id = 1", f'key = "{SEK_HEX}"', f'authentication_key = "{SAK_HEX}"']
    for ecm_id in list(range(PACED_ECM_IDS, PACED_ECM_IDS + 100)) + list(range(HOG_ECM_IDS, HOG_ECM_IDS + hog_streams)):
        keys += ["[[streams]]", f"super_cas_id = {SCID}", f"ecm_id = {ecm_id}", 'keys = ["sek"]']
    (directory / "keys.toml").write_text("\n".join(keys) + "\n")
    (directory / "keys.toml").chmod(0o600)  # key material (the ECMG refuses a readable key file)
    table = "\n".join(f"{k} = {v}" for k, v in limits.items())
    config = directory / "ecmg.toml"
    config.write_text(f"""[ecmg]
endpoint = "tcp:0:interface=127.0.0.1:backlog=4096"
key_file = "keys.toml"
max_streams = {hog_streams + 200}
[channel]
max_comp_time = 100
min_CP_duration = 1
[[cas]]
super_CAS_id = {SCID:#010x}
mode = "drm"
[limits]
{table}
""")
    log = open(directory / "ecmg.log", "w")
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "bcast-ecmg",
         "--config", str(config)],
        cwd=directory, stdout=log, stderr=subprocess.STDOUT, env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000)),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        port = listening_port(proc.pid)  # bound to port 0: no race with other programs for a port
        if port is not None:
            time.sleep(0.5)
            return proc, port
        if proc.poll() is not None:
            raise SystemExit(f"ECMG exited:\n{(directory / 'ecmg.log').read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("ECMG did not start")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


# -- clients ------------------------------------------------------------------------------------


def read_replies(sock: socket.socket, framer: wire.Framer, count: int, deadline: float) -> list[bytes]:
    out: list[bytes] = []
    while len(out) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(out)} of {count} replies in time")
        data = sock.recv(1 << 20)
        if not data:
            raise SystemExit("the ECMG closed the connection")
        out += framer.feed(data)
    return out


def channel(port: int, channel_id: int) -> tuple[socket.socket, wire.Framer]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framer = wire.Framer()
    sock.sendall(m.ChannelSetup(ECM_channel_id=channel_id, Super_CAS_id=SCID).encode())
    reply = wire.decode(read_replies(sock, framer, 1, time.monotonic() + 30)[0])
    if not isinstance(reply, m.ChannelStatus):
        raise SystemExit(f"channel_setup refused: {reply}")
    return sock, framer


def hog(port: int, batch: int, stop, counter) -> None:
    """Pipeline *batch* stream_setups in one write, then *batch* stream_close_requests, until *stop*."""
    os.nice(10)  # a remote peer in real life: keep its own CPU out of the ECMG's way here
    sock, framer = channel(port, 2)
    setups = b"".join(m.StreamSetup(ECM_channel_id=2, ECM_stream_id=s, ECM_id=HOG_ECM_IDS + s,
                                    nominal_CP_duration=20).encode() for s in range(batch))
    closes = b"".join(m.StreamCloseRequest(ECM_channel_id=2, ECM_stream_id=s).encode() for s in range(batch))
    done = 0
    while not stop.is_set():
        sock.sendall(setups + closes)
        read_replies(sock, framer, 2 * batch, time.monotonic() + 120)
        done += 2 * batch
        counter.value = done
    sock.close()


def cw_frames(stream_id: int, count: int) -> list[tuple[int, bytes]]:
    teks = [traffic.encode_cw(traffic.generate(traffic.TrafficProtection.SRTP)) for _ in range(count + 1)]
    return [(cp, m.CWProvision(ECM_channel_id=1, ECM_stream_id=stream_id, CP_number=cp,
                               CP_CW_combination=(CPCWCombination(cp, teks[cp]),
                                                  CPCWCombination(cp + 1, teks[cp + 1]))).encode())
            for cp in range(count)]


def paced(port: int, streams: int, rate: float, seconds: float) -> dict[str, float]:
    """CW_provisions at *rate* per second, one at a time per stream; response times in ms."""
    sock, framer = channel(port, 1)
    sock.sendall(b"".join(m.StreamSetup(ECM_channel_id=1, ECM_stream_id=s, ECM_id=PACED_ECM_IDS + s,
                                        nominal_CP_duration=20).encode() for s in range(streams)))
    read_replies(sock, framer, streams, time.monotonic() + 60)
    frames = {s: cw_frames(s, 16) for s in range(streams)}
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sent: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    late = 0
    total = int(rate * seconds)
    t0 = time.perf_counter()
    index = 0
    while index < total or sent:
        now = time.perf_counter()
        if now - t0 > seconds + 30:
            raise SystemExit("paced run did not finish in time")
        while index < total and t0 + index / rate <= now:
            stream = index % streams
            cp, frame = frames[stream][(index // streams) % 16]
            if (stream, cp) not in sent:  # never two outstanding for one (stream, CP)
                sock.sendall(frame)
                sent[stream, cp] = now
            index += 1
        for _key, _events in sel.select(timeout=0.0005):
            data = sock.recv(1 << 20)
            if not data:
                raise SystemExit("the ECMG closed the paced channel")
            arrived = time.perf_counter()
            for frame in framer.feed(data):
                reply = wire.decode(frame)
                if isinstance(reply, m.ECMResponse):
                    key = (reply.ECM_stream_id, reply.CP_number)
                elif isinstance(reply, m.StreamError):
                    if OUT_OF_COMPUTE not in reply.error_status:
                        raise SystemExit(f"unexpected {reply}")
                    late += 1
                    key = next(k for k in sent if k[0] == reply.ECM_stream_id)
                else:
                    raise SystemExit(f"unexpected {reply}")
                latencies.append((arrived - sent.pop(key)) * 1000.0)
    sel.close()
    sock.close()
    return {"replies": len(latencies), "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "max": max(latencies), "late": late}


def fair(args) -> None:
    ctx = multiprocessing.get_context("fork")
    print(f"fair service: paced channel {args.rate:g} CW_provision/s over {args.streams} streams for "
          f"{args.seconds:g} s; hog pipelines {args.hog_batch} stream_setups + {args.hog_batch} "
          "stream_close_requests per write")
    print(f"{'row':44} {'replies':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'0x000D':>6} {'hog msg/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [("budget off (no count, no time limit)", {"messages_per_turn": 1_000_000, "turn_time": 0}),
                ("default budget", {})]
        rows += [(f"messages_per_turn {n}", {"messages_per_turn": n}) for n in args.budgets]
        rows += [(f"turn_time {t * 1000:g} ms", {"turn_time": t}) for t in args.turn_times]
        for name, limits in rows:
            proc, port = start_ecmg(Path(tmp) / name.replace(" ", "_"), args.hog_batch, limits)
            try:
                if name.startswith("budget off"):
                    quiet = paced(port, args.streams, args.rate, args.seconds)
                    print(f"{'quiet (no hog)':44} {quiet['replies']:7d} {quiet['p50']:8.2f} {quiet['p99']:8.2f} "
                          f"{quiet['max']:8.2f} {quiet['late']:6d} {'-':>10}")
                stop, counter = ctx.Event(), ctx.Value("q", 0)
                worker = ctx.Process(target=hog, args=(port, args.hog_batch, stop, counter))
                worker.start()
                time.sleep(1.0)
                start_count, start_time = counter.value, time.monotonic()
                try:
                    row = paced(port, args.streams, args.rate, args.seconds)
                except SystemExit:
                    log = (Path(tmp) / name.replace(" ", "_") / "ecmg.log").read_text().splitlines()
                    print("\n".join(line for line in log if "#warn" in line or "#error" in line or "Traceback" in line))
                    raise
                hog_rate = (counter.value - start_count) / (time.monotonic() - start_time)
                stop.set()
                worker.join(150)
                if worker.is_alive():
                    worker.kill()
                print(f"{'hog, ' + name:44} {row['replies']:7d} {row['p50']:8.2f} {row['p99']:8.2f} "
                      f"{row['max']:8.2f} {row['late']:6d} {hog_rate:10.0f}")
            finally:
                proc.terminate()
                proc.wait(30)


# -- flood --------------------------------------------------------------------------------------


def open_flood(port: int, idle: int, half: int, half_bytes: int) -> list[socket.socket]:
    """*idle* connections that send nothing, *half* that send a header claiming 65,535 bytes and
    *half_bytes* of them."""
    header = struct.pack(">BHH", 3, 0x0201, 0xFFFF)
    body = bytes(half_bytes)
    socks: list[socket.socket] = []
    for i in range(idle + half):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if i >= idle:
            sock.sendall(header + body)
        socks.append(sock)
    return socks


def wait_closed(socks: list[socket.socket], pid: int, seconds: float) -> tuple[int, float]:
    """Wait until the server closed every socket (at most *seconds*): (still open, peak RSS MB)."""
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    open_count = len(socks)
    deadline = time.monotonic() + seconds
    peak = rss_mb(pid)
    while open_count and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            try:
                data = key.fileobj.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                open_count -= 1
        peak = max(peak, rss_mb(pid))
    sel.close()
    for sock in socks:
        sock.close()
    return open_count, peak


def flood(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    limits = {"first_channel_setup_timeout": args.timeout, "message_timeout": args.timeout,
              "max_connections": args.idle + args.half + 100,
              "max_buffered_bytes_total": (args.half + 10) * 70_000}
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_ecmg(Path(tmp) / "flood", 10, limits,
                                {"PYTHONMALLOC": args.pythonmalloc} if args.pythonmalloc else None)
        try:
            # warm up: one channel with a few ECMs, so the code paths are loaded before "before"
            paced(port, 4, 100, 1.0)
            time.sleep(1.0)
            print(f"flood: {args.idle} idle + {args.half} half-sent ({args.half_bytes} of 65,540 bytes) connections, "
                  f"timeouts {args.timeout:g} s, {args.floods} floods one after the other"
                  + (f", ECMG with PYTHONMALLOC={args.pythonmalloc}" if args.pythonmalloc else ""))
            start = rss_mb(proc.pid)
            print(f"  RSS before the first flood {start:.1f} MB")
            for number in range(1, args.floods + 1):
                before = rss_mb(proc.pid)
                t0 = time.monotonic()
                socks = open_flood(port, args.idle, args.half, args.half_bytes)
                opened = time.monotonic() - t0
                left, peak = wait_closed(socks, proc.pid, args.timeout + 60)
                closed_after = time.monotonic() - t0
                time.sleep(args.settle)
                after = rss_mb(proc.pid)
                print(f"  flood {number}: opened in {opened:.1f} s; closed by the ECMG: {len(socks) - left} of "
                      f"{len(socks)} (the last {closed_after:.1f} s after the first connect); RSS before "
                      f"{before:.1f} MB, peak {peak:.1f}, {args.settle:g} s after {after:.1f} MB "
                      f"({after - before:+.1f} MB; {after - start:+.1f} MB since before the first)")
            paced_after = paced(port, 4, 100, 1.0)
            print(f"  a channel after the floods: {paced_after['replies']} replies, p99 {paced_after['p99']:.2f} ms")
            for line in (Path(tmp) / "flood" / "ecmg.log").read_text().splitlines():
                if "unreachable objects collected" in line:
                    print("  ECMG:", line.split("] ", 1)[-1])
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=("fair", "flood", "all"), default="all")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced run length with the hog")
    parser.add_argument("--rate", type=float, default=100.0, help="paced CW_provisions per second")
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--hog-batch", type=int, default=2000)
    parser.add_argument("--budgets", type=lambda t: [int(v) for v in t.split(",") if v], default=[],
                        help="also measure these messages_per_turn values (comma-separated)")
    parser.add_argument("--turn-times", type=lambda t: [float(v) / 1000 for v in t.split(",") if v], default=[],
                        help="also measure these turn_time values (ms, comma-separated)")
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--half", type=int, default=2000)
    parser.add_argument("--half-bytes", type=int, default=32 * 1024)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--pythonmalloc", default="", help="PYTHONMALLOC for the ECMG (e.g. malloc)")
    parser.add_argument("--floods", type=int, default=2, help="floods one after the other (the first loads code paths)")
    args = parser.parse_args()
    if args.what in ("fair", "all"):
        fair(args)
    if args.what in ("flood", "all"):
        flood(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
