"""BCAST error codes carried on SimulCrypt as ``0x8000 + n`` (SP-4 CR §14.1.1.3.2; bcast-keys.md §6).

Spec clause: the SP-4 change request (seed, §14.1.1.3.2 and §14.1.1.3.4) says BCAST error message
*n* is carried in the SimulCrypt ``error_status`` range 0x8000-0xFFFF as ``0x8000 + n``; ETSI
TS 103 197 reserves that range for ECMG/CA-system-specific use (bcast-keys.md §6.1).

Confidence: **low**. No BCAST error table could be read (bcast-keys.md §6.2, §12.7). The values
0-13 below are the "global status codes" of OMA-TS-BCAST_Services-V1_0 as *recalled* [R]; the
referenced "Appendix C" of the SvcCntProtection spec was never seen. Check against the approved
Services spec before relying on any of them.

Code table (``n`` -> SimulCrypt ``error_status``)::

    n       0x8000+n  member                          source
    0       0x8000    SUCCESS                         [R] BCAST global status code
    1       0x8001    DEVICE_AUTHENTICATION_FAILED    [R]
    2       0x8002    USER_AUTHENTICATION_FAILED      [R]
    3       0x8003    PURCHASE_ITEM_UNKNOWN           [R]
    4       0x8004    DEVICE_AUTHORIZATION_FAILED     [R]
    5       0x8005    USER_AUTHORIZATION_FAILED       [R]
    6       0x8006    DEVICE_NOT_REGISTERED           [R]
    7       0x8007    SERVER_ERROR                    [R]
    8       0x8008    MALFORMED_MESSAGE_ERROR         [R]
    9       0x8009    CHARGING_ERROR                  [R]
    10      0x800A    NO_SUBSCRIPTION                 [R]
    11      0x800B    OPERATION_NOT_PERMITTED         [R]
    12      0x800C    UNSUPPORTED_VERSION             [R]
    13      0x800D    INVALID_REQUEST                 [R]
    0x7F01  0xFF01    NO_KEY_FOR_STREAM               project: no SEK/PEK configured for this
                                                      (super_CAS_id, ECM_id) = stkmstream
    0x7F02  0xFF02    KEY_NOT_VALID                   project: keys exist, none valid at the time
    0x7F03  0xFF03    UNSUPPORTED_TRAFFIC_PROTECTION  project: protocol code not IPsec/SRTP/ISMACryp
    0x7F04  0xFF04    INVALID_TRAFFIC_KEY_MATERIAL    project: CW bytes do not decode (traffic.py)

Design decision (the project codes): BCAST recalls codes above 13 (token/expiry ones) that could not
be pinned down, so the project codes sit at the top of the space, ``n = 0x7F00 + k``, far from any
plausible BCAST value and still inside 0x8000-0xFFFF once offset.

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
    "BcastError",
    "TrafficKeyError",
    "UnsupportedTrafficProtectionError",
    "NoKeyError",
    "KeyNotValidError",
    "KeyFileError",
    "STKMError",
]

#: First SimulCrypt ``error_status`` value of the ECMG/CA-specific range that carries BCAST codes.
SIMULCRYPT_BCAST_BASE = 0x8000
_MAX_N = 0xFFFF - SIMULCRYPT_BCAST_BASE


class BcastStatus(enum.IntEnum):
    """BCAST error codes ``n`` (see the module table; 0-13 are [R], 0x7F01+ are project codes)."""

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
    INVALID_REQUEST = 13
    # Project-specific (n = 0x7F00 + k): see the module docstring.
    NO_KEY_FOR_STREAM = 0x7F01
    KEY_NOT_VALID = 0x7F02
    UNSUPPORTED_TRAFFIC_PROTECTION = 0x7F03
    INVALID_TRAFFIC_KEY_MATERIAL = 0x7F04


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


class KeyFileError(BcastError, ValueError):
    """A key file is unreadable or invalid; the message names the file, the key and the reason.

    :ivar path: the key file.
    :ivar key: the key entry's name (or a table path such as ``stream[2]``), or ``None``.
    :ivar reason: what is wrong, never containing key bytes.
    """

    status = BcastStatus.SERVER_ERROR

    def __init__(self, path: object, key: str | None, reason: str) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {reason}")
