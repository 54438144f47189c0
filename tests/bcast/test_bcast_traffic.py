"""bcast_sp4.bcast.traffic: TEK material, generation and the CW layout (version 1)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcast_sp4.bcast.traffic import (
    CW_LAYOUT_VERSION,
    IPsecAuthentication,
    IPsecMaterial,
    ISMACrypMaterial,
    SRTPMaterial,
    TrafficKeyError,
    TrafficProtection,
    UnsupportedTrafficProtectionError,
    decode_cw,
    encode_cw,
    generate,
    key_material_length,
    key_material_plaintext,
    material_from_plaintext,
)

K16 = bytes(range(16))
A20 = bytes(range(100, 120))

GOLDEN = [
    # IPsec, no authentication: version, protocol 0, SPI, alg 12, len 16, key, alg 0, len 0
    (
        IPsecMaterial(spi=0x1234, encryption_key=K16),
        "01 00 00001234 0c 10 000102030405060708090a0b0c0d0e0f 00 00",
    ),
    (
        IPsecMaterial(
            spi=0xFFFFFFFF, encryption_key=K16, authentication_key=A20,
            authentication_algorithm=IPsecAuthentication.HMAC_SHA1_96,
        ),
        "01 00 ffffffff 0c 10 000102030405060708090a0b0c0d0e0f 02 14 6465666768696a6b6c6d6e6f7071727374757677",
    ),
    (
        SRTPMaterial(master_key=K16, master_salt=bytes(14), mki=b"\xab\xcd"),
        "01 01 02 abcd 10 000102030405060708090a0b0c0d0e0f 0e 0000000000000000000000000000",
    ),
    (
        ISMACrypMaterial(key=K16, salt=b"\x11" * 8, key_indicator=b""),
        "01 02 00 10 000102030405060708090a0b0c0d0e0f 08 1111111111111111",
    ),
]


@pytest.mark.parametrize(("material", "hexstr"), GOLDEN)
def test_cw_golden_bytes_both_directions(material, hexstr):
    raw = bytes.fromhex(hexstr.replace(" ", ""))
    assert encode_cw(material) == raw
    assert decode_cw(type(material).PROTECTION, raw) == material
    assert decode_cw(None, raw) == material


def materials(protection: TrafficProtection | None = None):
    prots = st.just(protection) if protection is not None else st.sampled_from(list(TrafficProtection))

    def make(p, seed, flag, idlen):
        rng = random.Random(seed).randbytes
        if p is TrafficProtection.IPSEC:
            return generate(p, rng, authenticated=flag)
        if p is TrafficProtection.SRTP:
            return generate(p, rng, mki_length=idlen)
        return generate(p, rng, key_indicator_length=idlen)

    return st.builds(make, prots, st.integers(0, 2**32), st.booleans(), st.integers(0, 255))


@settings(max_examples=200, deadline=None)
@given(materials())
def test_cw_round_trip_property(material):
    assert decode_cw(type(material).PROTECTION, encode_cw(material)) == material


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_cw_random_bytes_raise_only_traffic_key_error(data):
    try:
        m = decode_cw(None, data)
    except TrafficKeyError:
        return
    assert encode_cw(m) == data  # whatever decodes must re-encode to the same bytes


@settings(max_examples=100, deadline=None)
@given(materials(), st.data())
def test_cw_any_truncation_is_rejected(material, data):
    raw = encode_cw(material)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(TrafficKeyError):
        decode_cw(None, raw[:cut])


@pytest.mark.parametrize("material", [g[0] for g in GOLDEN])
def test_cw_trailing_byte_rejected(material):
    with pytest.raises(TrafficKeyError):
        decode_cw(None, encode_cw(material) + b"\x00")


def test_cw_wrong_version_rejected():
    raw = bytearray(encode_cw(GOLDEN[0][0]))
    raw[0] = CW_LAYOUT_VERSION + 1
    with pytest.raises(TrafficKeyError, match="version"):
        decode_cw(None, bytes(raw))


def test_cw_protection_mismatch_rejected():
    with pytest.raises(TrafficKeyError, match="expects SRTP"):
        decode_cw(TrafficProtection.SRTP, encode_cw(GOLDEN[0][0]))


@pytest.mark.parametrize("code", [3, 7, 255])
def test_cw_unsupported_protocol(code):
    with pytest.raises(UnsupportedTrafficProtectionError):
        decode_cw(None, bytes([CW_LAYOUT_VERSION, code]) + bytes(30))


@pytest.mark.parametrize(
    "hexstr",
    [
        "01 00 00001234 0c 0f 000102030405060708090a0b0c0d0e 00 00",  # 15-byte AES key
        "01 00 00001234 0c 10 000102030405060708090a0b0c0d0e0f 02 00",  # HMAC alg, no key
        "01 00 00001234 0c 10 000102030405060708090a0b0c0d0e0f 00 01 aa",  # no alg, a key
        "01 00 00001234 0d 10 000102030405060708090a0b0c0d0e0f 00 00",  # unknown enc alg 13
        "01 00 00000001 0c 10 000102030405060708090a0b0c0d0e0f 00 00",  # reserved SPI 1
        "01 01 00 10 000102030405060708090a0b0c0d0e0f 0d 00000000000000000000000000",  # 13-byte salt
        "01 02 00 10 000102030405060708090a0b0c0d0e0f 10 00000000000000000000000000000000",  # 16-byte salt
    ],
)
def test_cw_bad_lengths_and_values(hexstr):
    with pytest.raises(TrafficKeyError):
        decode_cw(None, bytes.fromhex(hexstr.replace(" ", "")))


def test_generate_shapes():
    ip = generate(TrafficProtection.IPSEC)
    assert isinstance(ip, IPsecMaterial) and len(ip.encryption_key) == 16 and not ip.authenticated
    assert ip.spi >= 256
    ipa = generate(TrafficProtection.IPSEC, authenticated=True, spi=0x4242)
    assert ipa.authenticated and len(ipa.authentication_key) == 20 and ipa.spi == 0x4242
    srtp = generate(TrafficProtection.SRTP, mki_length=2)
    assert len(srtp.master_key) == 16 and len(srtp.master_salt) == 14 and srtp.mki_length == 2
    assert generate(TrafficProtection.SRTP, mki=b"\x07").mki == b"\x07"
    isma = generate(TrafficProtection.ISMACRYP, key_indicator_length=0)
    assert len(isma.key) == 16 and len(isma.salt) == 8 and isma.key_indicator == b""


def test_generate_is_fresh_and_uses_rng():
    assert generate(TrafficProtection.SRTP) != generate(TrafficProtection.SRTP)
    calls = []

    def rng(n):
        calls.append(n)
        return b"\x01" * n

    m = generate(TrafficProtection.ISMACRYP, rng)
    assert m.key == b"\x01" * 16 and m.salt == b"\x01" * 8 and sum(calls) == 4 + 16 + 8


def test_generate_rejects_unknown_params_and_bad_rng():
    with pytest.raises(TypeError):
        generate(TrafficProtection.IPSEC, mki_length=4)
    with pytest.raises(ValueError):
        generate(TrafficProtection.SRTP, lambda n: b"short")


def test_keys_are_not_in_repr():
    for m, _ in GOLDEN:
        text = repr(m)
        assert K16.hex() not in text and repr(K16) not in text
        assert "key=" not in text.replace("key_indicator=", "")


def test_material_validators():
    with pytest.raises(TrafficKeyError):
        SRTPMaterial(master_key=bytes(15), master_salt=bytes(14))
    with pytest.raises(TrafficKeyError):
        ISMACrypMaterial(key=bytes(16), salt=bytes(8), key_indicator=bytes(256))
    with pytest.raises(TrafficKeyError):
        IPsecMaterial(spi=0x1234, encryption_key=16)  # an int is not bytes (bytes(16) would be zeros)


@settings(max_examples=100, deadline=None)
@given(materials())
def test_plaintext_round_trip(material):
    plain = key_material_plaintext(material)
    p = type(material).PROTECTION
    assert len(plain) == key_material_length(p, getattr(material, "authenticated", False))
    assert material_from_plaintext(p, material.identifier, plain) == material
