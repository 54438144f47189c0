"""Traffic key material (TEK) per traffic protection, and its CW byte layout (bcast-keys.md §5, §2.5).

Spec clause: OMA BCAST SvcCntProtection traffic protection (IPsec ESP, SRTP, ISMACryp) as summarised
in bcast-keys.md §5 ("what a TEK generator produces each crypto-period") and §2.5 ("traffic key
material inside ``encrypted_traffic_key_material``"); SP-4 CR §14.1.1.2 says the TEK generator's
"encryption parameters for IPSec, ISMACryp or SRTP" reach the STKMG through SimulCrypt.

Confidence: medium for the material shapes ([R]/[C] in the digest); the CW layout is **our own**
project definition (SimulCrypt only says the CW of a ``CP_CW_combination`` is opaque, variable
length in protocol version 2+).

Material per protection (§5):

* IPsec ESP: SPI (32 bits, >= 256: RFC 4303 reserves 0-255), AES-128-CBC encryption key (16 bytes),
  optional HMAC-SHA-1-96 authentication key (20 bytes). Algorithm ids are the IKEv2 transform
  ids (RFC 7296 registry): ``ENCR_AES_CBC = 12``; integrity ``NONE = 0``, ``AUTH_HMAC_SHA1_96 = 2``.
* SRTP: master key (16, AES_128_CM), master salt (14), MKI (0-255 bytes; its length is the
  session's fixed MKI length; 0 means "no MKI").
* ISMACryp: key (16, AES-128-CTR), salt (8), key indicator (0-255 bytes).

Plaintext "key material" (§2.5, what an STKM encrypts; the identifier travels outside it):
IPsec ``encryption_key || authentication_key`` (16 or 36 bytes), SRTP ``master_key || master_salt``
(30), ISMACryp ``key || salt`` (24). See :func:`key_material_plaintext`.

CW layout, version 1 (``CW_LAYOUT_VERSION``; this is the CW of one ``CP_CW_combination``)::

    byte  size  field
    0     1     cw_layout_version            = 0x01
    1     1     traffic_protection_protocol  0 IPsec, 1 SRTP, 2 ISMACryp (= STKM code, §2.3)
    --- IPsec (protocol 0) ---
    2     4     spi                          uimsbf
    6     1     encryption_algorithm         IKEv2 transform id (12 = AES-CBC)
    7     1     encryption_key_length  N     = 16
    8     N     encryption_key
    .     1     authentication_algorithm     IKEv2 integrity id (0 none, 2 HMAC-SHA1-96)
    .     1     authentication_key_length M  = 0 (none) or 20
    .     M     authentication_key
    --- SRTP (protocol 1) ---
    2     1     mki_length L                 0..255
    3     L     mki
    .     1     master_key_length            = 16
    .     16    master_key
    .     1     master_salt_length           = 14
    .     14    master_salt
    --- ISMACryp (protocol 2) ---
    2     1     key_indicator_length L       0..255
    3     L     key_indicator
    .     1     key_length                   = 16
    .     16    key
    .     1     salt_length                  = 8
    .     8     salt

Every length byte is checked against the protection's fixed sizes and no trailing byte is
allowed; any violation raises :class:`TrafficKeyError` (a ``ValueError``). Lengths are explicit
although implied, so a CWG that sends the wrong shape fails loudly, not silently.

The schema is declared once with construct (``CW_LAYOUT``, STYLE §7). :func:`encode_cw` and
:func:`decode_cw` take a ``struct`` fast path (the ECMG decodes two CWs per STKM): it handles only
well-formed CWs of the three layouts above, with the field sizes fixed by the protection, and
hands everything else to the construct path, so every error is the construct path's. With
``reference=True`` they use construct only (a compiled copy builds, the plain copy parses); a
hypothesis test checks both paths give the same bytes, materials and errors.
"""

from __future__ import annotations

import enum
import os
import struct
from typing import Callable, ClassVar, Union

import attrs
from construct import (
    ConstructError,
    GreedyBytes,
    Int8ub,
    Int32ub,
    Prefixed,
    Struct,
    Switch,
    Terminated,
    this,
)

from .status import TrafficKeyError, UnsupportedTrafficProtectionError

__all__ = [
    "CW_LAYOUT_VERSION",
    "CW_LAYOUT",
    "TrafficProtection",
    "IPsecEncryption",
    "IPsecAuthentication",
    "IPsecMaterial",
    "SRTPMaterial",
    "ISMACrypMaterial",
    "TrafficKeyMaterial",
    "TrafficKeyError",
    "UnsupportedTrafficProtectionError",
    "generate",
    "encode_cw",
    "decode_cw",
    "key_material_plaintext",
    "key_material_length",
    "material_from_plaintext",
]

#: Version byte of the CW layout defined in the module docstring.
CW_LAYOUT_VERSION = 1


class TrafficProtection(enum.IntEnum):
    """Traffic protection protocol; values are the STKM ``traffic_protection_protocol`` codes (§2.3)."""

    IPSEC = 0
    SRTP = 1
    ISMACRYP = 2

    @classmethod
    def from_code(cls, code: int) -> "TrafficProtection":
        """Map a protocol code to a member.

        :param code: ``traffic_protection_protocol`` value.
        :returns: the member.
        :raises UnsupportedTrafficProtectionError: for 3 (DCF) and reserved values.
        """
        try:
            return cls(code)
        except ValueError:
            raise UnsupportedTrafficProtectionError(
                f"unsupported traffic_protection_protocol {code}"
            ) from None


class IPsecEncryption(enum.IntEnum):
    """IKEv2 encryption transform ids we support for the ESP SA."""

    AES_CBC = 12


class IPsecAuthentication(enum.IntEnum):
    """IKEv2 integrity transform ids we support for the ESP SA."""

    NONE = 0
    HMAC_SHA1_96 = 2


_IPSEC_ENCRYPTION_KEY_SIZE = {IPsecEncryption.AES_CBC: 16}
_IPSEC_AUTHENTICATION_KEY_SIZE = {IPsecAuthentication.NONE: 0, IPsecAuthentication.HMAC_SHA1_96: 20}
_AES128_KEY_SIZE = 16
_SRTP_SALT_SIZE = 14
_ISMACRYP_SALT_SIZE = 8
_MAX_ID_SIZE = 255
_MIN_SPI = 256


def _as_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TrafficKeyError(f"expected bytes, got {type(value).__name__}")


def _fixed_size(size: int) -> Callable[[object, attrs.Attribute, bytes], None]:
    def check(_instance: object, attribute: attrs.Attribute, value: bytes) -> None:
        if len(value) != size:
            raise TrafficKeyError(f"{attribute.name} must be {size} bytes, got {len(value)}")

    return check


def _id_size(_instance: object, attribute: attrs.Attribute, value: bytes) -> None:
    if len(value) > _MAX_ID_SIZE:
        raise TrafficKeyError(f"{attribute.name} longer than {_MAX_ID_SIZE} bytes")


def _enum(enum_cls: type[enum.IntEnum]) -> Callable[[object], enum.IntEnum]:
    def convert(value: object) -> enum.IntEnum:
        try:
            return enum_cls(value)
        except ValueError:
            raise TrafficKeyError(f"unsupported {enum_cls.__name__} id {value!r}") from None

    return convert


def _spi_range(_instance: object, _attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or not _MIN_SPI <= value <= 0xFFFFFFFF:
        raise TrafficKeyError(f"SPI must be an int in {_MIN_SPI}..0xFFFFFFFF")


@attrs.frozen(kw_only=True)
class IPsecMaterial:
    """TEK material of one IPsec ESP SA (RFC 4303 multicast SA, no IKE).

    ``authentication_key`` is empty when ``authentication_algorithm`` is NONE.
    """

    PROTECTION: ClassVar[TrafficProtection] = TrafficProtection.IPSEC

    spi: int = attrs.field(validator=_spi_range)
    encryption_key: bytes = attrs.field(converter=_as_bytes, repr=False)
    authentication_key: bytes = attrs.field(default=b"", converter=_as_bytes, repr=False)
    encryption_algorithm: IPsecEncryption = attrs.field(
        default=IPsecEncryption.AES_CBC, converter=_enum(IPsecEncryption)
    )
    authentication_algorithm: IPsecAuthentication = attrs.field(
        default=IPsecAuthentication.NONE, converter=_enum(IPsecAuthentication)
    )

    def __attrs_post_init__(self) -> None:
        want = _IPSEC_ENCRYPTION_KEY_SIZE[self.encryption_algorithm]
        if len(self.encryption_key) != want:
            raise TrafficKeyError(f"encryption_key must be {want} bytes, got {len(self.encryption_key)}")
        want = _IPSEC_AUTHENTICATION_KEY_SIZE[self.authentication_algorithm]
        if len(self.authentication_key) != want:
            raise TrafficKeyError(
                f"authentication_key must be {want} bytes for {self.authentication_algorithm.name},"
                f" got {len(self.authentication_key)}"
            )

    @property
    def authenticated(self) -> bool:
        """True when ESP integrity protection (and so an authentication key) is in use."""
        return self.authentication_algorithm is not IPsecAuthentication.NONE

    @property
    def identifier(self) -> bytes:
        """The TEK identifier carried outside the encrypted material: the SPI, 4 bytes."""
        return self.spi.to_bytes(4, "big")


@attrs.frozen(kw_only=True)
class SRTPMaterial:
    """TEK material of one SRTP master key (RFC 3711, AES_128_CM, key-derivation rate 0)."""

    PROTECTION: ClassVar[TrafficProtection] = TrafficProtection.SRTP

    master_key: bytes = attrs.field(converter=_as_bytes, validator=_fixed_size(_AES128_KEY_SIZE), repr=False)
    master_salt: bytes = attrs.field(converter=_as_bytes, validator=_fixed_size(_SRTP_SALT_SIZE), repr=False)
    mki: bytes = attrs.field(default=b"", converter=_as_bytes, validator=_id_size)

    @property
    def mki_length(self) -> int:
        """MKI length in bytes (fixed per SRTP session; 0 = no MKI)."""
        return len(self.mki)

    @property
    def identifier(self) -> bytes:
        """The TEK identifier carried outside the encrypted material: the MKI."""
        return self.mki


@attrs.frozen(kw_only=True)
class ISMACrypMaterial:
    """TEK material of one ISMACryp 1.1/2.0 key (AES-128-CTR)."""

    PROTECTION: ClassVar[TrafficProtection] = TrafficProtection.ISMACRYP

    key: bytes = attrs.field(converter=_as_bytes, validator=_fixed_size(_AES128_KEY_SIZE), repr=False)
    salt: bytes = attrs.field(converter=_as_bytes, validator=_fixed_size(_ISMACRYP_SALT_SIZE), repr=False)
    key_indicator: bytes = attrs.field(default=b"", converter=_as_bytes, validator=_id_size)

    @property
    def identifier(self) -> bytes:
        """The TEK identifier carried outside the encrypted material: the key indicator (KI)."""
        return self.key_indicator


TrafficKeyMaterial = Union[IPsecMaterial, SRTPMaterial, ISMACrypMaterial]

_MATERIAL_CLASS: dict[TrafficProtection, type] = {
    TrafficProtection.IPSEC: IPsecMaterial,
    TrafficProtection.SRTP: SRTPMaterial,
    TrafficProtection.ISMACRYP: ISMACrypMaterial,
}


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------

def _random(rng: Callable[[int], bytes], n: int) -> bytes:
    out = rng(n)
    if not isinstance(out, bytes) or len(out) != n:
        raise ValueError(f"rng returned {type(out).__name__} of wrong length for {n} bytes")
    return out


def generate(
    protection: TrafficProtection,
    rng: Callable[[int], bytes] = os.urandom,
    **params: object,
) -> TrafficKeyMaterial:
    """Generate fresh TEK material for one crypto-period.

    Parameters per protection (all optional):

    * IPSEC: ``spi`` (int; default random >= 256), ``authenticated`` (bool, default False: adds a
      20-byte HMAC-SHA-1-96 key).
    * SRTP: ``mki`` (bytes) or ``mki_length`` (int, default 4: random MKI of that length).
    * ISMACRYP: ``key_indicator`` (bytes) or ``key_indicator_length`` (int, default 4).

    Identifiers must never repeat while an old TEK may still be cached (§5); random 4-byte values
    make that unlikely, a CWG that needs a guarantee passes its own counter.

    :param protection: the traffic protection.
    :param rng: ``rng(n) -> n random bytes``; the OS CSPRNG by default (tests pass a seeded one).
    :returns: the material object for ``protection``.
    :raises TypeError: on a parameter that ``protection`` does not take.
    :raises TrafficKeyError: on a bad parameter value.
    :raises UnsupportedTrafficProtectionError: on a protection code we do not implement.
    """
    if type(protection) is not TrafficProtection:  # a member already: no enum lookup
        protection = TrafficProtection.from_code(protection)
    if protection is TrafficProtection.IPSEC:
        _only(params, "spi", "authenticated")
        spi = params.get("spi")
        while spi is None:
            candidate = int.from_bytes(_random(rng, 4), "big")
            spi = candidate if candidate >= _MIN_SPI else None
        authenticated = bool(params.get("authenticated", False))
        return IPsecMaterial(
            spi=spi,
            encryption_key=_random(rng, _AES128_KEY_SIZE),
            authentication_key=_random(rng, 20) if authenticated else b"",
            authentication_algorithm=(
                IPsecAuthentication.HMAC_SHA1_96 if authenticated else IPsecAuthentication.NONE
            ),
        )
    if protection is TrafficProtection.SRTP:
        _only(params, "mki", "mki_length")
        mki = _identifier(params, "mki", "mki_length", rng)
        return SRTPMaterial(
            master_key=_random(rng, _AES128_KEY_SIZE), master_salt=_random(rng, _SRTP_SALT_SIZE), mki=mki
        )
    _only(params, "key_indicator", "key_indicator_length")
    ki = _identifier(params, "key_indicator", "key_indicator_length", rng)
    return ISMACrypMaterial(
        key=_random(rng, _AES128_KEY_SIZE), salt=_random(rng, _ISMACRYP_SALT_SIZE), key_indicator=ki
    )


def _only(params: dict[str, object], *allowed: str) -> None:
    if params.keys() <= set(allowed):  # the usual case, without sorting anything
        return
    extra = sorted(set(params) - set(allowed))
    if extra:
        raise TypeError(f"unexpected parameter(s) {', '.join(extra)}; allowed: {', '.join(allowed)}")


def _identifier(params: dict[str, object], name: str, length_name: str, rng: Callable[[int], bytes]) -> bytes:
    if params.get(name) is not None:
        return _as_bytes(params[name])
    length = params.get(length_name, 4)
    if not isinstance(length, int) or not 0 <= length <= _MAX_ID_SIZE:
        raise TrafficKeyError(f"{length_name} must be an int in 0..{_MAX_ID_SIZE}")
    return _random(rng, length) if length else b""


# ---------------------------------------------------------------------------------------------
# Plaintext key material (§2.5): what an STKM encrypts
# ---------------------------------------------------------------------------------------------

def key_material_length(protection: TrafficProtection, authenticated: bool = False) -> int:
    """Byte length of the plaintext key material (§2.5).

    :param protection: the traffic protection.
    :param authenticated: IPsec only: whether the HMAC-SHA-1-96 key is included.
    :returns: 16/36 (IPsec), 30 (SRTP) or 24 (ISMACryp).
    """
    if protection is TrafficProtection.IPSEC:
        return _AES128_KEY_SIZE + (20 if authenticated else 0)
    if protection is TrafficProtection.SRTP:
        return _AES128_KEY_SIZE + _SRTP_SALT_SIZE
    return _AES128_KEY_SIZE + _ISMACRYP_SALT_SIZE


def key_material_plaintext(material: TrafficKeyMaterial) -> bytes:
    """The plaintext that an STKM encrypts for ``material`` (§2.5; identifier excluded).

    :param material: TEK material.
    :returns: IPsec ``encryption_key || authentication_key``; SRTP ``master_key || master_salt``;
        ISMACryp ``key || salt``.
    """
    if isinstance(material, IPsecMaterial):
        return material.encryption_key + material.authentication_key
    if isinstance(material, SRTPMaterial):
        return material.master_key + material.master_salt
    if isinstance(material, ISMACrypMaterial):
        return material.key + material.salt
    raise TypeError(f"not traffic key material: {type(material).__name__}")


def material_from_plaintext(protection: TrafficProtection, identifier: bytes, plaintext: bytes) -> TrafficKeyMaterial:
    """Rebuild material from its identifier and plaintext key material (inverse of the above).

    :param protection: the traffic protection.
    :param identifier: SPI (exactly 4 bytes), MKI or key indicator.
    :param plaintext: the decrypted key material; for IPsec 16 bytes (no authentication) or 36.
    :returns: the material object.
    :raises TrafficKeyError: on a wrong length.
    """
    protection = TrafficProtection.from_code(protection)
    if protection is TrafficProtection.IPSEC:
        if len(identifier) != 4:
            raise TrafficKeyError(f"IPsec SPI must be 4 bytes, got {len(identifier)}")
        if len(plaintext) not in (16, 36):
            raise TrafficKeyError(f"IPsec key material must be 16 or 36 bytes, got {len(plaintext)}")
        authenticated = len(plaintext) == 36
        return IPsecMaterial(
            spi=int.from_bytes(identifier, "big"),
            encryption_key=plaintext[:16],
            authentication_key=plaintext[16:],
            authentication_algorithm=(
                IPsecAuthentication.HMAC_SHA1_96 if authenticated else IPsecAuthentication.NONE
            ),
        )
    want = key_material_length(protection)
    if len(plaintext) != want:
        raise TrafficKeyError(f"{protection.name} key material must be {want} bytes, got {len(plaintext)}")
    if protection is TrafficProtection.SRTP:
        return SRTPMaterial(master_key=plaintext[:16], master_salt=plaintext[16:], mki=identifier)
    return ISMACrypMaterial(key=plaintext[:16], salt=plaintext[16:], key_indicator=identifier)


# ---------------------------------------------------------------------------------------------
# CW layout version 1 (see the module docstring)
# ---------------------------------------------------------------------------------------------

_Short = Prefixed(Int8ub, GreedyBytes)  # 8-bit length, then that many bytes

_CW_BODY = {
    TrafficProtection.IPSEC: Struct(
        "spi" / Int32ub,
        "encryption_algorithm" / Int8ub,
        "encryption_key" / _Short,
        "authentication_algorithm" / Int8ub,
        "authentication_key" / _Short,
    ),
    TrafficProtection.SRTP: Struct(
        "mki" / _Short,
        "master_key" / _Short,
        "master_salt" / _Short,
    ),
    TrafficProtection.ISMACRYP: Struct(
        "key_indicator" / _Short,
        "key" / _Short,
        "salt" / _Short,
    ),
}

#: The CW layout (one table). Parse with this; ``_CW_BUILDER`` is its compiled twin for building.
CW_LAYOUT = Struct(
    "cw_layout_version" / Int8ub,
    "traffic_protection_protocol" / Int8ub,
    "material" / Switch(this.traffic_protection_protocol, {int(k): v for k, v in _CW_BODY.items()}),
    Terminated,
)
_CW_BUILDER = CW_LAYOUT.compile()
_CW_FIELDS = {p: tuple(s.name for s in body.subcons) for p, body in _CW_BODY.items()}


_CW_IPSEC = struct.Struct(">BBIBB16sBB")  # head, spi, encryption alg + length + key, authentication alg + length
_CW_IPSEC_HEAD = struct.Struct(">BBIBB")  # head, spi, encryption alg + length
_IPSEC_PLAIN_CW_SIZE = _CW_IPSEC.size  # no authentication key
_IPSEC_AUTH_CW_SIZE = _CW_IPSEC.size + 20
_AES_CBC = int(IPsecEncryption.AES_CBC)
_HMAC_SHA1_96 = int(IPsecAuthentication.HMAC_SHA1_96)
_NO_AUTH = int(IPsecAuthentication.NONE)
_SRTP_TAIL = _AES128_KEY_SIZE + _SRTP_SALT_SIZE + 2  # master key and salt, each with its length byte
_ISMACRYP_TAIL = _AES128_KEY_SIZE + _ISMACRYP_SALT_SIZE + 2
_BYTE = tuple(bytes((i,)) for i in range(256))
_PROTECTION_BY_CODE = {int(p): p for p in TrafficProtection}
_SRTP_HEAD = bytes((CW_LAYOUT_VERSION, TrafficProtection.SRTP))
_ISMACRYP_HEAD = bytes((CW_LAYOUT_VERSION, TrafficProtection.ISMACRYP))
_KEY_LENGTH = _BYTE[_AES128_KEY_SIZE]
_SRTP_SALT_LENGTH = _BYTE[_SRTP_SALT_SIZE]
_ISMACRYP_SALT_LENGTH = _BYTE[_ISMACRYP_SALT_SIZE]


def encode_cw(material: TrafficKeyMaterial, *, reference: bool = False) -> bytes:
    """Encode TEK material as the CW bytes of one SimulCrypt ``CP_CW_combination`` (layout v1).

    :param material: TEK material.
    :param reference: build with the compiled construct table instead of the struct fast path
        (same bytes; what the fast path is tested against).
    :returns: the CW bytes.
    :raises TypeError: if ``material`` is not one of the material classes.
    """
    if not reference:
        cls = type(material)
        if cls is SRTPMaterial:
            mki = material.mki  # type: ignore[union-attr]
            return b"".join((
                _SRTP_HEAD, _BYTE[len(mki)], mki, _KEY_LENGTH, material.master_key,  # type: ignore[union-attr]
                _SRTP_SALT_LENGTH, material.master_salt,  # type: ignore[union-attr]
            ))
        if cls is ISMACrypMaterial:
            ki = material.key_indicator  # type: ignore[union-attr]
            return b"".join((
                _ISMACRYP_HEAD, _BYTE[len(ki)], ki, _KEY_LENGTH, material.key,  # type: ignore[union-attr]
                _ISMACRYP_SALT_LENGTH, material.salt,  # type: ignore[union-attr]
            ))
        if cls is IPsecMaterial:
            enc_key, auth_key = material.encryption_key, material.authentication_key  # type: ignore[union-attr]
            return b"".join((
                _CW_IPSEC_HEAD.pack(
                    CW_LAYOUT_VERSION, TrafficProtection.IPSEC, material.spi,  # type: ignore[union-attr]
                    material.encryption_algorithm, len(enc_key),  # type: ignore[union-attr]
                ),
                enc_key,
                _BYTE[material.authentication_algorithm],  # type: ignore[union-attr]
                _BYTE[len(auth_key)],
                auth_key,
            ))
    return _encode_cw_reference(material)


def _encode_cw_reference(material: TrafficKeyMaterial) -> bytes:
    protection = getattr(type(material), "PROTECTION", None)
    if protection is None or not isinstance(material, _MATERIAL_CLASS[protection]):
        raise TypeError(f"not traffic key material: {type(material).__name__}")
    body = {name: getattr(material, name) for name in _CW_FIELDS[protection]}
    return _CW_BUILDER.build(
        {"cw_layout_version": CW_LAYOUT_VERSION, "traffic_protection_protocol": int(protection), "material": body}
    )


def decode_cw(protection: TrafficProtection | None, data: bytes, *, reference: bool = False) -> TrafficKeyMaterial:
    """Decode CW bytes (layout v1) into TEK material.

    :param protection: the protection the stream is configured for; the CW must carry the same
        code. ``None`` accepts whichever supported protection the CW names.
    :param data: the CW bytes from a ``CP_CW_combination``.
    :param reference: parse with the construct table only (same results and errors; what the
        struct fast path is tested against).
    :returns: the material object.
    :raises TrafficKeyError: on a wrong version, protection mismatch, bad length, truncation or
        trailing bytes.
    :raises UnsupportedTrafficProtectionError: (a ``TrafficKeyError``) on a protocol code we do not support.
    """
    if not reference and type(data) is bytes and len(data) > 2 and data[0] == CW_LAYOUT_VERSION:
        # the per-STKM case first (the ECM source decodes one CW per STKM): a well-formed CW of the
        # expected (or any supported) protection, without the checks' calls below
        found = _PROTECTION_BY_CODE.get(data[1])
        if found is not None and (protection is None or protection is found):
            material = _decode_cw_fast(found, data)
            if material is not None:
                return material
    data = bytes(data)
    if len(data) < 2:
        raise TrafficKeyError(f"CW too short: {len(data)} bytes")
    if data[0] != CW_LAYOUT_VERSION:
        raise TrafficKeyError(f"unsupported CW layout version {data[0]} (want {CW_LAYOUT_VERSION})")
    found = _PROTECTION_BY_CODE.get(data[1])
    if found is None:
        found = TrafficProtection.from_code(data[1])  # raises
    if protection is not None and protection is not found and found is not TrafficProtection(protection):
        raise TrafficKeyError(f"CW carries {found.name} material, stream expects {TrafficProtection(protection).name}")
    if not reference:
        material = _decode_cw_fast(found, data)
        if material is not None:
            return material
    try:
        parsed = CW_LAYOUT.parse(data)
    except ConstructError:
        raise TrafficKeyError(f"malformed {found.name} CW ({len(data)} bytes)") from None
    fields = {name: parsed.material[name] for name in _CW_FIELDS[found]}
    return _MATERIAL_CLASS[found](**fields)


# The fast decoder creates materials the way attrs' own __init__ stores fields (object.__setattr__
# on the frozen slots), without re-running converters and validators: it sets only values it has
# already checked against what they demand (fixed key and salt sizes, identifier <= 255 bytes,
# SPI >= 256, supported algorithm ids as enum members, bytes objects). The field lists are checked
# against the classes here, so a new field makes the import fail rather than leave it unset.
# per CW: Enum.MEMBER is slow on Python 3.11 (the metaclass's __getattr__ hook)
_SRTP, _ISMACRYP = TrafficProtection.SRTP, TrafficProtection.ISMACRYP
_AES_CBC_MEMBER, _NO_AUTH_MEMBER, _HMAC_MEMBER = IPsecEncryption.AES_CBC, IPsecAuthentication.NONE, IPsecAuthentication.HMAC_SHA1_96
_new = object.__new__
if (
    tuple(a.name for a in attrs.fields(IPsecMaterial))
    != ("spi", "encryption_key", "authentication_key", "encryption_algorithm", "authentication_algorithm")
    or tuple(a.name for a in attrs.fields(SRTPMaterial)) != ("master_key", "master_salt", "mki")
    or tuple(a.name for a in attrs.fields(ISMACrypMaterial)) != ("key", "salt", "key_indicator")
):  # pragma: no cover - guards a class edit
    raise ImportError("traffic key material fields changed: update _decode_cw_fast")


# each slot's own setter (what object.__setattr__ finds by name, without the lookup: ~0.1 µs a field)
_IPSEC_SET = tuple(IPsecMaterial.__dict__[a.name].__set__ for a in attrs.fields(IPsecMaterial))
_SRTP_SET = tuple(SRTPMaterial.__dict__[a.name].__set__ for a in attrs.fields(SRTPMaterial))
_ISMACRYP_SET = tuple(ISMACrypMaterial.__dict__[a.name].__set__ for a in attrs.fields(ISMACrypMaterial))


def _checked_ipsec(
    spi: int, encryption_key: bytes, authentication_key: bytes, authentication: IPsecAuthentication
) -> IPsecMaterial:
    obj = _new(IPsecMaterial)
    set_spi, set_encryption_key, set_authentication_key, set_encryption, set_authentication = _IPSEC_SET
    set_spi(obj, spi)
    set_encryption_key(obj, encryption_key)
    set_authentication_key(obj, authentication_key)
    set_encryption(obj, _AES_CBC_MEMBER)
    set_authentication(obj, authentication)
    return obj


def _checked_srtp(master_key: bytes, master_salt: bytes, mki: bytes) -> SRTPMaterial:
    obj = _new(SRTPMaterial)
    set_master_key, set_master_salt, set_mki = _SRTP_SET
    set_master_key(obj, master_key)
    set_master_salt(obj, master_salt)
    set_mki(obj, mki)
    return obj


def _checked_ismacryp(key: bytes, salt: bytes, key_indicator: bytes) -> ISMACrypMaterial:
    obj = _new(ISMACrypMaterial)
    set_key, set_salt, set_key_indicator = _ISMACRYP_SET
    set_key(obj, key)
    set_salt(obj, salt)
    set_key_indicator(obj, key_indicator)
    return obj


def _decode_cw_fast(found: TrafficProtection, data: bytes) -> TrafficKeyMaterial | None:
    """The material of a well-formed CW whose sizes the material classes accept, else ``None``."""
    n = len(data)
    if n < 3:
        return None
    if found is _SRTP:
        id_len = data[2]
        if n != 3 + id_len + _SRTP_TAIL:
            return None
        at = 3 + id_len
        if data[at] != _AES128_KEY_SIZE or data[at + 17] != _SRTP_SALT_SIZE:
            return None
        return _checked_srtp(data[at + 1 : at + 17], data[at + 18 :], data[3:at])
    if found is _ISMACRYP:
        id_len = data[2]
        if n != 3 + id_len + _ISMACRYP_TAIL:
            return None
        at = 3 + id_len
        if data[at] != _AES128_KEY_SIZE or data[at + 17] != _ISMACRYP_SALT_SIZE:
            return None
        return _checked_ismacryp(data[at + 1 : at + 17], data[at + 18 :], data[3:at])
    if n == _IPSEC_PLAIN_CW_SIZE or n == _IPSEC_AUTH_CW_SIZE:
        _, _, spi, enc_alg, enc_len, enc_key, auth_alg, auth_len = _CW_IPSEC.unpack_from(data)
        if enc_alg != _AES_CBC or enc_len != _AES128_KEY_SIZE or spi < _MIN_SPI:
            return None
        if n == _IPSEC_PLAIN_CW_SIZE:
            if auth_alg != _NO_AUTH or auth_len != 0:
                return None
            return _checked_ipsec(spi, enc_key, b"", _NO_AUTH_MEMBER)
        if auth_alg != _HMAC_SHA1_96 or auth_len != 20:
            return None
        return _checked_ipsec(spi, enc_key, data[_IPSEC_PLAIN_CW_SIZE:], _HMAC_MEMBER)
    return None
