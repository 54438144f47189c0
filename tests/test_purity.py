"""The pure core stays pure (STYLE §1, §2, §9): wire, machines, bcast, config, media and the
tools' views and capture codec import no Twisted, no logging, no sockets, no threads and no clock
(time comes in as ``now``)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
PURE_PACKAGES = ("wire", "machines", "bcast", "config", "media")
PURE_EXTRA = ("bcast_sp4.tools.capture", "bcast_sp4.tools.check", "bcast_sp4.tools.render", "bcast_sp4.tools.payloads",
              "bcast_sp4.tools.sniff", "bcast_sp4.roles.stkm_sink")
FORBIDDEN = {"twisted", "logging", "socket", "asyncio", "select", "threading", "time"}


def pure_modules() -> list[str]:
    names = []
    for package in PURE_PACKAGES:
        for path in sorted((REPO / "bcast_sp4" / package).rglob("*.py")):  # subpackages too (machines/mux/)
            parts = path.relative_to(REPO).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names + list(PURE_EXTRA)


def test_the_pure_core_is_every_module_of_its_packages():
    modules = pure_modules()
    assert "bcast_sp4.wire.message" in modules and "bcast_sp4.machines.ecmg" in modules
    assert "bcast_sp4.machines.mux" in modules and "bcast_sp4.machines.mux.core" in modules
    assert "bcast_sp4.media.scrambler" in modules and "bcast_sp4.tools.capture" in modules
    assert len(modules) >= 30


def test_imports_no_twisted_in_a_fresh_interpreter():
    code = (
        "import sys;"
        + "".join(f"import {name};" for name in pure_modules())
        + "bad = sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_io_logging_thread_or_clock_imports_in_the_source():
    seen = []
    for name in pure_modules():
        path = REPO / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = REPO / name.replace(".", "/") / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            seen += [f"{name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert seen == []
