"""OMA BCAST SP-4 adaptations of SimulCrypt (seed §14.1.1.3), as named helpers.

* section_TSpkt_flag 0x02: ECM_datagram / datagram carry binary STKMs / LTKMs
  (:data:`SECTION_TSPKT_FLAG_BCAST`); all other values are DVB reserved for SP-4.
* Super_CAS_id (ECMG<=>SCS) and client_id (EMMG<=>MUX): the first two bytes name the profile,
  0x0001 DRM Profile, 0x0002 Smartcard Profile; the last two are user defined (service provider
  or BSM). LTKMs on EMMG<=>MUX exist for the DRM Profile only (Smartcard LTKMs go unicast).
* BCAST error *n* travels in error_status as ``0x8000 + n``.
* data_type 0x00 (EMM) carries LTKMs.
"""

from __future__ import annotations

import enum

from .errors import BCAST_ERROR_BASE
from .params import DataType, SectionTSpktFlag

SECTION_TSPKT_FLAG_BCAST = SectionTSpktFlag.BCAST
DATA_TYPE_LTKM = DataType.EMM


class Profile(enum.IntEnum):
    """The BCAST key-management profile named by the top 16 bits of Super_CAS_id / client_id."""

    DRM = 0x0001
    SMARTCARD = 0x0002


def profile_of(identifier: int) -> Profile | None:
    """The profile a Super_CAS_id or client_id names, or ``None`` (a non-BCAST, classic DVB id)."""
    try:
        return Profile(identifier >> 16)
    except ValueError:
        return None


def user_part(identifier: int) -> int:
    """The user-defined low 16 bits of a Super_CAS_id or client_id (service provider / BSM)."""
    return identifier & 0xFFFF


def make_id(profile: Profile, user: int) -> int:
    """Build a Super_CAS_id / client_id from a profile and the user-defined 16 bits."""
    if not 0 <= user <= 0xFFFF:
        raise ValueError(f"user part {user} is not a 16-bit value")
    return (int(profile) << 16) | user


def bcast_error(n: int) -> int:
    """error_status value carrying BCAST error *n* (0x8000 + n)."""
    if not 0 <= n <= 0x7FFF:
        raise ValueError(f"BCAST error number {n} outside 0..32767")
    return BCAST_ERROR_BASE + n


def bcast_error_number(error_status: int) -> int | None:
    """The BCAST error number an error_status carries, or ``None`` for a SimulCrypt code."""
    return error_status - BCAST_ERROR_BASE if error_status >= BCAST_ERROR_BASE else None
