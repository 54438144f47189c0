"""Key file (``etc/keys.example.toml``) -> :class:`~bcast_sp4.bcast.keys.KeyStore`. Pure.

The ECMG's SEK/PEK per STKM stream (bcast-keys.md §1.2, §1.3; SP-4 CR §14.1.1.3.1: ``super_CAS_id``
+ ``ECM_id`` name one STKM stream). The format is project design::

    format = 1

    [keys.<name>]                 # one table per key; <name> appears in error messages
    role = "service"              # or "programme" (SEK vs PEK); default "service"
    key_id = 0x00000001           # uint32: DRM CID extension / Smartcard SEK-PEK (MSK) ID
    key = "<32 hex digits>"       # the SEK/PEK, 16 bytes
    authentication_key = "<hex>"  # SAK/PAK, 16-64 bytes; required for DRM streams
    key_domain_id = "<6 hex>"     # 3 bytes (MCC||MNC); required for Smartcard streams
    not_before = 2024-01-01T00:00:00Z   # optional; offset datetime or int POSIX seconds
    not_after  = 2036-01-01T00:00:00Z   # optional, exclusive

    [[streams]]                   # one per STKM stream
    super_cas_id = 0x00010001     # uint32; high 16 bits 0x0001 (DRM) or 0x0002 (Smartcard)
    ecm_id = 1                    # uint16 = stkmstream
    keys = ["<name>", ...]        # keys usable on this stream

Key hygiene (issue #13): a key file that group or others may read is refused
(:func:`check_private`) wherever a role loads one, unless the role's configuration allows it
(``allow_readable_key_file`` in the ECMG's ``[ecmg]``; ``allow_readable`` in the EMMG's
``[stream.subscribers]``): the example and lab files, checked out world-readable by git, carry
public test keys and set that option.

The ``[keys.<name>]`` tables are shared with the subscriber file (:mod:`.subscribers`). Unknown
tables or keys are errors (a typo must not silently drop a key); every error is a
:class:`~._reader.ConfigError` naming the file, the key path and the reason; key bytes never appear.
"""

from __future__ import annotations

import os
import stat
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

from ..bcast.keys import AUTH_KEY_SIZES, KDI_SIZE, KEY_SIZE, KeyRole, KeyStore, KmsProfile, ServiceKey
from ._reader import Reader, load_toml

KEY_FILE_FORMAT = 1
_ROLES = {r.value: r for r in KeyRole}


def check_private(reader: Reader, key: str, path: Path, allow_readable: bool, setting: str) -> None:
    """Refuse *path* (named by *key* of *reader*'s table) when group or others may read it.

    Group read is accepted on a file owned by root when this process is not root (the file's
    group is then the service's, administered by root).

    :param allow_readable: the role's setting *setting* allows such a file (public test keys).
    :raises ConfigError: one line naming the file, its mode and both ways out.
    """
    if allow_readable:
        return
    try:
        info = os.stat(path)
    except OSError as exc:
        raise reader.fail(key, f"{path}: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    # As PostgreSQL does for its key: group read is fine on a root-owned file read by another
    # user (``install -m 0640 -o root -g bcast-sp4``): only root can change who is in the group.
    group_ok = info.st_uid == 0 and os.geteuid() != 0
    if mode & stat.S_IROTH or (mode & stat.S_IRGRP and not group_ok):
        named = f"{path} holds keys and is" if key else "holds keys and is"
        raise reader.fail(
            key, f"{named} readable by group or others (mode {mode:04o}): "
                 f"chmod 600 it, or set {setting} = true (public test keys only)")


def load_keyfile(path: str | PathLike[str], *, require_private: bool = False) -> KeyStore:
    """Read a key file (format in the module docstring).

    :param require_private: refuse a file group or others may read (see :func:`check_private`).
    :returns: a filled :class:`KeyStore`.
    :raises ConfigError: naming file, key path and reason, on any unreadable or invalid content.
    """
    if require_private:
        check_private(Reader(Path(path), {}), "", Path(path), False, "allow_readable_key_file")
    path, doc = load_toml(path)
    return keystore_from_document(path, doc)


def keystore_from_document(path: str | PathLike[str], doc: dict[str, Any]) -> KeyStore:
    """Build the :class:`KeyStore` of a parsed key file (see :func:`load_keyfile`)."""
    root = Reader(Path(path), doc)
    keys = key_tables(root, KEY_FILE_FORMAT)
    entries = root.list_of_tables("streams")
    root.no_unknown_keys()
    if not entries:
        raise root.fail("streams", "need at least one [[streams]] entry")
    store = KeyStore()
    seen: set[tuple[int, int]] = set()
    for entry in entries:
        super_cas_id = entry.integer("super_cas_id", low=0, high=0xFFFFFFFF)
        ecm_id = entry.integer("ecm_id", low=0, high=0xFFFF)
        names = entry.string_list("keys")
        entry.no_unknown_keys()
        try:
            profile = KmsProfile.from_super_cas_id(super_cas_id)
        except ValueError as exc:
            raise entry.fail("super_cas_id", str(exc)) from None
        if (super_cas_id, ecm_id) in seen:
            raise entry.fail("ecm_id", f"duplicate stream super_cas_id {super_cas_id:#010x} ecm_id {ecm_id}")
        seen.add((super_cas_id, ecm_id))
        for name in names:
            if name not in keys:
                raise entry.fail("keys", f"unknown key {name!r}")
            key, table = keys[name]
            where = f"{entry.prefix} (super_cas_id {super_cas_id:#010x})"
            if profile is KmsProfile.DRM and key.authentication_key is None:
                raise table.fail("authentication_key", f"missing: {where} is a DRM Profile stream, whose STKMs need the SAK/PAK")
            if profile is KmsProfile.SMARTCARD and not key.key_domain_id:
                raise table.fail("key_domain_id", f"missing: {where} is a Smartcard Profile stream")
            store.add(super_cas_id, ecm_id, key)
    return store


def key_tables(root: Reader, file_format: int) -> dict[str, tuple[ServiceKey, Reader]]:
    """Check ``format``, then parse the ``[keys.<name>]`` tables of a key or subscriber file.

    :returns: name -> (key, the reader of its table, for later errors about that key).
    """
    found = root.integer("format", low=0, high=0xFFFFFFFF)
    if found != file_format:
        raise root.fail("format", f"must be {file_format}, not {found}")
    return {name: (_service_key(name, table), table) for name, table in root.named_tables("keys")}


def validity_window(table: Reader) -> dict[str, datetime | None]:
    """``not_before`` / ``not_after`` of a key or device table (half-open; either may be absent)."""
    bounds = {"not_before": table.datetime_value("not_before"), "not_after": table.datetime_value("not_after")}
    if bounds["not_before"] is not None and bounds["not_after"] is not None and bounds["not_after"] <= bounds["not_before"]:
        raise table.fail("not_after", "must be later than not_before")
    return bounds


def _service_key(name: str, table: Reader) -> ServiceKey:
    fields = {
        "name": name,
        "role": table.choice("role", _ROLES, KeyRole.SERVICE.value),
        "key_id": table.integer("key_id", low=0, high=0xFFFFFFFF),
        "key": table.hex_bytes("key", (KEY_SIZE,)),
        "authentication_key": table.hex_bytes("authentication_key", AUTH_KEY_SIZES, None),
        "key_domain_id": table.hex_bytes("key_domain_id", (KDI_SIZE,), b"", secret=False),
        **validity_window(table),
    }
    table.no_unknown_keys()
    try:
        return ServiceKey(**fields)
    except ValueError as exc:
        raise table.fail_here(str(exc)) from None


__all__ = ["KEY_FILE_FORMAT", "key_tables", "keystore_from_document", "load_keyfile", "validity_window"]
