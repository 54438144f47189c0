"""Smartcard Profile STKM: a MIKEY (RFC 3830) MTK message with the OMA BCAST General Extension.

Spec clause: OMA-TS-BCAST_SvcCntProtection-V1_0 Smartcard Profile STKM ("Section 6.5" in the SP-4 CR
§14.1.1.3.1), as summarised in bcast-keys.md §3 (MIKEY framing and crypto) with the corrections of
§12.5 (RFC 4563 Key ID EXT type 3, RFC 4909/5410 OMA BCAST EXT type 5, subtype 2 = STKM).

Confidence: **high** for the MIKEY framing and crypto (RFC 3830, checked with Wireshark and the
§12.5 vector, which this module reproduces byte for byte); **low** for the BCAST-specific contents:
the STKM subtype body and which ids go where are [R]/[?] (TS 33.246 §6.4 was not read).

Message (payload order is the table ``_PAYLOAD_ORDER``; all fields network order)::

    HDR    version 1, data type 0 (pre-shared), V 0, PRF 0 (MIKEY-1), CSB ID, #CS 0, CS ID map type 1 (empty)
    EXT    type 3 (Key ID, RFC 4563): sub-payloads (type 8, length 8, id):
           0 = Key Domain ID (3 bytes, if the key has one), 1 = SEK/PEK (MSK) ID (4 bytes)
    T      type 2 (COUNTER), 32 bits
    EXT    type 5 (OMA BCAST): subtype 2 (STKM), then the STKM body below
    KEMAC  encr alg 1 (AES-CM-128), encrypted Key data sub-payload(s), MAC alg 1 (HMAC-SHA-1-160), MAC

STKM subtype body [R] (mirrors the DRM header, bcast-keys.md §3.3)::

    protection_after_reception 2 | access_criteria_flag 1 | traffic_protection_protocol 3 |
    traffic_authentication_flag 1 | reserved_for_future_use 1 (written 0, ignored on input)
    if access_criteria_flag: count 8, then descriptors (tag 8, length 8, data) as in stkm_drm.py

Decisions on the [R]/[?] points:

1. CSB ID = the SEK/PEK (MSK) ID by default, as in the digest's vector [R]; callers may override.
2. The Key ID EXT names the pre-shared key (Key Domain ID + SEK/PEK ID); no TEK (MTK) ID sub-payload
   is sent: the TEK is named by the traffic's own identifier in the KV data (point 4).
3. No RAND payload (an STKM carries none); the key-derivation label uses an empty RAND [?].
4. Key data sub-payload per protection: SRTP = TGK+SALT (master key 16, master salt 14); ISMACryp =
   TGK+SALT (key 16, salt 8); IPsec = TGK with key = encryption key || authentication key (16 or 36,
   as in the DRM layout). KV = SPI/MKI carrying the SPI (4 bytes), MKI or key indicator; KV null when
   the identifier is empty (that reproduces the §12.5 vector, whose SRTP TEK has no MKI).
5. A next-period TEK travels as a second Key data sub-payload in the same KEMAC [?].
6. Parsing accepts TGK/TEK (with or without salt) key types, a COUNTER or NTP timestamp, and ignores
   unknown EXT types (they are still MAC-covered); it rejects SP/RAND/other payloads, CS ID map types
   other than 1, NULL MAC, and NULL encryption unless ``allow_null_encryption`` (a debugging aid:
   :func:`build_stkm` can emit a NULL-encrypted twin so Wireshark shows the Key data; the TEK is then
   in clear, never put one on air).

Crypto (RFC 3830 §4.1, bcast-keys.md §3.4): pre-shared key = SEK/PEK; PRF MIKEY-1 (HMAC-SHA-1 P-function
over 256-bit chunks of the key); encr key / auth key / salt with labels ``0x150533E1`` /
``0x2D22AC75`` / ``0x29B88916`` ``|| 0xFF || CSB ID || RAND``; AES-CM IV =
``(salt XOR (0x0000 || CSB ID || T64)) || 0x0000`` with the 32-bit counter left-padded to 64 bits;
MAC = HMAC-SHA-1-160 over everything from HDR up to and including the KEMAC MAC-alg byte.

Construct use (STYLE §7): payload schemas declared once; the plain schemas parse received messages
payload by payload along the ``next payload`` chain. :func:`build_stkm` has two paths that give the
same bytes: the default fast path packs the payloads with ``struct`` in the order and with the
``next payload`` codes of ``_PAYLOAD_ORDER`` (derived from it at import); ``reference=True`` builds
with the compiled schemas. A hypothesis test checks both agree byte for byte.

Per-key state: the message keys of the default CSB ID (= SEK/PEK ID) are derived once per
``ServiceKey`` object and cached with :class:`~bcast_sp4.bcast.keys.PerKeyCache` (dropped with the
key): an AES-128-ECB encryptor context under the encr key, on which AES-CM's keystream is computed
from the counter blocks, the HMAC-SHA-1 state under the auth key (copied per MAC) and the salt.
Other CSB IDs (and ``reference=True``) derive per call. As in stkm_drm.py, one key's cached context
must not be used by two threads at once.
"""

from __future__ import annotations

import enum
import hmac
import io
import struct
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    ConstructError,
    Error,
    Flag,
    GreedyBytes,
    GreedyRange,
    If,
    Int8ub,
    Int16ub,
    Int32ub,
    Pass,
    Prefixed,
    PrefixedArray,
    Struct,
    Switch,
    Terminated,
    this,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .keys import KeyLookup, KeyRef, KeyStore, PerKeyCache, ServiceKey, as_key_lookup
from .status import NoKeyError, STKMError, TrafficKeyError
from .stkm_drm import ACCESS_CRITERIA_DESCRIPTOR, AccessCriteriaDescriptor, _hmac_sha1_states, _hmac_sha1_with
from .traffic import (
    IPsecMaterial,
    ISMACrypMaterial,
    SRTPMaterial,
    TrafficKeyMaterial,
    TrafficProtection,
    key_material_plaintext,
    material_from_plaintext,
)

__all__ = [
    "MIKEY_VERSION",
    "PayloadType",
    "ExtType",
    "BcastSubtype",
    "KeyIdType",
    "EncrAlg",
    "MacAlg",
    "KeyDataType",
    "KeyValidity",
    "TsType",
    "ParsedMikeySTKM",
    "STKMError",
    "mikey_prf",
    "derive_message_keys",
    "build_stkm",
    "parse_stkm",
]

MIKEY_VERSION = 1
_MAC_SIZE = 20
_PRF_CHUNK = 32
_SHA1_SIZE = 20


class PayloadType(enum.IntEnum):
    """RFC 3830 "next payload" codes used here."""

    LAST = 0
    KEMAC = 1
    T = 5
    SP = 10
    RAND = 11
    KEY_DATA = 20
    EXT = 21


class ExtType(enum.IntEnum):
    """General Extension types."""

    KEY_ID = 3  # RFC 4563
    OMA_BCAST = 5  # RFC 4909 / RFC 5410


class BcastSubtype(enum.IntEnum):
    """OMA BCAST EXT subtypes (RFC 4909, RFC 5410)."""

    LTKM = 1
    STKM = 2
    LTKM_REPORTING = 3
    PARENTAL_CONTROL = 4


class KeyIdType(enum.IntEnum):
    """RFC 4563 Key ID types."""

    KEY_DOMAIN_ID = 0
    SERVICE_KEY_ID = 1  # MSK ID = SEK/PEK ID
    TRAFFIC_KEY_ID = 2  # MTK ID = TEK ID


class EncrAlg(enum.IntEnum):
    """KEMAC encryption algorithms."""

    NULL = 0
    AES_CM_128 = 1
    AES_KW_128 = 2


class MacAlg(enum.IntEnum):
    """KEMAC MAC algorithms."""

    NULL = 0
    HMAC_SHA1_160 = 1


class KeyDataType(enum.IntEnum):
    """Key data sub-payload types."""

    TGK = 0
    TGK_SALT = 1
    TEK = 2
    TEK_SALT = 3


class KeyValidity(enum.IntEnum):
    """Key data sub-payload KV types."""

    NULL = 0
    SPI = 1  # SPI/MKI
    INTERVAL = 2


class TsType(enum.IntEnum):
    """T payload timestamp types."""

    NTP_UTC = 0
    NTP = 1
    COUNTER = 2


_DATA_TYPE_PSK = 0
_PRF_MIKEY_1 = 0
_CS_ID_MAP_EMPTY = 1
_LABEL_ENCR = bytes.fromhex("150533e1")
_LABEL_AUTH = bytes.fromhex("2d22ac75")
_LABEL_SALT = bytes.fromhex("29b88916")
_ENCR_KEY_SIZE = 16
_SALT_SIZE = 14

# --- payload schemas ---------------------------------------------------------------------------

HDR = Struct(
    "version" / Int8ub,
    "data_type" / Int8ub,
    "next_payload" / Int8ub,
    "v_prf" / BitStruct("v" / Flag, "prf_func" / BitsInteger(7)),
    "csb_id" / Int32ub,
    "cs_count" / Int8ub,
    "cs_id_map_type" / Int8ub,  # type 1 (empty map): no CS ID map info follows
)
EXT = Struct(
    "next_payload" / Int8ub,
    "ext_type" / Int8ub,
    "data" / Prefixed(Int16ub, GreedyBytes),
)
T = Struct(
    "next_payload" / Int8ub,
    "ts_type" / Int8ub,
    "ts_value" / Switch(
        this.ts_type,
        {int(TsType.NTP_UTC): Bytes(8), int(TsType.NTP): Bytes(8), int(TsType.COUNTER): Bytes(4)},
        default=Error,
    ),
)
KEMAC_HEAD = Struct(  # the MAC (size per mac_alg) follows; it is computed over everything before it
    "next_payload" / Int8ub,
    "encr_alg" / Int8ub,
    "encr_data" / Prefixed(Int16ub, GreedyBytes),
    "mac_alg" / Int8ub,
)
KEY_DATA = Struct(
    "next_payload" / Int8ub,
    "type_kv" / BitStruct("type" / BitsInteger(4), "kv" / BitsInteger(4)),
    "key" / Prefixed(Int16ub, GreedyBytes),
    "salt" / If(
        (this.type_kv.type == int(KeyDataType.TGK_SALT)) | (this.type_kv.type == int(KeyDataType.TEK_SALT)),
        Prefixed(Int16ub, GreedyBytes),
    ),
    "kv_data" / Switch(
        this.type_kv.kv,
        {
            int(KeyValidity.NULL): Pass,
            int(KeyValidity.SPI): Prefixed(Int8ub, GreedyBytes),
            int(KeyValidity.INTERVAL): Struct(
                "valid_from" / Prefixed(Int8ub, GreedyBytes), "valid_to" / Prefixed(Int8ub, GreedyBytes)
            ),
        },
        default=Error,
    ),
)
KEY_ID_BODY = Struct(
    "subpayloads" / GreedyRange(Struct("key_id_type" / Int8ub, "key_id" / Prefixed(Int8ub, GreedyBytes))),
    Terminated,
)
BCAST_STKM_BODY = Struct(
    "subtype" / Int8ub,
    "flags" / BitStruct(
        "protection_after_reception" / BitsInteger(2),
        "access_criteria_flag" / Flag,
        "traffic_protection_protocol" / BitsInteger(3),
        "traffic_authentication_flag" / Flag,
        "reserved_for_future_use" / BitsInteger(1),
    ),
    "access_criteria" / If(this.flags.access_criteria_flag, PrefixedArray(Int8ub, ACCESS_CRITERIA_DESCRIPTOR)),
    Terminated,
)

# The message we build, in payload order; each payload's next_payload names the following one.
_PAYLOAD_ORDER = (
    ("hdr", None, HDR),
    ("key_id", PayloadType.EXT, EXT),
    ("t", PayloadType.T, T),
    ("bcast", PayloadType.EXT, EXT),
    ("kemac", PayloadType.KEMAC, KEMAC_HEAD),
)
STKM_MESSAGE = Struct(*(name / schema for name, _, schema in _PAYLOAD_ORDER))
_NEXT_PAYLOAD = {
    name: int(_PAYLOAD_ORDER[i + 1][1]) if i + 1 < len(_PAYLOAD_ORDER) else int(PayloadType.LAST)
    for i, (name, _, _) in enumerate(_PAYLOAD_ORDER)
}
_MESSAGE_BUILDER = STKM_MESSAGE.compile()
_KEY_DATA_BUILDER = KEY_DATA.compile()
_KEY_ID_BUILDER = KEY_ID_BODY.compile()
_BCAST_BUILDER = BCAST_STKM_BODY.compile()


@attrs.frozen(kw_only=True)
class ParsedMikeySTKM:
    """A verified and decrypted Smartcard Profile STKM.

    :ivar counter: the T payload value as an int (COUNTER: 32 bits; NTP types: 64 bits).
    """

    csb_id: int
    ts_type: TsType
    counter: int
    key_domain_id: bytes
    key_id: int
    protection: TrafficProtection
    protection_after_reception: int
    traffic_authentication: bool
    access_criteria: tuple[AccessCriteriaDescriptor, ...]
    encryption: EncrAlg
    material: TrafficKeyMaterial = attrs.field(repr=False)
    next_material: TrafficKeyMaterial | None = attrs.field(repr=False)


# --- crypto ------------------------------------------------------------------------------------


def _check_complete(data: bytes, end: int, kemac, t, bcast_body) -> None:
    """A parsed MIKEY STKM ends at the end of *data* and has its KEMAC, T and BCAST payloads.

    :raises STKMError: trailing bytes or a missing payload.
    """
    if end != len(data):
        raise STKMError(f"{len(data) - end} trailing bytes after the MIKEY message")
    if kemac is None or t is None or bcast_body is None:
        raise STKMError("STKM lacks a KEMAC, T or OMA BCAST STKM payload")

def mikey_prf(inkey: bytes, label: bytes, outlen: int) -> bytes:
    """The MIKEY-1 PRF of RFC 3830 §4.1.2.

    :param inkey: the input key (split into 256-bit chunks, the last one possibly shorter).
    :param label: the label.
    :param outlen: output length in bytes.
    :returns: ``outlen`` bytes.
    """
    rounds = -(-outlen // _SHA1_SIZE)
    out = bytes(rounds * _SHA1_SIZE)
    for start in range(0, max(len(inkey), 1), _PRF_CHUNK):
        chunk = inkey[start : start + _PRF_CHUNK]
        a = label
        stream = bytearray()
        for _ in range(rounds):
            a = hmac.digest(chunk, a, "sha1")
            stream += hmac.digest(chunk, a + label, "sha1")
        out = bytes(x ^ y for x, y in zip(out, stream))
    return out[:outlen]


def derive_message_keys(psk: bytes, csb_id: int, rand: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """Derive the keys that protect a MIKEY message from its pre-shared key (RFC 3830 §4.1.4).

    :param psk: the pre-shared key (here the SEK/PEK).
    :param csb_id: the CSB ID.
    :param rand: the RAND payload value (empty for an STKM, decision 3).
    :returns: ``(encr_key 16, auth_key 20, salt 14)``.
    """
    tail = b"\xff" + csb_id.to_bytes(4, "big") + rand
    return (
        mikey_prf(psk, _LABEL_ENCR + tail, _ENCR_KEY_SIZE),
        mikey_prf(psk, _LABEL_AUTH + tail, _SHA1_SIZE),
        mikey_prf(psk, _LABEL_SALT + tail, _SALT_SIZE),
    )


def _aes_cm(key: bytes, salt: bytes, csb_id: int, t64: int, data: bytes) -> bytes:
    iv = int.from_bytes(salt, "big") ^ ((csb_id << 64) | t64)
    ctx = Cipher(algorithms.AES(key), modes.CTR(iv.to_bytes(14, "big") + b"\x00\x00")).encryptor()
    return ctx.update(data) + ctx.finalize()


class _MessageKeys:
    """The keys of :func:`derive_message_keys` for one (SEK/PEK, CSB ID), as reusable crypto state."""

    __slots__ = ("encryptor", "mac", "salt")

    def __init__(self, psk: bytes, csb_id: int) -> None:
        encr_key, auth_key, salt = derive_message_keys(psk, csb_id)
        self.encryptor = Cipher(algorithms.AES(encr_key), modes.ECB()).encryptor()  # AES-CM's block cipher
        # HMAC-SHA-1 as its keyed inner and outer SHA-1 states (copying two hashlib objects per MAC
        # costs less than copying an hmac.HMAC object; as stkm_drm.py does)
        self.mac = _hmac_sha1_states(auth_key)
        self.salt = int.from_bytes(salt, "big")

    def __repr__(self) -> str:
        return "<_MessageKeys>"

    def aes_cm(self, csb_id: int, t64: int, data: bytes) -> bytes:
        """:func:`_aes_cm`: CTR keystream = E(IV || 0x0000 + i), i = 0, 1, ... (128-bit counter)."""
        if not data:
            return b""
        n = len(data)
        count = -(-n // 16)
        # IV || i for i < 2**16: the IV's 14 bytes, then i in the low 16 bits (no carry out of them)
        iv = ((self.salt ^ ((csb_id << 64) | t64)) & _MASK112).to_bytes(14, "big")
        if count < len(_COUNTER_TAILS):
            blocks = iv.join(_COUNTER_TAILS[:count + 1])  # b"" + iv + 0x0000 + iv + 0x0001 ...
        else:  # key data is never this long (4 KiB); the 128-bit counter in full
            base = int.from_bytes(iv, "big") << 16
            blocks = b"".join([((base + i) & _MASK128).to_bytes(16, "big") for i in range(count)])
        stream = self.encryptor.update(blocks)
        return (int.from_bytes(data, "big") ^ int.from_bytes(stream[:n], "big")).to_bytes(n, "big")

    def digest(self, data: bytes) -> bytes:
        return _hmac_sha1_with(self.mac, data)


_MASK128 = (1 << 128) - 1
_MASK112 = (1 << 112) - 1
#: b"" then the 16-bit AES-CM block counters 0, 1, 2 ... (joined by the IV: each block's last 2 bytes)
_COUNTER_TAILS = (b"",) + tuple(i.to_bytes(2, "big") for i in range(256))
# Only the default CSB ID (= key_id, decision 1) is cached: a parsed message names its own CSB ID,
# and caching every one a peer sends would grow without bound.
_MESSAGE_KEYS: PerKeyCache[_MessageKeys] = PerKeyCache(lambda key: _MessageKeys(key.key, key.key_id))


def _message_keys(key: ServiceKey, csb_id: int) -> _MessageKeys:
    if type(key) is ServiceKey and csb_id == key.key_id:
        return _MESSAGE_KEYS(key)
    return _MessageKeys(key.key, csb_id)


# --- build -------------------------------------------------------------------------------------

_KEY_DATA_TYPE = {
    TrafficProtection.IPSEC: KeyDataType.TGK,
    TrafficProtection.SRTP: KeyDataType.TGK_SALT,
    TrafficProtection.ISMACRYP: KeyDataType.TGK_SALT,
}


def _key_data_fields(material: TrafficKeyMaterial, next_payload: int) -> dict[str, Any]:
    plain = key_material_plaintext(material)
    identifier = material.identifier
    if isinstance(material, IPsecMaterial):
        key, salt = plain, None
    else:
        key, salt = plain[:16], plain[16:]
    return {
        "next_payload": next_payload,
        "type_kv": {
            "type": int(_KEY_DATA_TYPE[type(material).PROTECTION]),
            "kv": int(KeyValidity.SPI if identifier else KeyValidity.NULL),
        },
        "key": key,
        "salt": salt,
        "kv_data": identifier if identifier else None,
    }


def build_stkm(
    material: TrafficKeyMaterial,
    service_key: ServiceKey,
    *,
    counter: int,
    protection: TrafficProtection | None = None,
    next_material: TrafficKeyMaterial | None = None,
    csb_id: int | None = None,
    protection_after_reception: int = 3,
    traffic_authentication: bool | None = None,
    access_criteria: Sequence[AccessCriteriaDescriptor] = (),
    encryption: EncrAlg = EncrAlg.AES_CM_128,
    reference: bool = False,
) -> bytes:
    """Build a Smartcard Profile STKM (MIKEY MTK message + EXT BCAST).

    :param material: the TEK material of the crypto-period.
    :param service_key: the SEK/PEK (MIKEY pre-shared key) with its ``key_id`` and ``key_domain_id``.
    :param counter: the T COUNTER (32 bits); it must increase per STKM under one SEK/PEK, the UICC
        rejects replays.
    :param protection: the stream's traffic protection; if given it must match ``material``.
    :param next_material: the next crypto-period's TEK (a second Key data sub-payload), or ``None``.
    :param csb_id: the HDR CSB ID; default ``service_key.key_id`` (decision 1).
    :param protection_after_reception: 0-3.
    :param traffic_authentication: as in :func:`bcast_sp4.bcast.stkm_drm.build_stkm`.
    :param access_criteria: descriptors for the BCAST EXT body.
    :param encryption: ``AES_CM_128``; ``NULL`` only for dissector checks (TEK in clear).
    :param reference: build with the compiled construct schemas and freshly derived keys (the
        reference the default fast path is tested against; same bytes, several times slower).
    :returns: the MIKEY message bytes.
    :raises STKMError: on inconsistent arguments or out-of-range values.
    """
    prot = getattr(type(material), "PROTECTION", None)
    if prot is None:
        raise STKMError(f"not traffic key material: {type(material).__name__}")
    if protection is not None and TrafficProtection(protection) is not prot:
        raise STKMError(f"material is {prot.name}, stream protection is {TrafficProtection(protection).name}")
    if next_material is not None and type(next_material) is not type(material):
        raise STKMError("next_material must have the same traffic protection as material")
    if isinstance(material, IPsecMaterial):
        if next_material is not None and next_material.authenticated != material.authenticated:  # type: ignore[union-attr]
            raise STKMError("current and next IPsec material differ in authentication")
        if traffic_authentication is not None and bool(traffic_authentication) != material.authenticated:
            raise STKMError("traffic_authentication_flag must match the IPsec authentication key's presence")
        auth = material.authenticated
    else:
        auth = bool(traffic_authentication)
    if not 0 <= counter <= 0xFFFFFFFF:
        raise STKMError("counter must be a uint32")
    csb_id = service_key.key_id if csb_id is None else csb_id
    if not 0 <= csb_id <= 0xFFFFFFFF:
        raise STKMError("csb_id must be a uint32")
    if not 0 <= protection_after_reception <= 3:
        raise STKMError("protection_after_reception must be 0..3")
    if type(encryption) is not EncrAlg:
        encryption = EncrAlg(encryption)
    if encryption is not _AES_CM_128 and encryption is not _NULL_ENCRYPTION:
        raise STKMError(f"unsupported KEMAC encryption {encryption.name}")
    access_criteria = tuple(access_criteria)
    if len(access_criteria) > 0xFF:
        raise STKMError("more than 255 access criteria descriptors")

    if not reference and (
        type(material) in _FAST_MATERIALS
        and type(service_key) is ServiceKey
        and type(counter) is int
        and type(csb_id) is int
        and type(protection_after_reception) is int
        and (not access_criteria or all(type(d) is AccessCriteriaDescriptor for d in access_criteria))
    ):
        return _build_fast(
            material, service_key, counter, next_material, csb_id, protection_after_reception, prot, auth,
            access_criteria, encryption,
        )
    return _build_reference(
        material, service_key, counter, next_material, csb_id, protection_after_reception, prot, auth,
        access_criteria, encryption,
    )


def _build_reference(
    material: TrafficKeyMaterial,
    service_key: ServiceKey,
    counter: int,
    next_material: TrafficKeyMaterial | None,
    csb_id: int,
    protection_after_reception: int,
    prot: TrafficProtection,
    auth: bool,
    access_criteria: tuple[AccessCriteriaDescriptor, ...],
    encryption: EncrAlg,
) -> bytes:
    """The reference build with the compiled schemas (arguments checked by :func:`build_stkm`)."""
    materials = [material] + ([next_material] if next_material is not None else [])
    key_data = b"".join(
        _KEY_DATA_BUILDER.build(
            _key_data_fields(m, int(PayloadType.KEY_DATA) if i + 1 < len(materials) else int(PayloadType.LAST))
        )
        for i, m in enumerate(materials)
    )
    encr_key, auth_key, salt = derive_message_keys(service_key.key, csb_id)
    if encryption is EncrAlg.AES_CM_128:
        key_data = _aes_cm(encr_key, salt, csb_id, counter, key_data)

    key_ids = [{"key_id_type": int(KeyIdType.SERVICE_KEY_ID), "key_id": service_key.key_id.to_bytes(4, "big")}]
    if service_key.key_domain_id:
        key_ids.insert(0, {"key_id_type": int(KeyIdType.KEY_DOMAIN_ID), "key_id": service_key.key_domain_id})
    bcast_body = _BCAST_BUILDER.build(
        {
            "subtype": int(BcastSubtype.STKM),
            "flags": {
                "protection_after_reception": protection_after_reception,
                "access_criteria_flag": bool(access_criteria),
                "traffic_protection_protocol": int(prot),
                "traffic_authentication_flag": auth,
                "reserved_for_future_use": 0,
            },
            "access_criteria": [{"tag": d.tag, "data": d.data} for d in access_criteria] or None,
        }
    )
    try:
        message = _MESSAGE_BUILDER.build(
            {
                "hdr": {
                    "version": MIKEY_VERSION,
                    "data_type": _DATA_TYPE_PSK,
                    "next_payload": _NEXT_PAYLOAD["hdr"],
                    "v_prf": {"v": False, "prf_func": _PRF_MIKEY_1},
                    "csb_id": csb_id,
                    "cs_count": 0,
                    "cs_id_map_type": _CS_ID_MAP_EMPTY,
                },
                "key_id": {
                    "next_payload": _NEXT_PAYLOAD["key_id"],
                    "ext_type": int(ExtType.KEY_ID),
                    "data": _KEY_ID_BUILDER.build({"subpayloads": key_ids}),
                },
                "t": {
                    "next_payload": _NEXT_PAYLOAD["t"],
                    "ts_type": int(TsType.COUNTER),
                    "ts_value": counter.to_bytes(4, "big"),
                },
                "bcast": {"next_payload": _NEXT_PAYLOAD["bcast"], "ext_type": int(ExtType.OMA_BCAST), "data": bcast_body},
                "kemac": {
                    "next_payload": _NEXT_PAYLOAD["kemac"],
                    "encr_alg": int(encryption),
                    "encr_data": key_data,
                    "mac_alg": int(MacAlg.HMAC_SHA1_160),
                },
            }
        )
    except ConstructError as exc:  # e.g. more key data than a 16-bit length can carry
        raise STKMError(f"cannot build STKM: {type(exc).__name__}") from None
    return message + hmac.digest(auth_key, message, "sha1")


_FAST_MATERIALS = frozenset({IPsecMaterial, SRTPMaterial, ISMACrypMaterial})
_BYTE = tuple(bytes((i,)) for i in range(256))
# The fast path writes each payload with its next_payload code from _NEXT_PAYLOAD and joins them in
# the order of _PAYLOAD_ORDER; the payloads' own layouts are written out below (and property-tested
# against the compiled schemas).
_PAYLOAD_NAMES = tuple(name for name, _, _ in _PAYLOAD_ORDER)
_FAST_PAYLOADS = ("hdr", "key_id", "t", "bcast", "kemac")
if set(_PAYLOAD_NAMES) != set(_FAST_PAYLOADS) or _PAYLOAD_NAMES[-1] != "kemac":  # pragma: no cover
    raise ImportError("_PAYLOAD_ORDER changed: teach the fast path (KEMAC must stay last: its MAC ends the message)")
_IN_PAYLOAD_ORDER = tuple(_FAST_PAYLOADS.index(name) for name in _PAYLOAD_NAMES)
_HDR = struct.Struct(">BBBBIBB")  # version, data type, next payload, V|PRF, CSB ID, #CS, CS ID map type
_HDR_FIXED = (MIKEY_VERSION, _DATA_TYPE_PSK, _NEXT_PAYLOAD["hdr"], (0 << 7) | _PRF_MIKEY_1)  # V = 0
_EXT_HEAD = struct.Struct(">BBH")  # next payload, type, length (Prefixed(Int16ub))
_T_PAYLOAD = struct.Struct(">BBI")  # next payload, TS type COUNTER, 32-bit value
_KEMAC_HEAD = struct.Struct(">BBH")  # next payload, encr alg, encr data length
_KEY_DATA_HEAD = struct.Struct(">BBH")  # next payload, type|KV, key length
# read per STKM: Enum.MEMBER goes through the metaclass's __getattr__ hook on Python 3.11 (~0.15 µs)
_TGK, _TGK_SALT = int(KeyDataType.TGK), int(KeyDataType.TGK_SALT)
_KV_SPI, _KV_NULL = int(KeyValidity.SPI), int(KeyValidity.NULL)
_AES_CM_128, _NULL_ENCRYPTION = EncrAlg.AES_CM_128, EncrAlg.NULL
_LAST_PAYLOAD, _KEY_DATA_PAYLOAD = int(PayloadType.LAST), int(PayloadType.KEY_DATA)
_EXT_KEY_ID, _EXT_OMA_BCAST, _TS_COUNTER = int(ExtType.KEY_ID), int(ExtType.OMA_BCAST), int(TsType.COUNTER)
_STKM_SUBTYPE_BYTE = bytes((BcastSubtype.STKM,))
_NEXT_KEY_ID, _NEXT_T, _NEXT_BCAST, _NEXT_KEMAC = (_NEXT_PAYLOAD[n] for n in ("key_id", "t", "bcast", "kemac"))
_U16 = struct.Struct(">H")
_KEY_ID_SERVICE = bytes((KeyIdType.SERVICE_KEY_ID, 4))
_KEY_ID_DOMAIN = bytes((KeyIdType.KEY_DOMAIN_ID, 3))
_MAC_ALG_BYTE = bytes((MacAlg.HMAC_SHA1_160,))


def _key_data_fast(material: TrafficKeyMaterial, next_payload: int) -> bytes:
    """One Key data sub-payload (decision 4): :func:`_key_data_fields` through ``KEY_DATA``."""
    identifier = material.identifier
    kv = _KV_SPI if identifier else _KV_NULL
    kv_data = _BYTE[len(identifier)] + identifier if identifier else b""
    if type(material) is IPsecMaterial:
        key = material.encryption_key + material.authentication_key
        head = _KEY_DATA_HEAD.pack(next_payload, (_TGK << 4) | kv, len(key))
        return head + key + kv_data
    if type(material) is SRTPMaterial:
        key, salt = material.master_key, material.master_salt
    else:
        key, salt = material.key, material.salt  # type: ignore[union-attr]
    head = _KEY_DATA_HEAD.pack(next_payload, (_TGK_SALT << 4) | kv, len(key))
    return b"".join((head, key, _U16.pack(len(salt)), salt, kv_data))


def _build_fast(
    material: TrafficKeyMaterial,
    service_key: ServiceKey,
    counter: int,
    next_material: TrafficKeyMaterial | None,
    csb_id: int,
    par: int,
    prot: TrafficProtection,
    auth: bool,
    access_criteria: tuple[AccessCriteriaDescriptor, ...],
    encryption: EncrAlg,
) -> bytes:
    """The bytes of :func:`_build_reference` from struct and cached message keys (arguments checked)."""
    if next_material is None:
        key_data = _key_data_fast(material, _LAST_PAYLOAD)
    else:
        key_data = _key_data_fast(material, _KEY_DATA_PAYLOAD) + _key_data_fast(next_material, _LAST_PAYLOAD)
    keys = _message_keys(service_key, csb_id)
    if encryption is _AES_CM_128:
        key_data = keys.aes_cm(csb_id, counter, key_data)

    key_domain_id = service_key.key_domain_id
    key_ids = _KEY_ID_SERVICE + service_key.key_id.to_bytes(4, "big")
    if key_domain_id:
        key_ids = _KEY_ID_DOMAIN + key_domain_id + key_ids
    flags = (par << 6) | (bool(access_criteria) << 5) | (int(prot) << 2) | (auth << 1)  # reserved bit 0
    bcast_body = _STKM_SUBTYPE_BYTE + _BYTE[flags]
    if access_criteria:
        bcast_body += _BYTE[len(access_criteria)] + b"".join(
            [_BYTE[d.tag] + _BYTE[len(d.data)] + d.data for d in access_criteria]
        )
    # Lengths fit their fields: two Key data sub-payloads take at most ~600 bytes, the EXTs < 1 KiB.
    payloads = (
        _HDR.pack(*_HDR_FIXED, csb_id, 0, _CS_ID_MAP_EMPTY),
        _EXT_HEAD.pack(_NEXT_KEY_ID, _EXT_KEY_ID, len(key_ids)) + key_ids,
        _T_PAYLOAD.pack(_NEXT_T, _TS_COUNTER, counter),
        _EXT_HEAD.pack(_NEXT_BCAST, _EXT_OMA_BCAST, len(bcast_body)) + bcast_body,
        _KEMAC_HEAD.pack(_NEXT_KEMAC, encryption, len(key_data)) + key_data + _MAC_ALG_BYTE,
    )
    message = b"".join([payloads[i] for i in _IN_PAYLOAD_ORDER])
    return message + keys.digest(message)


# --- parse -------------------------------------------------------------------------------------

def parse_stkm(
    data: bytes,
    keys: ServiceKey | Iterable[ServiceKey] | KeyStore | KeyLookup,
    *,
    allow_null_encryption: bool = False,
    reference: bool = False,
) -> ParsedMikeySTKM:
    """Verify and decrypt a Smartcard Profile STKM.

    The pre-shared key is looked up by ``KeyRef(SEK/PEK ID, key_domain_id=Key Domain ID)`` from the
    Key ID EXT (the CSB ID stands in for the SEK/PEK ID when the EXT is absent).

    :param data: the MIKEY message.
    :param keys: a key, keys, a :class:`~bcast_sp4.bcast.keys.KeyStore` or a lookup callable.
    :param allow_null_encryption: accept a NULL-encrypted KEMAC (debugging only).
    :param reference: derive the message keys afresh instead of using the per-key cache (same result).
    :returns: the parsed, verified message.
    :raises STKMError: truncation, trailing bytes, an unexpected payload or value, a MAC mismatch.
    :raises UnsupportedTrafficProtectionError: (an ``STKMError``) for DCF or reserved protocol codes.
    :raises NoKeyError: the key the STKM names is not known to ``keys``.
    """
    data = bytes(data)
    lookup = as_key_lookup(keys)
    stream = io.BytesIO(data)
    try:
        hdr = HDR.parse_stream(stream)
        if hdr.version != MIKEY_VERSION or hdr.data_type != _DATA_TYPE_PSK:
            raise STKMError(f"not a MIKEY v1 pre-shared message (version {hdr.version}, type {hdr.data_type})")
        if hdr.v_prf.prf_func != _PRF_MIKEY_1:
            raise STKMError(f"unsupported PRF {hdr.v_prf.prf_func}")
        if hdr.cs_id_map_type != _CS_ID_MAP_EMPTY:
            raise STKMError(f"unsupported CS ID map type {hdr.cs_id_map_type}")
        key_id_body = bcast_body = t = kemac = None
        next_payload = hdr.next_payload
        while next_payload != PayloadType.LAST:
            if kemac is not None:
                raise STKMError("KEMAC must be the last payload")
            if next_payload == PayloadType.EXT:
                ext = EXT.parse_stream(stream)
                if ext.ext_type == ExtType.KEY_ID:
                    if key_id_body is not None:
                        raise STKMError("duplicate Key ID EXT")
                    key_id_body = KEY_ID_BODY.parse(ext.data)
                elif ext.ext_type == ExtType.OMA_BCAST:
                    if bcast_body is not None:
                        raise STKMError("duplicate OMA BCAST EXT")
                    if not ext.data or ext.data[0] != BcastSubtype.STKM:
                        raise STKMError("OMA BCAST EXT is not the STKM subtype")
                    bcast_body = BCAST_STKM_BODY.parse(ext.data)
                payload = ext
            elif next_payload == PayloadType.T:
                if t is not None:
                    raise STKMError("duplicate T payload")
                t = payload = T.parse_stream(stream)
            elif next_payload == PayloadType.KEMAC:
                kemac = payload = KEMAC_HEAD.parse_stream(stream)
                mac_offset = stream.tell()
                if kemac.mac_alg != MacAlg.HMAC_SHA1_160:
                    raise STKMError(f"unsupported KEMAC MAC algorithm {kemac.mac_alg}")
                mac = stream.read(_MAC_SIZE)
                if len(mac) != _MAC_SIZE:
                    raise STKMError("STKM truncated in the MAC")
            else:
                raise STKMError(f"unexpected MIKEY payload type {next_payload}")
            next_payload = payload.next_payload
    except ConstructError:
        raise STKMError(f"STKM truncated or malformed ({len(data)} bytes)") from None
    _check_complete(data, stream.tell(), kemac, t, bcast_body)

    key_domain_id, key_id = _key_identity(key_id_body, hdr.csb_id)
    key = lookup(KeyRef(key_id, key_domain_id=key_domain_id if key_domain_id else None))
    if key is None:
        raise NoKeyError(f"no key for SEK/PEK ID {key_id:#010x}")
    if reference:
        encr_key, auth_key, salt = derive_message_keys(key.key, hdr.csb_id)
        want = hmac.digest(auth_key, data[:mac_offset], "sha1")
    else:
        message_keys = _message_keys(key, hdr.csb_id)
        want = message_keys.digest(data[:mac_offset])
    if not hmac.compare_digest(want, mac):
        raise STKMError("KEMAC MAC mismatch")

    t64 = int.from_bytes(t.ts_value, "big")
    if kemac.encr_alg == EncrAlg.AES_CM_128:
        if reference:
            plain = _aes_cm(encr_key, salt, hdr.csb_id, t64, kemac.encr_data)
        else:
            plain = message_keys.aes_cm(hdr.csb_id, t64, kemac.encr_data)
    elif kemac.encr_alg == EncrAlg.NULL and allow_null_encryption:
        plain = kemac.encr_data
    else:
        raise STKMError(f"unsupported or refused KEMAC encryption {kemac.encr_alg}")

    protection = TrafficProtection.from_code(bcast_body.flags.traffic_protection_protocol)
    auth = bool(bcast_body.flags.traffic_authentication_flag)
    materials = _materials_from_key_data(protection, plain)
    for m in materials:
        if isinstance(m, IPsecMaterial) and m.authenticated != auth:
            raise STKMError("traffic_authentication_flag disagrees with the IPsec key material")
    return ParsedMikeySTKM(
        csb_id=hdr.csb_id,
        ts_type=TsType(t.ts_type),
        counter=t64,
        key_domain_id=key_domain_id,
        key_id=key_id,
        protection=protection,
        protection_after_reception=bcast_body.flags.protection_after_reception,
        traffic_authentication=auth,
        access_criteria=tuple(
            AccessCriteriaDescriptor(d.tag, d.data) for d in (bcast_body.access_criteria or ())
        ),
        encryption=EncrAlg(kemac.encr_alg),
        material=materials[0],
        next_material=materials[1] if len(materials) > 1 else None,
    )


def _key_identity(body: Any, csb_id: int) -> tuple[bytes, int]:
    key_domain_id, key_id = b"", csb_id
    if body is None:
        return key_domain_id, key_id
    for sub in body.subpayloads:
        if sub.key_id_type == KeyIdType.KEY_DOMAIN_ID:
            if len(sub.key_id) != 3:
                raise STKMError("Key Domain ID must be 3 bytes")
            key_domain_id = sub.key_id
        elif sub.key_id_type == KeyIdType.SERVICE_KEY_ID:
            if len(sub.key_id) != 4:
                raise STKMError("SEK/PEK ID must be 4 bytes")
            key_id = int.from_bytes(sub.key_id, "big")
    return key_domain_id, key_id


def _materials_from_key_data(protection: TrafficProtection, plain: bytes) -> list[TrafficKeyMaterial]:
    stream = io.BytesIO(plain)
    materials: list[TrafficKeyMaterial] = []
    next_payload = PayloadType.KEY_DATA
    try:
        while next_payload == PayloadType.KEY_DATA:
            if len(materials) == 2:
                raise STKMError("more than two Key data sub-payloads")
            kd = KEY_DATA.parse_stream(stream)
            next_payload = kd.next_payload
            if next_payload not in (PayloadType.KEY_DATA, PayloadType.LAST):
                raise STKMError(f"Key data sub-payload followed by payload type {next_payload}")
            if kd.type_kv.type not in tuple(KeyDataType):
                raise STKMError(f"unsupported key data type {kd.type_kv.type}")
            if kd.type_kv.kv == KeyValidity.INTERVAL:
                raise STKMError("interval key validity is not used in an STKM")
            identifier = kd.kv_data if kd.type_kv.kv == KeyValidity.SPI else b""
            salt = kd.salt or b""
            if (protection is TrafficProtection.IPSEC) == bool(salt):
                raise STKMError(f"{protection.name} key data {'has' if salt else 'lacks'} a salt")
            materials.append(material_from_plaintext(protection, identifier, kd.key + salt))
    except ConstructError:
        raise STKMError("malformed Key data sub-payload (wrong key?)") from None
    except TrafficKeyError as exc:
        raise STKMError(f"bad traffic key material: {exc}") from None
    if stream.tell() != len(plain):
        raise STKMError("trailing bytes after the Key data sub-payloads")
    return materials


# --- describe (structure only, no keys) ----------------------------------------------------------


@attrs.frozen(kw_only=True)
class MikeyPayload:
    """One payload of a MIKEY message as carried.

    :ivar kind: ``"EXT"``, ``"T"`` or ``"KEMAC"`` (``PayloadType`` name).
    :ivar offset: byte offset of the payload in the message.
    :ivar fields: ``(name, value)`` pairs in wire order; byte values stay bytes.
    """

    kind: str
    offset: int
    fields: tuple[tuple[str, Any], ...]


@attrs.frozen(kw_only=True)
class MikeySTKMFields:
    """A Smartcard Profile STKM field by field, as :func:`describe_stkm` read it (nothing verified).

    ``key_domain_id``/``key_id`` come from the Key ID EXT (``key_id`` is the CSB ID when the EXT is
    absent); the STKM body fields from the OMA BCAST EXT; the Key data sub-payloads stay encrypted.
    """

    size: int
    hdr: tuple[tuple[str, int], ...]
    csb_id: int
    payloads: tuple[MikeyPayload, ...]
    key_domain_id: bytes
    key_id: int
    ts_type: TsType
    counter: int
    protection_after_reception: int
    traffic_protection_protocol: int
    traffic_authentication: bool
    access_criteria: tuple[AccessCriteriaDescriptor, ...]
    encryption: int
    encrypted_key_data: bytes = attrs.field(repr=False)
    mac_alg: int
    mac: bytes


def describe_stkm(data: bytes) -> MikeySTKMFields:
    """Read a Smartcard Profile STKM (MIKEY) payload by payload without any key.

    Nothing is decrypted or verified (that is :func:`parse_stkm`'s job). The framing rules are the
    parser's: MIKEY v1 pre-shared, PRF MIKEY-1, empty CS ID map, KEMAC last and followed by the
    MAC only; unknown EXT types are listed, other payload types refused.

    :param data: the MIKEY message.
    :returns: the fields.
    :raises STKMError: the bytes are not such a message, or lack the T, BCAST STKM EXT or KEMAC.
    """
    data = bytes(data)
    stream = io.BytesIO(data)
    payloads: list[MikeyPayload] = []
    key_id_body = bcast_body = t = kemac = mac = None
    try:
        hdr = HDR.parse_stream(stream)
        if hdr.version != MIKEY_VERSION or hdr.data_type != _DATA_TYPE_PSK:
            raise STKMError(f"not a MIKEY v1 pre-shared message (version {hdr.version}, type {hdr.data_type})")
        if hdr.v_prf.prf_func != _PRF_MIKEY_1 or hdr.cs_id_map_type != _CS_ID_MAP_EMPTY:
            raise STKMError(f"unsupported PRF {hdr.v_prf.prf_func} or CS ID map type {hdr.cs_id_map_type}")
        next_payload = hdr.next_payload
        while next_payload != PayloadType.LAST:
            if kemac is not None:
                raise STKMError("KEMAC must be the last payload")
            offset = stream.tell()
            if next_payload == PayloadType.EXT:
                payload = EXT.parse_stream(stream)
                fields: list[tuple[str, Any]] = [("ext_type", payload.ext_type)]
                if payload.ext_type == ExtType.KEY_ID and key_id_body is None:
                    key_id_body = KEY_ID_BODY.parse(payload.data)
                    fields += [(KeyIdType(s.key_id_type).name if s.key_id_type in tuple(KeyIdType) else
                                f"key_id_type {s.key_id_type}", bytes(s.key_id)) for s in key_id_body.subpayloads]
                elif payload.ext_type == ExtType.OMA_BCAST and bcast_body is None:
                    if not payload.data or payload.data[0] != BcastSubtype.STKM:
                        raise STKMError("OMA BCAST EXT is not the STKM subtype")
                    bcast_body = BCAST_STKM_BODY.parse(payload.data)
                    fields += [("subtype", bcast_body.subtype)]
                    fields += [(name, int(bcast_body.flags[name])) for name in (
                        "protection_after_reception", "access_criteria_flag", "traffic_protection_protocol",
                        "traffic_authentication_flag", "reserved_for_future_use")]
                else:
                    fields.append(("data", bytes(payload.data)))
            elif next_payload == PayloadType.T:
                if t is not None:
                    raise STKMError("duplicate T payload")
                t = payload = T.parse_stream(stream)
                fields = [("ts_type", t.ts_type), ("ts_value", int.from_bytes(t.ts_value, "big"))]
            elif next_payload == PayloadType.KEMAC:
                kemac = payload = KEMAC_HEAD.parse_stream(stream)
                if kemac.mac_alg != MacAlg.HMAC_SHA1_160:
                    raise STKMError(f"unsupported KEMAC MAC algorithm {kemac.mac_alg}")
                mac = stream.read(_MAC_SIZE)
                if len(mac) != _MAC_SIZE:
                    raise STKMError("STKM truncated in the MAC")
                fields = [("encr_alg", kemac.encr_alg), ("encr_data_length", len(kemac.encr_data)),
                          ("mac_alg", kemac.mac_alg), ("mac", mac)]
            else:
                raise STKMError(f"unexpected MIKEY payload type {next_payload}")
            payloads.append(MikeyPayload(kind=PayloadType(next_payload).name, offset=offset, fields=tuple(fields)))
            next_payload = payload.next_payload
    except ConstructError:
        raise STKMError(f"STKM truncated or malformed ({len(data)} bytes)") from None
    _check_complete(data, stream.tell(), kemac, t, bcast_body)
    key_domain_id, key_id = _key_identity(key_id_body, hdr.csb_id)
    return MikeySTKMFields(
        size=len(data),
        hdr=(("version", hdr.version), ("data_type", hdr.data_type), ("next_payload", hdr.next_payload),
             ("v", int(hdr.v_prf.v)), ("prf_func", hdr.v_prf.prf_func), ("csb_id", hdr.csb_id),
             ("cs_count", hdr.cs_count), ("cs_id_map_type", hdr.cs_id_map_type)),
        csb_id=hdr.csb_id,
        payloads=tuple(payloads),
        key_domain_id=bytes(key_domain_id),
        key_id=key_id,
        ts_type=TsType(t.ts_type),
        counter=int.from_bytes(t.ts_value, "big"),
        protection_after_reception=bcast_body.flags.protection_after_reception,
        traffic_protection_protocol=bcast_body.flags.traffic_protection_protocol,
        traffic_authentication=bool(bcast_body.flags.traffic_authentication_flag),
        access_criteria=tuple(AccessCriteriaDescriptor(d.tag, d.data) for d in (bcast_body.access_criteria or ())),
        encryption=kemac.encr_alg,
        encrypted_key_data=bytes(kemac.encr_data),
        mac_alg=kemac.mac_alg,
        mac=bytes(mac),  # type: ignore[arg-type]
    )


__all__ += ["MikeyPayload", "MikeySTKMFields", "describe_stkm"]
