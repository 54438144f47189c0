"""``benchmarks/ecmg.py`` still runs: a one-second paced run of two modes with ``--build-cpu``.

The benchmark starts its own ECMG (``twistd bcast-ecmg``, the builds wrapped and timed) and bare
server on 127.0.0.1, port 0. Asserted: every CW_provision was answered without a stream_error,
and the instrumented ECMG counted the builds of each mode (a thread CPU time per build above
zero). No figure is judged: timing belongs to the benchmark's own output.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paced_run_with_build_cpu_counts_every_build(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ecmg.py"), "--no-throughput", "--runs", "1",
         "--paced-streams", "200", "--paced-seconds", "1", "--modes", "drm,dvb", "--build-cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    replies = dict(re.findall(r"run 1 (\w+) +: (\d+) replies,", out))
    assert replies == {"baseline": "200", "drm": "200", "dvb": "200"}, out
    assert "stream_errors" not in out, out
    table = out[out.index("--build-cpu: one build's thread CPU"):]
    rows = {mode: [float(x) for x in values.split()]
            for mode, values in re.findall(r"^  (drm|dvb) +([\d. ]+)$", table, re.M)}
    assert set(rows) == {"drm", "dvb"}, table
    for mode, (in_ecmg, hot, inflation, floor) in rows.items():
        assert in_ecmg > 0 and hot > 0, (mode, table)
        assert abs(inflation - in_ecmg / hot) < 0.05 * inflation + 0.01, (mode, table)  # the columns agree
        assert floor > 0, (mode, table)
