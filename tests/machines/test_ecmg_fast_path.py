"""ECMGConnection.cw_provision (the adapter's hot path) against receive(): same bytes, same outputs.

Twin machines get the same inputs, one through ``receive`` (outputs, the ECM_response as a
message), one through ``cw_provision`` (the ECM_response already encoded); every outcome must agree.
"""

from __future__ import annotations

import pytest

from bcast_sp4 import wire
from bcast_sp4.machines.outputs import Send
from bcast_sp4.wire import ecmg_scs as m
from tests.machines.test_ecmg_machine import CARD, DVB, make, opened, provision, stream


def twins(scid=0x00010001, version=3, **kw):
    pairs = []
    for _ in range(2):
        _resources, source, conn = make(**kw)
        opened(conn, scid=scid, version=version)
        stream(conn, version=version)
        stream(conn, stream_id=2, ecm_id=101, version=version)
        pairs.append((source, conn))
    return pairs


def as_bytes(outputs):
    """What the adapter would write for *outputs* (its Send messages, encoded)."""
    return b"".join(o.message.encode() for o in outputs if type(o) is Send)


def both(pairs, msg, now=1.0, received_at=1.0):
    (_, slow), (_, fast) = pairs
    expected = slow.receive(msg, now, received_at)
    got = fast.cw_provision(msg, now, received_at)
    return expected, got


@pytest.mark.parametrize("scid", [0x00010001, CARD, DVB])
@pytest.mark.parametrize("version", [2, 3])
def test_ecm_response_bytes_equal_the_encoded_message(scid, version):
    pairs = twins(scid, version)
    for cp in (5, 6, 7):
        msg = provision(cp, stream_id=1 + cp % 2)
        msg = m.CWProvision.make(version, *(getattr(msg, p.name) for p, _ in m.CWProvision.PARAMS))
        expected, got = both(pairs, msg)
        assert type(got) is bytes
        assert got == as_bytes(expected)
        assert type(wire.decode(got)) is m.ECMResponse
    (slow_source, slow), (fast_source, fast) = pairs
    assert slow_source.requests == fast_source.requests
    assert slow.invalid_in_a_row == fast.invalid_in_a_row == 0


def test_every_error_outcome_is_the_same_outputs():
    pairs = twins(max_invalid_messages=0)
    cases = [
        provision(5, stream_id=9),  # unknown stream
        provision(5, channel=7),  # another channel id
        provision(5, cps=(5,)),  # not enough CWs
        provision(5, cps=(9, 10)),  # CWs of other crypto-periods
        m.CWProvision.make(2, 1, 1, 5, None, provision(5).CP_CW_combination, None, None),  # version mismatch
    ]
    for msg in cases:
        expected, got = both(pairs, msg)
        assert type(got) is list and got == expected
    for (source, _conn) in pairs:
        source.fail_next = 0x000B
    expected, got = both(pairs, provision(5))
    assert got == expected and wire.decode(as_bytes(got)).error_status == (0x000B,)
    # past max_comp_time: the deadline error, not an ECM
    expected, got = both(pairs, provision(6), now=10.0, received_at=1.0)
    assert got == expected
    assert type(wire.decode(as_bytes(got))) is m.StreamError
    assert pairs[0][1].invalid_in_a_row == pairs[1][1].invalid_in_a_row


def test_before_channel_setup_the_same_error():
    (_, slow), (_, fast) = [make()[1:] for _ in range(2)]
    msg = provision(5)
    assert fast.cw_provision(msg, 1.0) == slow.receive(msg, 1.0)


def test_encode_ecm_response_bounds():
    assert m.encode_ecm_response(3, 1, 2, 0xFFFF, b"x" * m.MAX_ECM_DATAGRAM) == m.ECMResponse.make(
        3, 1, 2, 0xFFFF, b"x" * m.MAX_ECM_DATAGRAM).encode()
    for datagram in (b"", b"x" * (m.MAX_ECM_DATAGRAM + 1)):
        with pytest.raises(wire.LocalProtocolError):
            m.encode_ecm_response(3, 1, 2, 3, datagram)
    with pytest.raises(wire.LocalProtocolError):
        m.encode_ecm_response(3, 1, 2, 0x10000, b"x")
