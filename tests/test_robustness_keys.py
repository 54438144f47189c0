"""Key hygiene (issue #13): key and subscriber files others may read are refused unless allowed.

The ECMG's ``key_file`` and the EMMG's ``[stream.subscribers] file`` are checked where the role
configuration is loaded; the error is one line naming the file, its mode and both ways out. The
example and lab configurations (public test keys, world-readable in a checkout) allow it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bcast_sp4.config import ConfigError, load_ecmg_settings, load_keyfile, load_subscribers
from bcast_sp4.config.emmg import load_emmg_settings
from bcast_sp4.config.lab import load_lab_settings

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"


def copy_ecmg(tmp_path: Path, mode: int, allow: bool | None) -> Path:
    keys = tmp_path / "keys.toml"
    shutil.copyfile(ETC / "keys.example.toml", keys)
    keys.chmod(mode)
    text = (ETC / "ecmg.toml").read_text()
    text = text.replace('"keys.example.toml"', '"keys.toml"')
    lines = [line for line in text.splitlines() if not line.startswith("allow_readable_key_file")]
    if allow is not None:
        lines.insert(lines.index("[ecmg]") + 1, f"allow_readable_key_file = {str(allow).lower()}")
    config = tmp_path / "ecmg.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o444])
def test_an_ecmg_key_file_others_may_read_is_refused_with_one_line(tmp_path, mode):
    with pytest.raises(ConfigError) as caught:
        load_ecmg_settings(copy_ecmg(tmp_path, mode, None))
    text = str(caught.value)
    assert "\n" not in text and caught.value.key == "ecmg.key_file"
    assert f"mode {mode:04o}" in text and "chmod 600" in text and "allow_readable_key_file = true" in text
    with pytest.raises(ConfigError):
        load_ecmg_settings(copy_ecmg(tmp_path, mode, False))


@pytest.mark.parametrize("mode, allow", [(0o600, None), (0o400, False), (0o644, True)])
def test_a_private_key_file_or_an_allowed_one_loads(tmp_path, mode, allow):
    settings = load_ecmg_settings(copy_ecmg(tmp_path, mode, allow))
    assert load_keyfile(settings.key_file).streams()


def test_the_emmg_subscriber_file_is_checked_the_same_way(tmp_path):
    subscribers = tmp_path / "subscribers.toml"
    shutil.copyfile(ETC / "subscribers.example.toml", subscribers)
    subscribers.chmod(0o644)
    base = (ETC / "emmg.toml").read_text().replace('"subscribers.example.toml"', '"subscribers.toml"')
    config = tmp_path / "emmg.toml"
    config.write_text("\n".join(line for line in base.splitlines() if not line.startswith("allow_readable")) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_emmg_settings(config)
    assert "mode 0644" in str(caught.value) and "allow_readable = true" in str(caught.value)
    assert caught.value.key.endswith("subscribers.file")
    subscribers.chmod(0o600)
    assert load_emmg_settings(config).sources
    subscribers.chmod(0o644)
    config.write_text(base)  # the example's allow_readable = true
    assert load_emmg_settings(config).sources


def test_the_loaders_refuse_on_request(tmp_path):
    keys = tmp_path / "k.toml"
    shutil.copyfile(ETC / "keys.example.toml", keys)
    keys.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by group or others"):
        load_keyfile(keys, require_private=True)
    assert load_keyfile(keys).streams()  # tools and tests reading a file they were given
    subscribers = tmp_path / "s.toml"
    shutil.copyfile(ETC / "subscribers.example.toml", subscribers)
    subscribers.chmod(0o604)
    with pytest.raises(ConfigError, match="mode 0604"):
        load_subscribers(subscribers, require_private=True)
    subscribers.chmod(0o600)
    assert load_subscribers(subscribers, require_private=True).devices


def test_the_example_and_lab_configurations_still_load():
    assert load_ecmg_settings(ETC / "ecmg.toml").key_file.name == "keys.example.toml"
    assert load_emmg_settings(ETC / "emmg.toml").sources
    lab = load_lab_settings(ETC / "lab" / "lab.toml")
    assert len(lab.key_stores) == 2


def test_the_lab_logs_carry_no_key_bytes(tmp_path):
    """Every role of the one-process lab, a few periods, debug logging off: no key of the lab's key
    and subscriber files appears in its log or output (hex either case, or a bytes repr)."""
    import subprocess
    import tomllib

    from tests.integration.test_lab import LAB, TWISTD, env, listen_failure, port_bases

    secrets: set[bytes] = set()
    for name in ("keys.toml", "subscribers.toml"):
        doc = tomllib.loads((LAB / name).read_text())
        for table in doc.get("keys", {}).values():
            secrets |= {bytes.fromhex(table[k]) for k in ("key", "authentication_key") if k in table}
        secrets |= {bytes.fromhex(d["device_key"]) for d in doc.get("devices", [])}
    assert len(secrets) >= 3
    for base in port_bases():
        result = subprocess.run(
            TWISTD + ["-l", str(tmp_path / "lab.log"), "bcast-lab", "--config", str(LAB / "lab.toml"), "--periods", "3",
                      "--port-base", str(base)],
            capture_output=True, text=True, timeout=180, env=env(), cwd=tmp_path,
        )
        text = result.stdout + result.stderr + (tmp_path / "lab.log").read_text()
        if not listen_failure(text):
            break
    assert result.returncode == 0, text[-3000:]
    assert "PASS: 3 periods" in result.stdout
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), repr(secret)[2:-1]):
            assert form not in text
