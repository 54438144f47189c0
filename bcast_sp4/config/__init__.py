"""Configuration, key and subscriber files (TOML) -> frozen attrs. Pure: no Twisted, no sockets.

Every problem is a :class:`ConfigError` reading ``FILE: KEY.PATH: reason``, raised at start so a
role never runs half-configured. Paths inside a file are relative to that file. One module per
file kind; :mod:`._reader` holds the typed TOML access they share, :mod:`.addresses` the UDP
address notations, :mod:`.locate` where default files are looked for. ``docs/config.md`` lists
every key.
"""

from ._reader import ConfigError
from .addresses import parse_host_port, parse_udp_listen
from .ecmg import ECMGSettings, load_ecmg_settings
from .emmg import EMMGSettings, StreamSources, load_emmg_settings
from .keyfile import load_keyfile
from .lab import LabSettings, load_lab_settings
from .mux import MuxSettings, load_mux_settings
from .scs import SCSSettings, load_scs_settings
from .subscribers import load_subscribers
from .terminal import TerminalSettings, load_terminal_settings

__all__ = [
    "ConfigError",
    "ECMGSettings",
    "EMMGSettings",
    "LabSettings",
    "MuxSettings",
    "SCSSettings",
    "StreamSources",
    "TerminalSettings",
    "load_ecmg_settings",
    "load_emmg_settings",
    "load_keyfile",
    "load_lab_settings",
    "load_mux_settings",
    "load_scs_settings",
    "load_subscribers",
    "load_terminal_settings",
    "parse_host_port",
    "parse_udp_listen",
]
