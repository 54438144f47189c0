"""Reference terminal: LTKM -> SEK/PEK, STKM -> TEK, scrambled content -> checked payload."""

import pytest

from bcast_sp4.media import content
from bcast_sp4.bcast import ltkm_drm, stkm_drm, stkm_mikey, traffic
from bcast_sp4.bcast.keys import ServiceKey
from bcast_sp4.bcast.traffic import TrafficProtection
from bcast_sp4.media.scrambler import Scrambler
from bcast_sp4.media.terminal import Outcome, ReferenceTerminal, TerminalServiceSpec
from bcast_sp4.wire.sp4 import Profile

SEK = ServiceKey(key_id=1, key=bytes(range(16)), authentication_key=bytes(range(20)))
MSK = ServiceKey(key_id=0x00010001, key=bytes(range(16, 32)), key_domain_id=b"\x02\xf8\x10")
DEVICE_ID, DEVICE_KEY = b"device-0001", bytes(range(100, 116))
NOW = 1_750_000_000


def terminal(protection):
    spec = TerminalServiceSpec(name="svc", service_id=7, protection=protection)
    return ReferenceTerminal([spec], device_id=DEVICE_ID, device_key=DEVICE_KEY, smartcard_keys=(MSK,))


def stkm(profile, material, next_material=None):
    if profile is Profile.DRM:
        return stkm_drm.build_stkm(material, SEK, next_material=next_material, timestamp=NOW)
    return stkm_mikey.build_stkm(material, MSK, counter=NOW, next_material=next_material)


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("protection", list(TrafficProtection))
def test_end_to_end_chain(profile, protection):
    term = terminal(protection)
    ltkm = ltkm_drm.build_ltkm(DEVICE_ID, DEVICE_KEY, [SEK], issued_at=NOW, sequence=1)
    assert term.ltkm(ltkm) == 1
    assert term.ltkm(ltkm_drm.build_ltkm(b"someone-else", bytes(16), [SEK], issued_at=NOW, sequence=1)) == 0
    scrambler = Scrambler("svc", protection)
    teks = [traffic.generate(protection) for _ in range(3)]
    for n, tek in enumerate(teks):
        scrambler.provide(n, tek, at=100.0 + n)
    # period 0: the terminal knows TEK(0) and TEK(1) from STKM(0)
    assert term.stkm(profile, stkm(profile, teks[0], teks[1]), ["svc"]) == teks[0]
    for seq in range(20):
        packet = content.rtp_packet(7, 0xABCD, seq, seq * 90, 200)
        protected = scrambler.protect(packet, now=100.0 + seq * 0.1)  # crosses into period 1
        assert term.content("svc", protected) is Outcome.OK
    # period 2 before its STKM: no TEK yet, counted, never a crash
    protected = scrambler.protect(content.rtp_packet(7, 0xABCD, 50, 0), now=102.5)
    assert term.content("svc", protected) is Outcome.NO_TEK
    term.stkm(profile, stkm(profile, teks[2]), ["svc"])
    assert term.content("svc", scrambler.protect(content.rtp_packet(7, 0xABCD, 51, 0), now=102.6)) is Outcome.OK
    stats = term.stats()["svc"]
    assert (stats.ok, stats.failed, stats.teks_learned) == (21, 1, 3)


@pytest.mark.parametrize("protection", list(TrafficProtection))
def test_tampering_and_wrong_service_are_detected(protection):
    term = terminal(protection)
    term.ltkm(ltkm_drm.build_ltkm(DEVICE_ID, DEVICE_KEY, [SEK], issued_at=NOW, sequence=1))
    scrambler = Scrambler("svc", protection)
    tek = traffic.generate(protection, **({"authenticated": True} if protection is TrafficProtection.IPSEC else {}))
    scrambler.provide(0, tek, at=0.0)
    term.stkm(Profile.DRM, stkm(Profile.DRM, tek), ["svc"])
    good = scrambler.protect(content.rtp_packet(7, 1, 1, 0, 64), now=1.0)
    flipped = bytearray(good)
    flipped[-20] ^= 0x01  # inside the payload / ciphertext
    outcome = term.content("svc", bytes(flipped))
    if protection is TrafficProtection.ISMACRYP:  # ISMACryp does not authenticate: the pattern check catches it
        assert outcome is Outcome.PATTERN_MISMATCH
    else:
        assert outcome is Outcome.AUTH_FAILED
    other = ReferenceTerminal([TerminalServiceSpec(name="svc", service_id=8, protection=protection)], device_id=DEVICE_ID,
                              device_key=DEVICE_KEY)
    other.ltkm(ltkm_drm.build_ltkm(DEVICE_ID, DEVICE_KEY, [SEK], issued_at=NOW, sequence=1))
    other.stkm(Profile.DRM, stkm(Profile.DRM, tek), ["svc"])
    assert other.content("svc", scrambler.protect(content.rtp_packet(7, 1, 2, 0, 64), now=1.1)) is Outcome.PATTERN_MISMATCH


def test_stkm_without_keys_is_counted_not_fatal():
    term = terminal(TrafficProtection.SRTP)
    tek = traffic.generate(TrafficProtection.SRTP)
    assert term.stkm(Profile.DRM, stkm(Profile.DRM, tek), ["svc"]) is None  # no LTKM yet
    assert term.counts["stkm_bad"] == 1
    assert term.ltkm(b"\x01garbage") == 0 and term.counts["ltkm_bad"] + term.counts["ltkm_other"] == 1
