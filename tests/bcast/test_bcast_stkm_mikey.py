"""bcast_sp4.bcast.stkm_mikey: Smartcard Profile STKM (MIKEY MTK message + EXT BCAST)."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcast_sp4.bcast.keys import KeyStore, NoKeyError, ServiceKey
from bcast_sp4.bcast.stkm_drm import AccessCriteriaDescriptor
from bcast_sp4.bcast.stkm_mikey import (
    EncrAlg,
    STKMError,
    TsType,
    build_stkm,
    derive_message_keys,
    mikey_prf,
    parse_stkm,
)
from bcast_sp4.bcast.status import UnsupportedTrafficProtectionError
from bcast_sp4.bcast.traffic import IPsecMaterial, SRTPMaterial, TrafficProtection, generate

# bcast-keys.md §9.2 inputs (corrected vector in §12.5).
MSK = ServiceKey(
    key_id=0x00010001, key=bytes.fromhex("0f0e0d0c0b0a09080706050403020100"),
    key_domain_id=bytes.fromhex("02f810"), name="fixture-msk",
)
TEK = SRTPMaterial(
    master_key=bytes.fromhex("00112233445566778899aabbccddeeff"),
    master_salt=bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacad"),
)
VECTOR_12_5 = bytes.fromhex(
    "01 00 15 00 00010001 00 01"
    "05 03 000b 00 03 02f810 01 04 00010001"
    "15 02 00000001"
    "01 05 0002 02 c4"
    "00 01 0024 406faed7fe2ebbeabfb83b31ec04ba137fa04e8ab42252ee88d57e917e5fe74ecb912fba 01"
    "940c4d64a0273e19d779c3611f2b1e171c32e23a".replace(" ", "")
)


def with_mac(body: bytes, key: ServiceKey = MSK, csb_id: int = 0x00010001) -> bytes:
    """Append a correct MAC to a hand-made message body (which ends with the MAC-alg byte)."""
    _, auth_key, _ = derive_message_keys(key.key, csb_id)
    return body + hmac.new(auth_key, body, hashlib.sha1).digest()


# --- the digest's fixtures -----------------------------------------------------------------------

def test_derived_keys_match_digest():
    encr, auth, salt = derive_message_keys(MSK.key, 0x00010001)
    assert encr.hex() == "90d8777b3426016d0bf9ec37be967d61"
    assert auth.hex() == "69e6c23d7979ae1ee580ae9ce55bc45a1e3a84d2"
    assert salt.hex() == "0ecb7beb492e9eb8720d1ca9be5d"


def test_prf_multi_chunk_and_length():
    # 40-byte key = two chunks (32 + 8): the output is the XOR of the two P-function streams.
    key, label = bytes(range(40)), b"label"
    one = mikey_prf(key[:32], label, 45)
    two = mikey_prf(key[32:], label, 45)
    assert mikey_prf(key, label, 45) == bytes(a ^ b for a, b in zip(one, two))
    assert len(mikey_prf(key, label, 45)) == 45
    a1 = hmac.new(key[:32], label, hashlib.sha1).digest()
    assert one[:20] == hmac.new(key[:32], a1 + label, hashlib.sha1).digest()


def test_vector_12_5_byte_for_byte():
    assert build_stkm(TEK, MSK, counter=1) == VECTOR_12_5


def test_vector_12_5_parses():
    p = parse_stkm(VECTOR_12_5, MSK)
    assert p.material == TEK and p.next_material is None
    assert (p.csb_id, p.ts_type, p.counter) == (0x00010001, TsType.COUNTER, 1)
    assert (p.key_domain_id, p.key_id) == (bytes.fromhex("02f810"), 0x00010001)
    assert (p.protection, p.protection_after_reception, p.traffic_authentication) == (TrafficProtection.SRTP, 3, False)
    assert p.encryption is EncrAlg.AES_CM_128 and p.access_criteria == ()


def test_repr_hides_keys():
    assert "00112233" not in repr(parse_stkm(VECTOR_12_5, MSK))


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("protection", list(TrafficProtection))
@pytest.mark.parametrize("with_next", [False, True])
@pytest.mark.parametrize("id_length", [0, 3])
def test_round_trip_every_protection(protection, with_next, id_length):
    rng = random.Random(f"{protection}{with_next}{id_length}").randbytes
    params = {
        TrafficProtection.IPSEC: {"authenticated": bool(id_length)},
        TrafficProtection.SRTP: {"mki_length": id_length},
        TrafficProtection.ISMACRYP: {"key_indicator_length": id_length},
    }[protection]
    cur = generate(protection, rng, **params)
    nxt = generate(protection, rng, **params) if with_next else None
    acs = [AccessCriteriaDescriptor(1, b"\x12")]
    msg = build_stkm(cur, MSK, counter=42, protection=protection, next_material=nxt, access_criteria=acs)
    p = parse_stkm(msg, [MSK])
    assert p.material == cur and p.next_material == nxt
    assert p.protection is protection and p.counter == 42 and p.access_criteria == tuple(acs)


def test_key_store_and_key_without_domain():
    bare = ServiceKey(key_id=7, key=bytes(16))
    store = KeyStore()
    store.add(0x00020001, 1, bare)
    msg = build_stkm(TEK, bare, counter=3, csb_id=99)
    p = parse_stkm(msg, store)
    assert p.material == TEK and p.key_id == 7 and p.key_domain_id == b"" and p.csb_id == 99


def test_null_encryption_twin_needs_opt_in():
    msg = build_stkm(TEK, MSK, counter=1, encryption=EncrAlg.NULL)
    assert TEK.master_key in msg  # in clear: debugging only
    with pytest.raises(STKMError, match="encryption"):
        parse_stkm(msg, MSK)
    p = parse_stkm(msg, MSK, allow_null_encryption=True)
    assert p.material == TEK and p.encryption is EncrAlg.NULL


def test_counter_changes_ciphertext():
    a, b = build_stkm(TEK, MSK, counter=1), build_stkm(TEK, MSK, counter=2)
    assert a[41:77] != b[41:77]
    assert parse_stkm(b, MSK).material == TEK


# --- tampering, wrong keys, truncation -----------------------------------------------------------

CASES = {
    "vector": VECTOR_12_5,
    "ipsec-next-ac": build_stkm(
        generate(TrafficProtection.IPSEC, random.Random(1).randbytes, authenticated=True), MSK, counter=9,
        next_material=generate(TrafficProtection.IPSEC, random.Random(2).randbytes, authenticated=True),
        access_criteria=[AccessCriteriaDescriptor(2, b"\x01")],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_flipped_bit_is_detected(case):
    msg = CASES[case]
    for i in range(len(msg)):
        for bit in (0x01, 0x80):
            bad = bytearray(msg)
            bad[i] ^= bit
            with pytest.raises((STKMError, NoKeyError)):
                parse_stkm(bytes(bad), MSK)


def test_every_truncation_is_detected():
    msg = CASES["ipsec-next-ac"]
    for n in range(len(msg)):
        with pytest.raises(STKMError):
            parse_stkm(msg[:n], MSK)
    with pytest.raises(STKMError, match="trailing"):
        parse_stkm(msg + b"\x00", MSK)


def test_wrong_key_is_detected():
    other = ServiceKey(key_id=MSK.key_id, key=bytes(16), key_domain_id=MSK.key_domain_id)
    with pytest.raises(STKMError, match="MAC mismatch"):
        parse_stkm(VECTOR_12_5, other)


def test_unknown_key():
    with pytest.raises(NoKeyError):
        parse_stkm(VECTOR_12_5, ServiceKey(key_id=2, key=MSK.key, key_domain_id=MSK.key_domain_id))
    with pytest.raises(NoKeyError):
        parse_stkm(VECTOR_12_5, ServiceKey(key_id=MSK.key_id, key=MSK.key, key_domain_id=b"\x00\x00\x01"))


HDR = "01 00 15 00 00010001 00 01"
KEY_ID = "05 03 000b 00 03 02f810 01 04 00010001"
T_CTR = "15 02 00000001"
BCAST = "01 05 0002 02 c4"


def _kemac_null(key_data_hex: str) -> str:
    n = len(bytes.fromhex(key_data_hex.replace(" ", "")))
    return f"00 00 {n:04x} {key_data_hex} 01"


KEY_DATA = "00 10 0010 00112233445566778899aabbccddeeff 000e a0a1a2a3a4a5a6a7a8a9aaabacad"


def _msg(*parts: str) -> bytes:
    return with_mac(bytes.fromhex(" ".join(parts).replace(" ", "")))


def test_hand_built_null_message_parses():
    # Checks the hand-building helpers themselves, so the negative cases below fail for their reason.
    p = parse_stkm(_msg(HDR, KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA)), MSK, allow_null_encryption=True)
    assert p.material == TEK


def test_unknown_ext_is_ignored_but_covered():
    vendor = "05 00 0003 aabbcc"  # EXT type 0 (vendor ID), next = T
    key_id = KEY_ID.replace("05 03", "15 03", 1)  # Key ID EXT now followed by another EXT
    msg = _msg(HDR, key_id, vendor, T_CTR, BCAST, _kemac_null(KEY_DATA))
    assert parse_stkm(msg, MSK, allow_null_encryption=True).material == TEK


@pytest.mark.parametrize(
    ("parts", "match"),
    [
        ((HDR.replace("01 00", "02 00", 1), KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA)), "MIKEY v1"),
        ((HDR.replace("01 00 15 00", "01 01 15 00", 1), KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA)), "pre-shared"),
        ((HDR.replace("15 00", "15 01", 1), KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA)), "PRF"),
        ((HDR[:-2] + "00", KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA)), "map type"),
        ((HDR, KEY_ID.replace("05 03", "0b 03", 1), "05 10 " + "00" * 16, T_CTR, BCAST, _kemac_null(KEY_DATA)), "payload type 11"),
        ((HDR, KEY_ID, T_CTR.replace("15 02", "01 02", 1), _kemac_null(KEY_DATA)), "lacks"),
        ((HDR, KEY_ID, T_CTR, BCAST.replace("02 c4", "01 c4"), _kemac_null(KEY_DATA)), "STKM subtype"),
        ((HDR, KEY_ID, T_CTR, BCAST.replace("02 c4", "02 cc"), _kemac_null(KEY_DATA)), "traffic_protection_protocol 3"),
        ((HDR, KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA.replace("000e a0a1a2a3a4a5a6a7a8a9aaabacad", "0008 a0a1a2a3a4a5a6a7"))), "must be 30 bytes"),
        ((HDR, KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA.replace("00 10 0010", "00 00 0010").replace(" 000e a0a1a2a3a4a5a6a7a8a9aaabacad", ""))), "lacks a salt"),
        ((HDR, KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA.replace("00 10", "00 12", 1) + " 00 00")), "interval"),
        ((HDR, KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA + " 00")), "trailing"),
        ((HDR, KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA.replace("00 10", "14 10", 1))), "malformed Key data"),
        ((HDR, KEY_ID.replace("03 02f810", "02 02f8", 1).replace("000b", "000a"), T_CTR, BCAST, _kemac_null(KEY_DATA)), "Key Domain ID"),
    ],
)
def test_rejects_bad_structure(parts, match):
    with pytest.raises(STKMError, match=match):
        parse_stkm(_msg(*parts), MSK, allow_null_encryption=True)


def test_rejects_null_mac():
    body = bytes.fromhex(" ".join([HDR, KEY_ID, T_CTR, BCAST, _kemac_null(KEY_DATA)[:-2] + "00"]).replace(" ", ""))
    with pytest.raises(STKMError, match="MAC algorithm"):
        parse_stkm(body, MSK, allow_null_encryption=True)


def test_unsupported_protection_is_an_stkm_error():
    assert issubclass(UnsupportedTrafficProtectionError, STKMError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"counter": -1},
        {"counter": 2**32},
        {"csb_id": 2**32},
        {"protection": TrafficProtection.IPSEC},
        {"next_material": IPsecMaterial(spi=0x1234, encryption_key=bytes(16))},
        {"protection_after_reception": 5},
        {"encryption": EncrAlg.AES_KW_128},
    ],
)
def test_build_rejects(kwargs):
    kwargs.setdefault("counter", 1)
    with pytest.raises(STKMError):
        build_stkm(TEK, MSK, **kwargs)


def test_build_rejects_ipsec_auth_mismatch():
    with pytest.raises(STKMError):
        build_stkm(IPsecMaterial(spi=0x1234, encryption_key=bytes(16)), MSK, counter=1, traffic_authentication=True)


# --- properties ----------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(
    protection=st.sampled_from(list(TrafficProtection)),
    seed=st.integers(0, 2**32),
    with_next=st.booleans(),
    counter=st.integers(0, 2**32 - 1),
    csb_id=st.none() | st.integers(0, 2**32 - 1),
    par=st.integers(0, 3),
    auth=st.booleans(),
    acs=st.lists(st.builds(AccessCriteriaDescriptor, st.integers(0, 255), st.binary(max_size=8)), max_size=3),
)
def test_build_parse_property(protection, seed, with_next, counter, csb_id, par, auth, acs):
    rng = random.Random(seed).randbytes
    params = {"authenticated": auth} if protection is TrafficProtection.IPSEC else {}
    cur = generate(protection, rng, **params)
    nxt = generate(protection, rng, **params) if with_next else None
    msg = build_stkm(
        cur, MSK, counter=counter, next_material=nxt, csb_id=csb_id, protection_after_reception=par,
        traffic_authentication=auth, access_criteria=acs,
    )
    p = parse_stkm(msg, MSK)
    assert p.material == cur and p.next_material == nxt
    assert p.counter == counter and p.csb_id == (MSK.key_id if csb_id is None else csb_id)
    assert p.protection_after_reception == par and p.traffic_authentication is auth
    assert p.access_criteria == tuple(acs)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_parse(data):
    with pytest.raises((STKMError, NoKeyError)):
        parse_stkm(data, MSK)


def test_cached_aes_cm_is_the_one_shot_ctr_cipher_for_every_length_and_counter():
    # the per-key AES-CM (counter blocks joined from the IV) against a new CTR Cipher per call
    from bcast_sp4.bcast.stkm_mikey import _aes_cm, _MessageKeys, derive_message_keys

    psk = bytes(range(16))
    keys = _MessageKeys(psk, 7)
    encr_key, _auth, salt = derive_message_keys(psk, 7)
    for n in (1, 15, 16, 17, 80, 4096, 4097):  # 4097: past the table of counters, the general way
        data = bytes((i * 7) & 0xFF for i in range(n))
        for t64 in (0, 1, 2**64 - 1):
            for csb_id in (7, 0xFFFFFFFF):
                assert keys.aes_cm(csb_id, t64, data) == _aes_cm(encr_key, salt, csb_id, t64, data), (n, t64, csb_id)
    assert keys.aes_cm(7, 0, b"") == b""
