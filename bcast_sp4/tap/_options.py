"""What every plugin's Options share: ``--version``, the default configuration file, fail-fast errors.

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
from ..config import ConfigError
from ..config.locate import locate_default

#: exit status of a configuration error (sysexits.h EX_CONFIG)
CONFIG_ERROR_STATUS = getattr(os, "EX_CONFIG", 78)

_T = TypeVar("_T")


class RoleOptions(usage.Options):
    """Base of the plugins' Options: subclasses set :attr:`tapname` and :attr:`default_config` and
    declare ``["config", "c", default_config, ...]`` in ``optParameters``."""

    #: the plugin's name, first word of every error line
    tapname = "bcast-sp4"
    #: the ``--config`` default, looked up by :func:`~bcast_sp4.config.locate.locate_default`
    default_config = ""

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
