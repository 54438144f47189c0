"""docs/config.md lists every key every loader accepts, with the loader's own defaults.

The accepted keys are taken from the loaders themselves: every ``Reader`` accessor notes the key
it reads and its default (``Reader._note``), so loading the example files under ``etc/`` with
``_note`` recorded yields, per file kind and table, each key the loader asks for, whether or not
the file sets it. A source scan makes sure those examples reach every key a loader can read.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import attrs
import pytest

from bcast_sp4.config import _reader
from bcast_sp4.tools.check import KINDS, check_file, detect

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "config.md"
EXAMPLES = sorted((ROOT / "etc").glob("*.toml")) + sorted((ROOT / "etc" / "lab").glob("*.toml"))
ACCESSORS = {
    "integer", "number", "milliseconds", "boolean", "string", "choice", "int_list", "string_list", "datetime_value",
    "hex_bytes", "hex_key", "path_value", "host_port", "udp_listen", "ipv4", "ip_address", "client_endpoint", "sub",
    "list_of_tables", "named_tables",
}

Key = tuple[str, str, str]  # (file kind, table schema path, key)


@attrs.frozen
class Row:
    default: str  # the Default cell as written
    line: int


def parse_reference(text: str) -> tuple[dict[Key, Row], set[tuple[str, str]]]:
    """``(kind, table, key) -> row`` and the ``(kind, table)`` pairs with a heading."""
    rows: dict[Key, Row] = {}
    tables: set[tuple[str, str]] = set()
    kind = table = None
    for number, line in enumerate(text.splitlines(), 1):
        if found := re.fullmatch(r"<!-- kind: (\w+) -->", line.strip()):
            kind, table = found.group(1), None
        elif line.startswith("## "):
            kind = table = None
        elif line.startswith("### ") and kind:
            heading = line[4:].strip()
            found = re.fullmatch(r"`\[\[?([^\]]+)\]?\]`", heading)
            assert found or heading == "Top level", f"docs/config.md:{number}: heading {heading!r}"
            table = found.group(1) if found else ""
            tables.add((kind, table))
        elif line.startswith("| `") and kind and table is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            key = cells[0].strip("`")
            assert len(cells) == 5, f"docs/config.md:{number}: want Key | Type | Default | Unit | Meaning"
            assert (kind, table, key) not in rows, f"docs/config.md:{number}: {key} listed twice"
            rows[(kind, table, key)] = Row(cells[2], number)
    return rows, tables


def record_examples(monkeypatch) -> dict[Key, list[Any]]:
    """Load every example file with ``Reader._note`` recorded: ``(kind, table, key) -> defaults``."""
    noted: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    original = _reader.Reader._note

    def note(self, key, default=_reader.TABLE):
        noted[(str(self.path), self.schema, key)].append(default)
        original(self, key, default)

    monkeypatch.setattr(_reader.Reader, "_note", note)
    for example in EXAMPLES:
        check_file(example)
    kinds = {path: detect(tomllib.loads(Path(path).read_text())) for path, _t, _k in noted}
    out: dict[Key, list[Any]] = defaultdict(list)
    for (path, table, key), defaults in noted.items():
        out[(kinds[path], table, key)] += defaults
    return out


def differences(accepted: dict[Key, list[Any]], rows: dict[Key, Row], tables: set[tuple[str, str]]) -> list[str]:
    """Everything in which the reference and the loaders disagree (empty when they agree)."""
    problems = []
    for (kind, table, key), defaults in sorted(accepted.items()):
        where = f"[{kind}] {table + '.' if table else ''}{key}"
        nested = (kind, f"{table}.{key}" if table else key)
        if defaults[0] is _reader.TABLE:
            if nested not in tables and (kind, table, key) not in rows:
                problems.append(f"{where}: table accepted by the loader, not in docs/config.md")
            continue
        row = rows.get((kind, table, key))
        if row is None:
            problems.append(f"{where}: accepted by the loader, not in docs/config.md")
            continue
        required = defaults[0] is attrs.NOTHING
        if required != row.default.startswith("—"):
            problems.append(f"docs/config.md:{row.line}: {where}: default {row.default!r}, but the loader "
                            + ("requires it" if required else f"defaults to {defaults[0]!r}"))
        elif found := re.fullmatch(r"`([^`]+)`", row.default):
            written = tomllib.loads(f"v = {found.group(1)}")["v"]
            if any(d != written for d in defaults):
                problems.append(f"docs/config.md:{row.line}: {where}: default {written!r}, the loader's {defaults[0]!r}")
    for (kind, table, key), row in sorted(rows.items()):
        if (kind, table, key) not in accepted:
            problems.append(f"docs/config.md:{row.line}: [{kind}] {table}.{key}: listed, but no loader accepts it")
    return problems


@pytest.fixture(scope="module")
def reference():
    return parse_reference(REFERENCE.read_text())


@pytest.fixture
def accepted(monkeypatch):
    return record_examples(monkeypatch)


def test_the_reference_lists_every_accepted_key_and_only_those(reference, accepted):
    rows, tables = reference
    assert differences(accepted, rows, tables) == []
    assert {kind for kind, _t, _k in accepted} == set(KINDS) == {kind for kind, _t in tables}


def test_the_comparison_fails_on_an_undocumented_key_or_a_wrong_default(reference, accepted):
    rows, tables = reference
    missing = {k: v for k, v in rows.items() if k != ("ecmg", "channel", "AC_delay_start")}
    assert differences(accepted, missing, tables) == ["[ecmg] channel.AC_delay_start: accepted by the loader, not in docs/config.md"]
    wrong = dict(rows)
    wrong[("emmg", "emmg", "max_invalid_messages")] = Row("`4`", 1)
    assert differences(accepted, wrong, tables) == ["docs/config.md:1: [emmg] emmg.max_invalid_messages: default 4, the loader's 3"]
    stale = dict(rows)
    stale[("terminal", "service", "colour")] = Row("`1`", 2)
    assert differences(accepted, stale, tables) == ["docs/config.md:2: [terminal] service.colour: listed, but no loader accepts it"]
    required = dict(rows)
    required[("keys", "streams", "ecm_id")] = Row("`0`", 3)
    assert differences(accepted, required, tables) == ["docs/config.md:3: [keys] streams.ecm_id: default '`0`', but the loader requires it"]


def test_the_issue_s_undocumented_keys_are_listed(reference):
    rows, _tables = reference
    for key in [("ecmg", "channel", "AC_delay_start"), ("ecmg", "channel", "AC_delay_stop"),
                ("emmg", "emmg", "max_invalid_messages"), ("scs", "service.ismacryp", "key_indicator_length"),
                ("terminal", "service", "ssrc"), ("terminal", "service", "srtp_tag_length")]:
        assert key in rows


def keys_read_in_the_loaders() -> dict[str, list[str]]:
    """Every key name given as a literal to a Reader accessor in bcast_sp4/config/ -> where."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted((ROOT / "bcast_sp4" / "config").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ACCESSORS
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and node.args[0].value.isidentifier()):
                found[node.args[0].value].append(f"{path.name}:{node.lineno}")
    return found


def test_the_examples_reach_every_key_a_loader_reads(accepted):
    """Otherwise a key read only in a branch no example takes would escape the reference test."""
    read = keys_read_in_the_loaders()
    assert len(read) > 100
    reached = {key for _kind, _table, key in accepted}
    assert {key: where for key, where in read.items() if key not in reached} == {}
