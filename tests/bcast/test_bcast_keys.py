"""bcast_sp4.bcast.keys: ServiceKey, KeyStore and the TOML key file."""

from __future__ import annotations

import pathlib
from datetime import datetime, timedelta, timezone

import pytest

from bcast_sp4.bcast.keys import (
    KeyFileError,
    KeyNotValidError,
    KeyRef,
    KeyRole,
    KeyStore,
    KmsProfile,
    NoKeyError,
    ServiceKey,
    as_key_lookup,
    load_keyfile,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "keys.example.toml"
UTC = timezone.utc
T0 = datetime(2030, 1, 1, tzinfo=UTC)
SECRET = bytes.fromhex("deadbeefdeadbeefdeadbeefdeadbeef")


def key(key_id=1, **kw):
    kw.setdefault("key", SECRET)
    return ServiceKey(key_id=key_id, **kw)


# --- ServiceKey ----------------------------------------------------------------------------------

def test_validity_is_half_open():
    k = key(not_before=T0, not_after=T0 + timedelta(hours=1))
    assert not k.is_valid_at(T0 - timedelta(seconds=1))
    assert k.is_valid_at(T0)
    assert k.is_valid_at(T0 + timedelta(minutes=59))
    assert not k.is_valid_at(T0 + timedelta(hours=1))


def test_validity_accepts_posix_seconds():
    k = key(not_before=int(T0.timestamp()), not_after=T0.timestamp() + 10)
    assert k.not_before == T0
    assert k.is_valid_at(int(T0.timestamp()) + 5) and not k.is_valid_at(int(T0.timestamp()) + 10)


def test_open_validity():
    assert key().is_valid_at(0) and key().is_valid_at(T0)


@pytest.mark.parametrize(
    "kw",
    [
        {"key": bytes(15)},
        {"authentication_key": bytes(8)},
        {"key_domain_id": bytes(2)},
        {"not_before": datetime(2030, 1, 1)},  # naive
        {"not_before": T0, "not_after": T0},
        {"key_id": 2**32},
    ],
)
def test_service_key_rejects(kw):
    with pytest.raises((ValueError, TypeError)):
        key(**kw)


def test_service_key_repr_hides_keys():
    k = key(authentication_key=bytes(range(20)))
    assert SECRET.hex() not in repr(k) and "deadbeef" not in repr(k)
    assert "authentication_key" not in repr(k) and "key=" not in repr(k).replace("key_id=", "").replace("key_domain_id=", "")


def test_profile_from_super_cas_id():
    assert KmsProfile.from_super_cas_id(0x00010042) is KmsProfile.DRM
    assert KmsProfile.from_super_cas_id(0x0002FFFF) is KmsProfile.SMARTCARD
    with pytest.raises(ValueError):
        KmsProfile.from_super_cas_id(0x00030001)


# --- KeyStore ------------------------------------------------------------------------------------

def test_lookup_no_key():
    store = KeyStore()
    store.add(0x00010001, 1, key())
    with pytest.raises(NoKeyError):
        store.lookup(0x00010001, 2, T0)
    with pytest.raises(NoKeyError):
        store.lookup(0x00010001, 1, T0, role=KeyRole.PROGRAMME)


def test_lookup_outside_validity_names_keys_not_bytes():
    store = KeyStore()
    store.add(0x00010001, 1, key(name="old", not_after=T0))
    with pytest.raises(KeyNotValidError) as info:
        store.lookup(0x00010001, 1, T0)
    assert "old" in str(info.value) and "deadbeef" not in str(info.value)


def test_lookup_rollover_picks_latest_start():
    old = key(1, name="old", not_before=T0 - timedelta(days=30), not_after=T0 + timedelta(days=1))
    new = key(2, name="new", not_before=T0, not_after=T0 + timedelta(days=30))
    store = KeyStore()
    store.add(0x00020001, 7, old)
    store.add(0x00020001, 7, new)
    assert store.lookup(0x00020001, 7, T0 - timedelta(seconds=1)) is old
    assert store.lookup(0x00020001, 7, T0) is new
    assert store.lookup(0x00020001, 7, int(T0.timestamp()) + 3600) is new


def test_lookup_by_role():
    sek, pek = key(1), key(2, role=KeyRole.PROGRAMME)
    store = KeyStore()
    store.add(0x00010001, 1, sek)
    store.add(0x00010001, 1, pek)
    assert store.lookup(0x00010001, 1, T0) is sek
    assert store.lookup(0x00010001, 1, T0, role=KeyRole.PROGRAMME) is pek


def test_add_validates_ids():
    with pytest.raises(ValueError):
        KeyStore().add(0x00050001, 1, key())
    with pytest.raises(ValueError):
        KeyStore().add(0x00010001, 0x10000, key())


def test_find_and_as_key_lookup():
    a = key(1, key_domain_id=b"\x02\xf8\x10")
    b = key(2, role=KeyRole.PROGRAMME)
    store = KeyStore()
    store.add(0x00020001, 1, a)
    store.add(0x00010001, 1, b)
    assert store.find(KeyRef(1)) is a
    assert store.find(KeyRef(1, key_domain_id=b"\x00\x00\x00")) is None
    assert store.find(KeyRef(2, KeyRole.SERVICE)) is None
    assert store.find(KeyRef(2, KeyRole.PROGRAMME)) is b
    for given in (store, [a, b], (k for k in (a, b))):
        assert as_key_lookup(given)(KeyRef(2)) is b
    assert as_key_lookup(a)(KeyRef(1)) is a and as_key_lookup(a)(KeyRef(2)) is None
    assert as_key_lookup(lambda ref: a)(KeyRef(99)) is a


# --- key file ------------------------------------------------------------------------------------

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
        store.lookup(0x00010001, 1, datetime(2040, 1, 1, tzinfo=UTC))


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


def write(tmp_path, body):
    p = tmp_path / "keys.toml"
    p.write_text("format = 1\n" + body)
    return p


def test_minimal_file_loads(tmp_path):
    store = load_keyfile(write(tmp_path, GOOD_KEY + GOOD_STREAM))
    assert store.lookup(0x00010001, 1, 0).name == "k1"


BAD_FILES = [
    (GOOD_KEY.replace('"000102030405060708090a0b0c0d0e0f"', '"00010203"') + GOOD_STREAM, "key 'k1'", "key must be 16 bytes"),
    (GOOD_KEY.replace('"000102030405060708090a0b0c0d0e0f"', '"zz0102030405060708090a0b0c0d0e0f"') + GOOD_STREAM, "key 'k1'", "not valid hex"),
    (GOOD_KEY.replace("key_id = 1", "key_id = -1") + GOOD_STREAM, "key 'k1'", "key_id out of range"),
    (GOOD_KEY.replace("key_id = 1", 'key_id = "1"') + GOOD_STREAM, "key 'k1'", "key_id must be an integer"),
    (GOOD_KEY + "colour = 1\n" + GOOD_STREAM, "key 'k1'", "unknown fields: colour"),
    (GOOD_KEY + 'role = "boss"\n' + GOOD_STREAM, "key 'k1'", "role must be"),
    (GOOD_KEY + "not_before = 2030-01-01T00:00:00\n" + GOOD_STREAM, "key 'k1'", "naive datetime"),
    (GOOD_KEY + "not_before = 2030-01-02T00:00:00Z\nnot_after = 2030-01-01T00:00:00Z\n" + GOOD_STREAM, "key 'k1'", "not_after must be later"),
    (GOOD_KEY.replace('authentication_key = "00112233445566778899aabbccddeeff"\n', "") + GOOD_STREAM, "key 'k1'", "needs an authentication_key"),
    (GOOD_KEY + GOOD_STREAM.replace("0x00010001", "0x00020001"), "key 'k1'", "needs a key_domain_id"),
    (GOOD_KEY + GOOD_STREAM.replace('["k1"]', '["k2"]'), "streams[0]", "unknown key 'k2'"),
    (GOOD_KEY + GOOD_STREAM.replace("0x00010001", "0x00070001"), "streams[0]", "high 16 bits"),
    (GOOD_KEY + GOOD_STREAM.replace("ecm_id = 1", "ecm_id = 65536"), "streams[0]", "ecm_id out of range"),
    (GOOD_KEY + GOOD_STREAM + GOOD_STREAM, "streams[1]", "duplicate stream"),
    (GOOD_KEY, None, "at least one [[streams]]"),
    ("extra = 1\n" + GOOD_KEY + GOOD_STREAM, None, "unknown top-level"),
]


@pytest.mark.parametrize(("body", "where", "reason"), BAD_FILES, ids=[case[2] for case in BAD_FILES])
def test_bad_files_name_file_key_and_reason(tmp_path, body, where, reason):
    path = write(tmp_path, body)
    with pytest.raises(KeyFileError) as info:
        load_keyfile(path)
    err = info.value
    assert err.path == str(path) and str(path) in str(err)
    assert err.key == where
    assert reason in err.reason
    assert "0405060708090a0b" not in str(err)  # never echo key material


def test_wrong_format_version(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text("format = 2\n" + GOOD_KEY + GOOD_STREAM)
    with pytest.raises(KeyFileError, match="'format' must be 1"):
        load_keyfile(p)


def test_invalid_toml_and_missing_file(tmp_path):
    p = tmp_path / "k.toml"
    p.write_text("format = = 1\n")
    with pytest.raises(KeyFileError, match="not valid TOML"):
        load_keyfile(p)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_keyfile(tmp_path / "absent.toml")


def test_posix_second_bounds_in_file(tmp_path):
    body = GOOD_KEY + f"not_before = {int(T0.timestamp())}\n" + GOOD_STREAM
    store = load_keyfile(write(tmp_path, body))
    with pytest.raises(KeyNotValidError):
        store.lookup(0x00010001, 1, T0 - timedelta(seconds=1))
    assert store.lookup(0x00010001, 1, T0).name == "k1"
