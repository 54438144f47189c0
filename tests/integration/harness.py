"""Loopback harness: run a role as a real ``twistd`` process, talk to it over real sockets.

Only 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bcast_sp4 import wire

ROOT = Path(__file__).resolve().parents[2]
#: the lab's ports (etc/lab) span 12201..16203
LAB_LOW, LAB_SPAN = 12201, 16203 - 12201


def lab_port_bases(tries: int = 3) -> list[int]:
    """Bases for ``--port-base`` (the lab's lowest port moves there), different per test process and
    below the kernel's ephemeral range, where every port-0 listener of a concurrent test lands. No
    port is probed (bind, close, reuse would race): a base another process holds a port of fails the
    run at start-up, naming it, and the caller takes the next base."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random(os.getpid() ^ id(object()))
    return [rng.randrange(10000, max(10001, low - LAB_SPAN - 1)) for _ in range(tries)]
DRM_SCID, CARD_SCID, DVB_SCID = 0x00010001, 0x00020001, 0x4AE60000


class RoleProcess:
    """``twistd -n <tapname> --config FILE`` on an ephemeral port; stopped with SIGTERM.

    The process's output (its log) is copied line by line to ``FILE.log`` by a reader thread;
    :meth:`wait_for` blocks on that thread's condition (no polling, no sleep) until a line matches
    or the bound passes.
    """

    def __init__(self, tapname: str, config: Path, port_pattern: str, extra: tuple[str, ...] = ()) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log_path = config.with_suffix(".log")
        self.log = open(self.log_path, "w")
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             tapname, "--config", str(config), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(config.parent),
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.port = int(self.wait_for(port_pattern).group(1))
        except BaseException:  # never leave a child running that no test will stop
            self.stop()
            raise

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.log.write(line)
                self.log.flush()
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 180.0, start: int = 0) -> re.Match:
        """The first match of *pattern* in a log line (from line *start*), waiting up to *timeout* s.

        :raises RuntimeError: the process exited, or *timeout* passed, without such a line.
        """
        regex = re.compile(pattern)
        checked = start
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines[checked:]:
                    match = regex.search(line)
                    if match:
                        return match
                checked = len(self._lines)
                if self._ended:
                    raise RuntimeError(f"{self.proc.args} exited {self.proc.wait()} without {pattern!r}:\n{self.text()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(f"no {pattern!r} in the log after {timeout} s:\n{self.text()}")
                self._changed.wait(remaining)

    def lines_so_far(self) -> int:
        """How many log lines have been read (a ``start`` for :meth:`wait_for`)."""
        with self._changed:
            return len(self._lines)

    def text(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def stop(self) -> int:
        """SIGTERM and wait; returns 0 for a clean stop (twistd re-raises the signal it stopped on)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(10)
        self.log.close()
        code = self.proc.returncode
        if code == -signal.SIGTERM and "Server Shut Down." in self.text():
            return 0
        return code


class Client:
    """A blocking SimulCrypt client for tests; records every byte for capture files."""

    def __init__(self, port: int, interface: wire.Interface = wire.Interface.ECMG_SCS, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.interface = interface
        self.framer = wire.Framer()
        self.ready: list = []
        self.transcript: list[tuple[str, bytes]] = []  # ("c" client->server | "s", bytes)

    def send(self, message) -> None:
        data = message if isinstance(message, bytes) else message.encode()
        self.transcript.append(("c", data))
        self.sock.sendall(data)

    def recv(self):
        """The next message from the server (decoded), or raise on timeout / close."""
        while not self.ready:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.transcript.append(("s", data))
            self.ready.extend(self.framer.feed(data))
        return wire.decode(self.ready.pop(0), self.interface)

    def request(self, message):
        self.send(message)
        return self.recv()

    def is_closed_by_peer(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.transcript.append(("s", data))
                self.ready.extend(self.framer.feed(data))
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self) -> None:
        self.sock.close()
