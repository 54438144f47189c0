"""Typed TOML access shared by every file loader (role configs, lab file, key and subscriber files).

Every problem is a :class:`ConfigError` reading ``FILE: KEY.PATH: reason``. Key paths count the
entries of an array of tables as a person does: the fourth ``[[cas]]`` is ``cas #4``, its ``mode``
``cas #4.mode``; ``[[service.ecmg]]`` entries are ``service #2.ecmg #1``. A TOML syntax error
reads ``FILE: line N, column M: not valid TOML: ...`` (the parser's position). Values that are
(part of) keys are never echoed.

A :class:`Reader` also carries the *schema path* of its table (``service.ecmg``: no entry
numbers, ``<name>`` for the user-named tables of a key file): the configuration reference
(``docs/config.md``) is checked against the keys the loaders ask for under those paths.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from ..bcast.keys import to_datetime
from .addresses import parse_host_port, parse_ip, parse_ipv4, parse_udp_listen

_NOTHING: Any = attrs.NOTHING
#: what :meth:`Reader._note` gets as the default of a key that holds a table (or array of tables)
TABLE: Any = object()
_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_TOML_END = re.compile(r"\s*\(at end of document\)$")
#: client endpoint strings the SCS accepts for an ECMG or a MUX (Twisted clientFromString types)
_CLIENT_ENDPOINT = re.compile(r"^(tcp|unix|ssl|tls):.+")


class ConfigError(ValueError):
    """A file is unusable: ``FILE: KEY.PATH: reason``.

    :ivar path: the file, as given (``str``).
    :ivar key: the key path (``cas #4.mode``), or ``None`` when the file as a whole is at fault.
    :ivar reason: what is wrong (never key material).
    :ivar line: TOML line number (1-based) when the parser gave one, else ``None``.
    :ivar column: TOML column (1-based) with *line*.
    """

    def __init__(self, path: str | Path, key: str | None, reason: str, line: int | None = None,
                 column: int | None = None) -> None:
        self.path, self.key, self.reason = str(path), key, reason
        self.line, self.column = line, column
        if line is not None:
            where = f"line {line}, column {column}" if column is not None else f"line {line}"
        else:
            where = key
        super().__init__(f"{self.path}: {where}: {reason}" if where else f"{self.path}: {reason}")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class Reader:
    """Typed access to one table of a TOML document, with errors that name the key.

    Every accessor marks its key as known; :meth:`no_unknown_keys` then refuses any other key of
    the table (a typo must not silently fall back to a default).

    :param path: the file (for messages; relative paths inside it are relative to its folder).
    :param table: the table's contents.
    :param prefix: the table's key path for messages (``service #2.ecmg #1``), ``""`` at the top.
    :param schema: the table's path in the configuration reference (``service.ecmg``).
    """

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = "", schema: str = "") -> None:
        self.path, self.table, self.prefix, self.schema = path, table, prefix, schema
        self.used: set[str] = set()

    # -- bookkeeping ------------------------------------------------------------------------------

    def _note(self, key: str, default: Any = TABLE) -> None:
        """*key* is known in this table; *default* is its default (``attrs.NOTHING``: required;
        :data:`TABLE`: the key holds a table). The configuration-reference test records these."""
        self.used.add(key)

    def has(self, key: str) -> bool:
        """Whether the file sets *key* (the key still has to be read to count as known)."""
        return key in self.table

    def fail(self, key: str, reason: str) -> ConfigError:
        """The error for *key* of this table (raise it)."""
        return ConfigError(self.path, _join(self.prefix, key), reason)

    def fail_here(self, reason: str) -> ConfigError:
        """The error for this table as a whole (``cas #2: ...``; the file at the top level)."""
        return ConfigError(self.path, self.prefix or None, reason)

    def no_unknown_keys(self) -> None:
        """:raises ConfigError: the table has a key no accessor asked for."""
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")

    def _raw(self, key: str, default: Any) -> Any:
        self._note(key, default)
        if key not in self.table:
            if default is _NOTHING:
                raise self.fail(key, "missing")
            return default
        return self.table[key]

    # -- tables -----------------------------------------------------------------------------------

    def sub(self, key: str, required: bool = False) -> "Reader":
        """The table ``[key]`` (empty when absent and not *required*)."""
        self._note(key)
        value = self.table.get(key)
        if value is None:
            if required:
                raise self.fail(key, "missing table")
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return Reader(self.path, value, _join(self.prefix, key), _join(self.schema, key))

    def list_of_tables(self, key: str) -> list["Reader"]:
        """The entries of ``[[key]]``, numbered from 1 in messages."""
        self._note(key)
        value = self.table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, "must be an array of tables ([[...]])")
        name = _join(self.prefix, key)
        return [Reader(self.path, v, f"{name} #{i}", _join(self.schema, key)) for i, v in enumerate(value, 1)]

    def named_tables(self, key: str) -> list[tuple[str, "Reader"]]:
        """The tables ``[key.<name>]`` with their names (user-chosen, e.g. a key file's keys)."""
        outer = self.sub(key)
        out = []
        for name, value in outer.table.items():
            outer.used.add(name)  # a user-chosen name, not a key of the reference
            if not isinstance(value, dict):
                raise outer.fail(name, "must be a table")
            out.append((name, Reader(self.path, value, _join(outer.prefix, name), _join(outer.schema, "<name>"))))
        return out

    # -- scalars ----------------------------------------------------------------------------------

    def integer(self, key: str, default: Any = _NOTHING, low: int = 0, high: int = 0xFFFF) -> Any:
        """An integer in ``low..high`` (*default* when absent; missing is an error without one)."""
        value = self._raw(key, default)
        if key not in self.table:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"{value} outside {low}..{high}")
        return value

    def number(self, key: str, default: Any = _NOTHING, low: float = 0.0, high: float = float("inf")) -> Any:
        """An integer or float in ``low..high``, as a float."""
        value = self._raw(key, default)
        if key not in self.table:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, not {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"{value} outside {low}..{high}")
        return float(value)

    def milliseconds(self, key: str, default_ms: int, low: int = 0, high: int = 3_600_000) -> float:
        """An integer number of milliseconds, returned in seconds."""
        return self.integer(key, default_ms, low, high) / 1000.0

    def boolean(self, key: str, default: Any = _NOTHING) -> Any:
        """``true`` or ``false``."""
        value = self._raw(key, default)
        if key in self.table and not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {value!r}")
        return value

    def string(self, key: str, default: Any = _NOTHING) -> Any:
        """A non-empty string."""
        value = self._raw(key, default)
        if key in self.table and (not isinstance(value, str) or not value):
            raise self.fail(key, f"must be a non-empty string, not {value!r}")
        return value

    def choice(self, key: str, choices: Mapping[str, Any], default: Any = _NOTHING) -> Any:
        """One of the names of *choices* (a string), mapped to its value; *default* is a name."""
        name = self.string(key, default)
        if name is None:
            return None
        if name not in choices:
            raise self.fail(key, f"{name!r} is not one of {sorted(choices)}")
        return choices[name]

    def int_list(self, key: str, default: list[int], allowed: Collection[int], note: str = "") -> list[int]:
        """A non-empty list of integers drawn from *allowed* (e.g. protocol versions)."""
        value = self._raw(key, default)
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v in allowed for v in value)):
            drawn = ", ".join(str(v) for v in sorted(allowed))
            raise self.fail(key, f"must be a non-empty list drawn from {drawn}{note}, not {value!r}")
        return value

    def string_list(self, key: str, default: Any = _NOTHING) -> Any:
        """A non-empty list of non-empty strings."""
        value = self._raw(key, default)
        if key in self.table and (not isinstance(value, list) or not value
                                  or not all(isinstance(v, str) and v for v in value)):
            raise self.fail(key, f"must be a non-empty list of strings, not {value!r}")
        return value

    def datetime_value(self, key: str) -> datetime | None:
        """An offset date-time (``2030-01-01T00:00:00Z``) or integer POSIX seconds, as an aware
        UTC datetime; ``None`` when absent."""
        value = self._raw(key, None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, datetime)):
            raise self.fail(key, "must be an offset date-time (2030-01-01T00:00:00Z) or POSIX seconds")
        try:
            return to_datetime(value)
        except (ValueError, OverflowError, OSError) as exc:
            raise self.fail(key, str(exc)) from None

    # -- bytes (keys: never echoed) ----------------------------------------------------------------

    def hex_bytes(self, key: str, sizes: Collection[int] | None = None, default: Any = _NOTHING,
                  secret: bool = True) -> Any:
        """Bytes given as hex, of one of *sizes* bytes (any length when ``None``).

        :param secret: the value is key material: errors do not echo it.
        """
        text = self._raw(key, default)
        if key not in self.table:
            return text
        if not isinstance(text, str):
            raise self.fail(key, "must be a hex string")
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise self.fail(key, "must be hex" if secret else f"{text!r} is not hex") from None
        if sizes is not None and len(value) not in sizes:
            sizes = sorted(sizes)
            want = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
            raise self.fail(key, f"must be {want} bytes, not {len(value)}")
        return value

    def hex_key(self, key: str, size: int = 16) -> bytes:
        """A key of *size* bytes given as hex; never echoed in errors."""
        return self.hex_bytes(key, (size,))

    # -- files and addresses -----------------------------------------------------------------------

    def path_value(self, key: str, must_exist: bool = True) -> Path:
        """A path, relative to the file's folder unless absolute."""
        given = Path(self.string(key))
        resolved = given if given.is_absolute() else (self.path.parent / given).resolve()
        if must_exist and not resolved.exists():
            raise self.fail(key, f"{resolved} does not exist")
        return resolved

    def host_port(self, key: str, default: Any = _NOTHING) -> Any:
        """``ADDR:PORT`` (IPv4) or ``[ADDR]:PORT`` (IPv6), port 1..65535 -> ``(addr, port)``."""
        return self._parsed(key, default, parse_host_port)

    def udp_listen(self, key: str, default: Any = _NOTHING) -> Any:
        """``udp:PORT[:interface=ADDR]`` -> ``(port, interface)``."""
        return self._parsed(key, default, parse_udp_listen)

    def ipv4(self, key: str, default: Any = _NOTHING) -> Any:
        """An IPv4 address literal (kept as the string)."""
        text = self.string(key, default)
        if key in self.table:
            try:
                parse_ipv4(text, text)
            except ValueError as exc:
                raise self.fail(key, str(exc)) from None
        return text

    def ip_address(self, key: str, default: Any = _NOTHING) -> Any:
        """An IPv4 or IPv6 address literal (kept as the string, IPv6 in compressed form)."""
        text = self.string(key, default)
        if key in self.table:
            try:
                return str(parse_ip(text, text))
            except ValueError as exc:
                raise self.fail(key, str(exc)) from None
        return text

    def client_endpoint(self, key: str, default: Any = _NOTHING) -> Any:
        """A Twisted client endpoint string (``tcp:host=127.0.0.1:port=2222``; checked for its type)."""
        text = self.string(key, default)
        if key in self.table and text.startswith("tcp6:"):
            # serverFromString knows tcp6:, clientFromString does not: the start would fail
            raise self.fail(key, f"{text!r}: a client endpoint has no tcp6: type; an IPv6 peer is "
                                 r"tcp:host=\:\:1:port=2222 (colons escaped)")
        if key in self.table and not _CLIENT_ENDPOINT.match(text):
            raise self.fail(key, f"{text!r} is not a client endpoint string (e.g. tcp:host=127.0.0.1:port=2222)")
        return text

    def _parsed(self, key: str, default: Any, parse) -> Any:
        text = self.string(key, default)
        if key not in self.table:
            return text
        try:
            return parse(text)
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None


def load_toml(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read a TOML file.

    :returns: ``(path, document)``.
    :raises ConfigError: the file cannot be read (``file not found``, ...) or is not TOML (with
        the parser's line and column).
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        where = "" if path.is_absolute() else f" (looked in {path.absolute()})"
        raise ConfigError(path, None, f"file not found{where}") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return path, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(path, text, exc) from None


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = getattr(exc, "msg", None) or str(exc)
    line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    found = _TOML_POSITION.search(message)
    if found:  # Python < 3.14 puts the position in the message only
        line, column = line or int(found.group(1)), column or int(found.group(2))
        message = message[: found.start()]
    elif _TOML_END.search(message):  # the position is the end of the text
        message = _TOML_END.sub("", message)
        lines = text.split("\n")
        line, column = len(lines), len(lines[-1]) + 1
    return ConfigError(path, None, f"not valid TOML: {message}", line=line, column=column)


__all__ = ["ConfigError", "Reader", "load_toml"]
