"""Reference terminal: from LTKMs and STKMs on the air to decrypted, checked content. Pure core.

What a BCAST receiver does (bcast-keys.md §1.4), with the project's formats:

1. LTKM (DRM Profile, broadcast; :mod:`bcast_sp4.bcast.ltkm_drm`, provisional PROV-LTKM-1): one
   addressed to this device is verified and unwrapped with the device key -> SEK/PEK (+ SAK/PAK).
   Smartcard Profile keys (MSK) reach the card out of band; the terminal is given them.
2. STKM (DRM Profile PROV-2, or Smartcard Profile MIKEY): verified and decrypted with those keys
   -> TEK(n) (and TEK(n+1) when carried), filed under its traffic identifier: the SRTP MKI, the
   IPsec SPI, the ISMACryp key indicator.
3. Content: each datagram names its TEK by that identifier; it is decrypted (and authenticated
   where the protection authenticates) and its RTP payload checked against the lab's pattern
   (:mod:`bcast_sp4.media.content`).

The decryption here is written from the protocol definitions (RFC 3711 via libsrtp, RFC 4303,
ISMACryp 1.1 as framed by :mod:`bcast_sp4.media.scrambler`'s docstring), not by calling the scrambler.
Every outcome is counted per service: ``ok``, ``no_tek`` (no key yet for that identifier),
``auth_failed``, ``pattern_mismatch``, ``malformed``. No I/O, no clock, no logging.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import struct

import attrs
import pylibsrtp
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..bcast import ltkm_drm, stkm_drm, stkm_mikey
from ..bcast.keys import ServiceKey
from ..bcast.status import BcastError
from ..bcast.traffic import IPsecMaterial, ISMACrypMaterial, SRTPMaterial, TrafficKeyMaterial, TrafficProtection
from .content import check_rtp
from ..wire.sp4 import Profile

#: TEKs kept per service (current, next and a couple of late ones)
TEKS_KEPT = 6
ESP_ICV_LENGTH = 12


class Outcome(enum.Enum):
    OK = "ok"
    NO_TEK = "no_tek"
    AUTH_FAILED = "auth_failed"
    PATTERN_MISMATCH = "pattern_mismatch"
    MALFORMED = "malformed"


@attrs.frozen(kw_only=True)
class TerminalServiceSpec:
    """What the terminal knows of one service from its SDP / Service Guide."""

    name: str
    service_id: int
    protection: TrafficProtection
    srtp_tag_length: int = 10  # AES128_CM_SHA1_80


@attrs.define
class ServiceStats:
    counts: collections.Counter = attrs.field(factory=collections.Counter)
    teks_learned: int = 0

    @property
    def ok(self) -> int:
        return self.counts[Outcome.OK]

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.counts.items() if outcome is not Outcome.OK)


def _rtp_header_length(packet: bytes) -> int:
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise ValueError("not RTP")
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        length += 4 + 4 * struct.unpack_from(">H", packet, length + 2)[0]
    if length > len(packet):
        raise ValueError("RTP header longer than packet")
    return length


class _ServiceReceiver:
    """The TEKs of one service and the decryption of its datagrams."""

    def __init__(self, spec: TerminalServiceSpec) -> None:
        self.spec = spec
        self.teks: collections.OrderedDict[bytes, TrafficKeyMaterial] = collections.OrderedDict()
        self._srtp: dict[bytes, pylibsrtp.Session] = {}
        self.stats = ServiceStats()

    def add(self, material: TrafficKeyMaterial) -> None:
        if material.PROTECTION is not self.spec.protection:
            return
        identifier = material.identifier
        if self.teks.get(identifier) == material:
            return
        self.teks[identifier] = material
        self.teks.move_to_end(identifier)
        self._srtp.pop(identifier, None)
        self.stats.teks_learned += 1
        while len(self.teks) > TEKS_KEPT:
            old, _ = self.teks.popitem(last=False)
            self._srtp.pop(old, None)

    def receive(self, datagram: bytes) -> tuple[Outcome, int]:
        try:
            if self.spec.protection is TrafficProtection.SRTP:
                outcome, packet = self._srtp_unprotect(datagram)
            elif self.spec.protection is TrafficProtection.ISMACRYP:
                outcome, packet = self._ismacryp_decrypt(datagram)
            else:
                outcome, packet = self._esp_decapsulate(datagram)
        except (ValueError, IndexError, struct.error):
            outcome, packet = Outcome.MALFORMED, None
        seq = -1
        if outcome is Outcome.OK:
            ok, seq = check_rtp(packet, self.spec.service_id)
            if not ok:
                outcome = Outcome.PATTERN_MISMATCH
        self.stats.counts[outcome] += 1
        return outcome, seq

    # -- SRTP (RFC 3711; MKI between payload and tag, §3.1) ----------------------------------

    def _srtp_unprotect(self, datagram: bytes) -> tuple[Outcome, bytes | None]:
        tag = self.spec.srtp_tag_length
        for identifier in reversed(self.teks):  # newest first
            material = self.teks[identifier]
            mki = material.mki
            if mki:
                if datagram[-tag - len(mki) : -tag] != mki:
                    continue
                packet = datagram[: -tag - len(mki)] + datagram[-tag:]
            else:
                packet = datagram
            session = self._srtp.get(identifier)
            if session is None:
                profile = (
                    pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80 if tag == 10 else pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32
                )
                session = self._srtp[identifier] = pylibsrtp.Session(
                    pylibsrtp.Policy(
                        key=material.master_key + material.master_salt,
                        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                        srtp_profile=profile,
                    )
                )
            try:
                return Outcome.OK, session.unprotect(packet)
            except pylibsrtp.Error:
                if mki:  # the MKI named this TEK: authentication failed
                    return Outcome.AUTH_FAILED, None
        return Outcome.NO_TEK, None

    # -- ISMACryp (AES-128-CTR, salt || BSO/16, KI and IV before the AU) -----------------------

    def _ismacryp_decrypt(self, datagram: bytes) -> tuple[Outcome, bytes | None]:
        header = _rtp_header_length(datagram)
        for identifier in reversed(self.teks):
            material: ISMACrypMaterial = self.teks[identifier]
            ki = material.key_indicator
            if datagram[header : header + len(ki)] != ki:
                continue
            start = header + len(ki)
            bso = int.from_bytes(datagram[start : start + 8], "big")
            encrypted = datagram[start + 8 :]
            decryptor = Cipher(algorithms.AES(material.key), modes.CTR(material.salt + (bso // 16).to_bytes(8, "big"))).decryptor()
            decryptor.update(bytes(bso % 16))
            return Outcome.OK, datagram[:header] + decryptor.update(encrypted) + decryptor.finalize()
        return Outcome.NO_TEK, None

    # -- IPsec ESP (RFC 4303, UDP-encapsulated tunnel mode, AES-CBC + HMAC-SHA1-96) ---------------

    def _esp_decapsulate(self, datagram: bytes) -> tuple[Outcome, bytes | None]:
        spi = datagram[:4]
        material: IPsecMaterial | None = self.teks.get(spi)
        if material is None:
            return Outcome.NO_TEK, None
        body = datagram
        if material.authenticated:
            body, icv = datagram[:-ESP_ICV_LENGTH], datagram[-ESP_ICV_LENGTH:]
            expected = hmac.new(material.authentication_key, body, hashlib.sha1).digest()[:ESP_ICV_LENGTH]
            if not hmac.compare_digest(icv, expected):
                return Outcome.AUTH_FAILED, None
        iv, ciphertext = body[8:24], body[24:]
        if not ciphertext or len(ciphertext) % 16:
            return Outcome.MALFORMED, None
        decryptor = Cipher(algorithms.AES(material.encryption_key), modes.CBC(iv)).decryptor()
        plain = decryptor.update(ciphertext) + decryptor.finalize()
        pad_length, next_header = plain[-2], plain[-1]
        if next_header != 4 or plain[-2 - pad_length : -2] != bytes(range(1, pad_length + 1)):
            return Outcome.AUTH_FAILED if not material.authenticated else Outcome.MALFORMED, None
        inner = plain[: -2 - pad_length]
        ihl = (inner[0] & 0x0F) * 4
        if inner[0] >> 4 != 4 or inner[9] != 17:
            return Outcome.MALFORMED, None
        udp_length = struct.unpack_from(">H", inner, ihl + 4)[0]
        return Outcome.OK, inner[ihl + 8 : ihl + udp_length]


class ReferenceTerminal:
    """A receiver with a device key (DRM Profile) and/or smartcard keys (Smartcard Profile).

    :param device_id: this device's id as LTKMs address it.
    :param device_key: its 16-byte unique key.
    :param smartcard_keys: the MSKs (SEK/PEK) on the card.
    :param services: what the terminal decodes.
    """

    def __init__(
        self,
        services: list[TerminalServiceSpec],
        device_id: bytes = b"",
        device_key: bytes | None = None,
        smartcard_keys: tuple[ServiceKey, ...] = (),
    ) -> None:
        self.device_id = device_id
        self._device_key = device_key
        self.drm_keys: dict[tuple, ServiceKey] = {}
        self.smartcard_keys = list(smartcard_keys)
        self.services = {spec.name: _ServiceReceiver(spec) for spec in services}
        self.counts: collections.Counter = collections.Counter()

    # -- key messages ------------------------------------------------------------------------

    def ltkm(self, datagram: bytes) -> int:
        """Take one LTKM from the air; returns how many keys it gave this device (0 if not ours)."""
        try:
            if self._device_key is None or ltkm_drm.peek_device_id(datagram) != self.device_id:
                self.counts["ltkm_other"] += 1
                return 0
            parsed = ltkm_drm.parse_ltkm(datagram, self._device_key)
        except BcastError:
            self.counts["ltkm_bad"] += 1
            return 0
        keys = ltkm_drm.keys_by_ref([parsed])
        for key in keys:
            self.drm_keys[key.role, key.key_id] = key
        self.counts["ltkm_ok"] += 1
        return len(keys)

    def stkm(self, profile: Profile, datagram: bytes, services: list[str]) -> TrafficKeyMaterial | None:
        """Take one STKM of a stream that *services* are protected by; returns TEK(n) or None."""
        try:
            if profile is Profile.DRM:
                parsed = stkm_drm.parse_stkm(datagram, list(self.drm_keys.values()))
            else:
                parsed = stkm_mikey.parse_stkm(datagram, self.smartcard_keys)
        except BcastError:
            self.counts["stkm_bad"] += 1
            return None
        self.counts["stkm_ok"] += 1
        for name in services:
            receiver = self.services[name]
            receiver.add(parsed.material)
            if parsed.next_material is not None:
                receiver.add(parsed.next_material)
        return parsed.material

    # -- content -----------------------------------------------------------------------------

    def content(self, service: str, datagram: bytes) -> Outcome:
        """Decrypt and check one content datagram of *service*."""
        return self.services[service].receive(datagram)[0]

    def stats(self) -> dict[str, ServiceStats]:
        return {name: receiver.stats for name, receiver in self.services.items()}
