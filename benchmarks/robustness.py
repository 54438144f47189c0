"""Fuzz and fault harness for the SimulCrypt servers (issue #13): a script, not a test.

    .venv/bin/python benchmarks/robustness.py --n 1000000              # everything
    .venv/bin/python benchmarks/robustness.py --n 20000 --only ecmg    # one part: ecmg, mux, kill
    .venv/bin/python benchmarks/robustness.py --quick                  # a few thousand messages

Each server runs as its own ``twistd -n`` process on loopback, configured by files written here.
The messages are built from the protocol tables of ``simulcrypt.md`` (header, TLVs, parameter
sizes and cardinalities per message), not with the project's codec, and so are the replies read.
Per interface (ECMG<=>SCS server over TCP, MUX over TCP, MUX over UDP) it sends N mutated messages
while a well-behaved control channel (its own process) measures channel_test round trips:

* mutations: wrong protocol_version (unknown, or another accepted one), unknown message_type,
  a parameter the message does not take, a fixed-size parameter of the wrong length, a mandatory
  parameter missing or a single one repeated, the body cut inside a parameter, a parameter length
  overrunning the message, random body bytes, unknown channel / stream ids; some valid messages;
* TCP: each mutated message is followed by a stream_test of a stream reserved for the harness, so
  every reply is tied to its message; the expected error_status comes from the spec's error table
  (§5: 0x0001 invalid, 0x0002 version, 0x0003 type, 0x000E/0x000A parameter, 0x000F/0x000B
  length, 0x0010/0x000C missing or repeated, 0x0006 channel, 0x0007/0x0005 stream); a reply with
  another code, a missing reply or 0x7000 (an internal error caught at the machine boundary) is
  counted;
* framing: lying message_length (longer and shorter), cut headers and random bytes, each on a
  connection of its own (nothing after them could be framed);
* UDP (MUX): the same mutations on data_provision; an emitted datagram from a message that was not
  valid is a wrong reply; after each burst of 200 a marker data_provision on the probe route, and
  the next burst once the MUX emitted it (it has then read the whole burst: one socket, in order);
* connection floods: idle connections, and connections that sent a header claiming 65,535 bytes
  and 32 KiB of it; how many the server closes by itself, RSS during and after;
* the amplification message of the issue (10,000 one-byte STKM datagrams in one data_provision):
  datagrams/s at the route before and after the sender leaves;
* ECMG kill -9 and restart 3 s later under a separate-process lab (MUX, ECMG(s), SCS; 1 s
  crypto-periods), with and without a backup ECMG: crypto-periods without a fresh STKM per route.

Printed: crashes (server exited), unhandled errors (0x7000 replies, tracebacks and internal_error
events in the server log), wrong replies, unanswered messages, control round trips quiet / during
(p50, p90, p99, p99.9, max and their fuzz/quiet p99 ratio), RSS before / after, and the kill figures.

What the control p99 measures: the harness runs on the same machine as the server. The fuzz sender
(this process) is CPU-bound, and so is the server while it answers; with the control process they
share the CPUs with whatever else runs there. A server process that is runnable but waits for a
CPU delays the control's round trips however fairly it serves its connections, so each window's
report gives, from ``/proc/PID/schedstat``, the share of the window the server, the fuzz sender and
the control spent on a CPU and waiting for one. While it sends, the fuzz sender lowers its own
priority by ``--fuzz-nice`` (default 10) nice levels, after the server and the control process
were started at the harness's own priority (``--fuzz-nice 0`` turns this off): a real attacker
sends from another machine, and the figure wanted is the server's fairness, not the scheduler's
share between two CPU-bound processes on one box. On a machine that is busy with other work the
server still waits for a CPU (the "waiting" column says how much), and the ratio then reflects that.
A round trip is taken from just before the channel_test is sent to the kernel's receive timestamp
of the reply on the control's socket (``SO_TIMESTAMPNS``): the control process's own wait for a CPU
is not the server's (the figure as the control process read it is printed beside). The quiet
window (``--quiet``, default 15 s, ~1,400 round trips) is long enough for a stable p99; on a loaded
machine it is the box's wake-up latency, so compare medians over runs. ``--limit KEY=VALUE`` adds
``[limits]`` settings to the servers' files (e.g. ``turn_time=0.0005``).

Progress lines while running. ``tests/test_robustness_fuzz.py`` runs a short version of the TCP and
UDP fuzz (a few thousand messages, no timing assertions).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import re
import resource
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]

# -- the protocol tables (simulcrypt.md §1.2-§1.4, §3.1-§3.3, §4.1-§4.3, §5) --------------------

ONE, OPT, MANY, ANY = (1, 1), (0, 1), (1, None), (0, None)


class Table:
    """One interface's message types, parameter sizes, cardinalities and error codes."""

    def __init__(self, name, sizes, messages, server_only, silent, codes, channel_param, stream_param):
        self.name = name
        self.sizes: dict[int, int | None] = sizes  # parameter_type -> fixed length (None: variable)
        self.messages: dict[int, dict[int, tuple[int, int | None]]] = messages  # type -> param -> (min, max)
        self.server_only = server_only  # message types only the server sends (answered 0x0001)
        self.silent = silent  # message types answered with nothing when valid
        self.codes = codes  # what -> error_status
        self.channel_param, self.stream_param = channel_param, stream_param


ECMG = Table(
    "ECMG<=>SCS",
    sizes={0x0001: 4, 0x0002: 1, 0x0003: 2, 0x0004: 2, 0x0005: 2, 0x0006: 2, 0x0007: 2, 0x0008: 2, 0x0009: 2,
           0x000A: 1, 0x000B: 1, 0x000C: 2, 0x000D: None, 0x000E: 2, 0x000F: 2, 0x0010: 2, 0x0011: 1, 0x0012: 2,
           0x0013: 2, 0x0014: None, 0x0015: None, 0x0016: 2, 0x0017: 2, 0x0018: None, 0x0019: 2, 0x7000: 2,
           0x7001: None},
    messages={
        0x0001: {0x000E: ONE, 0x0001: ONE},
        0x0002: {0x000E: ONE},
        0x0003: {0x000E: ONE, 0x0002: ONE, 0x0016: OPT, 0x0017: OPT, 0x0003: ONE, 0x0004: ONE, 0x0005: OPT,
                 0x0006: OPT, 0x0007: ONE, 0x0008: ONE, 0x0009: ONE, 0x000A: ONE, 0x000B: ONE, 0x000C: ONE},
        0x0004: {0x000E: ONE},
        0x0005: {0x000E: ONE, 0x7000: MANY, 0x7001: ANY},
        0x0101: {0x000E: ONE, 0x000F: ONE, 0x0019: ONE, 0x0010: ONE},
        0x0102: {0x000E: ONE, 0x000F: ONE},
        0x0103: {0x000E: ONE, 0x000F: ONE, 0x0019: ONE, 0x0011: ONE},
        0x0104: {0x000E: ONE, 0x000F: ONE},
        0x0105: {0x000E: ONE, 0x000F: ONE},
        0x0106: {0x000E: ONE, 0x000F: ONE, 0x7000: MANY, 0x7001: ANY},
        0x0201: {0x000E: ONE, 0x000F: ONE, 0x0012: ONE, 0x0018: OPT, 0x0014: MANY, 0x0013: OPT, 0x000D: OPT},
        0x0202: {0x000E: ONE, 0x000F: ONE, 0x0012: ONE, 0x0015: ONE},
    },
    server_only={0x0105, 0x0202},
    silent={0x0003, 0x0004, 0x0005, 0x0103, 0x0106},
    codes=dict(invalid=0x0001, version=0x0002, type=0x0003, param=0x000E, length=0x000F, missing=0x0010,
               channel=0x0006, stream=0x0007, internal=0x7000),
    channel_param=0x000E, stream_param=0x000F,
)

MUX = Table(
    "EMMG<=>MUX",
    sizes={0x0001: 4, 0x0002: 1, 0x0003: 2, 0x0004: 2, 0x0005: None, 0x0006: 2, 0x0007: 1, 0x0008: 2, 0x7000: 2,
           0x7001: None},
    messages={
        0x0011: {0x0001: ONE, 0x0003: ONE, 0x0002: ONE},
        0x0012: {0x0001: ONE, 0x0003: ONE},
        0x0013: {0x0001: ONE, 0x0003: ONE, 0x0002: ONE},
        0x0014: {0x0001: ONE, 0x0003: ONE},
        0x0015: {0x0001: ONE, 0x0003: ONE, 0x7000: MANY, 0x7001: ANY},
        0x0111: {0x0001: ONE, 0x0003: ONE, 0x0004: ONE, 0x0008: ONE, 0x0007: ONE},
        0x0112: {0x0001: ONE, 0x0003: ONE, 0x0004: ONE},
        0x0113: {0x0001: ONE, 0x0003: ONE, 0x0004: ONE, 0x0008: ONE, 0x0007: ONE},
        0x0114: {0x0001: ONE, 0x0003: ONE, 0x0004: ONE},
        0x0115: {0x0001: ONE, 0x0003: ONE, 0x0004: ONE},
        0x0116: {0x0001: ONE, 0x0003: ONE, 0x0004: ONE, 0x7000: MANY, 0x7001: ANY},
        0x0117: {0x0001: ONE, 0x0003: ONE, 0x0004: ONE, 0x0006: OPT},
        0x0118: {0x0001: ONE, 0x0003: ONE, 0x0004: ONE, 0x0006: OPT},
        0x0211: {0x0001: ONE, 0x0003: OPT, 0x0004: OPT, 0x0008: ONE, 0x0005: MANY},
    },
    server_only={0x0115, 0x0118},
    silent={0x0013, 0x0014, 0x0015, 0x0113, 0x0116, 0x0211},
    codes=dict(invalid=0x0001, version=0x0002, type=0x0003, param=0x000A, length=0x000B, missing=0x000C,
               channel=0x0006, stream=0x0005, internal=0x7000),
    channel_param=0x0003, stream_param=0x0004,
)

ERROR_TYPES = {0x0005, 0x0106, 0x0015, 0x0116}
HEADER = struct.Struct(">BHH")
TLV = struct.Struct(">HH")


def encode(version: int, kind: int, params: Iterable[tuple[int, bytes]]) -> bytes:
    body = b"".join(TLV.pack(code, len(value)) + value for code, value in params)
    return HEADER.pack(version, kind, len(body)) + body


def parse(frame: bytes) -> tuple[int, dict[int, list[bytes]]]:
    """(message_type, parameter_type -> values) of one whole reply (the server's, trusted framing)."""
    _v, kind, _n = HEADER.unpack_from(frame)
    params: dict[int, list[bytes]] = {}
    pos = 5
    while pos + 4 <= len(frame):
        code, size = TLV.unpack_from(frame, pos)
        params.setdefault(code, []).append(frame[pos + 4:pos + 4 + size])
        pos += 4 + size
    return kind, params


class Frames:
    """Whole messages out of a byte stream (header + message_length)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        out = []
        while len(self.buffer) >= 5:
            size = 5 + int.from_bytes(self.buffer[3:5], "big")
            if len(self.buffer) < size:
                break
            out.append(bytes(self.buffer[:size]))
            del self.buffer[:size]
        return out


# -- mutations -----------------------------------------------------------------------------------

ANY_REPLY, NO_REPLY, MAYBE = "any", "none", "maybe"


class Fuzzer:
    """Builds valid base messages of one interface and mutates them (one fault each).

    :param base: message_type -> () -> list of (parameter_type, value) of a valid message.
    :param ids: parameter_type -> values a mutation of the ids never uses (the harness's own).
    """

    SAFE = ("none", "version", "other_version", "type", "param_unknown", "param_length", "param_missing",
            "param_dup", "truncate", "tlv_overrun", "random_body", "ids")
    FRAMING = ("length_long", "length_short", "header_cut", "random_bytes", "huge_claim")

    def __init__(self, table: Table, version: int, accepted: set[int], base: dict[int, Callable[[], list]],
                 rng: random.Random, reserved_streams: set[int]) -> None:
        self.t, self.version, self.accepted, self.base, self.rng = table, version, accepted, base, rng
        #: other versions with the same parameter tables as *version* (ECMG v2 = v3; MUX v2 = v3 = v4 = v5)
        self.same_tables = sorted(v for v in accepted if v != version and v >= 2)
        self.reserved = reserved_streams
        self.kinds = list(base)
        self.unknown_types = [k for k in range(0, 0x0300) if k not in table.messages] + [0x0401, 0x8000, 0xFFFF]
        self.bad_versions = [v for v in range(256) if v not in accepted]
        self.unused_streams = [s for s in range(0x1000, 0x1100) if s not in reserved_streams]
        self.unknown_params = {kind: [c for c in range(1, 0x30) if c not in params] + [0x6FFF, 0x7002, 0x8001]
                               for kind, params in table.messages.items()}

    def _value(self, code: int) -> bytes:
        size = self.t.sizes.get(code)
        return self.rng.randbytes(size if size is not None else self.rng.randint(1, 24))

    def make(self, mutation: str | None = None, kind: int | None = None) -> tuple[bytes, object, str]:
        """(bytes, expectation, mutation): expectation is a set of error codes, ANY_REPLY, NO_REPLY or MAYBE."""
        rng, t, codes = self.rng, self.t, self.t.codes
        kind = kind if kind is not None else rng.choice(self.kinds)
        params = self.base[kind]()
        mutation = mutation or rng.choice(self.SAFE)
        table = t.messages[kind]
        valid_answer: object = {codes["invalid"]} if kind in t.server_only else (
            NO_REPLY if kind in t.silent else ANY_REPLY)
        if mutation == "none":
            return encode(self.version, kind, params), valid_answer, mutation
        if mutation == "version":
            v = rng.choice(self.bad_versions)
            return encode(v, kind, params), {codes["version"]}, mutation
        if mutation == "other_version":  # accepted by the server, not the channel's (same tables: §2.1)
            return encode(rng.choice(self.same_tables), kind, params), {codes["version"]}, mutation
        if mutation == "type":
            return encode(self.version, rng.choice(self.unknown_types), params), {codes["type"]}, mutation
        if mutation == "param_unknown":
            code = rng.choice(self.unknown_params[kind])
            params.insert(rng.randint(0, len(params)), (code, self._value(code) if code in t.sizes else b"\x00\x01"))
            return encode(self.version, kind, params), {codes["param"]}, mutation
        if mutation == "param_length":
            fixed = [i for i, (c, _v) in enumerate(params) if t.sizes.get(c)]
            if not fixed:
                return self.make("param_missing", kind)
            i = rng.choice(fixed)
            code, value = params[i]
            size = rng.choice([n for n in range(0, 9) if n != len(value)])
            params[i] = (code, rng.randbytes(size))
            return encode(self.version, kind, params), {codes["length"]}, mutation
        if mutation == "param_missing":
            mandatory = [i for i, (c, _v) in enumerate(params) if table[c][0] >= 1]
            code = params[rng.choice(mandatory)][0]
            params = [(c, v) for c, v in params if c != code]
            return encode(self.version, kind, params), {codes["missing"]}, mutation
        if mutation == "param_dup":
            single = [i for i, (c, _v) in enumerate(params) if table[c][1] == 1]
            i = rng.choice(single)
            params.insert(rng.randint(0, len(params)), params[i])
            return encode(self.version, kind, params), {codes["missing"]}, mutation
        if mutation == "truncate":
            body = encode(self.version, kind, params)[5:]
            starts, pos = set(), 0
            while pos < len(body):
                starts.add(pos)
                pos += 4 + int.from_bytes(body[pos + 2:pos + 4], "big")
            cuts = [n for n in range(1, len(body)) if n not in starts]
            if not cuts:
                return self.make("param_missing", kind)
            body = body[:rng.choice(cuts)]
            return HEADER.pack(self.version, kind, len(body)) + body, {codes["invalid"]}, mutation
        if mutation == "tlv_overrun":
            body = encode(self.version, kind, params)[5:]
            last = len(body) - 4 - len(params[-1][1])
            claimed = len(params[-1][1]) + rng.randint(1, 300)
            body = body[:last + 2] + claimed.to_bytes(2, "big") + body[last + 4:]
            return HEADER.pack(self.version, kind, len(body)) + body, {codes["invalid"]}, mutation
        if mutation == "random_body":
            body = rng.randbytes(rng.randint(0, 64))
            return HEADER.pack(self.version, kind, len(body)) + body, MAYBE if kind in t.silent else ANY_REPLY, mutation
        if mutation == "ids":
            if kind in t.silent or kind in t.server_only or kind in (0x0001, 0x0011, 0x0101, 0x0111):
                return self.make("param_dup", kind)
            if t.stream_param in table and kind not in (0x0211,) and rng.random() < 0.5:
                unused = rng.choice(self.unused_streams)
                params = [(c, unused.to_bytes(2, "big") if c == t.stream_param else v) for c, v in params]
                return encode(self.version, kind, params), {codes["stream"]}, mutation
            params = [(c, (0x0F00 + rng.randint(0, 0xFF)).to_bytes(2, "big") if c == t.channel_param else v)
                      for c, v in params]
            if t.channel_param not in dict(params):
                return self.make("param_dup", kind)
            return encode(self.version, kind, params), {codes["channel"]}, mutation
        raise ValueError(mutation)

    def framing(self) -> bytes:
        """A framing-breaking message (for a connection of its own)."""
        rng = self.rng
        data, _e, _m = self.make("none")
        what = rng.choice(self.FRAMING)
        if what == "length_long":
            return data[:3] + (len(data) - 5 + rng.randint(1, 2000)).to_bytes(2, "big") + data[5:]
        if what == "length_short":
            return data[:3] + max(0, len(data) - 5 - rng.randint(1, 8)).to_bytes(2, "big") + data[5:]
        if what == "header_cut":
            return data[:rng.randint(1, 4)]
        if what == "huge_claim":
            return HEADER.pack(self.version, 0x0201, 0xFFFF) + rng.randbytes(rng.randint(0, 4096))
        return rng.randbytes(rng.randint(1, 200))


# -- processes ------------------------------------------------------------------------------------


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class Role:
    """``twistd -n <tap> --config FILE`` in its own process, logging to a file."""

    def __init__(self, tap: str, config: Path, ready: str, *extra: str) -> None:
        self.tap, self.config, self.ready, self.extra = tap, config, ready, extra
        self.log_path = config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None
        self.start()

    def spawn(self) -> int:
        """Start the process without waiting; returns how often *ready* was logged before."""
        seen = self.text().count(self.ready)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(TWISTD + ["-l", str(self.log_path), self.tap, "--config", str(self.config),
                                                   *self.extra], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=str(self.config.parent), env=env)
        return seen

    def is_ready(self, seen: int) -> bool:
        return self.text().count(self.ready) > seen

    def start(self) -> None:
        """Start the process and wait until it logs *ready* (once more than before)."""
        seen = self.spawn()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.is_ready(seen):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.tap} exited {self.proc.returncode}: {self.text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{self.tap} not ready: {self.text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def problems(self) -> dict[str, int]:
        """Counts of tracebacks, internal errors and unhandled errors in the log so far (streamed)."""
        counts = {"traceback": 0, "internal_error": 0, "unhandled": 0, "key_bytes": 0, "lines": 0}
        rotated = sorted(self.log_path.parent.glob(self.log_path.name + ".*"))  # twistd rotates at 1 MB
        for path in [*rotated, self.log_path]:
            counts = self._scan(path, counts)
        return counts

    @staticmethod
    def _scan(path: Path, counts: dict[str, int]) -> dict[str, int]:
        with open(path, "rb") as f:
            for line in f:
                counts["lines"] += 1
                if b"Traceback" in line:
                    counts["traceback"] += 1
                if b"internal_error" in line or b"internal error" in line:
                    counts["internal_error"] += 1
                if b"Unhandled" in line or b"unhandled error" in line:
                    counts["unhandled"] += 1
                if any(secret in line for secret in SECRETS):
                    counts["key_bytes"] += 1
        return counts

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- the control channel (its own process: its timing is not disturbed by the fuzzer) -------------


#: Linux: the kernel stamps each received segment (``SCM_TIMESTAMPNS``, CLOCK_REALTIME); not in ``socket``
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")


def _control(port: int, setup: list[bytes], test: bytes, conn, interval: float) -> None:
    """Round trips: (end time, ms until the kernel received the reply, ms until this process read it).

    The first figure is the server's: from just before the send to the reply's arrival on the
    control's socket (the kernel's receive timestamp), so the control process's own wait for a
    CPU after the reply arrived is not counted; the second is what the control process saw.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        pass  # no kernel timestamps: the reply's arrival is when recvmsg returns
    frames = Frames()
    pending: list[tuple[bytes, int]] = []
    ancillary = socket.CMSG_SPACE(_TIMESPEC.size)

    def one() -> tuple[bytes, int]:
        while not pending:
            data, cmsgs, _flags, _addr = sock.recvmsg(65536, ancillary)
            if not data:
                raise ConnectionError("control channel closed")
            arrived = time.time_ns()
            for level, kind, value in cmsgs:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    arrived = sec * 1_000_000_000 + nsec
            pending.extend((frame, arrived) for frame in frames.feed(data))
        return pending.pop(0)

    for message in setup:
        sock.sendall(message)
        one()
    samples: list[tuple[float, float, float]] = []
    lost = 0
    while not conn.poll():
        start = time.time_ns()
        try:
            sock.sendall(test)
            _reply, arrived = one()
            end = time.time_ns()
            samples.append((end / 1e9, max(0, arrived - start) / 1e6, (end - start) / 1e6))
        except (OSError, ConnectionError):
            lost += 1
            break
        time.sleep(interval)
    conn.recv()
    conn.send((samples, lost))
    sock.close()


class Control:
    """A well-behaved client doing channel_test round trips every *interval* s in another process."""

    def __init__(self, port: int, setup: list[bytes], test: bytes, interval: float = 0.01) -> None:
        self.parent, child = multiprocessing.Pipe()
        self.proc = multiprocessing.Process(target=_control, args=(port, setup, test, child, interval), daemon=True)
        self.proc.start()

    def stop(self) -> tuple[list[tuple[float, float]], int]:
        self.parent.send("stop")
        result = self.parent.recv()
        self.proc.join(10)
        return result


def latency(samples: list[tuple[float, float, float]], start: float, end: float, which: int = 1) -> dict | None:
    """Round-trip statistics (ms) of the control samples that ended in [start, end): *which* 1 is
    until the kernel received the reply, 2 until the control process read it."""
    values = sorted(sample[which] for sample in samples if start <= sample[0] < end)
    if not values:
        return None

    def q(f: float) -> float:
        return values[min(len(values) - 1, int(len(values) * f))]

    return dict(n=len(values), p50=statistics.median(values), p90=q(0.90), p99=q(0.99), p999=q(0.999),
                max=values[-1], over10=sum(1 for v in values if v > 10.0))


def show(stats: dict | None) -> str:
    if stats is None:
        return "n/a"
    return (f"{stats['p99']:.2f} ms (n={stats['n']}, median {stats['p50']:.2f}, p90 {stats['p90']:.2f}, "
            f"p99.9 {stats['p999']:.2f}, max {stats['max']:.2f}, {stats['over10']} over 10 ms)")


def ratio(during: dict | None, quiet: dict | None) -> str:
    if not during or not quiet:
        return "n/a"
    return f"{during['p99'] / quiet['p99']:.2f}"


def p99(samples: list[tuple[float, float, float]], start: float, end: float) -> str:
    return show(latency(samples, start, end))


# -- CPU: is the server measured, or the box? ---------------------------------------------------------


def schedstat(pid: int) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of *pid*'s main thread (Linux)."""
    try:
        run, wait, _slices = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return None
    return int(run) / 1e9, int(wait) / 1e9


class CpuMarks:
    """Snapshots of the server's, the fuzz sender's and the control's CPU time at window bounds.

    The machine is shared: when the server's process is runnable but waits for a CPU, the control
    channel's round trips measure the box, not the server. Each window's line says how much of it
    the server spent on a CPU and how much waiting for one.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.marks: dict[str, tuple[float, dict[str, tuple[float, float] | None]]] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = (time.time(), {who: schedstat(pid) for who, pid in self.pids.items()})

    def share(self, start: str, end: str) -> str:
        if start not in self.marks or end not in self.marks:
            return "n/a"
        (t0, a), (t1, b) = self.marks[start], self.marks[end]
        wall = max(1e-9, t1 - t0)
        parts = []
        for who in self.pids:
            if a.get(who) is None or b.get(who) is None:
                continue
            run, wait = b[who][0] - a[who][0], b[who][1] - a[who][1]
            parts.append(f"{who} on a CPU {100 * run / wall:.0f}%, waiting for one {100 * wait / wall:.0f}%")
        return "; ".join(parts) or "n/a"


@contextlib.contextmanager
def lowered_priority(step: int):
    """This process (the fuzz sender) runs *step* nice levels lower while inside; restored after
    when allowed (root), else it stays lowered and says so."""
    if step <= 0:
        yield
        return
    before = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, min(19, before + step))
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, before)
        except PermissionError:
            print(f"  (the harness keeps nice {min(19, before + step)}: raising priority back needs privileges)",
                  flush=True)


# -- TCP fuzzing ---------------------------------------------------------------------------------


class Tally:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.sent = self.judged = self.ok = self.wrong = self.unanswered = self.internal = 0
        self.closed_unjudged = self.invalid = self.invalid_ok = self.reconnects = 0
        self.by_mutation: dict[str, list[int]] = {}  # mutation -> [sent, wrong]
        self.examples: list[str] = []
        self.start = time.monotonic()
        self.last_report = self.start

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_report >= 5.0:
            self.last_report = now
            rate = self.sent / max(1e-9, now - self.start)
            print(f"  {self.label}: {self.sent:,}/{self.total:,} sent, {rate:,.0f}/s, wrong {self.wrong}, "
                  f"unanswered {self.unanswered}, 0x7000 {self.internal}, connection closes {self.reconnects}",
                  flush=True)

    def note(self, text: str) -> None:
        if len(self.examples) < 12:
            self.examples.append(text)


def judge(tally: Tally, table: Table, data: bytes, expect, mutation: str, replies: list[bytes]) -> None:
    tally.judged += 1
    entry = tally.by_mutation.setdefault(mutation, [0, 0])
    entry[0] += 1
    parsed = [parse(r) for r in replies]
    codes = [int.from_bytes(p[1][0x7000][0], "big") for p in parsed if p[0] in ERROR_TYPES and 0x7000 in p[1]]
    if table.codes["internal"] in codes:
        tally.internal += 1
        tally.note(f"0x7000 for {mutation}: {data[:48].hex()}")
    if isinstance(expect, set):
        tally.invalid += 1
        if not replies:
            tally.unanswered += 1
            entry[1] += 1
            tally.note(f"no reply to {mutation} (expected {sorted(map(hex, expect))}): {data[:48].hex()}")
        elif len(replies) == 1 and parsed[0][0] in ERROR_TYPES and codes and codes[0] in expect:
            tally.ok += 1
            tally.invalid_ok += 1
        else:
            tally.wrong += 1
            entry[1] += 1
            got = [(hex(p[0]), [hex(c) for c in codes]) for p in parsed]
            tally.note(f"{mutation}: expected {sorted(map(hex, expect))}, got {got}: {data[:48].hex()}")
    elif expect == ANY_REPLY:
        if not replies:
            tally.unanswered += 1
            entry[1] += 1
            tally.note(f"no reply to {mutation}: {data[:48].hex()}")
        else:
            tally.ok += 1
    elif expect == NO_REPLY:
        if replies:
            tally.wrong += 1
            entry[1] += 1
            tally.note(f"reply to a message that takes none ({mutation}): {data[:48].hex()}")
        else:
            tally.ok += 1
    else:
        tally.ok += 1


class FuzzConnection:
    """One TCP connection to a server, set up by *setup*, with a probe tying replies to messages."""

    def __init__(self, port: int, setup: list[bytes], probe: bytes, is_probe_reply: Callable[[bytes], bool]) -> None:
        self.probe, self.is_probe_reply = probe, is_probe_reply
        for _attempt in range(100):  # the server may still be freeing the ids of a closed connection
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.frames = Frames()
            self.closed = False
            refused = False
            for message in setup:
                self.sock.sendall(message)
                replies = self._read_until(1)
                if not replies or parse(replies[0])[0] in ERROR_TYPES:
                    refused = True
                    break
            if not refused:
                return
            self.sock.close()
            time.sleep(0.1)
        raise RuntimeError("the server keeps refusing the harness's channel set-up")

    def _receive(self) -> list[bytes] | None:
        """The whole frames of one read; ``None`` (and ``closed`` set) once the server closed, reset or went quiet."""
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, socket.timeout):
            data = b""
        if not data:
            self.closed = True
            return None
        return self.frames.feed(data)

    def _read_until(self, count: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < count:
            frames = self._receive()
            if frames is None:
                return out
            out += frames
        return out

    def batch(self, messages: list[bytes]) -> list[list[bytes]] | None:
        """Send every message followed by the probe; the replies of each message (None: closed)."""
        payload = b"".join(m + self.probe for m in messages)
        try:
            self.sock.sendall(payload)
        except OSError:
            self.closed = True
        groups: list[list[bytes]] = []
        current: list[bytes] = []
        while len(groups) < len(messages) and not self.closed:
            frames = self._receive()
            if frames is None:
                break
            for frame in frames:
                if self.is_probe_reply(frame):
                    groups.append(current)
                    current = []
                else:
                    current.append(frame)
        return groups

    def sync(self) -> bool:
        """One probe round trip (the server has read what was sent before); ``False`` when closed."""
        return len(self.batch([b""])) == 1

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def fuzz_tcp(tally: Tally, table: Table, fuzzer: Fuzzer, connect: Callable[[], FuzzConnection], n: int,
             batch: int = 100) -> None:
    conn = connect()
    while tally.sent < n:
        items = [fuzzer.make() for _ in range(min(batch, n - tally.sent))]
        groups = conn.batch([data for data, _e, _m in items])
        tally.sent += len(items)
        for (data, expect, mutation), replies in zip(items, groups):
            judge(tally, table, data, expect, mutation, replies)
        if len(groups) < len(items):
            tally.closed_unjudged += len(items) - len(groups)
            tally.reconnects += 1
            conn.close()
            conn = connect()
        tally.progress()
    conn.close()
    tally.progress(force=True)


def fuzz_framing(port: int, fuzzer: Fuzzer, setup: list[bytes], count: int) -> int:
    """Framing-breaking messages, a connection each (after a valid setup); how many were sent."""
    sent = 0
    for _ in range(count):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            for message in setup:
                sock.sendall(message)
            sock.sendall(fuzzer.framing())
            sent += 1
            sock.close()
        except OSError:
            pass
    return sent


def floods(port: int, count: int, hold: float, server: Role, settle: float = 3.0) -> dict[str, object]:
    """*count* idle connections, then *count* half-sent ones (65,535 claimed, 32 KiB sent)."""
    out: dict[str, object] = {}
    for what in ("idle", "half-sent"):
        socks = []
        before = rss_mb(server.pid)
        for _ in range(count):
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.setblocking(False)
                if what == "half-sent":
                    try:
                        s.send(HEADER.pack(3, 0x0201, 0xFFFF) + bytes(32 * 1024))
                    except BlockingIOError:
                        pass
                socks.append(s)
            except OSError:
                break
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            time.sleep(0.5)
        during = rss_mb(server.pid)
        closed = 0
        for s in socks:
            try:
                if s.recv(1) == b"":
                    closed += 1
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        for s in socks:
            s.close()
        time.sleep(settle)
        out[what] = dict(opened=len(socks), closed_by_server=closed, rss_before=before, rss_during=during,
                         rss_after=rss_mb(server.pid))
        print(f"  flood {what}: {len(socks)} connections held {hold:.0f} s, {closed} closed by the server; RSS "
              f"{before:.1f} -> {during:.1f} -> {out[what]['rss_after']:.1f} MB ({settle:.0f} s after they went)", flush=True)
    return out


# -- the ECMG -------------------------------------------------------------------------------------

DRM = 0x00010001
KEYS = """format = 1
[keys.sek]
key_id = 1
key = "000102030405060708090a0b0c0d0e0f"
authentication_key = "101112131415161718191a1b1c1d1e1f20212223"
"""


#: the harness's key bytes as they could appear in a log line (hex either case)
SECRETS = tuple(h.encode() for k in ("000102030405060708090a0b0c0d0e0f", "101112131415161718191a1b1c1d1e1f20212223")
                for h in (k, k.upper()))


def write_keys(directory: Path, ecm_ids: Iterable[int], scids=(DRM,)) -> None:
    path = directory / "keys.toml"
    path.write_text(KEYS + "".join(f'[[streams]]\nsuper_cas_id = {s:#010x}\necm_id = {e}\nkeys = ["sek"]\n'
                                   for s in scids for e in ecm_ids))
    path.chmod(0o600)


#: ``[limits]`` settings added to the servers' files (``--limit KEY=VALUE``), as TOML values
LIMITS: dict[str, str] = {}


def limits_table() -> str:
    return "[limits]\n" + "".join(f"{key} = {value}\n" for key, value in LIMITS.items()) if LIMITS else ""


def ecmg_config(directory: Path, port: int, name: str = "ecmg") -> Path:
    path = directory / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        [ecmg]
        endpoint = "tcp:{port}:interface=127.0.0.1"
        key_file = "keys.toml"
        max_streams = 100000
        [channel]
        delay_start = -200
        ECM_rep_period = 100
        min_CP_duration = 10
        lead_CW = 1
        CW_per_msg = 2
        max_comp_time = 200
        [[cas]]
        super_CAS_id = {DRM:#010x}
        mode = "drm"
        [[cas]]
        super_CAS_id = 0x4AE60000
        mode = "dvb-sections"
        key = "000102030405060708090a0b0c0d0e0f"
        """) + limits_table())
    return path


FUZZ_CH, CONTROL_CH, FUZZ_ST, PROBE_ST = 0x0001, 0x0C0C, 0x0001, 0x7777


def ecmg_fuzzer(rng: random.Random) -> Fuzzer:
    from bcast_sp4.bcast.traffic import TrafficProtection, encode_cw, generate

    cw = encode_cw(generate(TrafficProtection.SRTP, rng=rng.randbytes, mki=b"\x00\x00\x00\x01"))
    ch = FUZZ_CH.to_bytes(2, "big")
    st = FUZZ_ST.to_bytes(2, "big")

    def u16(n):
        return (n & 0xFFFF).to_bytes(2, "big")

    def cw_provision():
        cp = rng.randint(0, 0xFFFE)
        return [(0x000E, ch), (0x000F, st), (0x0012, u16(cp)), (0x0014, u16(cp) + cw), (0x0014, u16(cp + 1) + cw)]

    status = [(0x000E, ch), (0x0002, b"\x02"), (0x0003, u16(-200)), (0x0004, u16(0)), (0x0007, u16(100)),
              (0x0008, u16(0)), (0x0009, u16(10)), (0x000A, b"\x01"), (0x000B, b"\x02"), (0x000C, u16(200))]
    base = {
        0x0001: lambda: [(0x000E, ch), (0x0001, DRM.to_bytes(4, "big"))],
        0x0002: lambda: [(0x000E, ch)],
        0x0003: lambda: list(status),
        0x0005: lambda: [(0x000E, ch), (0x7000, u16(rng.choice([1, 2, 0x7000]))), (0x7001, u16(0))],
        0x0101: lambda: [(0x000E, ch), (0x000F, u16(rng.choice([2, 3, 4]))), (0x0019, u16(rng.choice([2, 3, 4]))),
                         (0x0010, u16(20))],
        0x0102: lambda: [(0x000E, ch), (0x000F, st)],
        0x0103: lambda: [(0x000E, ch), (0x000F, st), (0x0019, u16(1)), (0x0011, b"\x00")],
        0x0104: lambda: [(0x000E, ch), (0x000F, u16(rng.choice([2, 3, 4])))],
        0x0105: lambda: [(0x000E, ch), (0x000F, st)],
        0x0106: lambda: [(0x000E, ch), (0x000F, st), (0x7000, u16(0x000B))],
        0x0201: cw_provision,
        0x0202: lambda: [(0x000E, ch), (0x000F, st), (0x0012, u16(1)), (0x0015, rng.randbytes(20))],
    }
    weights = {0x0201: 6}
    fuzzer = Fuzzer(ECMG, 3, {1, 2, 3}, base, rng, {PROBE_ST, FUZZ_ST, 2, 3, 4})
    fuzzer.kinds = [k for k in base for _ in range(weights.get(k, 1))]
    return fuzzer


def ecmg_setup(channel: int, streams: list[tuple[int, int]]) -> list[bytes]:
    ch = channel.to_bytes(2, "big")
    out = [encode(3, 0x0001, [(0x000E, ch), (0x0001, DRM.to_bytes(4, "big"))])]
    for stream_id, ecm_id in streams:
        out.append(encode(3, 0x0101, [(0x000E, ch), (0x000F, stream_id.to_bytes(2, "big")),
                                      (0x0019, ecm_id.to_bytes(2, "big")), (0x0010, (20).to_bytes(2, "big"))]))
    return out


def run_ecmg(n: int, work: Path, rng: random.Random, flood: int, quiet_s: float = 5.0, hold_s: float = 5.0,
             fuzz_nice: int = 0) -> dict:
    print(f"ECMG<=>SCS server over TCP: {n:,} mutated messages", flush=True)
    write_keys(work, [1, 2, 3, 4, PROBE_ST, 0x0C0C])
    port = free_port()
    server = Role("bcast-ecmg", ecmg_config(work, port), "ECMGFactory starting on")
    result: dict = {}
    try:
        control = Control(port, ecmg_setup(CONTROL_CH, []), encode(3, 0x0002, [(0x000E, CONTROL_CH.to_bytes(2, "big"))]))
        cpu = CpuMarks({"server": server.pid, "fuzz sender": os.getpid(), "control": control.proc.pid})
        time.sleep(0.5)  # the control channel is set up
        cpu.mark("quiet")
        time.sleep(quiet_s)
        quiet = (time.time() - quiet_s, time.time())
        cpu.mark("fuzz")
        rss_before = rss_mb(server.pid)
        fuzzer = ecmg_fuzzer(rng)
        probe = encode(3, 0x0102, [(0x000E, FUZZ_CH.to_bytes(2, "big")), (0x000F, PROBE_ST.to_bytes(2, "big"))])

        def is_probe(frame: bytes) -> bool:
            kind, params = parse(frame)
            return kind in (0x0103, 0x0106) and params.get(0x000F) == [PROBE_ST.to_bytes(2, "big")]

        setup = ecmg_setup(FUZZ_CH, [(PROBE_ST, PROBE_ST), (FUZZ_ST, 1)])

        def connect() -> FuzzConnection:
            return FuzzConnection(port, setup, probe, is_probe)

        tally = Tally("ecmg tcp", n)
        with lowered_priority(fuzz_nice):
            t0 = time.time()
            fuzz_tcp(tally, ECMG, fuzzer, connect, n)
            framing = fuzz_framing(port, fuzzer, setup[:1], max(50, n // 200))
            t1 = time.time()
            cpu.mark("fuzz end")
            print(f"  framing-breaking messages on connections of their own: {framing:,}", flush=True)
            flood_result = floods(port, flood, hold_s, server, min(3.0, hold_s)) if flood else {}
            t2 = time.time()
        samples, lost = control.stop()
        result = dict(tally=tally, quiet=latency(samples, *quiet), during=latency(samples, t0, t1),
                      quiet_app=latency(samples, *quiet, which=2), during_app=latency(samples, t0, t1, which=2),
                      cpu_quiet=cpu.share("quiet", "fuzz"), cpu_during=cpu.share("fuzz", "fuzz end"),
                      flood_p99=p99(samples, t1, t2), control_lost=lost, rss_before=rss_before,
                      rss_after=rss_mb(server.pid), alive=server.alive(), framing=framing, floods=flood_result)
    finally:
        server.stop()
    result["log"] = server.problems()
    report("ECMG TCP", result)
    return result


def report(label: str, r: dict) -> None:
    t: Tally = r["tally"]
    print(f"== {label}: {t.sent:,} messages, {t.invalid:,} invalid by the spec tables, {t.invalid_ok:,} of them "
          f"answered with the spec's error_status", flush=True)
    print(f"   crashes: {0 if r['alive'] else 1}; unhandled: 0x7000 replies {t.internal}, log tracebacks "
          f"{r['log']['traceback']}, internal_error lines {r['log']['internal_error']}, unhandled lines "
          f"{r['log']['unhandled']}; log lines {r['log']['lines']:,} (with key bytes: {r['log']['key_bytes']})")
    print(f"   replies as the spec tables say: {t.ok:,} of {t.judged:,} judged; wrong replies {t.wrong}; "
          f"unanswered {t.unanswered}; "
          f"not judged (connection closed by the server) {t.closed_unjudged}, reconnects {t.reconnects}")
    worst = {m: v for m, v in t.by_mutation.items() if v[1]}
    if worst:
        print(f"   mutations with wrong/unanswered: {worst}")
    for example in t.examples:
        print(f"     e.g. {example}")
    print(f"   control channel round trip (send to the reply's arrival, kernel timestamp) p99: quiet {show(r['quiet'])}; during fuzz {show(r['during'])}; "
          f"fuzz/quiet {ratio(r['during'], r['quiet'])} (target <= 3); during floods {r['flood_p99']}; "
          f"control lost {r['control_lost']}")
    if r.get("quiet_app") and r.get("during_app"):
        print(f"   (as read by the control process, its own wait for a CPU included: quiet p99 "
              f"{r['quiet_app']['p99']:.2f} ms, during fuzz {r['during_app']['p99']:.2f} ms, "
              f"ratio {ratio(r['during_app'], r['quiet_app'])})")
    print(f"   CPU while quiet: {r.get('cpu_quiet', 'n/a')}")
    print(f"   CPU during fuzz: {r.get('cpu_during', 'n/a')}")
    print(f"   RSS before {r['rss_before']:.1f} MB, after {r['rss_after']:.1f} MB", flush=True)


# -- the MUX ---------------------------------------------------------------------------------------

BSM, CONTROL_CLIENT = 0x00010001, 0x00010009
LTKM_ID, STKM_ID, PROBE_ID = 0x0100, 1, 0x0777


def mux_config(directory: Path, port: int, udp_port: int, ltkm_port: int, stkm_port: int, probe_port: int,
               unthrottled: bool = True) -> Path:
    path = directory / "mux.toml"
    path.write_text(textwrap.dedent(f"""\
        [mux]
        endpoint = "tcp:{port}:interface=127.0.0.1"
        udp = "udp:{udp_port}:interface=127.0.0.1"
        max_channels = 4096
        [egress]
        interface = "127.0.0.1"
        unthrottled = {str(unthrottled).lower()}
        [[client]]
        client_id = {BSM:#010x}
        max_channels = 4
        max_bandwidth = 20000
        [[client.ltkm]]
        data_id = {LTKM_ID}
        destination = "127.0.0.1:{ltkm_port}"
        max_bandwidth = 10000
        default_bandwidth = 10000
        [[client.ltkm]]
        data_id = {PROBE_ID}
        destination = "127.0.0.1:{probe_port}"
        [[client.stkm]]
        ecm_id = {STKM_ID}
        destination = "127.0.0.1:{stkm_port}"
        repetition_period = 100
        [[client]]
        client_id = {CONTROL_CLIENT:#010x}
        [[client.ltkm]]
        data_id = 0x0200
        destination = "127.0.0.1:9"
        """) + limits_table())
    return path


def mux_fuzzer(rng: random.Random, counter: list[int]) -> Fuzzer:
    client = BSM.to_bytes(4, "big")
    ch = FUZZ_CH.to_bytes(2, "big")

    def u16(n):
        return (n & 0xFFFF).to_bytes(2, "big")

    def tagged() -> bytes:
        counter[0] += 1
        return b"FZ" + counter[0].to_bytes(8, "big")

    def data_provision():
        ids = [(0x0003, ch), (0x0004, u16(FUZZ_ST))] if rng.random() < 0.5 else []
        return [(0x0001, client), *ids, (0x0008, u16(LTKM_ID)), (0x0005, tagged())]

    base = {
        0x0011: lambda: [(0x0001, client), (0x0003, ch), (0x0002, b"\x02")],
        0x0012: lambda: [(0x0001, client), (0x0003, ch)],
        0x0013: lambda: [(0x0001, client), (0x0003, ch), (0x0002, b"\x02")],
        0x0015: lambda: [(0x0001, client), (0x0003, ch), (0x7000, u16(1))],
        0x0111: lambda: [(0x0001, client), (0x0003, ch), (0x0004, u16(rng.choice([2, 3]))),
                         (0x0008, u16(rng.choice([0x0300, 0x0301]))), (0x0007, b"\x00")],
        0x0112: lambda: [(0x0001, client), (0x0003, ch), (0x0004, u16(FUZZ_ST))],
        0x0113: lambda: [(0x0001, client), (0x0003, ch), (0x0004, u16(FUZZ_ST)), (0x0008, u16(LTKM_ID)),
                         (0x0007, b"\x00")],
        0x0114: lambda: [(0x0001, client), (0x0003, ch), (0x0004, u16(rng.choice([2, 3])))],
        0x0115: lambda: [(0x0001, client), (0x0003, ch), (0x0004, u16(FUZZ_ST))],
        0x0116: lambda: [(0x0001, client), (0x0003, ch), (0x0004, u16(FUZZ_ST)), (0x7000, u16(1))],
        0x0117: lambda: [(0x0001, client), (0x0003, ch), (0x0004, u16(FUZZ_ST)), (0x0006, u16(10000))],
        0x0118: lambda: [(0x0001, client), (0x0003, ch), (0x0004, u16(FUZZ_ST)), (0x0006, u16(100))],
        0x0211: data_provision,
    }
    fuzzer = Fuzzer(MUX, 3, {2, 3, 4, 5}, base, rng, {FUZZ_ST, PROBE_ST, 2, 3})
    fuzzer.kinds = [k for k in base for _ in range({0x0211: 6}.get(k, 1))]
    return fuzzer


def mux_setup(client: int, channel: int, streams: list[tuple[int, int, int]]) -> list[bytes]:
    c, ch = client.to_bytes(4, "big"), channel.to_bytes(2, "big")
    out = [encode(3, 0x0011, [(0x0001, c), (0x0003, ch), (0x0002, b"\x02")])]
    for stream_id, data_id, data_type in streams:
        out.append(encode(3, 0x0111, [(0x0001, c), (0x0003, ch), (0x0004, stream_id.to_bytes(2, "big")),
                                      (0x0008, data_id.to_bytes(2, "big")), (0x0007, bytes([data_type]))]))
    return out


class Receiver:
    """A UDP socket counting what arrives (drained by :meth:`drain`)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.got: list[tuple[float, bytes]] = []

    def drain(self) -> int:
        n = 0
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return n
            self.got.append((time.monotonic(), data))
            n += 1


def run_mux(n: int, work: Path, rng: random.Random, flood: int, quiet_s: float = 5.0, amplify: bool = True,
            hold_s: float = 5.0, fuzz_nice: int = 0) -> dict:
    print(f"EMMG<=>MUX server over TCP and UDP: {n:,} mutated messages each", flush=True)
    port, udp_port = free_port(), free_port(socket.SOCK_DGRAM)
    ltkm, stkm, probe_rx = Receiver(), Receiver(), Receiver()
    server = Role("bcast-mux", mux_config(work, port, udp_port, ltkm.port, stkm.port, probe_rx.port),
                  "MuxFactory starting on")
    results: dict = {}
    priority = contextlib.ExitStack()
    try:
        control = Control(port, mux_setup(CONTROL_CLIENT, CONTROL_CH, []),
                          encode(3, 0x0012, [(0x0001, CONTROL_CLIENT.to_bytes(4, "big")),
                                             (0x0003, CONTROL_CH.to_bytes(2, "big"))]))
        cpu = CpuMarks({"server": server.pid, "fuzz sender": os.getpid(), "control": control.proc.pid})
        time.sleep(0.5)  # the control channel is set up
        cpu.mark("quiet")
        time.sleep(quiet_s)
        quiet = (time.time() - quiet_s, time.time())
        cpu.mark("tcp")
        priority.enter_context(lowered_priority(fuzz_nice))
        rss_before = rss_mb(server.pid)
        counter = [0]
        fuzzer = mux_fuzzer(rng, counter)
        setup = mux_setup(BSM, FUZZ_CH, [(PROBE_ST, PROBE_ID, 0), (FUZZ_ST, LTKM_ID, 0)])
        probe = encode(3, 0x0112, [(0x0001, BSM.to_bytes(4, "big")), (0x0003, FUZZ_CH.to_bytes(2, "big")),
                                   (0x0004, PROBE_ST.to_bytes(2, "big"))])

        def is_probe(frame: bytes) -> bool:
            kind, params = parse(frame)
            return kind in (0x0113, 0x0116) and params.get(0x0004) == [PROBE_ST.to_bytes(2, "big")]

        def connect() -> FuzzConnection:
            return FuzzConnection(port, setup, probe, is_probe)

        tally = Tally("mux tcp", n)
        t0 = time.time()
        fuzz_tcp(tally, MUX, fuzzer, connect, n)
        framing = fuzz_framing(port, fuzzer, setup[:1], max(50, n // 200))
        t1 = time.time()
        cpu.mark("tcp end")
        print(f"  framing-breaking messages on connections of their own: {framing:,}", flush=True)

        # UDP: a live stream set up over TCP from this host; every datagram tagged
        holder = FuzzConnection(port, setup, probe, is_probe)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        utally = Tally("mux udp", n)
        valid_tags: set[bytes] = set()
        holder.sync()
        time.sleep(0.5)
        ltkm.drain()  # what the TCP phase emitted
        emitted_before = len(ltkm.got)
        marks = [0, 0]  # sent, not seen within 10 s

        def caught_up() -> None:
            """A marker data_provision on the probe route after the burst: once the MUX emitted it,
            it has read every datagram sent before it (one socket, read in order). A TCP round trip
            does not say so: the MUX reads its UDP port a bounded time per wake-up, between turns."""
            marks[0] += 1
            tag = b"MK" + marks[0].to_bytes(8, "big")
            udp.sendto(encode(3, 0x0211, [(0x0001, BSM.to_bytes(4, "big")), (0x0008, PROBE_ID.to_bytes(2, "big")),
                                          (0x0005, tag)]), ("127.0.0.1", udp_port))
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                mark = len(probe_rx.got)
                probe_rx.drain()
                if any(data == tag for _t, data in probe_rx.got[mark:]):
                    return
                select.select([probe_rx.sock], [], [], 0.2)
            marks[1] += 1

        tu0 = time.time()
        cpu.mark("udp")
        while utally.sent < n:
            for _ in range(min(200, n - utally.sent)):
                mutation = rng.choice(Fuzzer.SAFE)
                data, expect, mutation = fuzzer.make(mutation, 0x0211)
                if mutation == "none":
                    valid_tags.add(data[-10:])
                udp.sendto(data, ("127.0.0.1", udp_port))
                utally.sent += 1
            # keep the MUX's UDP socket from overflowing: wait for it to catch up
            caught_up()
            ltkm.drain()
            utally.progress()
        utally.progress(force=True)
        tu1 = time.time()
        cpu.mark("udp end")
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            ltkm.drain()
            time.sleep(0.05)
        t2 = time.time()
        emitted = [d for _t, d in ltkm.got[emitted_before:]]
        wrong = [d for d in emitted if d[-10:] not in valid_tags]
        utally.wrong = len(wrong)
        utally.invalid = utally.sent - len(valid_tags)
        utally.invalid_ok = utally.invalid - len(wrong)  # over UDP "answered" = dropped, not emitted
        utally.judged = utally.sent
        utally.ok = utally.sent - len(wrong)
        print(f"  udp: {len(valid_tags):,} valid data_provisions, {len(emitted):,} emitted, "
              f"{len(wrong)} emitted from an invalid message, markers {marks[0]:,} ({marks[1]} not seen), "
              f"{len(valid_tags - {d[-10:] for d in emitted}):,} valid ones not emitted", flush=True)
        holder.close()
        udp.close()

        amp = amplification(port, stkm) if amplify else None
        t3 = time.time()
        flood_result = floods(port, flood, hold_s, server, min(3.0, hold_s)) if flood else {}
        t4 = time.time()
        priority.close()
        samples, lost = control.stop()
        common = dict(control_lost=lost, rss_before=rss_before, rss_after=rss_mb(server.pid), alive=server.alive(),
                      quiet=latency(samples, *quiet), quiet_app=latency(samples, *quiet, which=2),
                      cpu_quiet=cpu.share("quiet", "tcp"))
        results["tcp"] = dict(tally=tally, during=latency(samples, t0, t1), cpu_during=cpu.share("tcp", "tcp end"),
                              during_app=latency(samples, t0, t1, which=2),
                              flood_p99=p99(samples, t3, t4), framing=framing, **common)
        results["udp"] = dict(tally=utally, during=latency(samples, tu0, tu1), cpu_during=cpu.share("udp", "udp end"),
                              during_app=latency(samples, tu0, tu1, which=2),
                              flood_p99="-", **common)
        if amp is not None:
            results["amplification"] = dict(amp, p99=p99(samples, t2, t3))
        results["floods"] = flood_result
    finally:
        priority.close()
        server.stop()
    log = server.problems()
    for key in ("tcp", "udp"):
        if key in results:
            results[key]["log"] = log
            report(f"MUX {key.upper()}", results[key])
    if "amplification" in results:
        a = results["amplification"]
        print(f"== MUX amplification message: reply {a['reply']}; route datagrams/s while the sender is "
              f"connected {a['rate_connected']:.1f}, 0-2 s after it left {a['rate_after']:.1f}, "
              f"12-14 s after {a['rate_late']:.1f}; control p99 {a['p99']}", flush=True)
    return results


def amplification(port: int, stkm: Receiver) -> dict:
    """The issue's message on an STKM stream: 10,000 one-byte datagrams in one data_provision."""
    c, ch = BSM.to_bytes(4, "big"), (0x0A0A).to_bytes(2, "big")
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    frames = Frames()
    replies: list[bytes] = []

    def read(timeout: float) -> None:
        sock.settimeout(timeout)
        try:
            data = sock.recv(65536)
            replies.extend(frames.feed(data))
        except socket.timeout:
            pass

    for message in mux_setup(BSM, 0x0A0A, [(9, STKM_ID, 2)]):
        sock.sendall(message)
        read(5)
    replies.clear()
    ids = [(0x0001, c), (0x0003, ch), (0x0004, (9).to_bytes(2, "big")), (0x0008, STKM_ID.to_bytes(2, "big"))]
    sock.sendall(encode(3, 0x0211, ids + [(0x0005, b"current STKM")]))
    sock.sendall(encode(3, 0x0211, ids + [(0x0005, b"x")] * 10_000))
    read(5)
    reply = [(hex(k), [hex(int.from_bytes(v, "big")) for v in p.get(0x7000, [])]) for k, p in map(parse, replies)]
    stkm.drain()
    mark = len(stkm.got)
    time.sleep(2.0)
    stkm.drain()
    connected = (len(stkm.got) - mark) / 2.0
    sock.close()
    mark = len(stkm.got)
    time.sleep(2.0)
    stkm.drain()
    after = (len(stkm.got) - mark) / 2.0
    time.sleep(10.0)
    stkm.drain()
    mark = len(stkm.got)
    time.sleep(2.0)
    stkm.drain()
    late = (len(stkm.got) - mark) / 2.0
    return dict(reply=reply, rate_connected=connected, rate_after=after, rate_late=late)


# -- ECMG kill -9 under a separate-process lab -------------------------------------------------------


def run_kill(work: Path, periods: int = 30, kill_at: int = 10, down: float = 3.0) -> dict:
    out = {}
    for backup in (True, False):
        d = work / ("kill-backup" if backup else "kill-alone")
        d.mkdir(parents=True, exist_ok=True)
        out[backup] = one_kill(d, backup, periods, kill_at, down)
    return out


def one_kill(d: Path, backup: bool, periods: int, kill_at: int, down: float) -> dict:
    label = "with a backup ECMG" if backup else "without a backup ECMG"
    print(f"ECMG kill -9 at period {kill_at} of {periods} (1 s periods), restart after {down:.0f} s, {label}",
          flush=True)
    services = 3
    write_keys(d, range(1, services + 1))
    primary_port, backup_port, mux_port = free_port(), free_port(), free_port()
    receivers = {e: Receiver() for e in range(1, services + 1)}
    mux = d / "mux.toml"
    lines = ["[mux]", f'endpoint = "tcp:{mux_port}:interface=127.0.0.1"', "[[client]]", f"client_id = {DRM:#010x}",
             "max_bandwidth = 1000"]
    for e, r in receivers.items():
        lines += ["[[client.stkm]]", f"ecm_id = {e}", f'destination = "127.0.0.1:{r.port}"', "repetition_period = 100"]
    mux.write_text("\n".join(lines) + "\n")
    scs = d / "scs.toml"
    lines = ["[scs]", "channel_test_interval = 1.0", "start_allowance = 0.5", "gc_tuning = false", "stagger = false",
             "[scs.reconnect]", "initial_delay = 0.1", "max_delay = 0.5",
             "[mux]", 'mode = "remote"', f'connect = "tcp:host=127.0.0.1:port={mux_port}"', "bandwidth = 16"]
    for e in range(1, services + 1):
        lines += ["[[service]]", f'name = "s{e}"', "crypto_period = 1.0", 'protection = "srtp"',
                  'input = "udp:0:interface=127.0.0.1"', 'output = "127.0.0.1:9"',
                  "[[service.ecmg]]", f'endpoint = "tcp:host=127.0.0.1:port={primary_port}"']
        if backup:
            lines.append(f'backup_endpoint = "tcp:host=127.0.0.1:port={backup_port}"')
        lines += [f"super_CAS_id = {DRM:#010x}", "ECM_channel_id = 1", f"ECM_stream_id = {e}", f"ECM_id = {e}"]
    scs.write_text("\n".join(lines) + "\n")
    roles = [Role("bcast-mux", mux, "MuxFactory starting on")]
    primary = Role("bcast-ecmg", ecmg_config(d, primary_port, "primary"), "ECMGFactory starting on")
    roles.append(primary)
    if backup:
        roles.append(Role("bcast-ecmg", ecmg_config(d, backup_port, "backup"), "ECMGFactory starting on"))
    try:
        roles.append(Role("bcast-scs", scs, "service_start"))
        start = time.monotonic()
        killed_at = restarted_at = respawned = None
        while time.monotonic() - start < periods:
            for r in receivers.values():
                r.drain()
            elapsed = time.monotonic() - start
            if killed_at is None and elapsed >= kill_at:
                primary.kill9()
                killed_at = time.monotonic()
                print(f"  primary ECMG killed at {elapsed:.1f} s", flush=True)
            if killed_at is not None and respawned is None and time.monotonic() - killed_at >= down:
                respawned = primary.spawn()  # the receivers keep being read while it starts
            if respawned is not None and restarted_at is None and primary.is_ready(respawned):
                restarted_at = time.monotonic()
                print(f"  primary ECMG listening again at {restarted_at - start:.1f} s", flush=True)
            time.sleep(0.01)
        for r in receivers.values():
            r.drain()
    finally:
        for role in reversed(roles):
            role.stop()
    # a fresh STKM: a payload the route has not carried before; per 1 s window after the first one
    missing, gaps = {}, {}
    for e, r in receivers.items():
        seen: set[bytes] = set()
        fresh: list[float] = []
        for t, data in r.got:
            if data not in seen:
                seen.add(data)
                fresh.append(t - start)
        if not fresh:
            missing[e], gaps[e] = periods, float(periods)
            continue
        first = fresh[0]
        windows = {int(t - first) for t in fresh}
        last_window = int(periods - first) - 1
        missing[e] = sum(1 for w in range(0, last_window) if w not in windows)
        gaps[e] = max((b - a for a, b in zip(fresh, fresh[1:])), default=0.0)
    downtime = (restarted_at - killed_at) if restarted_at and killed_at else float("nan")
    result = dict(missing=missing, longest_gap=gaps, downtime=downtime)
    print(f"== kill -9 {label}: crypto-periods without a fresh STKM per route {missing}; longest gap between "
          f"fresh STKMs {', '.join(f'{e}: {g:.2f} s' for e, g in gaps.items())}; ECMG down {downtime:.2f} s "
          f"(kill to listening again; target: {'0 periods' if backup else 'at most downtime + 1 period'})",
          flush=True)
    return result


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=100_000, help="mutated messages per interface")
    parser.add_argument("--flood", type=int, default=2000, help="connections per flood (0: none)")
    parser.add_argument("--flood-hold", type=float, default=35.0,
                        help="s a flood is held before counting what the server closed (its no-channel timeout is 30 s)")
    parser.add_argument("--only", choices=("ecmg", "mux", "kill"), action="append", help="run only these parts")
    parser.add_argument("--quick", action="store_true", help="a short run: 3,000 messages, 200-connection floods")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--quiet", type=float, default=15.0,
                        help="s of control round trips before the fuzz (the quiet p99; ~90 samples a second)")
    parser.add_argument("--fuzz-nice", type=int, default=10,
                        help="nice levels the fuzz sender (this process) drops to while it sends (0: none); see above")
    parser.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                        help="a [limits] setting for the ECMG and MUX under test (TOML value), e.g. turn_time=0.001")
    args = parser.parse_args(argv)
    for setting in args.limit:
        key, _, value = setting.partition("=")
        LIMITS[key.strip()] = value.strip()
    if args.quick:
        args.n, args.flood, args.flood_hold = 3000, 200, 5.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.flood + 1024)), hard))
    parts = args.only or ["ecmg", "mux", "kill"]
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="bcast-robustness-") as tmp:
        work = Path(tmp)
        print(f"robustness harness: N={args.n:,} per interface, floods of {args.flood}, seed {args.seed}, "
              f"quiet window {args.quiet:g} s, fuzz sender nice +{max(0, args.fuzz_nice)}, work in {work}", flush=True)
        print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs", flush=True)
        if "ecmg" in parts:
            (work / "ecmg").mkdir()
            run_ecmg(args.n, work / "ecmg", rng, args.flood, hold_s=args.flood_hold, quiet_s=args.quiet,
                     fuzz_nice=args.fuzz_nice)
        if "mux" in parts:
            (work / "mux").mkdir()
            run_mux(args.n, work / "mux", rng, args.flood, hold_s=args.flood_hold, quiet_s=args.quiet,
                    fuzz_nice=args.fuzz_nice)
        if "kill" in parts:
            run_kill(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
