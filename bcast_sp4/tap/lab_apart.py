"""``scripts/lab-apart``: the lab's roles as separate ``twistd`` processes, one console.

``scripts/lab-apart [--config etc/lab/lab.toml] [--port-base N] [--periods N]``

Starts every role of the lab file (MUX, each ECMG, EMMG, SCS, terminal, in that order) as its own
``twistd -n bcast-lab --role NAME`` process — the same files and, with ``--port-base``, the same
moved ports as ``bcast-lab`` in one process; the SCS reaches the MUX over EMMG/PDG<=>MUX as
``[mux] mode = "remote"`` says. Every line a role writes (its log, the terminal's progress) is
printed with the role's name in front, ``[ecmg2] ...``. The servers are started first and each
must say it listens before the clients start (at most ``--startup-timeout`` s).

Ctrl-C or SIGTERM stops them all (SIGTERM each, newest first; SIGKILL after ``--stop-timeout``).
With ``--periods N`` the run ends when the terminal gives its verdict, and the exit status is the
terminal's. A role that exits on its own ends the run too, with that role's status (1 when it
was killed by a signal).
"""

from __future__ import annotations

import argparse
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config import ConfigError, load_lab_settings
from ..config.lab_ports import move_ports
from .lab import role_names

#: roles that serve: the clients start once each has said it listens
SERVERS = re.compile(r"^(mux|ecmg\d+)$")
#: what twistd logs when a server listens
LISTENING = re.compile(r"(MuxFactory|ECMGFactory) starting on (\d+)")
#: the terminal logs each progress line and prints it: the printed copy is enough
TERMINAL_LOG_COPY = "[bcast_sp4.roles.terminal.TerminalService#info] "
TWISTD = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "-l", "-"]


class Role:
    """One role's process and the thread that prefixes its output."""

    def __init__(self, name: str, argv: list[str], lines: "queue.Queue[tuple[str, str | None]]") -> None:
        self.name = name
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self.reader = threading.Thread(target=self._read, args=(lines,), daemon=True)
        self.reader.start()

    def _read(self, lines) -> None:
        for line in self.process.stdout:
            lines.put((self.name, line.rstrip("\n")))
        lines.put((self.name, None))

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lab-apart", description=__doc__.split("\n\n")[1])
    parser.add_argument("--config", default="etc/lab/lab.toml", help="lab file (default etc/lab/lab.toml)")
    parser.add_argument("--port-base", type=int, help="move every port of the lab at once (the lowest becomes N)")
    parser.add_argument("--periods", type=int, default=0, help="stop after N periods of content (0 = until Ctrl-C)")
    parser.add_argument("--startup-timeout", type=float, default=30.0, help="s a server may take to listen")
    parser.add_argument("--stop-timeout", type=float, default=15.0, help="s a role may take to stop after SIGTERM")
    args = parser.parse_args(argv)
    if args.periods < 0:
        parser.error("--periods must be >= 0")
    return args


def exit_status(code: int) -> int:
    """A child's return code as an exit status: SIGTERM (our stop) is 0, another signal 1."""
    if code == -signal.SIGTERM:
        return 0
    return 1 if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_lab_settings(args.config)
        if args.port_base is not None:
            move_ports(settings, args.port_base)  # checks the base before any process starts
    except (ConfigError, ValueError) as exc:
        print(f"lab-apart: {exc}", file=sys.stderr)
        return 78
    common = ["bcast-lab", "--config", str(Path(args.config).resolve())]
    if args.port_base is not None:
        common += ["--port-base", str(args.port_base)]
    lines: queue.Queue = queue.Queue()
    roles: list[Role] = []
    stopping = threading.Event()

    def stop(signum, _frame) -> None:
        print(f"lab-apart: {signal.Signals(signum).name}: stopping every role", flush=True)
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        for name in role_names(settings):
            extra = ["--periods", str(args.periods)] if name == "terminal" else []
            role = Role(name, [sys.executable, *TWISTD, *common, "--role", name, *extra], lines)
            roles.append(role)
            print(f"lab-apart: {name} started, pid {role.process.pid}", flush=True)
            if SERVERS.match(name):
                status = pump(lines, roles, stopping, until_listening=name, timeout=args.startup_timeout)
                if status is not None:
                    return status
        status = pump(lines, roles, stopping)
        return status
    finally:
        shut_down(roles, lines, args.stop_timeout)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def pump(lines: queue.Queue, roles: list[Role], stopping: threading.Event, until_listening: str | None = None,
         timeout: float | None = None) -> int | None:
    """Print prefixed lines until *until_listening* listens (``None`` returned) or the run ends (its status)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    by_name = {role.name: role for role in roles}
    while not stopping.is_set():
        if deadline is not None and time.monotonic() > deadline:
            print(f"lab-apart: {until_listening} not listening after {timeout:g} s", flush=True)
            return 4
        try:
            name, line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:  # that role's output ended: it exited
            code = by_name[name].process.wait()
            print(f"lab-apart: {name} exited with status {code}", flush=True)
            return exit_status(code) if name == "terminal" else (exit_status(code) or 1)
        if name != "terminal" or TERMINAL_LOG_COPY not in line:
            print(f"[{name}] {line}", flush=True)
        if until_listening == name and LISTENING.search(line):
            return None
    return 0


def shut_down(roles: list[Role], lines: queue.Queue, stop_timeout: float) -> None:
    """SIGTERM every role still running, newest first; wait, then SIGKILL; print what is left to say."""
    for role in reversed(roles):
        role.terminate()
    deadline = time.monotonic() + stop_timeout
    for role in reversed(roles):
        try:
            role.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"lab-apart: {role.name} did not stop in {stop_timeout:g} s: killed", flush=True)
            role.process.kill()
            role.process.wait()
    for role in roles:
        role.reader.join(5)
    while True:
        try:
            name, line = lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            print(f"[{name}] {line}", flush=True)
    for role in roles:
        print(f"lab-apart: {role.name} (pid {role.process.pid}) stopped, status {role.process.returncode}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
