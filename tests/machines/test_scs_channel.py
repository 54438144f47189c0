"""The SCS channel machine: every state x input of its table, every channel_error / stream_error code."""

from __future__ import annotations

import pytest

from bcast_sp4.machines.outputs import CancelTimer, Close, Notify, Send, StartTimer
from bcast_sp4.machines.scs_channel import ChannelTimer, ChannelTimerKind, SCSChannel, SCSChannelState, SCSStreamState
from bcast_sp4.machines.scs_records import (
    ChannelSpec,
    ChannelUp,
    ECMArrived,
    LinkSpec,
    ProvisionFailed,
    RequestCWProvision,
    StreamDown,
    StreamUp,
    Timing,
)
from bcast_sp4.wire import InvalidMessage, UnknownParameterType
from bcast_sp4.wire import ecmg_scs as m
from bcast_sp4.wire.params import CPCWCombination

CH = 7
SCID = 0x00010001
CHANNEL_CODES = [0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x0008, 0x0009, 0x000A, 0x000B, 0x000C,
                 0x000D, 0x000E, 0x000F, 0x0010, 0x0011, 0x0012, 0x0013, 0x0014, 0x0015, 0x7000, 0x7001, 0x8000, 0xFF01]


def make(version=3, nominal=(10, 10), timing=Timing(channel_test_interval=10.0)) -> SCSChannel:
    spec = ChannelSpec(name="c", endpoint="tcp:host=127.0.0.1:port=1", backup_endpoint=None, super_CAS_id=SCID,
                       ECM_channel_id=CH, protocol_version=version)
    streams = [(f"svc{k}", LinkSpec(channel="c", super_CAS_id=SCID, ECM_stream_id=k, ECM_id=100 + k), nominal[k - 1])
               for k in (1, 2)]
    return SCSChannel(spec, streams, timing)


K = ChannelTimerKind


def key(kind: ChannelTimerKind, stream_id: int | None = None) -> ChannelTimer:
    return ChannelTimer("c", kind, stream_id)


def status(**kw) -> m.ChannelStatus:
    base = dict(ECM_channel_id=CH, section_TSpkt_flag=2, delay_start=-200, delay_stop=0, ECM_rep_period=100,
                max_streams=0, min_CP_duration=10, lead_CW=1, CW_per_msg=2, max_comp_time=100)
    return m.ChannelStatus(**{**base, **kw})


def sent(outputs, cls=None) -> list:
    return [o.message for o in outputs if type(o) is Send and (cls is None or isinstance(o.message, cls))]


def events(outputs, cls) -> list:
    return [o for o in outputs if type(o) is cls]


def notes(outputs) -> list[str]:
    return [o.event for o in outputs if type(o) is Notify]


def opened(**kw) -> tuple[SCSChannel, list]:
    channel = make(**kw)
    channel.connection_made(0.0)
    return channel, channel.receive(status(), 0.0)


def streams_up(channel: SCSChannel) -> None:
    for sid in (1, 2):
        channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=sid, ECM_id=100 + sid,
                                       access_criteria_transfer_mode=False), 0.0)
    assert all(s.state is SCSStreamState.ST_OPEN for s in channel.streams.values())


def request(cp: int, sid: int = 1) -> RequestCWProvision:
    combos = (CPCWCombination(cp, b"\x01\x01" + bytes(30)), CPCWCombination(cp + 1, b"\x01\x01" + bytes(30)))
    return RequestCWProvision(service="svc1", link=0, stream_id=sid, cp_number=cp, combinations=combos,
                              cw_encryption=None, access_criteria=b"\x01")


# -- DISCONNECTED / WAIT_CH_STATUS --------------------------------------------------------------


def test_connection_made_sends_channel_setup():
    channel = make()
    out = channel.connection_made(0.0)
    (setup,) = sent(out)
    assert (setup.ECM_channel_id, setup.Super_CAS_id, setup.protocol_version) == (CH, SCID, 3)
    assert StartTimer(key(K.SETUP), 5.0) in out and channel.state is SCSChannelState.WAIT_CH_STATUS


def test_channel_status_opens_channel_and_sets_up_streams():
    channel, out = opened()
    assert channel.state is SCSChannelState.CH_OPEN and channel.refusals == 0
    (up,) = events(out, ChannelUp)
    assert (up.params.lead_CW, up.params.CW_per_msg, up.params.delay_start, up.params.max_comp_time) == (1, 2, -0.2, 0.1)
    setups = sent(out, m.StreamSetup)
    assert [(s.ECM_stream_id, s.ECM_id, s.nominal_CP_duration) for s in setups] == [(1, 101, 10), (2, 102, 10)]
    assert CancelTimer(key(K.SETUP)) in out and StartTimer(key(K.TEST), 10.0) in out


def test_protocol_v1_stream_setup_has_no_ecm_id():
    _, out = opened(version=1)
    assert [s.ECM_id for s in sent(out, m.StreamSetup)] == [None, None]


def test_streams_too_short_or_beyond_max_streams_are_not_set_up():
    channel = make(nominal=(5, 10))
    channel.connection_made(0.0)
    out = channel.receive(status(min_CP_duration=10), 0.0)
    assert [s.ECM_stream_id for s in sent(out, m.StreamSetup)] == [2] and "crypto_period_too_short" in notes(out)
    channel = make()
    channel.connection_made(0.0)
    out = channel.receive(status(max_streams=1), 0.0)
    assert [s.ECM_stream_id for s in sent(out, m.StreamSetup)] == [1] and "max_streams_reached" in notes(out)


@pytest.mark.parametrize("code", CHANNEL_CODES)
def test_any_channel_error_refuses_the_setup(code):
    channel = make()
    channel.connection_made(0.0)
    out = channel.receive(m.ChannelError(ECM_channel_id=CH, error_status=(code,)), 0.0)
    assert events(out, Close) and channel.refusals == 1 and "channel_refused" in notes(out)
    assert [o.level for o in out if type(o) is Notify] == ["error"]


def test_setup_timeout_and_loss_during_setup_count_as_refusals():
    channel = make()
    channel.connection_made(0.0)
    assert events(channel.timer(key(K.SETUP), 5.0), Close) and channel.refusals == 1
    channel.connection_lost(5.0)
    assert channel.refusals == 2 and channel.state is SCSChannelState.DISCONNECTED
    channel.connection_made(6.0)
    channel.receive(status(), 6.0)
    assert channel.refusals == 0


def test_foreign_or_unexpected_channel_status():
    channel = make()
    assert notes(channel.receive(status(), 0.0)) == ["unexpected_channel_status"]
    channel.connection_made(0.0)
    assert notes(channel.receive(status(ECM_channel_id=CH + 1), 0.0)) == ["foreign_channel_status"]
    assert channel.state is SCSChannelState.WAIT_CH_STATUS


# -- CH_OPEN ------------------------------------------------------------------------------------


def test_keepalive_channel_test_and_its_timeout():
    channel, _ = opened()
    out = channel.timer(key(K.TEST), 10.0)
    assert sent(out, m.ChannelTest) == [m.ChannelTest(ECM_channel_id=CH)]
    assert StartTimer(key(K.TEST_REPLY), 5.0) in out
    assert CancelTimer(key(K.TEST_REPLY)) in channel.receive(status(), 10.1)
    assert events(channel.timer(key(K.TEST_REPLY), 15.0), Close)


def test_changed_channel_parameters_reach_the_scheduler():
    channel, _ = opened()
    assert events(channel.receive(status(), 1.0), ChannelUp) == []
    (up,) = events(channel.receive(status(lead_CW=0, CW_per_msg=1), 1.0), ChannelUp)
    assert (up.params.lead_CW, up.params.CW_per_msg) == (0, 1)


def test_ecmg_channel_and_stream_tests_are_answered():
    channel, _ = opened()
    assert sent(channel.receive(m.ChannelTest(ECM_channel_id=CH), 1.0)) == [status()]
    error = sent(channel.receive(m.ChannelTest(ECM_channel_id=99), 1.0))[0]
    assert isinstance(error, m.ChannelError) and error.error_status == (0x0006,)
    error = sent(channel.receive(m.StreamTest(ECM_channel_id=CH, ECM_stream_id=1), 1.0))[0]
    assert isinstance(error, m.StreamError) and error.error_status == (0x0007,)  # not open yet
    streams_up(channel)
    (echo,) = sent(channel.receive(m.StreamTest(ECM_channel_id=CH, ECM_stream_id=1), 1.0))
    assert isinstance(echo, m.StreamStatus) and echo.ECM_id == 101


def test_channel_error_unknown_channel_sets_the_channel_up_again():
    channel, _ = opened()
    streams_up(channel)
    out = channel.receive(m.ChannelError(ECM_channel_id=CH, error_status=(0x0006,)), 1.0)
    assert {e.stream_id for e in events(out, StreamDown)} == {1, 2}
    assert sent(out, m.ChannelSetup) and channel.state is SCSChannelState.WAIT_CH_STATUS
    # the same through a stream_error naming our channel as unknown
    channel.receive(status(), 1.0)
    streams_up(channel)
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=1, error_status=(0x0006,)), 2.0)
    assert sent(out, m.ChannelSetup) and len(events(out, StreamDown)) == 2


def test_channel_error_unrecoverable_closes_and_reconnects():
    channel, _ = opened()
    streams_up(channel)
    out = channel.receive(m.ChannelError(ECM_channel_id=CH, error_status=(0x7001,)), 1.0)
    assert sent(out, m.ChannelClose) and events(out, Close) and len(events(out, StreamDown)) == 2
    assert channel.state is SCSChannelState.DISCONNECTED


@pytest.mark.parametrize("code", [c for c in CHANNEL_CODES if c not in (0x0006, 0x7001)])
def test_other_channel_errors_are_logged_and_the_channel_stays(code):
    channel, _ = opened()
    streams_up(channel)
    out = channel.receive(m.ChannelError(ECM_channel_id=CH, error_status=(code,)), 1.0)
    assert notes(out) == ["channel_error"] and not events(out, Close) and channel.state is SCSChannelState.CH_OPEN


def test_codec_errors_and_wrong_direction_messages_are_answered():
    channel, _ = opened()
    error = UnknownParameterType("x", error_information=0x7ABC)
    error.channel_id = CH
    (reply,) = sent(channel.receive(error, 1.0))
    assert reply.error_status == (0x000E,) and reply.error_information == (b"\x7a\xbc",)
    (reply,) = sent(channel.receive(InvalidMessage("y"), 1.0))
    assert reply.error_status == (0x0001,) and reply.ECM_channel_id == CH
    out = channel.receive(m.CWProvision(ECM_channel_id=CH, ECM_stream_id=1, CP_number=1,
                                        CP_CW_combination=(CPCWCombination(1, b"x"),)), 1.0)
    assert sent(out)[0].error_status == (0x0001,) and "wrong_direction" in notes(out)


def test_shutdown_closes_streams_waits_for_each_response_then_channel_then_connection():
    channel, _ = opened(timing=Timing(channel_test_interval=10.0, close_timeout=2.5))
    streams_up(channel)
    out = channel.close(2.0)
    assert [type(x) for x in sent(out)] == [m.StreamCloseRequest, m.StreamCloseRequest]  # no channel_close yet
    assert not events(out, Close) and len(events(out, StreamDown)) == 2
    assert StartTimer(key(K.CLOSE), 2.5) in out and channel.state is SCSChannelState.CLOSING
    assert channel.close(2.1) == []  # a second stop changes nothing
    # an ECM_response or a channel_test meanwhile: the ECMG is answered, nothing reopens
    assert sent(channel.receive(m.ChannelTest(ECM_channel_id=CH), 2.2), m.ChannelStatus)
    out = channel.receive(m.StreamCloseResponse(ECM_channel_id=CH, ECM_stream_id=1), 2.3)
    assert sent(out) == [] and not events(out, Close)
    out = channel.receive(m.StreamCloseResponse(ECM_channel_id=CH, ECM_stream_id=2), 2.4)
    assert [type(x) for x in sent(out)] == [m.ChannelClose] and type(out[-1]) is Close
    assert CancelTimer(key(K.CLOSE)) in out and channel.state is SCSChannelState.DISCONNECTED
    assert make().close(0.0) == [CancelTimer(k) for k in make().timer_keys()]  # nothing to close


def test_shutdown_also_closes_a_stream_whose_stream_setup_is_unanswered():
    # the ECMG will set that stream up (it handles messages in order): the SCS must close it too
    channel, _ = opened()
    channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=1, ECM_id=101, access_criteria_transfer_mode=False), 0.0)
    assert channel.streams[2].state is SCSStreamState.WAIT_ST_STATUS
    out = channel.close(1.0)
    assert sorted(r.ECM_stream_id for r in sent(out, m.StreamCloseRequest)) == [1, 2]
    late = channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=2, ECM_id=102,
                                          access_criteria_transfer_mode=False), 1.1)
    assert late == [] and channel.state is SCSChannelState.CLOSING  # its close request is on the way
    channel.receive(m.StreamCloseResponse(ECM_channel_id=CH, ECM_stream_id=1), 1.2)
    out = channel.receive(m.StreamCloseResponse(ECM_channel_id=CH, ECM_stream_id=2), 1.3)
    assert [type(x) for x in sent(out)] == [m.ChannelClose] and channel.state is SCSChannelState.DISCONNECTED


def test_shutdown_close_timeout_bounds_the_wait_then_closes_the_channel_in_order():
    channel, _ = opened()
    streams_up(channel)
    channel.close(2.0)
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=1, error_status=(0x0007,)), 2.1)
    assert "stream_close_refused" in notes(out) and not sent(out)  # answered, if with an error
    out = channel.timer(key(K.CLOSE), 7.0)
    assert [type(x) for x in sent(out)] == [m.ChannelClose] and type(out[-1]) is Close
    assert [n.fields["unanswered"] for n in events(out, Notify) if n.event == "close_timeout"] == [[2]]
    assert channel.timer(key(K.CLOSE), 8.0) == []


def test_shutdown_with_the_channel_open_but_no_stream_closes_the_channel_at_once():
    channel, _ = opened(nominal=(1, 1))  # min_CP_duration 10: no stream set up
    out = channel.close(1.0)
    assert [type(x) for x in sent(out)] == [m.ChannelClose] and type(out[-1]) is Close


def test_connection_lost_takes_the_open_streams_down():
    channel, _ = opened()
    channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=1, ECM_id=101, access_criteria_transfer_mode=False), 0)
    out = channel.connection_lost(1.0)
    assert [e.stream_id for e in events(out, StreamDown)] == [1]
    assert all(s.state is SCSStreamState.IDLE for s in channel.streams.values())


# -- streams ------------------------------------------------------------------------------------


def test_stream_status_opens_and_checks_the_ecm_id_echo():
    channel, _ = opened()
    out = channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=1, ECM_id=999,
                                         access_criteria_transfer_mode=False), 0.0)
    assert events(out, StreamUp) == [StreamUp("c", 1)] and "ecm_id_not_echoed" in notes(out)
    out = channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=9, ECM_id=1,
                                         access_criteria_transfer_mode=False), 0.0)
    assert notes(out) == ["unexpected_stream_status"]


def test_stream_id_in_use_is_closed_and_set_up_again():
    channel, _ = opened()
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=1, error_status=(0x0014,)), 0.0)
    assert sent(out, m.StreamCloseRequest) and channel.streams[1].state is SCSStreamState.ST_CLOSING
    out = channel.receive(m.StreamCloseResponse(ECM_channel_id=CH, ECM_stream_id=1), 0.1)
    assert sent(out, m.StreamSetup) and channel.streams[1].state is SCSStreamState.WAIT_ST_STATUS


@pytest.mark.parametrize("code", [0x0009, 0x000A, 0x000C, 0x0011, 0x0012, 0x0015, 0x7000, 0x7001, 0xFF01, 0xFF02])
def test_refused_stream_setup_backs_off_and_retries(code):
    channel, _ = opened()
    delays = []
    for attempt in range(3):
        out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=2, error_status=(code,)), 0.0)
        (timer,) = [o for o in out if type(o) is StartTimer]
        delays.append(timer.seconds)
        level = [o.level for o in out if type(o) is Notify][0]
        assert level == ("error" if code in (0x0011, 0x0012, 0x0015) or code >= 0x8000 else "warn")
        assert channel.streams[2].state is SCSStreamState.ST_BACKOFF
        assert sent(channel.timer(key(K.STREAM_RETRY, 2), 1.0), m.StreamSetup)
    assert delays == [1.0, 2.0, 4.0]
    assert channel.streams[1].state is SCSStreamState.WAIT_ST_STATUS  # the other stream is unaffected


def test_stream_setup_timeout_backs_off():
    channel, _ = opened()
    out = channel.timer(key(K.STREAM_SETUP, 1), 5.0)
    assert channel.streams[1].state is SCSStreamState.ST_BACKOFF and "stream_setup_timeout" in notes(out)


def test_a_late_stream_status_after_the_setup_timeout_opens_the_stream_without_a_retry():
    """An ECMG working through thousands of stream_setups answers after the timer: the stream is
    open (a retry would be refused with 0x0014 and start a close and a set-up again)."""
    channel, _ = opened()
    channel.timer(key(K.STREAM_SETUP, 1), 5.0)
    assert channel.streams[1].state is SCSStreamState.ST_BACKOFF
    out = channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=1, ECM_id=101,
                                         access_criteria_transfer_mode=False), 5.5)
    assert events(out, StreamUp) == [StreamUp("c", 1)] and channel.streams[1].state is SCSStreamState.ST_OPEN
    assert CancelTimer(key(K.STREAM_RETRY, 1)) in out and not sent(out)
    assert channel.timer(key(K.STREAM_RETRY, 1), 6.0) == []  # a retry timer that fired anyway sends nothing


def test_stream_setups_at_channel_open_go_through_a_window_of_setups_in_flight():
    """10,000 stream_setups at once queue at the ECMG past the set-up timer: at most
    ``setups_in_flight`` await their answer; an answer, a refusal or a time-out frees a place."""
    spec = ChannelSpec(name="c", endpoint="tcp:host=127.0.0.1:port=1", backup_endpoint=None, super_CAS_id=SCID,
                       ECM_channel_id=CH)
    streams = [(f"svc{k}", LinkSpec(channel="c", super_CAS_id=SCID, ECM_stream_id=k, ECM_id=100 + k), 10)
               for k in range(1, 7)]
    channel = SCSChannel(spec, streams, Timing(setups_in_flight=2))
    channel.connection_made(0.0)

    def setups(out):
        return [msg.ECM_stream_id for msg in sent(out, m.StreamSetup)]

    assert setups(channel.receive(status(), 0.0)) == [1, 2]
    assert [s.state for s in channel.streams.values()][2:] == [SCSStreamState.IDLE] * 4
    out = channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=1, ECM_id=101,
                                         access_criteria_transfer_mode=False), 0.1)
    assert events(out, StreamUp) == [StreamUp("c", 1)] and setups(out) == [3]
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=2, error_status=(0x000A,)), 0.2)
    assert setups(out) == [4] and channel.streams[2].state is SCSStreamState.ST_BACKOFF
    assert setups(channel.timer(key(K.STREAM_SETUP, 3), 5.1)) == [5]
    # a retry goes out on its own timer, besides the window
    assert setups(channel.timer(key(K.STREAM_RETRY, 2), 5.2)) == [2]
    out = channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=4, ECM_id=104,
                                         access_criteria_transfer_mode=False), 5.3)
    assert setups(out) == [6]  # in flight: 5 only (3 timed out, 4 answered; the retry of 2 is outside the window)
    # the connection goes: the queue goes with it; the next channel open starts from the first stream
    channel.connection_lost(6.0)
    channel.connection_made(7.0)
    assert setups(channel.receive(status(), 7.0)) == [1, 2]
    unlimited = SCSChannel(spec, streams, Timing(setups_in_flight=0))
    unlimited.connection_made(0.0)
    assert setups(unlimited.receive(status(), 0.0)) == [1, 2, 3, 4, 5, 6]


def test_cw_provision_and_ecm_response_matching():
    channel, _ = opened()
    assert events(channel.provision(request(5), 0.0), ProvisionFailed) == [ProvisionFailed("c", 1, 5, None)]
    streams_up(channel)
    (msg,) = sent(channel.provision(request(5), 0.0))
    assert (msg.ECM_stream_id, msg.CP_number, [c.CP_number for c in msg.CP_CW_combination]) == (1, 5, [5, 6])
    assert msg.access_criteria == b"\x01" and msg.CW_encryption is None
    channel.provision(request(6), 0.0)
    out = channel.receive(m.ECMResponse(ECM_channel_id=CH, ECM_stream_id=1, CP_number=6, ECM_datagram=b"stkm6"), 0.1)
    assert events(out, ECMArrived) == [ECMArrived("c", 1, 6, b"stkm6")]
    out = channel.receive(m.ECMResponse(ECM_channel_id=CH, ECM_stream_id=1, CP_number=6, ECM_datagram=b"again"), 0.1)
    assert notes(out) == ["unexpected_ecm_response"]
    out = channel.receive(m.ECMResponse(ECM_channel_id=CH, ECM_stream_id=2, CP_number=5, ECM_datagram=b"x"), 0.1)
    assert notes(out) == ["unexpected_ecm_response"]


@pytest.mark.parametrize("code", [0x000B, 0x000C, 0x000D, 0x000E, 0x000F, 0x0010, 0x0011, 0x7000, 0xFF01, 0xFF04])
def test_stream_error_fails_the_oldest_outstanding_cw_provision(code):
    channel, _ = opened()
    streams_up(channel)
    channel.provision(request(5), 0.0)
    channel.provision(request(6), 0.0)
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=1, error_status=(code,)), 0.1)
    assert events(out, ProvisionFailed) == [ProvisionFailed("c", 1, 5, code)]
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=1, error_status=(code,)), 0.1)
    assert events(out, ProvisionFailed) == [ProvisionFailed("c", 1, 6, code)]
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=1, error_status=(code,)), 0.1)
    assert notes(out) == ["stream_error"] and channel.streams[1].state is SCSStreamState.ST_OPEN


def test_open_stream_unknown_to_the_ecmg_is_set_up_again():
    channel, _ = opened()
    streams_up(channel)
    channel.provision(request(5), 0.0)
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=1, error_status=(0x0007,)), 0.1)
    assert events(out, StreamDown) == [StreamDown("c", 1, "stream_unknown_to_ecmg")] and sent(out, m.StreamSetup)
    assert not channel.streams[1].outstanding


def test_open_stream_unrecoverable_error_is_closed_and_set_up_again():
    channel, _ = opened()
    streams_up(channel)
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=2, error_status=(0x7001,)), 0.1)
    assert events(out, StreamDown) and sent(out, m.StreamCloseRequest)
    out = channel.timer(key(K.STREAM_CLOSE, 2), 5.1)  # no stream_close_response: go on
    assert sent(out, m.StreamSetup) and channel.streams[2].state is SCSStreamState.WAIT_ST_STATUS
    out = channel.receive(m.StreamError(ECM_channel_id=CH, ECM_stream_id=9, error_status=(0x0007,)), 0.1)
    assert notes(out) == ["stream_error_unknown_stream"]
    out = channel.receive(m.StreamCloseResponse(ECM_channel_id=CH, ECM_stream_id=1), 0.1)
    assert notes(out) == ["unexpected_stream_close_response"]


# -- an ECMG announcing a classic section_TSpkt_flag ------------------------------------------------


@pytest.mark.parametrize("flag, meaning", [(0, "sections"), (1, "TS packets")])
def test_a_classic_ecmg_is_refused_at_channel_status_by_default_naming_the_flag(flag, meaning):
    channel = make()
    channel.connection_made(0.0)
    out = channel.receive(status(section_TSpkt_flag=flag), 0.1)
    (note,) = [o for o in events(out, Notify) if o.event == "channel_status_refused"]
    assert note.fields["reason"].startswith(f"ECMG answered section_TSpkt_flag {flag} ({meaning}); BCAST STKMs need 0x02")
    assert [type(x) for x in sent(out)] == [m.ChannelClose] and type(out[-1]) is Close
    assert not sent(out, m.StreamSetup) and channel.state is SCSChannelState.DISCONNECTED
    assert channel.refusals == 1  # lengthens the reconnect back-off
    channel.connection_lost(0.2)
    channel.connection_made(1.0)
    channel.receive(status(section_TSpkt_flag=flag), 1.1)
    assert channel.refusals == 2


def test_a_classic_ecmg_is_accepted_when_its_entry_allows_the_flag_and_its_ecms_pass_opaque():
    spec = ChannelSpec(name="c", endpoint="tcp:host=127.0.0.1:port=1", backup_endpoint=None, super_CAS_id=SCID,
                       ECM_channel_id=CH, section_TSpkt_flags=frozenset({1, 2}))
    channel = SCSChannel(spec, [("svc1", LinkSpec(channel="c", super_CAS_id=SCID, ECM_stream_id=1, ECM_id=101), 10)],
                         Timing(channel_test_interval=0.0))
    channel.connection_made(0.0)
    out = channel.receive(status(section_TSpkt_flag=1), 0.1)
    assert "classic_ecmg" in notes(out) and sent(out, m.StreamSetup) and channel.refusals == 0
    channel.receive(m.StreamStatus(ECM_channel_id=CH, ECM_stream_id=1, ECM_id=101, access_criteria_transfer_mode=False), 0.2)
    channel.provision(request(5), 0.3)
    ecm = b"\x47" + bytes(187)  # a DVB ECM in one TS packet: not an STKM, carried as it is
    out = channel.receive(m.ECMResponse(ECM_channel_id=CH, ECM_stream_id=1, CP_number=5, ECM_datagram=ecm), 0.4)
    assert events(out, ECMArrived) == [ECMArrived("c", 1, 5, ecm)]


def test_a_refused_channel_setup_names_the_error_and_the_parameter():
    channel = make()
    channel.connection_made(0.0)
    out = channel.receive(m.ChannelError(ECM_channel_id=CH, error_status=(0x0005,), error_information=(b"\x00\x01",)), 0.1)
    (note,) = [o for o in events(out, Notify) if o.event == "channel_refused"]
    assert note.fields["reason"] == ("ECMG refused channel_setup: channel_error 0x0005 (unknown Super_CAS_id value) "
                                     "about Super_CAS_id")
