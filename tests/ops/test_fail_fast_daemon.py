"""Fail-fast start-up of a daemonizing ``twistd`` (no ``-n``): once it has forked, stderr is
``/dev/null``, so the line goes to the log as a critical event and reaches the waiting parent
through twistd's status pipe; the parent prints it and exits 1, and twistd removes the pid file.

The port in use is held by this test (bound to port 0 on 127.0.0.1, read back); the run is
bounded by a timeout.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_a_daemonized_role_that_cannot_listen_tells_the_parent_and_the_log(tmp_path):
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    port = held.getsockname()[1]
    log, pid = tmp_path / "ecmg.log", tmp_path / "ecmg.pid"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        done = subprocess.run(
            [str(BIN / "twistd"), f"--pidfile={pid}", "-l", str(log), "bcast-ecmg",
             "--config", str(ROOT / "etc" / "ecmg.toml"), "--endpoint", f"tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    finally:
        held.close()
    reason = f"cannot listen on tcp:{port}:interface=127.0.0.1: address already in use"
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert f"StartFailed: {reason}" in done.stderr, done.stderr
    assert f"[bcast_sp4.ops.startup.FailFast#critical] bcast-ecmg: {reason}" in log.read_text()
    # the daemon writes the status pipe (the parent exits on it), then removes its pid file and
    # exits: wait for its exit on a pidfd (a kernel event, bounded), then the file must be gone
    try:
        daemon = int(pid.read_text().strip())
        handle = os.pidfd_open(daemon)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass  # already gone (or the file went while being read)
    else:
        try:
            ready, _, _ = select.select([handle], [], [], 60)
            assert ready, f"the daemon {daemon} still runs 60 s after its start-up failed"
        finally:
            os.close(handle)
    assert not pid.exists()
