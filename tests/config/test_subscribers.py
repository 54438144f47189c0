"""bcast_sp4.config.subscribers: the subscriber file -> Subscribers (devices and their LTKMs)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from bcast_sp4.bcast.keys import KeyRole
from bcast_sp4.bcast.ltkm_drm import parse_ltkm
from bcast_sp4.config import ConfigError, load_subscribers
from bcast_sp4.config.subscribers import subscribers_from_document

REPO = Path(__file__).resolve().parents[2]
ISSUED = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def test_example_subscriber_file_generates_one_ltkm_per_device():
    subscribers = load_subscribers(REPO / "etc" / "subscribers.example.toml")
    issued = list(subscribers.ltkms(ISSUED, first_sequence=100))
    assert [i.sequence for i in issued] == [100, 101, 102]
    keys = subscribers.device_keys()
    second = parse_ltkm(issued[1].data, keys.get)
    assert [k.role for k in second.keys] == [KeyRole.SERVICE, KeyRole.PROGRAMME]
    # the subscription window (2025-2035) narrows the keys' own validity (2024-2036)
    assert second.keys[0].not_before == datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert second.keys[0].not_after == datetime(2035, 1, 1, tzinfo=timezone.utc)


def document(**overrides):
    doc = {
        "format": 1,
        "keys": {"sek": {"key_id": 1, "key": "00" * 16, "authentication_key": "11" * 20,
                         "not_before": datetime(2024, 1, 1, tzinfo=timezone.utc),
                         "not_after": datetime(2026, 1, 1, tzinfo=timezone.utc)}},
        "devices": [{"device_id": "01", "device_key": "22" * 16, "entitlements": ["sek"]}],
    }
    doc.update(overrides)
    return doc


def test_devices_without_a_valid_window_get_no_ltkm():
    doc = document(devices=[
        {"device_id": "01", "device_key": "22" * 16, "entitlements": ["sek"]},
        {"device_id": "02", "device_key": "22" * 16, "entitlements": ["sek"],
         "not_before": datetime(2027, 1, 1, tzinfo=timezone.utc)},
    ])
    subscribers = subscribers_from_document("mem", doc)
    assert [i.device_id for i in subscribers.ltkms(ISSUED, 0)] == [b"\x01"] and subscribers.skipped() == 1


def device(**fields):
    return {"device_id": "01", "device_key": "22" * 16, "entitlements": ["sek"], **fields}


@pytest.mark.parametrize(
    "overrides, key, reason",
    [
        (dict(format=2), "format", "must be 1"),
        (dict(extra=1), "extra", "unknown key"),
        (dict(devices=[]), "devices", "at least one"),
        (dict(devices=[device(entitlements=["nope"])]), "devices #1.entitlements", "unknown key 'nope'"),
        (dict(devices=[device(device_key="22" * 15)]), "devices #1.device_key", "must be 16 bytes"),
        (dict(devices=[device(device_id="zz")]), "devices #1.device_id", "'zz' is not hex"),
        (dict(devices=[device(), device()]), "devices #2.device_id", "duplicate device_id 01"),
        (dict(devices=[device(colour=1)]), "devices #1.colour", "unknown key"),
        (dict(devices=[device(entitlements=[])]), "devices #1.entitlements", "non-empty list"),
        (dict(devices=[device(entitlements=["sek"] * 256)]), "devices #1.entitlements", "at most 255"),
        (dict(devices=[device(not_before=datetime(2027, 1, 1, tzinfo=timezone.utc),
                              not_after=datetime(2026, 1, 1, tzinfo=timezone.utc))]),
         "devices #1.not_after", "later than not_before"),
        (dict(keys={"sek": {"key_id": 1, "key": "00" * 16}}), "keys.sek.authentication_key", "DRM Profile LTKMs"),
    ],
)
def test_subscriber_file_errors_name_the_entry(overrides, key, reason):
    with pytest.raises(ConfigError) as caught:
        subscribers_from_document("subs.toml", document(**overrides))
    assert caught.value.key == key and reason in caught.value.reason, str(caught.value)
    assert str(caught.value).startswith(f"subs.toml: {key}: ")
    assert "22222222" not in str(caught.value)  # never echo key bytes


def test_unreadable_subscriber_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_subscribers(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("format = [")
    with pytest.raises(ConfigError, match=r"bad.toml: line 1, column \d+: not valid TOML"):
        load_subscribers(bad)
