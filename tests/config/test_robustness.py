"""No value in any key of any file makes a loader fail with anything but a ConfigError.

Every scalar (and list of scalars) of every example file under ``etc/`` is replaced in turn by
values of the wrong type, out of range, empty, or removed; each load must either succeed or raise
:class:`ConfigError` naming a key (never a TypeError, KeyError, OverflowError ... from deeper in).
"""

from __future__ import annotations

import copy
import tomllib
import types
from datetime import date, datetime, time
from pathlib import Path

import pytest

from bcast_sp4.config import ConfigError, _reader
from bcast_sp4.tools.check import KINDS, detect

ROOT = Path(__file__).resolve().parents[2]
FILES = [f for f in sorted((ROOT / "etc").glob("*.toml")) + sorted((ROOT / "etc" / "lab").glob("*.toml"))
         if f.name != "lab.toml"]  # the lab file holds paths only; its role files are here
REMOVE = object()
ODD = [REMOVE, 0, -1, 2**40, -(2**40), 2**64, 1.5, float("nan"), "x", "", True, [], {}, [1, "a"], "0x", "zz",
       "udp:0", "1.2.3.4:0", datetime(2030, 1, 1), date(2030, 1, 1), time(1, 2)]


def leaves(doc, path=()):
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from leaves(value, path + (key,))
    elif isinstance(doc, list) and doc and all(isinstance(v, dict) for v in doc):
        for index, value in enumerate(doc):
            yield from leaves(value, path + (index,))
    else:
        yield path


def mutated(doc, path, value):
    doc = copy.deepcopy(doc)
    inner = doc
    for step in path[:-1]:
        inner = inner[step]
    if value is REMOVE:
        del inner[path[-1]]
    else:
        inner[path[-1]] = value
    return doc


@pytest.mark.parametrize("file", FILES, ids=[f"{f.parent.name}/{f.name}" for f in FILES])
def test_odd_values_give_config_errors_only(file, monkeypatch):
    text = file.read_text()
    original = tomllib.loads(text)
    loader = KINDS[detect(original)]
    current = {}
    # every loader reads its file through _reader.load_toml -> tomllib.loads: hand it the mutation
    monkeypatch.setattr(_reader, "tomllib", types.SimpleNamespace(
        loads=lambda s: copy.deepcopy(current["doc"]) if s == text else tomllib.loads(s),
        TOMLDecodeError=tomllib.TOMLDecodeError,
    ))
    crashes, errors, loads = [], 0, 0
    for path in leaves(original):
        for value in ODD:
            current["doc"] = mutated(original, path, value)
            loads += 1
            try:
                loader(file)
            except ConfigError as exc:
                errors += 1
                assert exc.key or exc.line, str(exc)
            except Exception as exc:  # noqa: BLE001 - the point of the test
                crashes.append(f"{'.'.join(map(str, path))} = {value!r}: {type(exc).__name__}: {exc}")
    assert crashes == []
    assert errors > loads // 2  # the mutations did reach the loader
