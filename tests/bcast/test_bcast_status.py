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


def test_recalled_table_values():
    # bcast-keys.md §6.2 [R]: pin the numbers so an edit to the enum is a visible decision.
    assert [m.value for m in BcastStatus][:14] == list(range(14))
    assert BcastStatus.SERVER_ERROR == 7 and BcastStatus.NO_SUBSCRIPTION == 10


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


def test_key_file_error_names_file_key_reason():
    err = status.KeyFileError("/etc/k.toml", "key 'a'", "bad hex")
    assert str(err) == "/etc/k.toml: key 'a': bad hex"
    assert (err.path, err.key, err.reason) == ("/etc/k.toml", "key 'a'", "bad hex")
