"""Framer limits, datagram framing, encoder strictness and the SP-4 helpers (purity: tests/test_purity.py)."""


import pytest

from bcast_sp4 import wire
from bcast_sp4.wire import ecmg_scs as E
from bcast_sp4.wire import emmg_mux as M
from bcast_sp4.wire import sp4

TEST = E.ChannelTest(ECM_channel_id=3).encode()


def test_oversize_message_is_skipped_and_reported_then_stream_resumes():
    big = M.DataProvision(client_id=1, data_id=1, datagram=(bytes(300),)).encode()
    framer = wire.Framer(max_length=100, interface=wire.Interface.EMMG_MUX)
    out = framer.feed(TEST + big[:50])
    assert out[0] == TEST
    assert isinstance(out[1], wire.MessageTooLong) and out[1].error_status == 0x0004
    assert out[1].message_type == 0x0211
    assert framer.buffered == 0  # never buffered
    assert framer.feed(big[50:200]) == []
    assert framer.feed(big[200:] + TEST) == [TEST]


def test_oversize_message_in_one_chunk():
    big = E.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=1, ECM_datagram=bytes(200)).encode()
    out = wire.Framer(max_length=64).feed(big + TEST)
    assert [type(x) for x in out] == [wire.MessageTooLong, bytes]


def test_one_whole_message_per_read_comes_back_as_read_and_the_limits_still_hold():
    # a request/response peer: each read is one whole message, handed on as it is
    framer = wire.Framer(max_length=64)
    assert framer.feed(TEST) == [TEST] and framer.feed(TEST)[0] is TEST
    big = E.ECMResponse(ECM_channel_id=1, ECM_stream_id=1, CP_number=1, ECM_datagram=bytes(200)).encode()
    out = framer.feed(big)  # one whole message, but over the limit: still reported, not returned
    assert [type(x) for x in out] == [wire.MessageTooLong] and framer.buffered == 0
    assert framer.feed(TEST[:4]) == [] and framer.feed(TEST[4:]) == [TEST]  # split reads still join
    assert framer.feed(TEST[:7]) == [] and framer.feed(TEST[7:] + TEST) == [TEST, TEST]  # a tail behind a buffer
    assert framer.feed(bytearray(TEST)) == [TEST] and framer.buffered == 0  # not bytes: the buffered way
    assert framer.feed(TEST + TEST[:3]) == [TEST] and framer.buffered == 3


def test_at_boundary_only_between_messages():
    framer = wire.Framer(max_length=100, interface=wire.Interface.EMMG_MUX)
    assert framer.at_boundary()
    assert framer.feed(TEST[:3]) == [] and not framer.at_boundary()  # part of a message buffered
    assert framer.feed(TEST[3:]) == [TEST] and framer.at_boundary()
    big = M.DataProvision(client_id=1, data_id=1, datagram=(bytes(300),)).encode()
    framer.feed(big[:150])
    assert not framer.at_boundary()  # the rest of an over-long message is still to be skipped
    framer.feed(big[150:])
    assert framer.at_boundary()


def test_framer_limit_bounds():
    with pytest.raises(ValueError):
        wire.Framer(max_length=4)
    with pytest.raises(ValueError):
        wire.Framer(max_length=65541)


def test_datagram_size_must_match_header():
    frame = M.DataProvision(client_id=1, data_id=2, datagram=(b"x",)).encode()
    assert wire.decode_datagram(frame).data_id == 2
    with pytest.raises(wire.InvalidMessage):
        wire.decode_datagram(frame + b"\x00")
    with pytest.raises(wire.MessageTooLong):
        wire.decode_datagram(frame, max_length=len(frame) - 1)


def test_encoder_refuses_what_decoder_would_refuse():
    bad = [
        E.ChannelStatus(
            ECM_channel_id=1, section_TSpkt_flag=3, delay_start=0, delay_stop=0, ECM_rep_period=1,
            max_streams=0, min_CP_duration=1, lead_CW=1, CW_per_msg=2, max_comp_time=1,
        ),
        E.StreamSetup(protocol_version=1, ECM_channel_id=1, ECM_stream_id=1, ECM_id=4, nominal_CP_duration=1),
        E.StreamSetup(protocol_version=2, ECM_channel_id=1, ECM_stream_id=1, nominal_CP_duration=1),
        E.CWProvision(ECM_channel_id=1, ECM_stream_id=1, CP_number=1, CP_CW_combination=()),
        E.CWProvision(protocol_version=1, ECM_channel_id=1, ECM_stream_id=1, CP_number=1,
                      CP_CW_combination=(wire.CPCWCombination(1, bytes(16)),)),
        E.ChannelSetup(ECM_channel_id=0x10000, Super_CAS_id=1),
        E.ChannelSetup(ECM_channel_id=1, Super_CAS_id=None),
        M.DataProvision(client_id=1, data_id=1, datagram=(b"",)),
        M.DataProvision(protocol_version=1, client_id=1, data_id=1, data_channel_id=1, data_stream_id=1,
                        datagram=(b"x",)),
        M.StreamSetup(client_id=1, data_channel_id=1, data_stream_id=1, data_id=1, data_type=9),
        E.ChannelSetup(protocol_version=4, ECM_channel_id=1, Super_CAS_id=1),
        M.DataProvision(client_id=1, data_id=1, datagram=(bytes(40000), bytes(40000))),
    ]
    for message in bad:
        with pytest.raises(wire.LocalProtocolError):
            message.encode()


def test_sp4_helpers():
    assert sp4.profile_of(0x00010042) is sp4.Profile.DRM
    assert sp4.profile_of(0x0002FFFF) is sp4.Profile.SMARTCARD
    assert sp4.profile_of(0x4AE60000) is None
    assert sp4.user_part(0x0002ABCD) == 0xABCD
    assert sp4.make_id(sp4.Profile.SMARTCARD, 7) == 0x00020007
    assert sp4.bcast_error(0) == 0x8000 and sp4.bcast_error(13) == 0x800D
    assert sp4.bcast_error_number(0x800D) == 13 and sp4.bcast_error_number(0x000B) is None
    assert sp4.SECTION_TSPKT_FLAG_BCAST == 0x02
    assert wire.error_name(wire.Interface.EMMG_MUX, 0x8005) == "BCAST error 5"
    assert wire.error_name(wire.Interface.EMMG_MUX, 0x000F) == "exceeded bandwidth"
    assert wire.error_name(wire.Interface.ECMG_SCS, 0x000F) == "inconsistent length for DVB parameter"
    with pytest.raises(ValueError):
        sp4.bcast_error(0x8000)


def test_bcast_flag_accepted_in_both_interfaces():
    for message in (
        M.ChannelSetup(client_id=0x00010001, data_channel_id=1, section_TSpkt_flag=sp4.SECTION_TSPKT_FLAG_BCAST),
        E.ChannelStatus(
            ECM_channel_id=1, section_TSpkt_flag=2, delay_start=0, delay_stop=0, ECM_rep_period=1,
            max_streams=0, min_CP_duration=1, lead_CW=1, CW_per_msg=2, max_comp_time=1,
        ),
    ):
        assert wire.decode(message.encode()).section_TSpkt_flag == 2


def test_positional_make_equals_keyword_construction():
    from bcast_sp4.wire.message import MESSAGE_CLASSES

    made = E.ECMResponse.make(2, 1, 3, 7, b"stkm")
    assert made == E.ECMResponse(protocol_version=2, ECM_channel_id=1, ECM_stream_id=3, CP_number=7, ECM_datagram=b"stkm")
    assert wire.decode(made.encode()) == made
    for cls in MESSAGE_CLASSES.values():  # every class has one, taking exactly its fields
        assert cls.make.__code__.co_argcount == 1 + len(cls.PARAMS)


def _tlv(code: int, value: bytes) -> bytes:
    return code.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


def _cw_provision(*tlvs: bytes) -> bytes:
    body = b"".join(tlvs)
    return b"\x03\x02\x01" + len(body).to_bytes(2, "big") + body


_CHANNEL, _STREAM, _CP = _tlv(0x000E, b"\x00\x07"), _tlv(0x000F, b"\x00\x09"), _tlv(0x0012, b"\x01\x02")
_CPCW = _tlv(0x0014, b"\x01\x02" + bytes(8))


@pytest.mark.parametrize(
    "order",
    [(_CHANNEL, _STREAM, _CP, _CPCW), (_STREAM, _CHANNEL, _CP, _CPCW), (_CPCW, _CP, _STREAM, _CHANNEL), (_CHANNEL, _STREAM, _CPCW, _CP)],
)
def test_decoder_speculative_prefix_and_any_other_order_agree(order):
    # The generated decoder reads the leading mandatory integers in one struct call when they
    # come first in declaration order; any other order takes the ordinary loop, same message.
    message = wire.decode(_cw_provision(*order))
    assert (message.ECM_channel_id, message.ECM_stream_id, message.CP_number) == (7, 9, 0x0102)
    assert message.CP_CW_combination == (wire.params.CPCWCombination(0x0102, bytes(8)),)


def test_decoder_prefix_then_repeat_or_bad_length_still_rejected():
    with pytest.raises(wire.WrongParameterCount) as repeat:
        wire.decode(_cw_provision(_CHANNEL, _STREAM, _CP, _CPCW, _CHANNEL))
    assert repeat.value.error_information == 0x000E
    # the prefix's shape with a 3-byte CP_number: the loop judges it, InconsistentLength
    with pytest.raises(wire.InconsistentLength) as length:
        wire.decode(_cw_provision(_CHANNEL, _STREAM, _tlv(0x0012, b"\x00\x01\x02"), _CPCW))
    assert length.value.error_information == 0x0012
    # a message shorter than the prefix: the loop finds CP_number and CP_CW missing
    with pytest.raises(wire.MissingParameter):
        wire.decode(_cw_provision(_CHANNEL, _STREAM))
