"""Issue #13 item 1 against a real ``twistd -n bcast-ecmg`` over loopback: an oversize CW.

A CW of 256 bytes or more in a classic DVB mode used to raise ``struct.error`` inside the ECM
source; the ECMG closed the SCS's connection and every stream of the channel went with it. Now the
offending stream gets stream_error 0x000F (the CW's length is inconsistent with what the test ECM
carries) and the channel and its other streams keep getting ECM_responses.
"""

from __future__ import annotations

import struct

import pytest

from bcast_sp4.bcast.ecm import depacketize, parse_dvb_ecm
from bcast_sp4.bcast.traffic import TrafficProtection, encode_cw, generate
from bcast_sp4.wire import ecmg_scs as m

from .harness import CARD_SCID, DRM_SCID, Client, RoleProcess
from .test_ecmg_loopback import DVB_KEY, PORT_LOG, write_config

DVB_TS_SCID = 0x4AE60001  # dvb-ts in write_config
# The issue's reproduction, byte for byte: channel 1 on Super_CAS_id 0x4AE60000 (dvb-sections),
# then stream 1 with ECM_id 1 and nominal_CP_duration 10.
CHANNEL_SETUP = bytes.fromhex("030001000e000e00020001000100044ae60000")
STREAM_SETUP = bytes.fromhex("0301010018000e00020001000f0002000100190002000100100002000a")


def cw_provision(channel_id: int, stream_id: int, cp: int, cws: list[tuple[int, bytes]]) -> bytes:
    """A v3 CW_provision written from the spec's tables (not through the project's encoder)."""
    params = [(0x000E, struct.pack(">H", channel_id)), (0x000F, struct.pack(">H", stream_id)), (0x0012, struct.pack(">H", cp))]
    params += [(0x0014, struct.pack(">H", c) + w) for c, w in cws]
    body = b"".join(struct.pack(">HH", t, len(v)) + v for t, v in params)
    return struct.pack(">BHH", 3, 0x0201, len(body)) + body


def stream_setup(channel_id: int, stream_id: int, ecm_id: int) -> bytes:
    return m.StreamSetup(protocol_version=3, ECM_channel_id=channel_id, ECM_stream_id=stream_id, ECM_id=ecm_id,
                         nominal_CP_duration=10).encode()


@pytest.fixture(scope="module")
def ecmg(tmp_path_factory):
    process = RoleProcess("bcast-ecmg", write_config(tmp_path_factory.mktemp("ecmg-cw-length")), PORT_LOG)
    yield process
    assert process.stop() == 0
    text = process.text()
    assert "Traceback" not in text and "unhandled error" not in text and "internal error" not in text


def expect_ecm(reply, channel_id: int, stream_id: int, cp: int, cws=None, packets=False):
    assert isinstance(reply, m.ECMResponse), reply
    assert (reply.ECM_channel_id, reply.ECM_stream_id, reply.CP_number) == (channel_id, stream_id, cp)
    if cws is not None:
        datagram = depacketize(reply.ECM_datagram) if packets else reply.ECM_datagram
        assert parse_dvb_ecm(datagram, DVB_KEY)[1:] == (cp, cws)


def test_the_issue_reproduction_gets_0x000f_and_the_channel_and_other_stream_stay_up(ecmg):
    client = Client(ecmg.port)
    status = client.request(CHANNEL_SETUP)
    assert isinstance(status, m.ChannelStatus) and status.section_TSpkt_flag == 0  # DVB_SCID: dvb-sections
    assert isinstance(client.request(STREAM_SETUP), m.StreamStatus)
    assert isinstance(client.request(stream_setup(1, 2, 2)), m.StreamStatus)
    good = [(0, bytes(range(8))), (1, bytes(range(8, 16)))]
    expect_ecm(client.request(cw_provision(1, 2, 0, good)), 1, 2, 0, good)

    error = client.request(cw_provision(1, 1, 0, [(0, bytes(256)), (1, bytes(8))]))
    assert isinstance(error, m.StreamError), error
    assert (error.ECM_channel_id, error.ECM_stream_id, error.error_status) == (1, 1, (0x000F,))

    # the other stream of the channel, the channel itself and the offending stream all carry on
    for cp in (1, 2, 3):
        cws = [(cp, bytes([cp]) * 8), (cp + 1, bytes([cp + 1]) * 8)]
        expect_ecm(client.request(cw_provision(1, 2, cp, cws)), 1, 2, cp, cws)
    assert isinstance(client.request(m.ChannelTest(ECM_channel_id=1)), m.ChannelStatus)
    cws = [(1, bytes(8)), (2, bytes(range(8)))]
    expect_ecm(client.request(cw_provision(1, 1, 1, cws)), 1, 1, 1, cws)
    client.close()


# A CW of 0 bytes is refused by the codec already (a CP_CW_combination shorter than 3 bytes):
# channel_error 0x000F naming CP_CW_combination (0x0014); longer ones reach the ECM source.
@pytest.mark.parametrize(
    ("channel_id", "cw_length", "error_class"), [(10, 256, m.StreamError), (11, 1000, m.StreamError), (12, 0, m.ChannelError)]
)
def test_pipelined_with_the_other_stream_every_message_is_answered_in_order(ecmg, channel_id, cw_length, error_class):
    client = Client(ecmg.port)
    assert isinstance(client.request(m.ChannelSetup(ECM_channel_id=channel_id, Super_CAS_id=DVB_TS_SCID).encode()),
                      m.ChannelStatus)
    for stream_id in (1, 2):
        assert isinstance(client.request(stream_setup(channel_id, stream_id, 100 * channel_id + stream_id)), m.StreamStatus)
    good = [(7, bytes(range(8))), (8, bytes(range(16, 24)))]
    # one write: stream 2, the bad CW on stream 1, stream 2 again
    client.send(cw_provision(channel_id, 2, 7, good) + cw_provision(channel_id, 1, 7, [(7, bytes(cw_length)), (8, bytes(8))])
                + cw_provision(channel_id, 2, 8, [(8, good[1][1]), (9, bytes(8))]))
    expect_ecm(client.recv(), channel_id, 2, 7, good, packets=True)
    error = client.recv()
    assert type(error) is error_class and error.ECM_channel_id == channel_id and error.error_status == (0x000F,), error
    assert error_class is m.ChannelError or error.ECM_stream_id == 1
    expect_ecm(client.recv(), channel_id, 2, 8, [(8, good[1][1]), (9, bytes(8))], packets=True)
    client.close()


@pytest.mark.parametrize(("channel_id", "scid"), [(20, DRM_SCID), (21, CARD_SCID)], ids=["drm", "smartcard"])
def test_an_oversize_cw_in_the_bcast_modes_is_invalid_traffic_key_material(ecmg, channel_id, scid):
    # the BCAST modes read a CW as TEK material (traffic.py); 256 zero bytes are none
    client = Client(ecmg.port)
    assert isinstance(client.request(m.ChannelSetup(ECM_channel_id=channel_id, Super_CAS_id=scid).encode()), m.ChannelStatus)
    for stream_id in (1, 2):
        assert isinstance(client.request(stream_setup(channel_id, stream_id, stream_id)), m.StreamStatus)
    teks = [encode_cw(generate(TrafficProtection.SRTP)) for _ in range(3)]
    error = client.request(cw_provision(channel_id, 1, 5, [(5, bytes(256)), (6, teks[0])]))
    assert isinstance(error, m.StreamError) and error.error_status == (0xFF04,), error
    reply = client.request(cw_provision(channel_id, 2, 5, [(5, teks[1]), (6, teks[2])]))
    assert isinstance(reply, m.ECMResponse) and reply.ECM_stream_id == 2, reply
    client.close()

