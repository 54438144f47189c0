"""BCAST error codes carried on SimulCrypt as ``0x8000 + n`` (SP-4 CR §14.1.1.3.2; bcast-keys.md §6).

Spec clause: the SP-4 change request (seed, §14.1.1.3.2 and §14.1.1.3.4) says BCAST error message
*n* is carried in the SimulCrypt ``error_status`` range 0x8000-0xFFFF as ``0x8000 + n``; ETSI
TS 103 197 reserves that range for ECMG/CA-system-specific use (bcast-keys.md §6.1).

Confidence: **medium-low** for 0-29 ([C] in bcast-keys.md §6.2: corroborated by one public
implementation, not by OMA text). No OMA table was read. One public implementation of the
BCAST-derived MBBMS profile declares the BCAST Services "global status codes" (repository
``Jakes-Fu/8910L_Z695C_WDL_Z59ZL``, ``CMMB/export/inc/mbbms_service.h`` enum
``MBBMS_SERVICE_RESULT_E`` and ``mbbms_sub.h`` enum ``MBBMS_MSK_SUBSCRIBER_RESULT_E``, each value
the spec value + 300). Its 0-12 agree with what the project had recalled; 13 differs: the source
says "Illegal Device" and puts "Invalid Request" at 22 (the project used to recall 13 = Invalid
Request). That these interaction-channel codes are what SP-4's "Appendix C" means is the most
likely reading, not a confirmed one. In that source 128-255 are operator/profile-private and the
field is 8 bits wide.

Code table (``n`` -> SimulCrypt ``error_status``; source [C] = bcast-keys.md §6.2)::

    n       0x8000+n  member                          meaning
    0       0x8000    SUCCESS                         Success
    1       0x8001    DEVICE_AUTHENTICATION_FAILED    Device Authentication Failed
    2       0x8002    USER_AUTHENTICATION_FAILED      User Authentication Failed
    3       0x8003    PURCHASE_ITEM_UNKNOWN           Purchase Item Unknown
    4       0x8004    DEVICE_AUTHORIZATION_FAILED     Device Authorization Failed
    5       0x8005    USER_AUTHORIZATION_FAILED       User Authorization Failed
    6       0x8006    DEVICE_NOT_REGISTERED           Device Not Registered
    7       0x8007    SERVER_ERROR                    Server Error
    8       0x8008    MALFORMED_MESSAGE_ERROR         Mal-formed Message Error
    9       0x8009    CHARGING_ERROR                  Charging Error
    10      0x800A    NO_SUBSCRIPTION                 No Subscription
    11      0x800B    OPERATION_NOT_PERMITTED         Operation Not Permitted
    12      0x800C    UNSUPPORTED_VERSION             Unsupported Version
    13      0x800D    ILLEGAL_DEVICE                  Illegal Device   (was INVALID_REQUEST here)
    14      0x800E    AREA_NOT_ALLOWED                Area Not Allowed
    15      0x800F    REQUESTED_SERVICE_UNAVAILABLE   Requested Service Unavailable
    16      0x8010    REQUEST_ALREADY_DONE            Request Already Done
    17      0x8011    ELEMENT_DOES_NOT_EXIST          Element Does Not Exist
    18      0x8012    UNDEFINED_ERROR                 Undefined Error
    19      0x8013    DELAYED                         Delayed
    20      0x8014    GENERATION_FAILED               Generation Failed (LTKM generation, probably)
    21      0x8015    INVALID_INFORMATION             Invalid Information
    22      0x8016    INVALID_REQUEST                 Invalid Request
    23      0x8017    WRONG_DESTINATION               Wrong Destination
    24      0x8018    WRONG_KEY_INFORMATION           Wrong Key Information
    25      0x8019    UNKNOWN_PROVIDER                Unknown Provider
    26      0x801A    UNKNOWN_BSM_ID                  Unknown BSM ID
    27      0x801B    ALREADY_IN_USE                  Already In Use
    28      0x801C    NO_MATCHING_FRAGMENT            No Matching Fragment
    29      0x801D    ALREADY_SUBSCRIBED              Already Subscribed
    128-255 0x8080-   (no member)                     operator/profile-private in the source
    0x7F01  0xFF01    NO_KEY_FOR_STREAM               project: no SEK/PEK configured for this
                                                      (super_CAS_id, ECM_id) = stkmstream
    0x7F02  0xFF02    KEY_NOT_VALID                   project: keys exist, none valid at the time
    0x7F03  0xFF03    UNSUPPORTED_TRAFFIC_PROTECTION  project: protocol code not IPsec/SRTP/ISMACryp
    0x7F04  0xFF04    INVALID_TRAFFIC_KEY_MATERIAL    project: CW bytes do not decode (traffic.py)

Design decision (the project codes): they say what the BCAST table has no word for (which key,
which TEK layout), so they sit at the top of the space, ``n = 0x7F00 + k``, far from any BCAST
value and still inside 0x8000-0xFFFF once offset. They exist only on SimulCrypt (an 8-bit BCAST
status field could not carry them). Everything the ``bcast`` layer raises uses a [C] code or a
project code; none uses 13 or 22.

The exceptions raised by the ``bcast`` layer live here too, each carrying its status as the class
attribute ``status`` (STYLE §2), so an ECMG answers ``simulcrypt_code(err.status)``. Messages never
contain key bytes.
"""

from __future__ import annotations

import enum
from typing import ClassVar

__all__ = [
    "SIMULCRYPT_BCAST_BASE",
    "BcastStatus",
    "simulcrypt_code",
    "bcast_status_from_simulcrypt",
    "describe_status",
    "PRIVATE_RANGE",
    "BcastError",
    "TrafficKeyError",
    "UnsupportedTrafficProtectionError",
    "NoKeyError",
    "KeyNotValidError",
    "STKMError",
]

#: First SimulCrypt ``error_status`` value of the ECMG/CA-specific range that carries BCAST codes.
SIMULCRYPT_BCAST_BASE = 0x8000
_MAX_N = 0xFFFF - SIMULCRYPT_BCAST_BASE


class BcastStatus(enum.IntEnum):
    """BCAST status codes ``n`` (see the module table; 0-29 are [C], 0x7F01+ are project codes)."""

    SUCCESS = 0
    DEVICE_AUTHENTICATION_FAILED = 1
    USER_AUTHENTICATION_FAILED = 2
    PURCHASE_ITEM_UNKNOWN = 3
    DEVICE_AUTHORIZATION_FAILED = 4
    USER_AUTHORIZATION_FAILED = 5
    DEVICE_NOT_REGISTERED = 6
    SERVER_ERROR = 7
    MALFORMED_MESSAGE_ERROR = 8
    CHARGING_ERROR = 9
    NO_SUBSCRIPTION = 10
    OPERATION_NOT_PERMITTED = 11
    UNSUPPORTED_VERSION = 12
    ILLEGAL_DEVICE = 13
    AREA_NOT_ALLOWED = 14
    REQUESTED_SERVICE_UNAVAILABLE = 15
    REQUEST_ALREADY_DONE = 16
    ELEMENT_DOES_NOT_EXIST = 17
    UNDEFINED_ERROR = 18
    DELAYED = 19
    GENERATION_FAILED = 20
    INVALID_INFORMATION = 21
    INVALID_REQUEST = 22
    WRONG_DESTINATION = 23
    WRONG_KEY_INFORMATION = 24
    UNKNOWN_PROVIDER = 25
    UNKNOWN_BSM_ID = 26
    ALREADY_IN_USE = 27
    NO_MATCHING_FRAGMENT = 28
    ALREADY_SUBSCRIBED = 29
    # Project-specific (n = 0x7F00 + k): see the module docstring.
    NO_KEY_FOR_STREAM = 0x7F01
    KEY_NOT_VALID = 0x7F02
    UNSUPPORTED_TRAFFIC_PROTECTION = 0x7F03
    INVALID_TRAFFIC_KEY_MATERIAL = 0x7F04

    @property
    def meaning(self) -> str:
        """The code's meaning in words (the source's wording for 0-29)."""
        return _MEANING[self]

    @property
    def source(self) -> str:
        """Where the code comes from: ``"C"`` (bcast-keys.md §6.2, corroborated) or ``"project"``."""
        return "project" if self >= _PROJECT_FIRST else "C"


_PROJECT_FIRST = 0x7F00
#: operator/profile-private codes in the corroborating source (8-bit field)
PRIVATE_RANGE = range(128, 256)
_MEANING = {
    BcastStatus.SUCCESS: "Success",
    BcastStatus.DEVICE_AUTHENTICATION_FAILED: "Device Authentication Failed",
    BcastStatus.USER_AUTHENTICATION_FAILED: "User Authentication Failed",
    BcastStatus.PURCHASE_ITEM_UNKNOWN: "Purchase Item Unknown",
    BcastStatus.DEVICE_AUTHORIZATION_FAILED: "Device Authorization Failed",
    BcastStatus.USER_AUTHORIZATION_FAILED: "User Authorization Failed",
    BcastStatus.DEVICE_NOT_REGISTERED: "Device Not Registered",
    BcastStatus.SERVER_ERROR: "Server Error",
    BcastStatus.MALFORMED_MESSAGE_ERROR: "Mal-formed Message Error",
    BcastStatus.CHARGING_ERROR: "Charging Error",
    BcastStatus.NO_SUBSCRIPTION: "No Subscription",
    BcastStatus.OPERATION_NOT_PERMITTED: "Operation Not Permitted",
    BcastStatus.UNSUPPORTED_VERSION: "Unsupported Version",
    BcastStatus.ILLEGAL_DEVICE: "Illegal Device",
    BcastStatus.AREA_NOT_ALLOWED: "Area Not Allowed",
    BcastStatus.REQUESTED_SERVICE_UNAVAILABLE: "Requested Service Unavailable",
    BcastStatus.REQUEST_ALREADY_DONE: "Request Already Done",
    BcastStatus.ELEMENT_DOES_NOT_EXIST: "Element Does Not Exist",
    BcastStatus.UNDEFINED_ERROR: "Undefined Error",
    BcastStatus.DELAYED: "Delayed",
    BcastStatus.GENERATION_FAILED: "Generation Failed",
    BcastStatus.INVALID_INFORMATION: "Invalid Information",
    BcastStatus.INVALID_REQUEST: "Invalid Request",
    BcastStatus.WRONG_DESTINATION: "Wrong Destination",
    BcastStatus.WRONG_KEY_INFORMATION: "Wrong Key Information",
    BcastStatus.UNKNOWN_PROVIDER: "Unknown Provider",
    BcastStatus.UNKNOWN_BSM_ID: "Unknown BSM ID",
    BcastStatus.ALREADY_IN_USE: "Already In Use",
    BcastStatus.NO_MATCHING_FRAGMENT: "No Matching Fragment",
    BcastStatus.ALREADY_SUBSCRIBED: "Already Subscribed",
    BcastStatus.NO_KEY_FOR_STREAM: "no SEK/PEK configured for this (Super_CAS_id, ECM_id)",
    BcastStatus.KEY_NOT_VALID: "keys configured, none valid at the time",
    BcastStatus.UNSUPPORTED_TRAFFIC_PROTECTION: "traffic protection not IPsec, SRTP or ISMACryp",
    BcastStatus.INVALID_TRAFFIC_KEY_MATERIAL: "TEK material (CW) or CW_encryption does not decode",
}


def describe_status(n: int) -> str:
    """``NAME (meaning) [source]`` for BCAST status *n*, or what is known about an unassigned one.

    :param n: a BCAST status code (``error_status - 0x8000`` on SimulCrypt).
    :returns: e.g. ``"ILLEGAL_DEVICE (Illegal Device) [C]"``,
        ``"NO_KEY_FOR_STREAM (no SEK/PEK ...) [project]"``, ``"operator/profile-private"``.
    """
    try:
        member = BcastStatus(n)
    except ValueError:
        return "operator/profile-private" if n in PRIVATE_RANGE else "unassigned"
    return f"{member.name} ({member.meaning}) [{member.source}]"


def simulcrypt_code(n: int) -> int:
    """Return the SimulCrypt ``error_status`` that carries BCAST error ``n``.

    :param n: a BCAST error code (a :class:`BcastStatus` or a plain int), 0 <= n <= 0x7FFF.
    :returns: ``0x8000 + n``.
    :raises ValueError: if ``n`` does not fit the 0x8000-0xFFFF range.
    """
    n = int(n)
    if not 0 <= n <= _MAX_N:
        raise ValueError(f"BCAST code {n} outside 0..{_MAX_N:#06x}")
    return SIMULCRYPT_BCAST_BASE + n


def bcast_status_from_simulcrypt(error_status: int) -> BcastStatus | int:
    """Invert :func:`simulcrypt_code`.

    :param error_status: a SimulCrypt ``error_status`` value in 0x8000-0xFFFF.
    :returns: the :class:`BcastStatus` member, or the bare int ``n`` when it is not one we know.
    :raises ValueError: if ``error_status`` is outside 0x8000-0xFFFF.
    """
    if not SIMULCRYPT_BCAST_BASE <= error_status <= 0xFFFF:
        raise ValueError(f"error_status {error_status:#06x} is not in the BCAST range 0x8000-0xFFFF")
    n = error_status - SIMULCRYPT_BCAST_BASE
    try:
        return BcastStatus(n)
    except ValueError:
        return n


class BcastError(Exception):
    """Base of every error raised by :mod:`bcast_sp4.bcast`; ``status`` is the BCAST code."""

    status: ClassVar[BcastStatus] = BcastStatus.SERVER_ERROR


class TrafficKeyError(BcastError, ValueError):
    """Traffic key material is malformed (bad CW layout, wrong length, bad value)."""

    status = BcastStatus.INVALID_TRAFFIC_KEY_MATERIAL


class STKMError(BcastError, ValueError):
    """An STKM cannot be built or parsed: truncation, bad MAC, unknown key, bad field."""

    status = BcastStatus.MALFORMED_MESSAGE_ERROR


class UnsupportedTrafficProtectionError(TrafficKeyError, STKMError):
    """The traffic protection protocol code is not one we implement (DCF, reserved values)."""

    status = BcastStatus.UNSUPPORTED_TRAFFIC_PROTECTION


class NoKeyError(BcastError, LookupError):
    """No service/programme key is configured for the requested stream or key id."""

    status = BcastStatus.NO_KEY_FOR_STREAM


class KeyNotValidError(BcastError, LookupError):
    """Keys exist for the stream, but none is inside its validity window at the given time."""

    status = BcastStatus.KEY_NOT_VALID
