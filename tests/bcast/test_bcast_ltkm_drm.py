"""bcast_sp4.bcast.ltkm_drm (PROVISIONAL PROV-LTKM-1); the subscriber file is in tests/config/test_subscribers.py."""

from __future__ import annotations

import hashlib
import hmac
import struct
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding
from hypothesis import given, settings
from hypothesis import strategies as st

from bcast_sp4.bcast.keys import KeyRole, ServiceKey
from bcast_sp4.bcast.ltkm_drm import (
    LAYOUT_VERSION,
    MAC_SIZE,
    LTKMError,
    build_ltkm,
    parse_ltkm,
    peek_device_id,
)
from bcast_sp4.bcast.stkm_drm import build_stkm, parse_stkm
from bcast_sp4.bcast.traffic import IPsecMaterial

REPO = Path(__file__).resolve().parents[2]
DEVICE_KEY = bytes(range(0xD0, 0xE0))
SAK = bytes.fromhex("5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1")
SEK = ServiceKey(key_id=1, key=bytes(range(16)), authentication_key=SAK, not_before=1704067200, not_after=2082758400)
PEK = ServiceKey(key_id=0x101, key=bytes(range(16, 32)), authentication_key=bytes(32), role=KeyRole.PROGRAMME)
ISSUED = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def test_layout_is_labelled_provisional():
    assert LAYOUT_VERSION == "PROV-LTKM-1"
    import bcast_sp4.bcast.ltkm_drm as module

    assert "PROVISIONAL" in module.__doc__ and "NOT THE OMA FORMAT" in module.__doc__


def test_round_trip_delivers_keys_with_validity():
    data = build_ltkm(b"\x0b\xa5\xe0\x01", DEVICE_KEY, [SEK, PEK], issued_at=ISSUED, sequence=42)
    parsed = parse_ltkm(data, DEVICE_KEY)
    assert (parsed.device_id, parsed.sequence, parsed.issued_at, parsed.layout_version) == (
        b"\x0b\xa5\xe0\x01", 42, ISSUED, "PROV-LTKM-1")
    sek, pek = parsed.keys
    assert (sek.key, sek.authentication_key, sek.role, sek.key_id) == (SEK.key, SAK, KeyRole.SERVICE, 1)
    assert (sek.not_before, sek.not_after) == (SEK.not_before, SEK.not_after)
    assert (pek.role, pek.key_id, pek.not_before, pek.not_after) == (KeyRole.PROGRAMME, 0x101, None, None)


def test_bytes_follow_the_documented_table_and_crypto():
    data = build_ltkm(b"dev", DEVICE_KEY, [(SEK, 1735689600, 1767225600)], issued_at=ISSUED, sequence=7)
    assert data[:3] == b"\x01\x01\x03" and data[3:6] == b"dev"
    issued, sequence, count = struct.unpack_from(">IIB", data, 6)
    assert (issued, sequence, count) == (int(ISSUED.timestamp()), 7, 1)
    role, key_id, not_before, not_after, wrapped_len = struct.unpack_from(">BIIIB", data, 15)
    assert (role, key_id, not_before, not_after) == (0, 1, 1735689600, 1767225600)
    wrapped = data[29 : 29 + wrapped_len]
    assert len(data) == 29 + wrapped_len + MAC_SIZE
    kek = HKDF(hashes.SHA256(), 16, None, b"bcast-sp4 PROV-LTKM-1 KEK").derive(DEVICE_KEY)
    mac_key = HKDF(hashes.SHA256(), 32, None, b"bcast-sp4 PROV-LTKM-1 MAC").derive(DEVICE_KEY)
    assert aes_key_unwrap_with_padding(kek, wrapped) == SEK.key + SAK
    assert data[-MAC_SIZE:] == hmac.new(mac_key, data[:-MAC_SIZE], hashlib.sha256).digest()[:MAC_SIZE]
    assert SEK.key not in data and SAK not in data


def test_every_byte_is_authenticated():
    data = build_ltkm(b"dev", DEVICE_KEY, [SEK], issued_at=ISSUED, sequence=1)
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(LTKMError):
            parse_ltkm(bytes(tampered), DEVICE_KEY)


def test_wrong_device_key_unknown_device_and_bad_shapes():
    data = build_ltkm(b"dev", DEVICE_KEY, [SEK], issued_at=ISSUED, sequence=1)
    with pytest.raises(LTKMError, match="MAC"):
        parse_ltkm(data, bytes(16))
    with pytest.raises(LTKMError, match="no device key"):
        parse_ltkm(data, {}.get)
    assert parse_ltkm(data, {b"dev": DEVICE_KEY}.get).device_id == b"dev"
    assert peek_device_id(data) == b"dev"
    for broken in (b"", data[:-1], data + b"\x00", b"\x02" + data[1:], data[:1] + b"\x02" + data[2:]):
        with pytest.raises(LTKMError):
            parse_ltkm(broken, DEVICE_KEY)
    with pytest.raises(LTKMError):
        peek_device_id(b"\x01\x01\x09ab")


def test_build_refuses_what_it_cannot_encode():
    no_sak = ServiceKey(key_id=1, key=bytes(16))
    cases = [
        dict(device_id=b"", keys=[SEK]),
        dict(device_id=bytes(65), keys=[SEK]),
        dict(device_id=b"d", keys=[]),
        dict(device_id=b"d", keys=[no_sak]),
        dict(device_id=b"d", keys=[SEK] * 256),
    ]
    for case in cases:
        with pytest.raises(LTKMError):
            build_ltkm(case["device_id"], DEVICE_KEY, case["keys"], issued_at=ISSUED, sequence=1)
    with pytest.raises(LTKMError):
        build_ltkm(b"d", bytes(15), [SEK], issued_at=ISSUED, sequence=1)
    with pytest.raises(LTKMError):
        build_ltkm(b"d", DEVICE_KEY, [SEK], issued_at=ISSUED, sequence=2**32)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_ltkm_error(blob):
    with pytest.raises(LTKMError):
        parse_ltkm(blob, DEVICE_KEY)


def test_keys_from_an_ltkm_open_the_ecmg_stkms():
    """The point of an LTKM: the SEK it delivers verifies and decrypts the STKMs made under it."""
    tek = IPsecMaterial(spi=0x1234, encryption_key=bytes(range(100, 116)))
    stkm = build_stkm(tek, SEK, timestamp=ISSUED)
    delivered = parse_ltkm(build_ltkm(b"dev", DEVICE_KEY, [SEK], issued_at=ISSUED, sequence=1), DEVICE_KEY).keys
    assert parse_stkm(stkm, delivered).material == tek


