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
0xFF02, unsupported traffic protection 0xFF03, undecodable TEK material 0xFF04), "invalid value"
0x0011 for access criteria that are not a descriptor loop, and in the classic DVB modes
"inconsistent length" 0x000F for a CW the test ECM cannot carry (0 or more than 255 bytes) and
0x0011 for CWs that together overflow one section. No exception of any other kind leaves
:meth:`STKMSource.generate` or :meth:`STKMSource.check_stream`: anything unforeseen in the
payload or crypto code for one request becomes 0x7000 "unknown error" for that request (its detail
names the exception type and where it was raised, never a value), so the stream_error goes to
that stream alone and the channel and its other streams carry on.

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

Each CW is 1-255 bytes (its length has one byte). The two keys are derived once per configured key
(:class:`DvbEcmKey`: an AES-128-ECB context making the CTR keystream of all CWs of an ECM in one
call, and the keyed HMAC-SHA-1 states), not once per ECM.

In TS-packet mode the section is carried in 188-byte packets on PID 0x1FFF, a placeholder the
SCS re-stamps (the ECMG does not know the ECM PID; digest §3.4).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import traceback
from typing import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from . import stkm_drm, stkm_mikey
from .cw_encryption import CWDecryptor
from .ecm_request import CasMode, ECMGenerationError, ECMRequest
from .keys import KeyRole, KeyStore, ServiceKey
from .keys import _posix_us  # the key store's own time rounding, so cached spans agree with it
from .status import BcastError, simulcrypt_code
from .stkm_drm import _hmac_sha1_states, _hmac_sha1_with
from .traffic import decode_cw
from ..wire.errors import ECMGSCSErrorStatus as ErrorStatus

NOT_ENOUGH_CW = ErrorStatus.NOT_ENOUGH_CONTROL_WORDS
OUT_OF_STORAGE = ErrorStatus.OUT_OF_STORAGE_CAPACITY
INVALID_LENGTH = ErrorStatus.INCONSISTENT_LENGTH
INVALID_VALUE = ErrorStatus.INVALID_VALUE
UNKNOWN_ERROR = ErrorStatus.UNKNOWN_ERROR
_COUNTER_EPOCH = 1_700_000_000.0
PLACEHOLDER_PID = 0x1FFF
_DRM_PROFILE, _DVB_SECTIONS, _DVB_TS_PACKETS = CasMode.DRM_PROFILE, CasMode.DVB_SECTIONS, CasMode.DVB_TS_PACKETS


class STKMSource:
    """Implements :class:`bcast_sp4.bcast.ecm_request.ECMSource` with real BCAST STKMs.

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
        #: ECM_datagrams generated so far, by mode (read by the metrics at scrape time)
        self.generated: dict[CasMode, int] = dict.fromkeys(CasMode, 0)
        #: per (Super_CAS_id, ECM_id): the last TEK(n+1) CW and its decoded material
        self._last_next: dict[tuple[int, int], tuple[bytes, object]] = {}
        #: per (Super_CAS_id, ECM_id): (start_us, end_us, SEK, PEK or None, start_s, end_s): the keys
        #: valid on [start_us, end_us), and that span shrunk by 2 µs at both ends, in seconds
        self._key_spans: dict[tuple[int, int], tuple] = {}
        #: per Super_CAS_id of a classic DVB mode: the test-ECM key's derived state
        self._dvb_states: dict[int, DvbEcmKey] = {}
        self._cw_decryptor = CWDecryptor()

    # -- ECMSource ---------------------------------------------------------------------------

    def check_stream(self, super_cas_id: int, ecm_id: int | None, now: float) -> None:
        try:
            mode = self.cas_modes[super_cas_id]
            if mode in (CasMode.DVB_SECTIONS, CasMode.DVB_TS_PACKETS):
                if super_cas_id not in self.dvb_keys:
                    raise ECMGenerationError(0x0005, f"no DVB test-ECM key for Super_CAS_id {super_cas_id:#010x}")
                return
            self._service_key(super_cas_id, ecm_id, now)
        except Exception as exc:  # noqa: BLE001 - every failure is this stream's error reply
            raise _generation_error(exc) from None

    def generate(self, request: ECMRequest) -> bytes:
        """The ECM_datagram for one CW_provision.

        :raises ECMGenerationError: and nothing else (see the module docstring for the codes).
        """
        try:
            datagram = self._generate(request)
        except Exception as exc:  # noqa: BLE001 - every failure is this stream's error reply
            raise _generation_error(exc) from None
        self.generated[request.mode] += 1
        return datagram

    def _generate(self, request: ECMRequest) -> bytes:
        # the request's fields in one unpack (the per-STKM path)
        super_cas_id, mode, ecm_id, _channel, _stream, cp_number, cws, _duration, access_criteria, cw_encryption, now = (
            request
        )
        # CP_CW_combinations are (CP_number, CW) pairs already: used as they are unless encrypted
        if cw_encryption is not None:
            pairs = [(c.CP_number, c.CW) for c in cws]
            plain = self._cw_decryptor.decrypt(cw_encryption, self.cw_encryption_keys, pairs)
            cws = list(zip((cp for cp, _ in pairs), plain))
        if mode is _DVB_SECTIONS or mode is _DVB_TS_PACKETS:
            state = self._dvb_states.get(super_cas_id)
            if state is None or state._key is not self.dvb_keys[super_cas_id]:
                state = self._dvb_state(super_cas_id)
            section = build_dvb_ecm(state, ecm_id or 0, cp_number, cws, self.rng)
            return section if mode is _DVB_SECTIONS else packetize(section)
        next_cp = (cp_number + 1) & 0xFFFF
        current = following = None
        for cp, cw in cws:  # the last of equal CP_numbers wins, as a dict of them would keep it
            if cp == cp_number:
                current = cw
            elif cp == next_cp:
                following = cw
        if access_criteria:
            try:
                access = stkm_drm.decode_access_criteria(access_criteria)
            except ValueError as exc:  # not a descriptor loop: the DVB parameter's value is invalid
                raise ECMGenerationError(INVALID_VALUE, f"access_criteria: {exc}") from None
        else:
            access = ()
        stream = (super_cas_id, ecm_id or 0)
        if current is None:  # the machine checks the CP_numbers; this holds for any caller
            raise ECMGenerationError(NOT_ENOUGH_CW, f"no CW for CP_number {cp_number}")
        # CW(n) of this provision is usually CW(n+1) of the stream's previous one: decoded then.
        last = self._last_next.get(stream)
        material = last[1] if last is not None and last[0] == current else decode_cw(None, current)
        if following is not None:
            next_material = decode_cw(material.PROTECTION, following)
            self._last_next[stream] = (following, next_material)
        else:
            next_material = None
        span = self._key_spans.get(stream)
        if span is not None and span[4] < now < span[5]:  # well inside the cached span (_stream_keys)
            key, programme = span[2], span[3]
        else:
            key, programme = self._stream_keys(stream, now)
        if mode is _DRM_PROFILE:
            return stkm_drm.build_stkm(
                material,
                key,
                programme_key=programme,
                next_material=next_material,
                timestamp=now,
                access_criteria=access,
            )
        return stkm_mikey.build_stkm(
            material,
            key,
            counter=self._next_counter(key, now),
            next_material=next_material,
            access_criteria=access,
        )

    def _dvb_state(self, super_cas_id: int) -> DvbEcmKey:
        """The derived state of the Super_CAS_id's test-ECM key (again when the key was changed)."""
        key = self.dvb_keys[super_cas_id]
        state = self._dvb_states.get(super_cas_id)
        if state is None or not state.derived_from(key):
            state = self._dvb_states[super_cas_id] = DvbEcmKey(key)
        return state

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


def _generation_error(exc: Exception) -> ECMGenerationError:
    """What the ECMG answers for a failure while making one ECM (module docstring)."""
    if isinstance(exc, ECMGenerationError):
        return exc
    if isinstance(exc, BcastError):  # their messages never hold key bytes (status.py)
        return ECMGenerationError(simulcrypt_code(exc.status), str(exc))
    if isinstance(exc, MemoryError):
        return ECMGenerationError(OUT_OF_STORAGE, "out of memory making the ECM")
    # Unforeseen: name the exception and where it was raised, never its message (it could quote a value).
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    return ECMGenerationError(UNKNOWN_ERROR, f"unexpected {type(exc).__name__}{where}")


# -- classic DVB test ECM ---------------------------------------------------------------------

_ECM_HEAD = struct.Struct(">BHH8sB")  # format, ECM_id, CP_number, nonce, count
_CW_HEAD = struct.Struct(">HB")  # CP_number, CW length
_COUNTER_BLOCK = struct.Struct(">8sQ")  # CTR counter block: nonce || index, + j for the j-th block
_MAX_SECTION_LENGTH = 4093  # section_length (12 bits) of a private section without section syntax
_MAC_SIZE = 12
_BYTE = tuple(bytes((i,)) for i in range(256))
_LENGTH = tuple(bytes((0x70 | i,)) for i in range(16))  # '0111' + the high 4 bits of section_length


class DvbEcmKey:
    """A test-ECM key with its two derived keys as reusable crypto state (module docstring).

    ``enc`` becomes an AES-128-ECB context (CTR mode is its keystream ``E(nonce || index + j)``, all
    CWs of an ECM in one call); ``mac`` the inner and outer SHA-1 states of HMAC-SHA-1 (RFC 2104).
    Build one per configured key and pass it to :func:`build_dvb_ecm` / :func:`parse_dvb_ecm`.

    :param key: the configured key.
    """

    __slots__ = ("_key", "_ecb", "_mac")

    def __init__(self, key: bytes) -> None:
        self._key = bytes(key)
        enc = hmac.new(self._key, b"bcast-sp4 dvb-ecm enc", hashlib.sha256).digest()[:16]
        mac = hmac.new(self._key, b"bcast-sp4 dvb-ecm mac", hashlib.sha256).digest()
        self._ecb = Cipher(algorithms.AES(enc), modes.ECB()).encryptor()
        self._mac = _hmac_sha1_states(mac)

    def __repr__(self) -> str:
        return "<DvbEcmKey>"

    def derived_from(self, key: bytes) -> bool:
        """Whether this state belongs to *key* (for caches that must follow a changed key)."""
        return key is self._key or hmac.compare_digest(key, self._key)

    def crypt(self, nonce: bytes, cws: list[bytes]) -> list[bytes]:
        """AES-128-CTR of each CW under the counter block ``nonce || index`` (its own inverse)."""
        pack, blocks = _COUNTER_BLOCK.pack, []
        for index, cw in enumerate(cws):
            if len(cw) <= 16:  # DVB-CSA and AES CWs: one block
                blocks.append(pack(nonce, index))
            else:
                blocks += [pack(nonce, index + j) for j in range((len(cw) + 15) >> 4)]
        stream = self._ecb.update(b"".join(blocks))
        out, pos = [], 0
        for cw in cws:
            n = len(cw)
            out.append((int.from_bytes(cw, "big") ^ int.from_bytes(stream[pos : pos + n], "big")).to_bytes(n, "big"))
            pos += (n + 15) & ~15
        return out

    def mac(self, data: bytes) -> bytes:
        """HMAC-SHA-1-96 of *data* under the MAC key."""
        return _hmac_sha1_with(self._mac, data)[:_MAC_SIZE]


def build_dvb_ecm(
    key: bytes | DvbEcmKey, ecm_id: int, cp_number: int, cws: list[tuple[int, bytes]], rng=os.urandom
) -> bytes:
    """One ECM section of bcast-sp4's DVB test-ECM format v1 (see the module docstring).

    :param key: the configured key, or its :class:`DvbEcmKey` (derived once: the fast way).
    :param cws: ``(CP_number, CW)`` pairs, each CW 1-255 bytes.
    :raises ECMGenerationError: 0x000F for a CW of 0 or more than 255 bytes, 0x0011 for more than
        255 CWs or CWs too long together for one section.
    """
    length, plain = 14 + _MAC_SIZE, []
    for cp, cw in cws:
        if not 0 < len(cw) < 256:
            raise ECMGenerationError(
                INVALID_LENGTH, f"CW of CP_number {cp} is {len(cw)} bytes; the DVB test ECM carries 1 to 255"
            )
        length += 3 + len(cw)
        plain.append(cw)
    if len(cws) > 255:
        raise ECMGenerationError(INVALID_VALUE, f"{len(cws)} CWs; the DVB test ECM carries at most 255")
    if length > _MAX_SECTION_LENGTH:
        raise ECMGenerationError(INVALID_VALUE, "CWs too long for one ECM section")
    state = key if type(key) is DvbEcmKey else DvbEcmKey(key)
    nonce = rng(8)
    parts = [_BYTE[0x80 | (cp_number & 1)], _LENGTH[length >> 8], _BYTE[length & 0xFF],
             _ECM_HEAD.pack(1, ecm_id, cp_number, nonce, len(cws))]
    for (cp, cw), encrypted in zip(cws, state.crypt(nonce, plain)):
        parts.append(_CW_HEAD.pack(cp, len(cw)))
        parts.append(encrypted)
    section = b"".join(parts)
    return section + state.mac(section)


def parse_dvb_ecm(section: bytes, key: bytes | DvbEcmKey) -> tuple[int, int, list[tuple[int, bytes]]]:
    """Verify and decrypt a DVB test ECM: ``(ECM_id, CP_number, [(CP_number, CW)])``.

    :param key: the configured key, or its :class:`DvbEcmKey`.
    :raises ValueError: malformed section or failed MAC.
    """
    if len(section) < 3 or section[0] not in (0x80, 0x81):
        raise ValueError("not an ECM section (table_id 0x80/0x81)")
    length = ((section[1] & 0x0F) << 8) | section[2]
    if len(section) != 3 + length or length < 14 + _MAC_SIZE:
        raise ValueError("section_length does not match")
    state = key if type(key) is DvbEcmKey else DvbEcmKey(key)
    if not hmac.compare_digest(state.mac(section[:-_MAC_SIZE]), section[-_MAC_SIZE:]):
        raise ValueError("ECM MAC check failed")
    version, ecm_id, cp_number, nonce, count = _ECM_HEAD.unpack_from(section, 3)
    if version != 1 or section[0] != 0x80 | (cp_number & 1):
        raise ValueError("unknown test-ECM format or table_id/parity mismatch")
    pos, heads, encrypted = 17, [], []
    for _ in range(count):
        if pos + 3 > len(section) - _MAC_SIZE:
            raise ValueError("ECM truncated")
        cp, size = _CW_HEAD.unpack_from(section, pos)
        heads.append(cp)
        encrypted.append(section[pos + 3 : pos + 3 + size])
        pos += 3 + size
    if pos != len(section) - _MAC_SIZE:
        raise ValueError("trailing bytes in ECM")
    return ecm_id, cp_number, list(zip(heads, state.crypt(nonce, encrypted)))


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
