"""MUX and classic DVB data clients (section_TSpkt_flag 0 / 1, opt-in), and v1 with data_id.

Pure: the MUX core and connection machines with time moved by hand.
"""

from __future__ import annotations

import pytest

from bcast_sp4 import wire
from bcast_sp4.machines.channel import ServerChannelState
from bcast_sp4.machines.mux import ClientConfig, Emit, MuxConfig, MuxConnection, MuxCore, RouteConfig, RouteKind
from bcast_sp4.machines.mux import classic
from bcast_sp4.wire import emmg_mux as m
from tests.doubles import error_of, notices, one, sent

CLASSIC = 0x4ADC0001  # a DVB EMMG's client_id, opted in to 0/1/2
STRICT = 0x4ADC0002  # the same kind of client, left at the default (0x02 only)
BSM = 0x00010001
TS_ID, SECTIONS_ID, LTKM_ID = 1, 2, 0x0100


def ts_packets(count: int, fill: int = 0) -> bytes:
    return b"".join(bytes([0x47, 0x01, 0x00, 0x10 | (i & 0x0F)]) + bytes([(fill + i) & 0xFF]) * 184 for i in range(count))


def section(body_len: int, table_id: int = 0x82, fill: int = 0xAB) -> bytes:
    length = body_len
    return bytes([table_id, 0x70 | (length >> 8), length & 0xFF]) + bytes([fill]) * body_len


def make_core(versions=frozenset({2, 3, 4, 5}), unthrottled=True) -> MuxCore:
    def data_route(data_id, port, data_type=0):
        return RouteConfig(kind=RouteKind.DATA, data_id=data_id, destination=("127.0.0.1", port),
                           default_bandwidth=500, max_bandwidth=1000, data_type=data_type)

    clients = {
        CLASSIC: ClientConfig(client_id=CLASSIC, max_bandwidth=2000, section_TSpkt_flags=frozenset({0, 1, 2}),
                              routes={TS_ID: data_route(TS_ID, 4401), SECTIONS_ID: data_route(SECTIONS_ID, 4402, 1)}),
        STRICT: ClientConfig(client_id=STRICT, routes={TS_ID: data_route(TS_ID, 4403)}),
        BSM: ClientConfig(client_id=BSM, section_TSpkt_flags=frozenset({0, 1, 2}), max_bandwidth=2000,
                          routes={LTKM_ID: RouteConfig(kind=RouteKind.LTKM, data_id=LTKM_ID, destination=("127.0.0.1", 4359),
                                                       default_bandwidth=100),
                                  TS_ID: data_route(TS_ID, 4404)}),
    }
    return MuxCore(MuxConfig(clients=clients, versions=versions, unthrottled=unthrottled, max_invalid_messages=0))


def setup(conn, client=CLASSIC, flag=1, version=3, ch=1):
    return conn.receive(m.ChannelSetup(protocol_version=version, client_id=client, data_channel_id=ch,
                                       section_TSpkt_flag=flag), 0.0)


def stream(conn, data_id, st=1, data_type=0, client=CLASSIC, version=3, ch=1):
    return conn.receive(m.StreamSetup(protocol_version=version, client_id=client, data_channel_id=ch, data_stream_id=st,
                                      data_id=data_id, data_type=data_type), 0.0)


def provide(conn, *datagrams, data_id=TS_ID, st=1, client=CLASSIC, version=3, ch=1):
    return conn.receive(m.DataProvision(protocol_version=version, client_id=client, data_channel_id=ch, data_stream_id=st,
                                        data_id=data_id, datagram=tuple(datagrams)), 0.0)


# -- the format checks ---------------------------------------------------------------------------


def test_ts_packets_must_be_whole_and_start_with_the_sync_byte():
    assert classic.format_fault(1, ts_packets(1)) is None
    assert classic.format_fault(1, ts_packets(7)) is None
    assert "whole number of 188-byte" in classic.format_fault(1, ts_packets(2)[:-1])
    broken = bytearray(ts_packets(3))
    broken[188 * 2] = 0x48
    assert classic.format_fault(1, bytes(broken)) == "TS packet 2 starts with 0x48, not sync byte 0x47"


def test_sections_must_be_whole_with_consistent_section_length():
    assert classic.format_fault(0, section(10)) is None
    assert classic.format_fault(0, section(10) + section(4093) + section(0)) is None  # several back to back
    assert "runs 1 bytes past" in classic.format_fault(0, section(10)[:-1])
    assert "cannot hold a section header" in classic.format_fault(0, section(10) + b"\x82\x70")
    assert "exceeds 4093" in classic.format_fault(0, bytes([0x82, 0x7F, 0xFF]) + bytes(4095))
    assert classic.format_fault(2, b"\x00anything") is None  # BCAST datagrams are opaque


def test_describe_names_value_and_meaning():
    assert classic.describe_flag(1) == "1 (TS packets)"
    assert classic.describe_flag(0) == "0 (sections)"
    assert classic.describe_flags({2}) == "0x02"
    assert classic.describe_flags({0, 1, 2}) == "0x00, 0x01 or 0x02"


# -- channel and stream set-up -------------------------------------------------------------------


@pytest.mark.parametrize("flag", [0, 1, 2])
def test_an_opted_in_client_gets_its_own_flag_echoed(flag):
    conn = MuxConnection(make_core())
    status = one(setup(conn, flag=flag), m.ChannelStatus)
    assert status.section_TSpkt_flag == flag
    assert conn.state is ServerChannelState.CHANNEL_OPEN


@pytest.mark.parametrize("flag", [0, 1])
def test_the_default_stays_bcast_only_and_the_refusal_names_field_and_values(flag):
    conn = MuxConnection(make_core())
    outputs = setup(conn, client=STRICT, flag=flag)
    assert error_of(outputs, m.ChannelError) == 0x000D
    assert one(outputs, m.ChannelError).error_information == ((0x0002).to_bytes(2, "big"),)  # section_TSpkt_flag
    reason = notices(outputs, "channel_refused")[0].fields["reason"]
    assert f"section_TSpkt_flag {classic.describe_flag(flag)}" in reason and "allowed 0x02" in reason
    assert conn.state is ServerChannelState.NO_CHANNEL


def test_a_classic_channel_feeds_data_routes_only():
    conn = MuxConnection(make_core())
    one(setup(conn, client=BSM, flag=1), m.ChannelStatus)
    outputs = stream(conn, LTKM_ID, client=BSM)
    assert error_of(outputs, m.StreamError) == 0x000D
    assert "needs 0x02" in notices(outputs, "stream_refused")[0].fields["reason"]
    one(stream(conn, TS_ID, st=2, client=BSM), m.StreamStatus)


def test_a_data_route_checks_its_configured_data_type():
    conn = MuxConnection(make_core())
    one(setup(conn, flag=0), m.ChannelStatus)
    assert error_of(stream(conn, SECTIONS_ID, data_type=0), m.StreamError) == 0x000D
    one(stream(conn, SECTIONS_ID, data_type=1), m.StreamStatus)


# -- data ------------------------------------------------------------------------------------------


def test_whole_ts_packets_leave_byte_for_byte_and_a_broken_one_is_dropped_with_0x000d():
    core = make_core()
    conn = MuxConnection(core)
    one(setup(conn, flag=1), m.ChannelStatus)
    one(stream(conn, TS_ID), m.StreamStatus)
    good1, good2 = ts_packets(1, 1), ts_packets(3, 2)
    bad = b"\x00" + ts_packets(1)[1:]
    outputs = provide(conn, good1, bad, good2)
    assert [(o.route, o.payload) for o in outputs if isinstance(o, Emit)] == [((CLASSIC, TS_ID), good1), ((CLASSIC, TS_ID), good2)]
    assert error_of(outputs, m.StreamError) == 0x000D
    assert core.dropped == {"bad_format": 1}
    drop = notices(outputs, "dropped")[0].fields
    assert drop["reason"] == "bad_format" and "sync byte" in drop["fault"]


def test_sections_several_per_data_provision_are_paced_like_ltkms():
    core = make_core(unthrottled=False)
    conn = MuxConnection(core)
    one(setup(conn, flag=0), m.ChannelStatus)
    one(stream(conn, SECTIONS_ID, data_type=1), m.StreamStatus)  # 500 kbit/s by default
    datagrams = [section(1000, fill=i) for i in range(8)] + [section(20) + section(30)]
    assert not sent(provide(conn, *datagrams, data_id=SECTIONS_ID))
    out: list[bytes] = []
    now = 0.0
    for _ in range(200):
        out += [o.payload for o in core.tick(now) if isinstance(o, Emit)]
        wake = core.next_wakeup(now)
        if wake is None:
            break
        now = wake
    assert out == datagrams
    # 9 datagrams of 9 * 1003 + 56 bytes at 62 500 bytes/s: at least (bytes - burst) / rate seconds
    assert now >= (sum(map(len, datagrams)) - 62_500 * 0.02 - 1003) / 62_500


def test_bcast_flag_on_a_data_route_is_not_checked():
    conn = MuxConnection(make_core())
    one(setup(conn, flag=2), m.ChannelStatus)
    one(stream(conn, TS_ID), m.StreamStatus)
    outputs = provide(conn, b"\x00not a TS packet")
    assert [o.payload for o in outputs if isinstance(o, Emit)] == [b"\x00not a TS packet"]


# -- v1 with data_id -----------------------------------------------------------------------------


def v1(message_cls, **fields) -> bytes:
    """A v1 message carrying data_id, built as the deviating EMMG sends it (v2 layout, version byte 1)."""
    frame = bytearray(message_cls(protocol_version=2, **fields).encode())
    frame[0] = 1
    return bytes(frame)


def test_v1_with_data_id_is_accepted_when_v1_is_enabled():
    tolerate = {wire.Deviation.V1_DATA_ID}
    conn = MuxConnection(make_core(versions=frozenset({1, 2, 3})))
    one(setup(conn, flag=1, version=1), m.ChannelStatus)
    setup_msg = wire.decode(v1(m.StreamSetup, client_id=CLASSIC, data_channel_id=1, data_stream_id=1, data_id=TS_ID,
                               data_type=0), tolerate=tolerate)
    outputs = conn.receive(setup_msg, 0.0)
    status = one(outputs, m.StreamStatus)
    # the deviation mirrored: a v1 stream_status with data_id (TSDuck's v1 EMMG requires it)
    assert isinstance(status, classic.StreamStatusEchoingDataId) and status.data_id == TS_ID
    frame = status.encode()
    assert frame[0] == 1
    with pytest.raises(wire.UnknownParameterType):
        wire.decode(frame)
    echoed = wire.decode(frame, tolerate=tolerate)
    assert (echoed.protocol_version, echoed.data_id, echoed.data_stream_id) == (1, TS_ID, 1)
    # a stream_test is answered the same way
    test = conn.receive(m.StreamTest(protocol_version=1, client_id=CLASSIC, data_channel_id=1, data_stream_id=1), 0.0)
    assert one(test, m.StreamStatus).encode() == frame
    assert notices(outputs, "deviation_tolerated")[0].fields["deviation"] == "v1-data_id"
    packet = ts_packets(2)
    provision = wire.decode(v1(m.DataProvision, client_id=CLASSIC, data_channel_id=1, data_stream_id=1, data_id=TS_ID,
                               datagram=(packet,)), tolerate=tolerate)
    assert [o.payload for o in conn.receive(provision, 0.0) if isinstance(o, Emit)] == [packet]
    # strict v1 (no data_id) data_provision: routed by its stream id
    plain = m.DataProvision(protocol_version=1, client_id=CLASSIC, data_channel_id=1, data_stream_id=1, datagram=(packet,))
    assert [o.payload for o in conn.receive(plain, 0.0) if isinstance(o, Emit)] == [packet]


def test_v1_without_data_id_cannot_be_routed_and_v1_stays_off_by_default():
    conn = MuxConnection(make_core(versions=frozenset({1, 2, 3})))
    one(setup(conn, flag=1, version=1), m.ChannelStatus)
    plain = m.StreamSetup(protocol_version=1, client_id=CLASSIC, data_channel_id=1, data_stream_id=1, data_type=0)
    outputs = conn.receive(plain, 0.0)
    assert error_of(outputs, m.StreamError) == 0x000C
    assert one(outputs, m.StreamError).error_information == ((0x0008).to_bytes(2, "big"),)
    default = MuxConnection(make_core())
    assert error_of(setup(default, flag=1, version=1), m.ChannelError) == 0x0002


def test_other_v1_cardinality_violations_stay_errors():
    tolerate = {wire.Deviation.V1_DATA_ID}
    frame = bytearray(m.DataProvision(protocol_version=2, client_id=CLASSIC, data_channel_id=1, data_stream_id=1,
                                      data_id=TS_ID, datagram=(b"x",)).encode())
    frame[0] = 1
    twice = bytes(frame) + bytes(frame[5 + 8 + 6 + 6:5 + 8 + 6 + 6 + 6])  # a second data_id TLV
    twice = twice[:3] + (len(twice) - 5).to_bytes(2, "big") + twice[5:]
    with pytest.raises(wire.PeerProtocolError):
        wire.decode(twice, tolerate=tolerate)
