"""The metrics' per-channel memory (the Super_CAS_id of each channel_setup, which labels the
ECM_response latency) is bounded: a flood of connections that each open a channel does not grow
it for ever, and the most recent channels keep their label."""

from __future__ import annotations

from twisted.internet.task import Clock

from bcast_sp4.ops.metrics import MAX_CHANNELS_REMEMBERED, Metrics
from bcast_sp4.wire import ecmg_scs


def _setup(channel: int, super_cas_id: int) -> ecmg_scs.ChannelSetup:
    return ecmg_scs.ChannelSetup(protocol_version=3, ECM_channel_id=channel, Super_CAS_id=super_cas_id)


def test_channel_setups_remembered_are_bounded_and_the_newest_kept():
    metrics = Metrics("bcast-ecmg", Clock())
    total = MAX_CHANNELS_REMEMBERED + 500
    for n in range(total):
        metrics.message_received("ecmg", f"127.0.0.1:{20_000 + n}", _setup(1, 0x00010000 + n), 0.0)
    assert len(metrics._channels) == MAX_CHANNELS_REMEMBERED
    assert ("ecmg", "127.0.0.1:20000", 1) not in metrics._channels
    assert metrics._channels[("ecmg", f"127.0.0.1:{20_000 + total - 1}", 1)] == 0x00010000 + total - 1
    # a channel set up again is the newest, not the next to go
    oldest = next(iter(metrics._channels))
    metrics.message_received("ecmg", oldest[1], _setup(1, 0x00020001), 0.0)
    metrics.message_received("ecmg", "127.0.0.1:1", _setup(1, 0x00010001), 0.0)
    assert metrics._channels[oldest] == 0x00020001
    assert len(metrics._channels) == MAX_CHANNELS_REMEMBERED
