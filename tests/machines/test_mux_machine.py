"""MUX machine: every error path with its EMMG<=>MUX code, bandwidth, queues, pacing, STKM carousel, UDP.

Pure: no reactor; time is a float moved by hand (the role tests use ``task.Clock``).
"""

from __future__ import annotations

import pytest

from bcast_sp4 import wire
from bcast_sp4.machines.channel import ServerChannelState
from bcast_sp4.machines.mux import (
    ClientConfig,
    Deliver,
    Emit,
    MuxConfig,
    MuxConnection,
    MuxCore,
    RouteConfig,
    RouteKind,
    UnknownRoute,
)
from bcast_sp4.machines.outputs import Close, Notify, Send
from bcast_sp4.wire import emmg_mux as m
from tests.doubles import error_of, notices, one, sent

BSM = 0x00010001  # LTKM generator and SCS of BSM 1 (DRM Profile)
OTHER = 0x00010002  # a second LTKM generator
CARD = 0x00020001  # Smartcard Profile SCS: STKMs only
LTKM, LTKM2, STKM_ID = 0x0100, 0x0101, 1
LTKM_TYPE, STKM_TYPE = 0x00, 0x02


def route(kind, data_id, port, **kw):
    return RouteConfig(kind=kind, data_id=data_id, destination=("127.0.0.1", port), **kw)


def make_config(**kw):
    kw.setdefault("max_invalid_messages", 0)  # error-path tests send many errors in a row
    clients = {
        BSM: ClientConfig(
            client_id=BSM,
            max_channels=kw.pop("bsm_channels", 2),
            max_bandwidth=kw.pop("bsm_bandwidth", 1000),
            routes={
                LTKM: route(RouteKind.LTKM, LTKM, 4359, max_bandwidth=kw.pop("route_bandwidth", 500),
                            default_bandwidth=kw.pop("default_bandwidth", 0)),
                LTKM2: route(RouteKind.LTKM, LTKM2, 4360, max_bandwidth=800),
                STKM_ID: route(RouteKind.STKM, STKM_ID, 6001, repetition_period=100),
            },
        ),
        OTHER: ClientConfig(client_id=OTHER, max_bandwidth=1000, routes={0x0200: route(RouteKind.LTKM, 0x0200, 4400)}),
        CARD: ClientConfig(client_id=CARD, routes={STKM_ID: route(RouteKind.STKM, STKM_ID, 6101, repetition_period=250)}),
    }
    return MuxConfig(clients=clients, **kw)


class Mux:
    def __init__(self, **kw):
        self.core = MuxCore(make_config(**kw))
        self.now = 0.0

    def conn(self):
        return MuxConnection(self.core)

    def tick(self):
        return self.core.tick(self.now)








def emitted(outputs):
    return [(o.route, o.payload) for o in outputs if isinstance(o, Emit)]




def channel(conn, client=BSM, ch=1, version=3, flag=0x02, now=0.0):
    return conn.receive(m.ChannelSetup(protocol_version=version, client_id=client, data_channel_id=ch, section_TSpkt_flag=flag), now)


def stream(conn, st=1, data_id=LTKM, data_type=LTKM_TYPE, client=BSM, ch=1, now=0.0, version=3):
    return conn.receive(
        m.StreamSetup(protocol_version=version, client_id=client, data_channel_id=ch, data_stream_id=st, data_id=data_id,
                      data_type=data_type),
        now,
    )


def bw(conn, kbit, st=1, client=BSM, ch=1, now=0.0):
    return conn.receive(m.StreamBWRequest(client_id=client, data_channel_id=ch, data_stream_id=st, bandwidth=kbit), now)


def data(conn, *datagrams, st=1, data_id=LTKM, client=BSM, ch=1, now=0.0, ids=True):
    kw = dict(data_channel_id=ch, data_stream_id=st) if ids else {}
    return conn.receive(m.DataProvision(client_id=client, data_id=data_id, datagram=tuple(datagrams), **kw), now)


def ready(mux, conn, kbit=200, client=BSM, data_id=LTKM, st=1, ch=1):
    one(channel(conn, client=client, ch=ch), m.ChannelStatus)
    one(stream(conn, st=st, data_id=data_id, client=client, ch=ch), m.StreamStatus)
    assert one(bw(conn, kbit, st=st, client=client, ch=ch), m.StreamBWAllocation).bandwidth == kbit


# -- channel level ------------------------------------------------------------------------------


def test_channel_setup_echoes_client_channel_and_bcast_flag_in_its_version():
    mux = Mux()
    for version in (2, 3, 4, 5):
        conn = mux.conn()
        status = one(channel(conn, ch=version, version=version), m.ChannelStatus)
        assert (status.protocol_version, status.client_id, status.data_channel_id, status.section_TSpkt_flag) == (
            version, BSM, version, 0x02)
        assert conn.state is ServerChannelState.CHANNEL_OPEN
        conn.connection_lost(0.0)


def test_channel_setup_errors():
    mux = Mux(versions=frozenset({3}), max_channels=3, bsm_channels=2)
    conn = mux.conn()
    assert error_of(channel(conn, version=2), m.ChannelError) == 0x0002
    assert error_of(channel(conn, client=0x00010999), m.ChannelError) == 0x000E
    refused = one(channel(conn, flag=0x00), m.ChannelError)
    assert refused.error_status == (0x000D,) and refused.error_information == (b"\x00\x02",)
    assert error_of(channel(conn, flag=0x01), m.ChannelError) == 0x000D
    first = mux.conn()
    one(channel(first, ch=7), m.ChannelStatus)
    assert error_of(channel(mux.conn(), ch=7), m.ChannelError) == 0x0011  # same client, same channel id
    one(channel(mux.conn(), ch=8), m.ChannelStatus)  # client's second channel (max_channels 2)
    assert error_of(channel(mux.conn(), ch=9), m.ChannelError) == 0x0014  # client_id in use: a third one
    one(channel(mux.conn(), client=OTHER, ch=1), m.ChannelStatus)
    assert error_of(channel(mux.conn(), client=CARD, ch=1), m.ChannelError) == 0x0007  # MUX full (3)
    # one channel per TCP connection
    assert error_of(channel(first, ch=7), m.ChannelError) == 0x0011
    assert error_of(channel(first, ch=2), m.ChannelError) == 0x0007


def test_refused_channel_error_carries_the_ids_read():
    conn = Mux().conn()
    error = one(channel(conn, client=0x00010999, ch=42), m.ChannelError)
    assert (error.client_id, error.data_channel_id, error.protocol_version) == (0x00010999, 42, 3)


def test_channel_messages_before_setup_and_on_other_channels():
    mux = Mux()
    conn = mux.conn()
    assert error_of(conn.receive(m.ChannelTest(client_id=BSM, data_channel_id=1), 0), m.ChannelError) == 0x0006
    assert error_of(conn.receive(m.ChannelClose(client_id=BSM, data_channel_id=1), 0), m.ChannelError) == 0x0006
    channel(conn)
    assert error_of(conn.receive(m.ChannelTest(client_id=BSM, data_channel_id=2), 0), m.ChannelError) == 0x0006
    assert error_of(conn.receive(m.ChannelTest(client_id=OTHER, data_channel_id=1), 0), m.ChannelError) == 0x000E
    status = one(conn.receive(m.ChannelTest(client_id=BSM, data_channel_id=1), 0), m.ChannelStatus)
    assert status.section_TSpkt_flag == 0x02


def test_channel_close_frees_ids_streams_and_bandwidth():
    mux = Mux(bsm_channels=1)
    conn = mux.conn()
    ready(mux, conn, kbit=300)
    assert mux.core.allocated == 300 and mux.core.streams == 1
    assert sent(conn.receive(m.ChannelClose(client_id=BSM, data_channel_id=1), 0)) == []
    assert conn.state is ServerChannelState.NO_CHANNEL
    assert mux.core.allocated == 0 and mux.core.streams == 0 and not mux.core.channels
    ready(mux, mux.conn(), kbit=300)  # the client id, channel id and data_id are free again


def test_connection_lost_frees_everything_and_drops_the_queue_counted():
    mux = Mux()
    conn = mux.conn()
    ready(mux, conn, kbit=8)
    data(conn, b"a" * 100, b"b" * 100)
    mux.tick()  # one datagram leaves; the other waits for tokens
    outputs = conn.connection_lost(0.0)
    assert mux.core.dropped == {"stream_closed": 1}
    assert notices(outputs, "dropped")[0].fields["reason"] == "stream_closed"
    assert notices(outputs, "channel_closed")
    assert mux.core.streams == 0 and mux.core.allocated == 0 and not mux.core.channels
    assert conn.connection_lost(0.0) == []


# -- stream level -------------------------------------------------------------------------------


def test_stream_setup_echoes_ids_data_id_and_type():
    mux = Mux()
    conn = mux.conn()
    channel(conn)
    status = one(stream(conn, st=5, data_id=LTKM), m.StreamStatus)
    assert (status.client_id, status.data_channel_id, status.data_stream_id, status.data_id, status.data_type) == (
        BSM, 1, 5, LTKM, 0x00)
    status = one(stream(conn, st=6, data_id=STKM_ID, data_type=STKM_TYPE), m.StreamStatus)
    assert status.data_type == 0x02


def test_stream_setup_errors():
    mux = Mux(max_streams_per_channel=2, max_streams=3)
    conn = mux.conn()
    assert error_of(stream(conn), m.StreamError) == 0x0006  # before channel_setup
    channel(conn)
    assert error_of(stream(conn, ch=9), m.StreamError) == 0x0006
    assert error_of(stream(conn, client=OTHER), m.StreamError) == 0x000E
    assert error_of(stream(conn, data_id=0x0777), m.StreamError) == 0x0010  # no route
    assert error_of(stream(conn, data_id=LTKM, data_type=STKM_TYPE), m.StreamError) == 0x000D
    assert error_of(stream(conn, data_id=STKM_ID, data_type=LTKM_TYPE), m.StreamError) == 0x000D
    one(stream(conn, st=1, data_id=LTKM), m.StreamStatus)
    assert error_of(stream(conn, st=1, data_id=LTKM2), m.StreamError) == 0x0012  # stream id in use
    assert error_of(stream(conn, st=2, data_id=LTKM), m.StreamError) == 0x0013  # data_id in use
    one(stream(conn, st=2, data_id=LTKM2), m.StreamStatus)
    assert error_of(stream(conn, st=3, data_id=STKM_ID, data_type=STKM_TYPE), m.StreamError) == 0x0008
    # data_id in use on another connection of the same client
    second = mux.conn()
    channel(second, ch=2)
    assert error_of(stream(second, st=1, data_id=LTKM, ch=2), m.StreamError) == 0x0013
    one(stream(second, st=1, data_id=STKM_ID, data_type=STKM_TYPE, ch=2), m.StreamStatus)
    other = mux.conn()
    channel(other, client=OTHER)
    assert error_of(stream(other, client=OTHER, data_id=0x0200), m.StreamError) == 0x0009  # MUX full (3)


def test_stream_messages_on_unknown_streams():
    mux = Mux()
    conn = mux.conn()
    channel(conn)
    ids = dict(client_id=BSM, data_channel_id=1, data_stream_id=9)
    assert error_of(conn.receive(m.StreamTest(**ids), 0), m.StreamError) == 0x0005
    assert error_of(conn.receive(m.StreamCloseRequest(**ids), 0), m.StreamError) == 0x0005
    assert error_of(conn.receive(m.StreamBWRequest(bandwidth=10, **ids), 0), m.StreamError) == 0x0005
    stream(conn, st=9)
    assert one(conn.receive(m.StreamTest(**ids), 0), m.StreamStatus).data_id == LTKM
    response = one(conn.receive(m.StreamCloseRequest(**ids), 0), m.StreamCloseResponse)
    assert response.data_stream_id == 9
    assert error_of(conn.receive(m.StreamTest(**ids), 0), m.StreamError) == 0x0005


def test_bandwidth_is_granted_within_stream_client_and_total_limits():
    mux = Mux(max_bandwidth=1200, bsm_bandwidth=1000, route_bandwidth=500, default_bandwidth=50)
    conn = mux.conn()
    channel(conn)
    stream(conn, st=1, data_id=LTKM)
    stream(conn, st=2, data_id=LTKM2)
    assert mux.core.allocated == 50  # the route's default, before any request (LTKM2 has none)
    assert one(bw(conn, 2000, st=1), m.StreamBWAllocation).bandwidth == 500  # route cap
    assert one(bw(conn, 700, st=2), m.StreamBWAllocation).bandwidth == 500  # client: 1000 - 500
    assert one(bw(conn, 100, st=1), m.StreamBWAllocation).bandwidth == 100  # lowering frees bandwidth
    assert one(bw(conn, 800, st=2), m.StreamBWAllocation).bandwidth == 800  # route cap 800, client 1000 - 100
    other = mux.conn()
    channel(other, client=OTHER)
    stream(other, client=OTHER, data_id=0x0200)
    assert one(bw(other, 900, client=OTHER), m.StreamBWAllocation).bandwidth == 300  # MUX: 1200 - 900
    current = one(conn.receive(m.StreamBWRequest(client_id=BSM, data_channel_id=1, data_stream_id=2), 0), m.StreamBWAllocation)
    assert current.bandwidth == 800  # no value asked: the current allocation
    assert (mux.core.allocated, mux.core.client_allocated[BSM]) == (1200, 900)


# -- data_provision over TCP --------------------------------------------------------------------


def test_data_before_setup_is_refused_and_counted():
    mux = Mux()
    conn = mux.conn()
    assert error_of(data(conn, b"x"), m.StreamError) == 0x0006  # no channel yet, stream ids given
    assert error_of(data(conn, b"x", ids=False), m.ChannelError) == 0x0006  # no channel, no ids
    channel(conn)
    assert error_of(data(conn, b"x", st=4), m.StreamError) == 0x0005  # channel, but no such stream
    assert error_of(data(conn, b"x", ids=False), m.ChannelError) == 0x0010  # no stream for the data_id
    stream(conn, st=1)
    assert error_of(data(conn, b"x", data_id=LTKM2), m.StreamError) == 0x0010  # stream 1 is data_id 0x0100
    assert error_of(data(conn, b"x", client=OTHER), m.StreamError) == 0x000E
    assert error_of(data(conn, b"x", ch=3), m.StreamError) == 0x0006
    assert mux.core.dropped == {"refused": 7}


def test_data_provision_with_or_without_stream_ids():
    mux = Mux()
    conn = mux.conn()
    ready(mux, conn, kbit=500)
    assert data(conn, b"one", now=0.0) == []
    assert data(conn, b"two", ids=False, now=0.0) == []
    mux.now = 1.0
    assert emitted(mux.tick()) == [((BSM, LTKM), b"one"), ((BSM, LTKM), b"two")]


def test_over_long_datagram_is_refused_with_invalid_value_and_the_rest_kept():
    mux = Mux(max_datagram_size=100)
    conn = mux.conn()
    ready(mux, conn, kbit=500)
    error = one(data(conn, b"a" * 100, b"b" * 101, b"c"), m.StreamError)
    assert error.error_status == (0x000D,) and error.error_information == (b"\x00\x05",)
    mux.now = 1.0
    assert [p for _r, p in emitted(mux.tick())] == [b"a" * 100, b"c"]
    assert mux.core.dropped == {"too_long": 1}


def test_overrun_draws_exceeded_bandwidth_and_queue_full_drops_are_counted():
    mux = Mux(overrun_limit=3, queue_datagrams=10, ingress_burst=0.5)
    conn = mux.conn()
    ready(mux, conn, kbit=8)  # 1000 bytes/s, 500 bytes of burst
    replies = []
    for k in range(20):  # 20 x 200 bytes at once: 4000 bytes, 4 s worth
        replies += sent(data(conn, bytes([k]) * 200, now=0.0))
    codes = [r.error_status for r in replies]
    assert codes and all(c == (0x000F,) for c in codes)
    # messages 1-3 conform (500 bytes of burst), then every 3rd overrun in a row gets 0x000F
    assert len(codes) == (20 - 3) // 3
    assert isinstance(replies[0], m.StreamError) and replies[0].data_stream_id == 1
    assert mux.core.counters["overruns"] == 17
    assert mux.core.dropped == {"queue_full": 10}
    stats = mux.core.route_stats((BSM, LTKM))
    assert stats["datagrams_in"] == 20 and stats["queued"] + stats["datagrams_out"] == 10


def test_a_sender_within_its_allocation_never_overruns_and_loses_nothing():
    mux = Mux(overrun_limit=1)
    conn = mux.conn()
    ready(mux, conn, kbit=80)  # 10000 bytes/s
    out = []
    for k in range(200):  # 500-byte LTKMs every 50 ms = exactly 10000 bytes/s
        mux.now = k * 0.05
        assert sent(data(conn, k.to_bytes(2, "big") * 250, now=mux.now)) == []
        out += emitted(mux.tick())
    mux.now += 1.0
    out += emitted(mux.tick())
    assert len(out) == 200 and mux.core.counters["overruns"] == 0 and not mux.core.dropped


def test_egress_is_paced_at_the_allocation():
    mux = Mux(queue_datagrams=5000, queue_bytes=10**7, overrun_limit=10**6)
    conn = mux.conn()
    ready(mux, conn, kbit=200)  # 25000 bytes/s
    for k in range(1500):
        data(conn, bytes([k % 256]) * 250)
    times = []
    for _ in range(100_000):
        for _route, payload in emitted(mux.tick()):
            times.append((mux.now, len(payload)))
        wake = mux.core.next_wakeup(mux.now)
        if wake is None or mux.now > 12.0:
            break
        mux.now = wake + 0.0007  # timers always fire a little late
    window = [n for t, n in times if 1.0 < t <= 11.0]
    rate = sum(window) * 8 / 10.0 / 1000
    assert abs(rate - 200) / 200 < 0.01, rate


def test_unthrottled_emits_at_once_without_policing():
    mux = Mux(unthrottled=True, overrun_limit=1)
    conn = mux.conn()
    ready(mux, conn, kbit=1)
    outputs = []
    for k in range(100):
        outputs += data(conn, bytes([k]) * 1000)
    assert len(emitted(outputs)) == 100 and sent(outputs) == []
    assert mux.core.counters["datagrams_out"] == 100


# -- STKM carousel ------------------------------------------------------------------------------


def test_current_stkm_repeats_at_its_period_and_is_replaced_at_once():
    mux = Mux()
    conn = mux.conn()
    channel(conn)
    stream(conn, st=1, data_id=STKM_ID, data_type=STKM_TYPE)
    data(conn, b"STKM-n", data_id=STKM_ID, now=0.0)
    out = []
    for step in range(0, 35):  # 0 .. 340 ms, 10 ms steps
        mux.now = step * 0.01
        out += [(round(mux.now, 2), p) for _r, p in emitted(mux.tick())]
    assert out == [(0.0, b"STKM-n"), (0.1, b"STKM-n"), (0.2, b"STKM-n"), (0.3, b"STKM-n")]
    mux.now = 0.34
    data(conn, b"STKM-n+1", data_id=STKM_ID, now=mux.now)  # the SCS signals the switch
    assert emitted(mux.tick()) == [((BSM, STKM_ID), b"STKM-n+1")]
    mux.now = 0.44
    assert emitted(mux.tick()) == [((BSM, STKM_ID), b"STKM-n+1")]


def test_stkm_switch_soon_after_an_emission_waits_a_quarter_period_and_superseded_ones_count():
    mux = Mux()
    conn = mux.conn()
    channel(conn)
    stream(conn, st=1, data_id=STKM_ID, data_type=STKM_TYPE)
    data(conn, b"A", data_id=STKM_ID)
    assert emitted(mux.tick()) == [((BSM, STKM_ID), b"A")]
    mux.now = 0.01
    data(conn, b"B", data_id=STKM_ID, now=mux.now)
    data(conn, b"C", data_id=STKM_ID, now=mux.now)  # B never went out
    assert emitted(mux.tick()) == []
    assert mux.core.next_wakeup(mux.now) == pytest.approx(0.025)
    mux.now = 0.025
    assert emitted(mux.tick()) == [((BSM, STKM_ID), b"C")]
    assert mux.core.dropped == {"superseded": 1}


def test_stkm_set_of_several_datagrams_is_repeated_together():
    mux = Mux()
    conn = mux.conn()
    channel(conn)
    stream(conn, st=1, data_id=STKM_ID, data_type=STKM_TYPE)
    data(conn, b"current", b"next", data_id=STKM_ID)
    assert [p for _r, p in emitted(mux.tick())] == [b"current", b"next"]


def test_stkm_stays_on_air_when_its_scs_goes_away():
    mux = Mux()
    conn = mux.conn()
    channel(conn)
    stream(conn, st=1, data_id=STKM_ID, data_type=STKM_TYPE)
    data(conn, b"last", data_id=STKM_ID)
    mux.tick()
    conn.connection_lost(0.05)
    mux.now = 0.1
    assert emitted(mux.tick()) == [((BSM, STKM_ID), b"last")]


def test_in_process_stkm_api_schedules_switches():
    mux = Mux(max_pending_stkms=2)
    core = mux.core
    assert core.submit_stkm(CARD, STKM_ID, b"n", None, 0.0) == []
    assert emitted(mux.tick()) == [((CARD, STKM_ID), b"n")]
    core.submit_stkm(CARD, STKM_ID, b"n+1", 1.0, 0.0)
    core.submit_stkm(CARD, STKM_ID, b"n+2", 2.0, 0.0)
    overflow = core.submit_stkm(CARD, STKM_ID, b"n+3", 3.0, 0.0)
    assert notices(overflow, "dropped")[0].fields["reason"] == "pending_overflow"
    seen = []
    while mux.now < 2.6:
        seen += [(round(mux.now, 3), p) for _r, p in emitted(mux.tick())]
        mux.now = core.next_wakeup(mux.now)
    assert (1.0, b"n+1") in seen and (2.0, b"n+2") in seen
    assert [t for t, p in seen if t < 1.0] == [0.25, 0.5, 0.75]  # 250 ms period (0.0 went out above)
    assert [p for t, p in seen if 1.0 <= t < 2.0] == [b"n+1"] * 4
    with pytest.raises(UnknownRoute):
        core.submit_stkm(CARD, 99, b"x", None, 0.0)
    with pytest.raises(UnknownRoute):
        core.submit_stkm(BSM, LTKM, b"x", None, 0.0)  # an LTKM route is not a carousel
    with pytest.raises(ValueError):
        core.submit_stkm(CARD, STKM_ID, b"", None, 0.0)


def test_in_process_repetition_period_from_the_scs_applies_from_its_switch():
    mux = Mux()
    core = mux.core
    core.submit_stkm(CARD, STKM_ID, b"n", None, 0.0)  # configured period: 250 ms
    core.submit_stkm(CARD, STKM_ID, b"n+1", 1.0, 0.0, repetition_ms=100)
    seen = []
    while mux.now < 1.35:
        seen += [round(mux.now, 3) for _r, _p in emitted(mux.tick())]
        mux.now = core.next_wakeup(mux.now)
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.1, 1.2, 1.3]
    with pytest.raises(ValueError):
        core.submit_stkm(CARD, STKM_ID, b"x", None, 0.0, repetition_ms=0)


# -- UDP ----------------------------------------------------------------------------------------


def udp(mux, message_or_error):
    return mux.core.receive_udp(message_or_error, mux.now)


def udp_data(*datagrams, client=BSM, data_id=LTKM, version=3, **ids):
    return m.DataProvision(protocol_version=version, client_id=client, data_id=data_id, datagram=tuple(datagrams), **ids)


def delivered(outputs):
    return [(o.connection, o.message) for o in outputs if isinstance(o, Deliver)]


def test_udp_data_for_a_stream_set_up_over_tcp_is_accepted():
    mux = Mux()
    conn = mux.conn()
    ready(mux, conn, kbit=500)
    assert udp(mux, udp_data(b"via udp")) == []
    assert udp(mux, udp_data(b"ids too", data_channel_id=1, data_stream_id=1)) == []
    mux.now = 1.0
    assert [p for _r, p in emitted(mux.tick())] == [b"via udp", b"ids too"]


def test_udp_unknown_client_or_data_id_is_dropped_counted_and_reported_over_tcp():
    mux = Mux(udp_error_interval=1.0)
    outputs = udp(mux, udp_data(b"x", client=0x00010999))
    assert delivered(outputs) == [] and mux.core.dropped == {"udp_unknown": 1}  # nobody to tell
    conn = mux.conn()
    ready(mux, conn)
    reports = delivered(udp(mux, udp_data(b"x", data_id=0x0777)))
    assert [(c, type(msg), msg.error_status) for c, msg in reports] == [(conn, m.ChannelError, (0x0010,))]
    mux.now = 0.5
    assert delivered(udp(mux, udp_data(b"x", data_id=LTKM2))) == []  # rate-limited report
    mux.now = 1.5
    report = delivered(udp(mux, udp_data(b"x", data_id=LTKM2, data_channel_id=1, data_stream_id=4)))[0][1]
    assert isinstance(report, m.StreamError) and report.error_status == (0x0010,) and report.data_stream_id == 4
    assert mux.core.dropped == {"udp_unknown": 4}
    assert emitted(mux.tick()) == []


def test_udp_for_a_stream_whose_tcp_connection_is_gone_is_refused():
    mux = Mux()
    conn = mux.conn()
    ready(mux, conn)
    conn.connection_lost(0.0)
    assert delivered(udp(mux, udp_data(b"late"))) == []
    assert mux.core.dropped == {"udp_unknown": 1}


def test_udp_ids_version_and_message_type_must_fit():
    mux = Mux(udp_error_interval=0.0)
    conn = mux.conn()
    ready(mux, conn)
    cases = [
        (udp_data(b"x", data_channel_id=2, data_stream_id=1), m.StreamError, 0x0006),
        (udp_data(b"x", data_channel_id=1, data_stream_id=2), m.StreamError, 0x0005),
        (udp_data(b"x", version=2), m.ChannelError, 0x0002),
        (m.ChannelTest(client_id=BSM, data_channel_id=1), m.ChannelError, 0x0001),
    ]
    for message, cls, code in cases:
        (connection, reply), = delivered(udp(mux, message))
        assert connection is conn and isinstance(reply, cls) and reply.error_status == (code,)
    assert mux.core.dropped == {"udp_unknown": 3, "udp_invalid": 1}


def test_undecodable_udp_is_reported_with_the_codec_code():
    mux = Mux()
    conn = mux.conn()
    ready(mux, conn)
    frame = bytearray(udp_data(b"x").encode())
    frame[13:15] = b"\x0a\x00"  # data_id's parameter_type becomes 0x0A00: unknown parameter
    with pytest.raises(wire.PeerProtocolError) as caught:
        wire.decode_datagram(bytes(frame))
    assert caught.value.client_id == BSM
    (connection, reply), = delivered(udp(mux, caught.value))
    assert connection is conn and reply.error_status == (0x000A,) and mux.core.dropped == {"udp_invalid": 1}
    frame[0] = 9  # and an unsupported version: no client_id can be read, nobody is told
    with pytest.raises(wire.PeerProtocolError) as caught:
        wire.decode_datagram(bytes(frame))
    assert delivered(udp(mux, caught.value)) == [] and mux.core.dropped == {"udp_invalid": 2}


# -- drops are logged, rate-limited, and flushed -----------------------------------------------


def test_drop_logging_first_at_once_then_one_summary_per_interval():
    mux = Mux(drop_log_interval=1.0)
    first = udp(mux, udp_data(b"x", client=0x00010999))
    assert notices(first, "dropped")[0].fields["count"] == 1
    for _ in range(5):
        assert notices(udp(mux, udp_data(b"x", client=0x00010999)), "dropped") == []
    assert mux.core.next_wakeup(mux.now) == pytest.approx(1.0)
    mux.now = 1.0
    summary = notices(mux.tick(), "dropped")
    assert [(n.fields["count"], n.fields["total"], n.level) for n in summary] == [(5, 6, "warn")]
    assert mux.core.next_wakeup(mux.now) is None


def test_datagrams_are_conserved_in_out_queued_or_dropped():
    mux = Mux(queue_datagrams=20, max_datagram_size=300, overrun_limit=4)
    conn = mux.conn()
    ready(mux, conn, kbit=16)
    for k in range(60):
        mux.now = k * 0.01
        data(conn, bytes([k]) * (200 if k % 7 else 400), now=mux.now)
        mux.tick()
    conn.receive(m.StreamCloseRequest(client_id=BSM, data_channel_id=1, data_stream_id=1), mux.now)
    c = mux.core.counters
    assert c["datagrams_in"] == 60
    assert c["datagrams_out"] + sum(mux.core.dropped.values()) == 60
    assert set(mux.core.dropped) <= {"too_long", "queue_full", "stream_closed"}


# -- robustness ---------------------------------------------------------------------------------


def test_invalid_messages_in_a_row_close_the_connection():
    mux = Mux(max_invalid_messages=3)
    conn = mux.conn()
    channel(conn)
    for _ in range(2):
        assert not [o for o in conn.receive(m.ChannelTest(client_id=BSM, data_channel_id=9), 0) if isinstance(o, Close)]
    outputs = conn.receive(m.ChannelTest(client_id=BSM, data_channel_id=9), 0)
    assert isinstance(outputs[-1], Close) and conn.state is ServerChannelState.NO_CHANNEL and not mux.core.channels


def test_a_valid_message_resets_the_invalid_count():
    mux = Mux(max_invalid_messages=2)
    conn = mux.conn()
    channel(conn)
    for _ in range(5):
        conn.receive(m.ChannelTest(client_id=BSM, data_channel_id=9), 0)
        conn.receive(m.ChannelTest(client_id=BSM, data_channel_id=1), 0)
    assert conn.state is ServerChannelState.CHANNEL_OPEN


def test_version_mismatch_wrong_direction_and_codec_errors():
    mux = Mux()
    conn = mux.conn()
    channel(conn, version=3)
    assert error_of(conn.receive(m.ChannelTest(protocol_version=2, client_id=BSM, data_channel_id=1), 0), m.ChannelError) == 2
    stream(conn)
    wrong = m.StreamBWAllocation(client_id=BSM, data_channel_id=1, data_stream_id=1, bandwidth=5)
    assert error_of(conn.receive(wrong, 0), m.ChannelError) == 0x0001
    assert error_of(conn.receive(m.StreamCloseResponse(client_id=BSM, data_channel_id=1, data_stream_id=1), 0), m.ChannelError) == 1
    framer = wire.Framer(interface=wire.Interface.EMMG_MUX)
    bad = bytearray(m.ChannelTest(client_id=BSM, data_channel_id=1).encode())
    bad[6] = 0x0A  # parameter_type 0x0A00: not allowed
    try:
        wire.decode(framer.feed(bytes(bad))[0], wire.Interface.EMMG_MUX)
    except wire.PeerProtocolError as exc:
        assert error_of(conn.receive(exc, 0), m.ChannelError) == 0x000A


def test_peer_status_and_errors_are_noted_without_reply():
    mux = Mux()
    conn = mux.conn()
    channel(conn)
    for message in (
        m.ChannelStatus(client_id=BSM, data_channel_id=1, section_TSpkt_flag=2),
        m.StreamStatus(client_id=BSM, data_channel_id=1, data_stream_id=1, data_id=LTKM, data_type=0),
        m.ChannelError(client_id=BSM, data_channel_id=1, error_status=(0x7000,)),
        m.StreamError(client_id=BSM, data_channel_id=1, data_stream_id=1, error_status=(0x8001,)),
    ):
        outputs = conn.receive(message, 0)
        assert sent(outputs) == [] and notices(outputs)


def test_a_misbehaving_client_does_not_affect_another():
    mux = Mux(overrun_limit=2, queue_datagrams=8, udp_error_interval=0.0, max_invalid_messages=0)
    good, bad = mux.conn(), mux.conn()
    ready(mux, good, kbit=80, client=OTHER, data_id=0x0200)  # 10000 bytes/s
    ready(mux, bad, kbit=8)
    received = []
    for k in range(100):
        mux.now = k * 0.05
        # the bad client: floods, sends garbage and UDP for others, tests unknown streams
        for _ in range(5):
            data(bad, b"F" * 600, now=mux.now)
        bad.receive(m.ChannelTest(client_id=BSM, data_channel_id=77), mux.now)
        bad.receive(m.StreamTest(client_id=BSM, data_channel_id=1, data_stream_id=55), mux.now)
        udp(mux, udp_data(b"spoof", client=BSM, data_id=0x0777))
        udp(mux, udp_data(b"stolen", client=OTHER, data_id=0x0200, data_channel_id=9, data_stream_id=9))
        # the good client, within its allocation: one 500-byte LTKM per 50 ms
        assert sent(data(good, k.to_bytes(2, "big") * 250, client=OTHER, data_id=0x0200, now=mux.now)) == []
        received += [p for r, p in emitted(mux.tick()) if r == (OTHER, 0x0200)]
    mux.now += 1.0
    received += [p for r, p in emitted(mux.tick()) if r == (OTHER, 0x0200)]
    assert received == [k.to_bytes(2, "big") * 250 for k in range(100)]
    assert mux.core.route_stats((OTHER, 0x0200))["allocation"] == 80
    assert mux.core.dropped["queue_full"] > 0 and mux.core.counters["overruns"] > 0
