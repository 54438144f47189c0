"""The ECMG's per-STKM path (CW_provisions read by layout, ``ECMGProtocol.quick`` and its whole-read
``dataReceived``) answers exactly as the shared adapter path does.

Each scenario is fed, chunk by chunk, to two ECMG connections built as ``bcast-ecmg`` builds them
(guard on a Clock): one as it is, one with the per-STKM path switched off (``quick = None`` and the
shared ``dataReceived``). Their replies (type, ids, CP_number, error codes), what the guard holds
and whether they close must be the same; and the per-STKM path must have been taken where it can.
"""

from __future__ import annotations

import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from bcast_sp4 import wire
from bcast_sp4.bcast import stkm_drm, traffic
from bcast_sp4.roles._stream import SimulCryptStreamProtocol
from bcast_sp4.roles.ecmg_server import ECMGProtocol
from bcast_sp4.wire import ecmg_scs as m
from bcast_sp4.wire.params import CPCWCombination as CW

from .test_guard_roles import DRM, ECMG, KEYS

TEKS = [traffic.encode_cw(traffic.generate(traffic.TrafficProtection.ISMACRYP)) for _ in range(40)]


class Shared(ECMGProtocol):
    """The ECMG connection without its per-STKM path."""

    quick = None
    dataReceived = SimulCryptStreamProtocol.dataReceived


class Counting(ECMGProtocol):
    """The ECMG connection, counting the CW_provisions its per-STKM path answered."""

    taken = 0
    whole_reads = 0

    def _provide(self, fields, received_at):
        outputs = super()._provide(fields, received_at)
        Counting.taken += outputs is not None
        return outputs

    def _answer_all(self, *args):
        Counting.whole_reads += 1
        return super()._answer_all(*args)


def provision(cp: int, stream: int = 1, channel: int = 1, version: int = 3, first: int | None = None,
              duration: int | None = None) -> bytes:
    first = cp if first is None else first
    return m.CWProvision(protocol_version=version, ECM_channel_id=channel, ECM_stream_id=stream, CP_number=cp,
                         CP_CW_combination=(CW(first, TEKS[cp % 40]), CW(first + 1, TEKS[(cp + 1) % 40])),
                         CP_duration=duration).encode()


def set_up() -> bytes:
    return (m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode()
            + m.StreamSetup(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=20).encode()
            + m.StreamSetup(ECM_channel_id=1, ECM_stream_id=2, ECM_id=2, nominal_CP_duration=20).encode())


def params_twice(frame: bytes) -> bytes:
    """*frame* with its CP_number parameter once more (the decoder refuses it)."""
    body = frame[5:] + frame[17:23]
    return frame[:3] + struct.pack(">H", len(body)) + body


SCENARIOS = {
    "whole reads": [set_up()] + [provision(cp) for cp in range(1, 6)] + [provision(6, stream=2)],
    "unknown stream, other channel, other version": [set_up(), provision(1), provision(2, stream=9),
                                                     provision(3, channel=7), provision(4, version=2), provision(5)],
    "not the CWs the channel asks for": [set_up(), provision(1), provision(2, first=5), provision(3)],
    "pipelined and split": [set_up(), provision(1) + provision(2) + provision(3, stream=2), provision(4)[:20],
                            provision(4)[20:] + provision(5), provision(6)[:3], provision(6)[3:], provision(7)],
    "invalid CW_provisions until the channel closes": [set_up(), provision(1), params_twice(provision(2)),
                                                       provision(3, stream=9), params_twice(provision(4)), provision(5)],
    "a closed stream": [set_up(), provision(1),
                        m.StreamCloseRequest(ECM_channel_id=1, ECM_stream_id=1).encode(), provision(2), provision(3, stream=2)],
    "before any channel": [provision(1), set_up(), provision(2)],
    "another layout": [set_up(), provision(1), provision(2, duration=30), provision(3), provision(4, duration=40)],
    "pipelined with an unknown stream in the middle": [set_up(), provision(1), provision(2) + provision(3, stream=9)
                                                       + provision(4, stream=2) + provision(5)],
    "pipelined until the channel closes": [set_up(), provision(1), b"".join(provision(cp, first=cp + 9) for cp in range(2, 6))
                                           + provision(6)],
    "pipelined with the start of the next message behind": [set_up(), provision(1), provision(2) + provision(3) + provision(4)[:10],
                                                            provision(4)[10:] + provision(5)[:3], provision(5)[3:], provision(6)],
    "pipelined, then a header of an over-long message": [set_up(), provision(1), provision(2) + b"\x03\x02\x01\xff\xff",
                                                         bytes(70000), provision(3)],
    # a valid version-2 CW_provision of a new size is learnt, then refused by the version-3 channel
    "another version, learnt": [set_up(), provision(1), provision(2, version=2, duration=30), provision(3)],
}

#: scenarios run with a budget of 2 messages a turn: a whole read must wait behind the queued ones
QUEUED = {
    "a whole read behind a queue": [m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM).encode(),
                                    m.StreamSetup(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=20).encode(),
                                    m.StreamSetup(ECM_channel_id=1, ECM_stream_id=2, ECM_id=2, nominal_CP_duration=20).encode(),
                                    provision(1), b"".join(provision(cp) for cp in range(2, 7)), provision(7),
                                    provision(8, stream=2)],
}


def run(cls, chunks, slow=False, turns=False, **limits):
    ecmg = ECMG(**limits)
    if slow:  # each reading of the time moves it on 0.4 ms: a turn's time (1 ms) runs out mid-read
        clock = ecmg.clock

        def seconds():
            clock.rightNow += 0.0004
            return clock.rightNow

        clock.seconds = seconds
    ecmg.factory.protocol = cls
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    protocol = ecmg.factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    seen = []
    for chunk in chunks:
        protocol.dataReceived(chunk)
        for reply in wire.Framer().feed(transport.value()):
            msg = wire.decode(reply, wire.Interface.ECMG_SCS)
            row = [type(msg).__name__, msg.ECM_channel_id, getattr(msg, "ECM_stream_id", None),
                   getattr(msg, "CP_number", None), getattr(msg, "error_status", None)]
            if isinstance(msg, m.ECMResponse):  # a real STKM carrying the provision's TEK
                parsed = stkm_drm.parse_stkm(msg.ECM_datagram, KEYS)
                row.append(traffic.encode_cw(parsed.material) == TEKS[msg.CP_number % 40])
            seen.append(row)
        transport.clear()
        seen.append(("after chunk", protocol.watch.buffered, protocol.watch.closed, transport.disconnecting,
                     protocol.machine.invalid_in_a_row, ecmg.guard.buffered_total))
        for _ in range(10 if turns else 0):  # the later turns of what this chunk left queued
            ecmg.clock.advance(0)
    for _ in range(10):  # the turns of what was queued
        ecmg.clock.advance(0)
    for reply in wire.Framer().feed(transport.value()):
        msg = wire.decode(reply, wire.Interface.ECMG_SCS)
        seen.append([type(msg).__name__, msg.ECM_channel_id, getattr(msg, "ECM_stream_id", None),
                     getattr(msg, "CP_number", None), "after the turns"])
    return seen


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_per_stkm_path_answers_as_the_shared_path(name):
    Counting.taken = Counting.whole_reads = 0
    quick = run(Counting, SCENARIOS[name])
    assert quick == run(Shared, SCENARIOS[name])
    responses = [row for row in quick if row[0] == "ECMResponse"]
    assert responses and all(row[-1] is True for row in responses)
    assert Counting.taken >= 1  # the path under test was taken


@pytest.mark.parametrize("name", sorted(QUEUED))
def test_a_whole_read_waits_behind_the_queued_messages(name):
    Counting.taken = Counting.whole_reads = 0
    quick = run(Counting, QUEUED[name], messages_per_turn=2)
    assert quick == run(Shared, QUEUED[name], messages_per_turn=2)
    answered = [tuple(row[2:4]) for row in quick if row[0] == "ECMResponse"]
    assert answered == [(1, cp) for cp in range(1, 8)] + [(2, 8)]  # in the order sent
    assert Counting.taken >= 1


def test_a_turn_whose_time_runs_out_mid_read_leaves_the_rest_for_the_next_turn():
    chunks = [set_up(), provision(1), b"".join(provision(cp) for cp in range(2, 9)), provision(9)]
    Counting.taken = Counting.whole_reads = 0
    quick = run(Counting, chunks, slow=True, turns=True)
    assert quick == run(Shared, chunks, slow=True, turns=True)
    rows = [row[0] for row in quick]
    burst = rows.index(("after chunk"), rows.index("after chunk") + 1)  # the row after provision(1)'s chunk
    assert Counting.whole_reads >= 2  # the burst and provision(9) took the per-STKM path
    assert len([r for r in quick[burst + 1:] if r[0] == "ECMResponse"]) == 8


def test_a_read_with_the_start_of_the_next_message_takes_the_per_stkm_path():
    Counting.taken = Counting.whole_reads = 0
    run(Counting, SCENARIOS["pipelined with the start of the next message behind"])
    assert Counting.whole_reads >= 2  # provision(2) + (3) + part of (4); provision(6)


def test_nothing_is_learnt_before_a_channel_is_open():
    ecmg = ECMG()
    protocol = ecmg.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)))
    protocol.dataReceived(provision(1))  # no channel: stream_error 0x0006 from the shared path
    assert protocol.reader.sizes == ()
    protocol.dataReceived(set_up() + provision(2))
    assert protocol.reader.sizes == (len(provision(2)),)


def test_whole_reads_take_the_per_stkm_path_and_the_first_layout_is_learnt_on_the_way():
    Counting.taken = Counting.whole_reads = 0
    run(Counting, SCENARIOS["whole reads"])
    # the first CW_provision is learnt in the shared path (quick), the next five are whole reads
    assert (Counting.taken, Counting.whole_reads) == (6, 5)


def test_a_pipelined_burst_is_read_by_layout_too():
    Counting.taken = Counting.whole_reads = 0
    run(Counting, [set_up(), provision(1), b"".join(provision(cp) for cp in range(2, 10))])
    assert (Counting.taken, Counting.whole_reads) == (9, 1)  # the first learnt on the shared path, then one read of 8
