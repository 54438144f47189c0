"""The worked examples of the SimulCrypt digest (shared/spec/simulcrypt.md §8), byte for byte.

Each example decodes to its documented fields and re-encodes to the same bytes.
"""

import pytest

from bcast_sp4 import wire
from bcast_sp4.wire import ecmg_scs as E
from bcast_sp4.wire import emmg_mux as M
from bcast_sp4.wire.params import CPCWCombination as CPCW

ECMG = wire.Interface.ECMG_SCS
EMMG = wire.Interface.EMMG_MUX
CLIENT = 0x01000001

EXAMPLES = [
    ("E1", "030001000e000e000200010001000401000001", E.ChannelSetup(ECM_channel_id=1, Super_CAS_id=0x01000001)),
    (
        "E2",
        "0300030051000e00020001000200010000160002ff3800170002ff3800030002ff3800040002ff3800050002fe0c0006"
        "0002000000070002006400080002000000090002000a000a000101000b000102000c00020064",
        E.ChannelStatus(
            ECM_channel_id=1,
            section_TSpkt_flag=0,
            AC_delay_start=-200,
            AC_delay_stop=-200,
            delay_start=-200,
            delay_stop=-200,
            transition_delay_start=-500,
            transition_delay_stop=0,
            ECM_rep_period=100,
            max_streams=0,
            min_CP_duration=10,
            lead_CW=1,
            CW_per_msg=2,
            max_comp_time=100,
        ),
    ),
    (
        "E3",
        "0301010018000e00020001000f00020001001900020001001000020064",
        E.StreamSetup(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, nominal_CP_duration=100),
    ),
    (
        "E4",
        "0301030017000e00020001000f000200010019000200010011000100",
        E.StreamStatus(ECM_channel_id=1, ECM_stream_id=1, ECM_id=1, access_criteria_transfer_mode=False),
    ),
    (
        "E5",
        "030201003c000e00020001000f000200010012000200050014000a000511223344556677880014000a000699aabbccdd"
        "eeff00001300020064000d0004c0ffee01",
        E.CWProvision(
            ECM_channel_id=1,
            ECM_stream_id=1,
            CP_number=5,
            CP_CW_combination=(
                CPCW(5, bytes.fromhex("1122334455667788")),
                CPCW(6, bytes.fromhex("99aabbccddeeff00")),
            ),
            CP_duration=100,
            access_criteria=bytes.fromhex("c0ffee01"),
        ),
    ),
    (
        "E6",
        "0302020021000e00020001000f000200010012000200050015000b8070080102030405060708",
        E.ECMResponse(
            ECM_channel_id=1, ECM_stream_id=1, CP_number=5, ECM_datagram=bytes.fromhex("8070080102030405060708")
        ),
    ),
    ("E7", "0300020006000e00020001", E.ChannelTest(ECM_channel_id=1)),
    ("E8", "030102000c000e00020001000f00020001", E.StreamTest(ECM_channel_id=1, ECM_stream_id=1)),
    (
        "E9",
        "0301060012000e00020001000f0002000170000002000b",
        E.StreamError(ECM_channel_id=1, ECM_stream_id=1, error_status=(0x000B,)),
    ),
    (
        "E10",
        "0300050012000e00020001700000020002700100020000",
        E.ChannelError(ECM_channel_id=1, error_status=(0x0002,), error_information=(b"\x00\x00",)),
    ),
    ("E11", "030104000c000e00020001000f00020001", E.StreamCloseRequest(ECM_channel_id=1, ECM_stream_id=1)),
    ("E12", "030105000c000e00020001000f00020001", E.StreamCloseResponse(ECM_channel_id=1, ECM_stream_id=1)),
    ("E13", "0300040006000e00020001", E.ChannelClose(ECM_channel_id=1)),
    (
        "E14",
        "0101010012000e00020001000f00020001001000020064",
        E.StreamSetup(protocol_version=1, ECM_channel_id=1, ECM_stream_id=1, nominal_CP_duration=100),
    ),
    (
        "E15",
        "020001000e000e00020007000100044ae60000",
        E.ChannelSetup(protocol_version=2, ECM_channel_id=7, Super_CAS_id=0x4AE60000),
    ),
    (
        "M1",
        "030011001300010004010000010003000200010002000100",
        M.ChannelSetup(client_id=CLIENT, data_channel_id=1, section_TSpkt_flag=0),
    ),
    (
        "M2",
        "030013001300010004010000010003000200010002000100",
        M.ChannelStatus(client_id=CLIENT, data_channel_id=1, section_TSpkt_flag=0),
    ),
    (
        "M3",
        "030111001f00010004010000010003000200010004000200010008000200010007000100",
        M.StreamSetup(client_id=CLIENT, data_channel_id=1, data_stream_id=1, data_id=1, data_type=0),
    ),
    (
        "M4",
        "030113001f00010004010000010003000200010004000200010008000200010007000100",
        M.StreamStatus(client_id=CLIENT, data_channel_id=1, data_stream_id=1, data_id=1, data_type=0),
    ),
    (
        "M5",
        "030117001a0001000401000001000300020001000400020001000600020064",
        M.StreamBWRequest(client_id=CLIENT, data_channel_id=1, data_stream_id=1, bandwidth=100),
    ),
    (
        "M6",
        "030118001a0001000401000001000300020001000400020001000600020040",
        M.StreamBWAllocation(client_id=CLIENT, data_channel_id=1, data_stream_id=1, bandwidth=64),
    ),
    (
        "M7",
        "0302110026000100040100000100030002000100040002000100080002000100050008827005deadbeef01",
        M.DataProvision(
            client_id=CLIENT,
            data_channel_id=1,
            data_stream_id=1,
            data_id=1,
            datagram=(bytes.fromhex("827005deadbeef01"),),
        ),
    ),
    (
        "M8",
        "030211001a000100040100000100080002000100050008827005deadbeef01",
        M.DataProvision(client_id=CLIENT, data_id=1, datagram=(bytes.fromhex("827005deadbeef01"),)),
    ),
    ("M9", "030012000e0001000401000001000300020001", M.ChannelTest(client_id=CLIENT, data_channel_id=1)),
    (
        "M10",
        "030116001a000100040100000100030002000100040002000170000002000f",
        M.StreamError(client_id=CLIENT, data_channel_id=1, data_stream_id=1, error_status=(0x000F,)),
    ),
    (
        "M11",
        "03011400140001000401000001000300020001000400020001",
        M.StreamCloseRequest(client_id=CLIENT, data_channel_id=1, data_stream_id=1),
    ),
    (
        "M12",
        "03011500140001000401000001000300020001000400020001",
        M.StreamCloseResponse(client_id=CLIENT, data_channel_id=1, data_stream_id=1),
    ),
    ("M13", "030014000e0001000401000001000300020001", M.ChannelClose(client_id=CLIENT, data_channel_id=1)),
]


@pytest.mark.parametrize(("label", "hexstr", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_decodes_to_documented_fields(label, hexstr, expected):
    frame = bytes.fromhex(hexstr)
    decoded = wire.decode(frame)
    assert decoded == expected
    assert type(decoded) is type(expected)
    # the interface is also accepted when named explicitly
    assert wire.decode(frame, expected.INTERFACE) == expected


@pytest.mark.parametrize(("label", "hexstr", "expected"), EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_reencodes_to_same_bytes(label, hexstr, expected):
    assert expected.encode().hex() == hexstr
    assert wire.decode(bytes.fromhex(hexstr)).encode().hex() == hexstr


def test_signed_delays_decode_negative():
    status = wire.decode(bytes.fromhex(EXAMPLES[1][1]))
    assert (status.delay_start, status.transition_delay_start, status.transition_delay_stop) == (-200, -500, 0)


def test_e14_v1_stream_setup_rejected_as_v2_for_missing_ecm_id():
    frame = bytearray(bytes.fromhex("0101010012000e00020001000f00020001001000020064"))
    frame[0] = 2
    with pytest.raises(wire.MissingParameter) as info:
        wire.decode(bytes(frame))
    assert info.value.error_status == 0x0010
    assert info.value.error_information == 0x0019
    assert (info.value.channel_id, info.value.stream_id) == (1, 1)


def test_m8_udp_datagram_decodes():
    message = wire.decode_datagram(bytes.fromhex(EXAMPLES[22][1]))
    assert message.data_channel_id is None and message.data_id == 1


def test_control_word_never_in_repr():
    provision = EXAMPLES[4][2]
    text = repr(provision)
    assert "1122334455667788" not in text and "\\x11\\x22" not in text and "<8 bytes>" in text
