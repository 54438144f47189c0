"""etc/systemd/: one unit template per head-end role, valid for systemd-analyze verify."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest

from bcast_sp4.tap._options import CONFIG_ERROR_STATUS

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "etc" / "systemd"
ROLES = ("ecmg", "scs", "emmg", "mux")
INSTALLED = "/opt/bcast-sp4/.venv/bin"


def unit(role: str) -> ConfigParser:
    parser = ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string((UNITS / f"bcast-{role}@.service").read_text())
    return parser


def test_one_template_per_role_and_nothing_else():
    assert sorted(p.name for p in UNITS.iterdir()) == sorted(f"bcast-{role}@.service" for role in ROLES)


@pytest.mark.parametrize("role", ROLES)
def test_the_unit_runs_the_role_on_its_instance_file(role):
    service = unit(role)["Service"]
    command = shlex.split(service["ExecStart"])
    assert command == [f"{INSTALLED}/twist", f"bcast-{role}", "--config", "/etc/bcast-sp4/%i.toml"]
    assert (service["Restart"], service["RestartPreventExitStatus"]) == ("on-failure", str(CONFIG_ERROR_STATUS))
    assert service["User"] == service["Group"] == "bcast-sp4"
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                      "RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet", "RestrictNamespaces"):
        assert hardening in service
    assert service["CapabilityBoundingSet"] == ""  # no capability at all (ports >= 1024)
    assert unit(role)["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("role", ROLES)
def test_the_command_of_the_unit_is_what_this_checkout_runs(role, tmp_path):
    """The unit's command line, with this checkout's .venv, reaches the plugin (a missing instance
    file is the EX_CONFIG exit the unit does not restart on)."""
    command = [arg.replace(INSTALLED, str(Path(sys.executable).parent)).replace("/etc/bcast-sp4/%i.toml",
                                                                               str(tmp_path / "none.toml"))
               for arg in shlex.split(unit(role)["Service"]["ExecStart"])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (CONFIG_ERROR_STATUS, f"bcast-{role}: {tmp_path / 'none.toml'}: file not found\n")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here: the units' syntax cannot be verified")
@pytest.mark.parametrize("role", ROLES)
def test_systemd_analyze_verify_accepts_the_unit(role, tmp_path):
    # verify needs an instance and an ExecStart that exists: this checkout's .venv stands for /opt's
    text = (UNITS / f"bcast-{role}@.service").read_text().replace(INSTALLED, str(Path(sys.executable).parent))
    instance = tmp_path / f"bcast-{role}@lab.service"
    instance.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    about_ours = [line for line in (result.stdout + result.stderr).splitlines() if instance.name in line]
    assert (result.returncode, about_ours) == (0, [])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here: the units' syntax cannot be verified")
def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path):
    text = (UNITS / "bcast-mux@.service").read_text().replace(INSTALLED, str(Path(sys.executable).parent))
    instance = tmp_path / "bcast-mux@lab.service"
    instance.write_text(text.replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert any(instance.name in line and "strictly" in line for line in (result.stdout + result.stderr).splitlines())
