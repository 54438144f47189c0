"""ECMG machine: every state x every input, every error code in the right message.

The ECM source here is a test double that records requests and returns their CWs' digest; the
real STKM source is exercised by the role and integration tests.
"""

import hashlib

import pytest

from bcast_sp4 import wire
from bcast_sp4.bcast.ecm_request import CasMode, ECMGenerationError
from bcast_sp4.machines.channel import ServerChannelState
from bcast_sp4.machines.ecmg import ChannelParameters, ECMGConfig, ECMGConnection, ECMGResources
from bcast_sp4.machines.outputs import Close, Notify, Send
from bcast_sp4.wire import ecmg_scs as m
from bcast_sp4.wire.params import CPCWCombination as CW
from tests.doubles import error_of, one, sent

DRM, CARD, DVB = 0x00010001, 0x00020001, 0x4AE60000


class Source:
    def __init__(self):
        self.requests = []
        self.refuse_ecm_ids = {}
        self.fail_next = None

    def check_stream(self, super_cas_id, ecm_id, now):
        if ecm_id in self.refuse_ecm_ids:
            raise ECMGenerationError(self.refuse_ecm_ids[ecm_id], "no key")

    def generate(self, request):
        if self.fail_next:
            code, self.fail_next = self.fail_next, None
            raise ECMGenerationError(code, "refused")
        self.requests.append(request)
        return hashlib.sha256(b"".join(c.CW for c in request.CP_CW_combination)).digest()


def make(config=None, **kw):
    config = config or ECMGConfig(
        cas_modes={DRM: CasMode.DRM_PROFILE, CARD: CasMode.SMARTCARD_PROFILE, DVB: CasMode.DVB_SECTIONS}, **kw
    )
    resources = ECMGResources(config)
    source = Source()
    return resources, source, ECMGConnection(resources, source)








def opened(conn, channel=1, scid=DRM, version=3):
    status = one(conn.receive(m.ChannelSetup(protocol_version=version, ECM_channel_id=channel, Super_CAS_id=scid), 0.0), m.ChannelStatus)
    return status


def stream(conn, stream_id=1, ecm_id=100, channel=1, nominal=20, version=3):
    return conn.receive(
        m.StreamSetup(protocol_version=version, ECM_channel_id=channel, ECM_stream_id=stream_id, ECM_id=ecm_id, nominal_CP_duration=nominal), 0.0
    )


def provision(cp, cps=None, stream_id=1, channel=1, **kw):
    cps = cps if cps is not None else (cp, cp + 1)
    return m.CWProvision(
        ECM_channel_id=channel,
        ECM_stream_id=stream_id,
        CP_number=cp,
        CP_CW_combination=tuple(CW(c & 0xFFFF, bytes([c & 0xFF]) * 16) for c in cps),
        **kw,
    )


def test_channel_setup_announces_parameters_and_bcast_flag():
    _, _, conn = make()
    status = opened(conn)
    assert status.section_TSpkt_flag == 0x02
    assert (status.lead_CW, status.CW_per_msg, status.max_comp_time, status.min_CP_duration) == (1, 2, 100, 10)
    assert conn.state is ServerChannelState.CHANNEL_OPEN
    _, _, dvb = make()
    assert opened(dvb, scid=DVB).section_TSpkt_flag == 0x00


def test_reply_uses_version_of_channel_setup():
    for version in (1, 2, 3):
        _, _, conn = make()
        assert opened(conn, version=version).protocol_version == version
        test = one(conn.receive(m.ChannelTest(protocol_version=version, ECM_channel_id=1), 0.0), m.ChannelStatus)
        assert test.protocol_version == version


def test_channel_setup_errors():
    resources, _, conn = make(versions=frozenset({2, 3}))
    assert error_of(conn.receive(m.ChannelSetup(protocol_version=1, ECM_channel_id=1, Super_CAS_id=DRM), 0), m.ChannelError) == 0x0002
    assert error_of(conn.receive(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=0x00010999), 0), m.ChannelError) == 0x0005
    other = ECMGConnection(resources, Source())
    opened(other, channel=9)
    assert error_of(conn.receive(m.ChannelSetup(ECM_channel_id=9, Super_CAS_id=DRM), 0), m.ChannelError) == 0x0013
    opened(conn, channel=1)
    assert error_of(conn.receive(m.ChannelSetup(ECM_channel_id=1, Super_CAS_id=DRM), 0), m.ChannelError) == 0x0013
    assert error_of(conn.receive(m.ChannelSetup(ECM_channel_id=2, Super_CAS_id=DRM), 0), m.ChannelError) == 0x0008


def test_too_many_channels():
    resources, _, conn = make(max_channels=1)
    opened(conn, channel=1)
    second = ECMGConnection(resources, Source())
    assert error_of(second.receive(m.ChannelSetup(ECM_channel_id=2, Super_CAS_id=DRM), 0), m.ChannelError) == 0x0008
    conn.connection_lost()
    opened(second, channel=2)


def test_messages_before_channel_setup():
    _, _, conn = make()
    assert error_of(conn.receive(m.ChannelTest(ECM_channel_id=1), 0), m.ChannelError) == 0x0006
    assert error_of(conn.receive(m.ChannelClose(ECM_channel_id=1), 0), m.ChannelError) == 0x0006
    for message in (
        m.StreamSetup(ECM_channel_id=1, ECM_stream_id=4, ECM_id=1, nominal_CP_duration=20),
        m.StreamTest(ECM_channel_id=1, ECM_stream_id=4),
        m.StreamCloseRequest(ECM_channel_id=1, ECM_stream_id=4),
        provision(1, stream_id=4),
    ):
        error = one(conn.receive(message, 0), m.StreamError)
        assert (error.error_status, error.ECM_channel_id, error.ECM_stream_id) == ((0x0006,), 1, 4)
        conn.invalid_in_a_row = 0


def test_wrong_channel_id_when_open():
    _, _, conn = make()
    opened(conn, channel=1)
    assert error_of(conn.receive(m.ChannelTest(ECM_channel_id=2), 0), m.ChannelError) == 0x0006
    assert error_of(conn.receive(m.StreamTest(ECM_channel_id=2, ECM_stream_id=1), 0), m.StreamError) == 0x0006


def test_stream_lifecycle_and_errors():
    resources, source, conn = make(channel=ChannelParameters(max_streams=2, min_CP_duration=10), max_invalid_messages=0)
    opened(conn)
    status = one(stream(conn, 1, 100), m.StreamStatus)
    assert (status.ECM_stream_id, status.ECM_id, status.access_criteria_transfer_mode) == (1, 100, False)
    assert error_of(stream(conn, 1, 101), m.StreamError) == 0x0014
    assert error_of(stream(conn, 2, 100), m.StreamError) == 0x0015
    assert error_of(stream(conn, 2, 101, nominal=5), m.StreamError) == 0x0011
    source.refuse_ecm_ids[102] = 0xFF01
    assert error_of(stream(conn, 2, 102), m.StreamError) == 0xFF01
    one(stream(conn, 2, 101), m.StreamStatus)
    assert error_of(stream(conn, 3, 103), m.StreamError) == 0x0009
    assert one(conn.receive(m.StreamTest(ECM_channel_id=1, ECM_stream_id=2), 0), m.StreamStatus).ECM_id == 101
    assert error_of(conn.receive(m.StreamTest(ECM_channel_id=1, ECM_stream_id=7), 0), m.StreamError) == 0x0007
    closed = one(conn.receive(m.StreamCloseRequest(ECM_channel_id=1, ECM_stream_id=2), 0), m.StreamCloseResponse)
    assert closed.ECM_stream_id == 2
    assert error_of(conn.receive(m.StreamCloseRequest(ECM_channel_id=1, ECM_stream_id=2), 0), m.StreamError) == 0x0007
    assert resources.streams == 1 and resources.ecm_ids == {(DRM, 100)}
    one(stream(conn, 2, 101), m.StreamStatus)  # the ECM_id is free again


def test_ecm_id_unique_per_super_cas_id_across_connections():
    resources, _, a = make()
    b = ECMGConnection(resources, Source())
    c = ECMGConnection(resources, Source())
    opened(a, 1, DRM)
    opened(b, 2, DRM)
    opened(c, 3, CARD)
    one(stream(a, 1, 100, channel=1), m.StreamStatus)
    assert error_of(stream(b, 1, 100, channel=2), m.StreamError) == 0x0015
    one(stream(c, 1, 100, channel=3), m.StreamStatus)  # another Super_CAS_id: another namespace


def test_too_many_streams_on_ecmg():
    resources, _, a = make(max_streams_total=2)
    b = ECMGConnection(resources, Source())
    opened(a, 1)
    opened(b, 2)
    one(stream(a, 1, 1, channel=1), m.StreamStatus)
    one(stream(b, 1, 2, channel=2), m.StreamStatus)
    assert error_of(stream(b, 2, 3, channel=2), m.StreamError) == 0x000A
    a.connection_lost()
    assert resources.streams == 1 and 1 not in resources.channels
    one(stream(b, 2, 3, channel=2), m.StreamStatus)


def test_cw_provision_produces_ecm_response_with_ordered_cws():
    _, source, conn = make()
    opened(conn)
    stream(conn)
    response = one(conn.receive(provision(7, cps=(8, 7), CP_duration=30, access_criteria=b"\x01"), 5.0), m.ECMResponse)
    assert (response.ECM_channel_id, response.ECM_stream_id, response.CP_number) == (1, 1, 7)
    request = source.requests[0]
    assert [c.CP_number for c in request.CP_CW_combination] == [7, 8]
    assert (request.CP_duration, request.access_criteria, request.ECM_id, request.now) == (30, b"\x01", 100, 5.0)
    assert response.ECM_datagram == hashlib.sha256(bytes([7]) * 16 + bytes([8]) * 16).digest()
    # access criteria are remembered, nominal CP duration used when CP_duration is absent
    one(conn.receive(provision(8), 6.0), m.ECMResponse)
    assert source.requests[1].access_criteria == b"\x01" and source.requests[1].CP_duration == 20


@pytest.mark.parametrize(
    ("lead", "per_msg", "cp", "good", "bad"),
    [
        (1, 2, 5, (5, 6), (4, 5)),
        (0, 2, 5, (4, 5), (5, 6)),
        (0, 1, 5, (5,), (6,)),
        (2, 3, 5, (5, 6, 7), (5, 6, 6)),
        (1, 2, 0xFFFF, (0xFFFF, 0), (0xFFFF, 1)),
    ],
)
def test_cw_window(lead, per_msg, cp, good, bad):
    _, _, conn = make(channel=ChannelParameters(lead_CW=lead, CW_per_msg=per_msg))
    opened(conn)
    stream(conn)
    one(conn.receive(provision(cp, cps=good), 0), m.ECMResponse)
    error = one(conn.receive(provision(cp, cps=bad), 0), m.StreamError)
    assert error.error_status == (0x000B,) and error.error_information == (b"\x00\x14",)
    assert error_of(conn.receive(provision(cp, cps=good[:-1] or (cp + 9,)), 0), m.StreamError) == 0x000B


def test_access_criteria_transfer_mode_requires_them():
    _, _, conn = make(access_criteria_transfer_mode=True)
    opened(conn)
    assert one(stream(conn), m.StreamStatus).access_criteria_transfer_mode is True
    assert error_of(conn.receive(provision(1), 0), m.StreamError) == 0x0010
    one(conn.receive(provision(1, access_criteria=b"ac"), 0), m.ECMResponse)


def test_deadline_missed_answers_out_of_compute():
    _, source, conn = make()
    opened(conn)
    stream(conn)
    one(conn.receive(provision(1), now=10.099, received_at=10.0), m.ECMResponse)
    assert error_of(conn.receive(provision(2), now=10.2, received_at=10.0), m.StreamError) == 0x000D
    assert len(source.requests) == 1


def test_source_errors_become_stream_errors():
    _, source, conn = make()
    opened(conn)
    stream(conn)
    source.fail_next = 0xFF02
    error = one(conn.receive(provision(1), 0), m.StreamError)
    assert (error.error_status, error.ECM_stream_id) == ((0xFF02,), 1)


def test_channel_close_frees_everything_and_allows_new_setup():
    resources, _, conn = make()
    opened(conn)
    stream(conn)
    outputs = conn.receive(m.ChannelClose(ECM_channel_id=1), 0)
    assert sent(outputs) == [] and conn.state is ServerChannelState.NO_CHANNEL
    assert resources.channels == {} and resources.streams == 0 and resources.ecm_ids == set()
    opened(conn, channel=1)


def test_status_and_errors_from_scs_are_accepted():
    _, _, conn = make()
    status = opened(conn)
    for message in (status, m.StreamStatus(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, access_criteria_transfer_mode=False),
                    m.ChannelError(ECM_channel_id=1, error_status=(0x7000,)), m.StreamError(ECM_channel_id=1, ECM_stream_id=1, error_status=(0x000B,))):
        outputs = conn.receive(message, 0)
        assert sent(outputs) == [] and any(isinstance(o, Notify) for o in outputs)


def test_messages_an_scs_never_sends():
    _, _, conn = make()
    opened(conn)
    for message in (m.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=1, ECM_datagram=b"x"),
                    m.StreamCloseResponse(ECM_channel_id=1, ECM_stream_id=1)):
        assert error_of(conn.receive(message, 0), m.ChannelError) == 0x0001
        conn.invalid_in_a_row = 0


def test_version_mismatch_after_setup():
    _, _, conn = make()
    opened(conn, version=3)
    error = one(conn.receive(m.ChannelTest(protocol_version=2, ECM_channel_id=1), 0), m.ChannelError)
    assert error.error_status == (0x0002,) and error.protocol_version == 3


def test_codec_errors_answer_channel_error_with_their_code():
    _, _, conn = make()
    opened(conn, channel=5)
    frame = bytes.fromhex("030102000b" "000e00020005" "000f000101")  # stream_test, ECM_stream_id 1 byte
    with pytest.raises(wire.PeerProtocolError) as info:
        wire.decode(frame, wire.Interface.ECMG_SCS)
    error = one(conn.receive(info.value, 0), m.ChannelError)
    assert error.error_status == (0x000F,) and error.ECM_channel_id == 5 and error.error_information == (b"\x00\x0f",)


def test_repeated_invalid_messages_close_and_valid_ones_reset():
    resources, _, conn = make(max_invalid_messages=3)
    opened(conn)
    stream(conn)
    bad = m.StreamTest(ECM_channel_id=1, ECM_stream_id=9)
    good = m.ChannelTest(ECM_channel_id=1)
    for _ in range(2):
        conn.receive(bad, 0)
    conn.receive(good, 0)
    conn.receive(bad, 0)
    conn.receive(bad, 0)
    outputs = conn.receive(bad, 0)
    assert isinstance(outputs[-1], Close)
    assert isinstance(sent(outputs)[0], m.StreamError)  # the error is still sent first
    assert resources.channels == {} and resources.streams == 0


def test_refused_access_criteria_are_not_remembered():
    _, source, conn = make()
    opened(conn)
    stream(conn)
    one(conn.receive(provision(1, access_criteria=b"good"), 0), m.ECMResponse)
    source.fail_next = 0x0011
    assert error_of(conn.receive(provision(2, access_criteria=b"bad"), 0), m.StreamError) == 0x0011
    one(conn.receive(provision(3), 0), m.ECMResponse)
    assert source.requests[-1].access_criteria == b"good"
