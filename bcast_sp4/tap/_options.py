"""What every plugin's Options share: ``--version``, the default configuration file, fail-fast errors,
and the operator options ``--metrics``, ``--log-level``, ``--log-format``, ``--log-keys``.

A configuration, key or subscriber file that cannot be used ends the process before anything is
served, with one line on stderr, ``bcast-ecmg: FILE: KEY.PATH: reason``, and exit status 78
(``EX_CONFIG``; the systemd units do not restart on it). It is not a ``usage.UsageError``:
twistd would print the whole help text first and exit 0.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, NoReturn, TypeVar

from twisted.python import usage

from .. import version_text
from ..ops.logging import FORMATS, LEVELS, OperatorLogObserver, use_for_twistd
from ..config import ConfigError
from ..config.locate import locate_default

#: exit status of a configuration error (sysexits.h EX_CONFIG)
CONFIG_ERROR_STATUS = getattr(os, "EX_CONFIG", 78)

_T = TypeVar("_T")


def _choice(allowed):
    def coerce(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    coerce.coerceDoc = "One of " + ", ".join(allowed) + "."
    return coerce


class RoleOptions(usage.Options):
    """Base of the plugins' Options: subclasses set :attr:`tapname` and :attr:`default_config` and
    declare ``["config", "c", default_config, ...]`` in ``optParameters``."""

    #: the plugin's name, first word of every error line
    tapname = "bcast-sp4"
    #: the ``--config`` default, looked up by :func:`~bcast_sp4.config.locate.locate_default`
    default_config = ""

    optParameters = [
        ["metrics", None, None, "HTTP endpoint for /metrics (Prometheus), /status.json and the status page /, "
                                "overriding the file's [metrics] endpoint (e.g. tcp:9100:interface=127.0.0.1)"],
        ["log-level", None, None, "lowest level logged: debug, info, warn, error or critical (default: twistd's)",
         _choice(LEVELS)],
        ["log-format", None, None, "text (one line per event, ISO 8601 UTC times, hex ids) or json (one flat object "
                                   "per line: time, level, role, event, fields)", _choice(FORMATS)],
    ]
    optFlags = [
        ["log-keys", None, "DEBUG ONLY: log key material (SEK/PEK, TEKs, device keys) as hex at debug level; "
                           "never use in production"],
    ]

    def parseOptions(self, options=None) -> None:
        super().parseOptions(options)
        self.install_log_observer()  # now: twistd reads its logger option before makeService

    def operations(self, reactor, file_endpoint: str | None):
        """The process's :class:`~bcast_sp4.ops.runtime.Operations`: metrics, status board, key log,
        and the HTTP endpoint of ``--metrics`` (else the file's ``[metrics] endpoint``)."""
        from ..ops.runtime import Operations

        return Operations(self.tapname, reactor, self["metrics"] or file_endpoint, bool(self["log-keys"]))

    def log_goes_to_stdout(self) -> bool:
        """True under ``twistd -n`` without ``-l FILE`` and under ``twist`` without ``--log-file``:
        the log is already on stdout, so a role's console lines (the terminal's progress) would
        appear twice."""
        parent = self.parent if isinstance(getattr(self, "parent", None), usage.Options) else None
        if parent is not None and "logFile" in parent:  # twist: its --log-file, stdout by default
            return parent["logFile"] in (sys.stdout, sys.__stdout__)
        if parent is None or "nodaemon" not in parent:
            return False
        logfile = parent.get("logfile")
        return bool(parent.get("nodaemon")) and (not logfile or logfile == "-")

    def daemonized(self) -> bool:
        """True under ``twistd`` without ``-n``: stderr is gone once the role starts."""
        parent = self.parent if isinstance(getattr(self, "parent", None), usage.Options) else None
        return parent is not None and "nodaemon" in parent and not parent.get("nodaemon")

    def install_log_observer(self) -> OperatorLogObserver | None:
        """With ``--log-level``, ``--log-format`` or ``--log-keys``: make :class:`OperatorLogObserver` the
        process's log observer, in twistd (its ``logger`` option) or ``twist`` (its observer factory),
        writing where that runner would (stdout for ``twistd -n``, ``-l FILE``, twist's ``--log-file``)."""
        if not (self["log-level"] or self["log-format"] or self["log-keys"]):
            return None
        level = LEVELS[self["log-level"] or ("debug" if self["log-keys"] else "info")]
        fmt = self["log-format"] or "text"
        parent = self.parent if isinstance(getattr(self, "parent", None), usage.Options) else None

        def make(out) -> OperatorLogObserver:
            return OperatorLogObserver(self.tapname, out, fmt, level, keys=self["log-keys"])

        if parent is not None and "logFile" in parent:
            parent["fileLogObserverFactory"] = make  # twist: it opens --log-file (stderr by default) for us
            parent["logLevel"] = level
            return None
        if parent is not None and "nodaemon" in parent:  # twistd
            logfile = parent.get("logfile")
            if logfile and logfile != "-":
                parent["logger"] = use_for_twistd(lambda: make(open(logfile, "a", encoding="utf-8")))
            elif parent.get("nodaemon") or logfile == "-":
                parent["logger"] = use_for_twistd(lambda: make(sys.__stdout__))
            else:
                parent["logger"] = use_for_twistd(lambda: make(open("twistd.log", "a", encoding="utf-8")))
            return None
        return make(sys.__stdout__)  # not under a runner (tests): the caller installs it

    def opt_version(self) -> None:
        """Display the bcast-sp4 and Twisted versions and exit."""
        print(version_text())
        sys.exit(0)

    def config_path(self) -> Path:
        """``--config`` as given, or the default found in the working directory or the package's etc/.

        :raises ConfigError: the default is nowhere (the message says where it looked).
        """
        if self["config"] == self.default_config:
            return locate_default(self.default_config)
        return Path(self["config"])

    def load(self, loader: Callable[[Path], _T]) -> _T:
        """``loader(config file)``; a :class:`ConfigError` ends the process (see the module)."""
        return self.checked(lambda: loader(self.config_path()))

    def checked(self, load: Callable[..., _T], *args) -> _T:
        """``load(*args)`` (e.g. a key file's loader); a :class:`ConfigError` ends the process."""
        try:
            return load(*args)
        except ConfigError as exc:
            self.fail(str(exc))

    def fail(self, message: str) -> NoReturn:
        """End the process now: one line on stderr, exit status :data:`CONFIG_ERROR_STATUS`."""
        sys.stdout.flush()
        sys.stderr.write(f"{self.tapname}: {message}\n")
        sys.stderr.flush()
        raise SystemExit(CONFIG_ERROR_STATUS)


__all__ = ["CONFIG_ERROR_STATUS", "RoleOptions"]
