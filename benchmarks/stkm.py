#!/usr/bin/env python3
"""STKM generation speed: µs per call of the ECMG's hot path, ours against the reference paths.

For each operation the default (struct / cached per-key crypto) path and its reference
(``reference=True``: construct schemas, one-shot crypto objects, the key store's linear scan) are
measured in the same run; ``ratio`` = reference / ours. Inputs: SRTP TEKs with a 4-byte MKI
(IPsec and ISMACryp CWs for decode_cw too), a SEK + SAK (DRM), an MSK with Key Domain ID
(Smartcard), a key store with a SEK for one stream.

Targets (ECMG >= 50,000 DRM STKMs/s from one process): decode_cw <= 3 µs, the ECMG's DRM build
(SEK, next TEK, timestamp) <= 12 µs, MIKEY build <= 35 µs, KeyStore.lookup <= 2 µs. The
``STKMSource.generate`` rows are one whole CW_provision's STKM (two CW decodes, two key lookups, one
build); their reference does the same steps with ``reference=True``. The DVB test ECM's reference
passes the raw key (keys derived, contexts made per call); CW_encryption's is the one-off
``cw_encryption.decrypt`` (contexts made per call).

Prints the median over --repeat timing runs; each run lasts about --seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bcast_sp4.bcast import cw_encryption, stkm_drm, stkm_mikey  # noqa: E402
from bcast_sp4.bcast.ecm import DvbEcmKey, STKMSource, build_dvb_ecm  # noqa: E402
from bcast_sp4.bcast.ecm_request import CasMode, ECMRequest  # noqa: E402
from bcast_sp4.bcast.keys import KeyRole, KeyStore, ServiceKey  # noqa: E402
from bcast_sp4.bcast.traffic import TrafficProtection, decode_cw, encode_cw, generate  # noqa: E402
from bcast_sp4.wire.params import CPCWCombination  # noqa: E402

NOW = 1_700_000_123.25
DRM_CAS, SMARTCARD_CAS, ECM_ID = 0x00010001, 0x00020001, 1
SEK = ServiceKey(
    key_id=1, key=bytes(range(16)), authentication_key=bytes(range(100, 120)), not_before=1_600_000_000, name="sek"
)
PEK = ServiceKey(
    key_id=0x101, key=bytes(range(16, 32)), authentication_key=bytes(range(20)), role=KeyRole.PROGRAMME, name="pek"
)
MSK = ServiceKey(key_id=0x00010001, key=bytes(range(32, 48)), key_domain_id=bytes.fromhex("02f810"), name="msk")

_rng = random.Random(2024).randbytes
CUR, NXT = generate(TrafficProtection.SRTP, _rng), generate(TrafficProtection.SRTP, _rng)
CWS = {
    "SRTP": encode_cw(CUR),
    "IPsec+auth": encode_cw(generate(TrafficProtection.IPSEC, _rng, authenticated=True)),
    "ISMACryp": encode_cw(generate(TrafficProtection.ISMACRYP, _rng)),
}
STORE = KeyStore()
STORE.add(DRM_CAS, ECM_ID, SEK)
STORE.add(SMARTCARD_CAS, ECM_ID, MSK)
SOURCE = STKMSource(STORE, {DRM_CAS: CasMode.DRM_PROFILE, SMARTCARD_CAS: CasMode.SMARTCARD_PROFILE})
COMBINATIONS = (CPCWCombination(7, encode_cw(CUR)), CPCWCombination(8, encode_cw(NXT)))
DVB_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
DVB_STATE = DvbEcmKey(DVB_KEY)
DVB_CWS = [(7, _rng(8)), (8, _rng(8))]  # two DVB-CSA CWs
CW_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
CW_DECRYPTOR = cw_encryption.CWDecryptor()
CW_ENCRYPTED = {
    algorithm: cw_encryption.encrypt(algorithm, 7, CW_KEY, [(7, encode_cw(CUR)), (8, encode_cw(NXT))], _rng)
    for algorithm in cw_encryption.CWAlgorithm
}


def request(super_cas_id: int, mode: CasMode) -> ECMRequest:
    return ECMRequest(
        super_CAS_id=super_cas_id, mode=mode, ECM_id=ECM_ID, channel_id=1, stream_id=1, CP_number=7,
        CP_CW_combination=COMBINATIONS, CP_duration=100, access_criteria=None, CW_encryption=None, now=NOW,
    )


def drm_ecmg(reference: bool = False) -> bytes:  # the ECMG's call: SEK, no PEK, next TEK, timestamp
    return stkm_drm.build_stkm(
        CUR, SEK, programme_key=None, next_material=NXT, timestamp=NOW, access_criteria=(), reference=reference
    )


def drm_pek(reference: bool = False) -> bytes:
    return stkm_drm.build_stkm(
        CUR, SEK, programme_key=PEK, next_material=NXT, timestamp=NOW, access_criteria=(), reference=reference
    )


def mikey(reference: bool = False) -> bytes:
    return stkm_mikey.build_stkm(CUR, MSK, counter=12345, next_material=NXT, reference=reference)


def generate_reference(super_cas_id: int) -> bytes:
    """STKMSource.generate's steps (DRM/Smartcard, no CW_encryption) with every reference path."""
    material = decode_cw(None, COMBINATIONS[0].CW, reference=True)
    following = decode_cw(material.PROTECTION, COMBINATIONS[1].CW, reference=True)
    key = STORE.lookup(super_cas_id, ECM_ID, NOW, reference=True)
    if super_cas_id == DRM_CAS:
        try:
            programme = STORE.lookup(super_cas_id, ECM_ID, NOW, role=KeyRole.PROGRAMME, reference=True)
        except LookupError:
            programme = None
        return stkm_drm.build_stkm(
            material, key, programme_key=programme, next_material=following, timestamp=NOW, reference=True
        )
    return stkm_mikey.build_stkm(material, key, counter=12345, next_material=following, reference=True)


DRM_MSG, DRM_PEK_MSG, MIKEY_MSG = drm_ecmg(), drm_pek(), mikey()
DRM_REQUEST = request(DRM_CAS, CasMode.DRM_PROFILE)
SMARTCARD_REQUEST = request(SMARTCARD_CAS, CasMode.SMARTCARD_PROFILE)

# (label, ours, reference, target µs or None)
ROWS = [
    *(
        (
            f"decode_cw ({name})",
            lambda raw=raw: decode_cw(None, raw),
            lambda raw=raw: decode_cw(None, raw, reference=True),
            3.0,
        )
        for name, raw in CWS.items()
    ),
    ("encode_cw (SRTP)", lambda: encode_cw(CUR), lambda: encode_cw(CUR, reference=True), None),
    ("DRM build, ECMG call (SEK+next+ts)", drm_ecmg, lambda: drm_ecmg(True), 12.0),
    ("DRM build, SEK+PEK+next+ts", drm_pek, lambda: drm_pek(True), None),
    ("MIKEY build (next TEK)", mikey, lambda: mikey(True), 35.0),
    (
        "DRM parse (ECMG's STKM)",
        lambda: stkm_drm.parse_stkm(DRM_MSG, SEK),
        lambda: stkm_drm.parse_stkm(DRM_MSG, SEK, reference=True),
        None,
    ),
    (
        "DRM parse (SEK+PEK STKM)",
        lambda: stkm_drm.parse_stkm(DRM_PEK_MSG, [SEK, PEK]),
        lambda: stkm_drm.parse_stkm(DRM_PEK_MSG, [SEK, PEK], reference=True),
        None,
    ),
    (
        "MIKEY parse",
        lambda: stkm_mikey.parse_stkm(MIKEY_MSG, MSK),
        lambda: stkm_mikey.parse_stkm(MIKEY_MSG, MSK, reference=True),
        None,
    ),
    (
        "KeyStore.lookup (SEK)",
        lambda: STORE.lookup(DRM_CAS, ECM_ID, NOW),
        lambda: STORE.lookup(DRM_CAS, ECM_ID, NOW, reference=True),
        2.0,
    ),
    (
        "KeyStore.lookup (no PEK, default)",
        lambda: STORE.lookup(DRM_CAS, ECM_ID, NOW, role=KeyRole.PROGRAMME, default=None),
        lambda: STORE.lookup(DRM_CAS, ECM_ID, NOW, role=KeyRole.PROGRAMME, default=None, reference=True),
        None,
    ),
    (
        "DVB test ECM build (2 x 8-byte CWs)",
        lambda: build_dvb_ecm(DVB_STATE, 1, 7, DVB_CWS),
        lambda: build_dvb_ecm(DVB_KEY, 1, 7, DVB_CWS),  # keys derived and contexts made per call
        None,
    ),
    *(
        (
            f"CW decrypt ({'key wrap' if algorithm == 1 else 'CBC'}, 2 TEKs)",
            lambda a=algorithm: CW_DECRYPTOR.decrypt(CW_ENCRYPTED[a][0], {7: CW_KEY}, list(zip((7, 8), CW_ENCRYPTED[a][1]))),
            lambda a=algorithm: cw_encryption.decrypt(CW_ENCRYPTED[a][0], {7: CW_KEY}, list(zip((7, 8), CW_ENCRYPTED[a][1]))),
            None,
        )
        for algorithm in cw_encryption.CWAlgorithm
    ),
    ("STKMSource.generate (DRM)", lambda: SOURCE.generate(DRM_REQUEST), lambda: generate_reference(DRM_CAS), None),
    (
        "STKMSource.generate (Smartcard)",
        lambda: SOURCE.generate(SMARTCARD_REQUEST),
        lambda: generate_reference(SMARTCARD_CAS),
        None,
    ),
]


def median_us(fn, seconds: float, repeat: int) -> float:
    once = min(timeit.repeat(fn, number=20, repeat=3)) / 20
    number = max(1, int(seconds / max(once, 1e-7)))
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def check_identical() -> None:
    """The two paths must give the same bytes (the property tests check this thoroughly)."""
    assert drm_ecmg() == drm_ecmg(True) and drm_pek() == drm_pek(True)
    assert all(decode_cw(None, raw) == decode_cw(None, raw, reference=True) for raw in CWS.values())
    assert encode_cw(CUR) == encode_cw(CUR, reference=True)
    assert STORE.lookup(DRM_CAS, ECM_ID, NOW) is STORE.lookup(DRM_CAS, ECM_ID, NOW, reference=True)
    assert SOURCE.generate(DRM_REQUEST) == generate_reference(DRM_CAS)
    # MIKEY: same counter, same bytes (generate's counters advance per call, so compare builds)
    assert mikey() == mikey(True)
    assert build_dvb_ecm(DVB_STATE, 1, 7, DVB_CWS, lambda n: bytes(n)) == build_dvb_ecm(DVB_KEY, 1, 7, DVB_CWS, lambda n: bytes(n))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timing runs per measurement (median reported)")
    parser.add_argument("--seconds", type=float, default=0.03, help="approximate length of one timing run")
    args = parser.parse_args()
    check_identical()
    print(
        f"bcast-sp4 STKM benchmark (python {sys.version.split()[0]});"
        f" median of {args.repeat} runs of ~{args.seconds}s"
    )
    print(f"{'operation':<38}{'ours µs':>9}{'reference µs':>14}{'ratio':>8}   target")
    misses = 0
    for label, ours, reference, target in ROWS:
        ours_us = median_us(ours, args.seconds, args.repeat)
        ref_us = median_us(reference, args.seconds, args.repeat)
        verdict = ""
        if target is not None:
            ok = ours_us <= target
            misses += not ok
            verdict = f"<= {target:g} µs {'ok' if ok else 'MISSED'}"
        print(f"{label:<38}{ours_us:>9.2f}{ref_us:>14.2f}{ref_us / ours_us:>7.1f}x   {verdict}")
    print("all targets met" if not misses else f"{misses} target(s) missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
