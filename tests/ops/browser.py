"""Headless Debian chromium for the status-page tests (installed by scripts/bootstrap).

A missing chromium FAILS the tests that need it (it is part of the project's setup), never skips.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is missing: run scripts/bootstrap (it installs Debian's chromium)"
    return path


def argv(url: str, profile: Path, budget_ms: int = 6000, niceness: int = 19) -> list[str]:
    """``chromium --headless ... --dump-dom URL``: the DOM after *budget_ms* of virtual time."""
    # niced: a browser starting up must not starve the server it looks at on a 2-core machine
    return [shutil.which("nice") or "/usr/bin/nice", "-n", str(niceness), chromium(), *FLAGS, f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}", "--dump-dom", url]


def dump_dom(url: str, profile: Path, budget_ms: int = 6000, timeout: float = 120, niceness: int = 19) -> str:
    """Blocking: the rendered DOM of *url* (the server must run in another process)."""
    run = subprocess.run(argv(url, profile, budget_ms, niceness), capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout
