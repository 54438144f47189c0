"""Role configuration files (TOML) -> frozen attrs. Pure: no Twisted, no sockets.

Every problem is a :class:`ConfigError` naming the file, the key and the reason, raised at start
so a role never runs half-configured. Paths inside a file are relative to that file. One module
per role; :mod:`._reader` holds the typed TOML access they share.
"""

from ._reader import ConfigError
from .ecmg import ECMGSettings, load_ecmg_settings
from .emmg import EMMGSettings, StreamSources, load_emmg_settings
from .mux import MuxSettings, load_mux_settings, parse_host_port, parse_udp_listen
from .scs import SCSSettings, load_scs_settings

__all__ = [
    "ConfigError",
    "ECMGSettings",
    "EMMGSettings",
    "MuxSettings",
    "SCSSettings",
    "StreamSources",
    "load_ecmg_settings",
    "load_emmg_settings",
    "load_mux_settings",
    "load_scs_settings",
    "parse_host_port",
    "parse_udp_listen",
]
