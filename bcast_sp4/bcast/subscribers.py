"""Subscriber file: devices, their unique keys and entitlements -> DRM Profile LTKMs (PROV-LTKM-1).

Spec clause: SP-4 CR §14.1.1.3.4 (the LTKM generator feeds DRM Profile LTKMs to the MUX);
bcast-keys.md §1.2/§4.1 (an LTKM delivers SEK/PEK with SAK/PAK and validity to a device). The file
format is project design; the LTKM bytes are the PROVISIONAL layout of :mod:`.ltkm_drm`.

Format (TOML, ``format = 1``; ``etc/subscribers.example.toml`` is a worked example)::

    format = 1

    [keys.<name>]                 # exactly the key tables of the key file (keys.py): role, key_id,
    role = "service"              # key, authentication_key (required here: DRM Profile),
    key_id = 0x00000001           # not_before, not_after
    key = "<32 hex>"
    authentication_key = "<hex>"

    [[devices]]
    device_id = "<hex>"           # 1..64 bytes
    device_key = "<32 hex>"       # the device's 128-bit unique key (from registration)
    entitlements = ["<name>", ...]
    not_before = 2024-01-01T00:00:00Z   # optional subscription window; narrows every key's validity
    not_after  = 2026-01-01T00:00:00Z   # optional, exclusive

A device's LTKM carries each entitled key with validity = key validity ∩ subscription window; a
key whose intersection is empty is left out, and a device left with no key gets no LTKM (counted
in :attr:`Generation.skipped`). Errors are :class:`KeyFileError` naming file, entry and reason;
key bytes are never echoed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from os import PathLike
from typing import Any

import attrs

from .keys import ServiceKey, Timeish, _hex_field, key_tables, read_toml, validity_bounds
from .ltkm_drm import MAX_DEVICE_ID, build_ltkm
from .status import KeyFileError

__all__ = ["SUBSCRIBER_FILE_FORMAT", "Device", "Subscribers", "IssuedLTKM", "load_subscribers"]

SUBSCRIBER_FILE_FORMAT = 1
_DEVICE_FIELDS = {"device_id", "device_key", "entitlements", "not_before", "not_after"}


@attrs.frozen(kw_only=True)
class Device:
    """One receiving device and what it is entitled to."""

    device_id: bytes
    device_key: bytes = attrs.field(repr=False)
    entitlements: tuple[ServiceKey, ...] = attrs.field(repr=False)
    not_before: datetime | None = None
    not_after: datetime | None = None

    def grants(self) -> list[tuple[ServiceKey, datetime | None, datetime | None]]:
        """``(key, not_before, not_after)`` for each entitled key whose window is not empty."""
        out = []
        for key in self.entitlements:
            starts = [t for t in (key.not_before, self.not_before) if t is not None]
            ends = [t for t in (key.not_after, self.not_after) if t is not None]
            start = max(starts) if starts else None
            end = min(ends) if ends else None
            if start is not None and end is not None and end <= start:
                continue
            out.append((key, start, end))
        return out


@attrs.frozen(kw_only=True)
class IssuedLTKM:
    """One generated LTKM."""

    device_id: bytes
    sequence: int
    data: bytes = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Subscribers:
    """The parsed subscriber file."""

    devices: tuple[Device, ...]
    path: str = ""

    def ltkms(self, issued_at: Timeish, first_sequence: int) -> Iterator[IssuedLTKM]:
        """One LTKM per device with at least one valid entitlement, sequence numbers counting up.

        :param issued_at: the issue time written in every LTKM.
        :param first_sequence: sequence of the first LTKM (wraps at 2**32).
        :raises LTKMError: a device's LTKM cannot be built (see :meth:`ltkm_for` to skip it instead).
        """
        sequence = first_sequence
        for device in self.devices:
            issued = self.ltkm_for(device, issued_at, sequence)
            if issued is not None:
                sequence += 1
                yield issued

    def ltkm_for(self, device: Device, issued_at: Timeish, sequence: int) -> IssuedLTKM | None:
        """The LTKM of one device (``None`` when no entitlement is valid in its window).

        :raises LTKMError: it cannot be built (e.g. a time outside the 32-bit range).
        """
        grants = device.grants()
        if not grants:
            return None
        seq = sequence & 0xFFFFFFFF
        return IssuedLTKM(
            device_id=device.device_id,
            sequence=seq,
            data=build_ltkm(device.device_id, device.device_key, grants, issued_at=issued_at, sequence=seq),
        )

    def skipped(self) -> int:
        """How many devices get no LTKM (no entitlement valid in their window)."""
        return sum(1 for d in self.devices if not d.grants())

    def device_keys(self) -> dict[bytes, bytes]:
        """device_id -> device key (for a terminal simulator's ``parse_ltkm`` lookup)."""
        return {d.device_id: d.device_key for d in self.devices}


def load_subscribers(path: str | PathLike[str]) -> Subscribers:
    """Read a subscriber file (format in the module docstring).

    :raises KeyFileError: naming file, entry and reason.
    """
    return subscribers_from_document(path, read_toml(path))


def subscribers_from_document(path: str | PathLike[str], doc: dict[str, Any]) -> Subscribers:
    """Build :class:`Subscribers` from a parsed TOML document (see :func:`load_subscribers`)."""
    keys = key_tables(path, doc, {"format", "keys", "devices"}, SUBSCRIBER_FILE_FORMAT)
    for name, key in keys.items():
        if key.authentication_key is None:
            raise KeyFileError(path, f"key {name!r}", "DRM Profile LTKMs need an authentication_key (SAK/PAK)")
    devices_doc = doc.get("devices", [])
    if not isinstance(devices_doc, list) or not devices_doc:
        raise KeyFileError(path, None, "need at least one [[devices]] entry")
    devices = []
    seen: set[bytes] = set()
    for index, table in enumerate(devices_doc):
        where = f"devices[{index}]"
        if not isinstance(table, dict):
            raise KeyFileError(path, where, "must be a table")
        extra = sorted(set(table) - _DEVICE_FIELDS)
        if extra:
            raise KeyFileError(path, where, f"unknown fields: {', '.join(extra)}")
        device_id = _hex_field(path, where, table, "device_id", range(1, MAX_DEVICE_ID + 1))
        if device_id in seen:
            raise KeyFileError(path, where, f"duplicate device_id {device_id.hex()}")
        seen.add(device_id)
        device_key = _hex_field(path, where, table, "device_key", (16,))
        names = table.get("entitlements")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise KeyFileError(path, where, "'entitlements' must be a non-empty list of key names")
        if len(names) > 0xFF:
            raise KeyFileError(path, where, "at most 255 entitlements per device")
        missing = [n for n in names if n not in keys]
        if missing:
            raise KeyFileError(path, where, f"unknown key {missing[0]!r}")
        bounds = validity_bounds(path, where, table)
        if "not_before" in bounds and "not_after" in bounds and bounds["not_after"] <= bounds["not_before"]:
            raise KeyFileError(path, where, "not_after must be later than not_before")
        devices.append(
            Device(
                device_id=device_id,
                device_key=device_key,
                entitlements=tuple(keys[n] for n in names),
                **bounds,
            )
        )
    return Subscribers(devices=tuple(devices), path=str(path))
