"""CWProvisionReader (the ECMG's per-STKM reading of CW_provisions by layout) against the decoder.

Whatever the bytes, a layout read must agree with :func:`bcast_sp4.wire.decode`: the same fields
for a message the decoder accepts, ``None`` for anything it does not accept (the ECMG then decodes
and answers it the normal way).
"""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcast_sp4 import wire
from bcast_sp4.wire import ecmg_scs as m
from bcast_sp4.wire.ecmg_scs import CWProvisionReader

from .strategies import messages

cw_provisions = messages(classes=[m.CWProvision])


def fields_of(msg: m.CWProvision) -> tuple:
    return (msg.protocol_version, msg.ECM_channel_id, msg.ECM_stream_id, msg.CP_number, msg.CP_CW_combination,
            msg.CW_encryption, msg.CP_duration, msg.access_criteria)


def decoded_fields(frame: bytes):
    try:
        msg = wire.decode(frame, wire.Interface.ECMG_SCS)
    except wire.PeerProtocolError:
        return None
    return fields_of(msg) if isinstance(msg, m.CWProvision) else None


def tlvs(frame: bytes) -> list[bytes]:
    out, pos = [], 5
    while pos < len(frame):
        n = struct.unpack_from(">H", frame, pos + 2)[0]
        out.append(frame[pos:pos + 4 + n])
        pos += 4 + n
    return out


def reframe(header: bytes, params: list[bytes]) -> bytes:
    body = b"".join(params)
    return header[:3] + struct.pack(">H", len(body)) + body


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(cw_provisions)
def test_a_learnt_message_reads_as_the_decoder_reads_it(msg):
    frame = msg.encode()
    reader = CWProvisionReader()
    assert reader.read(frame) is None  # nothing learnt yet
    assert reader.learn(frame) is True
    assert reader.read(frame) == fields_of(msg)
    assert reader.learn(frame) is None  # known already


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(cw_provisions, st.data())
def test_changed_bytes_are_read_as_the_decoder_reads_them_or_not_at_all(msg, data):
    frame = msg.encode()
    reader = CWProvisionReader()
    assert reader.learn(frame)
    changed = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(frame) - 1))
        changed[at] = data.draw(st.integers(0, 255))
    changed = bytes(changed)
    got = reader.read(changed)
    assert got is None or got == decoded_fields(changed)
    # a change of a value byte only (not the header, a type or a length) is always read
    if got is None and decoded_fields(changed) is not None and tlvs(changed) and \
            [t[:4] for t in tlvs(changed)] == [t[:4] for t in tlvs(frame)] and changed[:5] == frame[:5]:
        pytest.fail("a message of the learnt layout was not read")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(cw_provisions, cw_provisions)
def test_another_message_of_the_same_size_is_read_only_with_the_same_layout(first, other):
    reader = CWProvisionReader()
    assert reader.learn(first.encode())
    frame = other.encode()
    got = reader.read(frame)
    assert got is None or got == fields_of(other)
    same_layout = frame[:5] == first.encode()[:5] and [t[:4] for t in tlvs(frame)] == [t[:4] for t in tlvs(first.encode())]
    assert (got is not None) == same_layout


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(cw_provisions, st.data())
def test_parameters_in_another_order_are_their_own_layout(msg, data):
    frame = msg.encode()
    params = data.draw(st.permutations(tlvs(frame)))
    moved = reframe(frame, params)
    reader = CWProvisionReader()
    assert reader.learn(moved)
    assert reader.read(moved) == decoded_fields(moved)
    in_order = tuple(m.CPCWCombination(struct.unpack_from(">H", t, 4)[0], t[6:]) for t in params if t[:2] == b"\x00\x14")
    assert reader.read(moved)[4] == in_order  # CP_CW_combinations in the order they came


def test_invalid_and_other_messages_are_not_learnt():
    good = m.CWProvision(protocol_version=3, ECM_channel_id=1, ECM_stream_id=2, CP_number=7,
                         CP_CW_combination=(m.CPCWCombination(7, b"a" * 8), m.CPCWCombination(8, b"b" * 8)))
    frame = good.encode()
    params = tlvs(frame)
    twice = reframe(frame, params + [params[2]])  # CP_number twice: the decoder refuses it
    assert decoded_fields(twice) is None
    reader = CWProvisionReader()
    assert reader.learn(twice) is False
    assert reader.read(twice) is None
    assert reader.learn(m.ChannelTest(protocol_version=3, ECM_channel_id=1).encode()) is None
    assert reader.learn(frame[:-1]) is False  # message_length no longer matches
    assert reader.sizes == ()


def test_the_layouts_are_bounded_in_number_and_size():
    def provision(cw_size: int) -> bytes:
        return m.CWProvision(protocol_version=3, ECM_channel_id=1, ECM_stream_id=2, CP_number=7,
                             CP_CW_combination=(m.CPCWCombination(7, b"a" * cw_size),)).encode()

    reader = CWProvisionReader(limit=2, max_size=len(provision(20)))
    assert reader.learn(provision(8)) and reader.learn(provision(9))
    assert reader.learn(provision(10)) is None and reader.read(provision(10)) is None  # limit
    assert CWProvisionReader(max_size=len(provision(20))).learn(provision(21)) is None  # longer than the limit
    assert reader.sizes == (len(provision(8)), len(provision(9)))


def test_layouts_are_compiled_once_and_shared_within_a_bound(monkeypatch):
    def provision(cw_size: int, cp: int = 7) -> bytes:
        return m.CWProvision(protocol_version=3, ECM_channel_id=1, ECM_stream_id=2, CP_number=cp,
                             CP_CW_combination=(m.CPCWCombination(cp, b"a" * cw_size),)).encode()

    monkeypatch.setattr(m, "_shared_layouts", {})
    monkeypatch.setattr(m, "MAX_SHARED_LAYOUTS", 3)
    first, second = CWProvisionReader(), CWProvisionReader()
    assert first.learn(provision(8)) and second.learn(provision(8, cp=9))
    assert first._layouts[len(provision(8))] is second._layouts[len(provision(8))]  # one function for both
    for size in (9, 10, 11):
        assert first.learn(provision(size))
    assert len(m._shared_layouts) == 3  # the oldest dropped
    assert first.read(provision(8)) == decoded_fields(provision(8))  # a reader keeps what it learnt
