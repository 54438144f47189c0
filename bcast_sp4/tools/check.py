"""``bcast-sp4 check FILE...``: validate configuration, lab, key and subscriber files. Pure.

Each file's kind is told from its tables (``[ecmg]``, ``[scs]`` / ``[[service]]`` with ECMGs,
``[emmg]``, ``[mux]`` / ``[[client]]``, ``[terminal]`` / ``[device]`` / ``[[stkm]]``, ``[lab]``;
``format`` with ``[[streams]]`` for a key file, with ``[[devices]]`` for a subscriber file). The
file is then loaded exactly as its role loads it at start, with every file it names (an ECMG's
key file, an EMMG's subscriber files, a lab's role files), and one line is printed: a summary on
stdout, or the error (``FILE: KEY.PATH: reason``) on stderr. Exit status 0 when every file is
valid, 1 otherwise (2 for a usage error). Nothing is started, bound or connected; no key material
is printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..config import (
    ConfigError,
    ECMGSettings,
    EMMGSettings,
    LabSettings,
    MuxSettings,
    SCSSettings,
    TerminalSettings,
    load_ecmg_settings,
    load_emmg_settings,
    load_keyfile,
    load_lab_settings,
    load_mux_settings,
    load_scs_settings,
    load_subscribers,
    load_terminal_settings,
)
from ..config._reader import load_toml
from ..config.scs import MuxMode

_TERMINAL_TABLES = ("terminal", "device", "stkm", "smartcard_key", "source")
_MUX_TABLES = ("client", "queues", "egress")


def detect(doc: dict[str, Any]) -> str | None:
    """The kind of a parsed file (a key of :data:`KINDS`), or ``None`` when its tables say nothing."""
    if "lab" in doc:
        return "lab"
    if "ecmg" in doc:
        return "ecmg"
    if "emmg" in doc:
        return "emmg"
    if "format" in doc or "keys" in doc:
        return "subscribers" if "devices" in doc else "keys"
    if any(t in doc for t in _TERMINAL_TABLES):
        return "terminal"
    services = doc.get("service")
    if isinstance(services, list) and any(isinstance(s, dict) and "listen" in s for s in services):
        return "terminal"
    mux = doc.get("mux")
    if "scs" in doc or "service" in doc or (isinstance(mux, dict) and "mode" in mux):
        return "scs"
    if "mux" in doc or any(t in doc for t in _MUX_TABLES):
        return "mux"
    return None


def _plural(count: int, noun: str, nouns: str = "") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {nouns or noun + 's'}"


def _ecmg(path: Path) -> str:
    settings: ECMGSettings = load_ecmg_settings(path)
    store = load_keyfile(settings.key_file)
    return (f"ECMG config, {_plural(len(settings.ecmg.cas_modes), 'Super_CAS_id')}, listens {settings.endpoint}, "
            f"key file {settings.key_file.name} ({_plural(len(store.keys()), 'key')}, "
            f"{_plural(len(store.streams()), 'stream')})")


def _scs(path: Path) -> str:
    settings: SCSSettings = load_scs_settings(path)
    mux = settings.mux
    if mux.mode is MuxMode.REMOTE:
        sink = f"STKMs to the MUX at {mux.connect}" + (" (data over UDP)" if mux.udp else "")
    elif mux.mode is MuxMode.FILE:
        sink = f"STKMs to the file {mux.path}"
    else:
        sink = "STKMs to a MUX in the same process"
    return (f"SCS config, {_plural(len(settings.services), 'service')} "
            f"({', '.join(s.spec.name for s in settings.services)}), "
            f"{_plural(len(settings.channels), 'ECMG channel')}, {sink}")


def _emmg(path: Path) -> str:
    settings: EMMGSettings = load_emmg_settings(path)
    devices = sum(len(s.subscribers.devices) for s in settings.sources.values() if s.subscribers is not None)
    spools = sum(1 for s in settings.sources.values() if s.spool is not None)
    return (f"EMMG config, client_id {settings.emmg.client_id:#010x}, "
            f"{_plural(len(settings.emmg.streams), 'stream')}, connects {settings.connect} "
            f"(data over {'UDP' if settings.emmg.udp else 'TCP'}), {_plural(devices, 'subscriber device')}, "
            f"{_plural(spools, 'spool directory', 'spool directories')}")


def _mux(path: Path) -> str:
    settings: MuxSettings = load_mux_settings(path)
    routes = [r for c in settings.mux.clients.values() for r in c.routes.values()]
    kinds = {kind: sum(1 for r in routes if r.kind.value == kind) for kind in ("ltkm", "stkm", "data")}
    udp = "off" if settings.udp is None else f"udp:{settings.udp[0]}:interface={settings.udp[1]}"
    classic = f", {_plural(kinds['data'], 'classic data route')}" if kinds["data"] else ""
    return (f"MUX config, {_plural(len(settings.mux.clients), 'client')}, {_plural(kinds['ltkm'], 'LTKM route')}, "
            f"{_plural(kinds['stkm'], 'STKM route')}{classic}, listens {settings.endpoint}, UDP {udp}")


def _terminal(path: Path) -> str:
    settings: TerminalSettings = load_terminal_settings(path)
    source = f"content source {settings.source_rate:g} packets/s" if settings.source_rate else "no content source"
    return (f"terminal config, {_plural(len(settings.services), 'service')}, "
            f"{_plural(len(settings.stkm_streams), 'STKM stream')}, {source}")


def _lab(path: Path) -> str:
    settings: LabSettings = load_lab_settings(path)
    return (f"lab file: MUX, {_plural(len(settings.ecmgs), 'ECMG')}, EMMG, SCS "
            f"({_plural(len(settings.scs.services), 'service')}), terminal; every role, key and subscriber file valid")


def _keys(path: Path) -> str:
    store = load_keyfile(path)
    return f"key file, {_plural(len(store.keys()), 'key')}, {_plural(len(store.streams()), 'STKM stream')}"


def _subscribers(path: Path) -> str:
    subscribers = load_subscribers(path)
    keys = {id(k) for d in subscribers.devices for k in d.entitlements}
    return f"subscriber file, {_plural(len(subscribers.devices), 'device')}, {_plural(len(keys), 'entitled key')}"


#: kind -> summary of a valid file (raises ConfigError otherwise)
KINDS: dict[str, Callable[[Path], str]] = {
    "ecmg": _ecmg, "scs": _scs, "emmg": _emmg, "mux": _mux, "terminal": _terminal, "lab": _lab,
    "keys": _keys, "subscribers": _subscribers,
}
_UNKNOWN = ("cannot tell what this file is: no [ecmg], [scs] or [[service]], [emmg], [mux] or [[client]], "
            "[terminal] or [device], [lab] table, nor the format of a key or subscriber file")


def check_file(path: Path) -> str:
    """The summary of one valid file.

    :raises ConfigError: the file (or one it names) is not valid, or its kind cannot be told.
    """
    path, doc = load_toml(path)
    kind = detect(doc)
    if kind is None:
        raise ConfigError(path, None, _UNKNOWN)
    return KINDS[kind](path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bcast-sp4 check",
        description="Validate role configuration, lab, key and subscriber files (the kind is told from the "
        "tables) as the roles load them at start: one line per file, exit status 0 when all are valid.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="TOML file to check")
    return parser


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Check every file; returns the exit status (0 all valid, 1 otherwise)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    failed = 0
    for name in args.files:
        try:
            out.write(f"{name}: {check_file(Path(name))}\n")
        except ConfigError as exc:
            failed += 1
            named_by = "" if Path(exc.path) == Path(name) else f" (named by {name})"
            err.write(f"{exc}{named_by}\n")
    return 1 if failed else 0


__all__ = ["KINDS", "check_file", "detect", "main"]
