"""bcast_sp4.bcast.keys: ServiceKey and KeyStore (the key file: tests/config/test_keyfile.py)."""

from __future__ import annotations

import pathlib
from datetime import datetime, timedelta, timezone

import pytest

from bcast_sp4.bcast.keys import (
    KeyNotValidError,
    KeyRef,
    KeyRole,
    KeyStore,
    KmsProfile,
    NoKeyError,
    ServiceKey,
    as_key_lookup,
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


