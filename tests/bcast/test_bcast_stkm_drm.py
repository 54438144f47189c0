"""bcast_sp4.bcast.stkm_drm: DRM Profile STKM, provisional layout PROV-2."""

from __future__ import annotations

import hashlib
import hmac
import random
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcast_sp4.bcast import stkm_drm
from bcast_sp4.bcast.keys import KeyRole, KeyStore, NoKeyError, ServiceKey
from bcast_sp4.bcast.stkm_drm import (
    LAYOUT_VERSION,
    AccessCriteriaDescriptor,
    STKMError,
    build_stkm,
    decode_access_criteria,
    decode_timestamp,
    encode_access_criteria,
    encode_timestamp,
    parse_stkm,
)
from bcast_sp4.bcast.status import UnsupportedTrafficProtectionError
from bcast_sp4.bcast.traffic import (
    IPsecMaterial,
    SRTPMaterial,
    TrafficProtection,
    generate,
)

# bcast-keys.md §9.1 inputs, re-issued for PROV-2 in §12.4.
SAK = bytes.fromhex("5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1")
SEK = ServiceKey(key_id=1, key=bytes(range(16)), authentication_key=SAK, name="fixture-sek")
PEK = ServiceKey(
    key_id=0x101, key=bytes(range(16, 32)), authentication_key=bytes(range(100, 120)),
    role=KeyRole.PROGRAMME, name="fixture-pek",
)
TEK = IPsecMaterial(spi=0x1234, encryption_key=bytes.fromhex("00112233445566778899aabbccddeeff"))
STAMP = datetime(2009, 2, 12, 12, 0, 0, tzinfo=timezone.utc)

VECTOR_A = bytes.fromhex(
    "1c05 00001234 69c4e0d86a7b0430d8cdb78070b4c55a d65a120000 00000001 0e88fe86c5217f0c1138364d".replace(" ", "")
)
VECTOR_B = bytes.fromhex(
    "1c05 00001234 10 69c4e0d86a7b0430d8cdb78070b4c55a d65a120000 00000001 f05c5ae328f7cdbf8f591ff6".replace(" ", "")
)
# §9.1 PROV-1 vector: its header word 0x1C0B reads, under PROV-2, as next+programme+service flags.
PROV1_VECTOR = bytes.fromhex(
    "1c0b 00001234 69c4e0d86a7b0430d8cdb78070b4c55a d65a120000 00000001 23140b9f4b773198869c24f0".replace(" ", "")
)


def remac(msg: bytes) -> bytes:
    """Recompute the trailing service MAC (for tests that edit covered bits on purpose)."""
    body = msg[:-12]
    return body + hmac.new(SAK, body, hashlib.sha1).digest()[:12]


# --- the digest's fixtures -----------------------------------------------------------------------

def test_layout_is_marked_provisional():
    assert LAYOUT_VERSION == "PROV-2"
    assert "provisional" in stkm_drm.__doc__.lower()


def test_vector_b_byte_for_byte():
    assert build_stkm(TEK, SEK, timestamp=STAMP) == VECTOR_B


def test_vector_a_byte_for_byte():
    assert build_stkm(TEK, SEK, timestamp=STAMP, explicit_key_material_length=False) == VECTOR_A


@pytest.mark.parametrize(("data", "explicit"), [(VECTOR_A, False), (VECTOR_B, True)])
def test_vectors_parse(data, explicit):
    p = parse_stkm(data, SEK, explicit_key_material_length=explicit)
    assert p.material == TEK
    assert p.timestamp == STAMP
    assert p.service_cid_extension == 1 and p.programme_cid_extension is None
    assert (p.protocol_version, p.protection_after_reception, p.protection) == (1, 3, TrafficProtection.IPSEC)
    assert p.verified_macs == ("service",) and p.next_material is None and p.access_criteria == ()


def test_prov1_vector_is_not_prov2():
    with pytest.raises(STKMError):
        parse_stkm(PROV1_VECTOR, [SEK, PEK], explicit_key_material_length=False)


def test_srtp_header_word_is_1c25():
    # §12.4: the same message with protocol 1 starts 1c25 under PROV-2 (1c4b under PROV-1).
    srtp = SRTPMaterial(master_key=bytes(16), master_salt=bytes(14), mki=b"\x01")
    assert build_stkm(srtp, SEK, timestamp=STAMP)[:2] == b"\x1c\x25"


@pytest.mark.parametrize(
    ("kwargs", "bit"),
    [
        ({}, None),
        ({"timestamp": STAMP}, 2),
        ({"programme_key": PEK}, 1),
        ({"next_material": IPsecMaterial(spi=0x9999, encryption_key=bytes(16))}, 3),
        ({"access_criteria": [AccessCriteriaDescriptor(1, b"\x0c")]}, 8),
    ],
)
def test_header_flag_positions(kwargs, bit):
    word = int.from_bytes(build_stkm(TEK, SEK, **kwargs)[:2], "big")
    base = 0x1C01  # version 1, PAR 3, service flag
    assert word == base | (1 << bit if bit is not None else 0)


def test_header_protocol_and_auth_bits():
    ipa = generate(TrafficProtection.IPSEC, authenticated=True)
    assert int.from_bytes(build_stkm(ipa, SEK)[:2], "big") == 0x1C11
    isma = generate(TrafficProtection.ISMACRYP)
    assert int.from_bytes(build_stkm(isma, SEK, traffic_authentication=True)[:2], "big") == 0x1C51
    assert int.from_bytes(build_stkm(TEK, SEK, protection_after_reception=0)[:2], "big") == 0x1001


def test_spare_bit_is_ignored_on_input():
    msg = bytearray(build_stkm(TEK, SEK, timestamp=STAMP))
    msg[0] |= 0x02  # bit 9 of the header word: the spare bit in candidate A
    p = parse_stkm(remac(bytes(msg)), SEK)
    assert p.material == TEK


# --- round trips ---------------------------------------------------------------------------------

KEYSETS = {
    "service": {"service_key": SEK},
    "programme": {"service_key": None, "programme_key": PEK},
    "both": {"service_key": SEK, "programme_key": PEK},
}


@pytest.mark.parametrize("protection", list(TrafficProtection))
@pytest.mark.parametrize("keyset", list(KEYSETS))
@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("with_next", [False, True])
def test_round_trip_every_protection(protection, keyset, explicit, with_next):
    rng = random.Random(f"{protection}{keyset}{explicit}{with_next}").randbytes
    cur = generate(protection, rng)
    nxt = generate(protection, rng) if with_next else None
    acs = [AccessCriteriaDescriptor(1, b"\x12"), AccessCriteriaDescriptor(3, b"")]
    msg = build_stkm(
        cur, protection=protection, next_material=nxt, timestamp=STAMP, access_criteria=acs,
        explicit_key_material_length=explicit, **KEYSETS[keyset],
    )
    p = parse_stkm(msg, [SEK, PEK], explicit_key_material_length=explicit)
    assert p.material == cur and p.next_material == nxt
    assert p.protection is protection and p.access_criteria == tuple(acs)
    assert set(p.verified_macs) == ({"service", "programme"} if keyset == "both" else {keyset})


@pytest.mark.parametrize("keys", [[SEK], [PEK], [SEK, PEK]], ids=["sek-only", "pek-only", "both"])
def test_both_flags_decrypt_with_either_entitlement(keys):
    cur = generate(TrafficProtection.SRTP)
    msg = build_stkm(cur, SEK, programme_key=PEK)
    p = parse_stkm(msg, keys)
    assert p.material == cur
    assert p.verified_macs == tuple(n for n, k in (("programme", PEK), ("service", SEK)) if k in keys)


def test_key_store_as_lookup():
    store = KeyStore()
    store.add(0x00010001, 1, SEK)
    assert parse_stkm(build_stkm(TEK, SEK), store).material == TEK


def test_tek_encryption_is_aes_under_sek():
    # The FIPS-197 C.1 answer: the TEK block is AES-128(SEK, TEK) (§9.1 self-check).
    assert build_stkm(TEK, SEK)[7:23] == bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")


# --- tampering, wrong keys, truncation -----------------------------------------------------------

def _tamper_cases():
    srtp = SRTPMaterial(master_key=bytes(range(16)), master_salt=bytes(14), mki=b"\x05\x06")
    return {
        "vector-b": VECTOR_B,
        "both-next-ac": build_stkm(
            srtp, SEK, programme_key=PEK, next_material=srtp, timestamp=STAMP,
            access_criteria=[AccessCriteriaDescriptor(2, b"\x01\x02")],
        ),
    }


@pytest.mark.parametrize("case", list(_tamper_cases()))
def test_every_flipped_bit_is_detected(case):
    msg = _tamper_cases()[case]
    original = parse_stkm(msg, [SEK, PEK])
    service_cid = range(len(msg) - 16, len(msg) - 12)
    for i in range(len(msg)):
        for bit in (0x01, 0x80):
            bad = bytearray(msg)
            bad[i] ^= bit
            if original.programme_cid_extension is not None and i in service_cid:
                # The service CID extension lies outside the programme MAC: changing it makes the SEK
                # unknown, and the STKM still verifies under the PAK alone, which it must report.
                p = parse_stkm(bytes(bad), [SEK, PEK])
                assert p.verified_macs == ("programme",)
                assert p.material == original.material and p.next_material == original.next_material
                continue
            with pytest.raises((STKMError, NoKeyError)):
                parse_stkm(bytes(bad), [SEK, PEK])


def test_every_truncation_is_detected():
    msg = _tamper_cases()["both-next-ac"]
    for n in range(len(msg)):
        with pytest.raises(STKMError):
            parse_stkm(msg[:n], [SEK, PEK])
    with pytest.raises(STKMError):
        parse_stkm(msg + b"\x00", [SEK, PEK])


def test_wrong_key_is_detected():
    other = ServiceKey(key_id=1, key=bytes(16), authentication_key=bytes(20))
    with pytest.raises(STKMError, match="service_MAC mismatch"):
        parse_stkm(VECTOR_B, other)
    wrong_sak = ServiceKey(key_id=1, key=SEK.key, authentication_key=bytes(20))
    with pytest.raises(STKMError, match="MAC mismatch"):
        parse_stkm(VECTOR_B, wrong_sak)


def test_unknown_key_id():
    with pytest.raises(NoKeyError):
        parse_stkm(VECTOR_B, ServiceKey(key_id=2, key=SEK.key, authentication_key=SAK))
    with pytest.raises(NoKeyError):
        parse_stkm(VECTOR_B, [PEK])  # right id but programme role


def test_wrong_layout_variant_is_detected():
    with pytest.raises(STKMError):
        parse_stkm(VECTOR_B, SEK, explicit_key_material_length=False)
    with pytest.raises(STKMError):
        parse_stkm(VECTOR_A, SEK, explicit_key_material_length=True)


def test_rejects_unsupported_protocol_and_version():
    for word in (0x1C61, 0x1C65):  # protocol 3 (DCF)
        with pytest.raises(UnsupportedTrafficProtectionError):
            parse_stkm(word.to_bytes(2, "big") + VECTOR_B[2:], SEK)
    with pytest.raises(STKMError, match="protocol_version"):
        parse_stkm(b"\x2c\x05" + VECTOR_B[2:], SEK)


def test_rejects_message_without_mac():
    msg = bytes.fromhex("1c04 00001234 10 69c4e0d86a7b0430d8cdb78070b4c55a d65a120000".replace(" ", ""))
    with pytest.raises(STKMError, match="neither"):
        parse_stkm(msg, SEK)


def test_rejects_wrong_material_length():
    # explicit length 0x20 for a 16-byte IPsec TEK, MAC recomputed so only the length is wrong
    msg = bytes.fromhex("1c0100001234") + b"\x20" + bytes(32) + (1).to_bytes(4, "big") + bytes(12)
    with pytest.raises(STKMError, match="needs 16"):
        parse_stkm(remac(msg), SEK)


def test_rejects_nonzero_padding():
    srtp = SRTPMaterial(master_key=bytes(16), master_salt=bytes(14))
    msg = build_stkm(srtp, SEK)
    bad_key = ServiceKey(key_id=1, key=bytes(16), authentication_key=SAK)  # right SAK, wrong SEK
    with pytest.raises(STKMError, match="padding"):
        parse_stkm(msg, bad_key)


# --- build argument checks -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs",
    [
        {"service_key": None},
        {"service_key": PEK},  # wrong role
        {"service_key": ServiceKey(key_id=1, key=bytes(16))},  # no SAK
        {"protection": TrafficProtection.SRTP},
        {"next_material": SRTPMaterial(master_key=bytes(16), master_salt=bytes(14))},
        {"traffic_authentication": True},  # IPsec without an authentication key
        {"protection_after_reception": 4},
        {"timestamp": datetime(2039, 1, 1, tzinfo=timezone.utc)},
        {"access_criteria": [AccessCriteriaDescriptor(1, b"")] * 256},
    ],
)
def test_build_rejects(kwargs):
    kwargs.setdefault("service_key", SEK)
    with pytest.raises(STKMError):
        build_stkm(TEK, **kwargs)


# --- helpers -------------------------------------------------------------------------------------

def test_timestamp_coding():
    assert encode_timestamp(STAMP) == bytes.fromhex("d65a120000")
    assert encode_timestamp(datetime(1993, 10, 13, 12, 45, tzinfo=timezone.utc)) == bytes.fromhex("c079124500")
    assert decode_timestamp(bytes.fromhex("c079124500")) == datetime(1993, 10, 13, 12, 45, tzinfo=timezone.utc)
    for bad in ("d65a1a0000", "d65a240000", "d65a126000", "d65a"):
        with pytest.raises(STKMError):
            decode_timestamp(bytes.fromhex(bad))


@given(st.datetimes(min_value=datetime(1858, 11, 17), max_value=datetime(2038, 4, 22), timezones=st.just(timezone.utc)))
def test_timestamp_round_trip(when):
    assert decode_timestamp(encode_timestamp(when)) == when.replace(microsecond=0)


def test_access_criteria_codec():
    acs = (AccessCriteriaDescriptor(1, b"\x0c"), AccessCriteriaDescriptor(2, b""))
    raw = encode_access_criteria(acs)
    assert raw == bytes.fromhex("01010c0200")
    assert decode_access_criteria(raw) == acs
    assert decode_access_criteria(b"") == ()
    with pytest.raises(STKMError):
        decode_access_criteria(bytes.fromhex("0102aa"))
    with pytest.raises(ValueError):
        AccessCriteriaDescriptor(256, b"")


def test_parsed_repr_hides_keys():
    text = repr(parse_stkm(VECTOR_B, SEK))
    assert "00112233445566778899aabbccddeeff" not in text and "material" not in text


# --- properties ----------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(
    protection=st.sampled_from(list(TrafficProtection)),
    seed=st.integers(0, 2**32),
    keyset=st.sampled_from(list(KEYSETS)),
    with_next=st.booleans(),
    stamp=st.none() | st.integers(0, 2**31 - 1),
    par=st.integers(0, 3),
    auth=st.booleans(),
    acs=st.lists(st.builds(AccessCriteriaDescriptor, st.integers(0, 255), st.binary(max_size=8)), max_size=3),
    explicit=st.booleans(),
)
def test_build_parse_property(protection, seed, keyset, with_next, stamp, par, auth, acs, explicit):
    rng = random.Random(seed).randbytes
    params = {"authenticated": auth} if protection is TrafficProtection.IPSEC else {}
    cur = generate(protection, rng, **params)
    nxt = generate(protection, rng, **params) if with_next else None
    msg = build_stkm(
        cur, next_material=nxt, timestamp=stamp, protection_after_reception=par,
        traffic_authentication=auth, access_criteria=acs, explicit_key_material_length=explicit,
        **KEYSETS[keyset],
    )
    p = parse_stkm(msg, [SEK, PEK], explicit_key_material_length=explicit)
    assert p.material == cur and p.next_material == nxt
    assert p.traffic_authentication is auth and p.protection_after_reception == par
    assert p.access_criteria == tuple(acs)
    assert (p.timestamp is None) == (stamp is None)
    if stamp is not None:
        assert p.timestamp == datetime.fromtimestamp(stamp, timezone.utc)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_never_parse(data):
    with pytest.raises((STKMError, NoKeyError)):
        parse_stkm(data, [SEK, PEK])
