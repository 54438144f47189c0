"""Shared TOML reading for the role configuration files: typed access, errors naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs



class ConfigError(ValueError):
    """A configuration file is unusable: ``file: key: reason``."""

    def __init__(self, path: str | Path, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}")
        self.path, self.key, self.reason = str(path), key, reason


class Reader:
    """Typed access to one table of a TOML document, with errors that name the key."""

    def __init__(self, path: Path, table: dict[str, Any], prefix: str = "") -> None:
        self.path, self.table, self.prefix = path, table, prefix
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self.path, self._name(key), reason)

    def sub(self, key: str, required: bool = False) -> "Reader":
        value = self.table.get(key, None)
        self.used.add(key)
        if value is None:
            if required:
                raise self.fail(key, "missing table")
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return Reader(self.path, value, f"{self._name(key)}.")

    def list_of_tables(self, key: str) -> list["Reader"]:
        value = self.table.get(key, [])
        self.used.add(key)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, "must be an array of tables ([[...]])")
        return [Reader(self.path, v, f"{self._name(key)}[{i}].") for i, v in enumerate(value)]

    def integer(self, key: str, default: Any = attrs.NOTHING, low: int = 0, high: int = 0xFFFF) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is attrs.NOTHING:
                raise self.fail(key, "missing")
            return default
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, not {value!r}")
        if not low <= value <= high:
            raise self.fail(key, f"{value} outside {low}..{high}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        self.used.add(key)
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {value!r}")
        return value

    def string(self, key: str, default: Any = attrs.NOTHING) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is attrs.NOTHING:
                raise self.fail(key, "missing")
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, not {value!r}")
        return value

    def path_value(self, key: str) -> Path:
        resolved = (self.path.parent / self.string(key)).resolve()
        if not resolved.exists():
            raise self.fail(key, f"{resolved} does not exist")
        return resolved

    def no_unknown_keys(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")

    def hex_key(self, key: str, size: int = 16) -> bytes:
        """A key given as hex; never echoed in errors."""
        text = self.string(key)
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise self.fail(key, "must be hex") from None
        if len(value) != size:
            raise self.fail(key, f"must be {size} bytes, not {len(value)}")
        return value


def load_toml(path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return path, tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "-", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "-", f"not valid TOML: {exc}") from None


