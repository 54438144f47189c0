"""Configuration files fail at start naming file, key and reason; twistd finds every plugin."""

import pytest

from bcast_sp4.config import ConfigError, load_ecmg_settings

from .integration.harness import ROOT

BASE = """[ecmg]
key_file = "{keys}"
{extra}
[[cas]]
super_CAS_id = 0x00010001
mode = "drm"
"""


def write(tmp_path, extra="", tail=""):
    path = tmp_path / "ecmg.toml"
    path.write_text(BASE.format(keys=ROOT / "etc" / "keys.example.toml", extra=extra) + tail)
    return path


@pytest.mark.parametrize(
    ("extra", "tail", "key", "reason"),
    [
        ("max_channels = 0", "", "ecmg.max_channels", "outside"),
        ("versions = [4]", "", "ecmg.versions", "1, 2, 3"),
        ("colour = 1", "", "ecmg.colour", "unknown key"),
        ("", "[channel]\nlead_CW = 2\nCW_per_msg = 2\n", "channel.lead_CW", "lead_CW"),
        ("", "[channel]\ndelay_start = 40000\n", "channel.delay_start", "outside"),
        ("", '[[cas]]\nsuper_CAS_id = 0x00020001\nmode = "drm"\n', "cas #2.super_CAS_id", "profile prefix"),
        ("", '[[cas]]\nsuper_CAS_id = 0x00010001\nmode = "drm"\n', "cas #2.super_CAS_id", "twice"),
        ("", '[[cas]]\nsuper_CAS_id = 0x4AE60000\nmode = "dvb-sections"\n', "cas #2.key", "missing"),
        ("", '[[cas]]\nsuper_CAS_id = 0x00020002\nmode = "dvb-ts"\nkey = "00"\n', "cas #2.mode", "BCAST"),
        ("", '[[cas]]\nsuper_CAS_id = 0x4AE60000\nmode = "nagra"\n', "cas #2.mode", "not one of"),
        ("", '[[cw_encryption_key]]\nkey_id = 1\nkey = "zz"\n', "cw_encryption_key #1.key", "hex"),
    ],
)
def test_config_errors_name_file_key_and_reason(tmp_path, extra, tail, key, reason):
    path = write(tmp_path, extra, tail)
    with pytest.raises(ConfigError) as info:
        load_ecmg_settings(path)
    assert info.value.key == key and reason in info.value.reason and str(path) in str(info.value)


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_ecmg_settings(tmp_path / "none.toml")
    (tmp_path / "x.toml").write_text("[ecmg\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_ecmg_settings(tmp_path / "x.toml")
    (tmp_path / "y.toml").write_text("[ecmg]\n")
    with pytest.raises(ConfigError, match="key_file"):
        load_ecmg_settings(tmp_path / "y.toml")


def test_twistd_finds_the_plugins():
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    import twisted.plugins

    assert any(str(ROOT) in p for p in twisted.plugins.__path__)
    names = {maker.tapname for maker in getPlugins(IServiceMaker)}
    assert "bcast-ecmg" in names
