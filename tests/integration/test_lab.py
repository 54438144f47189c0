"""The lab head-end, end to end: 10 crypto-periods of 1 s, every content packet of every service
(SRTP, IPsec ESP, ISMACryp) decrypted intact by the reference terminal with DRM Profile keys
(from broadcast LTKMs) and with Smartcard Profile keys — once with every role in one process,
once with each role in its own twistd process on loopback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

from .harness import ROOT

LAB = ROOT / "etc" / "lab"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
SUMMARY = re.compile(r"^\s+(\w+)\s+(srtp|ipsec|ismacryp)\s+drm (\d+)/(\d+)\s+smartcard (\d+)/(\d+)\s*$", re.M)


def env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def check_verdict(stdout: str, periods: int) -> None:
    rows = SUMMARY.findall(stdout)
    assert sorted(r[1] for r in rows) == ["ipsec", "ismacryp", "srtp"], stdout
    for name, _protection, drm_ok, drm_sent, card_ok, card_sent in rows:
        assert int(drm_sent) >= 50 * (periods - 1), (name, stdout)  # the source really ran
        assert drm_ok == drm_sent and card_ok == card_sent == drm_sent, (name, stdout)
    assert f"PASS: {periods} periods" in stdout
    assert len(re.findall(r"^period +\d+/%d " % periods, stdout, re.M)) == periods


def test_lab_in_one_process(tmp_path):
    result = subprocess.run(
        TWISTD + ["-l", str(tmp_path / "lab.log"), "bcast-lab", "--config", str(LAB / "lab.toml"), "--periods", "10"],
        capture_output=True, text=True, timeout=120, env=env(), cwd=tmp_path,
    )
    log = (tmp_path / "lab.log").read_text()
    assert result.returncode == 0, result.stdout + result.stderr + log[-3000:]
    check_verdict(result.stdout, 10)
    assert "Traceback" not in log


def test_lab_as_separate_processes(tmp_path):
    roles = [
        ("bcast-mux", "mux.toml", "MuxFactory starting on"),
        ("bcast-ecmg", "ecmg-drm.toml", "ECMGFactory starting on"),
        ("bcast-ecmg", "ecmg-smartcard.toml", "ECMGFactory starting on"),
        ("bcast-emmg", "emmg.toml", None),
        ("bcast-scs", "scs.toml", None),
    ]
    processes = []
    try:
        for tapname, config, marker in roles:
            log = tmp_path / f"{config}.log"
            proc = subprocess.Popen(TWISTD + ["-l", str(log), tapname, "--config", str(LAB / config)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env(), cwd=tmp_path)
            processes.append((proc, log))
            deadline = time.monotonic() + 20
            while marker and time.monotonic() < deadline:
                if log.exists() and marker in log.read_text():
                    break
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
        terminal = subprocess.run(
            TWISTD + ["-l", str(tmp_path / "terminal.log"), "bcast-terminal", "--config", str(LAB / "terminal.toml"),
                      "--periods", "10"],
            capture_output=True, text=True, timeout=120, env=env(), cwd=tmp_path,
        )
        assert terminal.returncode == 0, terminal.stdout + (tmp_path / "terminal.log").read_text()[-3000:]
        check_verdict(terminal.stdout, 10)
    finally:
        for proc, _log in reversed(processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, log in processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    for proc, log in processes:
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        assert "Server Shut Down." in text
