"""The struct / cached-crypto fast paths against their construct / one-shot references.

Every fast path in ``bcast_sp4.bcast`` keeps its reference reachable (``reference=True``); these
properties check that both give the same bytes, the same objects and the same errors.
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import math
import random
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from hypothesis import strategies as st

from bcast_sp4.bcast import cw_encryption, stkm_drm, stkm_mikey
from bcast_sp4.bcast.cw_encryption import CWAlgorithm, CWDecryptor, CWEncryptionError
from bcast_sp4.bcast.ecm import DvbEcmKey, STKMSource, build_dvb_ecm, parse_dvb_ecm
from bcast_sp4.bcast.keys import KeyRole, KeyStore, PerKeyCache, ServiceKey, _posix_us, to_datetime
from bcast_sp4.bcast.stkm_drm import AccessCriteriaDescriptor, decode_access_criteria, encode_timestamp
from bcast_sp4.bcast.stkm_mikey import EncrAlg
from bcast_sp4.bcast.traffic import IPsecMaterial, TrafficProtection, decode_cw, encode_cw, generate
from bcast_sp4.bcast.ecm_request import CasMode, ECMRequest
from bcast_sp4.wire.params import CPCWCombination

UTC = timezone.utc
MJD_END = 2155593600  # first second after 2038-04-22 (MJD 0xFFFF)


def outcome(fn, *args, **kwargs):
    """``("ok", result)`` or ``("raise", type, message)``: what a call did, comparable."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the point is to compare any failure
        return ("raise", type(exc), str(exc))


# --- strategies ------------------------------------------------------------------------------------

def _material(protection, seed, auth, id_length):
    rng = random.Random(seed).randbytes
    if protection is TrafficProtection.IPSEC:
        return generate(protection, rng, authenticated=auth)
    if protection is TrafficProtection.SRTP:
        return generate(protection, rng, mki_length=id_length)
    return generate(protection, rng, key_indicator_length=id_length)


def materials(protection):
    return st.builds(_material, st.just(protection), st.integers(0, 2**32), st.booleans(), st.integers(0, 255))


u32 = st.integers(0, 0xFFFFFFFF)
key_bytes = st.binary(min_size=16, max_size=16)
service_keys = st.builds(
    ServiceKey, key_id=u32, key=key_bytes, authentication_key=st.binary(min_size=16, max_size=64),
    role=st.just(KeyRole.SERVICE),
)
programme_keys = st.builds(
    ServiceKey, key_id=u32, key=key_bytes, authentication_key=st.binary(min_size=16, max_size=64),
    role=st.just(KeyRole.PROGRAMME),
)
descriptors = st.lists(
    st.builds(AccessCriteriaDescriptor, st.integers(0, 255), st.binary(max_size=12)), max_size=4
)
# Times: whole and fractional POSIX seconds (some on sub-microsecond rounding edges), out-of-range
# and non-finite values (the fast encoders must defer to the reference there), aware datetimes.
second_edges = st.builds(
    lambda s, frac: s + frac,
    st.integers(0, MJD_END + 86_400),
    st.sampled_from([0.0, 0.4999995, 0.5, 0.9999994, 0.9999995, 0.9999996, 0.99999999]),
)
timestamps = st.one_of(
    st.none(),
    st.integers(-(2**33), 2**33),
    st.floats(-1e11, 1e11, allow_nan=False),
    second_edges,
    st.sampled_from([math.nan, math.inf, -math.inf, 0, 0.0, MJD_END - 1, MJD_END, MJD_END - 0.0000001]),
    st.datetimes(min_value=datetime(1858, 11, 17), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)),
)


# --- DRM Profile STKM --------------------------------------------------------------------------------

@pytest.mark.parametrize("protection", list(TrafficProtection))
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_drm_fast_build_matches_construct_reference(protection, data):
    draw = data.draw
    keyset = draw(st.sampled_from(["service", "programme", "both"]))
    sek = draw(service_keys) if keyset != "programme" else None
    pek = draw(programme_keys) if keyset != "service" else None
    cur = draw(materials(protection))
    nxt = draw(st.none() | materials(protection))
    kwargs = dict(
        programme_key=pek,
        next_material=nxt,
        timestamp=draw(timestamps),
        protection_after_reception=draw(st.integers(0, 3)),
        traffic_authentication=draw(st.none() | st.booleans()),
        access_criteria=draw(descriptors),
        explicit_key_material_length=draw(st.booleans()),
    )
    fast = outcome(stkm_drm.build_stkm, cur, sek, **kwargs)
    ref = outcome(stkm_drm.build_stkm, cur, sek, reference=True, **kwargs)
    assert fast == ref
    if fast[0] == "ok":
        msg, explicit = fast[1], kwargs["explicit_key_material_length"]
        keys = [k for k in (sek, pek) if k is not None]
        assert stkm_drm.parse_stkm(msg, keys, explicit_key_material_length=explicit) == stkm_drm.parse_stkm(
            msg, keys, explicit_key_material_length=explicit, reference=True
        )


def test_drm_fast_build_reproduces_the_fixtures():
    sak = bytes.fromhex("5341b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1")
    sek = ServiceKey(key_id=1, key=bytes(range(16)), authentication_key=sak)
    tek = IPsecMaterial(spi=0x1234, encryption_key=bytes.fromhex("00112233445566778899aabbccddeeff"))
    stamp = datetime(2009, 2, 12, 12, tzinfo=UTC).timestamp()
    assert stkm_drm.build_stkm(tek, sek, timestamp=stamp).hex() == (
        "1c050000123410" "69c4e0d86a7b0430d8cdb78070b4c55a" "d65a120000" "00000001" "f05c5ae328f7cdbf8f591ff6"
    )


@settings(max_examples=400, deadline=None)
@given(timestamps.filter(lambda t: t is not None))
def test_timestamp_fast_matches_encode_timestamp(when):
    assert outcome(stkm_drm._timestamp_fast, when) == outcome(encode_timestamp, when)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=40),
    descriptors.map(stkm_drm.encode_access_criteria),
    descriptors.map(stkm_drm.encode_access_criteria).flatmap(
        lambda raw: st.integers(0, max(len(raw) - 1, 0)).map(lambda n: raw[:n])
    ),
))
def test_access_criteria_walk_matches_schema(raw):
    assert outcome(decode_access_criteria, raw) == outcome(decode_access_criteria, raw, reference=True)


# --- Smartcard Profile STKM ----------------------------------------------------------------------------

msks = st.builds(
    ServiceKey, key_id=u32, key=key_bytes,
    key_domain_id=st.sampled_from([b"", b"\x02\xf8\x10"]) | st.binary(min_size=3, max_size=3),
)


@pytest.mark.parametrize("protection", list(TrafficProtection))
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_mikey_fast_build_matches_construct_reference(protection, data):
    draw = data.draw
    msk = draw(msks)
    cur = draw(materials(protection))
    kwargs = dict(
        counter=draw(u32),
        next_material=draw(st.none() | materials(protection)),
        csb_id=draw(st.none() | u32 | st.just(msk.key_id)),
        protection_after_reception=draw(st.integers(0, 3)),
        traffic_authentication=draw(st.none() | st.booleans()),
        access_criteria=draw(descriptors),
        encryption=draw(st.sampled_from([EncrAlg.AES_CM_128, EncrAlg.NULL])),
    )
    fast = outcome(stkm_mikey.build_stkm, cur, msk, **kwargs)
    ref = outcome(stkm_mikey.build_stkm, cur, msk, reference=True, **kwargs)
    assert fast == ref
    if fast[0] == "ok":
        null = kwargs["encryption"] is EncrAlg.NULL
        assert stkm_mikey.parse_stkm(fast[1], msk, allow_null_encryption=null) == stkm_mikey.parse_stkm(
            fast[1], msk, allow_null_encryption=null, reference=True
        )


# --- CW layout ------------------------------------------------------------------------------------------

def cws():
    valid = st.sampled_from(list(TrafficProtection)).flatmap(materials).map(encode_cw)

    def mutate(raw, data):
        how = data.draw(st.sampled_from(["same", "truncate", "extend", "flip"]))
        if how == "truncate":
            return raw[: data.draw(st.integers(0, len(raw) - 1))]
        if how == "extend":
            return raw + data.draw(st.binary(min_size=1, max_size=3))
        if how == "flip":  # mostly a version, code, algorithm, SPI or length byte
            framing = [0, 1, 2, 3, 4, 5, 6, 7, 24, 25] if raw[1] == 0 else [0, 1, 2, 3 + raw[2], 20 + raw[2]]
            i = data.draw(st.sampled_from(framing) | st.integers(0, len(raw) - 1))
            value = data.draw(st.integers(0, 255).filter(lambda v: v != raw[i]))
            return raw[:i] + bytes([value]) + raw[i + 1 :]
        return raw

    mutated = st.tuples(valid, st.data()).map(lambda t: mutate(*t))

    # Well-framed CWs whose field values stray from what the material classes accept (small SPI,
    # other algorithm ids, other key/salt lengths, lengths that disagree with the bytes given).
    def length_and_bytes(usual):
        sized = lambda n: st.binary(min_size=n, max_size=n)  # noqa: E731
        return st.one_of(st.just(usual), st.integers(0, 40)).flatmap(
            lambda n: st.tuples(st.just(n), sized(n) | sized(usual) | st.binary(max_size=40))
        )

    def framed(version, code, *parts):
        out = bytes([version, code])
        for part in parts:
            out += part
        return out

    ipsec = st.builds(
        lambda v, spi, ealg, ekey, aalg, akey: framed(
            v, 0, spi.to_bytes(4, "big"), bytes([ealg, ekey[0]]), ekey[1], bytes([aalg, akey[0]]), akey[1]
        ),
        st.sampled_from([1, 1, 1, 2]),
        st.sampled_from([0, 1, 255, 256, 257, 0xFFFFFFFF]) | u32,
        st.sampled_from([12, 12, 0, 13]),
        length_and_bytes(16),
        st.sampled_from([0, 2, 1, 3]),
        st.sampled_from([(0, b""), (20, bytes(20))]) | length_and_bytes(20),
    )
    salted = st.builds(
        lambda code, ident, key, salt: framed(
            1, code, bytes([ident[0]]), ident[1], bytes([key[0]]), key[1], bytes([salt[0]]), salt[1]
        ),
        st.sampled_from([1, 2]),
        st.integers(0, 6).flatmap(lambda n: st.tuples(st.just(n), st.binary(min_size=n, max_size=n)))
        | length_and_bytes(3),
        length_and_bytes(16),
        st.sampled_from([14, 8]).flatmap(length_and_bytes),
    )
    return st.one_of(valid, mutated, ipsec, salted, st.binary(max_size=60))


@settings(max_examples=500, deadline=None)
@given(cws(), st.none() | st.sampled_from(list(TrafficProtection)))
def test_decode_cw_fast_matches_construct_reference(raw, protection):
    fast = outcome(decode_cw, protection, raw)
    assert fast == outcome(decode_cw, protection, raw, reference=True)
    if fast[0] == "ok":
        assert encode_cw(fast[1]) == encode_cw(fast[1], reference=True) == raw


@pytest.mark.parametrize(
    ("protection", "auth", "id_length"),
    [(TrafficProtection.IPSEC, False, 0), (TrafficProtection.IPSEC, True, 0), (TrafficProtection.SRTP, False, 0),
     (TrafficProtection.SRTP, False, 2), (TrafficProtection.ISMACRYP, False, 3)],
)
def test_decode_cw_every_single_byte_change_matches_reference(protection, auth, id_length):
    raw = encode_cw(_material(protection, 7, auth, id_length))
    for i in range(len(raw)):
        for value in range(256):
            changed = raw[:i] + bytes([value]) + raw[i + 1 :]
            assert outcome(decode_cw, None, changed) == outcome(decode_cw, None, changed, reference=True), (i, value)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(TrafficProtection)).flatmap(materials))
def test_encode_cw_fast_matches_construct_reference(material):
    assert encode_cw(material) == encode_cw(material, reference=True)


# --- key store ----------------------------------------------------------------------------------------

BASE = 1_700_000_000


@st.composite
def stores(draw):
    store = KeyStore()
    bounds = [BASE + draw(st.integers(-5, 5)) + draw(st.sampled_from([0, 0.5, 0.999999])) for _ in range(4)]
    for i in range(draw(st.integers(0, 5))):
        nb = draw(st.none() | st.sampled_from(bounds))
        na = draw(st.none() | st.sampled_from(bounds))
        if nb is not None and na is not None and na <= nb:
            na = None
        role = draw(st.sampled_from(list(KeyRole)))
        store.add(0x00010001, draw(st.integers(1, 2)), ServiceKey(
            key_id=i, key=bytes(16), authentication_key=bytes(20), role=role, not_before=nb, not_after=na,
        ))
    return store


lookup_times = st.one_of(
    st.builds(lambda s, f: BASE + s + f, st.integers(-7, 7), st.sampled_from(
        [0.0, 0.5, 0.9999989, 0.9999994, 0.9999995, 0.9999996, 0.999999, 0.4999995, 0.0000005]
    )),
    st.integers(BASE - 7, BASE + 7),
    st.floats(-1.0, 2e10) | st.just(math.nan),
    st.datetimes(
        min_value=datetime(2023, 11, 14, 22, 13), max_value=datetime(2023, 11, 14, 22, 14),
        timezones=st.just(UTC) | st.none(),  # naive: ValueError, unless the stream has no key of the role
    ),
)


@settings(max_examples=400, deadline=None)
@given(stores(), st.integers(1, 3), st.sampled_from(list(KeyRole)), st.lists(lookup_times, min_size=1, max_size=6))
def test_lookup_index_matches_scan(store, ecm_id, role, times):
    for t in times:
        fast = outcome(store.lookup, 0x00010001, ecm_id, t, role=role)
        assert fast == outcome(store.lookup, 0x00010001, ecm_id, t, role=role, reference=True)
        if fast[0] == "ok" or issubclass(fast[1], LookupError):  # NoKeyError, KeyNotValidError -> default
            with_default = store.lookup(0x00010001, ecm_id, t, role=role, default=None)
            assert with_default == (fast[1] if fast[0] == "ok" else None)
        else:  # other errors (e.g. a naive datetime) are not swallowed
            assert outcome(store.lookup, 0x00010001, ecm_id, t, role=role, default=None) == fast


def test_lookup_index_follows_add():
    store = KeyStore()
    old = ServiceKey(key_id=1, key=bytes(16), not_before=BASE - 100)
    store.add(0x00010001, 1, old)
    assert store.lookup(0x00010001, 1, BASE) is old
    new = ServiceKey(key_id=2, key=bytes(16), not_before=BASE - 10)
    store.add(0x00010001, 1, new)
    assert store.lookup(0x00010001, 1, BASE) is new
    assert store.lookup(0x00010001, 1, BASE - 11) is old


@settings(max_examples=500, deadline=None)
@given(st.floats(0, 1e10, exclude_max=True) | st.integers(0, 10**10 - 1))
def test_posix_us_rounds_like_to_datetime(value):
    us = _posix_us(value)
    assert datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us) == to_datetime(value)


# --- per-key cache ---------------------------------------------------------------------------------------

def test_per_key_cache_is_per_object_and_dropped_with_the_key():
    calls = []
    cache = PerKeyCache(lambda k: calls.append(k.key_id) or object())
    a = ServiceKey(key_id=1, key=bytes(16))
    twin = ServiceKey(key_id=1, key=bytes(16))  # equal, but another object: its own entry
    assert cache(a) is cache(a)
    assert cache(twin) is not cache(a)
    assert calls == [1, 1] and len(cache) == 2
    del a, twin
    gc.collect()
    assert len(cache) == 0


def test_cached_state_hides_key_bytes():
    sek = ServiceKey(key_id=7, key=bytes.fromhex("deadbeef" * 4), authentication_key=bytes.fromhex("c0ffee" * 6))
    stkm_drm.build_stkm(generate(TrafficProtection.SRTP), sek)
    stkm_mikey.build_stkm(generate(TrafficProtection.SRTP), sek, counter=1)
    for text in (repr(stkm_drm._KEY_STATE), repr(stkm_drm._KEY_STATE(sek)), repr(stkm_mikey._MESSAGE_KEYS(sek))):
        assert "deadbeef" not in text and "c0ffee" not in text


def test_a_new_key_object_with_the_same_id_is_not_served_stale_state():
    tek = generate(TrafficProtection.SRTP)
    first = ServiceKey(key_id=1, key=bytes(16), authentication_key=bytes(20))
    stkm_drm.build_stkm(tek, first)
    second = ServiceKey(key_id=1, key=bytes(range(16)), authentication_key=bytes(range(20)))
    assert stkm_drm.build_stkm(tek, second) == stkm_drm.build_stkm(tek, second, reference=True)
    assert stkm_drm.parse_stkm(stkm_drm.build_stkm(tek, second), second).material == tek


# --- the ECMG's STKM source ---------------------------------------------------------------------------------

@pytest.mark.parametrize("with_pek", [False, True])
@pytest.mark.parametrize("access_criteria", [None, bytes.fromhex("01010c0200")])
def test_stkm_source_drm_output_is_the_reference_build(with_pek, access_criteria):
    sek = ServiceKey(key_id=1, key=bytes(16), authentication_key=bytes(20), not_before=BASE - 100)
    pek = ServiceKey(key_id=2, key=bytes(range(16)), authentication_key=bytes(20), role=KeyRole.PROGRAMME)
    store = KeyStore()
    store.add(0x00010001, 1, sek)
    if with_pek:
        store.add(0x00010001, 1, pek)
    source = STKMSource(store, {0x00010001: CasMode.DRM_PROFILE})
    cur, nxt = generate(TrafficProtection.SRTP), generate(TrafficProtection.SRTP)
    request = ECMRequest(
        super_CAS_id=0x00010001, mode=CasMode.DRM_PROFILE, ECM_id=1, channel_id=1, stream_id=1, CP_number=9,
        CP_CW_combination=(CPCWCombination(9, encode_cw(cur)), CPCWCombination(10, encode_cw(nxt))),
        CP_duration=100, access_criteria=access_criteria, CW_encryption=None, now=BASE + 0.25,
    )
    want = stkm_drm.build_stkm(
        cur, sek, programme_key=pek if with_pek else None, next_material=nxt, timestamp=BASE + 0.25,
        access_criteria=decode_access_criteria(access_criteria, reference=True) if access_criteria else (),
        reference=True,
    )
    assert source.generate(request) == want


# --- classic DVB test ECM: the straightforward construction, written out here -------------------------------

def _reference_dvb_ecm(key: bytes, ecm_id: int, cp_number: int, cws: list[tuple[int, bytes]], nonce: bytes) -> bytes:
    """The test-ECM format v1 of ecm.py's docstring, step by step with one-shot crypto objects."""
    enc_key = hmac.new(key, b"bcast-sp4 dvb-ecm enc", hashlib.sha256).digest()[:16]
    mac_key = hmac.new(key, b"bcast-sp4 dvb-ecm mac", hashlib.sha256).digest()
    body = bytes([1]) + ecm_id.to_bytes(2, "big") + cp_number.to_bytes(2, "big") + nonce + bytes([len(cws)])
    for index, (cp, cw) in enumerate(cws):
        ctr = Cipher(algorithms.AES(enc_key), modes.CTR(nonce + index.to_bytes(8, "big"))).encryptor()
        body += cp.to_bytes(2, "big") + bytes([len(cw)]) + ctr.update(cw) + ctr.finalize()
    length = len(body) + 12
    header = bytes([0x80 | (cp_number & 1), 0x70 | (length >> 8), length & 0xFF])
    return header + body + hmac.new(mac_key, header + body, hashlib.sha1).digest()[:12]


dvb_cw_lists = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(min_size=1, max_size=255)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=16),
    ecm_id=st.integers(0, 0xFFFF),
    cp_number=st.integers(0, 0xFFFF),
    cws=dvb_cw_lists,
    nonce=st.binary(min_size=8, max_size=8),
)
def test_dvb_ecm_fast_build_matches_the_straightforward_one(key, ecm_id, cp_number, cws, nonce):
    want = _reference_dvb_ecm(key, ecm_id, cp_number, cws, nonce)
    state = DvbEcmKey(key)
    for keyed in (key, state, state):  # raw key, derived state, and that state again (reused contexts)
        assert build_dvb_ecm(keyed, ecm_id, cp_number, cws, lambda n: nonce) == want
    assert parse_dvb_ecm(want, key) == parse_dvb_ecm(want, state) == (ecm_id, cp_number, cws)


def test_dvb_ecm_of_two_dvb_csa_cws_is_the_straightforward_one_many_times():
    # the ECMG's case: one key state, 8-byte CWs, consecutive ECMs sharing the cached contexts
    key = bytes.fromhex("00112233445566778899aabbccddeeff")
    state, rng = DvbEcmKey(key), random.Random(7)
    for cp in range(200):
        cws = [(cp, rng.randbytes(8)), (cp + 1, rng.randbytes(8))]
        nonce = rng.randbytes(8)
        section = build_dvb_ecm(state, 3, cp, cws, lambda n: nonce)
        assert section == _reference_dvb_ecm(key, 3, cp, cws, nonce)
        assert parse_dvb_ecm(section, state) == (3, cp, cws)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_dvb_ecm_parse_refuses_any_altered_section(data):
    key = bytes(range(16))
    section = build_dvb_ecm(key, 1, 2, data.draw(dvb_cw_lists), lambda n: bytes(8))
    position = data.draw(st.integers(0, len(section) - 1))
    altered = bytearray(section)
    altered[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ValueError):
        parse_dvb_ecm(bytes(altered), key)
    with pytest.raises(ValueError):
        parse_dvb_ecm(section, bytes(16))  # wrong key: MAC


def test_dvb_key_state_hides_key_bytes_and_follows_its_key():
    key = bytes.fromhex("deadbeef" * 4)
    state = DvbEcmKey(key)
    assert "deadbeef" not in repr(state) and "DvbEcmKey" in repr(state)
    assert state.derived_from(key) and state.derived_from(bytes(key)) and not state.derived_from(bytes(16))


# --- CW_encryption: the cached-context decryption against the library's one-shot objects --------------------

def _reference_decrypt(header: bytes, key: bytes, cws: list[tuple[int, bytes]]):
    """CW_encryption decryption with cryptography's KWP unwrap and a CBC Cipher + PKCS7 unpadder per CW."""
    out = []
    for cp, cw in cws:
        if header[0] == CWAlgorithm.AES128_KEY_WRAP:
            out.append(aes_key_unwrap_with_padding(key, cw))
        else:
            iv = header[3:17] + bytes([header[17] ^ (cp >> 8), header[18] ^ (cp & 0xFF)])
            dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
            unpadder = sym_padding.PKCS7(128).unpadder()
            out.append(unpadder.update(dec.update(cw) + dec.finalize()) + unpadder.finalize())
    return out


def _same_decryption(header, key, cws):
    """Both paths agree: the same plaintexts, or both refuse."""
    try:
        want = ("ok", _reference_decrypt(header, key, cws))
    except (InvalidUnwrap, ValueError):
        want = ("refused",)
    try:
        got = ("ok", CW_DECRYPTOR.decrypt(header, {7: key}, cws))
    except CWEncryptionError:
        got = ("refused",)
    assert got == want
    return got


CW_DECRYPTOR = CWDecryptor()  # one for the whole module: its cached contexts are what is tested
cw_pairs = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(min_size=1, max_size=40)), min_size=1, max_size=4)


@pytest.mark.parametrize("algorithm", list(CWAlgorithm))
@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from([bytes(16), bytes(range(16)), bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")]),
       cws=cw_pairs, seed=st.integers(0, 2**32))
def test_cw_decryption_matches_the_one_shot_objects(algorithm, key, cws, seed):
    header, encrypted = cw_encryption.encrypt(algorithm, 7, key, cws, random.Random(seed).randbytes)
    wrapped = list(zip((cp for cp, _ in cws), encrypted))
    assert _same_decryption(header, key, wrapped) == ("ok", [cw for _, cw in cws])
    assert cw_encryption.decrypt(header, {7: key}, wrapped) == [cw for _, cw in cws]


@pytest.mark.parametrize("algorithm", list(CWAlgorithm))
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_cw_decryption_of_altered_or_random_input_matches_the_one_shot_objects(algorithm, data):
    key = bytes(range(16))
    cws = data.draw(cw_pairs)
    header, encrypted = cw_encryption.encrypt(algorithm, 7, key, cws, random.Random(1).randbytes)
    wrapped = [list(pair) for pair in zip((cp for cp, _ in cws), encrypted)]
    which = data.draw(st.integers(0, len(wrapped) - 1))
    how = data.draw(st.sampled_from(["flip", "random", "truncate", "wrong key"]))
    if how == "flip":
        cw = bytearray(wrapped[which][1])
        cw[data.draw(st.integers(0, len(cw) - 1))] ^= data.draw(st.integers(1, 255))
        wrapped[which][1] = bytes(cw)
    elif how == "random":  # any length: a peer's bytes
        wrapped[which][1] = data.draw(st.binary(min_size=0, max_size=48))
    elif how == "truncate":
        wrapped[which][1] = wrapped[which][1][: data.draw(st.integers(0, len(wrapped[which][1]) - 1))]
    else:
        key = bytes(16)
    outcome = _same_decryption(header, key, [tuple(pair) for pair in wrapped])  # both paths agree (asserted there)
    if algorithm is CWAlgorithm.AES128_KEY_WRAP and how in ("flip", "wrong key"):
        assert outcome == ("refused",)  # key wrap's integrity check: an altered CW or another key never unwraps


def test_cw_decryptor_follows_a_changed_key():
    decryptor, cws = CWDecryptor(), [(1, bytes(range(8))), (2, bytes(8))]
    for key in (bytes(16), bytes(range(16)), bytes(16)):
        for algorithm in CWAlgorithm:
            header, encrypted = cw_encryption.encrypt(algorithm, 7, key, cws)
            assert decryptor.decrypt(header, {7: key}, list(zip((1, 2), encrypted))) == [cw for _, cw in cws]


@pytest.mark.parametrize(
    ("block", "ok"),
    [
        (bytes.fromhex("a65959a6 00000005") + b"abcde" + bytes(3), True),
        (bytes.fromhex("a65959a6 00000008") + b"abcdefgh", True),
        (bytes.fromhex("a65959a6 00000005") + b"abcde\x00\x01\x00", False),
        (bytes.fromhex("a65959a6 00000000") + bytes(8), False),
        (bytes.fromhex("a65959a6 00000009") + b"abcdefgh", False),
        (bytes.fromhex("a65959a7 00000008") + b"abcdefgh", False),
    ],
    ids=["5-bytes", "8-bytes", "padding-not-zero", "length-0", "length-9", "wrong-constant"],
)
def test_one_block_key_unwrap_checks_what_rfc_5649_checks(block, ok):
    key = bytes(range(16))
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    wrapped = encryptor.update(block) + encryptor.finalize()  # RFC 5649 §4.1: n = 1 is one AES block
    header = bytes([CWAlgorithm.AES128_KEY_WRAP, 0, 7])
    assert _same_decryption(header, key, [(1, wrapped)])[0] == ("ok" if ok else "refused")
