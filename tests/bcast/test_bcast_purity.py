"""The bcast payload layer stays pure: no Twisted, no logging, no sockets (STYLE §1, §9)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = REPO / "bcast_sp4" / "bcast"
MODULES = ["status", "traffic", "keys", "stkm_drm", "stkm_mikey"]


def test_imports_no_twisted_in_fresh_interpreter():
    code = (
        "import sys;"
        + "".join(f"import bcast_sp4.bcast.{m};" for m in MODULES)
        + "bad = sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_forbidden_imports_in_source():
    forbidden = {"twisted", "logging", "socket", "asyncio", "select", "threading"}
    seen = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            seen += [f"{path.name}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert seen == []
    assert {p.stem for p in PACKAGE.glob("*.py")} >= set(MODULES)
