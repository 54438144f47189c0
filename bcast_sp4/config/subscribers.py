"""Subscriber file (``etc/subscribers.example.toml``) -> :class:`~bcast_sp4.bcast.subscribers.Subscribers`. Pure.

The LTKM generator's devices, their unique keys and entitlements (SP-4 CR §14.1.1.3.4; the LTKM
bytes are the PROVISIONAL layout of :mod:`bcast_sp4.bcast.ltkm_drm`). The format is project design::

    format = 1

    [keys.<name>]                 # exactly the key tables of the key file (keyfile.py): role, key_id,
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

A subscriber file holds device keys: where a role loads one it must not be readable by group or
others unless allowed (``require_private``; see :mod:`.keyfile`).

Errors are :class:`~._reader.ConfigError` naming file, key path and reason; key bytes are never echoed.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

from ..bcast.ltkm_drm import DEVICE_KEY_SIZE, MAX_DEVICE_ID
from ..bcast.subscribers import Device, Subscribers
from ._reader import Reader, load_toml
from .keyfile import check_private, key_tables, validity_window

SUBSCRIBER_FILE_FORMAT = 1
#: entitlements per device: the LTKM counts its keys in one byte
MAX_ENTITLEMENTS = 0xFF


def load_subscribers(path: str | PathLike[str], *, require_private: bool = False) -> Subscribers:
    """Read a subscriber file (format in the module docstring).

    :param require_private: refuse a file group or others may read (device keys; see
        :func:`~.keyfile.check_private`).
    :raises ConfigError: naming file, key path and reason.
    """
    if require_private:
        check_private(Reader(Path(path), {}), "", Path(path), False, "allow_readable")
    path, doc = load_toml(path)
    return subscribers_from_document(path, doc)


def subscribers_from_document(path: str | PathLike[str], doc: dict[str, Any]) -> Subscribers:
    """Build :class:`Subscribers` from a parsed TOML document (see :func:`load_subscribers`)."""
    root = Reader(Path(path), doc)
    keys = key_tables(root, SUBSCRIBER_FILE_FORMAT)
    for key, table in keys.values():
        if key.authentication_key is None:
            raise table.fail("authentication_key", "missing: DRM Profile LTKMs carry the SAK/PAK")
    entries = root.list_of_tables("devices")
    root.no_unknown_keys()
    if not entries:
        raise root.fail("devices", "need at least one [[devices]] entry")
    devices = []
    seen: set[bytes] = set()
    for entry in entries:
        device_id = entry.hex_bytes("device_id", range(1, MAX_DEVICE_ID + 1), secret=False)
        if device_id in seen:
            raise entry.fail("device_id", f"duplicate device_id {device_id.hex()}")
        seen.add(device_id)
        device_key = entry.hex_bytes("device_key", (DEVICE_KEY_SIZE,))
        names = entry.string_list("entitlements")
        if len(names) > MAX_ENTITLEMENTS:
            raise entry.fail("entitlements", f"at most {MAX_ENTITLEMENTS} entitlements per device, not {len(names)}")
        missing = [n for n in names if n not in keys]
        if missing:
            raise entry.fail("entitlements", f"unknown key {missing[0]!r}")
        bounds = validity_window(entry)
        entry.no_unknown_keys()
        devices.append(Device(device_id=device_id, device_key=device_key,
                              entitlements=tuple(keys[n][0] for n in names), **bounds))
    return Subscribers(devices=tuple(devices), path=str(path))


__all__ = ["SUBSCRIBER_FILE_FORMAT", "load_subscribers", "subscribers_from_document"]
