"""How log fields read (issue #12): ids in hex, POSIX times as ISO 8601 UTC, bytes never shown.

Pure (no Twisted): used by the roles' executor when it logs a machine's event, and by the
operator log observer (:mod:`bcast_sp4.ops.logging`).
"""

from __future__ import annotations

import datetime
import errno as errno_module
import os
from typing import Any

#: field names rendered as 32-bit hex ids / 16-bit hex ids
HEX32 = frozenset({"super_cas_id", "super_CAS_id", "client_id", "Super_CAS_id"})
HEX16 = frozenset({"ecm_id", "ECM_id", "data_id", "error_status", "error_code", "status_code"})
#: field names holding a POSIX time
TIMES = frozenset({"at", "time", "first_switch_at", "switched_at", "on_air_from", "deadline", "since", "started",
                   "last_emit", "next_emit", "issued_at"})


def iso_utc(seconds: float) -> str:
    """``2026-12-03T03:04:39.120Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def socket_reason(error: BaseException) -> str:
    """``address already in use``: the OS's wording of *error*'s errno, lower case."""
    code = getattr(error, "errno", None)
    if isinstance(code, int) and code in errno_module.errorcode:
        return os.strerror(code).lower()
    return str(error) or type(error).__name__


def readable(name: str, value: Any, keys: bool = False) -> Any:
    """*value* of field *name* as an operator reads it (see the module docstring); JSON-safe."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex() if keys else f"<{len(value)} bytes>"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        if name in HEX32:
            return f"{value:#010x}"
        if name in HEX16:
            return f"{value:#06x}"
        return value
    if isinstance(value, float):
        if (name in TIMES or name.endswith("_at")) and value > 1e8:
            return iso_utc(value)
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [readable(name, v, keys) for v in value]
    if isinstance(value, dict):
        return {str(k): readable(str(k), v, keys) for k, v in value.items()}
    if hasattr(value, "value") and hasattr(value, "name") and isinstance(getattr(value, "name"), str):
        return value.name if not isinstance(value.value, (str, int)) else value.value  # enum members
    return str(value)


__all__ = ["HEX16", "HEX32", "TIMES", "iso_utc", "readable", "socket_reason"]
