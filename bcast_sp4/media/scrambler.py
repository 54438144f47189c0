"""The scrambler: TEK(n) applied to an IP stream, switched exactly at T(n).

OMA BCAST traffic protection (bcast-keys.md §5): SRTP (RFC 3711), ISMACryp 1.1 (AES-128-CTR) and
IPsec ESP (RFC 4303, AES-128-CBC per RFC 3602, HMAC-SHA1-96 per RFC 2404); SP-4 seed §14.1.1.2:
the SCS "supplies the CW (TEK) to the scrambler for use in the specified crypto-period".
Pure: no Twisted, no sockets; ``now`` is passed in. The UDP adapter is in
:mod:`bcast_sp4.roles.scs_client`.

Per datagram read from the service's input (one datagram in, at most one out):

* **SRTP** — the input is RTP. libsrtp (``pylibsrtp``, profile AES128_CM_SHA1_80 or _32,
  key-derivation rate 0, one SRTP session per TEK) protects it; the MKI of the TEK's material
  is inserted between the encrypted payload and the authentication tag, where RFC 3711 §3.1
  places it (the MKI is not authenticated, so the tag libsrtp computed stays valid).
  The rollover counter starts at 0 with every TEK (each TEK is its own crypto context; pylibsrtp
  exposes neither MKI nor ROC setting) — [ours].
* **ISMACryp** — the input is RTP; the header stays in clear and the payload is one access unit
  (AU), sent as ``RTP header || KI || IV (8 bytes) || AES-128-CTR(key, AU)``; IV = byte stream
  offset (BSO) of the AU's first byte within this TEK's stream, counter block =
  ``salt (8) || BSO // 16 (8)``, keystream starting at byte ``BSO % 16`` (ISMACryp 1.1 counter
  construction). KI = the material's key indicator; the BSO restarts at 0 with every TEK.
  This AU framing (no RFC 3640 AU-header section) is bcast-sp4's — [ours].
* **IPsec ESP** — tunnel mode, UDP-encapsulated (RFC 3948) so it can travel as a UDP datagram:
  the inner packet is an IPv4/UDP packet (source = where the datagram came from, destination =
  the service's configured inner destination) carrying the datagram; ESP = SPI || sequence
  number (from 1 per SA) || random IV || AES-128-CBC(inner || padding 1,2,3.. || pad length ||
  next header 4) || ICV = HMAC-SHA1-96 over all before it (when the SA is authenticated).

Key switching: :meth:`Scrambler.provide` hands over TEK(n) with its start instant ``at`` = T(n);
each datagram is protected with the newest TEK whose ``at`` <= the datagram's arrival time, so the
switch is exact to the timestamp whatever the timer jitter. :meth:`Scrambler.activate` (called by
a timer at T(n)) makes the switch happen, and be recorded, even when no datagram flows; the
recorded ``switched_at - at`` is the CW-switch jitter. Until the first TEK starts, datagrams are
dropped (never forwarded in clear).
"""

from __future__ import annotations

import bisect
import collections
import enum
import hashlib
import hmac
import ipaddress
import os
import struct
from typing import Callable

import attrs
import pylibsrtp
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..bcast.traffic import IPsecMaterial, ISMACrypMaterial, SRTPMaterial, TrafficKeyMaterial, TrafficProtection


class SRTPProfile(enum.Enum):
    """SRTP crypto suites (RFC 4568 names) and their authentication tag length."""

    AES128_CM_SHA1_80 = "AES128_CM_SHA1_80"
    AES128_CM_SHA1_32 = "AES128_CM_SHA1_32"

    @property
    def tag_length(self) -> int:
        return 10 if self is SRTPProfile.AES128_CM_SHA1_80 else 4

    @property
    def libsrtp(self) -> int:
        if self is SRTPProfile.AES128_CM_SHA1_80:
            return pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        return pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32


class ScramblerError(ValueError):
    """A datagram cannot be protected (not RTP where RTP is required, too long for libsrtp)."""


# -- RTP ----------------------------------------------------------------------------------------


def rtp_header_length(packet: bytes) -> int:
    """Length of the RTP header of *packet* (fixed part, CSRCs, extension; RFC 3550 §5.1).

    :raises ScramblerError: not an RTP version 2 packet, or a header longer than the packet.
    """
    if len(packet) < 12 or packet[0] >> 6 != 2:
        raise ScramblerError("not an RTP version 2 packet")
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if len(packet) < length + 4:
            raise ScramblerError("truncated RTP header extension")
        length += 4 + 4 * struct.unpack_from(">H", packet, length + 2)[0]
    if length > len(packet):
        raise ScramblerError("RTP header longer than the packet")
    return length


# -- SRTP ---------------------------------------------------------------------------------------


def srtp_policy(profile: SRTPProfile) -> pylibsrtp.Policy:
    """A libsrtp policy for any outbound SSRC with *profile*, its key set per TEK by :class:`SRTPContext`."""
    return pylibsrtp.Policy(ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp)


class SRTPContext:
    """One TEK's SRTP sender (libsrtp session for any outbound SSRC).

    :param policy: a :func:`srtp_policy` of *profile* to reuse (its key is replaced): libsrtp copies
        and derives what it needs when the session is created, so one policy serves every TEK of a
        scrambler and only the session is new per TEK.
    """

    def __init__(self, material: SRTPMaterial, profile: SRTPProfile = SRTPProfile.AES128_CM_SHA1_80,
                 policy: pylibsrtp.Policy | None = None) -> None:
        if policy is None:
            policy = srtp_policy(profile)
        elif policy.srtp_profile != profile.libsrtp:
            raise ValueError(f"an SRTP policy of another profile than {profile.name}")
        policy.key = material.master_key + material.master_salt
        try:
            self._session = pylibsrtp.Session(policy)
        finally:
            policy.key = None  # the policy keeps no copy of the TEK
        self._mki = material.mki
        self._tag = profile.tag_length

    def protect(self, packet: bytes) -> bytes:
        rtp_header_length(packet)
        try:
            protected = self._session.protect(packet)
        except pylibsrtp.Error as exc:
            raise ScramblerError(f"libsrtp: {exc}") from None
        if not self._mki:
            return protected
        return protected[: -self._tag] + self._mki + protected[-self._tag :]


# -- ISMACryp -----------------------------------------------------------------------------------


def ismacryp_encrypt(key: bytes, salt: bytes, bso: int, data: bytes) -> bytes:
    """AES-128-CTR of *data* starting at byte stream offset *bso* (counter = salt || bso // 16)."""
    skip = bso % 16
    counter = salt + (bso // 16).to_bytes(8, "big")
    encryptor = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    if skip:
        encryptor.update(bytes(skip))
    return encryptor.update(data) + encryptor.finalize()


class ISMACrypContext:
    """One TEK's ISMACryp sender (see the module docstring for the AU framing)."""

    def __init__(self, material: ISMACrypMaterial) -> None:
        self._key, self._salt, self._ki = material.key, material.salt, material.key_indicator
        self.bso = 0

    def protect(self, packet: bytes) -> bytes:
        header = rtp_header_length(packet)
        au = packet[header:]
        iv = self.bso
        self.bso += len(au)
        return packet[:header] + self._ki + iv.to_bytes(8, "big") + ismacryp_encrypt(self._key, self._salt, iv, au)


# -- IPsec ESP ----------------------------------------------------------------------------------

ESP_NEXT_HEADER_IPV4 = 4
ESP_ICV_LENGTH = 12


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 packet (DF, TTL 64) carrying *payload* in UDP (checksum 0, allowed over IPv4)."""
    udp = struct.pack(">HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                         ipaddress.IPv4Address(source[0]).packed, ipaddress.IPv4Address(destination[0]).packed)
    return header[:10] + _checksum(header).to_bytes(2, "big") + header[12:] + udp


def esp_encapsulate(material: IPsecMaterial, sequence: int, inner: bytes, iv: bytes) -> bytes:
    """One ESP packet (RFC 4303 §2) for *inner* (an IPv4 packet: next header 4)."""
    pad = (-(len(inner) + 2)) % 16
    plaintext = inner + bytes(range(1, pad + 1)) + bytes([pad, ESP_NEXT_HEADER_IPV4])
    encryptor = Cipher(algorithms.AES(material.encryption_key), modes.CBC(iv)).encryptor()
    packet = struct.pack(">II", material.spi, sequence) + iv + encryptor.update(plaintext) + encryptor.finalize()
    if material.authenticated:
        packet += hmac.new(material.authentication_key, packet, hashlib.sha1).digest()[:ESP_ICV_LENGTH]
    return packet


class ESPContext:
    """One TEK's ESP security association (sender side)."""

    def __init__(self, material: IPsecMaterial, destination: tuple[str, int], rng: Callable[[int], bytes]) -> None:
        self._material, self._destination, self._rng = material, destination, rng
        self.sequence = 0

    def protect(self, packet: bytes, source: tuple[str, int]) -> bytes:
        self.sequence += 1
        return esp_encapsulate(self._material, self.sequence, ipv4_udp(source, self._destination, packet), self._rng(16))


# -- the scrambler --------------------------------------------------------------------------------


class KeyState(enum.Enum):
    PENDING = "PENDING"  # provided, its T(n) not reached
    ACTIVE = "ACTIVE"  # protecting the traffic


@attrs.frozen
class Switch:
    """TEK *cp_number* took over at *switched_at* (scheduled for *at*)."""

    cp_number: int
    at: float
    switched_at: float

    @property
    def jitter(self) -> float:
        return self.switched_at - self.at


@attrs.define
class _Key:
    at: float
    cp_number: int
    material: TrafficKeyMaterial = attrs.field(repr=False)
    context: object = attrs.field(repr=False)
    state: KeyState = KeyState.PENDING


@attrs.define
class ScramblerStats:
    received: int = 0
    sent: int = 0
    dropped_no_key: int = 0
    dropped_invalid: int = 0
    switches: int = 0  # TEK switches so far (``Scrambler.switches`` keeps only the last ones)


class Scrambler:
    """The scrambler of one service.

    :param inner_destination: IPsec only: destination address and port of the inner IPv4/UDP packet.
    """

    def __init__(
        self,
        service: str,
        protection: TrafficProtection,
        *,
        srtp_profile: SRTPProfile = SRTPProfile.AES128_CM_SHA1_80,
        inner_destination: tuple[str, int] = ("127.0.0.1", 0),
        rng: Callable[[int], bytes] = os.urandom,
        history: int = 1024,
    ) -> None:
        self.service = service
        self.protection = TrafficProtection(protection)
        self.srtp_profile = srtp_profile
        self.inner_destination = inner_destination
        self._rng = rng
        self._srtp_policy: pylibsrtp.Policy | None = None  # made once, reused for every TEK (SRTPContext)
        self._pending: list[_Key] = []  # sorted by at
        self.current: _Key | None = None
        self.switches: collections.deque[Switch] = collections.deque(maxlen=history)
        self.stats = ScramblerStats()

    def provide(self, cp_number: int, material: TrafficKeyMaterial, at: float) -> None:
        """TEK for the crypto-period starting at *at*."""
        if material.PROTECTION is not self.protection:
            raise ValueError(f"{self.service}: {material.PROTECTION.name} TEK for a {self.protection.name} scrambler")
        if self.protection is TrafficProtection.SRTP:
            if self._srtp_policy is None:
                self._srtp_policy = srtp_policy(self.srtp_profile)
            context: object = SRTPContext(material, self.srtp_profile, self._srtp_policy)
        elif self.protection is TrafficProtection.ISMACRYP:
            context = ISMACrypContext(material)
        else:
            context = ESPContext(material, self.inner_destination, self._rng)
        key = _Key(at, cp_number, material, context)
        pending = self._pending
        if not pending or pending[-1].at < at:  # the usual hand-over: the next TEK, after every pending one
            pending.append(key)
            return
        self._pending = [k for k in pending if k.at != at]
        bisect.insort(self._pending, key, key=lambda k: k.at)

    def activate(self, now: float) -> list[Switch]:
        """Make every TEK whose start has come current; returns the switches made."""
        made: list[Switch] = []
        while self._pending and self._pending[0].at <= now:
            key = self._pending.pop(0)
            key.state = KeyState.ACTIVE
            self.current = key
            switch = Switch(key.cp_number, key.at, now)
            self.switches.append(switch)
            self.stats.switches += 1
            made.append(switch)
        return made

    @property
    def current_cp(self) -> int | None:
        return None if self.current is None else self.current.cp_number

    def protect(self, datagram: bytes, now: float, source: tuple[str, int] = ("127.0.0.1", 0)) -> bytes | None:
        """The protected datagram, or ``None`` (dropped: no TEK yet, or not protectable)."""
        self.stats.received += 1
        if self._pending and self._pending[0].at <= now:
            self.activate(now)
        key = self.current
        if key is None:
            self.stats.dropped_no_key += 1
            return None
        try:
            if self.protection is TrafficProtection.IPSEC:
                out = key.context.protect(datagram, source)
            else:
                out = key.context.protect(datagram)
        except ScramblerError:
            self.stats.dropped_invalid += 1
            return None
        self.stats.sent += 1
        return out


__all__ = [
    "ESPContext",
    "ISMACrypContext",
    "KeyState",
    "SRTPContext",
    "SRTPProfile",
    "Scrambler",
    "ScramblerError",
    "ScramblerStats",
    "Switch",
    "esp_encapsulate",
    "ipv4_udp",
    "ismacryp_encrypt",
    "rtp_header_length",
    "srtp_policy",
]
