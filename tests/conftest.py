"""Suite-wide settings.

Hypothesis' per-example ``deadline`` (200 ms by default) is a wall-clock assertion: on a machine
whose cores another process keeps busy an example can take longer without anything being wrong
(``test_framer_reassembles_any_chunking`` did). Time is not what those property tests check, so
the deadline is off; speed lives in ``benchmarks/``.

The suite starts a hundred-odd Python processes (``twistd`` roles, the lab, ``bcast-sp4`` tools).
Where ``PYTHONDONTWRITEBYTECODE`` is set, no ``.pyc`` of the package is ever written, so each of
them compiled every ``bcast_sp4`` module it imports again (~0.25 s of CPU per process). The
package is compiled once at the start of the session instead, into its ``__pycache__`` folders
(ignored by git; a module edited later is compiled in memory as usual, its stale ``.pyc`` unused),
and this process may write the ``.pyc`` of the test modules pytest rewrites (collection: ~9.6 s
of CPU without them, ~3.6 s with them).
"""

import compileall
import sys
from pathlib import Path

from hypothesis import settings

settings.register_profile("bcast-sp4", deadline=None)
settings.load_profile("bcast-sp4")

ROOT = Path(__file__).resolve().parents[1]
sys.dont_write_bytecode = False  # read per module by pytest's assertion rewriter (test modules come after this file)


def pytest_sessionstart(session) -> None:
    for folder in ("bcast_sp4", "twisted/plugins"):
        compileall.compile_dir(ROOT / folder, quiet=2)  # up-to-date files are only stat'ed
