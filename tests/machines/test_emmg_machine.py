"""EMMG machine: the setup sequence, tests answered, pacing, TCP/UDP data, errors, reconnect, shutdown."""

from __future__ import annotations

import pytest

from bcast_sp4 import wire
from bcast_sp4.machines.emmg import Delivered, EMMGClient, EMMGConfig, EMMGState, EMMGStreamConfig, Ready, SendDatagram
from bcast_sp4.machines.outputs import CancelTimer, Close, Notify, Send, StartTimer
from bcast_sp4.wire import emmg_mux as m
from tests.doubles import of, one, sent

CLIENT = 0x00010001


def make(udp=False, streams=((1, 0x100, 200),), **kw):
    config = EMMGConfig(
        client_id=CLIENT,
        streams=tuple(EMMGStreamConfig(data_stream_id=s, data_id=d, bandwidth=b, max_queue=kw.pop("max_queue", 100))
                      for s, d, b in streams),
        udp=udp,
        **kw,
    )
    return EMMGClient(config)








IDS = dict(client_id=CLIENT, data_channel_id=1)


def channel_status(**kw):
    return m.ChannelStatus(**{**IDS, "section_TSpkt_flag": 2, **kw})


def stream_status(st=1, data_id=0x100, data_type=0, **kw):
    return m.StreamStatus(**{**IDS, "data_stream_id": st, "data_id": data_id, "data_type": data_type, **kw})


def allocation(st=1, kbit=200, **kw):
    return m.StreamBWAllocation(**{**IDS, "data_stream_id": st, "bandwidth": kbit, **kw})


def setup(session, now=0.0, kbit=200):
    """Drive a one-stream session to READY; return the outputs of the last step."""
    session.connection_made(now)
    session.receive(channel_status(), now)
    session.receive(stream_status(), now)
    return session.receive(allocation(kbit=kbit), now)


def test_setup_sequence_for_two_streams():
    s = make(streams=((1, 0x100, 200), (2, 0x101, 64)))
    out = s.connection_made(0.0)
    setup_msg = one(out, m.ChannelSetup)
    assert (setup_msg.client_id, setup_msg.data_channel_id, setup_msg.section_TSpkt_flag) == (CLIENT, 1, 0x02)
    assert StartTimer("response", 5.0) in out and s.state is EMMGState.WAIT_CHANNEL_STATUS
    st = one(s.receive(channel_status(), 0.0), m.StreamSetup)
    assert (st.data_stream_id, st.data_id, st.data_type) == (1, 0x100, 0x00)
    st = one(s.receive(stream_status(), 0.0), m.StreamSetup)
    assert (st.data_stream_id, st.data_id) == (2, 0x101)
    req = one(s.receive(stream_status(st=2, data_id=0x101), 0.0), m.StreamBWRequest)
    assert (req.data_stream_id, req.bandwidth) == (1, 200) and s.state is EMMGState.WAIT_BW_ALLOCATION
    req = one(s.receive(allocation(kbit=150), 0.0), m.StreamBWRequest)
    assert (req.data_stream_id, req.bandwidth) == (2, 64)
    out = s.receive(allocation(st=2, kbit=64), 0.0)
    assert of(out, Ready) and CancelTimer("response") in out and s.state is EMMGState.READY
    assert s.stats()[0x100]["allocation"] == 150 and s.stats()[0x101]["allocation"] == 64


@pytest.mark.parametrize(
    "step, reply",
    [
        (0, channel_status(client_id=0x00010002)),
        (0, channel_status(section_TSpkt_flag=0)),
        (0, m.ChannelError(**IDS, error_status=(0x000E,))),
        (1, stream_status(data_id=0x999)),
        (1, m.StreamError(**IDS, data_stream_id=1, error_status=(0x0013,))),
        (2, allocation(st=7)),
        (2, m.StreamError(**IDS, data_stream_id=1, error_status=(0x0005,))),
        (1, allocation()),  # an answer out of order
    ],
)
def test_setup_refused_or_confused_closes_the_connection(step, reply):
    s = make()
    s.connection_made(0.0)
    for message in [channel_status(), stream_status()][:step]:
        s.receive(message, 0.0)
    out = s.receive(reply, 0.0)
    assert isinstance(out[-1], Close) and not sent(out)
    assert of(out, Notify)[0].level == "warn"


def test_response_timeout_closes():
    s = make()
    s.connection_made(0.0)
    out = s.timer_fired("response", 5.0)
    assert isinstance(out[-1], Close)
    setup(s)
    assert s.timer_fired("response", 10.0) == []  # READY: a stale timer is ignored


def test_tests_from_the_mux_are_answered():
    s = make()
    setup(s)
    status = one(s.receive(m.ChannelTest(**IDS), 1.0), m.ChannelStatus)
    assert (status.client_id, status.data_channel_id, status.section_TSpkt_flag) == (CLIENT, 1, 0x02)
    status = one(s.receive(m.StreamTest(**IDS, data_stream_id=1), 1.0), m.StreamStatus)
    assert (status.data_stream_id, status.data_id, status.data_type) == (1, 0x100, 0x00)
    assert one(s.receive(m.StreamTest(**IDS, data_stream_id=9), 1.0), m.StreamError).error_status == (0x0005,)
    assert one(s.receive(m.ChannelTest(client_id=CLIENT, data_channel_id=4), 1.0), m.ChannelError).error_status == (6,)
    assert one(s.receive(m.ChannelTest(client_id=0x10009, data_channel_id=1), 1.0), m.ChannelError).error_status == (0xE,)


def test_tcp_data_carries_all_ids_and_delivers_tokens():
    s = make()
    setup(s)
    assert s.enqueue(0x100, b"LTKM-1", token="t1") and s.enqueue(0x100, b"LTKM-2")
    out = s.poke(0.0)
    provision = sent(out)[0]
    assert isinstance(provision, m.DataProvision)
    assert (provision.data_channel_id, provision.data_stream_id, provision.data_id, provision.datagram) == (
        1, 1, 0x100, (b"LTKM-1",))
    assert Delivered(("t1",)) in out
    assert of(out, StartTimer)[-1].key == "pace"


def test_udp_data_carries_client_and_data_id_only_and_tokens_aligned():
    s = make(udp=True, datagrams_per_message=3)
    setup(s)
    for k in range(3):
        s.enqueue(0x100, bytes([k]) * 10, token=None if k == 1 else f"t{k}")
    out = s.poke(0.0)
    (datagram,) = of(out, SendDatagram)
    message = datagram.message
    assert (message.data_channel_id, message.data_stream_id, message.data_id) == (None, None, 0x100)
    assert message.datagram == (b"\x00" * 10, b"\x01" * 10, b"\x02" * 10)
    assert datagram.tokens == ("t0", None, "t2") and not sent(out) and not of(out, Delivered)
    assert len(message.encode()) <= 65507


def test_failed_udp_send_requeues_in_order():
    s = make(udp=True)
    setup(s)
    for k in range(3):
        s.enqueue(0x100, bytes([k]), token=k)
    out = s.poke(0.0)
    (first,) = of(out, SendDatagram)
    s.requeue(0x100, first.message.datagram, first.tokens)
    assert [d for d, _t in s.streams[1].queue] == [b"\x00", b"\x01", b"\x02"]
    assert s.stats()[0x100]["sent_datagrams"] == 0


def test_sending_never_exceeds_the_allocation():
    s = make(max_queue=10_000)
    setup(s, kbit=200)  # 25000 bytes/s, 10 ms burst
    for k in range(2000):
        s.enqueue(0x100, k.to_bytes(2, "big") * 125)  # 250 bytes
    now, log = 0.0, []
    timers = {}
    out = s.poke(now)
    while now < 10.0:
        for o in out:
            if isinstance(o, Send):
                log.append((now, sum(len(d) for d in o.message.datagram)))
            elif isinstance(o, StartTimer):
                timers[o.key] = now + o.seconds
        now = timers.pop("pace") + 0.0013  # late timers
        out = s.timer_fired("pace", now)
    total = sum(n for t, n in log if t < 10.0)
    assert abs(total / 10.0 - 25_000) / 25_000 < 0.01
    for i, (start, _n) in enumerate(log):
        window = sum(n for t, n in log[i:] if t < start + 1.0)
        assert window <= 25_000 * 1.0 + 250 + 250


def test_allocation_zero_stops_and_an_unsolicited_one_resumes():
    s = make()
    out = setup(s, kbit=0)
    assert of(out, Notify)[0].level == "warn"
    s.enqueue(0x100, b"waiting")
    assert sent(s.poke(1.0)) == [] and not of(s.poke(1.0), StartTimer)
    out = s.receive(allocation(kbit=100), 2.0)
    assert [msg.datagram for msg in sent(out)] == [(b"waiting",)]


def test_allocation_without_value_means_what_was_requested():
    s = make()
    setup(s)
    s.receive(allocation(kbit=None), 1.0)
    assert s.stats()[0x100]["allocation"] == 200


def test_queues_survive_reconnection_and_data_resumes_after_setup():
    s = make()
    setup(s)
    for k in range(5):
        s.enqueue(0x100, bytes([k]) * 5000)  # 5000 bytes each: one per 200 ms at 200 kbit/s
    first = sent(s.poke(0.0))
    assert len(first) == 1
    out = s.connection_lost(0.1)
    assert CancelTimer("pace") in out and s.state is EMMGState.DISCONNECTED
    assert s.poke(0.2) == []  # nothing goes out while disconnected
    out = setup(s, now=1.0)  # READY sends at once what the allocation allows
    resumed = [msg.datagram[0][0] for msg in sent(out + s.poke(1.0))]
    assert resumed == [1] and s.queued(0x100) == 3
    assert [msg.datagram[0][0] for msg in sent(s.timer_fired("pace", 1.2))] == [2]


def test_errors_in_ready_state():
    s = make()
    setup(s)
    out = s.receive(m.StreamError(**IDS, data_stream_id=1, error_status=(0x000F,)), 1.0)
    assert of(out, Notify)[0].event == "exceeded_bandwidth" and not of(out, Close)
    out = s.receive(m.ChannelError(**IDS, error_status=(0x8007,)), 1.0)
    assert of(out, Notify)[0].event == "peer_error" and not of(out, Close)
    out = s.receive(m.ChannelError(**IDS, error_status=(0x7001,)), 1.0)
    assert isinstance(out[-1], Close)


def test_invalid_messages_are_answered_with_emmg_codes():
    s = make(max_invalid_messages=3)
    setup(s)
    wrong = m.StreamSetup(**IDS, data_stream_id=1, data_id=1, data_type=0)
    assert one(s.receive(wrong, 1.0), m.ChannelError).error_status == (0x0001,)
    assert one(s.receive(m.ChannelTest(protocol_version=2, **IDS), 1.0), m.ChannelError).error_status == (0x0002,)
    bad = bytes.fromhex("030012000d" "00010003010001" "000300020001")  # a 3-byte client_id
    with pytest.raises(wire.PeerProtocolError) as caught:
        wire.decode(bad, wire.Interface.EMMG_MUX)
    out = s.receive(caught.value, 1.0)
    assert one(out, m.ChannelError).error_status == (0x000B,) and isinstance(out[-1], Close)


def test_shutdown_over_tcp_closes_streams_then_channel():
    s = make(streams=((1, 0x100, 200), (2, 0x101, 64)))
    s.connection_made(0.0)
    s.receive(channel_status(), 0.0)
    s.receive(stream_status(), 0.0)
    s.receive(stream_status(st=2, data_id=0x101), 0.0)
    s.receive(allocation(), 0.0)
    s.receive(allocation(st=2, kbit=64), 0.0)
    requests = sent(s.shutdown(1.0))
    assert [type(r) for r in requests] == [m.StreamCloseRequest] * 2 and s.state is EMMGState.CLOSING
    assert s.receive(m.StreamCloseResponse(**IDS, data_stream_id=1), 1.0) == []
    out = s.receive(m.StreamCloseResponse(**IDS, data_stream_id=2), 1.0)
    assert isinstance(sent(out)[0], m.ChannelClose) and isinstance(out[-1], Close) and s.state is EMMGState.CLOSED
    assert s.receive(m.ChannelTest(**IDS), 2.0) == [] and s.connection_made(3.0) == [Close("session closed", "info")]


def test_shutdown_over_udp_waits_for_the_data_to_land_first():
    s = make(udp=True, udp_end_wait=0.1)
    setup(s)
    out = s.shutdown(1.0)
    assert StartTimer("udp_end_wait", 0.1) in out and not sent(out) and s.state is EMMGState.DRAINING
    assert isinstance(one(s.timer_fired("udp_end_wait", 1.1), m.StreamCloseRequest), m.StreamCloseRequest)


def test_shutdown_before_ready():
    s = make()
    s.connection_made(0.0)
    s.receive(channel_status(), 0.0)
    out = s.shutdown(0.5)
    assert isinstance(sent(out)[0], m.ChannelClose) and isinstance(out[-1], Close)
    assert make().shutdown(0.0) == []


def test_enqueue_limits():
    s = make(max_queue=2)
    assert s.enqueue(0x100, b"a") and s.enqueue(0x100, b"b") and not s.enqueue(0x100, b"c")
    assert s.room(0x100) == 0
    with pytest.raises(ValueError):
        s.enqueue(0x100, b"")
    with pytest.raises(ValueError):
        s.enqueue(0x100, bytes(s.config.max_datagram + 1))
    udp = make(udp=True)
    assert udp.config.max_datagram == 65507 - 5 - 8 - 6 - 4
    udp.enqueue(0x100, bytes(udp.config.max_datagram))
    with pytest.raises(KeyError):
        s.enqueue(0x999, b"x")


def test_discard_queued_empties_one_stream_s_queue_and_says_how_many():
    s = make(streams=((1, 0x100, 200), (2, 0x101, 200)))
    for ltkm in (b"a", b"b", b"c"):
        s.enqueue(0x100, ltkm)
    s.enqueue(0x101, b"other")
    assert s.discard_queued(0x100) == 3 and s.queued(0x100) == 0 and s.room(0x100) == 100
    assert s.queued(0x101) == 1 and s.discard_queued(0x100) == 0
    s.connection_made(0.0)
    for answer in (channel_status(), stream_status(), stream_status(st=2, data_id=0x101), allocation()):
        s.receive(answer, 0.0)
    out = s.receive(allocation(st=2), 0.0)  # READY: only what is still queued goes out
    assert of(out, Ready) and [msg.datagram for msg in sent(out) if isinstance(msg, m.DataProvision)] == [(b"other",)]
    with pytest.raises(KeyError):
        s.discard_queued(0x999)


def test_config_checks():
    with pytest.raises(ValueError):
        make(streams=())
    with pytest.raises(ValueError):
        make(streams=((1, 5, 10), (1, 6, 10)))
    with pytest.raises(ValueError):
        make(streams=((1, 5, 10), (2, 5, 10)))
    with pytest.raises(ValueError):
        make(protocol_version=1)


def test_shutdown_close_timeout_still_closes_the_channel_in_order():
    s = make(close_timeout=2.0)
    setup(s)
    out = s.shutdown(1.0)
    assert StartTimer("response", 2.0) in out and s.state is EMMGState.CLOSING
    out = s.timer_fired("response", 3.0)
    assert [type(x) for x in sent(out)] == [m.ChannelClose] and isinstance(out[-1], Close)
    assert [n.fields["unanswered"] for n in of(out, Notify) if n.event == "close_timeout"] == [[1]]
    assert s.state is EMMGState.CLOSED


@pytest.mark.parametrize("reply, reason", [
    (channel_status(section_TSpkt_flag=1), "MUX answered section_TSpkt_flag 1 (TS packets); BCAST LTKMs need 0x02"),
    (channel_status(section_TSpkt_flag=0), "MUX answered section_TSpkt_flag 0 (sections); BCAST LTKMs need 0x02"),
    (channel_status(data_channel_id=9), "MUX answered data_channel_id 9; we sent 1"),
    (channel_status(client_id=0x00010002), "MUX answered client_id 0x00010002; we sent 0x00010001"),
    (m.ChannelError(**IDS, error_status=(0x000D,), error_information=(b"\x00\x02",)),
     "MUX refused channel_setup: channel_error 0x000d (invalid value for DVB parameter) about section_TSpkt_flag"),
])
def test_a_failed_setup_names_the_field_and_both_values(reply, reason):
    s = make()
    s.connection_made(0.0)
    out = s.receive(reply, 0.0)
    (note,) = of(out, Notify)
    assert note.fields["reason"] == reason and note.level == "warn"
    assert isinstance(out[-1], Close) and reason in out[-1].reason


def test_a_failed_stream_setup_names_each_differing_field():
    s = make()
    s.connection_made(0.0)
    s.receive(channel_status(), 0.0)
    out = s.receive(stream_status(data_id=0x999, data_type=1), 0.0)
    assert of(out, Notify)[0].fields["reason"] == "MUX answered data_id 0x0999; we sent 0x0100; MUX answered data_type 1; we sent 0"


def test_shutdown_mid_setup_closes_the_streams_already_set_up():
    s = make(streams=((1, 0x100, 200), (2, 0x101, 64)))
    s.connection_made(0.0)
    s.receive(channel_status(), 0.0)
    s.receive(stream_status(), 0.0)  # stream 1 set up, stream 2's stream_setup in flight
    out = s.shutdown(0.5)
    assert [(type(x), x.data_stream_id) for x in sent(out)] == [(m.StreamCloseRequest, 1)] and s.state is EMMGState.CLOSING
    out = s.receive(m.StreamCloseResponse(**IDS, data_stream_id=1), 0.6)
    assert [type(x) for x in sent(out)] == [m.ChannelClose] and isinstance(out[-1], Close)
