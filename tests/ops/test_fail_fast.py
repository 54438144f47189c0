"""Fail-fast start-up (issue #12, item 1): real ``twistd`` / ``twist`` processes that cannot listen
on or parse an endpoint, or read a key or subscriber file, exit non-zero before serving with one
line on stderr and no traceback.

Ports in use are held by this test (bound to port 0 on 127.0.0.1, read back). Every process runs
with a bounded timeout; the runs go in parallel (each is a fresh interpreter).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bcast_sp4.ops.startup import CONFIG_ERROR_STATUS, LISTEN_ERROR_STATUS

from ..integration.harness import lab_port_bases

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _twistd(*args: str) -> list[str]:
    return [str(BIN / "twistd"), "-n", "--pidfile=", *args]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=150)
    except subprocess.TimeoutExpired as exc:  # it kept running: that case fails, not the others
        return subprocess.CompletedProcess(argv, None, str(exc.stdout), f"still running after 150 s: {exc.stderr!r}")


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))
    return path


def _held_elsewhere(stderr: str, in_use: str) -> bool:
    """The lab stopped on one of its own ports (another process held it), not the endpoint under test."""
    return "cannot listen on tcp:" in stderr and f"cannot listen on {in_use}:" not in stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """case name -> (expected status, expected stderr, finished process)."""
    base = tmp_path_factory.mktemp("failfast")
    etc = base / "etc"
    shutil.copytree(ROOT / "etc", etc)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
    free_tcp = "tcp:0:interface=127.0.0.1"

    ecmg_bad_port = _edit(etc / "ecmg.toml", 'endpoint = "tcp:2222:interface=127.0.0.1"', 'endpoint = "tcp:port=abc"')
    no_keys = etc / "ecmg-no-keys.toml"
    shutil.copy(ROOT / "etc" / "ecmg.toml", no_keys)
    _edit(no_keys, 'key_file = "keys.example.toml"', 'key_file = "absent-keys.toml"')
    no_subscribers = _edit(etc / "emmg.toml", 'file = "subscribers.example.toml"', 'file = "absent-subscribers.toml"')
    scs_udp = _edit(etc / "scs.toml", 'input = "udp:5004:interface=127.0.0.1"', f'input = "udp:{udp_port}:interface=127.0.0.1"')
    _edit(scs_udp, 'path = "/tmp/bcast-scs-stkms.jsonl"', f'path = "{base / "stkms.jsonl"}"')
    terminal = _edit(etc / "lab" / "terminal.toml", 'ltkm = "udp:14359:interface=127.0.0.1"', f'ltkm = "udp:{udp_port}:interface=127.0.0.1"')
    ecmg = str(ROOT / "etc" / "ecmg.toml")

    in_use = f"tcp:{tcp_port}:interface=127.0.0.1"
    # the lab binds its own ports (moved to a base below the ephemeral range the held ports come
    # from) before its metrics endpoint: a base another process holds a port of is retried below
    lab_bases = lab_port_bases()
    lab_base = lab_bases.pop()
    cases = {
        "ecmg tcp in use": (LISTEN_ERROR_STATUS, f"bcast-ecmg: cannot listen on {in_use}: address already in use\n",
                            _twistd("bcast-ecmg", "--config", ecmg, "--endpoint", in_use)),
        "twist ecmg tcp in use": (LISTEN_ERROR_STATUS, f"bcast-ecmg: cannot listen on {in_use}: address already in use\n",
                                  [str(BIN / "twist"), "bcast-ecmg", "--config", ecmg, "--endpoint", in_use]),
        "mux tcp in use": (LISTEN_ERROR_STATUS, f"bcast-mux: cannot listen on {in_use}: address already in use\n",
                           _twistd("bcast-mux", "--config", str(ROOT / "etc" / "mux.toml"), "--endpoint", in_use, "--udp", "off")),
        "mux udp in use": (LISTEN_ERROR_STATUS,
                           f"bcast-mux: cannot listen on udp:{udp_port}:interface=127.0.0.1: address already in use\n",
                           _twistd("bcast-mux", "--config", str(ROOT / "etc" / "mux.toml"), "--endpoint", free_tcp,
                                   "--udp", f"udp:{udp_port}:interface=127.0.0.1")),
        "scs udp in use": (LISTEN_ERROR_STATUS,
                           f"bcast-scs: cannot listen on udp:{udp_port}:interface=127.0.0.1: address already in use\n",
                           _twistd("bcast-scs", "--config", str(scs_udp))),
        "terminal udp in use": (LISTEN_ERROR_STATUS,
                                f"bcast-terminal: cannot listen on udp:{udp_port}:interface=127.0.0.1: address already in use\n",
                                _twistd("bcast-terminal", "--config", str(terminal))),
        "ecmg port out of range": (CONFIG_ERROR_STATUS, "bcast-ecmg: cannot listen on tcp:99999: port out of range 0-65535\n",
                                   _twistd("bcast-ecmg", "--config", ecmg, "--endpoint", "tcp:99999")),
        "ecmg unknown endpoint type": (
            CONFIG_ERROR_STATUS,
            "bcast-ecmg: cannot listen on foo:bar: unknown endpoint type 'foo' (expected e.g. tcp:PORT:interface=ADDR)\n",
            _twistd("bcast-ecmg", "--config", ecmg, "--endpoint", "foo:bar")),
        "ecmg config port not a number": (CONFIG_ERROR_STATUS, "bcast-ecmg: cannot listen on tcp:port=abc: 'abc' is not a number\n",
                                          _twistd("bcast-ecmg", "--config", str(ecmg_bad_port))),
        "mux unknown endpoint type": (
            CONFIG_ERROR_STATUS,
            "bcast-mux: cannot listen on foo:bar: unknown endpoint type 'foo' (expected e.g. tcp:PORT:interface=ADDR)\n",
            _twistd("bcast-mux", "--config", str(ROOT / "etc" / "mux.toml"), "--endpoint", "foo:bar", "--udp", "off")),
        "emmg bad connect": (CONFIG_ERROR_STATUS, "bcast-emmg: cannot parse endpoint foo:bar: unknown endpoint type 'foo' "
                                                  "(expected e.g. tcp:PORT:interface=ADDR)\n",
                             _twistd("bcast-emmg", "--config", str(ROOT / "etc" / "emmg.toml"), "--connect", "foo:bar")),
        "ecmg metrics port in use": (
            LISTEN_ERROR_STATUS, f"bcast-ecmg: cannot listen on {in_use}: address already in use\n",
            _twistd("bcast-ecmg", "--config", ecmg, "--endpoint", free_tcp, "--metrics", in_use)),
        "lab metrics port in use": (
            LISTEN_ERROR_STATUS, f"bcast-lab: cannot listen on {in_use}: address already in use\n",
            _twistd("bcast-lab", "--config", str(ROOT / "etc" / "lab" / "lab.toml"), "--port-base", str(lab_base),
                    "--metrics", in_use)),
        "lab bad metrics endpoint": (
            CONFIG_ERROR_STATUS,
            "bcast-lab: cannot listen on foo:bar: unknown endpoint type 'foo' (expected e.g. tcp:PORT:interface=ADDR)\n",
            _twistd("bcast-lab", "--config", str(ROOT / "etc" / "lab" / "lab.toml"), "--metrics", "foo:bar")),
        "ecmg key file missing": (CONFIG_ERROR_STATUS, None, _twistd("bcast-ecmg", "--config", str(no_keys))),
        "emmg subscriber file missing": (CONFIG_ERROR_STATUS, None, _twistd("bcast-emmg", "--config", str(no_subscribers))),
    }
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = {name: pool.submit(_run, argv, base) for name, (_s, _e, argv) in cases.items()}
            runs = {name: (cases[name][0], cases[name][1], future.result()) for name, future in futures.items()}
        lab = "lab metrics port in use"
        while lab_bases and _held_elsewhere(runs[lab][2].stderr, in_use):
            argv = cases[lab][2]
            next_base = lab_bases.pop()
            argv[argv.index(str(lab_base))] = str(next_base)
            lab_base = next_base
            runs[lab] = (cases[lab][0], cases[lab][1], _run(argv, base))
        return runs
    finally:
        tcp.close()
        udp.close()


CASES = [
    "ecmg tcp in use", "twist ecmg tcp in use", "mux tcp in use", "mux udp in use", "scs udp in use",
    "terminal udp in use", "ecmg port out of range", "ecmg unknown endpoint type", "ecmg config port not a number",
    "mux unknown endpoint type", "emmg bad connect", "ecmg metrics port in use", "lab metrics port in use",
    "lab bad metrics endpoint", "ecmg key file missing", "emmg subscriber file missing",
]


@pytest.mark.parametrize("case", CASES)
def test_an_unusable_endpoint_or_file_stops_the_role_with_one_line(runs, case):
    status, expected, run = runs[case]
    assert run.returncode == status, (run.returncode, run.stderr, run.stdout[-2000:])
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr + run.stdout, run.stderr
    if expected is not None:
        assert run.stderr == expected
    else:  # the loader's wording: FILE: KEY: reason, naming the missing file
        assert "absent-" in run.stderr and run.stderr.startswith(case.split()[0].join(("bcast-", ": "))), run.stderr


def test_a_role_that_could_not_listen_never_served(runs):
    """The failing ECMG logged no 'listening' / 'Starting factory' line before it stopped."""
    _status, _expected, run = runs["ecmg tcp in use"]
    assert "Starting factory" not in run.stdout and "starting on" not in run.stdout
