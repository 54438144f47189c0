"""Lab file (``etc/lab/lab.toml``) -> :class:`LabSettings`: one configuration file per role. Pure.

The lab file names the files that run each role as its own process (paths relative to the lab
file); loading it loads and checks every one of them, and every ECMG's key file, so the lab never
starts half-configured.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from ..bcast.keys import KeyStore
from .ecmg import ECMGSettings, load_ecmg_settings
from .emmg import EMMGSettings, load_emmg_settings
from .keyfile import load_keyfile
from .mux import MuxSettings, load_mux_settings
from .scs import SCSSettings, load_scs_settings
from .terminal import TerminalSettings, load_terminal_settings
from ._reader import Reader, load_toml
from .ops import read_metrics


@attrs.frozen(kw_only=True)
class LabSettings:
    """The settings of every role of the lab."""

    mux: MuxSettings
    ecmgs: tuple[ECMGSettings, ...]
    emmg: EMMGSettings
    scs: SCSSettings
    terminal: TerminalSettings
    #: each ECMG's key store, in the order of ``ecmgs`` (loaded once, here, to check it)
    key_stores: tuple[KeyStore, ...] = attrs.field(default=(), repr=False)
    source_path: Path | None = None
    metrics: str | None = None  # [metrics] endpoint of the lab process (the role files' are not used)


def load_lab_settings(path: str | Path) -> LabSettings:
    """Read ``lab.toml`` and every role and key file it names.

    :raises ConfigError: naming the file at fault (the lab file or a role file), key and reason.
    """
    path, doc = load_toml(path)
    root = Reader(path, doc)
    lab = root.sub("lab", required=True)
    metrics = read_metrics(root)
    mux = load_mux_settings(lab.path_value("mux"))
    ecmg_files = lab.string_list("ecmg")
    ecmgs = []
    for index, name in enumerate(ecmg_files):
        file = (path.parent / name).resolve()
        if not file.exists():
            raise lab.fail("ecmg", f"entry {index + 1}: {file} does not exist")
        ecmgs.append(load_ecmg_settings(file))
    settings = LabSettings(
        mux=mux,
        ecmgs=tuple(ecmgs),
        emmg=load_emmg_settings(lab.path_value("emmg")),
        scs=load_scs_settings(lab.path_value("scs")),
        terminal=load_terminal_settings(lab.path_value("terminal")),
        key_stores=tuple(load_keyfile(e.key_file) for e in ecmgs),
        source_path=path,
        metrics=metrics,
    )
    lab.no_unknown_keys()
    return settings


__all__ = ["LabSettings", "load_lab_settings"]
