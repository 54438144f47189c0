"""bcast_sp4.config.keyfile: the TOML key file -> KeyStore, errors as FILE: KEY.PATH: reason."""

from __future__ import annotations

import pathlib
from datetime import datetime, timedelta, timezone

import pytest

from bcast_sp4.bcast.keys import KeyNotValidError, KeyRole
from bcast_sp4.config import ConfigError, load_keyfile

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "keys.example.toml"
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def test_example_file_loads():
    store = load_keyfile(EXAMPLE)
    assert set(store.streams()) == {(0x00010001, 1), (0x00010001, 2), (0x00020001, 1)}
    sek = store.lookup(0x00010001, 1, T0)
    assert sek.name == "lab-drm-sek" and sek.key == bytes(range(16)) and len(sek.authentication_key) == 20
    pek = store.lookup(0x00010001, 2, T0, role=KeyRole.PROGRAMME)
    assert pek.name == "lab-drm-pek" and pek.key_id == 0x101
    msk = store.lookup(0x00020001, 1, T0)
    assert msk.key_domain_id == bytes.fromhex("02f810") and msk.key_id == 0x00010001
    with pytest.raises(KeyNotValidError):
        store.lookup(0x00010001, 1, datetime(2040, 1, 1, tzinfo=timezone.utc))


def test_example_file_is_marked_as_example():
    text = EXAMPLE.read_text()
    assert "EXAMPLE KEYS" in text and "Never use" in text


GOOD_KEY = """
[keys.k1]
key_id = 1
key = "000102030405060708090a0b0c0d0e0f"
authentication_key = "00112233445566778899aabbccddeeff"
"""
GOOD_STREAM = """
[[streams]]
super_cas_id = 0x00010001
ecm_id = 1
keys = ["k1"]
"""


def write(tmp_path, body, head="format = 1\n"):
    p = tmp_path / "keys.toml"
    p.write_text(head + body)
    return p


def test_minimal_file_loads(tmp_path):
    store = load_keyfile(write(tmp_path, GOOD_KEY + GOOD_STREAM))
    assert store.lookup(0x00010001, 1, 0).name == "k1"


BAD_FILES = [
    (GOOD_KEY.replace('"000102030405060708090a0b0c0d0e0f"', '"00010203"') + GOOD_STREAM, "keys.k1.key", "must be 16 bytes, not 4"),
    (GOOD_KEY.replace('"000102030405060708090a0b0c0d0e0f"', '"zz0102030405060708090a0b0c0d0e0f"') + GOOD_STREAM, "keys.k1.key", "must be hex"),
    (GOOD_KEY.replace("key_id = 1", "key_id = -1") + GOOD_STREAM, "keys.k1.key_id", "outside 0..4294967295"),
    (GOOD_KEY.replace("key_id = 1", 'key_id = "1"') + GOOD_STREAM, "keys.k1.key_id", "must be an integer"),
    (GOOD_KEY + "colour = 1\n" + GOOD_STREAM, "keys.k1.colour", "unknown key"),
    (GOOD_KEY + 'role = "boss"\n' + GOOD_STREAM, "keys.k1.role", "'boss' is not one of ['programme', 'service']"),
    (GOOD_KEY + "not_before = 2030-01-01T00:00:00\n" + GOOD_STREAM, "keys.k1.not_before", "naive datetime"),
    (GOOD_KEY + "not_before = 2030-01-02T00:00:00Z\nnot_after = 2030-01-01T00:00:00Z\n" + GOOD_STREAM,
     "keys.k1.not_after", "must be later than not_before"),
    (GOOD_KEY + "not_before = true\n" + GOOD_STREAM, "keys.k1.not_before", "offset date-time"),
    (GOOD_KEY.replace('authentication_key = "00112233445566778899aabbccddeeff"\n', "") + GOOD_STREAM,
     "keys.k1.authentication_key", "streams #1 (super_cas_id 0x00010001) is a DRM Profile stream"),
    (GOOD_KEY + GOOD_STREAM.replace("0x00010001", "0x00020001"), "keys.k1.key_domain_id", "Smartcard Profile"),
    (GOOD_KEY + GOOD_STREAM.replace('["k1"]', '["k2"]'), "streams #1.keys", "unknown key 'k2'"),
    (GOOD_KEY + GOOD_STREAM.replace('["k1"]', '[]'), "streams #1.keys", "non-empty list"),
    (GOOD_KEY + GOOD_STREAM.replace("0x00010001", "0x00070001"), "streams #1.super_cas_id", "high 16 bits"),
    (GOOD_KEY + GOOD_STREAM.replace("ecm_id = 1", "ecm_id = 65536"), "streams #1.ecm_id", "outside 0..65535"),
    (GOOD_KEY + GOOD_STREAM + GOOD_STREAM, "streams #2.ecm_id", "duplicate stream"),
    (GOOD_KEY + GOOD_STREAM + GOOD_STREAM.replace("ecm_id = 1", "ecm_id = 2\nmode = 1"), "streams #2.mode", "unknown key"),
    (GOOD_KEY, "streams", "at least one [[streams]]"),
    ("extra = 1\n" + GOOD_KEY + GOOD_STREAM, "extra", "unknown key"),
    ("keys = 3\n" + GOOD_STREAM, "keys", "must be a table"),
    ("[keys]\nk1 = 3\n" + GOOD_STREAM, "keys.k1", "must be a table"),
]


@pytest.mark.parametrize(("body", "where", "reason"), BAD_FILES, ids=[case[2] for case in BAD_FILES])
def test_bad_files_name_file_key_and_reason(tmp_path, body, where, reason):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_keyfile(path)
    err = info.value
    assert (err.path, err.key) == (str(path), where), str(err)
    assert reason in err.reason, str(err)
    assert str(err) == f"{path}: {where}: {err.reason}"
    assert "0405060708090a0b" not in str(err)  # never echo key material


def test_format_must_be_1(tmp_path):
    with pytest.raises(ConfigError, match=r"format: must be 1, not 2$"):
        load_keyfile(write(tmp_path, GOOD_KEY + GOOD_STREAM, head="format = 2\n"))
    with pytest.raises(ConfigError, match=r"format: missing$"):
        load_keyfile(write(tmp_path, GOOD_KEY + GOOD_STREAM, head=""))


def test_invalid_toml_gives_the_line_and_a_missing_file_says_so(tmp_path):
    p = write(tmp_path, GOOD_KEY + "key_id = = 1\n")
    with pytest.raises(ConfigError) as info:
        load_keyfile(p)
    assert (info.value.line, info.value.key) == (7, None)
    assert str(info.value).startswith(f"{p}: line 7, column ") and "not valid TOML" in str(info.value)
    with pytest.raises(ConfigError, match="absent.toml: file not found$"):
        load_keyfile(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_keyfile(tmp_path)


def test_posix_second_bounds_in_file(tmp_path):
    body = GOOD_KEY + f"not_before = {int(T0.timestamp())}\n" + GOOD_STREAM
    store = load_keyfile(write(tmp_path, body))
    with pytest.raises(KeyNotValidError):
        store.lookup(0x00010001, 1, T0 - timedelta(seconds=1))
    assert store.lookup(0x00010001, 1, T0).name == "k1"
