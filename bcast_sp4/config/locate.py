"""Where a role's *default* configuration file is found. Pure.

A default such as ``etc/ecmg.toml`` is looked for, in order:

1. in the working directory (``./etc/ecmg.toml``), as every earlier release did;
2. in the source tree the package runs from (``<checkout>/etc/ecmg.toml``): a git clone with
   ``scripts/bootstrap`` (an editable install) or the repository on ``PYTHONPATH``. A source tree
   is recognised by the ``setup.cfg`` beside the ``bcast_sp4`` package;
3. in the installed data files (``<prefix>/share/bcast-sp4/etc/ecmg.toml``), where a normal
   ``pip install`` puts ``etc/`` (``[options.data_files]`` in ``setup.cfg``).

The example files are configuration, not code, so they stay in ``etc/`` at the top of the tree
(the README and the systemd units point there) instead of moving into the package as package
data. A path given on the command line is used as given; only defaults are searched.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ._reader import ConfigError

#: the folder of the bcast_sp4 package's parent (a checkout's root when run from source)
_TREE = Path(__file__).resolve().parents[2]


def etc_folders() -> list[Path]:
    """The folders that hold ``etc/`` contents, after the working directory (see the module)."""
    folders = []
    if (_TREE / "setup.cfg").is_file() and (_TREE / "etc").is_dir():
        folders.append(_TREE / "etc")
    folders.append(Path(sys.prefix) / "share" / "bcast-sp4" / "etc")
    return folders


def locate_default(default: str | Path) -> Path:
    """The file a default path (``etc/<name>``) names: from the working directory, else from the
    package's ``etc/`` (see the module docstring).

    :raises ConfigError: found nowhere; the message lists every place looked at.
    """
    given = Path(default)
    if given.is_absolute() or given.exists():
        return given
    inside = Path(*given.parts[1:]) if given.parts and given.parts[0] == "etc" else given
    candidates = [folder / inside for folder in etc_folders()]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(p) for p in [given.absolute(), *candidates])
    raise ConfigError(given, None, f"file not found (looked in {looked})")


__all__ = ["etc_folders", "locate_default"]
