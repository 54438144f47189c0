"""The ECMG's ECM source: BCAST STKMs (and classic DVB ECM sections) from CW_provision contents.

SP-4 seed §14.1.1.3.1: "Depending of the value of the Super_CAS_id, [the ECM_datagram] is either
a DRM Profile STKM ... or a Smartcard Profile STKM"; §14.1.1.2: the TEK generator's parameters for
IPsec, SRTP or ISMACryp reach the STKMG through SimulCrypt — here, as the CW of each
CP_CW_combination in the layout of :mod:`bcast_sp4.bcast.traffic`.

For one CW_provision with CP_number *n*: the TEK of period *n* is the STKM's traffic key, and the
TEK of *n + 1*, when provisioned (lead_CW >= 1), rides along as the next key. Keys come from the
:class:`KeyStore` per (Super_CAS_id, ECM_id = stkmstream) at the time of the request.

Errors become :class:`ECMGenerationError` carrying the code the ECMG puts in stream_error:
BCAST codes as 0x8000 + n (:mod:`bcast_sp4.bcast.status`: no key 0xFF01, key outside its validity
0xFF02, unsupported traffic protection 0xFF03, undecodable TEK material 0xFF04), and
"invalid value" 0x0011 for access criteria that are not a descriptor loop.

Smartcard Profile MIKEY COUNTER: per SEK/PEK, ``max(previous + 1, deciseconds since
2023-11-14T22:13:20Z)`` — increasing across ECMG restarts unless one key signs more than ten STKMs
a second for long; wraps after 13 years.

Classic DVB mode (any other configured Super_CAS_id; not BCAST): the ECM_datagram is one private
section (table_id 0x80 / 0x81 by CP parity) holding bcast-sp4's *test ECM* v1, so DVB SCSs (e.g.
TSDuck's) can drive this ECMG. It is real cryptography with a documented layout, not a CAS::

    section: table_id, 0x70 | section_length (12 bits, syntax indicator 0), then
    0   1   format        0x01
    1   2   ECM_id        (0 in protocol v1)
    3   2   CP_number
    5   8   nonce         random
    13  1   count
    ... count x [CP_number (2), CW length (1), AES-128-CTR(CW)]   counter block = nonce || index(8)
    ..  12  HMAC-SHA-1-96 over the section up to here
    keys: enc = HMAC-SHA-256(key, "bcast-sp4 dvb-ecm enc")[:16], mac = HMAC-SHA-256(key, "... mac")

In TS-packet mode the section is carried in 188-byte packets on PID 0x1FFF, a placeholder the
SCS re-stamps (the ECMG does not know the ECM PID; digest §3.4).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import stkm_drm, stkm_mikey
from .cw_encryption import decrypt as decrypt_cws
from .ecm_request import CasMode, ECMGenerationError, ECMRequest
from .keys import KeyRole, KeyStore, ServiceKey
from .keys import _posix_us  # the key store's own time rounding, so cached spans agree with it
from .status import BcastError, simulcrypt_code
from .traffic import decode_cw

INVALID_VALUE = 0x0011
_COUNTER_EPOCH = 1_700_000_000.0
PLACEHOLDER_PID = 0x1FFF


class STKMSource:
    """Implements :class:`bcast_sp4.machines.ecmg.ECMSource` with real BCAST STKMs.

    :param keys: service / programme keys per (Super_CAS_id, ECM_id).
    :param cas_modes: Super_CAS_id -> what to produce.
    :param dvb_keys: Super_CAS_id -> 16-byte key, for the classic DVB modes.
    :param cw_encryption_keys: key_id -> 16-byte key, for CW_encryption.
    """

    def __init__(
        self,
        keys: KeyStore,
        cas_modes: dict[int, CasMode],
        dvb_keys: dict[int, bytes] | None = None,
        cw_encryption_keys: dict[int, bytes] | None = None,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.keys = keys
        self.cas_modes = cas_modes
        self.dvb_keys = dvb_keys or {}
        self.cw_encryption_keys = cw_encryption_keys or {}
        self.rng = rng
        self._counters: dict[tuple[int, bytes], int] = {}
        #: per (Super_CAS_id, ECM_id): the last TEK(n+1) CW and its decoded material
        self._last_next: dict[tuple[int, int], tuple[bytes, object]] = {}
        #: per (Super_CAS_id, ECM_id): (start_us, end_us, SEK, PEK or None, start_s, end_s): the keys
        #: valid on [start_us, end_us), and that span shrunk by 2 µs at both ends, in seconds
        self._key_spans: dict[tuple[int, int], tuple] = {}

    # -- ECMSource ---------------------------------------------------------------------------

    def check_stream(self, super_cas_id: int, ecm_id: int | None, now: float) -> None:
        mode = self.cas_modes[super_cas_id]
        if mode in (CasMode.DVB_SECTIONS, CasMode.DVB_TS_PACKETS):
            if super_cas_id not in self.dvb_keys:
                raise ECMGenerationError(0x0005, f"no DVB test-ECM key for Super_CAS_id {super_cas_id:#010x}")
            return
        self._service_key(super_cas_id, ecm_id, now)

    def generate(self, request: ECMRequest) -> bytes:
        cws = [(c.CP_number, c.CW) for c in request.CP_CW_combination]
        if request.CW_encryption is not None:
            try:
                plain = decrypt_cws(request.CW_encryption, self.cw_encryption_keys, cws)
            except BcastError as exc:
                raise ECMGenerationError(simulcrypt_code(exc.status), str(exc)) from None
            cws = list(zip((cp for cp, _ in cws), plain))
        if request.mode in (CasMode.DVB_SECTIONS, CasMode.DVB_TS_PACKETS):
            section = build_dvb_ecm(self.dvb_keys[request.super_CAS_id], request.ECM_id or 0, request.CP_number, cws, self.rng)
            return section if request.mode is CasMode.DVB_SECTIONS else packetize(section)
        by_cp = dict(cws)
        try:
            access = stkm_drm.decode_access_criteria(request.access_criteria) if request.access_criteria else ()
        except ValueError as exc:  # not a descriptor loop: the DVB parameter's value is invalid
            raise ECMGenerationError(INVALID_VALUE, f"access_criteria: {exc}") from None
        stream = (request.super_CAS_id, request.ECM_id or 0)
        try:
            current = by_cp[request.CP_number]
            # CW(n) of this provision is usually CW(n+1) of the stream's previous one: decoded then.
            last = self._last_next.get(stream)
            material = last[1] if last is not None and last[0] == current else decode_cw(None, current)
            following = by_cp.get((request.CP_number + 1) & 0xFFFF)
            next_material = decode_cw(material.PROTECTION, following) if following is not None else None
        except BcastError as exc:
            raise ECMGenerationError(simulcrypt_code(exc.status), str(exc)) from None
        if next_material is not None:
            self._last_next[stream] = (following, next_material)
        key, programme = self._stream_keys(stream, request.now)
        try:
            if request.mode is CasMode.DRM_PROFILE:
                return stkm_drm.build_stkm(
                    material,
                    key,
                    programme_key=programme,
                    next_material=next_material,
                    timestamp=request.now,
                    access_criteria=access,
                )
            return stkm_mikey.build_stkm(
                material,
                key,
                counter=self._next_counter(key, request.now),
                next_material=next_material,
                access_criteria=access,
            )
        except BcastError as exc:
            raise ECMGenerationError(simulcrypt_code(exc.status), str(exc)) from None

    # -- keys --------------------------------------------------------------------------------

    def _stream_keys(self, stream: tuple[int, int], now: float) -> tuple[ServiceKey, ServiceKey | None]:
        """SEK and optional PEK of a stream now, cached for the interval on which they hold."""
        span = self._key_spans.get(stream)
        if span is not None:
            # Well inside the span (2 µs away from its ends) float seconds decide; near an end,
            # the key store's own microsecond rounding does, so a boundary is exact.
            if span[4] < now < span[5]:
                return span[2], span[3]
            us = _posix_us(now)
            if us is not None and span[0] <= us < span[1]:
                return span[2], span[3]
        sek = self.keys.lookup_span(stream[0], stream[1], now)
        pek = self.keys.lookup_span(stream[0], stream[1], now, KeyRole.PROGRAMME)
        if sek is None or sek[0] is None or pek is None:  # unknown, unindexed or no valid SEK: the slow path
            key = self._service_key(stream[0], stream[1], now)
            return key, self._optional_key(stream[0], stream[1], now, KeyRole.PROGRAMME)
        start, end = max(sek[1], pek[1]), min(sek[2], pek[2])
        self._key_spans[stream] = (start, end, sek[0], pek[0], start / 1e6 + 2e-6, end / 1e6 - 2e-6)
        return sek[0], pek[0]

    def _service_key(self, super_cas_id: int, ecm_id: int | None, now: float) -> ServiceKey:
        if ecm_id is None:  # protocol v1 has no ECM_id: use stkmstream 0
            ecm_id = 0
        try:
            return self.keys.lookup(super_cas_id, ecm_id, now)
        except BcastError as exc:
            raise ECMGenerationError(simulcrypt_code(exc.status), str(exc)) from None

    def _optional_key(self, super_cas_id: int, ecm_id: int | None, now: float, role: KeyRole) -> ServiceKey | None:
        try:  # default=None: no exception per STKM on streams without a programme key
            return self.keys.lookup(super_cas_id, ecm_id or 0, now, role=role, default=None)
        except BcastError:
            return None

    def _next_counter(self, key: ServiceKey, now: float) -> int:
        slot = (key.key_id, key.key_domain_id)
        counter = max(self._counters.get(slot, -1) + 1, int((now - _COUNTER_EPOCH) * 10)) & 0xFFFFFFFF
        self._counters[slot] = counter
        return counter


# -- classic DVB test ECM ---------------------------------------------------------------------


def _dvb_keys(key: bytes) -> tuple[bytes, bytes]:
    enc = hmac.new(key, b"bcast-sp4 dvb-ecm enc", hashlib.sha256).digest()[:16]
    mac = hmac.new(key, b"bcast-sp4 dvb-ecm mac", hashlib.sha256).digest()
    return enc, mac


def _ctr(key: bytes, nonce: bytes, index: int, data: bytes) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CTR(nonce + index.to_bytes(8, "big"))).encryptor()
    return cipher.update(data) + cipher.finalize()


def build_dvb_ecm(key: bytes, ecm_id: int, cp_number: int, cws: list[tuple[int, bytes]], rng=os.urandom) -> bytes:
    """One ECM section of bcast-sp4's DVB test-ECM format v1 (see the module docstring)."""
    enc_key, mac_key = _dvb_keys(key)
    nonce = rng(8)
    body = bytearray(struct.pack(">BHH8sB", 1, ecm_id, cp_number, nonce, len(cws)))
    for index, (cp, cw) in enumerate(cws):
        body += struct.pack(">HB", cp, len(cw)) + _ctr(enc_key, nonce, index, cw)
    length = len(body) + 12
    if length > 4093:
        raise ECMGenerationError(INVALID_VALUE, "CWs too long for one ECM section")
    header = bytes([0x80 | (cp_number & 1), 0x70 | (length >> 8), length & 0xFF])
    mac = hmac.new(mac_key, header + body, hashlib.sha1).digest()[:12]
    return header + bytes(body) + mac


def parse_dvb_ecm(section: bytes, key: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """Verify and decrypt a DVB test ECM: ``(ECM_id, CP_number, [(CP_number, CW)])``.

    :raises ValueError: malformed section or failed MAC.
    """
    if len(section) < 3 or section[0] not in (0x80, 0x81):
        raise ValueError("not an ECM section (table_id 0x80/0x81)")
    length = ((section[1] & 0x0F) << 8) | section[2]
    if len(section) != 3 + length or length < 14 + 12:
        raise ValueError("section_length does not match")
    enc_key, mac_key = _dvb_keys(key)
    if not hmac.compare_digest(hmac.new(mac_key, section[:-12], hashlib.sha1).digest()[:12], section[-12:]):
        raise ValueError("ECM MAC check failed")
    version, ecm_id, cp_number, nonce, count = struct.unpack_from(">BHH8sB", section, 3)
    if version != 1 or section[0] != 0x80 | (cp_number & 1):
        raise ValueError("unknown test-ECM format or table_id/parity mismatch")
    pos, cws = 17, []
    for index in range(count):
        cp, size = struct.unpack_from(">HB", section, pos)
        cws.append((cp, _ctr(enc_key, nonce, index, section[pos + 3 : pos + 3 + size])))
        pos += 3 + size
    if pos != len(section) - 12:
        raise ValueError("trailing bytes in ECM")
    return ecm_id, cp_number, cws


def packetize(section: bytes, pid: int = PLACEHOLDER_PID) -> bytes:
    """The section in 188-byte TS packets (payload_unit_start + pointer_field 0, 0xFF stuffing)."""
    payload = b"\x00" + section
    packets = []
    for counter, start in enumerate(range(0, len(payload), 184)):
        chunk = payload[start : start + 184]
        pusi = 0x40 if start == 0 else 0
        header = bytes([0x47, pusi | (pid >> 8), pid & 0xFF, 0x10 | (counter & 0x0F)])
        packets.append(header + chunk + b"\xff" * (184 - len(chunk)))
    return b"".join(packets)


def depacketize(packets: bytes) -> bytes:
    """The section carried by :func:`packetize`'s packets."""
    if not packets or len(packets) % 188 or any(packets[i] != 0x47 for i in range(0, len(packets), 188)):
        raise ValueError("not a whole number of 188-byte TS packets")
    payload = b"".join(packets[i + 4 : i + 188] for i in range(0, len(packets), 188))
    pointer = payload[0]
    section = payload[1 + pointer :]
    length = ((section[1] & 0x0F) << 8) | section[2]
    return section[: 3 + length]
