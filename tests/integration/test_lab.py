"""The lab head-end, end to end: crypto-periods of 1 s, every content packet of every service
(SRTP, IPsec ESP, ISMACryp) decrypted intact by the reference terminal with DRM Profile keys
(from broadcast LTKMs) and with Smartcard Profile keys — once with every role in one process,
once with each role in its own twistd process (``scripts/lab-apart``) on loopback.

Every run moves the lab's ports with ``--port-base`` (no fixed port); a base whose ports another
process holds fails the run at start-up with a line naming the endpoint, and the test takes the
next base (bounded). Every wait is bounded; nothing measures wall-clock time.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time

from .harness import ROOT, lab_port_bases

LAB = ROOT / "etc" / "lab"
LAB_APART = ROOT / "scripts" / "lab-apart"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
SUMMARY = re.compile(r"^(?:\[terminal\] )?\s+(\w+)\s+(srtp|ipsec|ismacryp)\s+drm (\d+)/(\d+)\s+smartcard (\d+)/(\d+)\s*$",
                     re.M)


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


port_bases = lab_port_bases


def listen_failure(text: str) -> bool:
    """Another process held one of the base's ports (then the next base is tried)."""
    return bool(re.search(r"cannot listen|CannotListenError|not listening|listening on .*not ready|address already in use",
                          text, re.I))


def check_verdict(stdout: str, periods: int) -> None:
    rows = SUMMARY.findall(stdout)
    assert sorted(r[1] for r in rows) == ["ipsec", "ismacryp", "srtp"], stdout
    for name, _protection, drm_ok, drm_sent, card_ok, card_sent in rows:
        # the source ran (how many it sent depends on how busy the machine is: 50/s is a target)
        assert int(drm_sent) > 0, (name, stdout)
        assert drm_ok == drm_sent and card_ok == card_sent == drm_sent, (name, stdout)
    assert f"PASS: {periods} periods" in stdout
    assert len(re.findall(r"^(?:\[terminal\] )?period +\d+/%d " % periods, stdout, re.M)) == periods


def test_lab_in_one_process(tmp_path):
    for base in port_bases():
        result = subprocess.run(
            TWISTD + ["-l", str(tmp_path / "lab.log"), "bcast-lab", "--config", str(LAB / "lab.toml"), "--periods", "10",
                      "--port-base", str(base)],
            capture_output=True, text=True, timeout=180, env=env(), cwd=tmp_path,
        )
        log = (tmp_path / "lab.log").read_text()
        if listen_failure(result.stdout + result.stderr + log):
            continue
        break
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    check_verdict(result.stdout, 10)
    assert "lab: every channel, stream and allocation is up; SCS schedulers started" in log
    assert "lab: first STKMs out; the terminal waits for keys" in log
    assert "Traceback" not in log, log[max(0, log.find("Traceback") - 1500):][:6000]
    assert f"MuxFactory starting on {15000 - 12201 + base}" in log  # the ports moved


def test_lab_with_a_role_that_never_becomes_ready_fails_naming_it(tmp_path):
    """The MUX's port is taken (by this test): the lab ends at start-up with a non-zero status and
    the MUX's endpoint in its output, instead of skipping periods."""
    import socket

    for base in port_bases():
        mux_port = 15000 - 12201 + base
        holder = socket.socket()
        try:
            holder.bind(("127.0.0.1", mux_port))
        except OSError:
            holder.close()
            continue
        holder.listen(1)
        try:
            result = subprocess.run(
                TWISTD + ["-l", str(tmp_path / "lab.log"), "bcast-lab", "--config", str(LAB / "lab.toml"),
                          "--periods", "2", "--port-base", str(base), "--startup-timeout", "5"],
                capture_output=True, text=True, timeout=120, env=env(), cwd=tmp_path,
            )
        finally:
            holder.close()
        break
    text = result.stdout + result.stderr + (tmp_path / "lab.log").read_text()
    assert result.returncode != 0, text[-3000:]
    assert f"tcp:{mux_port}:interface=127.0.0.1" in text, text[-3000:]
    assert "PASS" not in result.stdout


def test_lab_as_separate_processes(tmp_path):
    for base in port_bases():
        result = subprocess.run([str(LAB_APART), "--port-base", str(base), "--periods", "10"], capture_output=True,
                                text=True, timeout=240, env=env(), cwd=tmp_path)
        if listen_failure(result.stdout + result.stderr):
            continue
        break
    out = result.stdout
    assert result.returncode == 0, out[-5000:] + result.stderr
    check_verdict(out, 10)
    for role in ("mux", "ecmg1", "ecmg2", "emmg", "scs"):
        assert re.search(rf"^\[{role}\] ", out, re.M), role  # every role's lines, prefixed
        assert re.search(rf"^lab-apart: {role} \(pid \d+\) stopped, status -15$", out, re.M), role
        assert f"[{role}] " in out and "Server Shut Down." in "\n".join(
            line for line in out.splitlines() if line.startswith(f"[{role}] "))
    assert "Traceback" not in out, out[max(0, out.find("Traceback") - 1500):][:6000]
    assert f"MuxFactory starting on {15000 - 12201 + base}" in out


def read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> str:
    """The child's output up to the first line matching *pattern* (bounded by *timeout*)."""
    seen = []
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    try:
        while time.monotonic() < deadline:
            if not selector.select(timeout=1.0):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if regex.search(line):
                return "".join(seen)
    finally:
        selector.close()
    raise AssertionError(f"no line matching {pattern!r}:\n" + "".join(seen)[-5000:])


def test_lab_apart_stops_every_role_on_sigterm(tmp_path):
    proc = subprocess.Popen([str(LAB_APART), "--port-base", str(port_bases(1)[0])], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env(), cwd=tmp_path)
    try:
        head = read_until(proc, r"^\[terminal\] .*terminal: keys for every service", 120)
        pids = {m.group(1): int(m.group(2)) for m in re.finditer(r"^lab-apart: (\w+) started, pid (\d+)$", head, re.M)}
        assert sorted(pids) == ["ecmg1", "ecmg2", "emmg", "mux", "scs", "terminal"]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, rest[-3000:]
    assert "lab-apart: SIGTERM: stopping every role" in rest
    for role, pid in pids.items():
        assert re.search(rf"^lab-apart: {role} \(pid {pid}\) stopped, status -15$", rest, re.M), rest[-3000:]
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"{role} (pid {pid}) still running")
