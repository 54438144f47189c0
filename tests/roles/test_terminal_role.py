"""The terminal role's verdict can fail: lost, undecryptable or corrupted packets give status 1."""

import io

from bcast_sp4.media import content
from bcast_sp4.bcast import ltkm_drm, stkm_drm, stkm_mikey, traffic
from bcast_sp4.config import load_keyfile
from bcast_sp4.config.terminal import load_terminal_settings
from bcast_sp4.roles.terminal import TerminalService
from bcast_sp4.media.scrambler import Scrambler
from bcast_sp4.wire.sp4 import Profile
from tests.doubles import UDPMemoryReactor

from ..integration.harness import ROOT

LAB = ROOT / "etc" / "lab"


def terminal(periods=1):
    settings = load_terminal_settings(LAB / "terminal.toml")
    statuses = []
    service = TerminalService(settings, UDPMemoryReactor(), periods, statuses.append, io.StringIO())
    return service, statuses


def test_every_packet_lost_fails():
    service, statuses = terminal()
    service.sent["news"] = 10  # the source sent, nothing came back
    service._summarise()
    assert statuses == [1] and "FAIL" in service.out.getvalue()


def test_nothing_sent_fails():
    service, statuses = terminal()
    service._summarise()
    assert statuses == [1]


def test_all_decrypted_passes_and_a_corrupted_one_fails():
    service, statuses = terminal()
    keys = load_keyfile(LAB / "keys.toml")
    sek = keys.lookup(0x00010001, 1, 1_750_000_000.0)
    msk = keys.lookup(0x00020001, 1, 1_750_000_000.0)
    drm = service.cores[Profile.DRM]
    drm.ltkm(ltkm_drm.build_ltkm(service.settings.device_id, service.settings.device_key, [sek], issued_at=1_750_000_000,
                                 sequence=1))
    for name, protection in (("news", traffic.TrafficProtection.SRTP), ("radio", traffic.TrafficProtection.IPSEC),
                             ("clips", traffic.TrafficProtection.ISMACRYP)):
        tek = traffic.generate(protection)
        scrambler = Scrambler(name, protection)
        scrambler.provide(0, tek, at=0.0)
        service._stkm(next(s for s in service.settings.stkm_streams if s.profile is Profile.DRM and name in s.services),
                      stkm_drm.build_stkm(tek, sek, timestamp=1_750_000_000))
        service._stkm(next(s for s in service.settings.stkm_streams if s.profile is Profile.SMARTCARD and name in s.services),
                      stkm_mikey.build_stkm(tek, msk, counter=1))
        spec = next(s for s in service.settings.services if s.name == name)
        for seq in range(3):
            service._content(name, scrambler.protect(content.rtp_packet(spec.service_id, spec.ssrc, seq, 0), now=1.0))
        service.sent[name] = 3
    service._summarise()
    assert statuses == [0], service.out.getvalue()
    service.sent["radio"] += 1  # one more sent than decrypted
    service._summarise()
    assert statuses == [0, 1]
