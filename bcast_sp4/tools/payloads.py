"""Field-by-field views of the OMA BCAST payloads that SimulCrypt messages carry (``decode --payloads``).

Which parameters hold a payload, and of which format:

=================================  ===========================================================
ECM_response ``ECM_datagram``      an STKM: DRM Profile (PROV-2) when the channel's Super_CAS_id
                                   is 0x0001xxxx, Smartcard Profile MIKEY when 0x0002xxxx
EMMG<=>MUX ``datagram``            data_type 0x00 (EMM): DRM Profile LTKM (PROV-LTKM-1);
                                   data_type 0x02 (the SCS -> MUX STKM link): an STKM of the
                                   client_id's profile
CW_provision ``CP_CW_combination`` TEK material in bcast-sp4's CW layout (``bcast/traffic.py``),
                                   for BCAST Super_CAS_ids
=================================  ===========================================================

The profile and data_type come from earlier messages of the same connection (channel_setup,
stream_setup) when the decoder saw them (:class:`PayloadContext`). Without them the format is
guessed from the first bytes, and the view says so: MIKEY starts ``01 00``, a PROV-LTKM-1 LTKM
``01 01``, a PROV-2 STKM header word has protocol_version 1 in its top four bits (``1x``), the CW
layout starts with version 1 and a protocol code 0-2.

The structure comes from the keyless ``describe`` functions of :mod:`bcast_sp4.bcast`; with keys
(:class:`Secrets`) the STKMs are verified and decrypted with the ``parse_stkm`` functions and LTKMs
with ``parse_ltkm``. Key bytes (TEKs, delivered SEK/PEK) appear only with ``show_keys``. Nothing here
does I/O: the decode CLI loads the files and prints the views.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Any

import attrs

from ..bcast import ltkm_drm, stkm_drm, stkm_mikey, traffic
from ..bcast.keys import KeyRef, KeyRole, KeyStore, ServiceKey
from ..bcast.status import BcastError, NoKeyError
from ..bcast.traffic import IPsecMaterial, ISMACrypMaterial, SRTPMaterial, TrafficKeyMaterial, TrafficProtection
from ..wire import Message, ecmg_scs, emmg_mux
from ..wire.params import DataType
from ..wire.sp4 import Profile

__all__ = ["Format", "Field", "Node", "PayloadContext", "Secrets", "PayloadView", "sniff", "payload_views"]

_NAME_WIDTH = 31


class Format(enum.Enum):
    """Payload formats the decoder can read."""

    DRM_STKM = "drm-stkm"
    MIKEY_STKM = "mikey-stkm"
    DRM_LTKM = "drm-ltkm"
    TEK_CW = "tek-cw"


_TITLE = {
    Format.DRM_STKM: f"DRM Profile STKM, layout {stkm_drm.LAYOUT_VERSION}"
    " (PROVISIONAL: reconstructed, not the approved OMA table)",
    Format.MIKEY_STKM: "Smartcard Profile STKM: MIKEY (RFC 3830) with the OMA BCAST EXT",
    Format.DRM_LTKM: f"DRM Profile LTKM, layout {ltkm_drm.LAYOUT_VERSION}"
    " (PROVISIONAL: a bcast-sp4 design, not the OMA BCRO)",
    Format.TEK_CW: f"TEK material, bcast-sp4 CW layout v{traffic.CW_LAYOUT_VERSION}",
}
_LAYOUT = {
    Format.DRM_STKM: (stkm_drm.LAYOUT_VERSION, True),
    Format.DRM_LTKM: (ltkm_drm.LAYOUT_VERSION, True),
    Format.MIKEY_STKM: ("RFC 3830", False),
    Format.TEK_CW: (f"CW layout v{traffic.CW_LAYOUT_VERSION}", False),
}
_IDENTIFIER_KIND = {TrafficProtection.IPSEC: "SPI", TrafficProtection.SRTP: "MKI", TrafficProtection.ISMACRYP: "KI"}


# --- a small tree of named fields, printable as text and as JSON ---------------------------------


@attrs.frozen
class Field:
    """One field: its JSON name and value, and how a human reads it (``None``: JSON only)."""

    name: str
    value: Any
    text: str | None


@attrs.define
class Node:
    """A titled group of fields and sub-groups (a payload, a key block, a decrypted TEK, ...), in order.

    :ivar key: the JSON key of this group inside its parent; groups marked ``many`` gather into a list.
    """

    key: str
    title: str
    items: list["Field | Node"] = attrs.field(factory=list)
    many: bool = False

    def add(self, name: str, value: Any, text: str | None = None) -> None:
        self.items.append(Field(name, value, str(value) if text is None else text))

    def data(self, name: str, value: Any) -> None:
        """A field for JSON only (the text view says it in a title already)."""
        self.items.append(Field(name, value, None))

    def child(self, key: str, title: str, *, many: bool = False) -> "Node":
        node = Node(key, title, many=many)
        self.items.append(node)
        return node

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in self.items:
            if isinstance(item, Field):
                out[item.name] = item.value
            elif item.many:
                out.setdefault(item.key, []).append(item.to_json())
            else:
                out[item.key] = item.to_json()
        return out

    def text_lines(self, indent: str) -> list[str]:
        return [f"{indent}{self.title}"] + self.body_lines(indent + "  ")

    def body_lines(self, indent: str) -> list[str]:
        width = max(_NAME_WIDTH - len(indent), 1)
        lines: list[str] = []
        for item in self.items:
            if isinstance(item, Node):
                lines += item.text_lines(indent)
            elif item.text is not None:
                lines.append(f"{indent}{item.name:<{width}} {item.text}")
        return lines


# --- inputs -------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PayloadContext:
    """What the decoder knows about a message beyond its bytes.

    :ivar profile: the BCAST profile of the ECMG channel's Super_CAS_id / the client_id; ``None``
        when unknown; ``False`` when the id is known and is not a BCAST one (a classic DVB ECMG).
    :ivar data_type: the EMMG<=>MUX stream's data_type from its stream_setup, when seen.
    :ivar time: when the message was captured (checks key validity when the payload has no time).
    """

    profile: Profile | None | bool = None
    data_type: int | None = None
    time: datetime | None = None


@attrs.frozen(kw_only=True)
class Secrets:
    """Keys for verifying payloads: a key file's store (STKMs), device keys (LTKMs), and whether
    key bytes may be printed."""

    keys: KeyStore | None = None
    keys_label: str = "the key file"
    device_key: Callable[[bytes], bytes | None] | None = None
    devices_label: str = "the subscriber file"
    show_keys: bool = False


@attrs.define
class PayloadView:
    """One payload of one message, read field by field.

    :ivar chosen_by: ``"context"`` (profile / data_type known from earlier messages) or
        ``"content"`` (format guessed from the first bytes).
    :ivar errors: what is wrong with the payload (malformed, MAC mismatch); the decoder counts
        them as errors.
    :ivar notes: what could not be done and is not an error (no key for it, encrypted CWs).
    """

    param: str
    index: int | None
    format: Format
    chosen_by: str
    structure: Node | None = None
    keyed: Node | None = None
    errors: list[str] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    @property
    def label(self) -> str:
        return self.param if self.index is None else f"{self.param}[{self.index}]"

    def to_json(self) -> dict[str, Any]:
        layout, provisional = _LAYOUT[self.format]
        out: dict[str, Any] = {
            "param": self.param,
            "index": self.index or 0,
            "format": self.format.value,
            "layout": layout,
            "provisional": provisional,
            "chosen_by": self.chosen_by,
        }
        if self.structure is not None:
            out["fields"] = self.structure.to_json()
        if self.keyed is not None:
            out[self.keyed.key] = self.keyed.to_json()
        if self.errors:
            out["errors"] = list(self.errors)
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    def text_lines(self, indent: str = "  ") -> list[str]:
        how = "" if self.chosen_by == "context" else "  [format guessed from the content]"
        lines = [f"{indent}{self.label}: {_TITLE[self.format]}{how}"]
        inner = indent + "  "
        if self.structure is not None:
            lines += self.structure.body_lines(inner)
        if self.keyed is not None:
            lines += self.keyed.text_lines(inner)
        lines += [f"{inner}ERROR: {e}" for e in self.errors]
        lines += [f"{inner}note: {n}" for n in self.notes]
        return lines


# --- format choice --------------------------------------------------------------------------------


def sniff(data: bytes) -> Format | None:
    """Guess an STKM or LTKM format from its first bytes (see the module docstring), or ``None``."""
    if len(data) < 2:
        return None
    if data[0] == stkm_mikey.MIKEY_VERSION and data[1] == 0:
        return Format.MIKEY_STKM
    if data[0] == ltkm_drm.LTKM_LAYOUT_VERSION_BYTE and data[1] == ltkm_drm.KIND_DEVICE:
        return Format.DRM_LTKM
    if data[0] >> 4 == stkm_drm.STKM_PROTOCOL_VERSION:
        return Format.DRM_STKM
    return None


def _stkm_format(profile: Profile | None | bool) -> Format | None:
    if profile is Profile.DRM:
        return Format.DRM_STKM
    if profile is Profile.SMARTCARD:
        return Format.MIKEY_STKM
    return None


def payload_views(message: Message, context: PayloadContext, secrets: Secrets = Secrets()) -> list[PayloadView]:
    """The payload views of *message* (empty when it carries none this module knows)."""
    if context.profile is False:
        return []  # a classic DVB ECMG or EMMG: sections, TS packets, test ECMs are not ours to read
    found: list[tuple[str, int | None, bytes, Format | None, str, int | None]] = []
    if isinstance(message, ecmg_scs.ECMResponse):
        data = message.ECM_datagram
        chosen = _stkm_format(context.profile)
        found.append(("ECM_datagram", None, data, chosen or sniff(data), "content" if chosen is None else "context",
                      message.CP_number))
    elif isinstance(message, emmg_mux.DataProvision):
        by_context = None
        if context.data_type == DataType.EMM and context.profile is Profile.DRM:
            by_context = Format.DRM_LTKM  # LTKMs on EMMG<=>MUX: DRM Profile only
        elif context.data_type == DataType.PRIVATE_DATA:
            by_context = _stkm_format(context.profile)  # the SCS -> MUX STKM link
        for index, data in enumerate(message.datagram):
            chosen = by_context or sniff(data)
            found.append(("datagram", index, data, chosen, "context" if by_context else "content", None))
    elif isinstance(message, ecmg_scs.CWProvision):
        views = []
        for index, combination in enumerate(message.CP_CW_combination):
            view = _cw_view(index, combination.CP_number, combination.CW, context, secrets, message.CW_encryption)
            if view is not None:
                views.append(view)
        return views
    views = []
    for param, index, data, chosen, how, cp in found:
        if chosen is None:
            continue
        view = PayloadView(param, index, chosen, how)
        if chosen is Format.DRM_STKM:
            _drm_stkm(view, data, context, secrets, cp)
        elif chosen is Format.MIKEY_STKM:
            _mikey_stkm(view, data, context, secrets, cp)
        elif chosen is Format.DRM_LTKM:
            _ltkm(view, data, secrets)
        views.append(view)
    return views


# --- STKMs -----------------------------------------------------------------------------------


def _drm_stkm(view: PayloadView, data: bytes, context: PayloadContext, secrets: Secrets, cp: int | None) -> None:
    fields = _attempt(view, stkm_drm.describe_stkm, data, f"not a {stkm_drm.LAYOUT_VERSION} DRM Profile STKM")
    if fields is None:
        return
    node = view.structure = Node("fields", "")
    header = dict(fields.header)
    for name, value in fields.header:
        text = f"{value} ({fields.protection.name})" if name == "traffic_protection_protocol" else str(value)
        node.add(name, value, text)
    blocks = [("current", fields.current)] + ([("next", fields.next)] if fields.next else [])
    for which, block in blocks:
        child = node.child("key_blocks", f"{which} key block", many=True)
        child.data("which", which)
        _identifier_field(child, fields.protection, block.traffic_key_id)
        child.add(
            "encrypted_traffic_key_material",
            block.encrypted_traffic_key_material.hex(),
            f"{len(block.encrypted_traffic_key_material)} bytes (encrypted)",
        )
    if fields.timestamp is not None:
        node.add("timestamp", _iso(fields.timestamp))
    if fields.encrypted_PEK is not None:
        node.add("encrypted_PEK", fields.encrypted_PEK.hex(), f"{len(fields.encrypted_PEK)} bytes (PEK under the SEK)")
    if header["access_criteria_flag"]:
        _access_criteria(node, fields.access_criteria)
    for name, block in (("programme", fields.programme), ("service", fields.service)):
        if block is not None:
            child = node.child(f"{name}_MAC_block", f"{name} MAC block")
            child.add(f"{name}_CID_extension", block.cid_extension, f"{block.cid_extension:#010x}")
            child.add(f"{name}_MAC", block.mac.hex(), f"{block.mac.hex()} (HMAC-SHA-1-96 over bytes 0..{block.mac_offset - 1})")
    parsed = _decrypt(view, stkm_drm.parse_stkm, data, secrets)
    if parsed is None:
        return
    keyed = view.keyed = Node("decrypted", f"decrypted and verified with {secrets.keys_label}")
    when, basis = (fields.timestamp, "STKM timestamp") if fields.timestamp else (context.time, "capture time")
    for name, block, role in (("programme", fields.programme, KeyRole.PROGRAMME), ("service", fields.service, KeyRole.SERVICE)):
        if block is None:
            continue
        key = secrets.keys.find(KeyRef(block.cid_extension, role))
        if key is not None:
            _key_node(keyed, key, when, basis)
    keyed.add("verified_MACs", list(parsed.verified_macs), ", ".join(parsed.verified_macs))
    _tek_nodes(keyed, parsed.material, parsed.next_material, cp, secrets.show_keys)


def _mikey_stkm(view: PayloadView, data: bytes, context: PayloadContext, secrets: Secrets, cp: int | None) -> None:
    fields = _attempt(view, stkm_mikey.describe_stkm, data, "not a Smartcard Profile (MIKEY) STKM")
    if fields is None:
        return
    node = view.structure = Node("fields", "")
    hdr = node.child("HDR", "HDR")
    for name, value in fields.hdr:
        hdr.add(name, value, _mikey_value(name, value))
    for payload in fields.payloads:
        values = dict(payload.fields)
        if payload.kind == "EXT":
            title = f"EXT {_enum_name(stkm_mikey.ExtType, values['ext_type'])} (type {values['ext_type']})"
        else:
            title = payload.kind
        child = node.child("payloads", f"{title} at byte {payload.offset}", many=True)
        child.data("payload", payload.kind)
        child.data("offset", payload.offset)
        for name, value in payload.fields:
            child.add(name, value.hex() if isinstance(value, bytes) else value, _mikey_value(name, value))
    if fields.access_criteria:
        _access_criteria(node, fields.access_criteria)
    parsed = _decrypt(view, stkm_mikey.parse_stkm, data, secrets)
    if parsed is None:
        return
    keyed = view.keyed = Node("decrypted", f"decrypted and verified with {secrets.keys_label}")
    key = secrets.keys.find(KeyRef(parsed.key_id, key_domain_id=parsed.key_domain_id or None))
    if key is not None:
        _key_node(keyed, key, context.time, "capture time")
    keyed.add("KEMAC_MAC", "verified", f"verified (HMAC-SHA-1-160, keys derived with the MIKEY-1 PRF, CSB ID {parsed.csb_id:#010x})")
    keyed.add("encryption", parsed.encryption.name)
    _tek_nodes(keyed, parsed.material, parsed.next_material, cp, secrets.show_keys)


def _attempt(view: PayloadView, describe: Callable[[bytes], Any], data: bytes, what: str) -> Any:
    """``describe(data)``, or ``None`` with the reason recorded as the view's error."""
    try:
        return describe(data)
    except BcastError as exc:
        view.errors.append(f"{what}: {exc}")
        return None


def _decrypt(view: PayloadView, parse: Callable[[bytes, KeyStore], Any], data: bytes, secrets: Secrets) -> Any:
    """``parse(data, keys)`` with the key file, or ``None``: no key file, no key for this STKM
    (a note), or an STKM that does not verify (an error)."""
    if secrets.keys is None:
        return None
    try:
        return parse(data, secrets.keys)
    except NoKeyError as exc:
        view.notes.append(f"not decrypted: {exc} in {secrets.keys_label}")
    except BcastError as exc:
        view.errors.append(f"does not verify with {secrets.keys_label}: {exc}")
    return None


def _mikey_value(name: str, value: Any) -> str:
    enums = {"ext_type": stkm_mikey.ExtType, "ts_type": stkm_mikey.TsType, "encr_alg": stkm_mikey.EncrAlg,
             "mac_alg": stkm_mikey.MacAlg, "next_payload": stkm_mikey.PayloadType,
             "subtype": stkm_mikey.BcastSubtype}
    if isinstance(value, bytes):
        if name == "SERVICE_KEY_ID" and len(value) == 4:
            return f"{int.from_bytes(value, 'big'):#010x} (SEK/PEK ID)"
        return value.hex()
    if name in enums:
        return f"{value} ({_enum_name(enums[name], value)})"
    if name == "traffic_protection_protocol":
        return f"{value} ({_enum_name(TrafficProtection, value)})"
    if name == "csb_id":
        return f"{value:#010x}"
    if name == "encr_data_length":
        return f"{value} bytes (encrypted Key data sub-payloads)"
    return str(value)


def _enum_name(enum_type: type[enum.IntEnum], value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return "unknown"


def _access_criteria(node: Node, descriptors: tuple[stkm_drm.AccessCriteriaDescriptor, ...]) -> None:
    for descriptor in descriptors:
        child = node.child("access_criteria", "access criteria descriptor", many=True)
        child.add("tag", descriptor.tag)
        child.add("data", descriptor.data.hex(), f"{descriptor.data.hex()} ({len(descriptor.data)} bytes)")


def _identifier_field(node: Node, protection: TrafficProtection, identifier: bytes) -> None:
    kind = _IDENTIFIER_KIND[protection]
    node.data("traffic_key_id_kind", kind)
    if protection is TrafficProtection.IPSEC:
        spi = int.from_bytes(identifier, "big")
        node.add("traffic_key_id", identifier.hex(), f"IPsec SPI {spi:#010x} ({spi})")
    elif identifier:
        node.add("traffic_key_id", identifier.hex(), f"{protection.name} {kind} {identifier.hex()} ({len(identifier)} bytes)")
    else:
        node.add("traffic_key_id", "", f"{protection.name} {kind}: none (empty)")


def _key_node(parent: Node, key: ServiceKey, when: datetime | None, basis: str) -> None:
    child = parent.child("keys", f"{key.role.value} key {key.name or key.label}", many=True)
    child.data("name", key.name)
    child.add("role", key.role.value)
    child.add("key_id", key.key_id, f"{key.key_id:#010x}")
    if key.key_domain_id:
        child.add("key_domain_id", key.key_domain_id.hex())
    child.add("not_before", _iso(key.not_before), _iso(key.not_before) or "open")
    child.add("not_after", _iso(key.not_after), _iso(key.not_after) or "open")
    if when is None:
        child.add("valid_at", None, "(no time to check against: hex input and no STKM timestamp)")
    else:
        valid = key.is_valid_at(when)
        child.add("valid_at", {"time": _iso(when), "basis": basis, "valid": valid},
                  f"{'yes' if valid else 'NO'}: {basis} {_iso(when)}")


def _tek_nodes(
    parent: Node, material: TrafficKeyMaterial, next_material: TrafficKeyMaterial | None, cp: int | None, show: bool
) -> None:
    for which, tek, cp_of in (("current", material, cp), ("next", next_material, None if cp is None else (cp + 1) & 0xFFFF)):
        if tek is None:
            continue
        title = f"TEK of {'this' if which == 'current' else 'the next'} crypto-period" + ("" if cp_of is None else f" (CP {cp_of})")
        _material_node(parent.child("teks", title, many=True), tek, show, which=which, cp=cp_of)


def _material_node(node: Node, tek: TrafficKeyMaterial, show: bool, **extra: Any) -> None:
    for name, value in extra.items():
        if value is not None:
            node.data(name, value)
    protection = type(tek).PROTECTION
    node.add("protection", protection.name)
    _identifier_field(node, protection, tek.identifier)
    if isinstance(tek, IPsecMaterial):
        secret = [("encryption_key", tek.encryption_key), ("authentication_key", tek.authentication_key)]
        node.add("encryption_algorithm", tek.encryption_algorithm.name)
        node.add("authentication_algorithm", tek.authentication_algorithm.name)
    elif isinstance(tek, SRTPMaterial):
        secret = [("master_key", tek.master_key), ("master_salt", tek.master_salt)]
    elif isinstance(tek, ISMACrypMaterial):
        secret = [("key", tek.key), ("salt", tek.salt)]
    else:  # pragma: no cover - the three materials are all traffic.py defines
        secret = []
    for name, value in secret:
        if value:
            _secret_field(node, name, value, show)


def _secret_field(node: Node, name: str, value: bytes, show: bool) -> None:
    """Key bytes: hex with ``--show-keys``; otherwise only their length (JSON: ``null`` + ``<name>_length``)."""
    if show:
        node.add(name, value.hex())
    else:
        node.add(name, None, f"{len(value)} bytes (hidden; --show-keys prints it)")
        node.data(f"{name}_length", len(value))


# --- LTKMs ------------------------------------------------------------------------------------


def _ltkm(view: PayloadView, data: bytes, secrets: Secrets) -> None:
    fields = _attempt(view, ltkm_drm.describe_ltkm, data, f"not a {ltkm_drm.LAYOUT_VERSION} LTKM")
    if fields is None:
        return
    node = view.structure = Node("fields", "")
    node.add("layout_version", fields.layout_version_byte)
    kind = "device-addressed" if fields.message_kind == ltkm_drm.KIND_DEVICE else "reserved"
    node.add("message_kind", fields.message_kind, f"{fields.message_kind:#04x} ({kind})")
    node.add("device_id", fields.device_id.hex(), _device_text(fields.device_id))
    node.add("issued_at", _iso(fields.issued_at))
    node.add("sequence", fields.sequence)
    for entry in fields.entries:
        role = entry.role.value if isinstance(entry.role, KeyRole) else entry.role
        child = node.child("key_entries", f"key entry: {role} key {entry.key_id:#010x}", many=True)
        child.add("role", role, f"{role} ({'SEK + SAK' if role == 'service' else 'PEK + PAK' if role == 'programme' else 'undefined'})")
        child.add("key_id", entry.key_id, f"{entry.key_id:#010x}")
        child.add("not_before", _iso(entry.not_before), _iso(entry.not_before) or "open")
        child.add("not_after", _iso(entry.not_after), _iso(entry.not_after) or "open")
        child.add("wrapped_keys", len(entry.wrapped_keys), f"{len(entry.wrapped_keys)} bytes (AES key wrap)")
    node.add("mac", fields.mac.hex(), f"{fields.mac.hex()} (HMAC-SHA-256/128)")
    if secrets.device_key is None:
        return
    if secrets.device_key(fields.device_id) is None:
        view.notes.append(f"not verified: no device {fields.device_id.hex()} in {secrets.devices_label}")
        return
    parsed = _attempt(view, lambda raw: ltkm_drm.parse_ltkm(raw, secrets.device_key),  # type: ignore[arg-type]
                      data, f"does not verify with {secrets.devices_label}")
    if parsed is None:
        return
    keyed = view.keyed = Node("verified", f"MAC verified and keys unwrapped with {secrets.devices_label}")
    for key in parsed.keys:
        child = keyed.child("keys", f"delivered {key.role.value} key {key.key_id:#010x}", many=True)
        child.add("role", key.role.value)
        child.add("key_id", key.key_id, f"{key.key_id:#010x}")
        child.add("not_before", _iso(key.not_before), _iso(key.not_before) or "open")
        child.add("not_after", _iso(key.not_after), _iso(key.not_after) or "open")
        for name, value in (("key", key.key), ("authentication_key", key.authentication_key or b"")):
            _secret_field(child, name, value, secrets.show_keys)


def _device_text(device_id: bytes) -> str:
    printable = device_id.isascii() and all(32 <= b < 127 for b in device_id)
    return f"{device_id.hex()} ({device_id.decode('ascii')!r})" if printable else device_id.hex()


# --- CWs (TEK material) ----------------------------------------------------------------------


def _cw_view(
    index: int, cp: int, cw: bytes, context: PayloadContext, secrets: Secrets, cw_encryption: bytes | None
) -> PayloadView | None:
    known = context.profile in (Profile.DRM, Profile.SMARTCARD)
    if not known and not (len(cw) > 2 and cw[0] == traffic.CW_LAYOUT_VERSION and cw[1] in tuple(TrafficProtection)):
        return None
    view = PayloadView("CP_CW_combination", index, Format.TEK_CW, "context" if known else "content")
    if cw_encryption is not None:
        view.notes.append("CWs are encrypted (CW_encryption present): not decoded")
        return view
    try:
        material = traffic.decode_cw(None, cw)
    except BcastError as exc:
        if not known:
            return None  # a classic DVB CW that happens to start like the layout
        view.errors.append(f"not in the CW layout: {exc}")
        return view
    node = view.structure = Node("fields", "")
    node.add("CP_number", cp)
    _material_node(node, material, secrets.show_keys)
    return view


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
