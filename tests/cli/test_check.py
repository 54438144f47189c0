"""``bcast-sp4 check FILE...``: every kind of file told from its tables, one line each, exit 0/1."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bcast_sp4 import version_text
from bcast_sp4.tools import cli
from bcast_sp4.tools.check import KINDS, detect, main

ROOT = Path(__file__).resolve().parents[2]
ETC = ROOT / "etc"


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["check", *map(str, args)], out, err)
    return status, out.getvalue(), err.getvalue()


def test_every_example_file_is_valid_and_summarised():
    files = sorted(ETC.glob("*.toml")) + sorted((ETC / "lab").glob("*.toml"))
    status, out, err = run(*files)
    assert (status, err) == (0, "")
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert list(lines) == [str(f) for f in files]
    assert lines[str(ETC / "ecmg.toml")] == (
        "ECMG config, 3 Super_CAS_ids, listens tcp:2222:interface=127.0.0.1, key file keys.example.toml (3 keys, 3 streams)")
    assert lines[str(ETC / "keys.example.toml")] == "key file, 3 keys, 3 STKM streams"
    assert lines[str(ETC / "subscribers.example.toml")] == "subscriber file, 3 devices, 2 entitled keys"
    assert lines[str(ETC / "lab" / "scs.toml")] == (
        "SCS config, 3 services (news, radio, clips), 2 ECMG channels, STKMs to the MUX at tcp:host=127.0.0.1:port=15000")
    assert lines[str(ETC / "lab" / "mux.toml")].startswith("MUX config, 2 clients, 1 LTKM route, 6 STKM routes, ")
    assert lines[str(ETC / "lab" / "emmg.toml")].startswith("EMMG config, client_id 0x00010001, 1 stream, ")
    assert lines[str(ETC / "lab" / "terminal.toml")] == (
        "terminal config, 3 services, 6 STKM streams, content source 50 packets/s")
    assert lines[str(ETC / "lab" / "lab.toml")].startswith("lab file: MUX, 2 ECMGs, EMMG, SCS (3 services), terminal")
    assert "0001020304050607" not in out  # no key material


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ecmg.toml", "ecmg"), ("scs.toml", "scs"), ("emmg.toml", "emmg"), ("mux.toml", "mux"),
     ("keys.example.toml", "keys"), ("subscribers.example.toml", "subscribers"), ("lab/terminal.toml", "terminal"),
     ("lab/lab.toml", "lab"), ("lab/scs.toml", "scs"), ("lab/keys.toml", "keys")],
)
def test_the_kind_is_told_from_the_tables(name, kind):
    import tomllib

    assert detect(tomllib.loads((ETC / name).read_text())) == kind and kind in KINDS


def test_minimal_files_of_each_kind_are_told_apart():
    assert detect({"service": [{"name": "a", "listen": "udp:1"}]}) == "terminal"
    assert detect({"service": [{"name": "a", "ecmg": []}]}) == "scs"
    assert detect({"mux": {"mode": "remote"}}) == "scs"
    assert detect({"mux": {"endpoint": "tcp:1"}}) == "mux"
    assert detect({"client": []}) == "mux"
    assert detect({"format": 1, "devices": []}) == "subscribers"
    assert detect({"format": 1}) == "keys"
    assert detect({"colour": 1}) is None


def test_errors_are_one_line_each_and_the_status_is_1(tmp_path):
    good = ETC / "mux.toml"
    bad_value = tmp_path / "ecmg.toml"
    bad_value.write_text((ETC / "ecmg.toml").read_text().replace("lead_CW = 1", "lead_CW = 300")
                         .replace('"keys.example.toml"', f'"{ETC / "keys.example.toml"}"'))
    bad_keys = tmp_path / "ecmg-keys.toml"
    broken = tmp_path / "keys.toml"
    broken.write_text((ETC / "keys.example.toml").read_text().replace('ecm_id = 2', 'ecm_id = 2\ncolour = 1'))
    bad_keys.write_text((ETC / "ecmg.toml").read_text().replace('"keys.example.toml"', '"keys.toml"'))
    unknown = tmp_path / "what.toml"
    unknown.write_text("colour = 1\n")
    syntax = tmp_path / "syntax.toml"
    syntax.write_text("[mux]\nendpoint = \n")
    status, out, err = run(good, bad_value, bad_keys, unknown, syntax, tmp_path / "absent.toml")
    assert status == 1
    assert out == f"{good}: " + out.split(": ", 1)[1] and out.count("\n") == 1
    assert err.splitlines() == [
        f"{bad_value}: channel.lead_CW: 300 outside 0..255",
        f"{broken}: streams #2.colour: unknown key (named by {bad_keys})",
        f"{unknown}: cannot tell what this file is: no [ecmg], [scs] or [[service]], [emmg], [mux] or [[client]], "
        "[terminal] or [device], [lab] table, nor the format of a key or subscriber file",
        f"{syntax}: line 2, column 12: not valid TOML: Invalid value",
        f"{tmp_path / 'absent.toml'}: file not found",
    ]


def test_main_needs_a_file():
    with pytest.raises(SystemExit) as exited:
        main([], io.StringIO(), io.StringIO())
    assert exited.value.code == 2


def test_the_installed_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    bad = tmp_path / "mux.toml"
    bad.write_text("[mux]\nversions = [0, 2]\n")
    command = Path(sys.executable).parent / "bcast-sp4"
    result = subprocess.run([str(command), "check", str(ETC / "ecmg.toml"), str(bad)], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{ETC / 'ecmg.toml'}: ECMG config, ")
    assert result.stderr == (f"{bad}: mux.versions: must be a non-empty list drawn from 1, 2, 3, 4, 5 (1 only for peers "
                             "sending data_id in v1, a tolerated deviation), not [0, 2]\n")
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert (version.returncode, version.stdout) == (0, version_text() + "\n")
