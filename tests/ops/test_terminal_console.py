"""``twistd -n bcast-terminal`` prints each progress line once (the log is on stdout already)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_udp_ports(n: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _terminal_config(tmp_path: Path) -> Path:
    """etc/lab/terminal.toml on free UDP ports, giving up after 1 s without keys (exit status 3)."""
    text = (ROOT / "etc" / "lab" / "terminal.toml").read_text().replace("ready_timeout_s = 30", "ready_timeout_s = 1")
    listens = sorted(set(re.findall(r'"udp:(\d+):interface=127\.0\.0\.1"', text)))
    for old, new in zip(listens, _free_udp_ports(len(listens))):
        text = text.replace(f'"udp:{old}:', f'"udp:{new}:')
    config = tmp_path / "terminal.toml"
    config.write_text(text)
    return config


def _run(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)


def test_twist_with_log_format_json_writes_one_object_per_line(tmp_path):
    run = _run(tmp_path, "twist", "bcast-terminal", "--config", str(_terminal_config(tmp_path)), "--log-format", "json",
               "--log-level", "debug")
    assert run.returncode == 3, run.stdout + run.stderr
    # twist logs to stdout: every line there is one JSON object (the console lines come as log events, once)
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines and all(set(line) >= {"time", "level", "role", "event"} for line in lines)
    assert {line["role"] for line in lines} == {"bcast-terminal"}
    assert sum(line["event"].startswith("terminal: no keys after 1 s") for line in lines) == 1


def test_terminal_progress_lines_are_printed_once_under_twistd_n(tmp_path):
    config = _terminal_config(tmp_path)
    run = _run(tmp_path, "twistd", "-n", "--pidfile=", "bcast-terminal", "--config", str(config))
    assert run.returncode == 3, run.stdout + run.stderr  # no keys arrive: the terminal's own verdict
    assert run.stdout.count("waiting for LTKMs and STKMs") == 1, run.stdout
    assert run.stdout.count("terminal: no keys after 1 s") == 1, run.stdout
