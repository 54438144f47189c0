"""The ECMG's ECM source (bcast/ecm.py): every failure kind becomes one ECMGenerationError.

Issue #13 item 1: a 256-byte CW in a classic DVB mode raised ``struct.error`` out of the source,
so the ECMG dropped the SCS's whole connection. Each failure kind here -- bad CW lengths, bad
CW_encryption, missing keys, and failures injected into every step of the payload and crypto
code -- must come out as :class:`ECMGenerationError` with its code (0x7000 when nothing more
precise exists), name no value in its detail, and leave the source serving the next request.
"""

from __future__ import annotations

import pytest

from bcast_sp4.bcast import cw_encryption, ecm, stkm_drm, stkm_mikey
from bcast_sp4.bcast.cw_encryption import CWAlgorithm
from bcast_sp4.bcast.ecm import DvbEcmKey, STKMSource, depacketize, parse_dvb_ecm
from bcast_sp4.bcast.keys import KeyStore, ServiceKey
from bcast_sp4.bcast.traffic import TrafficProtection, encode_cw, generate
from bcast_sp4.bcast.ecm_request import CasMode, ECMGenerationError, ECMRequest
from bcast_sp4.wire.params import CPCWCombination

DRM, CARD, DVB, DVB_TS, EXPIRED_DRM = 0x00010001, 0x00020001, 0x4AE60000, 0x4AE60001, 0x00010002
NOW = 1_700_000_123.5
DVB_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
CW_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
SECRET = bytes.fromhex("5ec2e75ec2e75ec2")  # CW bytes that must never show up in an error's detail
MODES = {DRM: CasMode.DRM_PROFILE, CARD: CasMode.SMARTCARD_PROFILE, DVB: CasMode.DVB_SECTIONS,
         DVB_TS: CasMode.DVB_TS_PACKETS, EXPIRED_DRM: CasMode.DRM_PROFILE}


def make_source() -> STKMSource:
    store = KeyStore()
    store.add(DRM, 1, ServiceKey(key_id=1, key=bytes(range(16)), authentication_key=bytes(range(20))))
    store.add(CARD, 1, ServiceKey(key_id=0x10001, key=bytes(range(16, 32)), key_domain_id=bytes.fromhex("02f810")))
    store.add(EXPIRED_DRM, 1, ServiceKey(key_id=9, key=bytes(16), authentication_key=bytes(20), not_after=1_600_000_000))
    return STKMSource(store, MODES, dvb_keys={DVB: DVB_KEY, DVB_TS: DVB_KEY}, cw_encryption_keys={7: CW_KEY})


def tek_cw() -> bytes:
    return encode_cw(generate(TrafficProtection.SRTP))


def good_cws(scid: int, cp: int = 10) -> list[tuple[int, bytes]]:
    if MODES[scid] in (CasMode.DVB_SECTIONS, CasMode.DVB_TS_PACKETS):
        return [(cp, SECRET), (cp + 1, bytes(range(8)))]
    return [(cp, tek_cw()), (cp + 1, tek_cw())]


def request(scid: int, cws=None, cp: int = 10, ecm_id: int = 1, **kw) -> ECMRequest:
    fields = dict(access_criteria=None, CW_encryption=None, now=NOW) | kw
    cws = good_cws(scid, cp) if cws is None else cws
    return ECMRequest(
        super_CAS_id=scid, mode=MODES[scid], ECM_id=ecm_id, channel_id=1, stream_id=1, CP_number=cp,
        CP_CW_combination=tuple(CPCWCombination(c, w) for c, w in cws), CP_duration=10, **fields,
    )


def refused(source: STKMSource, req: ECMRequest) -> ECMGenerationError:
    with pytest.raises(ECMGenerationError) as caught:
        source.generate(req)
    detail = caught.value.detail
    assert SECRET.hex() not in detail and repr(SECRET) not in detail and "5ec2" not in detail
    return caught.value


def assert_serves(source: STKMSource, scid: int, cp: int = 20) -> None:
    """The source still makes a good ECM for this Super_CAS_id (nothing was left half-done)."""
    cws = good_cws(scid, cp)
    datagram = source.generate(request(scid, cws, cp))
    if MODES[scid] is CasMode.DVB_TS_PACKETS:
        datagram = depacketize(datagram)
    if MODES[scid] in (CasMode.DVB_SECTIONS, CasMode.DVB_TS_PACKETS):
        assert parse_dvb_ecm(datagram, DVB_KEY) == (1, cp, cws)
    else:
        assert datagram[:1] != b""


# -- CW lengths in the classic DVB modes (the reproduction and its neighbours) -------------------

@pytest.mark.parametrize("scid", [DVB, DVB_TS])
@pytest.mark.parametrize("length", [0, 256, 300, 4000])
@pytest.mark.parametrize("position", [0, 1])
def test_dvb_cw_the_test_ecm_cannot_carry_is_an_inconsistent_length(scid, length, position):
    source = make_source()
    cws = good_cws(scid)
    cws[position] = (cws[position][0], bytes(length))
    error = refused(source, request(scid, cws))
    assert error.error_status == 0x000F  # inv_param_length: the CP_CW_combination's length
    assert f"CP_number {cws[position][0]}" in error.detail and f"{length} bytes" in error.detail
    assert_serves(source, scid)


@pytest.mark.parametrize("length", [1, 8, 16, 255])
def test_dvb_cw_lengths_the_test_ecm_carries(length):
    source = make_source()
    cws = [(10, bytes(i * 7 & 0xFF for i in range(length))), (11, SECRET)]
    assert parse_dvb_ecm(source.generate(request(DVB, cws)), DVB_KEY) == (1, 10, cws)


def test_dvb_cws_too_long_together_for_one_section_are_an_invalid_value():
    source = make_source()
    cws = [(10 + i, bytes([i]) * 255) for i in range(16)]  # each fine; 14 + 16 x 258 + 12 > 4093
    assert refused(source, request(DVB, cws)).error_status == 0x0011
    assert parse_dvb_ecm(source.generate(request(DVB, cws[:15])), DVB_KEY) == (1, 10, cws[:15])  # 3,896 bytes fit


def test_dvb_more_cws_than_the_count_byte_holds_are_an_invalid_value():
    source = make_source()
    cws = [((10 + i) & 0xFFFF, b"\x01") for i in range(256)]
    assert refused(source, request(DVB, cws)).error_status == 0x0011
    assert parse_dvb_ecm(source.generate(request(DVB, cws[:255])), DVB_KEY)[2] == cws[:255]


def test_dvb_key_changed_in_place_is_followed():
    source = make_source()
    source.generate(request(DVB))
    source.dvb_keys[DVB] = bytes(16)
    assert parse_dvb_ecm(source.generate(request(DVB)), bytes(16))[1] == 10
    assert isinstance(source._dvb_states[DVB], DvbEcmKey)


# -- the same bytes in the BCAST modes, and their other precise codes -----------------------------------

@pytest.mark.parametrize("scid", [DRM, CARD])
@pytest.mark.parametrize("length", [0, 1, 256, 4000])
def test_bcast_cw_that_is_no_tek_is_invalid_traffic_key_material(scid, length):
    source = make_source()
    cws = good_cws(scid)
    cws[0] = (10, bytes(length))
    assert refused(source, request(scid, cws)).error_status == 0xFF04
    assert_serves(source, scid)


@pytest.mark.parametrize("scid", [DRM, CARD])
def test_no_cw_for_the_requested_period_is_not_enough_cws(scid):
    # (the machine checks the CP_numbers first; the source holds on its own)
    source = make_source()
    cws = good_cws(scid, 30)  # CPs 30 and 31 for a request about CP 10
    assert refused(source, request(scid, cws, cp=10)).error_status == 0x000B
    assert_serves(source, scid)


def test_no_key_and_expired_key_have_their_bcast_codes():
    source = make_source()
    assert refused(source, request(DRM, ecm_id=77)).error_status == 0xFF01
    assert refused(source, request(EXPIRED_DRM)).error_status == 0xFF02
    with pytest.raises(ECMGenerationError) as caught:
        source.check_stream(DRM, 77, NOW)
    assert caught.value.error_status == 0xFF01


def test_access_criteria_that_are_no_descriptor_loop_are_an_invalid_value():
    source = make_source()
    assert refused(source, request(DRM, access_criteria=b"\x01\x05ab")).error_status == 0x0011


@pytest.mark.parametrize("scid", [DRM, DVB])
@pytest.mark.parametrize(
    "header",
    [bytes([CWAlgorithm.AES128_CBC, 0, 8]) + bytes(16), bytes([9, 0, 7]), bytes([CWAlgorithm.AES128_KEY_WRAP, 0]),
     bytes([CWAlgorithm.AES128_KEY_WRAP, 0, 7, 0]), bytes([CWAlgorithm.AES128_CBC, 0, 7]) + bytes(16)],
    ids=["unknown key id", "unknown algorithm", "short", "wrap header too long", "wrong key (bad padding)"],
)
def test_cw_encryption_failures_are_invalid_traffic_key_material(scid, header):
    source = make_source()
    cws = [(cp, bytes(range(16)) * 3) for cp, _ in good_cws(scid)]
    assert refused(source, request(scid, cws, CW_encryption=header)).error_status == 0xFF04
    good_header, encrypted = cw_encryption.encrypt(CWAlgorithm.AES128_CBC, 7, CW_KEY, good_cws(scid, 40))
    assert source.generate(request(scid, list(zip((40, 41), encrypted)), cp=40, CW_encryption=good_header))


def test_cw_encryption_of_a_cw_the_dvb_test_ecm_cannot_carry():
    source = make_source()
    header, encrypted = cw_encryption.encrypt(CWAlgorithm.AES128_KEY_WRAP, 7, CW_KEY, [(10, bytes(256)), (11, SECRET)])
    assert refused(source, request(DVB, list(zip((10, 11), encrypted)), CW_encryption=header)).error_status == 0x000F


# -- failures injected into each step: never an exception of another kind ------------------------------

def _raise(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


INJECTIONS = [
    # (what fails, Super_CAS_id, how to make it fail)
    ("DRM STKM build", DRM, lambda mp, src: mp.setattr(stkm_drm, "build_stkm", _raise(RuntimeError(SECRET.hex())))),
    ("MIKEY STKM build", CARD, lambda mp, src: mp.setattr(stkm_mikey, "build_stkm", _raise(OverflowError(SECRET.hex())))),
    ("TEK decoding", DRM, lambda mp, src: mp.setattr(ecm, "decode_cw", _raise(KeyError(SECRET)))),
    ("access criteria walk", DRM, lambda mp, src: mp.setattr(stkm_drm, "decode_access_criteria", _raise(IndexError()))),
    ("key store", DRM, lambda mp, src: mp.setattr(src.keys, "lookup_span", _raise(ZeroDivisionError()))),
    ("Smartcard key store", CARD, lambda mp, src: mp.setattr(src.keys, "lookup_span", _raise(AttributeError()))),
    ("DVB keystream", DVB, lambda mp, src: mp.setattr(DvbEcmKey, "crypt", _raise(ValueError(SECRET.hex())))),
    ("DVB MAC", DVB, lambda mp, src: mp.setattr(DvbEcmKey, "mac", _raise(TypeError()))),
    ("random source", DVB, lambda mp, src: mp.setattr(src, "rng", _raise(OSError("getrandom failed")))),
    ("TS packetizer", DVB_TS, lambda mp, src: mp.setattr(ecm, "packetize", _raise(AssertionError()))),
    ("DVB key gone", DVB, lambda mp, src: mp.setattr(src, "dvb_keys", {})),
    ("CW decryption", DRM, lambda mp, src: mp.setattr(cw_encryption.CWDecryptor, "_cbc", _raise(struct_error()))),
]


def struct_error():
    import struct

    return struct.error("ubyte format requires 0 <= number <= 255")


@pytest.mark.parametrize(("what", "scid", "inject"), INJECTIONS, ids=[i[0] for i in INJECTIONS])
def test_any_failure_inside_the_source_is_an_unknown_error_for_that_request(what, scid, inject, monkeypatch):
    source = make_source()
    kw = {}
    if what == "CW decryption":
        header, encrypted = cw_encryption.encrypt(CWAlgorithm.AES128_CBC, 7, CW_KEY, good_cws(scid))
        kw = dict(cws=list(zip((10, 11), encrypted)), CW_encryption=header)
    if what == "access criteria walk":
        kw = dict(access_criteria=bytes.fromhex("01010c"))
    with monkeypatch.context() as patch:
        inject(patch, source)
        error = refused(source, request(scid, **kw))
    assert error.error_status == 0x7000, (what, error)
    assert error.detail.startswith("unexpected ") and " at " in error.detail  # the type and where, no value
    assert_serves(source, scid)


def test_running_out_of_memory_is_out_of_storage(monkeypatch):
    source = make_source()
    monkeypatch.setattr(stkm_drm, "build_stkm", _raise(MemoryError()))
    assert refused(source, request(DRM)).error_status == 0x000C


def test_check_stream_failures_are_error_replies_too(monkeypatch):
    source = make_source()
    monkeypatch.setattr(source.keys, "lookup", _raise(RuntimeError("boom")))
    with pytest.raises(ECMGenerationError) as caught:
        source.check_stream(DRM, 1, NOW)
    assert caught.value.error_status == 0x7000 and "RuntimeError" in caught.value.detail
    assert "boom" not in caught.value.detail
    source.check_stream(DVB, 1, NOW)  # no key store involved
    monkeypatch.setattr(source, "cas_modes", {})
    with pytest.raises(ECMGenerationError) as caught:
        source.check_stream(DVB, 1, NOW)
    assert caught.value.error_status == 0x7000 and "KeyError" in caught.value.detail
