"""bcast_sp4.bcast.status: the 0x8000 + n mapping and the exceptions' codes."""

from __future__ import annotations

import pytest

from bcast_sp4.bcast import status
from bcast_sp4.bcast.status import BcastStatus, bcast_status_from_simulcrypt, simulcrypt_code


def test_simulcrypt_code_offsets_by_0x8000():
    assert simulcrypt_code(0) == 0x8000
    assert simulcrypt_code(BcastStatus.MALFORMED_MESSAGE_ERROR) == 0x8008
    assert simulcrypt_code(BcastStatus.NO_KEY_FOR_STREAM) == 0xFF01
    assert simulcrypt_code(0x7FFF) == 0xFFFF


@pytest.mark.parametrize("n", [-1, 0x8000, 0x10000])
def test_simulcrypt_code_rejects_out_of_range(n):
    with pytest.raises(ValueError):
        simulcrypt_code(n)


def test_round_trip_every_member():
    for member in BcastStatus:
        assert bcast_status_from_simulcrypt(simulcrypt_code(member)) is member


def test_unknown_code_in_range_comes_back_as_int():
    assert bcast_status_from_simulcrypt(0x8000 + 500) == 500
    with pytest.raises(ValueError):
        bcast_status_from_simulcrypt(0x7001)


# bcast-keys.md §6.2 [C]: the whole 0-29 table, pinned so that an edit to the enum is a visible decision.
TABLE_6_2 = [
    "Success", "Device Authentication Failed", "User Authentication Failed", "Purchase Item Unknown",
    "Device Authorization Failed", "User Authorization Failed", "Device Not Registered", "Server Error",
    "Mal-formed Message Error", "Charging Error", "No Subscription", "Operation Not Permitted",
    "Unsupported Version", "Illegal Device", "Area Not Allowed", "Requested Service Unavailable",
    "Request Already Done", "Element Does Not Exist", "Undefined Error", "Delayed", "Generation Failed",
    "Invalid Information", "Invalid Request", "Wrong Destination", "Wrong Key Information",
    "Unknown Provider", "Unknown BSM ID", "Already In Use", "No Matching Fragment", "Already Subscribed",
]


def test_corroborated_table_0_to_29():
    assert [BcastStatus(n).meaning for n in range(30)] == TABLE_6_2
    assert all(BcastStatus(n).source == "C" for n in range(30))
    # the names follow the meanings (upper case, underscores)
    for n in range(30):
        words = TABLE_6_2[n].upper().replace("-", "").replace(" ", "_")
        assert BcastStatus(n).name == words


def test_13_is_illegal_device_and_invalid_request_is_22():
    # The project once recalled 13 = Invalid Request; the corroborated table says otherwise.
    assert BcastStatus(13) is BcastStatus.ILLEGAL_DEVICE
    assert BcastStatus.INVALID_REQUEST == 22 and simulcrypt_code(BcastStatus.INVALID_REQUEST) == 0x8016
    assert bcast_status_from_simulcrypt(0x800D) is BcastStatus.ILLEGAL_DEVICE


def test_describe_status():
    assert status.describe_status(13) == "ILLEGAL_DEVICE (Illegal Device) [C]"
    assert status.describe_status(22) == "INVALID_REQUEST (Invalid Request) [C]"
    assert status.describe_status(0x7F01).startswith("NO_KEY_FOR_STREAM (no SEK/PEK") and "[project]" in status.describe_status(0x7F01)
    assert status.describe_status(131) == "operator/profile-private"  # 128-255 in the source
    assert status.describe_status(30) == "unassigned" and status.describe_status(0x7F05) == "unassigned"


def test_every_member_has_a_meaning_and_a_source():
    for member in BcastStatus:
        assert member.meaning and member.source in ("C", "project")
    assert [m for m in BcastStatus if m.source == "project"] == [
        BcastStatus.NO_KEY_FOR_STREAM, BcastStatus.KEY_NOT_VALID,
        BcastStatus.UNSUPPORTED_TRAFFIC_PROTECTION, BcastStatus.INVALID_TRAFFIC_KEY_MATERIAL,
    ]


def test_no_bcast_exception_claims_13_or_22():
    # what the bcast layer raises never meant "Invalid Request" by 13; nothing uses 13 or 22 now
    import bcast_sp4.bcast.cw_encryption as cw_encryption
    import bcast_sp4.bcast.ltkm_drm as ltkm_drm

    raised = [status.BcastError, status.TrafficKeyError, status.STKMError, status.UnsupportedTrafficProtectionError,
              status.NoKeyError, status.KeyNotValidError, ltkm_drm.LTKMError]
    raised += [obj for obj in vars(cw_encryption).values() if isinstance(obj, type) and issubclass(obj, status.BcastError)]
    assert {int(exc.status) for exc in raised} <= {7, 8, 0x7F01, 0x7F02, 0x7F03, 0x7F04}


def test_project_codes_are_distinct_and_in_range():
    project = [BcastStatus.NO_KEY_FOR_STREAM, BcastStatus.KEY_NOT_VALID,
               BcastStatus.UNSUPPORTED_TRAFFIC_PROTECTION, BcastStatus.INVALID_TRAFFIC_KEY_MATERIAL]
    assert len(set(project)) == 4
    assert all(0xFF00 < simulcrypt_code(p) <= 0xFFFF for p in project)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (status.NoKeyError, BcastStatus.NO_KEY_FOR_STREAM),
        (status.KeyNotValidError, BcastStatus.KEY_NOT_VALID),
        (status.UnsupportedTrafficProtectionError, BcastStatus.UNSUPPORTED_TRAFFIC_PROTECTION),
        (status.TrafficKeyError, BcastStatus.INVALID_TRAFFIC_KEY_MATERIAL),
        (status.STKMError, BcastStatus.MALFORMED_MESSAGE_ERROR),
    ],
)
def test_exceptions_carry_their_status(exc, code):
    assert exc.status is code
    assert issubclass(exc, status.BcastError)


def test_exception_families():
    assert issubclass(status.TrafficKeyError, ValueError)
    assert issubclass(status.UnsupportedTrafficProtectionError, status.STKMError)
    assert issubclass(status.NoKeyError, LookupError)
