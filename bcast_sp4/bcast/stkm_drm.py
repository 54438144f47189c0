"""DRM Profile STKM (binary short-term key message), **provisional layout PROV-2**.

Spec clause: OMA-TS-BCAST_SvcCntProtection-V1_0 DRM Profile STKM (the SP-4 CR §14.1.1.3.1 calls it
"DRM Profile STKM as defined in Section 5.5"), as reconstructed in bcast-keys.md §2 and corrected by
§12.2-§12.4 (PROV-2 header word, which supersedes PROV-1's).

Confidence: **low for the byte layout** (the approved syntax table was never read; bcast-keys.md
§12.8 lists the unknowns), medium for the field inventory and the sizes of timestamp, CID extensions
and MACs. ``LAYOUT_VERSION = "PROV-2"``. Do not ship to real terminals before diffing the table
below against the approved spec. The field order and widths live in ONE table, ``STKM_LAYOUT``
(with ``HEADER`` and ``KEY_BLOCK`` as its parts), so fixing the order is a data change.

Layout (network byte order)::

    header word, 16 bits (PROV-2, candidate A of §12.3):
      15..12 protocol_version (=1) | 11..10 protection_after_reception | 9 reserved_for_future_use
      8 access_criteria_flag | 7..5 traffic_protection_protocol | 4 traffic_authentication_flag
      3 next_traffic_key_flag | 2 timestamp_flag | 1 programme_flag | 0 service_flag
    current key block:
      traffic_key_id            IPsec: SPI, 32 bits; SRTP: MKI, ISMACryp: KI, as 8-bit length + bytes
      [encrypted_key_material_length 8]        (only if the explicit-length variant is on; default on)
      encrypted_traffic_key_material
    if next_traffic_key_flag: next key block (same shape)
    if timestamp_flag:        timestamp 40 (16-bit MJD + 24-bit BCD hh:mm:ss, UTC)
    if programme_flag and service_flag: encrypted_PEK 128
    if access_criteria_flag:  number_of_access_criteria_descriptors 8, then descriptors (tag 8, length 8, data)
    if programme_flag:        programme_CID_extension 32, programme_MAC 96
    if service_flag:          service_CID_extension 32, service_MAC 96

Decisions on the [R]/[?] points (bcast-keys.md §12.8):

1. Header bits 9-8: candidate A (spare at bit 9, access flag at bit 8). The spare bit is written 0 and
   ignored (not rejected) on input, as §12.3 advises.
2. Key-material length byte: **explicit** 8-bit length before the encrypted material (§12.2 vector B,
   the Nokia model's reading) by default. ``explicit_key_material_length=False`` selects the implied-
   length variant (vector A); both are the same table, switched by a build/parse parameter. Either way
   the length must equal the size the protocol and flags imply.
3. ``traffic_key_lifetime``: width and position unknown, so **omitted**.
4. SRTP MKI / ISMACryp key indicator in the STKM: 8-bit length + value, in the slot where IPsec has
   its SPI. The identifier travels in clear (it is not secret; it selects the TEK in the traffic).
5. Tail order as PROV-1: timestamp, encrypted_PEK, access criteria, programme block, service block.
   The access criteria precede the MACs so that the MACs cover them.
6. TEK encryption: AES-128-CBC with an all-zero IV over the plaintext key material (traffic.py,
   §2.5) zero-padded to a multiple of 16 bytes. For one 16-byte TEK this equals ECB, which reproduces
   the §12.4 fixtures; the plaintext length is implied by protocol + authentication flag (IPsec 16/36,
   SRTP 30, ISMACryp 24 bytes -> 16/48, 32, 32 encrypted), and the padding must decrypt to zeros.
7. Keys: TEK under the SEK with only the service flag, under the PEK with the programme flag; with
   both flags the TEK is under the PEK and ``encrypted_PEK`` = AES-128(SEK, PEK) (one block) [R].
8. MAC: HMAC-SHA-1 truncated to 96 bits, under SAK (service) / PAK (programme); each covers every
   byte from the first up to its own start, so the service MAC also covers the programme MAC [R].
   Compared in constant time. An STKM with neither flag (no MAC) is rejected.
9. Timestamp: DVB UTC_time coding (16-bit MJD + BCD) [R]; its range ends 2038-04-22.
10. Access criteria: descriptors are (tag 8, length 8, data) [?]; tags from BBTS (1 parental rating,
    2 copy control, 3 blackout) are *examples* only, OMA's values are [?]. Project convention: the
    SimulCrypt ``access_criteria`` parameter carries the same concatenated descriptors
    (:func:`decode_access_criteria`).

Construct use (STYLE §7): the table is declared once; the plain ``STKM_LAYOUT`` parses received
messages. Building has two paths that give the same bytes:

* the default **fast path** (the ECMG's hot path): ``struct`` and ``bytes.join`` with layout facts
  *derived from the table at import* -- header bit positions and widths from ``HEADER``, the field
  order from ``STKM_LAYOUT``, the MAC block from ``MAC_BLOCK`` -- so reordering the table reorders
  the fast path too; the key block's two variants are written out by hand. The import fails if the
  table takes a shape the fast path cannot follow (MAC blocks not at the tail, fields added to or
  removed from the table, ``HEADER``, ``KEY_BLOCK`` or the descriptor). Inputs of other types than
  the fast path is written for (e.g. subclasses of the material or key classes) take the reference;
* the **reference** (``reference=True``): ``_STKM_BUILDER``, the compiled table, with the MACs built
  as placeholders and patched afterwards. A hypothesis test checks both agree byte for byte.

:func:`decode_access_criteria` walks the (tag, length, data) bytes directly and leaves a truncated
value to ``_ACCESS_CRITERIA_LOOP``, which raises; ``reference=True`` parses with the schema only.

No crypto in the schema. Crypto on the fast path and in :func:`parse_stkm` uses per-key state
cached with :class:`~bcast_sp4.bcast.keys.PerKeyCache` (on the identity of the ``ServiceKey``,
dropped with it): one AES-128-ECB encryptor / decryptor context per SEK/PEK, on which the
zero-IV CBC of decision 6 is computed block by block (an ECB context fed whole blocks keeps no
state between calls), and one HMAC-SHA-1 state per SAK/PAK, copied per MAC. The contexts are
shared, so one key's state must not be used by two threads at once (a CPython-with-GIL caller is
fine; the ECMG is single-threaded). The reference path uses fresh objects per call.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

import attrs
from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    ConstructError,
    Flag,
    GreedyBytes,
    GreedyRange,
    If,
    IfThenElse,
    Int8ub,
    Int32ub,
    Prefixed,
    PrefixedArray,
    Struct,
    Tell,
    Terminated,
    this,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .keys import (
    KeyLookup,
    KeyRef,
    KeyRole,
    KeyStore,
    PerKeyCache,
    ServiceKey,
    Timeish,
    _posix_us,
    as_key_lookup,
    to_datetime,
)
from .status import NoKeyError, STKMError, TrafficKeyError
from .traffic import (
    IPsecMaterial,
    ISMACrypMaterial,
    SRTPMaterial,
    TrafficKeyMaterial,
    TrafficProtection,
    key_material_length,
    key_material_plaintext,
    material_from_plaintext,
)

__all__ = [
    "LAYOUT_VERSION",
    "STKM_PROTOCOL_VERSION",
    "MAC_SIZE",
    "HEADER",
    "KEY_BLOCK",
    "MAC_BLOCK",
    "STKM_LAYOUT",
    "AccessCriteriaDescriptor",
    "ParsedSTKM",
    "STKMError",
    "build_stkm",
    "parse_stkm",
    "encode_access_criteria",
    "decode_access_criteria",
    "encode_timestamp",
    "decode_timestamp",
]

#: Which reconstruction of the (unread) approved table this codec implements.
LAYOUT_VERSION = "PROV-2"
#: ``protocol_version`` written in the header word (BBTS/18Crypt use 1) [C].
STKM_PROTOCOL_VERSION = 1
#: Truncated HMAC-SHA-1 size in bytes (96 bits) [C].
MAC_SIZE = 12
_TIMESTAMP_SIZE = 5
_PEK_SIZE = 16
_BLOCK = 16
_ZERO_IV = bytes(16)

# --- THE TABLE ---------------------------------------------------------------------------------
# Field order and widths of PROV-2. Change the order here and nowhere else.

HEADER = BitStruct(
    "protocol_version" / BitsInteger(4),
    "protection_after_reception" / BitsInteger(2),
    "reserved_for_future_use" / BitsInteger(1),  # candidate A: spare at bit 9 (§12.3)
    "access_criteria_flag" / Flag,  # candidate A: access flag at bit 8
    "traffic_protection_protocol" / BitsInteger(3),
    "traffic_authentication_flag" / Flag,
    "next_traffic_key_flag" / Flag,
    "timestamp_flag" / Flag,
    "programme_flag" / Flag,
    "service_flag" / Flag,
)

KEY_BLOCK = Struct(
    "traffic_key_id"
    / IfThenElse(
        this._.header.traffic_protection_protocol == int(TrafficProtection.IPSEC),
        Bytes(4),  # SPI
        Prefixed(Int8ub, GreedyBytes),  # MKI / key indicator
    ),
    "encrypted_traffic_key_material"
    / IfThenElse(
        this._params.explicit_key_material_length,
        Prefixed(Int8ub, GreedyBytes),  # §12.4 vector B
        Bytes(this._params.key_material_size),  # §12.4 vector A
    ),
)

ACCESS_CRITERIA_DESCRIPTOR = Struct(
    "tag" / Int8ub,
    "data" / Prefixed(Int8ub, GreedyBytes),
)

MAC_BLOCK = Struct(  # mac_offset is not on the wire: it records where the MAC starts (= its coverage)
    "cid_extension" / Int32ub,
    "mac_offset" / Tell,
    "mac" / Bytes(MAC_SIZE),
)

STKM_LAYOUT = Struct(
    "header" / HEADER,
    "current" / KEY_BLOCK,
    "next" / If(this.header.next_traffic_key_flag, KEY_BLOCK),
    "timestamp" / If(this.header.timestamp_flag, Bytes(_TIMESTAMP_SIZE)),
    "encrypted_PEK" / If(this.header.programme_flag & this.header.service_flag, Bytes(_PEK_SIZE)),
    "access_criteria" / If(this.header.access_criteria_flag, PrefixedArray(Int8ub, ACCESS_CRITERIA_DESCRIPTOR)),
    "programme" / If(this.header.programme_flag, MAC_BLOCK),
    "service" / If(this.header.service_flag, MAC_BLOCK),
    Terminated,
)
# The MAC blocks are the tail of the table, programme then service; the builder patches the MACs at
# offsets counted from the end. Round-trip tests check that against the parser's Tell offsets.
_MAC_BLOCK_SIZE = MAC_BLOCK.sizeof()
_STKM_BUILDER = STKM_LAYOUT.compile()

# --- the fast path's view of THE TABLE (derived, not restated) ----------------------------------


def _header_bits(header: Any) -> dict[str, tuple[int, int]]:
    """``name -> (shift, width)`` of each field of a BitStruct, most significant first."""
    fields = [(sc.name, sc.sizeof()) for sc in header.subcon.subcons]  # sizeof() = bits inside Bitwise
    shift = sum(width for _, width in fields)
    out = {}
    for name, width in fields:
        shift -= width
        out[name] = (shift, width)
    return out


_HEADER_BITS = _header_bits(HEADER)
_HEADER_WORD = struct.Struct({1: ">B", 2: ">H", 4: ">I"}[HEADER.sizeof()])
_LAYOUT_FIELDS = tuple(sc.name for sc in STKM_LAYOUT.subcons if sc.name)
_MAC_BLOCK_FIELDS = tuple((sc.name, sc.subcon) for sc in MAC_BLOCK.subcons)
if (
    _LAYOUT_FIELDS[-2:] != ("programme", "service")
    or [name for name, _ in _MAC_BLOCK_FIELDS] != ["cid_extension", "mac_offset", "mac"]
    or _MAC_BLOCK_FIELDS[2][1].sizeof() != MAC_SIZE
):  # pragma: no cover - guards a table edit
    raise ImportError("STKM_LAYOUT: the fast path needs the MAC blocks (cid, MAC) at the tail; see build_stkm")
if (
    set(_HEADER_BITS) != {
        "protocol_version", "protection_after_reception", "reserved_for_future_use", "access_criteria_flag",
        "traffic_protection_protocol", "traffic_authentication_flag", "next_traffic_key_flag", "timestamp_flag",
        "programme_flag", "service_flag",
    }
    or tuple(sc.name for sc in KEY_BLOCK.subcons) != ("traffic_key_id", "encrypted_traffic_key_material")
    or tuple(sc.name for sc in ACCESS_CRITERIA_DESCRIPTOR.subcons) != ("tag", "data")
):  # pragma: no cover - guards a table edit
    raise ImportError("HEADER / KEY_BLOCK / descriptor fields changed: teach build_stkm's fast path")
_CID_EXTENSION = struct.Struct(_MAC_BLOCK_FIELDS[0][1].fmtstr)
# build_stkm's fast path computes the other fields in this fixed order; the table's order picks them.
_FAST_FIELDS = ("header", "current", "next", "timestamp", "encrypted_PEK", "access_criteria")
if set(_FAST_FIELDS) != set(_LAYOUT_FIELDS[:-2]):  # pragma: no cover - guards a table edit
    raise ImportError("STKM_LAYOUT gained or lost a field: teach build_stkm's fast path")
_IN_TABLE_ORDER = tuple(_FAST_FIELDS.index(name) for name in _LAYOUT_FIELDS[:-2])

# The SimulCrypt access_criteria parameter: descriptors back to back, no count byte.
_ACCESS_CRITERIA_LOOP = Struct("descriptors" / GreedyRange(ACCESS_CRITERIA_DESCRIPTOR), Terminated)


@attrs.frozen
class AccessCriteriaDescriptor:
    """One access-criteria descriptor (tag 8, length 8, data) [?]; tag values are not OMA-confirmed."""

    tag: int = attrs.field()
    data: bytes = attrs.field(converter=bytes)

    @tag.validator
    def _tag(self, _attr: attrs.Attribute, value: int) -> None:
        if not 0 <= value <= 0xFF:
            raise ValueError("access criteria tag must be 0..255")

    @data.validator
    def _data(self, _attr: attrs.Attribute, value: bytes) -> None:
        if len(value) > 0xFF:
            raise ValueError("access criteria descriptor data longer than 255 bytes")


@attrs.frozen(kw_only=True)
class ParsedSTKM:
    """A verified and decrypted DRM Profile STKM.

    :ivar verified_macs: which MACs were checked: ``"programme"`` and/or ``"service"``. Every field
        except ``service_cid_extension`` lies before the programme MAC, so one verified MAC covers
        all of them; ``service_cid_extension`` is unauthenticated when ``"service"`` is missing.
    """

    layout_version: str
    protocol_version: int
    protection_after_reception: int
    protection: TrafficProtection
    traffic_authentication: bool
    material: TrafficKeyMaterial = attrs.field(repr=False)
    next_material: TrafficKeyMaterial | None = attrs.field(repr=False)
    timestamp: datetime | None
    access_criteria: tuple[AccessCriteriaDescriptor, ...]
    programme_cid_extension: int | None
    service_cid_extension: int | None
    verified_macs: tuple[str, ...]


# --- helpers -----------------------------------------------------------------------------------

def encode_access_criteria(descriptors: Iterable[AccessCriteriaDescriptor]) -> bytes:
    """Concatenate descriptors as (tag, length, data): the SimulCrypt ``access_criteria`` value.

    :param descriptors: the descriptors.
    :returns: the bytes.
    """
    return b"".join(bytes((d.tag, len(d.data))) + d.data for d in descriptors)


def decode_access_criteria(data: bytes, *, reference: bool = False) -> tuple[AccessCriteriaDescriptor, ...]:
    """Split a SimulCrypt ``access_criteria`` value into descriptors (project convention).

    :param data: concatenated (tag 8, length 8, data) descriptors.
    :param reference: parse with the construct schema (``_ACCESS_CRITERIA_LOOP``) instead of the
        byte walk (same result and error; the ECMG decodes this parameter per CW_provision).
    :returns: the descriptors.
    :raises STKMError: on a truncated descriptor.
    """
    data = bytes(data)
    if not reference:
        descriptors = []
        pos, end = 0, len(data)
        while pos + 2 <= end:
            stop = pos + 2 + data[pos + 1]
            if stop > end:
                break
            descriptors.append(AccessCriteriaDescriptor(data[pos], data[pos + 2 : stop]))
            pos = stop
        if pos == end:
            return tuple(descriptors)
        # a truncated descriptor: let the schema report it
    try:
        parsed = _ACCESS_CRITERIA_LOOP.parse(data)
    except ConstructError:
        raise STKMError("malformed access criteria descriptors") from None
    return tuple(AccessCriteriaDescriptor(d.tag, d.data) for d in parsed.descriptors)


_MJD_EPOCH = date(1858, 11, 17)


def encode_timestamp(when: Timeish) -> bytes:
    """Encode a UTC time as 40 bits: 16-bit MJD + BCD hh mm ss (DVB UTC_time coding) [R].

    :param when: aware datetime or POSIX seconds; sub-second parts are dropped.
    :returns: 5 bytes.
    :raises STKMError: outside the 16-bit MJD range (1858-11-17 .. 2038-04-22).
    """
    t = to_datetime(when)
    mjd = (t.date() - _MJD_EPOCH).days
    if not 0 <= mjd <= 0xFFFF:
        raise STKMError("timestamp outside the 16-bit MJD range")
    bcd = bytes(((v // 10) << 4) | (v % 10) for v in (t.hour, t.minute, t.second))
    return mjd.to_bytes(2, "big") + bcd


def decode_timestamp(raw: bytes) -> datetime:
    """Decode :func:`encode_timestamp` output.

    :param raw: 5 bytes.
    :returns: aware UTC datetime.
    :raises STKMError: on bad BCD or an impossible time.
    """
    if len(raw) != _TIMESTAMP_SIZE:
        raise STKMError("timestamp must be 5 bytes")
    parts = []
    for byte in raw[2:]:
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise STKMError("timestamp is not BCD")
        parts.append(hi * 10 + lo)
    hour, minute, second = parts
    if hour > 23 or minute > 59 or second > 59:
        raise STKMError("timestamp time of day out of range")
    day = _MJD_EPOCH + timedelta(days=int.from_bytes(raw[:2], "big"))
    return datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=timezone.utc)


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _aes_cbc_zero_iv(key: bytes, data: bytes, *, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


def _mac(key: bytes, data: bytes | bytearray) -> bytes:
    return hmac.new(key, data, hashlib.sha1).digest()[:MAC_SIZE]


def _check_key(key: ServiceKey, role: KeyRole, what: str) -> None:
    if key.role is not role:
        raise STKMError(f"{what} {key.label} has role {key.role.value}, expected {role.value}")
    if key.authentication_key is None:
        raise STKMError(f"{what} {key.label} has no authentication key (SAK/PAK) for the DRM Profile MAC")


# --- per-key crypto state (fast path and parse) ---------------------------------------------------

class _KeyState:
    """AES-128-ECB contexts under a SEK/PEK and the HMAC-SHA-1 state under its SAK/PAK."""

    __slots__ = ("encryptor", "decryptor", "mac")

    def __init__(self, key: ServiceKey) -> None:
        ecb = Cipher(algorithms.AES(key.key), modes.ECB())  # the block cipher under CBC, see below
        self.encryptor = ecb.encryptor()
        self.decryptor = ecb.decryptor()
        auth = key.authentication_key
        # HMAC-SHA-1 (RFC 2104) as its two keyed SHA-1 states: copying two hashlib objects per MAC
        # costs half of copying an hmac.HMAC object.
        self.mac = _hmac_sha1_states(auth) if auth is not None else None

    def __repr__(self) -> str:
        return "<_KeyState>"


_KEY_STATE: PerKeyCache[_KeyState] = PerKeyCache(_KeyState)


def _key_state(key: ServiceKey) -> _KeyState | None:
    """The cached state of a real :class:`ServiceKey`; ``None`` for anything else (use one-shot crypto)."""
    return _KEY_STATE(key) if type(key) is ServiceKey else None


def _hmac_sha1_states(key: bytes) -> tuple[Any, Any]:
    """The inner and outer SHA-1 states of HMAC-SHA-1 under *key* (RFC 2104 §2)."""
    if len(key) > 64:
        key = hashlib.sha1(key).digest()
    key = key.ljust(64, b"\x00")
    return hashlib.sha1(bytes(b ^ 0x36 for b in key)), hashlib.sha1(bytes(b ^ 0x5C for b in key))


def _hmac_sha1_with(states: tuple[Any, Any], data: bytes) -> bytes:
    """HMAC-SHA-1 (20 bytes) of *data* from the states of :func:`_hmac_sha1_states` (left unchanged)."""
    inner = states[0].copy()
    inner.update(data)
    outer = states[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def _cached_mac(state: _KeyState, data: bytes) -> bytes:
    inner_state, outer_state = state.mac  # type: ignore[misc]
    inner = inner_state.copy()
    inner.update(data)
    outer = outer_state.copy()
    outer.update(inner.digest())
    return outer.digest()[:MAC_SIZE]


def _cbc_zero_iv_encrypt(encryptor: Any, first: bytes, second: bytes | None) -> tuple[bytes, bytes | None]:
    """AES-CBC with a zero IV of one or two messages (equal lengths, whole blocks) on an ECB context.

    ``C_1 = E(P_1)``, ``C_j = E(P_j xor C_(j-1))``; the j-th blocks of both messages share one ECB call.
    """
    if second is None:
        out = block = encryptor.update(first[:_BLOCK])
        for j in range(_BLOCK, len(first), _BLOCK):
            chained = int.from_bytes(first[j : j + _BLOCK], "big") ^ int.from_bytes(block, "big")
            block = encryptor.update(chained.to_bytes(_BLOCK, "big"))
            out += block
        return out, None
    row = encryptor.update(first[:_BLOCK] + second[:_BLOCK])
    out_first, out_second = row[:_BLOCK], row[_BLOCK:]
    for j in range(_BLOCK, len(first), _BLOCK):
        chained = int.from_bytes(first[j : j + _BLOCK] + second[j : j + _BLOCK], "big") ^ int.from_bytes(row, "big")
        row = encryptor.update(chained.to_bytes(2 * _BLOCK, "big"))
        out_first += row[:_BLOCK]
        out_second += row[_BLOCK:]
    return out_first, out_second


def _cbc_zero_iv_decrypt(decryptor: Any, data: bytes) -> bytes:
    """Inverse of :func:`_cbc_zero_iv_encrypt` for one message (whole blocks): ``P_j = D(C_j) xor C_(j-1)``."""
    chained = int.from_bytes(data[:-_BLOCK], "big") if len(data) > _BLOCK else 0
    return (int.from_bytes(decryptor.update(data), "big") ^ chained).to_bytes(len(data), "big")


# --- fast-path encoders ----------------------------------------------------------------------------

_BYTE = tuple(bytes((i,)) for i in range(256))
_BCD = tuple(((v // 10) << 4) | (v % 10) for v in range(60))
_TIMESTAMP = struct.Struct(">HBBB")  # 16-bit MJD + BCD hh mm ss (encode_timestamp)
assert _TIMESTAMP.size == _TIMESTAMP_SIZE
_MJD_OF_UNIX_EPOCH = (date(1970, 1, 1) - _MJD_EPOCH).days
_TIMESTAMP_FAST_END_US = (0x10000 - _MJD_OF_UNIX_EPOCH) * 86_400_000_000  # first instant of MJD 0x10000


def _timestamp_fast(when: Timeish) -> bytes:
    """:func:`encode_timestamp`, by arithmetic for POSIX seconds it can take (same bytes)."""
    cached = _timestamp_cache
    if type(when) is float and cached[0] is not None:
        # one-second resolution: an ECMG making many STKMs a second reuses the last encoding
        # (only well inside the second, where microsecond rounding cannot change which one it is)
        fraction = when - cached[0]
        if 1e-5 < fraction < 1 - 1e-5:
            return cached[1]
    us = _posix_us(when)
    if us is None or us >= _TIMESTAMP_FAST_END_US:
        return encode_timestamp(when)  # datetimes, the far past / future, and its errors
    whole = us // 1_000_000
    if cached[0] == whole:
        return cached[1]
    days, secs = divmod(whole, 86_400)
    packed = _TIMESTAMP.pack(days + _MJD_OF_UNIX_EPOCH, _BCD[secs // 3600], _BCD[secs // 60 % 60], _BCD[secs % 60])
    _timestamp_cache[:] = (whole, packed)
    return packed


_timestamp_cache: list = [None, b""]  # [POSIX second, its encoded timestamp]


_FAST_MATERIALS = frozenset({IPsecMaterial, SRTPMaterial, ISMACrypMaterial})
# members read per STKM, as module constants (on Python 3.11 Enum.MEMBER goes through the metaclass's
# __getattr__ hook: ~0.15 µs each)
_IPSEC, _SERVICE, _PROGRAMME = TrafficProtection.IPSEC, KeyRole.SERVICE, KeyRole.PROGRAMME
_PADDED_SIZE = {(p, a): _padded(key_material_length(p, a)) for p in TrafficProtection for a in (False, True)}
_PV_BITS = STKM_PROTOCOL_VERSION << _HEADER_BITS["protocol_version"][0]  # reserved_for_future_use = 0
_PAR_SHIFT = _HEADER_BITS["protection_after_reception"][0]
_PROTOCOL_SHIFT = _HEADER_BITS["traffic_protection_protocol"][0]
_AC_FLAG = 1 << _HEADER_BITS["access_criteria_flag"][0]
_AUTH_FLAG = 1 << _HEADER_BITS["traffic_authentication_flag"][0]
_NEXT_FLAG = 1 << _HEADER_BITS["next_traffic_key_flag"][0]
_TIMESTAMP_FLAG = 1 << _HEADER_BITS["timestamp_flag"][0]
_PROGRAMME_FLAG = 1 << _HEADER_BITS["programme_flag"][0]
_SERVICE_FLAG = 1 << _HEADER_BITS["service_flag"][0]


def _fast_path_applies(
    material: object,
    service_key: object,
    programme_key: object,
    protection_after_reception: object,
    access_criteria: tuple,
) -> bool:
    """Inputs of exactly the types the fast path is written for; anything else takes the reference."""
    return (
        type(material) in _FAST_MATERIALS
        and (service_key is None or type(service_key) is ServiceKey)
        and (programme_key is None or type(programme_key) is ServiceKey)
        and type(protection_after_reception) is int
        and (not access_criteria or all(type(d) is AccessCriteriaDescriptor for d in access_criteria))
    )


# --- build -------------------------------------------------------------------------------------

def build_stkm(
    material: TrafficKeyMaterial,
    service_key: ServiceKey | None,
    *,
    protection: TrafficProtection | None = None,
    programme_key: ServiceKey | None = None,
    next_material: TrafficKeyMaterial | None = None,
    timestamp: Timeish | None = None,
    protection_after_reception: int = 3,
    traffic_authentication: bool | None = None,
    access_criteria: Sequence[AccessCriteriaDescriptor] = (),
    explicit_key_material_length: bool = True,
    reference: bool = False,
) -> bytes:
    """Build a DRM Profile STKM (PROV-2) carrying ``material``.

    :param material: the TEK material of the crypto-period (from the CW).
    :param service_key: the SEK with its SAK (sets ``service_flag``), or ``None``.
    :param protection: the stream's traffic protection; if given it must match ``material``.
    :param programme_key: the PEK with its PAK (sets ``programme_flag``), or ``None``.
    :param next_material: the next crypto-period's TEK (sets ``next_traffic_key_flag``), or ``None``.
    :param timestamp: the STKM time, e.g. the crypto-period start (sets ``timestamp_flag``), or ``None``.
    :param protection_after_reception: 0-3 (§2.3); 3 = service protection only.
    :param traffic_authentication: ``traffic_authentication_flag``; ``None`` derives it (IPsec: whether the
        material has an authentication key; SRTP/ISMACryp: False). For IPsec it must match the material.
    :param access_criteria: descriptors for the access-criteria loop (sets ``access_criteria_flag``).
    :param explicit_key_material_length: layout variant (decision 2); True = §12.4 vector B.
    :param reference: build with the compiled construct table and one-shot crypto objects (the
        reference the default fast path is tested against; same bytes, several times slower).
    :returns: the STKM bytes.
    :raises STKMError: on inconsistent arguments (no key, wrong role, missing SAK/PAK, mismatched
        protection, out-of-range values).
    """
    prot = type(material).PROTECTION if hasattr(type(material), "PROTECTION") else None
    if prot is None:
        raise STKMError(f"not traffic key material: {type(material).__name__}")
    if protection is not None and TrafficProtection(protection) is not prot:
        raise STKMError(f"material is {prot.name}, stream protection is {TrafficProtection(protection).name}")
    if next_material is not None and type(next_material) is not type(material):
        raise STKMError("next_material must have the same traffic protection as material")
    auth = _traffic_authentication(material, next_material, traffic_authentication)
    if service_key is None and programme_key is None:
        raise STKMError("need a service key, a programme key or both")
    if service_key is not None:
        _check_key(service_key, _SERVICE, "service key")
    if programme_key is not None:
        _check_key(programme_key, _PROGRAMME, "programme key")
    if not 0 <= protection_after_reception <= 3:
        raise STKMError("protection_after_reception must be 0..3")
    access_criteria = tuple(access_criteria)
    if len(access_criteria) > 0xFF:
        raise STKMError("more than 255 access criteria descriptors")

    size = _PADDED_SIZE.get((prot, auth))
    if size is None:  # not one of our protections: the reference path reports it
        size = _padded(key_material_length(prot, auth))
    if not reference and _fast_path_applies(
        material, service_key, programme_key, protection_after_reception, access_criteria
    ):
        return _build_fast(
            material, service_key, programme_key, next_material, timestamp, protection_after_reception,
            prot, auth, access_criteria, explicit_key_material_length, size,
        )
    return _build_reference(
        material, service_key, programme_key, next_material, timestamp, protection_after_reception,
        prot, auth, access_criteria, explicit_key_material_length, size,
    )


def _build_fast(
    material: TrafficKeyMaterial,
    service_key: ServiceKey | None,
    programme_key: ServiceKey | None,
    next_material: TrafficKeyMaterial | None,
    timestamp: Timeish | None,
    par: int,
    prot: TrafficProtection,
    auth: bool,
    access_criteria: tuple[AccessCriteriaDescriptor, ...],
    explicit: bool,
    size: int,
) -> bytes:
    """The bytes of :func:`_build_reference` from struct/join and cached key state (arguments checked)."""
    tek_state = _KEY_STATE(programme_key if programme_key is not None else service_key)  # type: ignore[arg-type]
    plain = key_material_plaintext(material)
    if len(plain) != size:
        plain += bytes(size - len(plain))
    if next_material is None:
        next_plain = None
    else:
        next_plain = key_material_plaintext(next_material)
        if len(next_plain) != size:
            next_plain += bytes(size - len(next_plain))
    encrypted, next_encrypted = _cbc_zero_iv_encrypt(tek_state.encryptor, plain, next_plain)
    # KEY_BLOCK: IPsec SPI as Bytes(4), else Prefixed(Int8ub); then the material, explicit length or not
    length = _BYTE[size] if explicit else b""
    ident = material.identifier
    current = (ident if prot is _IPSEC else _BYTE[len(ident)] + ident) + length + encrypted
    if next_material is None:
        following = b""
    else:
        ident = next_material.identifier
        identifier_field = ident if prot is _IPSEC else _BYTE[len(ident)] + ident
        following = identifier_field + length + next_encrypted  # type: ignore[operator]

    word = _PV_BITS | (par << _PAR_SHIFT) | (int(prot) << _PROTOCOL_SHIFT)
    if access_criteria:
        word |= _AC_FLAG
    if auth:
        word |= _AUTH_FLAG
    if next_material is not None:
        word |= _NEXT_FLAG
    if timestamp is not None:
        word |= _TIMESTAMP_FLAG
    if programme_key is not None:
        word |= _PROGRAMME_FLAG
    if service_key is not None:
        word |= _SERVICE_FLAG
    fields = (
        _HEADER_WORD.pack(word),
        current,
        following,
        _timestamp_fast(timestamp) if timestamp is not None else b"",
        (
            _KEY_STATE(service_key).encryptor.update(programme_key.key)  # one block: CBC = ECB
            if service_key is not None and programme_key is not None
            else b""
        ),
        (
            _BYTE[len(access_criteria)]
            + b"".join([_BYTE[d.tag] + _BYTE[len(d.data)] + d.data for d in access_criteria])
            if access_criteria
            else b""
        ),
    )
    out = b"".join([fields[i] for i in _IN_TABLE_ORDER])
    # The MAC blocks, programme then service, each MAC over every byte before it (decision 8).
    if programme_key is not None:
        out += _CID_EXTENSION.pack(programme_key.key_id)
        out += _cached_mac(_KEY_STATE(programme_key), out)
    if service_key is not None:
        out += _CID_EXTENSION.pack(service_key.key_id)
        out += _cached_mac(tek_state if programme_key is None else _KEY_STATE(service_key), out)
    return out


def _build_reference(
    material: TrafficKeyMaterial,
    service_key: ServiceKey | None,
    programme_key: ServiceKey | None,
    next_material: TrafficKeyMaterial | None,
    timestamp: Timeish | None,
    protection_after_reception: int,
    prot: TrafficProtection,
    auth: bool,
    access_criteria: tuple[AccessCriteriaDescriptor, ...],
    explicit_key_material_length: bool,
    size: int,
) -> bytes:
    """The reference build: the compiled table, MAC placeholders patched afterwards (arguments checked)."""
    tek_key = programme_key.key if programme_key is not None else service_key.key  # type: ignore[union-attr]

    def block(m: TrafficKeyMaterial) -> dict[str, bytes]:
        plain = key_material_plaintext(m)
        plain += bytes(size - len(plain))
        return {"traffic_key_id": m.identifier, "encrypted_traffic_key_material": _aes_cbc_zero_iv(tek_key, plain, encrypt=True)}

    placeholder = bytes(MAC_SIZE)
    fields: dict[str, Any] = {
        "header": {
            "protocol_version": STKM_PROTOCOL_VERSION,
            "protection_after_reception": protection_after_reception,
            "reserved_for_future_use": 0,
            "access_criteria_flag": bool(access_criteria),
            "traffic_protection_protocol": int(prot),
            "traffic_authentication_flag": auth,
            "next_traffic_key_flag": next_material is not None,
            "timestamp_flag": timestamp is not None,
            "programme_flag": programme_key is not None,
            "service_flag": service_key is not None,
        },
        "current": block(material),
        "next": block(next_material) if next_material is not None else None,
        "timestamp": encode_timestamp(timestamp) if timestamp is not None else None,
        "encrypted_PEK": (
            _aes_cbc_zero_iv(service_key.key, programme_key.key, encrypt=True)
            if service_key is not None and programme_key is not None
            else None
        ),
        "access_criteria": [{"tag": d.tag, "data": d.data} for d in access_criteria] or None,
        "programme": (
            {"cid_extension": programme_key.key_id, "mac": placeholder} if programme_key is not None else None
        ),
        "service": {"cid_extension": service_key.key_id, "mac": placeholder} if service_key is not None else None,
    }
    try:
        out = bytearray(
            _STKM_BUILDER.build(
                fields, explicit_key_material_length=explicit_key_material_length, key_material_size=size
            )
        )
    except ConstructError as exc:  # an identifier longer than 255 bytes cannot reach here (traffic.py)
        raise STKMError(f"cannot build STKM: {type(exc).__name__}") from None

    # Patch the MACs: programme first, then service (whose range includes the programme MAC).
    end = len(out)
    if programme_key is not None:
        at = end - MAC_SIZE - (_MAC_BLOCK_SIZE if service_key is not None else 0)
        out[at : at + MAC_SIZE] = _mac(programme_key.authentication_key, out[:at])  # type: ignore[arg-type]
    if service_key is not None:
        at = end - MAC_SIZE
        out[at:] = _mac(service_key.authentication_key, out[:at])  # type: ignore[arg-type]
    return bytes(out)


def _traffic_authentication(
    material: TrafficKeyMaterial, next_material: TrafficKeyMaterial | None, requested: bool | None
) -> bool:
    if isinstance(material, IPsecMaterial):
        if next_material is not None and next_material.authenticated != material.authenticated:  # type: ignore[union-attr]
            raise STKMError("current and next IPsec material differ in authentication")
        if requested is not None and bool(requested) != material.authenticated:
            raise STKMError("traffic_authentication_flag must match the IPsec authentication key's presence")
        return material.authenticated
    return bool(requested)


# --- parse -------------------------------------------------------------------------------------

def parse_stkm(
    data: bytes,
    keys: ServiceKey | Iterable[ServiceKey] | KeyStore | KeyLookup,
    *,
    explicit_key_material_length: bool = True,
    reference: bool = False,
) -> ParsedSTKM:
    """Verify and decrypt a DRM Profile STKM (PROV-2).

    Keys are looked up by ``KeyRef(cid_extension, role)``. Each MAC whose key is known is verified
    and any mismatch fails; a block whose key is unknown is skipped (a pay-per-programme terminal has
    no SEK), which ``verified_macs`` reports. The TEK is decrypted with the PEK (the stored one, else
    ``encrypted_PEK`` under a verified SEK) when the programme flag is set, with the SEK otherwise, so
    the key that decrypts is always one whose MAC was verified.

    :param data: the STKM bytes.
    :param keys: a key, keys, a :class:`~bcast_sp4.bcast.keys.KeyStore` or a lookup callable.
    :param explicit_key_material_length: layout variant (must match the sender).
    :param reference: use one-shot crypto objects instead of the cached per-key state (same result).
    :returns: the parsed, verified message.
    :raises STKMError: truncation, trailing bytes, bad lengths or padding, a MAC mismatch, an
        unsupported protocol version, or no MAC at all.
    :raises UnsupportedTrafficProtectionError: (an ``STKMError``) for DCF or reserved protocol codes.
    :raises NoKeyError: none of the keys the STKM names is known to ``keys``.
    """
    data = bytes(data)
    lookup = as_key_lookup(keys)
    if len(data) < 2:
        raise STKMError(f"STKM truncated: {len(data)} bytes")
    header = HEADER.parse(data[:2])
    if header.protocol_version != STKM_PROTOCOL_VERSION:
        raise STKMError(f"unsupported STKM protocol_version {header.protocol_version}")
    protection = TrafficProtection.from_code(header.traffic_protection_protocol)
    auth = bool(header.traffic_authentication_flag)
    plain_size = key_material_length(protection, auth)
    size = _padded(plain_size)
    try:
        msg = STKM_LAYOUT.parse(
            data, explicit_key_material_length=explicit_key_material_length, key_material_size=size
        )
    except ConstructError:
        raise STKMError(f"STKM truncated or malformed ({len(data)} bytes)") from None
    if not (header.programme_flag or header.service_flag):
        raise STKMError("STKM has neither programme nor service MAC")
    blocks = [msg.current] + ([msg.next] if header.next_traffic_key_flag else [])
    for blk in blocks:
        if len(blk.encrypted_traffic_key_material) != size:
            raise STKMError(
                f"encrypted key material is {len(blk.encrypted_traffic_key_material)} bytes,"
                f" {protection.name} needs {size}"
            )

    service_key = programme_key = None
    if header.service_flag:
        service_key = lookup(KeyRef(msg.service.cid_extension, KeyRole.SERVICE))
    if header.programme_flag:
        programme_key = lookup(KeyRef(msg.programme.cid_extension, KeyRole.PROGRAMME))
    verified: list[str] = []
    for name, key, blk in (("programme", programme_key, msg.programme), ("service", service_key, msg.service)):
        if key is None:
            continue
        if key.authentication_key is None:
            raise STKMError(f"{name} key {key.label} has no authentication key (SAK/PAK)")
        state = None if reference else _key_state(key)
        covered = data[: blk.mac_offset]
        want = _mac(key.authentication_key, covered) if state is None else _cached_mac(state, covered)
        if not hmac.compare_digest(want, blk.mac):
            raise STKMError(f"{name}_MAC mismatch")
        verified.append(name)

    if header.programme_flag:
        if programme_key is not None:
            tek_key = programme_key.key
            tek_state = None if reference else _key_state(programme_key)
        elif header.service_flag and service_key is not None:
            tek_key = _aes_cbc_zero_iv(service_key.key, msg.encrypted_PEK, encrypt=False)
            tek_state = None  # a PEK known only from this message: nothing to cache it on
        else:
            raise NoKeyError(f"no key for programme_CID_extension {msg.programme.cid_extension:#010x}")
    elif service_key is not None:
        tek_key = service_key.key
        tek_state = None if reference else _key_state(service_key)
    else:
        raise NoKeyError(f"no key for service_CID_extension {msg.service.cid_extension:#010x}")

    materials = [_decrypt_block(protection, tek_key, blk, plain_size, tek_state) for blk in blocks]
    return ParsedSTKM(
        layout_version=LAYOUT_VERSION,
        protocol_version=header.protocol_version,
        protection_after_reception=header.protection_after_reception,
        protection=protection,
        traffic_authentication=auth,
        material=materials[0],
        next_material=materials[1] if len(materials) > 1 else None,
        timestamp=decode_timestamp(msg.timestamp) if header.timestamp_flag else None,
        access_criteria=tuple(
            AccessCriteriaDescriptor(d.tag, d.data) for d in (msg.access_criteria or ())
        ),
        programme_cid_extension=msg.programme.cid_extension if header.programme_flag else None,
        service_cid_extension=msg.service.cid_extension if header.service_flag else None,
        verified_macs=tuple(verified),
    )


def _decrypt_block(
    protection: TrafficProtection, key: bytes, blk: Any, plain_size: int, state: _KeyState | None
) -> TrafficKeyMaterial:
    encrypted = blk.encrypted_traffic_key_material
    if state is None:
        plain = _aes_cbc_zero_iv(key, encrypted, encrypt=False)
    else:
        plain = _cbc_zero_iv_decrypt(state.decryptor, encrypted)
    if any(plain[plain_size:]):
        raise STKMError("key material padding is not zero (wrong key?)")
    try:
        return material_from_plaintext(protection, blk.traffic_key_id, plain[:plain_size])
    except TrafficKeyError as exc:
        raise STKMError(f"bad traffic key material: {exc}") from None


# --- describe (structure only, no keys) ----------------------------------------------------------


@attrs.frozen(kw_only=True)
class KeyBlockFields:
    """One key block as carried: the TEK identifier in clear and the encrypted key material."""

    traffic_key_id: bytes
    encrypted_traffic_key_material: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class MacBlockFields:
    """One MAC block: the CID extension naming the key, the MAC and the byte offset it starts at."""

    cid_extension: int
    mac: bytes
    mac_offset: int


@attrs.frozen(kw_only=True)
class STKMFields:
    """A DRM Profile STKM field by field, as :func:`describe_stkm` read it (nothing verified).

    :ivar header: ``(name, value)`` of every header field, in the order of ``HEADER``.
    :ivar protection: the traffic protection the header names.
    :ivar explicit_key_material_length: the layout variant that was read.
    """

    layout_version: str
    size: int
    header: tuple[tuple[str, int], ...]
    protection: TrafficProtection
    explicit_key_material_length: bool
    current: KeyBlockFields
    next: KeyBlockFields | None
    timestamp: datetime | None
    encrypted_PEK: bytes | None = attrs.field(repr=False)
    access_criteria: tuple[AccessCriteriaDescriptor, ...]
    programme: MacBlockFields | None
    service: MacBlockFields | None


def describe_stkm(data: bytes, *, explicit_key_material_length: bool = True) -> STKMFields:
    """Read a DRM Profile STKM (PROV-2, provisional) field by field without any key.

    Nothing is decrypted or verified (that is :func:`parse_stkm`'s job); the layout is checked as
    :func:`parse_stkm` checks it: protocol version, known traffic protection, every field present,
    no trailing byte, a valid timestamp.

    :param data: the STKM bytes.
    :param explicit_key_material_length: layout variant (must match the sender).
    :returns: the fields.
    :raises STKMError: the bytes are not a PROV-2 STKM (``UnsupportedTrafficProtectionError`` for
        DCF or a reserved protocol code).
    """
    data = bytes(data)
    if len(data) < HEADER.sizeof():
        raise STKMError(f"STKM truncated: {len(data)} bytes")
    header = HEADER.parse(data[: HEADER.sizeof()])
    if header.protocol_version != STKM_PROTOCOL_VERSION:
        raise STKMError(f"unsupported STKM protocol_version {header.protocol_version}")
    protection = TrafficProtection.from_code(header.traffic_protection_protocol)
    size = _padded(key_material_length(protection, bool(header.traffic_authentication_flag)))
    try:
        msg = STKM_LAYOUT.parse(
            data, explicit_key_material_length=explicit_key_material_length, key_material_size=size
        )
    except ConstructError:
        raise STKMError(f"STKM truncated or malformed ({len(data)} bytes)") from None

    def block(blk: Any) -> KeyBlockFields:
        return KeyBlockFields(
            traffic_key_id=bytes(blk.traffic_key_id),
            encrypted_traffic_key_material=bytes(blk.encrypted_traffic_key_material),
        )

    def mac_block(blk: Any) -> MacBlockFields | None:
        if blk is None:
            return None
        return MacBlockFields(cid_extension=blk.cid_extension, mac=bytes(blk.mac), mac_offset=blk.mac_offset)

    return STKMFields(
        layout_version=LAYOUT_VERSION,
        size=len(data),
        header=tuple((name, int(header[name])) for name in _HEADER_BITS),
        protection=protection,
        explicit_key_material_length=explicit_key_material_length,
        current=block(msg.current),
        next=block(msg.next) if msg.next is not None else None,
        timestamp=decode_timestamp(msg.timestamp) if msg.timestamp is not None else None,
        encrypted_PEK=bytes(msg.encrypted_PEK) if msg.encrypted_PEK is not None else None,
        access_criteria=tuple(AccessCriteriaDescriptor(d.tag, d.data) for d in (msg.access_criteria or ())),
        programme=mac_block(msg.programme),
        service=mac_block(msg.service),
    )


__all__ += ["KeyBlockFields", "MacBlockFields", "STKMFields", "describe_stkm"]
