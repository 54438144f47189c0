"""The keyless ``describe`` readers beside the STKM/LTKM parsers (used by ``bcast-sp4 decode --payloads``).

Each describe must read what the builder wrote, field for field, agree with the verifying parser
on everything both report, and refuse what the parser refuses as malformed.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcast_sp4.bcast import ltkm_drm, stkm_drm, stkm_mikey
from bcast_sp4.bcast.keys import KeyRole, ServiceKey
from bcast_sp4.bcast.status import STKMError, UnsupportedTrafficProtectionError
from bcast_sp4.bcast.stkm_drm import AccessCriteriaDescriptor
from bcast_sp4.bcast.traffic import TrafficProtection, generate

SEK = ServiceKey(key_id=1, key=bytes(range(16)), authentication_key=bytes(range(40, 60)), name="sek")
PEK = ServiceKey(key_id=0x101, key=bytes(range(16, 32)), authentication_key=bytes(range(100, 120)),
                 role=KeyRole.PROGRAMME, name="pek")
MSK = ServiceKey(key_id=0x00010001, key=bytes(range(15, -1, -1)), key_domain_id=bytes.fromhex("02f810"), name="msk")
STAMP = datetime(2025, 11, 24, 16, 0, 0, tzinfo=timezone.utc)
AC = (AccessCriteriaDescriptor(1, b"\x12"), AccessCriteriaDescriptor(3, b"abc"))


def seeded(seed):
    rnd = random.Random(seed)
    return lambda n: bytes(rnd.getrandbits(8) for _ in range(n))


@settings(max_examples=60, deadline=None)
@given(
    protection=st.sampled_from(list(TrafficProtection)),
    keys=st.sampled_from([(SEK, None), (None, PEK), (SEK, PEK)]),
    with_next=st.booleans(),
    with_time=st.booleans(),
    with_ac=st.booleans(),
    explicit=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_drm_describe_reads_what_was_built(protection, keys, with_next, with_time, with_ac, explicit, seed):
    rng = seeded(seed)
    material = generate(protection, rng)
    following = generate(protection, rng) if with_next else None
    service, programme = keys
    data = stkm_drm.build_stkm(
        material, service, programme_key=programme, next_material=following, timestamp=STAMP if with_time else None,
        access_criteria=AC if with_ac else (), explicit_key_material_length=explicit,
    )
    fields = stkm_drm.describe_stkm(data, explicit_key_material_length=explicit)
    header = dict(fields.header)
    assert [name for name, _ in fields.header][:2] == ["protocol_version", "protection_after_reception"]
    assert header["traffic_protection_protocol"] == protection and fields.protection is protection
    assert header["next_traffic_key_flag"] == with_next and header["timestamp_flag"] == with_time
    assert header["service_flag"] == (service is not None) and header["programme_flag"] == (programme is not None)
    assert fields.current.traffic_key_id == material.identifier
    assert (fields.next.traffic_key_id if fields.next else None) == (following.identifier if following else None)
    assert fields.timestamp == (STAMP if with_time else None)
    assert fields.access_criteria == (AC if with_ac else ())
    assert (fields.encrypted_PEK is not None) == (service is not None and programme is not None)
    assert fields.size == len(data)
    # the MAC blocks: ids, MAC bytes and what they cover, as the parser checks them
    last = fields.service or fields.programme
    assert data.endswith(last.mac) and last.mac_offset == len(data) - 12
    if fields.service:
        assert fields.service.cid_extension == SEK.key_id
    if fields.programme:
        assert fields.programme.cid_extension == PEK.key_id
        assert data[fields.programme.mac_offset:fields.programme.mac_offset + 12] == fields.programme.mac
    parsed = stkm_drm.parse_stkm(data, [k for k in keys if k], explicit_key_material_length=explicit)
    assert parsed.material.identifier == fields.current.traffic_key_id
    assert parsed.service_cid_extension == (fields.service.cid_extension if fields.service else None)


def test_drm_describe_refuses_what_is_not_prov2():
    data = stkm_drm.build_stkm(generate(TrafficProtection.SRTP), SEK, timestamp=STAMP)
    for bad in (data[:1], data[:-1], data + b"\x00", b"\x2c" + data[1:]):  # short, cut, trailing, version 2
        with pytest.raises(STKMError):
            stkm_drm.describe_stkm(bad)
    dcf = bytes([data[0], (data[1] & 0x1F) | (3 << 5)]) + data[2:]  # traffic_protection_protocol 3 (DCF)
    with pytest.raises(UnsupportedTrafficProtectionError):
        stkm_drm.describe_stkm(dcf)
    # a timestamp that is not BCD
    cut = data.index(stkm_drm.encode_timestamp(STAMP))
    with pytest.raises(STKMError, match="BCD"):
        stkm_drm.describe_stkm(data[:cut + 2] + b"\xff" + data[cut + 3:])


@pytest.mark.parametrize("protection", list(TrafficProtection))
def test_mikey_describe_reads_what_was_built(protection):
    rng = seeded(protection)
    material, following = generate(protection, rng), generate(protection, rng)
    data = stkm_mikey.build_stkm(material, MSK, counter=77, next_material=following, access_criteria=AC)
    fields = stkm_mikey.describe_stkm(data)
    assert [p.kind for p in fields.payloads] == ["EXT", "T", "EXT", "KEMAC"]
    assert dict(fields.hdr)["csb_id"] == MSK.key_id == fields.csb_id == fields.key_id
    assert fields.key_domain_id == MSK.key_domain_id
    assert fields.ts_type is stkm_mikey.TsType.COUNTER and fields.counter == 77
    assert fields.traffic_protection_protocol == protection and fields.access_criteria == AC
    assert fields.encryption == stkm_mikey.EncrAlg.AES_CM_128 and data.endswith(fields.mac)
    key_id_ext = dict(fields.payloads[0].fields)
    assert key_id_ext["KEY_DOMAIN_ID"] == MSK.key_domain_id and key_id_ext["SERVICE_KEY_ID"] == MSK.key_id.to_bytes(4, "big")
    assert fields.payloads[1].offset == 10 + 4 + (2 + 3) + (2 + 4)  # HDR, EXT head, two Key ID sub-payloads
    parsed = stkm_mikey.parse_stkm(data, MSK)
    assert (parsed.counter, parsed.key_id, parsed.protection) == (fields.counter, fields.key_id, protection)
    assert len(fields.encrypted_key_data) == dict(fields.payloads[3].fields)["encr_data_length"]


def test_mikey_describe_refuses_malformed():
    data = stkm_mikey.build_stkm(generate(TrafficProtection.SRTP), MSK, counter=1)
    for bad in (data[:-1], data + b"\x00", b"\x02" + data[1:], data[:9]):
        with pytest.raises(STKMError):
            stkm_mikey.describe_stkm(bad)


def test_ltkm_describe_reads_what_was_built():
    until = datetime(2030, 1, 1, tzinfo=timezone.utc)
    data = ltkm_drm.build_ltkm(b"dev-1", bytes(range(16)), [SEK, (PEK, None, until)], issued_at=STAMP, sequence=9)
    fields = ltkm_drm.describe_ltkm(data)
    assert (fields.layout_version, fields.message_kind, fields.device_id) == ("PROV-LTKM-1", 1, b"dev-1")
    assert (fields.issued_at, fields.sequence, fields.size) == (STAMP, 9, len(data))
    assert [(e.role, e.key_id, e.not_before, e.not_after) for e in fields.entries] == [
        (KeyRole.SERVICE, 1, None, None), (KeyRole.PROGRAMME, 0x101, None, until)]
    assert all(len(e.wrapped_keys) == 48 for e in fields.entries)  # RFC 5649 wrap of 16 + 20 bytes
    assert data.endswith(fields.mac) and len(fields.mac) == ltkm_drm.MAC_SIZE
    with pytest.raises(ltkm_drm.LTKMError):
        ltkm_drm.describe_ltkm(data[:-1])
    with pytest.raises(ltkm_drm.LTKMError):
        ltkm_drm.describe_ltkm(b"\x02" + data[1:])
