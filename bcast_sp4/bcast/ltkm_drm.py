"""DRM Profile LTKM (long-term key message) for broadcast delivery, **PROVISIONAL layout PROV-LTKM-1**.

    ############################################################################################
    #  PROVISIONAL — NOT THE OMA FORMAT.  The bytes below are a project design, not a          #
    #  reconstruction.  bcast-keys.md §4.1 [R]: a broadcast DRM Profile LTKM is a BCRO defined  #
    #  in OMA-TS-DRM-XBS-V1_0, whose byte layout was NOT obtained [?] (§12.6: "BCRO: not        #
    #  found").  No terminal will accept these messages.  Replace this module (one table, one  #
    #  builder, one parser) once the XBS text is available; nothing else in bcast-sp4 looks    #
    #  inside an LTKM (the MUX and the EMMG carry LTKMs as opaque datagrams).                  #
    ############################################################################################

Spec clauses: SP-4 CR §14.1.1.3.4 (the EMMG/LTKMG ``datagram`` "is the actual LTKM"; DRM Profile
only, Smartcard Profile LTKMs are not broadcast); bcast-keys.md §1.2 (DRM Profile keys: SEK/PEK 128
bits, SAK/PAK for the STKM MAC, "group, domain or unique keys for BCRO addressing, 128 bits, AES"
[R]), §1.4 step 1 (the receiver unwraps SEK/PEK and SAK/PAK from the (BC)RO) and §4.1.

What PROV-LTKM-1 models (the *semantics* are the recalled BCRO ones [R]; the layout is ours): a
rights object addressed to one device (the "unique" addressing mode), carrying for each entitled
service or programme its key id (the STKM's CID extension, keys.py), its validity window and its
key material (SEK/PEK + SAK/PAK) wrapped under a key derived from the device's 128-bit unique key,
with a MAC over the whole message. Group and domain addressing are not modelled.

Layout ``LTKM_LAYOUT`` (network byte order), ``LAYOUT_VERSION = "PROV-LTKM-1"``::

    layout_version      8    = 1; any other value is refused
    message_kind        8    = 0x01 device-addressed key delivery (0x02 group, 0x03 domain: reserved)
    device_id           8 + n  length (1..64) then the device id bytes
    issued_at           32   POSIX seconds, UTC
    sequence            32   issuer's counter (replay detection is the terminal's business)
    key_count           8    1..255, then per key:
      role              8    0 = service (SEK + SAK), 1 = programme (PEK + PAK)
      key_id            32   service_CID_extension / programme_CID_extension of the STKMs
      not_before        32   POSIX seconds, 0 = open
      not_after         32   POSIX seconds, exclusive, 0xFFFFFFFF = open
      wrapped_keys      8 + n  length then AES key wrap with padding (RFC 5649) under the KEK of
                             key (16 bytes) || authentication key (16..64 bytes)
    mac                 128  HMAC-SHA-256 under the MAC key over every preceding byte, truncated

Cryptography (real, with ``cryptography``): the device key never touches data directly; HKDF-SHA-256
(RFC 5869, empty salt) derives ``KEK`` (16 bytes, info ``b"bcast-sp4 PROV-LTKM-1 KEK"``) and ``MAC
key`` (32 bytes, info ``b"bcast-sp4 PROV-LTKM-1 MAC"``). The parser checks the MAC (constant time)
before unwrapping anything; a wrong device key therefore reads as a MAC mismatch.

Construct use (STYLE §7): one declared table; the compiled builder makes our own messages, the
plain parser reads received ones and ends with ``Terminated``; the MAC is patched in after building.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone

import attrs
from construct import Bytes, ConstructError, GreedyBytes, Int8ub, Int32ub, Prefixed, PrefixedArray, Struct, Terminated
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding, aes_key_wrap_with_padding

from .keys import KeyRole, ServiceKey, Timeish, to_datetime
from .status import BcastError, BcastStatus

__all__ = [
    "LAYOUT_VERSION",
    "LTKM_LAYOUT_VERSION_BYTE",
    "KIND_DEVICE",
    "MAC_SIZE",
    "LTKM_LAYOUT",
    "LTKMError",
    "ParsedLTKM",
    "build_ltkm",
    "parse_ltkm",
    "keys_by_ref",
    "peek_device_id",
]

#: Which provisional design this module implements (PROVISIONAL: see the module docstring).
LAYOUT_VERSION = "PROV-LTKM-1"
#: ``layout_version`` byte written and required.
LTKM_LAYOUT_VERSION_BYTE = 1
#: ``message_kind`` of a device-addressed LTKM (the only one implemented).
KIND_DEVICE = 0x01
#: Truncated HMAC-SHA-256 size in bytes.
MAC_SIZE = 16
DEVICE_KEY_SIZE = 16
MAX_DEVICE_ID = 64
_OPEN_END = 0xFFFFFFFF
_ROLE_CODE = {KeyRole.SERVICE: 0, KeyRole.PROGRAMME: 1}
_CODE_ROLE = {v: k for k, v in _ROLE_CODE.items()}
_KEK_INFO = b"bcast-sp4 PROV-LTKM-1 KEK"
_MAC_INFO = b"bcast-sp4 PROV-LTKM-1 MAC"

# --- THE TABLE (PROVISIONAL) -------------------------------------------------------------------

KEY_ENTRY = Struct(
    "role" / Int8ub,
    "key_id" / Int32ub,
    "not_before" / Int32ub,
    "not_after" / Int32ub,
    "wrapped_keys" / Prefixed(Int8ub, GreedyBytes),
)

LTKM_LAYOUT = Struct(
    "layout_version" / Int8ub,
    "message_kind" / Int8ub,
    "device_id" / Prefixed(Int8ub, GreedyBytes),
    "issued_at" / Int32ub,
    "sequence" / Int32ub,
    "key_entries" / PrefixedArray(Int8ub, KEY_ENTRY),  # key_count, then the entries
    "mac" / Bytes(MAC_SIZE),
    Terminated,
)
_LTKM_BUILDER = LTKM_LAYOUT.compile()


class LTKMError(BcastError, ValueError):
    """An LTKM cannot be built or parsed: truncation, bad MAC, bad field, wrong device key."""

    status = BcastStatus.MALFORMED_MESSAGE_ERROR


@attrs.frozen(kw_only=True)
class ParsedLTKM:
    """A verified and unwrapped PROV-LTKM-1 message.

    :ivar keys: the delivered SEK/PEK as :class:`ServiceKey` (with SAK/PAK and validity), ready
        for :func:`bcast_sp4.bcast.stkm_drm.parse_stkm`.
    """

    layout_version: str
    device_id: bytes
    issued_at: datetime
    sequence: int
    keys: tuple[ServiceKey, ...] = attrs.field(repr=False)



def _parse_layout(data: bytes):
    """*data* parsed with :data:`LTKM_LAYOUT`, after its layout_version byte is checked.

    :raises LTKMError: another layout version, truncation or malformed fields.
    """
    if not data or data[0] != LTKM_LAYOUT_VERSION_BYTE:
        raise LTKMError(f"unsupported LTKM layout_version {data[0] if data else None}")
    try:
        return LTKM_LAYOUT.parse(data)
    except ConstructError:
        raise LTKMError(f"LTKM truncated or malformed ({len(data)} bytes)") from None

def _derive(device_key: bytes, info: bytes, length: int) -> bytes:
    if len(device_key) != DEVICE_KEY_SIZE:
        raise LTKMError(f"device key must be {DEVICE_KEY_SIZE} bytes, got {len(device_key)}")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(device_key)


def _mac(mac_key: bytes, data: bytes | bytearray) -> bytes:
    return hmac.new(mac_key, data, hashlib.sha256).digest()[:MAC_SIZE]


def _posix(value: datetime | None, default: int, low: int = 1) -> int:
    """POSIX seconds in 32 bits; *default* for ``None``. Validity bounds exclude the open markers."""
    if value is None:
        return default
    seconds = int(value.timestamp())
    if not low <= seconds < _OPEN_END:
        raise LTKMError(f"time {value.isoformat()} outside the 32-bit POSIX range")
    return seconds


def _from_posix(value: int, open_value: int) -> datetime | None:
    return None if value == open_value else datetime.fromtimestamp(value, timezone.utc)


@attrs.frozen(kw_only=True)
class _Grant:
    key: ServiceKey
    not_before: datetime | None
    not_after: datetime | None


def build_ltkm(
    device_id: bytes,
    device_key: bytes,
    keys: Sequence[ServiceKey | tuple[ServiceKey, Timeish | None, Timeish | None]],
    *,
    issued_at: Timeish,
    sequence: int,
) -> bytes:
    """Build a PROV-LTKM-1 LTKM delivering ``keys`` to one device (PROVISIONAL layout).

    :param device_id: the device's id (1..64 bytes).
    :param device_key: the device's 16-byte unique key (from registration).
    :param keys: each a :class:`ServiceKey` (its own validity is sent) or ``(key, not_before,
        not_after)`` to send a narrower validity (the device's entitlement window); ``None`` bounds
        fall back to the key's own.
    :param issued_at: issue time (aware datetime or POSIX seconds).
    :param sequence: the issuer's counter, 0..2**32-1.
    :returns: the LTKM bytes.
    :raises LTKMError: bad sizes, a key without SAK/PAK, times outside the 32-bit range, more than
        255 keys or none.
    """
    device_id = bytes(device_id)
    if not 1 <= len(device_id) <= MAX_DEVICE_ID:
        raise LTKMError(f"device_id must be 1..{MAX_DEVICE_ID} bytes, got {len(device_id)}")
    if not 0 <= sequence <= 0xFFFFFFFF:
        raise LTKMError("sequence must be a uint32")
    if not 1 <= len(keys) <= 0xFF:
        raise LTKMError(f"an LTKM carries 1..255 keys, not {len(keys)}")
    kek = _derive(device_key, _KEK_INFO, 16)
    mac_key = _derive(device_key, _MAC_INFO, 32)
    entries = []
    for item in keys:
        grant = _grant(item)
        key = grant.key
        if key.authentication_key is None:
            raise LTKMError(f"{key.label} has no authentication key (SAK/PAK); DRM Profile keys need one")
        entries.append(
            {
                "role": _ROLE_CODE[key.role],
                "key_id": key.key_id,
                "not_before": _posix(grant.not_before, 0),
                "not_after": _posix(grant.not_after, _OPEN_END),
                "wrapped_keys": aes_key_wrap_with_padding(kek, key.key + key.authentication_key),
            }
        )
    fields = {
        "layout_version": LTKM_LAYOUT_VERSION_BYTE,
        "message_kind": KIND_DEVICE,
        "device_id": device_id,
        "issued_at": _posix(to_datetime(issued_at), 0, low=0),
        "sequence": sequence,
        "key_entries": entries,
        "mac": bytes(MAC_SIZE),
    }
    out = bytearray(_LTKM_BUILDER.build(fields))
    out[-MAC_SIZE:] = _mac(mac_key, out[:-MAC_SIZE])
    return bytes(out)


def _grant(item: ServiceKey | tuple[ServiceKey, Timeish | None, Timeish | None]) -> _Grant:
    if isinstance(item, ServiceKey):
        return _Grant(key=item, not_before=item.not_before, not_after=item.not_after)
    key, not_before, not_after = item
    nb = key.not_before if not_before is None else to_datetime(not_before)
    na = key.not_after if not_after is None else to_datetime(not_after)
    return _Grant(key=key, not_before=nb, not_after=na)


def peek_device_id(data: bytes) -> bytes:
    """The device id an LTKM is addressed to, without verifying anything (to pick the device key).

    :raises LTKMError: the message is too short or not PROV-LTKM-1.
    """
    if len(data) < 3 or data[0] != LTKM_LAYOUT_VERSION_BYTE:
        raise LTKMError("not a PROV-LTKM-1 message")
    n = data[2]
    if len(data) < 3 + n:
        raise LTKMError("LTKM truncated in device_id")
    return bytes(data[3 : 3 + n])


def parse_ltkm(data: bytes, device_key: bytes | Callable[[bytes], bytes | None]) -> ParsedLTKM:
    """Verify and unwrap a PROV-LTKM-1 LTKM (PROVISIONAL layout).

    :param data: the LTKM bytes.
    :param device_key: the device's 16-byte key, or ``lookup(device_id) -> key | None``.
    :returns: the parsed message with the delivered keys.
    :raises LTKMError: wrong layout version or kind, truncation, trailing bytes, unknown device,
        MAC mismatch (also what a wrong device key gives), a wrap that does not open, bad sizes.
    """
    data = bytes(data)
    msg = _parse_layout(data)
    if msg.message_kind != KIND_DEVICE:
        raise LTKMError(f"message_kind {msg.message_kind:#04x} is not implemented (device addressing only)")
    if not 1 <= len(msg.device_id) <= MAX_DEVICE_ID:
        raise LTKMError("device_id length out of range")
    if callable(device_key):
        found = device_key(bytes(msg.device_id))
        if found is None:
            raise LTKMError("no device key for this device_id")
        device_key = found
    mac_key = _derive(device_key, _MAC_INFO, 32)
    if not hmac.compare_digest(_mac(mac_key, data[:-MAC_SIZE]), msg.mac):
        raise LTKMError("LTKM MAC mismatch (wrong device key or altered message)")
    if not msg.key_entries:
        raise LTKMError("LTKM carries no key")
    kek = _derive(device_key, _KEK_INFO, 16)
    keys = []
    for index, entry in enumerate(msg.key_entries):
        role = _CODE_ROLE.get(entry.role)
        if role is None:
            raise LTKMError(f"key {index}: role {entry.role} undefined")
        try:
            material = aes_key_unwrap_with_padding(kek, entry.wrapped_keys)
        except InvalidUnwrap:
            raise LTKMError(f"key {index}: wrapped key material does not unwrap") from None
        if not 16 + 16 <= len(material) <= 16 + 64:
            raise LTKMError(f"key {index}: unwrapped material of {len(material)} bytes")
        try:
            keys.append(
                ServiceKey(
                    key_id=entry.key_id,
                    key=material[:16],
                    authentication_key=material[16:],
                    role=role,
                    not_before=_from_posix(entry.not_before, 0),
                    not_after=_from_posix(entry.not_after, _OPEN_END),
                    name=f"ltkm {role.value} key {entry.key_id:#010x}",
                )
            )
        except ValueError as exc:
            raise LTKMError(f"key {index}: {exc}") from None
    return ParsedLTKM(
        layout_version=LAYOUT_VERSION,
        device_id=bytes(msg.device_id),
        issued_at=datetime.fromtimestamp(msg.issued_at, timezone.utc),
        sequence=msg.sequence,
        keys=tuple(keys),
    )


def keys_by_ref(ltkms: Iterable[ParsedLTKM]) -> list[ServiceKey]:
    """All keys several LTKMs delivered, for :func:`~bcast_sp4.bcast.keys.as_key_lookup`."""
    return [key for ltkm in ltkms for key in ltkm.keys]


# --- describe (structure only, no device key) ----------------------------------------------------


@attrs.frozen(kw_only=True)
class LTKMKeyEntryFields:
    """One key entry as carried: role, key id, validity; the keys stay wrapped.

    :ivar role: the :class:`KeyRole`, or the raw code when undefined.
    """

    role: KeyRole | int
    key_id: int
    not_before: datetime | None
    not_after: datetime | None
    wrapped_keys: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class LTKMFields:
    """A PROV-LTKM-1 LTKM (PROVISIONAL) field by field, as :func:`describe_ltkm` read it."""

    layout_version: str
    size: int
    layout_version_byte: int
    message_kind: int
    device_id: bytes
    issued_at: datetime
    sequence: int
    entries: tuple[LTKMKeyEntryFields, ...]
    mac: bytes


def describe_ltkm(data: bytes) -> LTKMFields:
    """Read a PROV-LTKM-1 LTKM field by field without the device key (nothing verified).

    :param data: the LTKM bytes.
    :returns: the fields.
    :raises LTKMError: wrong layout version, truncation or trailing bytes.
    """
    data = bytes(data)
    msg = _parse_layout(data)
    return LTKMFields(
        layout_version=LAYOUT_VERSION,
        size=len(data),
        layout_version_byte=msg.layout_version,
        message_kind=msg.message_kind,
        device_id=bytes(msg.device_id),
        issued_at=datetime.fromtimestamp(msg.issued_at, timezone.utc),
        sequence=msg.sequence,
        entries=tuple(
            LTKMKeyEntryFields(
                role=_CODE_ROLE.get(entry.role, entry.role),
                key_id=entry.key_id,
                not_before=_from_posix(entry.not_before, 0),
                not_after=_from_posix(entry.not_after, _OPEN_END),
                wrapped_keys=bytes(entry.wrapped_keys),
            )
            for entry in msg.key_entries
        ),
        mac=bytes(msg.mac),
    )


__all__ += ["LTKMKeyEntryFields", "LTKMFields", "describe_ltkm"]
