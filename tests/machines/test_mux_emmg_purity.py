"""The MUX / EMMG machines, pacing, their config readers and the LTKM payload stay pure (STYLE §1, §9)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
MODULES = [
    "bcast_sp4.machines.mux",
    "bcast_sp4.machines.emmg",
    "bcast_sp4.machines.pacing",
    "bcast_sp4.config.mux",
    "bcast_sp4.config.emmg",
    "bcast_sp4.bcast.ltkm_drm",
    "bcast_sp4.bcast.subscribers",
]


def test_imports_no_twisted_in_fresh_interpreter():
    code = (
        "import sys;"
        + "".join(f"import {name};" for name in MODULES)
        + "bad = sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_io_logging_or_clock_imports_in_source():
    forbidden = {"twisted", "logging", "socket", "asyncio", "select", "threading", "time"}  # time: clocks come in as `now`
    seen = []
    for name in MODULES:
        path = REPO / (name.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            seen += [f"{path.name}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert seen == []
